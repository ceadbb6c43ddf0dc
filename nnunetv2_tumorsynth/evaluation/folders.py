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
import json
import multiprocessing
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from nnunetv2_tumorsynth.evaluation.lesions import DEFAULT_SIZE_BINS_MM, check_size_bins, match_lesions
from nnunetv2_tumorsynth.evaluation.metrics import CROP_MARGIN_VOXELS, joint_bounding_box, label_metrics
from nnunetv2_tumorsynth.files import CorruptFile, check_complete
from nnunetv2_tumorsynth.nnunet import TUMOUR_NAMES

#: Geometry tolerance: spacing and origin in mm (relative and absolute), direction cosines (absolute).
GEOMETRY_RTOL = 1e-5
GEOMETRY_ATOL = 1e-4


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


class UndeclaredLabelValues(ValueError):
    """A label map holds values that dataset.json (or the ``labels`` given without one) does not declare; the
    message names the case, the file and the values."""


@dataclass
class Folder:
    """A folder of segmentations to evaluate: its display name, absolute path and role."""

    name: str
    path: str
    role: str  # "prediction" or "baseline"
    files: dict[str, str] = field(default_factory=dict)  # case -> file path


@dataclass
class CaseJob:
    """Everything a worker needs to evaluate one case in every folder that has it."""

    case: str
    reference_file: str
    prediction_files: dict[str, str]  # folder name -> file
    reader_class: type
    labels: dict[int, str]
    declared_values: tuple[int, ...]  # every label value the files may hold
    labels_source: str  # where the declared values come from, for messages
    lesion_labels: tuple[int, ...]
    tolerance_mm: float
    min_overlap: float
    size_bins_mm: tuple[float, ...]


def dataset_json_candidates(prediction_folder: str, reference_folder: str) -> list[str]:
    """Where dataset.json is looked for: the prediction folder (``nnUNetv2_predict`` writes one there), then the
    reference folder's parent (``labelsTs`` or ``gt_segmentations``)."""
    return [os.path.join(prediction_folder, "dataset.json"),
            os.path.join(os.path.dirname(os.path.abspath(reference_folder)), "dataset.json")]


def find_dataset_json(dataset_json: str | None, prediction_folder: str, reference_folder: str) -> str | None:
    """Path of dataset.json: ``dataset_json`` if given (it must exist), else the first of
    :func:`dataset_json_candidates` that exists, else None."""
    if dataset_json is not None:
        if not os.path.isfile(dataset_json):
            raise FileNotFoundError(f"dataset.json file {dataset_json} does not exist")
        return dataset_json
    return next((c for c in dataset_json_candidates(prediction_folder, reference_folder) if os.path.isfile(c)), None)


def check_dataset_json(content: object, source: str) -> dict:
    """``content`` if it is an nnU-Net dataset.json with ``labels`` (name -> integer value, or list of integers
    for a region) and ``file_ending``; else a ValueError naming ``source``."""
    what = "pass the dataset's dataset.json with -djfile"
    if not isinstance(content, dict):
        raise ValueError(f"{source} is not an nnU-Net dataset.json (a JSON object with 'labels' and "
                         f"'file_ending'); {what}")
    for key in ("labels", "file_ending"):
        if key not in content:
            raise ValueError(f"{source} has no '{key}' entry: is it an nnU-Net dataset.json? {what}")
    if not isinstance(content["labels"], dict) or not content["labels"]:
        raise ValueError(f"{source}: 'labels' must map label names to integer values, got {content['labels']!r}; "
                         f"{what}")
    for name, value in content["labels"].items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{source}: label {name!r} has the value {value!r}, not an integer (or a list of "
                             f"integers for a region); {what}")
    if not isinstance(content["file_ending"], str) or not content["file_ending"]:
        raise ValueError(f"{source}: 'file_ending' must be a file ending such as \".nii.gz\", got "
                         f"{content['file_ending']!r}; {what}")
    return content


def read_dataset_json(path: str) -> dict:
    """Content of the dataset.json at ``path``, checked by :func:`check_dataset_json`; invalid JSON is a
    ValueError naming the file."""
    try:
        with open(path) as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); pass the dataset's dataset.json with -djfile") from e
    return check_dataset_json(content, path)


