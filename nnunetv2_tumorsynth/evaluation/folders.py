"""Evaluate folders of segmentations in nnU-Net's layout: inputs, geometry checks, cases in parallel.

A folder holds one label map per case, ``<case><file_ending>`` (the ending from dataset.json, or inferred from
the reference folder when only ``labels`` are given), as in ``labelsTs``, ``nnUNetv2_predict`` output, a fold's
``validation/`` folder or ``gt_segmentations``. Cases are paired by file name. Images are read with nnU-Net's
reader for the dataset (SimpleITK for NIfTI by default); spacing comes from each image's header, in the array's
axis order (nnU-Net's ``properties['spacing']``).

Bad inputs are errors before anything is scored or written: every ``.gz`` file is decompressed once first
(SimpleITK fills a truncated ``.nii.gz`` with zeros without an error), an unreadable file is a
:class:`~nnunetv2_tumorsynth.files.CorruptFile` naming it, and label values that dataset.json (or ``labels``)
does not declare are an :class:`UndeclaredLabelValues` naming the case and the values.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np
from tqdm import tqdm

#: Geometry tolerance: spacing and origin in mm (relative and absolute), direction cosines (absolute).
from nnunetv2_tumorsynth.evaluation.inputs import (
    CaseJob,
    Folder,
    check_files_complete,
    check_geometry,
    check_label_values,
    declared_values,
    default_lesion_labels,
    list_cases,
    load_dataset_json,
    read_label_map,
    reader_for,
    resolve_labels,
)
from nnunetv2_tumorsynth.evaluation.lesions import DEFAULT_SIZE_BINS_MM, check_size_bins, match_lesions
from nnunetv2_tumorsynth.evaluation.metrics import CROP_MARGIN_VOXELS, joint_bounding_box, label_metrics


class MissingCasesError(FileNotFoundError):
    """Cases of the reference folder without a segmentation in a prediction or baseline folder.

    Raised by :func:`evaluate_folders` after the other cases were evaluated (and the report written), unless
    ``allow_missing``; ``summary`` holds what the function would have returned, ``missing`` maps each folder
    name to its missing cases.
    """

    def __init__(self, message: str, missing: dict[str, list[str]], summary: dict):
        super().__init__(message)
        self.missing = missing
        self.summary = summary


def evaluate_case(job: CaseJob) -> dict:
    """Metrics (and lesions) of one case for every folder of the job; the reference is read once."""
    reference, ref_geometry = read_label_map(job.reader_class, job.reference_file, job.case, "reference")
    check_label_values(job, "reference", job.reference_file, reference)
    spacing = ref_geometry["spacing"]
    result = {"case": job.case, "reference_file": job.reference_file, "spacing": list(spacing), "folders": {}}
    for name, path in job.prediction_files.items():
        prediction, pred_geometry = read_label_map(job.reader_class, path, job.case, "prediction")
        check_geometry(job.case, job.reference_file, ref_geometry, path, pred_geometry)
        check_label_values(job, "prediction", path, prediction)
        metrics, lesions = {}, {}
        for value in job.labels:
            ref_mask, pred_mask = reference == value, prediction == value
            metrics[str(value)] = label_metrics(ref_mask, pred_mask, spacing, job.tolerance_mm).as_dict()
            if value in job.lesion_labels:
                box = joint_bounding_box(ref_mask, pred_mask, CROP_MARGIN_VOXELS)
                if box is not None:
                    ref_mask, pred_mask = ref_mask[box], pred_mask[box]
                lesions[str(value)] = match_lesions(ref_mask, pred_mask, spacing, job.min_overlap,
                                                    job.size_bins_mm).as_dict()
        result["folders"][name] = {"prediction_file": path, "metrics": metrics, "lesions": lesions}
    return result


def _init_worker() -> None:
    """One torch thread per worker process: the workers already use every core requested with ``-np``, and the
    cropped masks are too small for threads to help."""
    import torch

    torch.set_num_threads(1)


@contextlib.contextmanager
def _single_torch_thread() -> Iterator[None]:
    """One torch thread while cases are evaluated in this process (restored afterwards)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_cases(jobs: list[CaseJob], num_processes: int, progress: bool = True) -> list[dict]:
    """Evaluate the jobs in order, in ``num_processes`` spawned processes (1: in this process), with a progress
    bar over cases."""
    bar = dict(total=len(jobs), desc="cases", unit="case", disable=not progress, file=sys.stderr)
    # the bar is closed (its line ended) before an error of a case reaches the caller, which prints it
    if num_processes <= 1 or len(jobs) <= 1:
        with _single_torch_thread(), tqdm(jobs, **bar) as cases:
            return [evaluate_case(job) for job in cases]
    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs)), initializer=_init_worker) as pool:
        with tqdm(pool.imap(evaluate_case, jobs), **bar) as results:
            return list(results)


