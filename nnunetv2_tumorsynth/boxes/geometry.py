"""Box geometry: the :class:`Box`, rasterising, boxes of tumour components, jitter, and world-to-voxel mapping.

A :class:`Box` is half-open in voxel indices of one array (see the conventions in
:mod:`nnunetv2_tumorsynth.boxes`); annotations (:class:`~.annotations.BoxAnnotation`, inclusive corners
in (x, y, z), voxels or mm) become boxes of an image through :func:`boxes_in_image`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from nnunetv2_tumorsynth.boxes.annotations import BoxAnnotation, BoxAnnotationWarning
from nnunetv2_tumorsynth.geometry import bounding_box


@dataclass(frozen=True)
class Box:
    """Axis-aligned box, half-open in voxel indices: ``lo[i] <= v < hi[i]`` on axis ``i`` (array order)."""

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    category: int | None = None
    source: str = ""  # where it came from, for messages ("patient MR1, series s1, lesion 0")

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.lo, self.hi))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.lo, self.hi))

    def is_empty(self) -> bool:
        return any(b <= a for a, b in zip(self.lo, self.hi))

    def expanded(self, voxels: tuple[int, ...]) -> Box:
        """The box grown by ``voxels[i]`` on both sides of axis ``i`` (not clipped)."""
        return replace(self, lo=tuple(a - v for a, v in zip(self.lo, voxels)),
                       hi=tuple(b + v for b, v in zip(self.hi, voxels)))

    def clipped(self, shape: tuple[int, ...]) -> Box:
        """The part of the box inside an array of ``shape`` (may be empty)."""
        return replace(self, lo=tuple(min(max(a, 0), n) for a, n in zip(self.lo, shape)),
                       hi=tuple(min(max(b, 0), n) for b, n in zip(self.hi, shape)))


def rasterise(boxes: list[Box], shape: tuple[int, ...]) -> np.ndarray:
    """Boolean array of ``shape`` that is True inside any of ``boxes`` (boxes are clipped to the array)."""
    out = np.zeros(shape, dtype=bool)
    for box in boxes:
        out[box.clipped(shape).slices] = True
    return out


def margin_in_voxels(margin_mm: float, spacing: tuple[float, ...]) -> tuple[int, ...]:
    """Whole voxels per axis covering ``margin_mm`` (rounded up); ``spacing`` in mm, array order."""
    return tuple(int(np.ceil(margin_mm / s - 1e-6)) if margin_mm > 0 else 0 for s in spacing)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean arrays (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# ---------------------------------------------------------------------------------------------------
# Boxes of a label: one per tumour component, or one per slice of it; jitter
# ---------------------------------------------------------------------------------------------------


def lesion_boxes(tumour: np.ndarray, slice_axis: int | None = None) -> list[list[Box]]:
    """Boxes of each connected tumour component (full connectivity), one list per lesion.

    ``slice_axis=None``: one box per lesion (3D). Otherwise one box per slice along ``slice_axis``
    that holds the lesion: the lesion's 2D box in that slice, one slice thick (LLD-MMRI-style
    per-slice boxes).
    """
    labelled, _ = ndimage.label(tumour, structure=np.ones((3,) * tumour.ndim, dtype=bool))
    lesions = []
    for index, found in enumerate(ndimage.find_objects(labelled), start=1):
        if found is None:
            continue
        if slice_axis is None:
            lesions.append([Box(tuple(s.start for s in found), tuple(s.stop for s in found))])
            continue
        component = labelled[found] == index
        offset = [s.start for s in found]
        boxes = []
        for k in range(component.shape[slice_axis]):
            bounds = bounding_box(np.take(component, k, axis=slice_axis))
            if bounds is None:  # the lesion does not reach this slice
                continue
            lo, hi = list(bounds[0]), list(bounds[1])
            lo.insert(slice_axis, k)
            hi.insert(slice_axis, k + 1)
            boxes.append(Box(tuple(a + o for a, o in zip(lo, offset)), tuple(b + o for b, o in zip(hi, offset))))
        lesions.append(boxes)
    return lesions


def jitter_box(box: Box, shape: tuple[int, ...], spacing: tuple[float, ...], jitter_mm: tuple[float, float],
               rng: np.random.Generator, fixed_axes: tuple[int, ...] = ()) -> Box:
    """Move each face of ``box`` outward by a distance drawn uniformly from ``jitter_mm`` (mm; negative
    moves it inward), rounded to whole voxels with ``spacing`` (mm, array order). Faces on
    ``fixed_axes`` stay. The result is clipped to ``shape`` and keeps at least one voxel per axis."""
    lo, hi = list(box.lo), list(box.hi)
    for axis, s in enumerate(spacing):
        if axis in fixed_axes:
            continue
        out_lo, out_hi = rng.uniform(jitter_mm[0], jitter_mm[1], 2) / s
        a = min(max(box.lo[axis] - int(round(out_lo)), 0), shape[axis] - 1)
        b = min(max(box.hi[axis] + int(round(out_hi)), 0), shape[axis])
        if b <= a:  # shrunk to nothing: keep the middle voxel of the original extent
            a = min(max((box.lo[axis] + box.hi[axis] - 1) // 2, 0), shape[axis] - 1)
            b = a + 1
        lo[axis], hi[axis] = a, b
    return replace(box, lo=tuple(lo), hi=tuple(hi))


# ---------------------------------------------------------------------------------------------------
# Annotations (inclusive (x, y, z) corners, voxels or mm) -> boxes of an image
# ---------------------------------------------------------------------------------------------------


def physical_to_continuous_index(points_mm: np.ndarray, image) -> np.ndarray:
    """ITK physical points (mm, LPS; rows of (x, y, z)) -> continuous (x, y, z) indices of ``image``.

    ``image`` is anything with SimpleITK's ``GetOrigin``/``GetSpacing``/``GetDirection``: an image, or an
    ``sitk.ImageFileReader`` after ``ReadImageInformation()`` (no voxels read). Voxel ``i`` spans
    ``i - 0.5 .. i + 0.5``.
    """
    origin = np.array(image.GetOrigin(), dtype=float)
    spacing = np.array(image.GetSpacing(), dtype=float)
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    return (np.linalg.solve(direction, (np.atleast_2d(points_mm) - origin).T).T) / spacing


def annotation_to_voxel_box(annotation: BoxAnnotation, image) -> Box:
    """The (z, y, x) half-open voxel box of ``annotation`` in ``image``'s grid (not clipped).

    Voxel annotations: inclusive integer corners, so ``hi = max + 1``. World annotations (mm, LPS):
    the eight corners are mapped to continuous indices through the image's origin, spacing and
    direction, and the box covers the voxels whose centres lie inside their axis-aligned hull.
    ``image``: see :func:`physical_to_continuous_index`.
    """
    if annotation.space == "voxel":
        lo = [int(round(v)) for v in annotation.minimum]
        hi = [int(round(v)) + 1 for v in annotation.maximum]
    elif annotation.space == "world":
        corners = physical_to_continuous_index(np.array(_corners(annotation.minimum, annotation.maximum)), image)
        lo = [int(np.ceil(v - 1e-6)) for v in corners.min(axis=0)]
        hi = [int(np.floor(v + 1e-6)) + 1 for v in corners.max(axis=0)]
    else:
        raise ValueError(f"unknown box space {annotation.space!r} ({annotation.source})")
    return Box(tuple(lo[::-1]), tuple(hi[::-1]), annotation.category, annotation.source)


def _corners(lo, hi) -> list[tuple[float, float, float]]:
    return [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]


def boxes_in_image(annotations: list[BoxAnnotation], image) -> list[Box]:
    """Voxel boxes of ``annotations`` clipped to ``image``: partly outside -> clipped with a warning,
    wholly outside -> skipped with a warning (:class:`BoxAnnotationWarning`). ``image``: an
    ``sitk.Image`` or an ``sitk.ImageFileReader`` after ``ReadImageInformation()``."""
    shape = image.GetSize()[::-1]
    boxes = []
    for annotation in annotations:
        box = annotation_to_voxel_box(annotation, image)
        inside = box.clipped(shape)
        if inside.is_empty():
            warnings.warn(f"{box.source}: box (z, y, x) {box.lo}..{box.hi} lies outside the image of shape "
                          f"{shape}; skipped", BoxAnnotationWarning, stacklevel=2)
            continue
        if inside != box:
            warnings.warn(f"{box.source}: box (z, y, x) {box.lo}..{box.hi} reaches outside the image of shape "
                          f"{shape}; clipped to {inside.lo}..{inside.hi}", BoxAnnotationWarning, stacklevel=2)
        boxes.append(inside)
    return boxes
