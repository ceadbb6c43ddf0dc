"""Remove predicted tumours the fold's annotated tumours make implausible (``tumorsynth_postprocess``).

A network trained on a handful of annotated tumours, with or without synthetic ones, also marks specks of a few
voxels that no annotated tumour resembles, and dark spots outside the organ (docs/benchmarks.md, "Small false
positives"). Two rules, both from the fold's training cases only (``synthesis.statistics``), never from the cases
being predicted, each removing a predicted tumour component (26-connectivity):

- size: smaller than a sphere of ``MIN_RADIUS_FRACTION`` times the equivalent radius of the smallest annotated
  training tumour;
- place: touching no voxel of the organ, when every annotated training tumour touches the organ (a tumour of the
  liver lies in the liver; off for a dataset whose tumours also lie elsewhere).

A removed component is given the label that surrounds it most (the organ inside the organ, background outside).
Arrays in nnU-Net's reader axis order, spacing in mm in that order.
"""
from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from nnunetv2_tumorsynth.files import atomic_path, check_complete, write_json_atomic

if TYPE_CHECKING:
    from nnunetv2_tumorsynth.nnunet.dataset import PreprocessedDataset

MIN_RADIUS_FRACTION = 0.5  # a predicted tumour below half the smallest annotated tumour's equivalent radius is removed
POSTPROCESSING_JSON = "postprocessing.json"


def min_tumour_volume_mm3(smallest_radius_mm: float, fraction: float = MIN_RADIUS_FRACTION) -> float:
    """Volume (mm^3) of a sphere of ``fraction`` times the smallest annotated tumour's equivalent radius (mm)."""
    return 4.0 / 3.0 * math.pi * (fraction * smallest_radius_mm) ** 3


def tumour_shells(labels: np.ndarray,
                  tumour_label: int) -> Iterator[tuple[tuple[slice, ...], np.ndarray, np.ndarray]]:
    """Per tumour component of ``labels`` (26-connectivity): (its box grown by one voxel, the component in that box,
    its 26-neighbours outside it in that box)."""
    structure = np.ones((3,) * labels.ndim, bool)
    components, _ = ndimage.label(labels == tumour_label, structure=structure)
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        component = components[grown] == index
        yield grown, component, ndimage.binary_dilation(component, structure) & ~component


def remove_implausible_tumours(segmentation: np.ndarray, tumour_label: int, spacing: Sequence[float],
                               min_volume_mm3: float, organ_label: int | None = None) -> tuple[np.ndarray, dict]:
    """(a copy of ``segmentation`` without the tumour components smaller than ``min_volume_mm3`` and, with an
    ``organ_label``, without those touching no voxel of it; how many of each were removed, {"small": n,
    "outside_organ": m}). A removed component takes the most frequent other label of the voxels touching it."""
    removed = {"small": 0, "outside_organ": 0}
    out = segmentation.copy()
    voxel_mm3 = float(np.prod(spacing))
    for grown, component, shell in tumour_shells(segmentation, tumour_label):
        around = segmentation[grown][shell]
        if component.sum() * voxel_mm3 < min_volume_mm3:
            removed["small"] += 1
        elif organ_label is not None and not (around == organ_label).any():
            removed["outside_organ"] += 1
        else:
            continue
        around = around[around != tumour_label]
        values, counts = np.unique(around, return_counts=True)
        out[grown][component] = values[np.argmax(counts)] if values.size else 0
    return out, removed


def tumours_touching(labels: np.ndarray, tumour_label: int, organ_label: int) -> list[bool]:
    """Per tumour component of ``labels`` (26-connectivity): whether it touches a voxel of ``organ_label``."""
    shells = tumour_shells(labels, tumour_label)
    return [bool((labels[grown][shell] == organ_label).any()) for grown, _, shell in shells]


@dataclass
class PostprocessSummary:
    """What ``postprocess_folder`` did: the rules, how they were chosen, and the components removed per case."""

    min_volume_mm3: float
    organ_label: int | None  # tumours touching no voxel of it are removed; None: that rule is off
    rule: str
    tumour_label: int
    removed: dict[str, dict[str, int]]

    def as_dict(self) -> dict:
        return {"min_volume_mm3": self.min_volume_mm3,
                "organ_label": None if self.organ_label is None else int(self.organ_label), "rule": self.rule,
                "tumour_label": int(self.tumour_label), "removed": self.removed,
                "removed_small_total": int(sum(r["small"] for r in self.removed.values())),
                "removed_outside_organ_total": int(sum(r["outside_organ"] for r in self.removed.values())),
                "removed_total": int(sum(sum(r.values()) for r in self.removed.values()))}


