"""Per-case, per-label overlap and distance metrics in millimetres, with the project's empty-mask convention.

All arrays are boolean masks in the same axis order as ``spacing`` (nnU-Net's array order, e.g. z, y, x for
images read with SimpleITK); ``spacing`` is in mm per voxel along those axes. The distance maths is MONAI's:
surface distances from :func:`monai.metrics.utils.get_edge_surface_distance` (the routine behind
:func:`monai.metrics.compute_hausdorff_distance`) and the surface Dice from
:func:`monai.metrics.compute_surface_dice` with area-weighted surface elements (``use_subvoxels=True``). Before
any distance is computed, both masks are cropped to their joint bounding box plus a margin, which gives the same
numbers as MONAI on the whole volume (MONAI itself keeps only the union's bounding box plus one voxel) without
converting the whole volume to tensors.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from nnunetv2_tumorsynth.geometry import box_slices

#: Metric names in the order of every table: Dice, surface Dice (NSD) at the tolerance, precision, recall,
#: Hausdorff distance and its 95th percentile (both in mm).
METRICS: tuple[str, ...] = ("dice", "nsd", "precision", "recall", "hd", "hd95")
#: Metrics where a larger value is better (the others, HD and HD95, are better when smaller).
HIGHER_IS_BETTER: dict[str, bool] = {"dice": True, "nsd": True, "precision": True, "recall": True,
                                     "hd": False, "hd95": False}
#: Margin in voxels kept around the joint bounding box of the two masks (MONAI adds its own one-voxel margin).
CROP_MARGIN_VOXELS = 2

HD95_DEFINITION = (
    "HD95 is MONAI's (compute_hausdorff_distance with percentile=95): the larger of the two directed 95th "
    "percentiles, i.e. max(P95 of the distances from each predicted surface voxel to the reference surface, "
    "P95 of the distances from each reference surface voxel to the predicted surface), with surface voxels the "
    "mask voxels that have a background neighbour (6-connectivity) and distances in mm between voxel centres. "
    "HD is the same with the maximum instead of the 95th percentile."
)
NSD_DEFINITION = (
    "Surface Dice (NSD) at tolerance t mm is MONAI's compute_surface_dice with use_subvoxels=True: the surface "
    "area of both boundaries lying within t mm of the other boundary, divided by the total surface area of both, "
    "with area-weighted surface elements on the voxel-corner grid (after Nikolov et al. 2021)."
)
EMPTY_MASK_CONVENTION = (
    "Empty masks: when reference and prediction are both empty, Dice, NSD, precision and recall are undefined "
    "(excluded from the means and counted as undefined) and HD = HD95 = 0 mm (flag both_empty). When only one is "
    "empty, Dice = 0 and NSD = 0, and HD = HD95 = the image diagonal (distance in mm between the centres of two "
    "opposite corner voxels, the largest distance possible in the image; flag reference_empty or "
    "prediction_empty); precision is undefined when the prediction is empty and 0 when only the reference is, "
    "recall is undefined when the reference is empty and 0 when only the prediction is."
)


@dataclass
class LabelMetrics:
    """Metrics of one label in one case. Fractions in [0, 1]; distances in mm; volumes in ml.

    ``nan`` marks an undefined value (see :data:`EMPTY_MASK_CONVENTION`); ``flag`` is ``""``, ``"both_empty"``,
    ``"reference_empty"`` or ``"prediction_empty"``.
    """

    dice: float
    nsd: float
    precision: float
    recall: float
    hd: float
    hd95: float
    reference_voxels: int
    prediction_voxels: int
    reference_volume_ml: float
    prediction_volume_ml: float
    flag: str

    def as_dict(self) -> dict:
        return asdict(self)


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Distance in mm between the centres of the first and the last voxel: the largest distance in the image."""
    return float(math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing))))