def label_map_endings() -> list[str]:
    """File endings nnU-Net's readers support, longest first (``.nii.gz`` is tried before ``.gz``-less ones)."""
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    endings = {e.lower() for io_class in LIST_OF_IO_CLASSES for e in io_class.supported_file_endings}
    return sorted(endings, key=len, reverse=True)


def infer_file_ending(reference_folder: str) -> str:
    """The one file ending of nnU-Net's readers that the (non-hidden) files of ``reference_folder`` have.

    None of them, or several, is an error that says to pass a dataset.json (its ``file_ending``) with -djfile.
    """
    if not os.path.isdir(reference_folder):
        raise FileNotFoundError(f"folder {reference_folder} does not exist")
    known = label_map_endings()
    found: set[str] = set()
    for name in os.listdir(reference_folder):
        ending = next((e for e in known if name.lower().endswith(e)), None)
        if ending is not None and not name.startswith("."):
            found.add(ending)
    if len(found) != 1:
        holds = f"files ending in {', '.join(sorted(found))}" if found else f"no file ending in {', '.join(known)}"
        raise FileNotFoundError(f"the reference folder {reference_folder} holds {holds}, so the file ending cannot "
                                "be inferred; pass a dataset.json whose 'file_ending' names it with -djfile")
    return found.pop()


def dataset_json_from_labels(labels: Sequence[int | str], reference_folder: str) -> dict:
    """A dataset.json-like dict when there is none: background 0 and the label values of ``labels`` (named
    ``label_<value>``), the file ending inferred from the reference folder (:func:`infer_file_ending`)."""
    names = [str(item) for item in labels if not str(item).strip().lstrip("-").isdigit()]
    if names:
        raise ValueError(f"labels {names} are names, and no dataset.json gives their values; give label values "
                         "(e.g. -l 1 2) or pass the dataset.json with -djfile")
    values = sorted({int(item) for item in labels})
    if values[0] < 1:
        raise ValueError(f"label values {[v for v in values if v < 1]} are not foreground labels; give label "
                         "values >= 1 (0 is the background), e.g. -l 1 2")
    return {"labels": {"background": 0, **{f"label_{v}": v for v in values}},
            "file_ending": infer_file_ending(reference_folder)}


def dataset_labels(dataset_json: dict) -> dict[str, int]:
    """Foreground and background labels of dataset.json as name -> value ('ignore' left out).

    Region-based label definitions (a list of values for a name) raise a ValueError: this evaluation compares
    label values.
    """
    regions = {name: value for name, value in dataset_json["labels"].items() if isinstance(value, (list, tuple))}
    if regions:
        raise ValueError(f"dataset.json defines region-based labels {regions}; tumorsynth_evaluate evaluates "
                         "label values only (exported nnU-Net segmentations hold label values: evaluate those with "
                         "a dataset.json that lists them)")
    return {name: int(value) for name, value in dataset_json["labels"].items() if name != "ignore"}


def declared_values(dataset_json: dict) -> tuple[int, ...]:
    """Every label value that label maps of the dataset may hold (background and 'ignore' included)."""
    return tuple(sorted({int(v) for v in dataset_json["labels"].values() if not isinstance(v, (list, tuple))}))


def resolve_labels(dataset_json: dict, labels: Sequence[int | str] | None,
                   source: str = "dataset.json") -> dict[int, str]:
    """Label values to evaluate -> names. ``labels``: names or values (ints or digit strings) of dataset.json;
    None: every foreground label. Labels not in dataset.json raise a ValueError that lists them all (and names
    ``source``, where the labels come from)."""
    by_name = dataset_labels(dataset_json)
    by_value = {value: name for name, value in by_name.items()}
    if labels is None:
        chosen = sorted(v for v in by_value if v != 0)
        if not chosen:
            raise ValueError(f"{source} has no foreground label: {by_name}")
        return {v: by_value[v] for v in chosen}
    chosen, unknown = {}, []
    for item in labels:
        if isinstance(item, (int, np.integer)) or str(item).strip().lstrip("-").isdigit():
            value = int(item)
            if value in by_value and value != 0:
                chosen[value] = by_value[value]
            else:
                unknown.append(str(item))
        elif item in by_name and by_name[item] != 0:
            chosen[by_name[item]] = item
        else:
            unknown.append(str(item))
    if unknown:
        raise ValueError(f"labels {unknown} are not foreground labels of {source}; its labels are {by_name}")
    if not chosen:
        raise ValueError("no label to evaluate")
    return dict(sorted(chosen.items()))


