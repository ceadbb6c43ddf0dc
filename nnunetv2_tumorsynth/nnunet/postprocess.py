"""Remove predicted tumours smaller than the fold's annotated tumours make plausible (``tumorsynth_postprocess``).

A network trained on a handful of annotated tumours, with or without synthetic ones, also marks specks of a few
voxels that no annotated tumour resembles (docs/benchmarks.md, "Small false positives"). A predicted tumour
component (26-connectivity) smaller than a sphere of ``MIN_RADIUS_FRACTION`` times the equivalent radius of the
smallest annotated training tumour of the fold is given the label that surrounds it most (the organ inside the
organ, background outside). The threshold comes from the training cases only (``synthesis.statistics``), never
from the cases being predicted. Arrays in nnU-Net's reader axis order, spacing in mm in that order.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
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


def remove_small_tumours(segmentation: np.ndarray, tumour_label: int, spacing: Sequence[float],
                         min_volume_mm3: float) -> tuple[np.ndarray, int]:
    """(a copy of ``segmentation`` without the tumour components smaller than ``min_volume_mm3``, how many were
    removed). A removed component takes the most frequent other label of the voxels touching it (26-neighbours)."""
    components, n = ndimage.label(segmentation == tumour_label, structure=np.ones((3,) * segmentation.ndim, bool))
    if n == 0:
        return segmentation.copy(), 0
    voxel_mm3 = float(np.prod(spacing))
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    out = segmentation.copy()
    removed = 0
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if sizes[index] * voxel_mm3 >= min_volume_mm3:
            continue
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        component = components[grown] == index
        touching = ndimage.binary_dilation(component, np.ones((3,) * component.ndim, bool)) & ~component
        around = segmentation[grown][touching]
        around = around[around != tumour_label]
        values, counts = np.unique(around, return_counts=True)
        out[grown][component] = values[np.argmax(counts)] if values.size else 0
        removed += 1
    return out, removed


@dataclass
class PostprocessSummary:
    """What ``postprocess_folder`` did: the threshold, how it was chosen, and the components removed per case."""

    min_volume_mm3: float
    rule: str
    tumour_label: int
    removed: dict[str, int]

    def as_dict(self) -> dict:
        return {"min_volume_mm3": self.min_volume_mm3, "rule": self.rule, "tumour_label": int(self.tumour_label),
                "removed": self.removed, "removed_total": int(sum(self.removed.values()))}


def fold_tumour_threshold(source: PreprocessedDataset, fold: int | str,
                          fraction: float = MIN_RADIUS_FRACTION) -> tuple[float, str]:
    """The threshold (mm^3) from the annotated training tumours of ``fold`` of a ``PreprocessedDataset`` (the cases
    and measurements of the trainers' tumour statistics), and a sentence saying how it was chosen; ValueError when
    the fold has none."""
    from nnunetv2_tumorsynth.synthesis.statistics import measure_cases

    training, _ = source.fold_cases(fold)
    tumours = measure_cases(source, training, source.organ_label, source.tumour_label, source.spacing)
    if not tumours:
        raise ValueError(f"the training cases of fold {fold} of {source.name} have no annotated tumour (label "
                         f"{source.tumour_label}) to take the smallest size from; pass --min-volume-mm3")
    smallest = min(t.radius_mm for t in tumours)
    return min_tumour_volume_mm3(smallest, fraction), (
        f"a sphere of {fraction:g} x the equivalent radius of the smallest of {len(tumours)} annotated training "
        f"tumours of fold {fold} of {source.name} ({smallest:.2f} mm)")


def postprocess_folder(input_folder: str, output_folder: str, dataset: str | int, plans: str = "nnUNetPlans",
                       configuration: str = "3d_fullres", fold: int | str = 0, min_volume_mm3: float | None = None,
                       fraction: float = MIN_RADIUS_FRACTION, tumour_label: str | int | None = None,
                       overwrite: bool = False) -> PostprocessSummary:
    """Write every label map of ``input_folder`` (an ``nnUNetv2_predict`` output: its dataset.json gives the file
    ending and reader) into ``output_folder`` without its tumours smaller than ``min_volume_mm3`` (default: from
    the fold's annotated training tumours, ``fold_tumour_threshold``). dataset.json and plans.json are copied
    (nnU-Net's tools read them there); ``postprocessing.json`` records the threshold, how it was chosen and what
    was removed. The input is never modified; each file is written atomically; an existing output folder is
    refused unless ``overwrite``."""
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
        min_volume_mm3, rule = fold_tumour_threshold(source, fold, fraction)
    else:
        rule = f"given: --min-volume-mm3 {min_volume_mm3:g}"
    reader_class = reader_for(dataset_json, next(iter(cases.values())))
    os.makedirs(output_folder, exist_ok=True)
    removed = {}
    for case, path in cases.items():
        check_complete(path)  # SimpleITK reads a truncated .nii.gz as zeros without an error
        segmentation, geometry = read_label_map(reader_class, path, case, "prediction")
        cleaned, removed[case] = remove_small_tumours(segmentation, source.tumour_label, geometry["spacing"],
                                                      min_volume_mm3)
        with atomic_path(os.path.join(output_folder, os.path.basename(path))) as tmp:
            reader_class().write_seg(cleaned, tmp, geometry["properties"])
    for name in ("dataset.json", "plans.json"):
        if os.path.isfile(os.path.join(input_folder, name)):
            with atomic_path(os.path.join(output_folder, name)) as tmp:
                shutil.copyfile(os.path.join(input_folder, name), tmp)
    summary = PostprocessSummary(float(min_volume_mm3), rule, source.tumour_label, removed)
    write_json_atomic(summary.as_dict(), os.path.join(output_folder, POSTPROCESSING_JSON))
    return summary
