"""Lesion-wise (tumour-wise) detection: connected components, matching, size bins in mm.

A lesion is a connected component (26-connectivity) of the reference mask of a label. It is detected when the
prediction of that label covers at least one of its voxels and at least ``min_overlap`` (a fraction of the
lesion's voxels). A predicted component (26-connectivity) that touches no reference lesion is a false positive.
Sizes are equivalent-sphere radii in mm, ``r = (3 V / (4 pi)) ** (1/3)`` with V the lesion volume in mm^3, binned
by ``size_bins_mm`` (default 5, 10, 20 mm: < 5, 5-10, 10-20, >= 20 mm, the small-tumour ranges of Hu et al. 2023
and Chen et al. 2024).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

DEFAULT_SIZE_BINS_MM: tuple[float, ...] = (5.0, 10.0, 20.0)
LESION_MATCHING = (
    "Lesions are the connected components (26-connectivity) of the reference label. A lesion is detected when the "
    "predicted label covers at least one of its voxels and at least the minimum overlap (fraction of the lesion's "
    "voxels). A predicted component (26-connectivity) touching no reference lesion is a false positive. Lesion "
    "sensitivity = detected lesions / reference lesions; lesion precision = predicted components touching a "
    "reference lesion / predicted components. Size = radius in mm of the sphere of the lesion's volume."
)


@dataclass
class Lesion:
    """One reference lesion: volume in ml, equivalent-sphere radius in mm, overlap as a fraction of its voxels."""

    lesion: int
    voxels: int
    volume_ml: float
    radius_mm: float
    size_bin: str
    overlap: float
    detected: bool

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class LesionResult:
    """Lesions of one label in one case, and the predicted components (all, and those touching no lesion)."""

    lesions: list[Lesion]
    predicted_components: int
    false_positives: int

    def as_dict(self) -> dict:
        return {"lesions": [lesion.as_dict() for lesion in self.lesions],
                "predicted_components": self.predicted_components, "false_positives": self.false_positives}


def check_size_bins(size_bins_mm: Sequence[float]) -> tuple[float, ...]:
    """Validated bin edges in mm: positive and strictly increasing (may be empty: one bin for every size)."""
    edges = tuple(float(e) for e in size_bins_mm)
    if any(not math.isfinite(e) or e <= 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"size bins must be positive and strictly increasing radii in mm, got {list(size_bins_mm)}")
    return edges


def size_bin_names(size_bins_mm: Sequence[float]) -> list[str]:
    """Names of the bins of radius, e.g. ``['<5', '5-10', '10-20', '>=20']`` (mm) for edges (5, 10, 20)."""
    edges = check_size_bins(size_bins_mm)
    if not edges:
        return ["all"]
    fmt = lambda v: f"{v:g}"
    return ([f"<{fmt(edges[0])}"] + [f"{fmt(a)}-{fmt(b)}" for a, b in zip(edges, edges[1:])]
            + [f">={fmt(edges[-1])}"])


def size_bin(radius_mm: float, size_bins_mm: Sequence[float]) -> str:
    """Name of the bin of an equivalent-sphere radius in mm (lower edge included, upper edge excluded)."""
    index = int(np.searchsorted(np.asarray(size_bins_mm, dtype=float), radius_mm, side="right"))
    return size_bin_names(size_bins_mm)[index]


def equivalent_radius_mm(volume_mm3: float) -> float:
    """Radius in mm of the sphere whose volume is ``volume_mm3`` (mm^3)."""
    return float((3.0 * volume_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0))


def false_positive_components(reference: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, int, list[int]]:
    """The predicted components (full connectivity: 26 in 3D) of boolean masks of the same shape: (their labelled
    array, how many, the labels of those that touch no reference voxel: the false positives)."""
    components, n = ndimage.label(prediction, structure=np.ones((3,) * prediction.ndim, dtype=bool))
    touching = set(np.unique(components[reference & (components > 0)]).tolist())
    return components, int(n), [i for i in range(1, n + 1) if i not in touching]


def match_lesions(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], min_overlap: float = 0.0,
                  size_bins_mm: Sequence[float] = DEFAULT_SIZE_BINS_MM) -> LesionResult:
    """Detection of each reference lesion and false-positive predicted components of one label.

    ``reference``, ``prediction``: boolean masks of the same shape (2D or 3D; connectivity is full, i.e. 26 in
    3D); ``spacing`` in mm per voxel in the arrays' axis order; ``min_overlap`` in [0, 1] as a fraction of the
    lesion's voxels. Cropping both masks to a box that holds all their voxels gives the same result.
    """
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap is a fraction of the lesion's voxels in [0, 1], got {min_overlap}")
    structure = np.ones((3,) * reference.ndim, dtype=bool)
    voxel_mm3 = float(np.prod(spacing))
    ref_components, n_ref = ndimage.label(reference, structure=structure)
    lesions = []
    if n_ref:
        sizes = np.bincount(ref_components.ravel(), minlength=n_ref + 1)[1:]
        covered = np.bincount(ref_components[prediction], minlength=n_ref + 1)[1:]
        for i, (size, hit) in enumerate(zip(sizes, covered), start=1):
            volume = float(size) * voxel_mm3
            radius = equivalent_radius_mm(volume)
            overlap = float(hit) / float(size)
            lesions.append(Lesion(i, int(size), volume / 1000.0, radius, size_bin(radius, size_bins_mm), overlap,
                                  bool(hit > 0 and overlap >= min_overlap)))
    _, n_pred, false_positives = false_positive_components(reference, prediction)
    return LesionResult(lesions, n_pred, len(false_positives))
