"""Looking at synthetic tumours: PNG montages, and the readers of what was synthesised.

Three kinds of input hold synthetic tumours:

- a dataset written by ``tumorsynth_generate`` (an nnU-Net raw dataset in the source cases' original
  geometry, with its record naming each image's source case); "before" is the source raw image;
- the same with ``--replace-real``: every real tumour of a case replaced by a synthetic one in the same mask;
- a trainer's synthesis bank (``fold_<f>/synthesis_bank/<case>/*.npz``, see :mod:`nnunetv2_tumorsynth.bank.store`),
  whose entries live in nnU-Net's preprocessed space; "before" is the preprocessed case.

Each yields :class:`TumourItem` objects (one per synthetic tumour, with its image before and after), which
:func:`write_previews` draws: per tumour, axial, coronal and sagittal slices through its centre, before and
after, with the mask outline, the intensity window taken from the organ; one PNG per page of N tumours.
The realism statistics (:mod:`nnunetv2_tumorsynth.inspection.realism`) and the Turing kit
(:mod:`nnunetv2_tumorsynth.inspection.turing`) read their inputs through the same functions.

Arrays are (z, y, x) as SimpleITK returns them; spacing in mm in that order; ``direction`` is SimpleITK's
9-tuple (row-major 3x3, column c = direction of index axis c, c = 0 being x). For display, volumes are
reoriented to LPS (axis 0 inferior to superior, axis 1 anterior to posterior, axis 2 right to left), so
axial slices show the patient's anterior at the top and its left on the right of the screen (radiological
convention), coronal and sagittal slices show superior at the top, sagittal slices anterior on the left.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunetv2_tumorsynth.files import atomic_path, write_json_atomic
from nnunetv2_tumorsynth.nnunet import organ_and_tumour_labels

FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
# the files tumorsynth_generate writes beside its images (``generate.RECORDS_JSON`` / ``SETTINGS_JSON``; repeated
# here so that reading a dataset does not import the generator and torch; a test checks they agree)
RECORDS_JSON = "synthesis_records.json"
GENERATE_SETTINGS_JSON = "tumorsynth_generate.json"


class PreviewInputError(ValueError):
    """An input folder that is not a dataset, generated dataset or bank; the message says what was expected."""


# ------------------------------------------------------------------------------------------------ raw datasets


@dataclass
class RawCase:
    """One case of an nnU-Net raw dataset: image (channel 0, float32) and label, (z, y, x)."""

    case: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    direction: tuple[float, ...] | None
    image_path: str
    label_path: str


def resolve_raw_dataset(dataset: str) -> str:
    """A raw dataset folder from a path, an id (``501``) or a name (``Dataset501_ATLAS``, under ``$nnUNet_raw``)."""
    if os.path.isdir(dataset):
        return os.path.abspath(dataset)
    from nnunetv2.paths import nnUNet_raw

    from nnunetv2_tumorsynth.nnunet import dataset_name

    try:
        name = dataset_name(dataset)
    except (RuntimeError, ValueError) as error:
        raise PreviewInputError(f"{dataset!r} is neither a folder nor a dataset in nnUNet_raw={nnUNet_raw!r}: "
                                f"{error}") from error
    return os.path.join(nnUNet_raw, name)


def read_dataset_json(folder: str) -> dict:
    path = os.path.join(folder, "dataset.json")
    if not os.path.isfile(path):
        raise PreviewInputError(f"{folder} is not an nnU-Net raw dataset: {path} does not exist")
    with open(path) as f:
        return json.load(f)


def dataset_cases(folder: str) -> list[str]:
    """Case ids of ``folder/labelsTr`` (sorted)."""
    ending = read_dataset_json(folder).get("file_ending", ".nii.gz")
    labels = os.path.join(folder, "labelsTr")
    if not os.path.isdir(labels):
        raise PreviewInputError(f"{folder} has no labelsTr folder")
    return sorted(f[: -len(ending)] for f in os.listdir(labels) if f.endswith(ending) and not f.startswith("."))


def read_sitk(path: str) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, ...]]:
    """(array (z, y, x), spacing (z, y, x) mm, direction) of an image file."""
    image = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(image), tuple(float(s) for s in image.GetSpacing()[::-1]), image.GetDirection()


def read_raw_case(folder: str, case: str, images: str = "imagesTr", labels: str = "labelsTr") -> RawCase:
    """Channel 0 and the label of ``case`` in a raw dataset."""
    ending = read_dataset_json(folder).get("file_ending", ".nii.gz")
    image_path = os.path.join(folder, images, f"{case}_0000{ending}")
    label_path = os.path.join(folder, labels, f"{case}{ending}")
    for path in (image_path, label_path):
        if not os.path.isfile(path):
            raise PreviewInputError(f"{path} does not exist (case {case} of {folder})")
    image, spacing, direction = read_sitk(image_path)
    label, _, _ = read_sitk(label_path)
    if label.shape != image.shape:
        raise PreviewInputError(f"{label_path}: label shape {label.shape} differs from image shape {image.shape}")
    return RawCase(case, image.astype(np.float32), label.astype(np.int16), spacing, direction, image_path, label_path)


def dataset_labels(folder: str, organ: str | int | None = None, tumour: str | int | None = None) -> tuple[int, int]:
    """(organ, tumour) label values of a raw dataset (from dataset.json names unless given)."""
    return organ_and_tumour_labels(read_dataset_json(folder), organ, tumour)


# ------------------------------------------------------------------------------------------------ tumour items


@dataclass
class TumourItem:
    """One tumour to show or measure. Arrays (z, y, x) share the case's memory; ``mask`` is this tumour only.

    before: the image without this synthetic tumour (None for a real tumour shown alone).
    after: the image with it. organ: the organ label's voxels without tumours. tumours: every tumour voxel of
    ``after`` (this one included). case / entry: where it comes from (entry: ``t<k>`` for the k-th tumour of
    an image, or the bank entry's file stem). source_case: the real case it was made from.
    """

    case: str
    entry: str
    source_case: str
    before: np.ndarray | None
    after: np.ndarray
    mask: np.ndarray
    organ: np.ndarray
    tumours: np.ndarray
    spacing: tuple[float, float, float]
    direction: tuple[float, ...] | None = None
    kind: str = "synthetic"
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``<case>-<entry>`` (with ``.from-<source>`` when the case id does not start with the source case's)."""
        source = "" if not self.source_case or self.case.startswith(self.source_case) else f".from-{self.source_case}"
        return f"{self.case}{source}-{self.entry}"

    @property
    def volume_ml(self) -> float:
        return float(self.mask.sum() * np.prod(self.spacing) / 1000.0)


def components(mask: np.ndarray) -> list[np.ndarray]:
    """Connected components (26-connectivity) of a mask, in order of their first voxel (raster order)."""
    labelled, n = ndimage.label(mask, structure=FULL_CONNECTIVITY)
    return [labelled == i for i in range(1, n + 1)]


def real_items(folder: str, cases: Sequence[str] | None = None, organ_label: str | int | None = None,
               tumour_label: str | int | None = None) -> Iterator[TumourItem]:
    """The real tumours of a raw dataset: one item per connected tumour component (kind "real")."""
    organ_value, tumour_value = dataset_labels(folder, organ_label, tumour_label)
    for case in cases if cases is not None else dataset_cases(folder):
        raw = read_raw_case(folder, case)
        tumours = raw.label == tumour_value
        organ = raw.label == organ_value
        for k, mask in enumerate(components(tumours), start=1):
            yield TumourItem(case, f"t{k}", case, None, raw.image, mask, organ, tumours, raw.spacing, raw.direction,
                             kind="real")


# ------------------------------------------------------------------------------------------------ generated datasets


@dataclass
class GeneratedImage:
    """One image of a dataset written by ``tumorsynth_generate``, from its ``synthesis_records.json``.

    case: the new case id. source_case: the real case it was made from; source_image: that case's raw image
    file; source_dataset: the source raw dataset folder (``tumorsynth_generate.json``'s ``source_raw``).
    mode: "synthetic" (one tumour added, the real ones kept), "replaced" (``--replace-real``: real tumours
    replaced by synthetic ones in their own masks) or "real" (a real training case copied by
    ``--include-real``). tumours: the record's tumour entries (with "replaced", a list in the order of the
    tumour label's connected components, 26-connectivity).
    """

    case: str
    source_case: str
    source_image: str | None
    source_dataset: str | None
    mode: str
    tumours: list[dict] = field(default_factory=list)
    record: dict = field(default_factory=dict)

    @property
    def replaced_real(self) -> bool:
        return self.mode == "replaced"

    @property
    def real(self) -> bool:
        return self.mode == "real"


def read_generation_record(folder: str) -> list[GeneratedImage]:
    """The images of a dataset written by ``tumorsynth_generate`` (see :class:`GeneratedImage`)."""
    path = os.path.join(folder, RECORDS_JSON)
    if not os.path.isfile(path):
        raise PreviewInputError(f"{folder} has no {RECORDS_JSON}: is it a dataset written by tumorsynth_generate?")
    with open(path) as f:
        rows = json.load(f)
    source_dataset = None
    settings_path = os.path.join(folder, GENERATE_SETTINGS_JSON)
    if os.path.isfile(settings_path):
        with open(settings_path) as f:
            source_dataset = json.load(f).get("source_raw")
    images = []
    for row in rows:
        if "image" not in row or "source_case" not in row:
            raise PreviewInputError(f"{path}: a record without 'image' or 'source_case': {row}")
        images.append(GeneratedImage(str(row["image"]), str(row["source_case"]), row.get("source_image"),
                                     source_dataset, str(row.get("mode", "synthetic")), list(row.get("tumours") or []),
                                     row))
    return images


def find_record(folder: str) -> str:
    """The generation record of a generated dataset folder (PreviewInputError if there is none)."""
    path = os.path.join(folder, RECORDS_JSON)
    if not os.path.isfile(path):
        raise PreviewInputError(f"{folder} has no {RECORDS_JSON}: is it a dataset written by tumorsynth_generate?")
    return path


def read_source_case(image: GeneratedImage, source: str | None = None) -> RawCase:
    """The raw source case of a generated image: from ``source`` (a raw dataset) if given, else from the
    record (its ``source_image`` and the label of the same case in the source dataset)."""
    if source is not None:
        return read_raw_case(resolve_raw_dataset(source), image.source_case)
    if image.source_dataset is None:
        raise PreviewInputError(f"the record of {image.case} does not name its source dataset; pass it explicitly "
                                f"(--source DATASET)")
    folder = image.source_dataset
    ending = read_dataset_json(folder).get("file_ending", ".nii.gz")
    image_path = image.source_image or os.path.join(folder, "imagesTr", f"{image.source_case}_0000{ending}")
    label_path = os.path.join(folder, "labelsTr", f"{image.source_case}{ending}")
    for path in (image_path, label_path):
        if not os.path.isfile(path):
            raise PreviewInputError(f"{path} (source of {image.case}) does not exist; pass the source dataset "
                                    f"explicitly (--source DATASET)")
    array, spacing, direction = read_sitk(image_path)
    label, _, _ = read_sitk(label_path)
    return RawCase(image.source_case, array.astype(np.float32), label.astype(np.int16), spacing, direction,
                   image_path, label_path)


def synthetic_components(image: GeneratedImage, generated: RawCase, original: RawCase,
                         tumour_label: int) -> list[np.ndarray]:
    """The synthetic tumours of a generated image, one mask per connected component (26-connectivity).

    "synthetic" mode: components of the tumour voxels that were not tumour in the source label. "replaced"
    mode: the tumour components the record marks as replaced (``tumorsynth_generate`` keeps a real tumour
    that does not fit the diffusion model's context); if the record's list does not match the components,
    the components whose image values changed.
    """
    tumour = generated.label == tumour_label
    if image.mode != "replaced":
        return components(tumour & (original.label != tumour_label))
    found = components(tumour)
    if len(image.tumours) == len(found):
        return [m for m, t in zip(found, image.tumours) if t.get("replaced", True)]
    return [m for m in found if np.any(generated.image[m] != original.image[m])]


def generated_items(folder: str, source: str | None = None, cases: Sequence[str] | None = None,
                    organ_label: str | int | None = None,
                    tumour_label: str | int | None = None) -> Iterator[TumourItem]:
    """The synthetic tumours of a generated dataset: one item per connected component (see
    :func:`synthetic_components`). ``before`` is the source case's raw image (from ``source``, a raw dataset, or
    as the record says). Real cases copied into the dataset (``--include-real``) are skipped.
    """
    organ_value, tumour_value = dataset_labels(folder, organ_label, tumour_label)
    wanted = None if cases is None else set(cases)
    for image in read_generation_record(folder):
        if image.real or (wanted is not None and image.case not in wanted and image.source_case not in wanted):
            continue
        generated = read_raw_case(folder, image.case)
        original = read_source_case(image, source)
        if original.image.shape != generated.image.shape:
            raise PreviewInputError(f"{image.case}: shape {generated.image.shape} differs from its source case "
                                    f"{image.source_case} {original.image.shape}")
        tumours = generated.label == tumour_value
        organ = generated.label == organ_value
        info = {k: image.record.get(k) for k in ("mode", "texture", "size_requested", "deformation", "seed")}
        for k, mask in enumerate(synthetic_components(image, generated, original, tumour_value), start=1):
            yield TumourItem(image.case, f"t{k}", image.source_case, original.image, generated.image, mask, organ,
                             tumours, generated.spacing, generated.direction, info=info)


# ------------------------------------------------------------------------------------------------ banks


@dataclass
class BankContext:
    """Where a synthesis bank's cases live: the preprocessed data of its dataset, plans and configuration."""

    bank_folder: str
    dataset: str
    plans_identifier: str
    configuration: str
    data_folder: str
    spacing: tuple[float, float, float]  # preprocessed axis order
    transpose_backward: tuple[int, int, int]
    organ_label: int
    tumour_label: int


def bank_context(bank_folder: str, dataset: str | None = None, configuration: str | None = None,
                 plans_identifier: str | None = None, organ_label: str | int | None = None,
                 tumour_label: str | int | None = None) -> BankContext:
    """Resolve a bank's dataset, plans and configuration from its path, unless given.

    A trainer's bank is ``$nnUNet_results/<Dataset>/<trainer>__<plans>__<configuration>/fold_<f>/synthesis_bank``.
    """
    from nnunetv2_tumorsynth.nnunet import (
        configuration_data_folder,
        dataset_name,
        load_dataset_json,
        load_plans,
    )

    bank_folder = os.path.abspath(bank_folder)
    fold_folder = os.path.dirname(bank_folder)
    trainer_folder = os.path.dirname(fold_folder)
    parts = os.path.basename(trainer_folder).split("__")
    if dataset is None or configuration is None or plans_identifier is None:
        if len(parts) != 3 or not os.path.basename(fold_folder).startswith("fold_"):
            raise PreviewInputError(
                f"{bank_folder} is not inside <Dataset>/<trainer>__<plans>__<configuration>/fold_<f>/; pass the "
                f"dataset, configuration and plans explicitly (-d, -c, -p)")
        dataset = dataset or os.path.basename(os.path.dirname(trainer_folder))
        plans_identifier = plans_identifier or parts[1]
        configuration = configuration or parts[2]
    name = dataset_name(dataset)
    plans = load_plans(name, plans_identifier)
    data_folder = configuration_data_folder(name, plans, configuration)
    config = plans["configurations"][configuration]
    spacing = config.get("spacing") or plans["configurations"][config["inherits_from"]]["spacing"]
    organ_value, tumour_value = organ_and_tumour_labels(load_dataset_json(name), organ_label, tumour_label)
    return BankContext(bank_folder, name, plans_identifier, configuration, data_folder,
                       tuple(float(s) for s in spacing), tuple(int(a) for a in plans["transpose_backward"]),
                       organ_value, tumour_value)


def is_bank(folder: str) -> bool:
    """A folder whose sub-folders hold bank entries (``*.npz``)."""
    if not os.path.isdir(folder) or os.path.isfile(os.path.join(folder, "dataset.json")):
        return False
    return any(glob.glob(os.path.join(folder, "*", "*.npz")))


def load_preprocessed_case(context: BankContext, case: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(image channel 0, seg, properties) of a preprocessed case, preprocessed axis order."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    dataset_class = infer_dataset_class(context.data_folder)
    data, seg, _, properties = dataset_class(context.data_folder, [case]).load_case(case)
    return np.asarray(data[0], dtype=np.float32), np.asarray(seg[0]), properties


def _to_original_axes(array: np.ndarray, transpose_backward: Sequence[int]) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(tuple(transpose_backward)))


def bank_items(bank_folder: str, context: BankContext | None = None, cases: Sequence[str] | None = None,
               max_per_case: int | None = None) -> Iterator[TumourItem]:
    """One item per bank entry, on the whole preprocessed case, arrays back in the original axis order."""
    from nnunetv2_tumorsynth.bank.store import entry_paths, load_entry

    context = context or bank_context(bank_folder)
    back = context.transpose_backward
    spacing = tuple(context.spacing[a] for a in back)
    names = sorted(c for c in os.listdir(bank_folder) if os.path.isdir(os.path.join(bank_folder, c))
                   and not c.startswith(".") and c not in ("usage", "dumps"))
    for case in names if cases is None else [c for c in names if c in set(cases)]:
        paths = entry_paths(bank_folder, case)
        if max_per_case is not None:
            paths = paths[-max_per_case:]
        if not paths:
            continue
        image, seg, properties = load_preprocessed_case(context, case)
        direction = properties.get("sitk_stuff", {}).get("direction")
        before = _to_original_axes(image, back)
        real_tumours = seg == context.tumour_label
        organ_pre = seg == context.organ_label
        for path in paths:
            try:
                entry = load_entry(path)
            except (FileNotFoundError, OSError, ValueError):  # pruned meanwhile
                continue
            corner, mask_box = entry["corner"].astype(int), entry["mask"].astype(bool)
            box = tuple(slice(int(c), int(c) + s) for c, s in zip(corner, mask_box.shape))
            mask = np.zeros(image.shape, bool)
            mask[box] = mask_box
            after = image.copy()
            values = entry["values"][0] if entry["values"].ndim == 4 else entry["values"]
            after[box][mask_box] = values[mask_box]
            yield TumourItem(
                case, os.path.splitext(os.path.basename(path))[0], case, before, _to_original_axes(after, back),
                _to_original_axes(mask, back), _to_original_axes(organ_pre & ~mask & ~real_tumours, back),
                _to_original_axes(real_tumours | mask, back), spacing, direction,
                info={"epoch": int(entry["epoch"]) if "epoch" in entry else None, "space": "preprocessed"})


def preprocessed_real_items(context: BankContext, cases: Sequence[str] | None = None) -> Iterator[TumourItem]:
    """The real tumours of the preprocessed cases of a bank's dataset (same intensity scale as its entries)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    back = context.transpose_backward
    spacing = tuple(context.spacing[a] for a in back)
    identifiers = infer_dataset_class(context.data_folder).get_identifiers(context.data_folder)
    for case in sorted(identifiers) if cases is None else cases:
        image, seg, properties = load_preprocessed_case(context, case)
        tumours = _to_original_axes(seg == context.tumour_label, back)
        organ = _to_original_axes(seg == context.organ_label, back)
        image = _to_original_axes(image, back)
        direction = properties.get("sitk_stuff", {}).get("direction")
        for k, mask in enumerate(components(tumours), start=1):
            yield TumourItem(case, f"t{k}", case, None, image, mask, organ, tumours, spacing, direction, kind="real")


# ------------------------------------------------------------------------------------------------ drawing


def lps_reorientation(direction: Sequence[float] | None) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """(axis permutation, flips) that bring a (z, y, x) array with this direction to LPS display order.

    Output axis 0 runs inferior to superior, 1 anterior to posterior, 2 right to left. Each output axis takes
    the array axis whose direction is closest to it (as ``sitk.DICOMOrient`` does). None: identity.
    """
    if direction is None:
        return (0, 1, 2), (False, False, False)
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)  # [world axis, index axis (x, y, z)]
    used: list[int] = []
    permutation, flips = [], []
    for world in (2, 1, 0):  # S, P, L
        candidates = [c for c in range(3) if c not in used]
        index_axis = max(candidates, key=lambda c: abs(matrix[world, c]))
        used.append(index_axis)
        permutation.append(2 - index_axis)  # index axis x is array axis 2
        flips.append(bool(matrix[world, index_axis] < 0))
    return tuple(permutation), tuple(flips)


def reorient(array: np.ndarray, permutation: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    out = array.transpose(tuple(permutation))
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return out


def organ_window(image: np.ndarray, organ: np.ndarray, widen: float = 0.5) -> tuple[float, float]:
    """Display window: the organ's 1st-99th percentiles, widened by ``widen`` x their range on each side.

    Without organ voxels, the image's own 1st-99th percentiles.
    """
    values = image[organ] if organ.any() else image.ravel()
    low, high = (float(v) for v in np.percentile(values, [1, 99]))
    span = max(high - low, 1e-6)
    return low - widen * span, high + widen * span


@dataclass
class Panel:
    """One slice for display: 2D arrays, imshow extent in mm around the tumour centre, and origin."""

    before: np.ndarray | None
    after: np.ndarray
    mask: np.ndarray
    extent: tuple[float, float, float, float]
    origin: str


def tumour_panels(item: TumourItem, fov_mm: float = 60.0, fov_factor: float = 2.5) -> dict[str, Panel]:
    """Axial, coronal and sagittal slices through the tumour's centre, cropped to a square field of view.

    The field of view (mm) is max(fov_mm, fov_factor x the tumour's largest extent). The centre is the tumour
    voxel nearest the tumour's centre of mass.
    """
    permutation, flips = lps_reorientation(item.direction)
    spacing = tuple(item.spacing[a] for a in permutation)
    after = reorient(item.after, permutation, flips)
    before = None if item.before is None else reorient(item.before, permutation, flips)
    mask = reorient(item.mask, permutation, flips)
    voxels = np.argwhere(mask)
    centre_of_mass = voxels.mean(0)
    centre = voxels[np.argmin(((voxels - centre_of_mass) ** 2 * np.square(spacing)).sum(1))]
    extent_mm = (voxels.max(0) - voxels.min(0) + 1) * np.asarray(spacing)
    fov = max(fov_mm, fov_factor * float(extent_mm.max()))
    lo = [max(0, int(c) - int(math.ceil(fov / 2 / s))) for c, s in zip(centre, spacing)]
    hi = [min(n, int(c) + int(math.ceil(fov / 2 / s)) + 1) for c, n, s in zip(centre, mask.shape, spacing)]

    def edges(axis: int) -> tuple[float, float]:
        return (lo[axis] - centre[axis] - 0.5) * spacing[axis], (hi[axis] - 1 - centre[axis] + 0.5) * spacing[axis]

    def cut(array: np.ndarray | None, view: str) -> np.ndarray | None:
        if array is None:
            return None
        z, y, x = (int(c) for c in centre)
        zs, ys, xs = (slice(a, b) for a, b in zip(lo, hi))
        return {"axial": array[z, ys, xs], "coronal": array[zs, y, xs], "sagittal": array[zs, ys, x]}[view]

    (z0, z1), (y0, y1), (x0, x1) = edges(0), edges(1), edges(2)
    extents = {"axial": ((x0, x1, y1, y0), "upper"), "coronal": ((x0, x1, z0, z1), "lower"),
               "sagittal": ((y0, y1, z0, z1), "lower")}
    return {view: Panel(cut(before, view), cut(after, view), cut(mask, view), extent, origin)
            for view, (extent, origin) in extents.items()}


VIEWS = ("axial", "coronal", "sagittal")


def draw_page(items: Sequence[TumourItem], png_path: str, title: str = "", fov_mm: float = 60.0,
              dpi: int = 100) -> None:
    """One PNG: a row per tumour; columns axial, coronal, sagittal, each before and after (after only when no
    item of the page has a "before"). This tumour's outline in red, the image's other tumours in cyan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = ("before", "after") if any(item.before is not None for item in items) else ("after",)
    columns = len(VIEWS) * len(stages)
    fig, axes = plt.subplots(len(items), columns, figsize=(2.2 * columns + 1.0, 2.45 * len(items) + 0.5),
                             squeeze=False)
    for row, item in zip(axes, items):
        reference = item.before if item.before is not None else item.after
        window = organ_window(reference, item.organ & ~item.tumours)
        panels = tumour_panels(item, fov_mm)
        others = _other_tumour_panels(item, fov_mm)
        for v, view in enumerate(VIEWS):
            panel = panels[view]
            for w, when in enumerate(stages):
                ax = row[len(stages) * v + w]
                image = panel.before if when == "before" else panel.after
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{view} {when}", fontsize=8)
                if image is None:
                    ax.text(0.5, 0.5, "(no before)", ha="center", va="center", transform=ax.transAxes, fontsize=8)
                    continue
                ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], extent=panel.extent,
                          origin=panel.origin, interpolation="nearest")
                if others[view].any():
                    ax.contour(others[view].astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.6,
                               extent=panel.extent, origin=panel.origin)
                if panel.mask.any():
                    ax.contour(panel.mask.astype(np.float32), levels=[0.5], colors="red", linewidths=0.9,
                               extent=panel.extent, origin=panel.origin)
                ax.set_aspect("equal")
                if v == 0 and when == "after":
                    _scale_bar(ax, panel)
        source = "" if item.source_case in ("", item.case) else f"\nfrom {item.source_case}"
        row[0].set_ylabel(f"{item.case}{source}\n{item.entry}\n{item.volume_ml:.2f} ml, {item.kind}", fontsize=8,
                          rotation=0, ha="right", va="center", labelpad=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)


