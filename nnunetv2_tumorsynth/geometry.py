"""Voxel-geometry helpers shared by every module: bounding boxes and spacing checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Half-open bounding box of the True voxels of ``mask`` (any number of axes), or None if there are none.

    Returns ``(lo, hi)`` voxel indices in the array's axis order: the voxels ``lo[i] <= v < hi[i]``.
    """
    lo, hi = [], []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        lo.append(int(hit[0]))
        hi.append(int(hit[-1]) + 1)
    return tuple(lo), tuple(hi)


def check_spacing(spacing: Sequence[float], ndim: int = 3) -> np.ndarray:
    """``spacing`` as a float array after checking it holds ``ndim`` positive values (mm, array axis order)."""
    array = np.asarray(spacing, dtype=float)
    if array.shape != (ndim,) or not np.all(array > 0):
        raise ValueError(f"spacing must be {ndim} positive values in mm (one per array axis), got {spacing!r}")
    return array