def default_lesion_labels(labels: dict[int, str]) -> tuple[int, ...]:
    """Labels that get the per-lesion analysis: those named like a tumour, else every evaluated label."""
    tumours = tuple(v for v, name in labels.items() if any(t in name.lower() for t in TUMOUR_NAMES))
    return tumours or tuple(labels)


def list_cases(folder: str, file_ending: str) -> dict[str, str]:
    """Case identifier -> file path of the files ending with ``file_ending`` in ``folder`` (hidden files left
    out, e.g. temporary files being written)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder {folder} does not exist")
    names = sorted(n for n in os.listdir(folder) if n.endswith(file_ending) and not n.startswith("."))
    return {n[: -len(file_ending)]: os.path.join(folder, n) for n in names}


def geometry(segmentation: np.ndarray, properties: dict) -> dict:
    """Shape and spacing (mm, array axis order) of a label map read by nnU-Net, plus origin and direction (or
    the affine) from the reader's header properties where it has them."""
    g = {"shape": tuple(int(s) for s in segmentation.shape),
         "spacing": tuple(float(s) for s in properties["spacing"])}
    if "sitk_stuff" in properties:
        g["origin"] = tuple(float(v) for v in properties["sitk_stuff"]["origin"])
        g["direction"] = tuple(float(v) for v in properties["sitk_stuff"]["direction"])
    if "nibabel_stuff" in properties:
        g["affine"] = tuple(float(v) for v in np.asarray(properties["nibabel_stuff"]["original_affine"]).ravel())
    return g


def describe_geometry(g: dict) -> str:
    fmt = lambda values: "(" + ", ".join(f"{v:.6g}" for v in values) + ")"
    parts = [f"shape {g['shape']}", f"spacing {fmt(g['spacing'])} mm"]
    parts += [f"{key} {fmt(g[key])}" for key in ("origin", "direction", "affine") if key in g]
    return ", ".join(parts)


def check_geometry(case: str, reference_file: str, reference: dict, prediction_file: str, prediction: dict) -> None:
    """Raise a ValueError naming the case and both geometries when shape, spacing, origin or direction differ
    (beyond :data:`GEOMETRY_RTOL` / :data:`GEOMETRY_ATOL`)."""
    same = reference["shape"] == prediction["shape"]
    for key in ("spacing", "origin", "direction", "affine"):
        if same and key in reference and key in prediction:
            same = len(reference[key]) == len(prediction[key]) and bool(
                np.allclose(reference[key], prediction[key], rtol=GEOMETRY_RTOL, atol=GEOMETRY_ATOL))
    if not same:
        raise ValueError(f"case {case}: the geometry of the prediction {prediction_file} "
                         f"({describe_geometry(prediction)}) differs from the reference {reference_file} "
                         f"({describe_geometry(reference)})")


def what_to_do(case: str, role: str) -> str:
    """What to do about a bad file of ``case``: predict it again, or replace the reference."""
    if role == "reference":
        return f"replace the reference of case {case} with a complete label map and run tumorsynth_evaluate again"
    return (f"predict case {case} again (nnUNetv2_predict; a killed run leaves such files) and run "
            "tumorsynth_evaluate again")


def file_problem(case: str, role: str, path: str) -> str | None:
    """None if ``path`` is complete (:func:`~nnunetv2_tumorsynth.files.check_complete`), else what is wrong with
    it and what to do, in one line."""
    try:
        check_complete(path)
    except CorruptFile as e:
        cause = e.__cause__
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
        return f"the {role} {path} is truncated or corrupt ({reason}); {what_to_do(case, role)}"
    return None