def _other_tumour_panels(item: TumourItem, fov_mm: float) -> dict[str, np.ndarray]:
    """The image's other tumours (not this one) cut like :func:`tumour_panels` cuts this one."""
    shifted = TumourItem(item.case, item.entry, item.source_case, None, (item.tumours & ~item.mask).astype(np.uint8),
                         item.mask, item.organ, item.tumours, item.spacing, item.direction)
    return {view: panel.after.astype(bool) for view, panel in tumour_panels(shifted, fov_mm).items()}


def _scale_bar(ax, panel: Panel, length_mm: float = 10.0) -> None:
    """A yellow bar of ``length_mm`` in the bottom left corner of an image panel."""
    left, right = sorted(panel.extent[:2])
    low, high = sorted(panel.extent[2:])
    x = left + 0.06 * (right - left)
    y = low + 0.07 * (high - low) if panel.origin == "lower" else high - 0.07 * (high - low)
    ax.plot([x, x + length_mm], [y, y], color="yellow", linewidth=2)
    ax.text(x, y, f"{length_mm:g} mm", color="yellow", fontsize=6, va="bottom" if panel.origin == "lower" else "top")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def page_file_name(page: int, items: Sequence[TumourItem], limit: int = 200) -> str:
    """``page003__<case>-<entry>__<case>-<entry>.png``; shortened (``__and_N_more``) beyond ``limit`` chars."""
    name = f"page{page:03d}"
    for i, item in enumerate(items):
        part = "__" + _safe(item.name)
        if len(name) + len(part) > limit:
            name += f"__and_{len(items) - i}_more"
            break
        name += part
    return name + ".png"


