"""Where a synthetic tumour may go: inside the organ, away from existing tumours and vessels.

``place_tumour`` returns the index of the first corner of the tumour's box in the organ's array, or
None when the tumour does not fit anywhere. The caller then retries with a smaller tumour (for example
``masks.random_tumour_mask(..., size="small")``) or skips the case; this module never shrinks a tumour.

How it is fast on a 512 x 512 x 200 volume. A reference point p0 is taken inside the tumour: its
deepest voxel, r_in mm from the tumour's edge; every tumour voxel is within r_out mm of p0. A position
for p0 can only work if the nearest obstacle (outside the organ, or a forbidden voxel) is at least
r_in away, and surely works if it is more than r_out + margin away. These distances come from one
Euclidean distance transform (scipy.ndimage.distance_transform_edt, ``sampling`` = spacing, so in mm)
on a coarse grid of cells of a few mm (an obstacle anywhere in a cell marks the cell), whose error is
bounded by the cell diagonal. Random candidates from the "can work" set are then checked exactly at
full resolution, voxel by voxel; if a handful all fail, candidates from the "surely works" set are
tried. Valid positions are thus drawn about uniformly over where the tumour fits.

All arrays share one axis order (nnU-Net's preprocessed order inside training); ``spacing`` gives mm
per axis in that order and every distance (margins, smoothing) is in mm.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from nnunetv2_tumorsynth.geometry import bounding_box, check_spacing
from nnunetv2_tumorsynth.synthesis.shape import equivalent_radius_mm, random_tumour_mask

RandomLike = np.random.Generator | int | None

SMALLER_SIZES = ("medium", "small", "tiny")  # tried in turn when a tumour of the requested size does not fit

# The screening grid has about this many cells at most (its distance transform then takes < 0.1 s).
SCREENING_CELLS = 250_000


def place_tumour(
    organ: np.ndarray,
    tumour: np.ndarray,
    forbidden: np.ndarray | None = None,
    rng: RandomLike = None,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    min_inside_fraction: float = 0.8,
    margin_mm: float = 5.0,
    max_tries: int = 20,
) -> tuple[int, int, int] | None:
    """A random position for ``tumour`` in ``organ``: the index of the tumour box's first corner.

    organ: bool array, the organ label (e.g. label == 1 | label == 2 for a liver with tumours).
    tumour: bool box around the tumour (as ``masks.random_tumour_mask`` returns), same axis order.
    forbidden: bool array shaped like ``organ`` (existing tumours, vessels), or None. No tumour voxel
        may lie within ``margin_mm`` of a forbidden voxel (inside the organ or not).
    rng: numpy Generator or integer seed.
    spacing: mm per array axis; the default (1, 1, 1) makes all distances voxel counts.
    min_inside_fraction: fraction of the tumour's voxels that must lie inside the organ; 1.0 puts the
        whole tumour inside; lower values let it bulge out of the organ (clip it with ``clip_to_organ``),
        with its deepest voxel still in a cell of the organ. Default 0.8 (measured on a real MR liver:
        docs/benchmarks.md). The tumour's box must still lie inside
        the array: where the field of view cuts the organ, pad ``organ`` and ``forbidden`` by the
        tumour's box first (``place_random_tumour`` does), or a tumour taller than the array never fits.
    margin_mm: smallest distance in mm between the tumour and forbidden voxels (default 5 mm); 0 only
        forbids overlap.
    max_tries: how many random candidates are checked exactly in each of the two candidate sets.

    The tumour box always lies inside the array (corner >= 0 and corner + tumour.shape <= shape), so
    ``array[corner[0]:corner[0] + n0, ...]`` can be written directly. Returns None when no tried
    position fits: the caller retries a smaller tumour or skips the case.
    """
    organ = np.asarray(organ, dtype=bool)
    tumour = np.asarray(tumour, dtype=bool)
    spacing = check_spacing(spacing)
    if organ.ndim != 3 or tumour.ndim != 3:
        raise ValueError(f"organ and tumour must be 3D, got shapes {organ.shape} and {tumour.shape}")
    if forbidden is not None:
        forbidden = np.asarray(forbidden, dtype=bool)
        if forbidden.shape != organ.shape:
            raise ValueError(f"forbidden has shape {forbidden.shape}, organ has {organ.shape}")
    if not tumour.any():
        raise ValueError("the tumour mask is empty")
    if not 0.0 < min_inside_fraction <= 1.0:
        raise ValueError(f"min_inside_fraction must be in (0, 1], got {min_inside_fraction}")
    if margin_mm < 0:
        raise ValueError(f"margin_mm must be >= 0, got {margin_mm}")
    rng = np.random.default_rng(rng)

    organ_box = bounding_box(organ)
    if organ_box is None:
        return None
    organ_lo, organ_hi = (np.array(index) for index in organ_box)
    whole_inside = min_inside_fraction >= 1.0
    if whole_inside and np.any(np.array(tumour.shape) > organ_hi - organ_lo):
        return None  # the tumour's box is larger than the organ's box on some axis

    # Work in the organ's box; a tumour allowed to bulge out may reach one tumour box further.
    grow = np.zeros(3, int) if whole_inside else np.array(tumour.shape)
    crop_lo = np.maximum(organ_lo - grow, 0)
    crop_hi = np.minimum(organ_hi + grow, organ.shape)
    crop = tuple(slice(lo, hi) for lo, hi in zip(crop_lo, crop_hi, strict=True))

    obstacles = np.zeros(crop_hi - crop_lo, dtype=bool) if forbidden is None else forbidden[crop].copy()
    if whole_inside:
        obstacles |= ~organ[crop]
    grid = _ScreeningGrid.build(obstacles, organ[crop], spacing, outside_is_obstacle=whole_inside)
    geometry = _TumourGeometry(tumour, spacing, margin_mm)

    # Necessary: the ball of radius r_in around p0 is tumour, so no obstacle may be closer than r_in.
    can_work = grid.distance_mm >= geometry.r_in_mm - grid.cell_diagonal_mm
    # Sufficient: every tumour voxel is further than margin_mm from every obstacle.
    surely_works = grid.distance_mm > geometry.r_out_mm + margin_mm + grid.cell_diagonal_mm
    for candidates in (can_work, surely_works):
        cells = np.flatnonzero(candidates & grid.organ_cells)
        if cells.size == 0:
            continue
        for cell in rng.choice(cells, size=max_tries):
            cell_index = np.array(np.unravel_index(cell, grid.organ_cells.shape))
            voxel = cell_index * grid.factors + rng.integers(0, grid.factors)  # a random voxel of the cell
            voxel = np.minimum(voxel, crop_hi - crop_lo - 1)
            corner = crop_lo + voxel - geometry.p0
            if _fits(corner, tumour, organ, forbidden, geometry, min_inside_fraction):
                return tuple(int(c) for c in corner)
    return None


@dataclass(frozen=True)
class PlacedTumour:
    """A tumour placed in a case: its bool box (clipped to the organ and the array) and the box's first corner.

    size: the size preset placed (smaller than requested after a fallback); requested_radius_mm: equivalent
    radius (mm) of the first tumour drawn at the requested preset, a sample of the size distribution asked for.
    """

    corner: np.ndarray
    mask: np.ndarray
    size: str
    requested_radius_mm: float


def place_random_tumour(
    organ: np.ndarray,
    forbidden: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    *,
    size: str,
    deformation: str | None,
    min_inside_fraction: float,
    margin_mm: float,
    draws_per_size: int = 2,
    shape_overrides: dict | None = None,
) -> PlacedTumour | None:
    """Draw a tumour mask and place it in ``organ``; fall back to ``SMALLER_SIZES`` when it does not fit.

    Tries ``draws_per_size`` draws of the requested preset, then of each smaller one; None when nothing fits.
    A tumour may bulge out of the organ, or out of the array where the field of view cuts the organ, by up to
    ``1 - min_inside_fraction`` of its voxels; that part is clipped away. Arrays share one axis order;
    ``spacing`` is mm per axis. ``shape_overrides`` (e.g. ``semi_axes_mm``, ``amplitude_mm``) go to
    ``random_tumour_mask`` for the requested preset's draws, not for the smaller fallbacks.
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd  # imports torch: only when used

    organ_box = bounding_box(organ)
    if organ_box is None:
        return None
    organ_lo, organ_hi = (np.array(index) for index in organ_box)
    requested_radius_mm = None
    for preset in (size, *SMALLER_SIZES):
        for _ in range(draws_per_size):
            overrides = (shape_overrides or {}) if preset == size else {}
            mask = random_tumour_mask(spacing, deformation, preset, rng=rng, **overrides)
            if requested_radius_mm is None:
                requested_radius_mm = equivalent_radius_mm(mask, spacing)
            # Place in the organ's box grown by one tumour box per side, padded beyond the array as outside the
            # organ (forbidden voxels all lie in the organ's box), then keep the part of the box inside the case.
            reach = np.array(mask.shape) if min_inside_fraction < 1.0 else np.zeros(3, int)
            region = [[int(a), int(b)] for a, b in zip(organ_lo - reach, organ_hi + reach)]
            corner = place_tumour(crop_and_pad_nd(organ, region, False), mask,
                                  crop_and_pad_nd(forbidden, region, False),
                                  rng=rng, spacing=spacing, min_inside_fraction=min_inside_fraction,
                                  margin_mm=margin_mm)
            if corner is None:
                continue
            corner = np.array(corner) + organ_lo - reach  # voxel index in the case; may be < 0
            mask = clip_to_organ(mask, organ, corner)
            organ_part, box_part = _overlap(corner, mask.shape, organ.shape)
            mask = mask[box_part]
            if mask.any():
                return PlacedTumour(np.array([s.start for s in organ_part]), mask, preset, requested_radius_mm)
    return None