def joint_bounding_box(a: np.ndarray, b: np.ndarray, margin: int = CROP_MARGIN_VOXELS) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``a | b`` grown by ``margin`` voxels on each side (clipped); None when empty."""
    return box_slices(a, b, margin=margin)


def surface_distances(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """(HD, HD95) in mm of two non-empty masks, as MONAI's ``compute_hausdorff_distance`` computes them.

    One call of MONAI's edge and surface-distance routine gives both directed distance sets; HD is the larger
    of their maxima, HD95 the larger of their 95th percentiles (``torch.quantile``, as MONAI).
    """
    import torch
    from monai.metrics.utils import get_edge_surface_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecated-argument warning
        _, distances, _ = get_edge_surface_distance(torch.from_numpy(prediction), torch.from_numpy(reference),
                                                    spacing=[float(s) for s in spacing], symmetric=True)
    hd = max(float(d.max()) for d in distances)
    hd95 = max(float(torch.quantile(d, 0.95)) for d in distances)
    return hd, hd95


def surface_dice(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> float:
    """Surface Dice (NSD) of two non-empty masks at ``tolerance_mm`` (MONAI, area-weighted surface elements)."""
    import torch
    from monai.metrics import compute_surface_dice

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        nsd = compute_surface_dice(torch.from_numpy(prediction)[None, None], torch.from_numpy(reference)[None, None],
                                   [float(tolerance_mm)], include_background=True,
                                   spacing=[float(s) for s in spacing], use_subvoxels=True)
    return float(nsd[0, 0])


def label_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                  tolerance_mm: float = 5.0, margin: int = CROP_MARGIN_VOXELS) -> LabelMetrics:
    """All metrics of one label: ``reference`` and ``prediction`` are boolean masks of the same shape.

    ``spacing``: mm per voxel in the arrays' axis order. ``tolerance_mm``: NSD tolerance in mm. The masks are
    cropped to their joint bounding box plus ``margin`` voxels before any distance computation; empty masks
    follow :data:`EMPTY_MASK_CONVENTION`.
    """
    if reference.shape != prediction.shape:
        raise ValueError(f"reference and prediction shapes differ: {reference.shape} vs {prediction.shape}")
    if len(spacing) != reference.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not have one value per axis of shape {reference.shape}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    box = joint_bounding_box(reference, prediction, margin)
    if box is None:
        return LabelMetrics(math.nan, math.nan, math.nan, math.nan, 0.0, 0.0, 0, 0, 0.0, 0.0, "both_empty")
    ref = np.ascontiguousarray(reference[box], dtype=bool)
    pred = np.ascontiguousarray(prediction[box], dtype=bool)
    n_ref = int(np.count_nonzero(ref))
    n_pred = int(np.count_nonzero(pred))
    tp = int(np.count_nonzero(ref & pred))
    dice = 2.0 * tp / (n_ref + n_pred)
    precision = tp / n_pred if n_pred else math.nan
    recall = tp / n_ref if n_ref else math.nan
    if n_ref == 0 or n_pred == 0:
        worst = image_diagonal_mm(reference.shape, spacing)
        flag = "reference_empty" if n_ref == 0 else "prediction_empty"
        return LabelMetrics(dice, 0.0, precision, recall, worst, worst, n_ref, n_pred, n_ref * voxel_ml,
                            n_pred * voxel_ml, flag)
    hd, hd95 = surface_distances(ref, pred, spacing)
    nsd = surface_dice(ref, pred, spacing, tolerance_mm)
    return LabelMetrics(dice, nsd, precision, recall, hd, hd95, n_ref, n_pred, n_ref * voxel_ml, n_pred * voxel_ml,
                        "")


def monai_whole_volume(reference: np.ndarray, prediction: np.ndarray, spacing, tolerance_mm: float = 5.0) -> dict:
    """MONAI's functions called directly on the whole, uncropped masks: the reference our cropped path is checked
    against (tests and benchmarks/bench_evaluate.py). Both masks must be non-empty."""
    """MONAI's metric functions on the whole, uncropped volume (what a user of MONAI would call)."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    ref, pred = torch.from_numpy(reference)[None, None], torch.from_numpy(prediction)[None, None]
    spacing = list(spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"dice": float(compute_dice(pred, ref, include_background=True)),
                "hd": float(compute_hausdorff_distance(pred, ref, include_background=True, spacing=spacing)),
                "hd95": float(compute_hausdorff_distance(pred, ref, include_background=True, spacing=spacing,
                                                         percentile=95)),
                "nsd": float(compute_surface_dice(pred, ref, [tolerance_mm], include_background=True,
                                                  spacing=spacing, use_subvoxels=True))}