def write_previews(items: Iterable[TumourItem], out_folder: str, per_page: int = 4, title: str = "",
                   fov_mm: float = 60.0, max_tumours: int | None = None, overwrite: bool = False,
                   progress: bool = True) -> list[str]:
    """Draw ``items`` in pages of ``per_page`` tumours; returns the PNG paths.

    Writes ``preview_index.csv`` (page file, case, entry, source case, volume ml, kind) beside the pages.
    Refuses (FileExistsError) a folder that already holds previews unless ``overwrite`` (then old pages go).
    """
    if per_page < 1:
        raise ValueError("per_page must be at least 1")
    os.makedirs(out_folder, exist_ok=True)
    old = glob.glob(os.path.join(out_folder, "page*.png"))
    if old and not overwrite:
        raise FileExistsError(f"{out_folder} already holds previews ({len(old)} pages); pass --overwrite "
                              f"or choose another output folder")
    for path in old:
        os.remove(path)
    written, rows, page_items = [], [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="tumours drawn", unit="tumour", total=max_tumours)

    def flush() -> None:
        if not page_items:
            return
        path = os.path.join(out_folder, page_file_name(len(written) + 1, page_items))
        page_title = f"{title}  (page {len(written) + 1})" if title else f"page {len(written) + 1}"
        draw_page(page_items, path, page_title, fov_mm)
        written.append(path)
        for item in page_items:
            rows.append({"page": os.path.basename(path), "case": item.case, "entry": item.entry,
                         "source_case": item.source_case, "volume_ml": round(item.volume_ml, 4), "kind": item.kind})
        page_items.clear()

    count = 0
    for item in items:
        if max_tumours is not None and count >= max_tumours:
            break
        page_items.append(item)
        count += 1
        if bar is not None:
            bar.update(1)
        if len(page_items) == per_page:
            flush()
    flush()
    if bar is not None:
        bar.close()
    with atomic_path(os.path.join(out_folder, "preview_index.csv")) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["page", "case", "entry", "source_case", "volume_ml", "kind"])
        writer.writeheader()
        writer.writerows(rows)
    return written