def folder_names(paths: Sequence[str]) -> list[str]:
    """Display names of folders: their base names, made unique with a suffix ``_2``, ``_3``... when needed."""
    names: list[str] = []
    for path in paths:
        base = os.path.basename(os.path.normpath(path)) or "folder"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def check_output_folder(output_folder: str, inputs: Sequence[str], overwrite: bool) -> None:
    """Refuse an existing report folder without ``overwrite``, and one that is or contains an input folder."""
    out = os.path.realpath(output_folder)
    for folder in inputs:
        real = os.path.realpath(folder)
        if real == out or real.startswith(out.rstrip(os.sep) + os.sep):
            raise ValueError(f"the report folder {output_folder} is or contains the input folder {folder}; "
                             "choose a separate report folder")
    if os.path.exists(output_folder) and not overwrite:
        raise FileExistsError(f"{output_folder} already exists; choose another report folder or pass --overwrite")


def evaluate_folders(
    reference_folder: str,
    prediction_folder: str,
    baselines: Sequence[str] = (),
    dataset_json: str | dict | None = None,
    labels: Sequence[int | str] | None = None,
    tolerance_mm: float = 5.0,
    min_overlap: float = 0.0,
    size_bins_mm: Sequence[float] = DEFAULT_SIZE_BINS_MM,
    lesion_labels: Sequence[int | str] | None = None,
    num_processes: int | None = None,
    output_folder: str | None = None,
    overwrite: bool = False,
    allow_missing: bool = False,
    verbose: bool = True,
) -> dict:
    """Evaluate a prediction folder (and baselines) against reference label maps; optionally write a report.

    Args:
        reference_folder: reference label maps, ``<case><file_ending>`` (e.g. ``labelsTs``, ``gt_segmentations``).
        prediction_folder: predicted label maps with the same file names (e.g. ``nnUNetv2_predict`` output).
        baselines: further prediction folders to compare with; each gets the same metrics, and the prediction
            is tested against each one (one-tailed paired t-test and Wilcoxon signed-rank test per metric).
        dataset_json: path or content of dataset.json (labels and file ending). None: ``dataset.json`` in the
            prediction folder, else in the reference folder's parent, else (with ``labels``) none: the label maps
            hold background 0 and the values of ``labels``, the file ending is inferred from the reference folder.
        labels: label names or values to evaluate; None: every foreground label.
        tolerance_mm: surface Dice (NSD) tolerance in mm.
        min_overlap: fraction of a reference lesion's voxels that must be predicted for it to count as detected
            (at least one voxel in any case).
        size_bins_mm: edges of the lesion size bins, equivalent-sphere radius in mm.
        lesion_labels: labels that get the per-lesion analysis; None: the evaluated labels named like a tumour
            (tumour, tumor, lesion, ...), else every evaluated label.
        num_processes: cases evaluated in parallel (spawned processes); None: nnU-Net's default
            (``nnUNet_def_n_proc``, else 8).
        output_folder: where summary.json, cases.csv, lesions.csv, report.md and the PNGs are written; None
            writes nothing. An existing folder is refused unless ``overwrite``.
        overwrite: write into an existing report folder (files of the same names are replaced).
        allow_missing: cases of the reference without a file in a prediction or baseline folder are listed and
            left out; without it, :class:`MissingCasesError` is raised after the others were evaluated (and the
            report written).
        verbose: progress bar over cases and the report's tables printed to stdout.

    Returns:
        The content of summary.json: settings and conventions, per folder the per-case metrics and lesions,
        mean / std / median per label and metric with counts of undefined values, lesion detection by size,
        and the paired comparisons with each baseline. Undefined values are None.

    Raises:
        FileNotFoundError: a folder or dataset.json does not exist, or no case of the reference is in a folder
            (:class:`MissingCasesError`, a subclass, for missing cases as described above).
        FileExistsError: ``output_folder`` exists and ``overwrite`` is False.
        CorruptFile: a reference or prediction file is truncated, corrupt or unreadable (checked before any case
            is scored; names the file and what to do). Nothing is written.
        UndeclaredLabelValues: a label map holds values that dataset.json (or ``labels``) does not declare
            (names the case, the file and the values). Nothing is written.
        ValueError: labels not in dataset.json, region-based labels, a dataset.json that is not valid JSON or
            lacks 'labels' / 'file_ending' (names the file), a geometry mismatch (names the case and both
            geometries), bad settings.
    """
    from nnunetv2.configuration import default_num_processes

    from nnunetv2_tumorsynth.evaluation.report import format_tables, write_report
    from nnunetv2_tumorsynth.evaluation.summary import build_summary

    if not np.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be a finite distance >= 0 in mm, got {tolerance_mm}")
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap is a fraction of a lesion's voxels in [0, 1], got {min_overlap}")
    size_bins = check_size_bins(size_bins_mm)
    for folder in (reference_folder, prediction_folder, *baselines):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"folder {folder} does not exist")
    if output_folder is not None:
        check_output_folder(output_folder, [reference_folder, prediction_folder, *baselines], overwrite)
    content, dataset_json_path, labels_source = load_dataset_json(dataset_json, prediction_folder,
                                                                   reference_folder, labels)
    label_names = resolve_labels(content, labels, labels_source)
    lesion_values = (default_lesion_labels(label_names) if lesion_labels is None
                     else tuple(resolve_labels(content, lesion_labels, labels_source)))
    if not set(lesion_values) <= set(label_names):
        raise ValueError(f"lesion labels {sorted(set(lesion_values) - set(label_names))} are not among the "
                         f"evaluated labels {label_names}")
    file_ending = content["file_ending"]
    references = list_cases(reference_folder, file_ending)
    if not references:
        raise FileNotFoundError(f"no {file_ending} file in the reference folder {reference_folder}")
    paths = [prediction_folder, *baselines]
    folders = [Folder(name, os.path.abspath(path), "prediction" if i == 0 else "baseline",
                      list_cases(path, file_ending)) for i, (name, path) in enumerate(zip(folder_names(paths), paths))]
    missing = {f.name: [c for c in references if c not in f.files] for f in folders}
    extra = {f.name: [c for c in f.files if c not in references] for f in folders}
    for f in folders:
        if len(missing[f.name]) == len(references):
            raise FileNotFoundError(f"none of the {len(references)} cases of {reference_folder} has a {file_ending} "
                                    f"file in {f.path}")
    n_proc = default_num_processes if num_processes is None else int(num_processes)
    check_files_complete(references, folders, n_proc)
    reader_class = reader_for(content, next(iter(references.values())))
    jobs = [CaseJob(case, ref_file, {f.name: f.files[case] for f in folders if case in f.files}, reader_class,
                    label_names, declared_values(content), labels_source, lesion_values, float(tolerance_mm),
                    float(min_overlap), size_bins)
            for case, ref_file in references.items()]
    if verbose:
        print(f"Evaluating {len(jobs)} cases of {os.path.abspath(reference_folder)} against "
              + ", ".join(f"{f.name} ({f.path})" for f in folders)
              + f"; labels {label_names}; NSD tolerance {tolerance_mm:g} mm; {n_proc} process(es)")
        for f in folders:
            if missing[f.name]:
                print(f"  {f.name}: {len(missing[f.name])} case(s) missing: {', '.join(missing[f.name])}")
            if extra[f.name]:
                print(f"  {f.name}: {len(extra[f.name])} file(s) without a reference, ignored: "
                      f"{', '.join(extra[f.name])}")
    per_case = run_cases(jobs, n_proc, progress=verbose)
    settings = {"reference_folder": os.path.abspath(reference_folder),
                "dataset_json": os.path.abspath(dataset_json_path) if dataset_json_path else None,
                "file_ending": file_ending, "labels": {str(v): n for v, n in label_names.items()},
                "lesion_labels": [str(v) for v in lesion_values], "tolerance_mm": float(tolerance_mm),
                "min_overlap": float(min_overlap), "size_bins_mm": list(size_bins),
                "crop_margin_voxels": CROP_MARGIN_VOXELS}
    summary = build_summary(settings, folders, per_case, missing, extra)
    if output_folder is not None:
        write_report(summary, output_folder)
    if verbose:
        print(format_tables(summary))
        if output_folder is not None:
            print(f"Report written to {os.path.abspath(output_folder)}")
    missing_now = {name: cases for name, cases in missing.items() if cases}
    if missing_now and not allow_missing:
        listing = "; ".join(f"{name}: {', '.join(cases)}" for name, cases in missing_now.items())
        raise MissingCasesError(f"cases of the reference without a segmentation, left out of the evaluation: "
                                f"{listing}. Pass --allow-missing (allow_missing=True) to accept this.",
                                missing_now, summary)
    return summary