def clip_to_organ(tumour_box: np.ndarray, organ: np.ndarray, corner: Sequence[int]) -> np.ndarray:
    """The tumour box with its voxels outside ``organ`` removed (same shape as ``tumour_box``).

    ``corner`` is the index in ``organ`` of the box's first voxel (as ``place_tumour`` returns). Parts of
    the box beyond the array count as outside the organ.
    """
    tumour_box = np.asarray(tumour_box, dtype=bool)
    organ_part, box_part = _overlap(np.asarray(corner), tumour_box.shape, organ.shape)
    clipped = np.zeros_like(tumour_box)
    clipped[box_part] = tumour_box[box_part] & organ[organ_part]
    return clipped


class _TumourGeometry:
    """Reference point p0 (deepest voxel, index in the tumour box), its radii in mm, the margin halo."""

    def __init__(self, tumour: np.ndarray, spacing: np.ndarray, margin_mm: float):
        self.tumour = tumour
        self.spacing = spacing
        self.margin_mm = margin_mm
        self.n_voxels = int(np.count_nonzero(tumour))
        depth = ndimage.distance_transform_edt(np.pad(tumour, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        self.p0 = np.array(np.unravel_index(np.argmax(depth), tumour.shape))
        self.r_in_mm = float(depth.max())  # every voxel closer than this to p0 is tumour
        offsets_mm = (np.argwhere(tumour) - self.p0) * spacing
        self.r_out_mm = float(np.sqrt((offsets_mm**2).sum(axis=1).max()))  # every tumour voxel is closer
        self.halo_pad = np.ceil(margin_mm / spacing).astype(int)  # voxels added per side for the halo

    @functools.cached_property
    def halo(self) -> np.ndarray:
        """The tumour grown by margin_mm (voxels within the margin), in its box padded by halo_pad."""
        grown = np.pad(self.tumour, [(p, p) for p in self.halo_pad])
        return ndimage.distance_transform_edt(~grown, sampling=self.spacing) <= self.margin_mm


@dataclass(frozen=True)
class _ScreeningGrid:
    """Coarse cells of about equal size in mm; distance (mm) from each cell to the nearest obstacle cell."""

    factors: np.ndarray  # voxels per cell along each axis
    cell_diagonal_mm: float  # bounds the error of the coarse distances (see module docstring)
    distance_mm: np.ndarray  # per cell; 0 in cells holding an obstacle
    organ_cells: np.ndarray  # per cell; True where the cell holds an organ voxel

    @staticmethod
    def build(
        obstacles: np.ndarray, organ: np.ndarray, spacing: np.ndarray, outside_is_obstacle: bool
    ) -> _ScreeningGrid:
        shape = np.array(obstacles.shape)
        volume_mm3 = float(np.prod(shape * spacing))
        cell_mm = max(float(spacing.max()), (volume_mm3 / SCREENING_CELLS) ** (1.0 / 3.0))
        factors = np.maximum(1, np.round(cell_mm / spacing)).astype(int)

        # One ring of obstacle cells around the grid: beyond the crop is outside the organ (or irrelevant).
        blocked = np.pad(_any_per_cell(obstacles, factors, outside_is_obstacle), 1, constant_values=True)
        distance = ndimage.distance_transform_edt(~blocked, sampling=factors * spacing)[1:-1, 1:-1, 1:-1]
        return _ScreeningGrid(
            factors=factors,
            cell_diagonal_mm=float(np.linalg.norm(factors * spacing)),
            distance_mm=distance,
            organ_cells=_any_per_cell(organ, factors, False),
        )


def _any_per_cell(mask: np.ndarray, factors: np.ndarray, fill: bool) -> np.ndarray:
    """Per cell of ``factors`` voxels: does it hold a True voxel? Partial cells at the end are padded with
    ``fill``. One axis at a time, as an OR of strided slices (much faster than reshape + any)."""
    for axis, k in enumerate(factors):
        if k == 1:
            continue
        missing = -mask.shape[axis] % k
        if missing:
            pad = [(0, 0)] * 3
            pad[axis] = (0, missing)
            mask = np.pad(mask, pad, constant_values=fill)
        every_kth = [slice(None)] * 3
        slices = []
        for j in range(k):
            every_kth[axis] = slice(j, None, k)
            slices.append(mask[tuple(every_kth)])
        mask = np.logical_or.reduce(slices)
    return mask


def _fits(
    corner: np.ndarray,
    tumour: np.ndarray,
    organ: np.ndarray,
    forbidden: np.ndarray | None,
    geometry: _TumourGeometry,
    min_inside_fraction: float,
) -> bool:
    """Exact check of one position, voxel by voxel, at full resolution."""
    if np.any(corner < 0) or np.any(corner + tumour.shape > organ.shape):
        return False
    box = tuple(slice(c, c + n) for c, n in zip(corner, tumour.shape, strict=True))
    inside = np.count_nonzero(organ[box] & tumour)
    if inside < min_inside_fraction * geometry.n_voxels - 1e-6:
        return False
    if forbidden is not None:
        halo_corner = corner - geometry.halo_pad
        halo_shape = np.array(tumour.shape) + 2 * geometry.halo_pad
        organ_part, halo_part = _overlap(halo_corner, halo_shape, organ.shape)
        # The halo (a distance transform) is computed only once forbidden voxels are this close.
        if np.any(forbidden[organ_part]) and np.any(forbidden[organ_part] & geometry.halo[halo_part]):
            return False
    return True


def _overlap(
    corner: np.ndarray, box_shape: Sequence[int], array_shape: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of the part of a box (first voxel at ``corner``) that lies inside the array: (array, box)."""
    lo = np.maximum(corner, 0)
    hi = np.minimum(corner + np.array(box_shape), array_shape)
    hi = np.maximum(hi, lo)
    in_array = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    in_box = tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, corner, strict=True))
    return in_array, in_box
