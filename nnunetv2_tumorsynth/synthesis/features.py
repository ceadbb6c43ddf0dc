"""Per-tumour features for realism statistics: each tumour (a connected component, 26-connectivity, of the
tumour mask) is reduced to
a few numbers (:mod:`.realism` compares their real and synthetic distributions). The features (see :data:`FEATURES`):

- ``volume_ml``: voxel count x voxel volume / 1000.
- ``contrast_sd``: (tumour mean - organ mean) / organ SD. The organ is the organ label minus every tumour of
  the image (optionally only the shell of organ within ``shell_mm`` of this tumour); SDs are population SDs,
  the organ's without its outliers (``parenchyma_mean_sd``: a vessel beside a tumour is not parenchyma).
  Signed: negative for tumours darker than the organ.
- ``heterogeneity_sd``: SD of the intensities inside the tumour / organ SD (not a coefficient of variation:
  MR intensities have no physical zero, so a ratio to the tumour mean would not mean anything).
- ``boundary_gradient``: mean intensity-gradient magnitude (central differences in mm, ``numpy.gradient``
  with the spacing) over the voxels on both sides of the tumour border: tumour voxels with a non-tumour
  6-neighbour and non-tumour voxels with a tumour 6-neighbour, keeping only voxels whose 6-neighbours all
  lie in the organ or in tumours (so the organ's own edge against the background does not count).
  Intensity units per mm.
- ``boundary_gradient_sd``: the same in organ SDs per mm (comparable across intensity scales).
- ``sphericity``: pi^(1/3) (6 V)^(2/3) / A (1 for a sphere). With scikit-image (installed with nnU-Net) the
  surface is ``skimage.measure.marching_cubes`` at level 0.5 of the mask smoothed by a Gaussian of one voxel
  (sigma per axis in voxels, which removes the voxel staircase) and V is the volume that mesh encloses:
  spheres read 0.98-1.00, a 2:1 prolate spheroid 0.92 (exact 0.93); sharp corners are rounded, so a cube
  reads about 0.92 instead of 0.81. Without scikit-image A is the count of voxel faces between tumour and
  non-tumour (times the face areas in mm^2) and V the voxel volume; that surface overestimates a smooth one
  by about 1.5x, so a sphere reads about 0.66: compare only values measured the same way (``sphericity_method``
  in the report says which was used).

Arrays are (z, y, x) as SimpleITK returns them (or nnU-Net's preprocessed axis order for a bank); spacing in
mm in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from nnunetv2_tumorsynth.geometry import box_slices

FEATURES: dict[str, str] = {
    "volume_ml": "volume (ml)",
    "contrast_sd": "contrast to the organ (organ SDs)",
    "heterogeneity_sd": "SD inside the tumour (organ SDs)",
    "boundary_gradient": "border gradient (intensity units / mm)",
    "boundary_gradient_sd": "border gradient (organ SDs / mm)",
    "sphericity": "sphericity",
}

# the features that describe texture and intensity (not shape): what a --replace-real comparison is about
TEXTURE_FEATURES = ("contrast_sd", "heterogeneity_sd", "boundary_gradient", "boundary_gradient_sd")

# parenchyma voxels further than this many robust SDs from the median are not parenchyma (``parenchyma_mean_sd``)
OUTLIER_SDS = 3.5

FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
SIX_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)


def _marching_cubes():
    """``(marching_cubes, mesh_surface_area)`` from scikit-image, or None when it is not installed."""
    try:
        from skimage.measure import marching_cubes, mesh_surface_area
    except ImportError:
        return None
    return marching_cubes, mesh_surface_area


def sphericity_method() -> str:
    """Which surface the sphericity uses here: "marching_cubes" (scikit-image) or "voxel_faces"."""
    return "marching_cubes" if _marching_cubes() is not None else "voxel_faces"


def voxel_face_area_mm2(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Area (mm^2) of the voxel faces between ``mask`` and the rest (including the array's border)."""
    padded = np.pad(mask.astype(np.int8), 1)
    area = 0.0
    voxel_volume = float(np.prod(spacing))
    for axis in range(3):
        faces = int(np.count_nonzero(np.diff(padded, axis=axis)))
        area += faces * voxel_volume / float(spacing[axis])
    return area