def input_kind(path: str) -> str:
    """"generated" (a dataset with a generation record), "bank" (a synthesis bank) or "raw" (a plain dataset)."""
    if os.path.isfile(os.path.join(path, "dataset.json")):
        try:
            find_record(path)
            return "generated"
        except PreviewInputError:
            return "raw"
    if is_bank(path):
        return "bank"
    if os.path.isdir(os.path.join(path, "synthesis_bank")) and is_bank(os.path.join(path, "synthesis_bank")):
        return "bank"
    raise PreviewInputError(
        f"{path} is neither a generated dataset (dataset.json and a generation record), a raw dataset, nor a "
        f"synthesis bank (<case>/*.npz, e.g. $nnUNet_results/<Dataset>/<trainer>__<plans>__<config>/fold_0/"
        f"synthesis_bank)")


def preview(input_path: str, out_folder: str, per_page: int = 4, source: str | None = None,
            dataset: str | None = None, configuration: str | None = None, plans_identifier: str | None = None,
            cases: Sequence[str] | None = None, max_tumours: int | None = None, fov_mm: float = 60.0,
            overwrite: bool = False, progress: bool = True) -> list[str]:
    """PNG montages of the tumours of a generated dataset, a ``--replace-real`` dataset, a bank or a raw dataset.

    input_path: dataset folder (or id / name under ``$nnUNet_raw``), or a bank folder (or the trainer's fold
    folder that holds ``synthesis_bank``). source: raw dataset of the source cases of a generated dataset
    (default: the one its record names). dataset / configuration / plans_identifier: for a bank outside
    ``$nnUNet_results``. A raw dataset shows its real tumours (no "before"). Returns the PNG paths.
    """
    path = input_path if os.path.exists(input_path) else resolve_raw_dataset(input_path)
    kind = input_kind(path)
    if kind == "bank":
        bank = path if is_bank(path) else os.path.join(path, "synthesis_bank")
        context = bank_context(bank, dataset, configuration, plans_identifier)
        items: Iterable[TumourItem] = bank_items(bank, context, cases)
        trainer = os.path.basename(os.path.dirname(os.path.dirname(bank)))
        fold = os.path.basename(os.path.dirname(bank))
        title = f"synthesis bank of {trainer} {fold} ({context.dataset}; preprocessed space and intensities)"
    elif kind == "generated":
        items = generated_items(path, source, cases)
        title = f"generated dataset {os.path.basename(path)}: before = source raw image, after = generated"
    else:
        items = real_items(path, cases)
        title = f"real tumours of {os.path.basename(path)}"
    pages = write_previews(items, out_folder, per_page, title, fov_mm, max_tumours, overwrite, progress)
    write_json_atomic({"input": os.path.abspath(path), "kind": kind, "pages": [os.path.basename(p) for p in pages]},
                      os.path.join(out_folder, "preview.json"))
    return pages
