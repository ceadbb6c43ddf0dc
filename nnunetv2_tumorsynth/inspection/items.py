"""Readers of synthetic and real tumours: one ``TumourItem`` per tumour, with its image before and after.

Three kinds of input hold synthetic tumours:

- a dataset written by ``tumorsynth_generate`` (an nnU-Net raw dataset in the source cases' original
  geometry, with its record naming each image's source case); "before" is the source raw image;
- the same with ``--replace-real``: every real tumour of a case replaced by a synthetic one in the same mask;
- a trainer's synthesis bank (``fold_<f>/synthesis_bank/<case>/*.npz``, see :mod:`nnunetv2_tumorsynth.bank.store`),
  whose entries live in nnU-Net's preprocessed space; "before" is the preprocessed case.

Each yields :class:`TumourItem` objects (one per synthetic tumour, with its image before and after), which
:mod:`.preview` draws. The realism statistics (:mod:`nnunetv2_tumorsynth.inspection.realism`) and the Turing kit
(:mod:`nnunetv2_tumorsynth.inspection.turing`) read their inputs through the same functions.

Arrays are (z, y, x) as SimpleITK returns them; spacing in mm in that order; ``direction`` is SimpleITK's
9-tuple (row-major 3x3, column c = direction of index axis c, c = 0 being x). For display, volumes are
reoriented to LPS (axis 0 inferior to superior, axis 1 anterior to posterior, axis 2 right to left), so
axial slices show the patient's anterior at the top and its left on the right of the screen (radiological
convention), coronal and sagittal slices show superior at the top, sagittal slices anterior on the left.
"""

from __future__ import annotations

import glob
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunetv2_tumorsynth.files import read_image
from nnunetv2_tumorsynth.generate.settings import RECORDS_JSON
from nnunetv2_tumorsynth.generate.settings import SETTINGS_JSON as GENERATE_SETTINGS_JSON
from nnunetv2_tumorsynth.nnunet import PreprocessedDataset, organ_and_tumour_labels

FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


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
    """(array (z, y, x), spacing (z, y, x) mm, direction) of an image file; ``files.CorruptFile`` (a ValueError
    naming it) when it is truncated or cannot be decoded, instead of SimpleITK's zeros past a truncation."""
    image = read_image(path)
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


def bank_dataset(bank_folder: str, dataset: str | None = None, configuration: str | None = None,
                 plans_identifier: str | None = None, organ_label: str | int | None = None,
                 tumour_label: str | int | None = None) -> PreprocessedDataset:
    """The preprocessed dataset a bank's entries live in, resolved from the bank's path unless given.

    A trainer's bank is ``$nnUNet_results/<Dataset>/<trainer>__<plans>__<configuration>/fold_<f>/synthesis_bank``.
    """
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
    return PreprocessedDataset.open(dataset, plans_identifier, configuration, organ_label, tumour_label)


def is_bank(folder: str) -> bool:
    """A folder whose sub-folders hold bank entries (``*.npz``)."""
    if not os.path.isdir(folder) or os.path.isfile(os.path.join(folder, "dataset.json")):
        return False
    return any(glob.glob(os.path.join(folder, "*", "*.npz")))


def _to_original_axes(array: np.ndarray, transpose_backward: Sequence[int]) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(tuple(transpose_backward)))


def bank_items(bank_folder: str, dataset: PreprocessedDataset | None = None, cases: Sequence[str] | None = None,
               max_per_case: int | None = None) -> Iterator[TumourItem]:
    """One item per bank entry, on the whole preprocessed case, arrays back in the original axis order.

    An unreadable entry is skipped with a warning that names it (training skips it the same way)."""
    from nnunetv2_tumorsynth.bank.store import bank_cases, entry_paths
    from nnunetv2_tumorsynth.synthesis.entry import Entry, UnreadableEntry

    dataset = dataset or bank_dataset(bank_folder)
    back = dataset.transpose_backward
    spacing = tuple(dataset.spacing[a] for a in back)
    names = bank_cases(bank_folder)
    for case in names if cases is None else [c for c in names if c in set(cases)]:
        paths = entry_paths(bank_folder, case)
        if max_per_case is not None:
            paths = paths[-max_per_case:]
        if not paths:
            continue
        data, seg, properties = dataset.load_case(case)
        image, seg = data[0], seg[0]
        direction = properties.get("sitk_stuff", {}).get("direction")
        before = _to_original_axes(image, back)
        real_tumours = seg == dataset.tumour_label
        organ_pre = seg == dataset.organ_label
        for path in paths:
            try:
                entry = Entry.load(path)
            except FileNotFoundError:  # pruned meanwhile
                continue
            except UnreadableEntry as e:
                warnings.warn(f"{e}; skipped", stacklevel=2)
                continue
            mask = np.zeros(image.shape, bool)
            mask[entry.box] = entry.mask
            after = image.copy()
            entry.paste_into(after)
            yield TumourItem(
                case, os.path.splitext(os.path.basename(path))[0], case, before, _to_original_axes(after, back),
                _to_original_axes(mask, back), _to_original_axes(organ_pre & ~mask & ~real_tumours, back),
                _to_original_axes(real_tumours | mask, back), spacing, direction,
                info={"epoch": entry.epoch, "space": "preprocessed"})


def preprocessed_real_items(dataset: PreprocessedDataset, cases: Sequence[str] | None = None) -> Iterator[TumourItem]:
    """The real tumours of a dataset's preprocessed cases (the intensity scale of its bank entries)."""
    back = dataset.transpose_backward
    spacing = tuple(dataset.spacing[a] for a in back)
    for case in dataset.identifiers() if cases is None else cases:
        data, seg, properties = dataset.load_case(case)
        tumours = _to_original_axes(seg[0] == dataset.tumour_label, back)
        organ = _to_original_axes(seg[0] == dataset.organ_label, back)
        image = _to_original_axes(data[0], back)
        direction = properties.get("sitk_stuff", {}).get("direction")
        for k, mask in enumerate(components(tumours), start=1):
            yield TumourItem(case, f"t{k}", case, None, image, mask, organ, tumours, spacing, direction, kind="real")


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