def surface_and_volume(mask: np.ndarray, spacing: Sequence[float], method: str | None = None) -> tuple[float, float]:
    """(surface area in mm^2, enclosed volume in mm^3) of a 3D mask; see the module docstring for the methods."""
    method = method or sphericity_method()
    spacing = tuple(float(s) for s in spacing)
    if method == "voxel_faces":
        return voxel_face_area_mm2(mask, spacing), float(mask.sum()) * float(np.prod(spacing))
    if method != "marching_cubes":
        raise ValueError(f"unknown surface method {method!r}; choose 'marching_cubes' or 'voxel_faces'")
    functions = _marching_cubes()
    if functions is None:
        raise ImportError("sphericity with method 'marching_cubes' needs scikit-image (pip install scikit-image)")
    marching_cubes, mesh_surface_area = functions
    padded = np.pad(mask.astype(np.float32), 3)
    smooth = ndimage.gaussian_filter(padded, 1.0)
    field = smooth if smooth.max() > 0.5 else padded  # a tumour of a voxel or two vanishes when smoothed
    vertices, faces, _, _ = marching_cubes(field, 0.5, spacing=spacing)
    area = float(mesh_surface_area(vertices, faces))
    triangles = vertices[faces]
    volume = abs(float(np.einsum("ij,ij->i", triangles[:, 0], np.cross(triangles[:, 1], triangles[:, 2])).sum()) / 6)
    return area, volume


def sphericity(mask: np.ndarray, spacing: Sequence[float], method: str | None = None) -> float:
    """pi^(1/3) (6 V)^(2/3) / A of a 3D mask (1 for a sphere); NaN for an empty mask."""
    if not mask.any():
        return math.nan
    area, volume = surface_and_volume(mask, spacing, method)
    return float(np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area) if area > 0 else math.nan