def check_files_complete(references: dict[str, str], folders: Sequence[Folder], num_threads: int) -> None:
    """Decompress every reference and prediction file once before any case is scored (threads: zlib releases
    the GIL); a CorruptFile listing every truncated or corrupt file and what to do, in one line.

    SimpleITK reads a truncated ``.nii.gz`` (a prediction of a killed ``nnUNetv2_predict``) without an error,
    with zeros past the cut: without this check such a case would get a silent, wrong score.
    """
    files = [(case, "reference", path) for case, path in references.items()]
    files += [(case, f.role, path) for f in folders for case, path in f.files.items() if case in references]
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        problems = [p for p in pool.map(lambda item: file_problem(*item), files) if p is not None]
    if problems:
        raise CorruptFile(f"{len(problems)} file(s) truncated or corrupt, nothing evaluated: " + "; ".join(problems))


def read_label_map(reader_class: type, path: str, case: str = "?", role: str = "label map") -> tuple[np.ndarray, dict]:
    """Label map (array axis order of nnU-Net's reader, first axis of its channel dimension removed) and geometry.

    A file the reader cannot read is a CorruptFile naming it (one line, the reader's last message line)."""
    try:
        segmentation, properties = reader_class().read_seg(path)
    except Exception as e:  # any reader (SimpleITK, nibabel, tifffile...): its own exception types
        lines = str(e).strip().splitlines() or [""]
        raise CorruptFile(f"the {role} {path} cannot be read ({type(e).__name__}: {lines[-1].strip()[:200]}); "
                          f"{what_to_do(case, role)}") from e
    segmentation = segmentation[0]
    return segmentation, geometry(segmentation, properties)


def check_label_values(job: CaseJob, role: str, path: str, segmentation: np.ndarray) -> None:
    """Raise :class:`UndeclaredLabelValues` naming the case, the file and the values when ``segmentation`` holds
    values outside ``job.declared_values``."""
    outside = ~np.isin(segmentation, job.declared_values)
    if not outside.any():
        return
    values = ", ".join(f"{v:g}" for v in np.unique(segmentation[outside]))
    declared = ", ".join(str(v) for v in job.declared_values)
    if role == "reference":
        todo = "evaluate with the dataset.json of these references (-djfile), or list every label value with -l"
    else:
        todo = (f"predict case {job.case} with a model of this dataset, or evaluate with the dataset.json that "
                "declares these values (-djfile)")
    raise UndeclaredLabelValues(f"case {job.case}: the {role} {path} holds label values {values} not declared "
                                f"in {job.labels_source} (declared: {declared}); {todo}")


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


def load_dataset_json(dataset_json: str | dict | None, prediction_folder: str, reference_folder: str,
                      labels: Sequence[int | str] | None = None) -> tuple[dict, str | None, str]:
    """dataset.json's content, its path (None when given as a dict or built from ``labels``) and where the
    labels come from (for messages).

    Without a dataset.json (none given, none found) the label values of ``labels`` are the labels
    (:func:`dataset_json_from_labels`), as with ``nnUNetv2_evaluate_simple -l``; without either it is an error.
    """
    if isinstance(dataset_json, dict):
        return check_dataset_json(dataset_json, "the dataset_json dict"), None, "the dataset_json dict"
    path = find_dataset_json(dataset_json, prediction_folder, reference_folder)
    if path is not None:
        return read_dataset_json(path), path, path
    if labels is not None:
        return dataset_json_from_labels(labels, reference_folder), None, "-l"
    candidates = dataset_json_candidates(prediction_folder, reference_folder)
    raise FileNotFoundError(f"no dataset.json found (looked for {' and '.join(candidates)}); pass it with -djfile, "
                            "or give the label values with -l")


def reader_for(dataset_json: dict, example_file: str) -> type:
    """nnU-Net's reader class for this dataset (its file ending, or ``overwrite_image_reader_writer``); a
    CorruptFile naming ``example_file`` when no reader can read it."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    try:
        return determine_reader_writer_from_dataset_json(dataset_json, example_file, verbose=False)
    except RuntimeError as e:
        raise CorruptFile(f"no nnU-Net reader for {dataset_json['file_ending']} files can read {example_file}; "
                          "replace it with a complete label map and run tumorsynth_evaluate again") from e


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