def fold_tumour_rules(source: PreprocessedDataset, fold: int | str,
                      fraction: float = MIN_RADIUS_FRACTION) -> tuple[float, bool, str]:
    """The rules from the annotated training tumours of ``fold`` of a ``PreprocessedDataset`` (the cases and
    measurements of the trainers' tumour statistics): the size threshold (mm^3), whether every tumour touches the
    organ, and a sentence saying how they were chosen; ValueError when the fold has no annotated tumour."""
    from nnunetv2_tumorsynth.synthesis.statistics import measure_tumours

    training, _ = source.fold_cases(fold)
    radii, touching = [], []
    for case in training:
        data, seg = source.load_case(case)[:2]
        labels = np.asarray(seg[0])
        radii += [t.radius_mm for t in measure_tumours(np.asarray(data[0]), labels, source.organ_label,
                                                       source.tumour_label, source.spacing, case)]
        touching += tumours_touching(labels, source.tumour_label, source.organ_label)
    if not radii:
        raise ValueError(f"the training cases of fold {fold} of {source.name} have no annotated tumour (label "
                         f"{source.tumour_label}) to take the smallest size from; pass --min-volume-mm3")
    inside = all(touching)
    where = (f"every one touches organ label {source.organ_label}: tumours touching none are removed" if inside else
             f"{touching.count(False)} touch no voxel of organ label {source.organ_label}: tumours outside it are kept")
    return min_tumour_volume_mm3(min(radii), fraction), inside, (
        f"a sphere of {fraction:g} x the equivalent radius of the smallest of {len(radii)} annotated training "
        f"tumours of fold {fold} of {source.name} ({min(radii):.2f} mm); {where}")


def postprocess_folder(input_folder: str, output_folder: str, dataset: str | int, plans: str = "nnUNetPlans",
                       configuration: str = "3d_fullres", fold: int | str = 0, min_volume_mm3: float | None = None,
                       fraction: float = MIN_RADIUS_FRACTION, tumour_label: str | int | None = None,
                       keep_outside_organ: bool = False, overwrite: bool = False) -> PostprocessSummary:
    """Write every label map of ``input_folder`` (an ``nnUNetv2_predict`` output: its dataset.json gives the file
    ending and reader) into ``output_folder`` without its tumours smaller than ``min_volume_mm3`` and, unless
    ``keep_outside_organ``, those touching no organ voxel (default: both rules from the fold's annotated training
    tumours, ``fold_tumour_rules``; with a given ``min_volume_mm3`` the size rule only). dataset.json and
    plans.json are copied (nnU-Net's tools read them there); ``postprocessing.json`` records the rules, how they
    were chosen and what was removed. The input is never modified; each file is written atomically; an existing
    output folder is refused unless ``overwrite``."""
    from nnunetv2_tumorsynth.evaluation.inputs import list_cases, read_dataset_json, read_label_map, reader_for
    from nnunetv2_tumorsynth.nnunet.dataset import PreprocessedDataset

    if not os.path.isdir(input_folder):
        raise FileNotFoundError(f"input folder {input_folder} does not exist")
    if os.path.abspath(input_folder) == os.path.abspath(output_folder):
        raise ValueError(f"-o {output_folder} is the input folder; write the postprocessed label maps elsewhere")
    if os.path.exists(output_folder) and not overwrite:
        raise FileExistsError(f"{output_folder} already exists; choose another -o or pass --overwrite")
    if min_volume_mm3 is not None and not min_volume_mm3 > 0:
        raise ValueError(f"--min-volume-mm3 must be positive, got {min_volume_mm3!r}")
    dataset_json_file = os.path.join(input_folder, "dataset.json")
    if not os.path.isfile(dataset_json_file):
        raise FileNotFoundError(f"{dataset_json_file} is missing: point -i at an nnUNetv2_predict output folder")
    dataset_json = read_dataset_json(dataset_json_file)
    cases = list_cases(input_folder, dataset_json["file_ending"])
    if not cases:
        raise FileNotFoundError(f"{input_folder} holds no {dataset_json['file_ending']} label maps")
    source = PreprocessedDataset.open(dataset, plans, configuration, tumour_label=tumour_label)
    if min_volume_mm3 is None:
        min_volume_mm3, inside, rule = fold_tumour_rules(source, fold, fraction)
    else:
        inside, rule = False, f"given: --min-volume-mm3 {min_volume_mm3:g}"
    organ_label = source.organ_label if inside and not keep_outside_organ else None
    if inside and keep_outside_organ:
        rule += " (kept: --keep-outside-organ)"
    reader_class = reader_for(dataset_json, next(iter(cases.values())))
    os.makedirs(output_folder, exist_ok=True)
    removed = {}
    for case, path in cases.items():
        check_complete(path)  # SimpleITK reads a truncated .nii.gz as zeros without an error
        segmentation, geometry = read_label_map(reader_class, path, case, "prediction")
        cleaned, removed[case] = remove_implausible_tumours(segmentation, source.tumour_label, geometry["spacing"],
                                                            min_volume_mm3, organ_label)
        with atomic_path(os.path.join(output_folder, os.path.basename(path))) as tmp:
            reader_class().write_seg(cleaned, tmp, geometry["properties"])
    for name in ("dataset.json", "plans.json"):
        if os.path.isfile(os.path.join(input_folder, name)):
            with atomic_path(os.path.join(output_folder, name)) as tmp:
                shutil.copyfile(os.path.join(input_folder, name), tmp)
    summary = PostprocessSummary(float(min_volume_mm3), organ_label, rule, source.tumour_label, removed)
    write_json_atomic(summary.as_dict(), os.path.join(output_folder, POSTPROCESSING_JSON))
    return summary
