"""The inputs of an evaluation: dataset.json and labels, the cases of a folder, their geometry, and the checks
that every label map is complete and holds only declared label values before anything is scored."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from nnunetv2_tumorsynth.files import CorruptFile, check_complete
from nnunetv2_tumorsynth.nnunet import TUMOUR_NAMES

#: Geometry tolerance: spacing and origin in mm (relative and absolute), direction cosines (absolute).
#: Geometry tolerance: spacing and origin in mm (relative and absolute), direction cosines (absolute).
GEOMETRY_RTOL = 1e-5
GEOMETRY_ATOL = 1e-4


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
    """Label map (array axis order of nnU-Net's reader, first axis of its channel dimension removed) and geometry
    (``geometry``; with the reader's own ``properties``, which its ``write_seg`` needs to write a label map back).

    A file the reader cannot read is a CorruptFile naming it (one line, the reader's last message line)."""
    try:
        segmentation, properties = reader_class().read_seg(path)
    except Exception as e:  # any reader (SimpleITK, nibabel, tifffile...): its own exception types
        lines = str(e).strip().splitlines() or [""]
        raise CorruptFile(f"the {role} {path} cannot be read ({type(e).__name__}: {lines[-1].strip()[:200]}); "
                          f"{what_to_do(case, role)}") from e
    segmentation = segmentation[0]
    return segmentation, {**geometry(segmentation, properties), "properties": properties}


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
