"""Voxel-geometry helpers shared by every module: bounding boxes and spacing checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bounding_box(*masks: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Half-open bounding box of the True voxels of the masks together (any number of axes), or None if there are
    none. Returns ``(lo, hi)`` voxel indices in the array's axis order: the voxels ``lo[i] <= v < hi[i]``.
    Computed axis by axis from projections, without building the union of the masks."""
    lo, hi = [], []
    for axis in range(masks[0].ndim):
        others = tuple(a for a in range(masks[0].ndim) if a != axis)
        hit = np.flatnonzero(np.logical_or.reduce([np.any(m, axis=others) for m in masks]))
        if hit.size == 0:
            return None
        lo.append(int(hit[0]))
        hi.append(int(hit[-1]) + 1)
    return tuple(lo), tuple(hi)


def box_slices(*masks: np.ndarray, margin: int | Sequence[int] = 0) -> tuple[slice, ...] | None:
    """Slices of the masks' joint bounding box grown by ``margin`` voxels per axis (clipped to the array), or None."""
    box = bounding_box(*masks)
    if box is None:
        return None
    shape = masks[0].shape
    margin = np.broadcast_to(np.asarray(margin, int), (len(shape),))
    return tuple(slice(max(lo - int(m), 0), min(hi + int(m), n)) for lo, hi, m, n in zip(*box, margin, shape))


def check_spacing(spacing: Sequence[float], ndim: int = 3) -> np.ndarray:
    """``spacing`` as a float array after checking it holds ``ndim`` positive values (mm, array axis order)."""
    array = np.asarray(spacing, dtype=float)
    if array.shape != (ndim,) or not np.all(array > 0):
        raise ValueError(f"spacing must be {ndim} positive values in mm (one per array axis), got {spacing!r}")
    return array