def boundary_band(tumour: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Voxels on both sides of the tumour border whose 6-neighbours all lie in ``allowed`` (see module doc)."""
    inner = tumour & ~ndimage.binary_erosion(tumour, SIX_CONNECTIVITY, border_value=0)
    outer = ndimage.binary_dilation(tumour, SIX_CONNECTIVITY) & ~tumour
    return (inner | outer) & ndimage.binary_erosion(allowed, SIX_CONNECTIVITY, border_value=0)


def boundary_gradient(image: np.ndarray, tumour: np.ndarray, allowed: np.ndarray, spacing: Sequence[float]) -> float:
    """Mean gradient magnitude (intensity units per mm) over :func:`boundary_band`; NaN when the band is empty."""
    band = boundary_band(tumour, allowed | tumour)
    if not band.any():
        return math.nan
    gradients = np.gradient(image.astype(np.float64), *[float(s) for s in spacing])
    magnitude = np.sqrt(sum(g**2 for g in gradients))
    return float(magnitude[band].mean())


def parenchyma_mean_sd(values: np.ndarray) -> tuple[float, float]:
    """Mean and SD of parenchyma intensities without their outliers: values more than ``OUTLIER_SDS`` robust SDs
    (1.4826 x the median absolute deviation) from the median are left out. A bright vessel crossing a tumour's
    ring would otherwise double the ring's SD, and a contrast drawn in ring SDs would come out twice as dark
    there (docs/benchmarks.md, "Vessels in the ring"). NaN for no values."""
    values = np.asarray(values, np.float64).ravel()
    if values.size == 0:
        return math.nan, math.nan
    median = float(np.median(values))
    robust_sd = 1.4826 * float(np.median(np.abs(values - median)))
    if robust_sd > 0:
        values = values[np.abs(values - median) <= OUTLIER_SDS * robust_sd]
    return float(values.mean()), float(values.std())


def parenchyma_ring(tumour: np.ndarray, organ: np.ndarray, spacing: Sequence[float], ring_mm: float) -> np.ndarray:
    """Organ voxels outside the tumour within ``ring_mm`` (mm) of it: the parenchyma a tumour's contrast and grain
    are measured against (``shell_mm``), and the one the textures fill to (``texture.ring_statistics``)."""
    distance_mm = ndimage.distance_transform_edt(~tumour, sampling=spacing)
    return organ & ~tumour & (distance_mm <= ring_mm)


def tumour_features(image: np.ndarray, tumour: np.ndarray, organ: np.ndarray, spacing: Sequence[float],
                    other_tumours: np.ndarray | None = None, shell_mm: float | None = None,
                    organ_stats: tuple[float, float] | None = None, method: str | None = None) -> dict[str, float]:
    """The features of :data:`FEATURES` for one tumour.

    image: intensities (z, y, x). tumour: this tumour's voxels (bool, same shape). organ: the organ's voxels
    without tumours (bool). other_tumours: the image's other tumour voxels (kept out of the organ reference).
    spacing: mm per voxel, same axis order. shell_mm: organ reference = organ voxels within this distance of
    the tumour (None: the whole organ). organ_stats: precomputed (mean, SD) of the whole-organ reference (only
    used when ``shell_mm`` is None; saves recomputing it for each tumour of an image).
    """
    spacing = tuple(float(s) for s in spacing)
    tumour = tumour.astype(bool)
    all_tumours = tumour if other_tumours is None else (tumour | other_tumours.astype(bool))
    reference_organ = organ.astype(bool) & ~all_tumours
    margin_mm = max(shell_mm or 0.0, 3 * max(spacing))
    box = box_slices(tumour, margin=[int(math.ceil(margin_mm / s)) + 2 for s in spacing])
    t, img, org, every = tumour[box], image[box].astype(np.float64), reference_organ[box], all_tumours[box]

    if shell_mm is not None:
        mean, sd = parenchyma_mean_sd(img[parenchyma_ring(t, org, spacing, shell_mm)])
    elif organ_stats is not None:
        mean, sd = organ_stats
    else:
        mean, sd = parenchyma_mean_sd(image[reference_organ])
    inside = img[t]
    sd_ok = sd > 0 and not math.isnan(sd)
    gradient = boundary_gradient(img, t, org | every, spacing)
    return {
        "volume_ml": float(t.sum() * np.prod(spacing) / 1000.0),
        "contrast_sd": (float(inside.mean()) - mean) / sd if sd_ok else math.nan,
        "heterogeneity_sd": float(inside.std()) / sd if sd_ok else math.nan,
        "boundary_gradient": gradient,
        "boundary_gradient_sd": gradient / sd if sd_ok else math.nan,
        "sphericity": sphericity(t, spacing, method),
        "organ_mean": mean,
        "organ_sd": sd,
    }


def tumour_components(tumours: np.ndarray) -> list[np.ndarray]:
    """Connected components (26-connectivity) of a tumour mask, largest first, each a bool array."""
    labelled, n = ndimage.label(tumours, structure=FULL_CONNECTIVITY)
    if n == 0:
        return []
    sizes = np.bincount(labelled.ravel())[1:]
    return [labelled == (i + 1) for i in np.argsort(-sizes, kind="stable")]


def image_features(image: np.ndarray, label: np.ndarray, organ_label: int, tumour_label: int,
                   spacing: Sequence[float], tumours: Iterable[np.ndarray] | None = None,
                   shell_mm: float | None = None) -> list[dict[str, float]]:
    """Features of each tumour of one image (components of ``label == tumour_label``, or the masks given)."""
    every = label == tumour_label
    organ = (label == organ_label) & ~every
    organ_stats = parenchyma_mean_sd(image[organ])
    masks = tumour_components(every) if tumours is None else list(tumours)
    rows = []
    for mask in masks:
        rows.append(tumour_features(image, mask, organ, spacing, other_tumours=every & ~mask, shell_mm=shell_mm,
                                    organ_stats=organ_stats))
    return rows
