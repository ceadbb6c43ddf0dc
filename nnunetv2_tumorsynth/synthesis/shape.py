"""Tumour-shaped binary masks: deformed ellipsoids (Quinton et al. 2026, section 2.2.1 and Appendix A).

A mask is made in two steps, so that every random number is drawn in one place and used in another:

1. ``draw_tumour_shape`` draws a :class:`TumourShape` (semi-axes in mm, deformation amplitude in mm,
   noise scale, noise offsets / seed). It knows nothing of voxels.
2. ``render_tumour_mask`` turns a ``TumourShape`` into a bool array for a given voxel spacing. It is
   deterministic: the same shape and spacing give the same array.

``random_tumour_mask`` does both and is the public entry point.

Geometry. The ellipsoid is axis-aligned and centred on a voxel centre. Everything is computed in mm
(voxel centre coordinates, semi-axes, displacements), so anisotropic spacing is handled here and
nowhere else: a tumour with equal semi-axes is round in mm whatever the spacing. Arrays use the axis
order of ``spacing`` (for nnU-Net's preprocessed data that is its transposed order, usually (z, y, x)).

Deformation (Appendix A). A displacement field d(p) in mm is applied by backward mapping (eq. A.13):
the mask at voxel p is the undeformed ellipsoid evaluated at p' = p + d(p). Evaluating the implicit
ellipsoid at p' is exactly nearest-neighbour warping (A.1, last paragraph) of an infinitely fine
ellipsoid, and it costs no interpolation of the mask itself.

* ``"elastic"`` (A.1, eq. A.1): per-axis white Gaussian noise on the voxel grid, smoothed by a
  Gaussian filter of standard deviation ``elastic_smoothing_mm`` (the spatial coherence), then scaled
  so that each component's RMS displacement is ``amplitude_mm``. The paper lets one sigma set both
  magnitude and coherence; we separate them so that elastic and simplex can be compared at equal
  amplitude. Displacements are clipped at +-3 RMS so that the padded box always holds the tumour.
* ``"simplex"`` (A.2, eq. A.12): d_c(p) = sigma * snoise3(p_mm * lambda + offset_c) for each
  component c, with the ``noise`` package's ``snoise3`` and an independent random 3-vector offset per
  component. sigma = ``amplitude_mm`` / 0.428 because snoise3 has an RMS of 0.428 (measured on 2e6
  random points); |snoise3| < 1, so |d| <= sigma.

Speed. Simplex noise is smooth at the scales used (its correlation falls to 0.5 at 0.28 noise units),
so it is evaluated on a coarse grid of nodes every 0.15 noise units (``SIMPLEX_NODE_STEP``, about
6 mm for a paper-size tumour) and interpolated to the voxels with a cubic spline (RMS error about 3 %
of the noise's RMS). The spline is scipy.ndimage.zoom's, applied one axis at a time as a small matrix
(zoom is linear and separable), about 100x faster than calling zoom(order=3) on the 3D field. Masks
from this fast path and from snoise3 at every voxel agree to Dice > 0.99 (benchmarks/bench_masks.py).

Sizes. ``size="paper"`` draws each semi-axis from N(27, 4.5) mm clipped to [13.5, 40.5] mm (Quinton et al. 2026,
2.2.1). ``"tiny"``, ``"small"``, ``"medium"``, ``"large"`` follow Hu et al. 2023 (Table 6 and section 3.1):
semi-axes U(0.75 r, 1.25 r) with r = 4, 8, 16, 32 mm and deformation sigma_e drawn from U[0.5, 1],
U[1, 2], U[3, 6], U[5, 10]. Hu et al. 2023 state no unit for sigma_e and uses it as the spread of an
elastic displacement; we read it as the RMS displacement per axis in mm (``amplitude_mm``), which for
CT at about 1 mm per voxel is the same number. ``"mix"`` picks one of the four with equal
probability. For ``"paper"`` the seeds give no amplitude; we use U(3, 6) mm, amplitude / r = 0.11 to
0.22, inside Hu et al.'s (2023) range (0.125 to 0.375). The noise scale follows the size too (see
``draw_tumour_shape``), so small and large tumours get the same kind of lobulation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from noise import snoise3
from scipy import ndimage

from nnunetv2_tumorsynth.geometry import box_slices, check_spacing

RandomLike = np.random.Generator | int | None

DEFORMATIONS = ("simplex", "elastic", None)

# RMS of noise.snoise3 over random points (measured on 2e6 points: 0.4277); |snoise3| < 0.98.
SNOISE3_RMS = 0.428
# Simplex noise is evaluated on nodes this far apart (in noise units, i.e. mm * lambda), then splined.
SIMPLEX_NODE_STEP = 0.15
# Elastic displacements are clipped at this many RMS (0.27 % of a Gaussian lies beyond).
ELASTIC_CLIP_RMS = 3.0
# Default noise scale (see draw_tumour_shape): one noise unit (1 / lambda) spans 2 r, but the
# displacement gradient, about amplitude * lambda, is kept below 0.08 because the warp folds and tears
# off fragments beyond about 0.1 (benchmarks/mask_shape_quality.py).
SIMPLEX_NOISE_UNIT_PER_RADIUS = 2.0
MAX_AMPLITUDE_X_LAMBDA = 0.08
# Default elastic smoothing sigma = this / lambda: the same correlation length as the simplex field.
ELASTIC_SMOOTHING_X_LAMBDA = 0.17


@dataclass(frozen=True)
class SizePreset:
    """Nominal tumour radius r (mm) and the range of the deformation amplitude (RMS displacement, mm)."""

    radius_mm: float
    amplitude_range_mm: tuple[float, float]


SIZE_PRESETS: dict[str, SizePreset] = {
    "paper": SizePreset(27.0, (3.0, 6.0)),  # Quinton et al. 2026, 2.2.1; amplitude: our choice, see module doc
    "tiny": SizePreset(4.0, (0.5, 1.0)),  # Hu et al. 2023, Table 6
    "small": SizePreset(8.0, (1.0, 2.0)),
    "medium": SizePreset(16.0, (3.0, 6.0)),
    "large": SizePreset(32.0, (5.0, 10.0)),
}
MIX_SIZES = ("tiny", "small", "medium", "large")
SIZES = ("data", *SIZE_PRESETS, "mix")  # every size a setting or a command accepts ("data": synthesis.statistics)


@dataclass(frozen=True)
class TumourShape:
    """Every random number behind one tumour mask; independent of voxel spacing.

    semi_axes_mm: ellipsoid semi-axes in mm, one per array axis (axis order of the spacing).
    deformation: "simplex", "elastic" or None.
    amplitude_mm: RMS displacement per axis in mm (0 when deformation is None).
    simplex_lambda_per_mm: lambda of eq. A.12 (noise units per mm).
    simplex_offsets: one offset 3-vector (noise units) per displacement component, eq. A.12.
    elastic_smoothing_mm: standard deviation of the Gaussian filter of eq. A.1, in mm.
    elastic_seed: seed of the white noise of eq. A.1 (drawn on the voxel grid at render time).
    """

    semi_axes_mm: tuple[float, float, float]
    deformation: str | None
    amplitude_mm: float
    simplex_lambda_per_mm: float
    simplex_offsets: tuple[tuple[float, float, float], ...]
    elastic_smoothing_mm: float
    elastic_seed: int

    def max_displacement_mm(self) -> float:
        """Largest possible |d| per component in mm; the render box is padded by this much."""
        if self.deformation == "simplex":
            return self.amplitude_mm / SNOISE3_RMS  # sigma of eq. A.12 bounds |d| since |snoise3| < 1
        if self.deformation == "elastic":
            return ELASTIC_CLIP_RMS * self.amplitude_mm
        return 0.0


def draw_tumour_shape(
    deformation: str | None = "simplex",
    size: str = "paper",
    rng: RandomLike = None,
    *,
    semi_axes_mm: Sequence[float] | None = None,
    semi_axis_mean_mm: float = 27.0,
    semi_axis_std_mm: float = 4.5,
    semi_axis_range_mm: tuple[float, float] = (13.5, 40.5),
    amplitude_mm: float | None = None,
    simplex_lambda_per_mm: float | None = None,
    elastic_smoothing_mm: float | None = None,
) -> TumourShape:
    """Draw the random parameters of one tumour (all lengths in mm).

    deformation: "simplex" (default, Quinton et al. 2026, A.2), "elastic" (A.1) or None (plain ellipsoid).
    size: "paper", "tiny", "small", "medium", "large" or "mix" (see module docstring).
    rng: numpy Generator or integer seed (None: fresh entropy).
    semi_axes_mm: fixed semi-axes (3 values, array axis order); skips the size draw.
    semi_axis_mean_mm, semi_axis_std_mm, semi_axis_range_mm: the "paper" size draw, each semi-axis
        N(mean, std) clipped to the range (Quinton et al. 2026, 2.2.1: 27, 4.5, [13.5, 40.5]).
    amplitude_mm: RMS displacement per axis; None draws it uniformly from the preset's range.
    simplex_lambda_per_mm: lambda of eq. A.12. The paper gives no value. Default
        min(1 / (2 r), 0.08 / amplitude_mm), r the preset's nominal radius (27 mm for "paper": lambda
        = 0.0185 /mm, lower for amplitudes above 4.3 mm). snoise3 varies on a scale of about half a
        noise unit, so bumps are about r across: a few lobes around the tumour, as in lobulated
        metastases, rather than a rough surface or a global bend. The cap keeps the displacement
        gradient (about amplitude * lambda) low enough that the warp does not fold and tear off
        fragments (more than 99 % single-component masks for every preset).
    elastic_smoothing_mm: Gaussian filter sigma of eq. A.1. The paper gives no value. Default
        0.17 / lambda (the default lambda, 9.2 mm for "paper" at low amplitudes): smoothed white noise
        then has the correlation length of the simplex field (correlation 0.5 at 0.28 / lambda mm),
        so at equal amplitude the two deformations differ only in the kind of noise.
    """
    if deformation not in DEFORMATIONS:
        raise ValueError(f"deformation must be one of {DEFORMATIONS}, got {deformation!r}")
    if size != "mix" and size not in SIZE_PRESETS:
        raise ValueError(f"size must be 'mix' or one of {sorted(SIZE_PRESETS)}, got {size!r}")
    rng = np.random.default_rng(rng)

    if size == "mix":
        size = MIX_SIZES[rng.integers(len(MIX_SIZES))]
    preset = SIZE_PRESETS[size]
    r = preset.radius_mm

    if semi_axes_mm is not None:
        axes = np.asarray(semi_axes_mm, dtype=float)
        if axes.shape != (3,) or np.any(axes <= 0):
            raise ValueError(f"semi_axes_mm must be 3 positive values in mm, got {semi_axes_mm!r}")
    elif size == "paper":
        axes = np.clip(rng.normal(semi_axis_mean_mm, semi_axis_std_mm, 3), *semi_axis_range_mm)
    else:
        axes = rng.uniform(0.75 * r, 1.25 * r, 3)  # Hu et al. 2023, section 3.1, "Shape generation"

    if deformation is None:
        amplitude = 0.0
    elif amplitude_mm is not None:
        amplitude = float(amplitude_mm)
    else:
        amplitude = float(rng.uniform(*preset.amplitude_range_mm))
    if amplitude < 0:
        raise ValueError(f"amplitude_mm must be >= 0, got {amplitude}")

    default_lam = 1.0 / (SIMPLEX_NOISE_UNIT_PER_RADIUS * r)
    if amplitude > 0:
        default_lam = min(default_lam, MAX_AMPLITUDE_X_LAMBDA / amplitude)
    lam = default_lam if simplex_lambda_per_mm is None else float(simplex_lambda_per_mm)
    if elastic_smoothing_mm is None:
        smoothing = ELASTIC_SMOOTHING_X_LAMBDA / default_lam
    else:
        smoothing = float(elastic_smoothing_mm)
    if lam <= 0 or smoothing <= 0:
        raise ValueError("simplex_lambda_per_mm and elastic_smoothing_mm must be > 0")

    # Eq. A.12: an independent offset per displacement component makes d_0, d_1, d_2 independent.
    offsets = rng.uniform(0.0, 1000.0, size=(3, 3))
    elastic_seed = int(rng.integers(2**31))
    return TumourShape(
        semi_axes_mm=tuple(float(a) for a in axes),
        deformation=deformation,
        amplitude_mm=amplitude,
        simplex_lambda_per_mm=float(lam),
        simplex_offsets=tuple(tuple(float(o) for o in row) for row in offsets),
        elastic_smoothing_mm=float(smoothing),
        elastic_seed=elastic_seed,
    )


def render_tumour_mask(shape: TumourShape, spacing: Sequence[float], exact_noise: bool = False) -> np.ndarray:
    """Voxelise a drawn tumour at ``spacing`` (mm per array axis); a tight bool box, possibly empty.

    The render box is centred on the ellipsoid centre and padded by the largest possible displacement,
    so the deformed tumour is never clipped; the result is then cropped to the tumour's bounding box.
    An empty (0-sized) array means no voxel centre fell inside the tumour.
    exact_noise: evaluate snoise3 at every voxel instead of on coarse nodes (10x slower or more; a
        reference for tests and benchmarks).
    """
    return crop_to_bounding_box(render_uncropped(shape, spacing, exact_noise))


def render_uncropped(shape: TumourShape, spacing: Sequence[float], exact_noise: bool = False) -> np.ndarray:
    """``render_tumour_mask`` before the crop: the padded box, ellipsoid centre on its centre voxel."""
    spacing = check_spacing(spacing)
    axes = np.asarray(shape.semi_axes_mm, dtype=float)
    pad_mm = shape.max_displacement_mm()

    # Voxels on each side of the centre voxel (+1: a voxel of slack beyond the furthest reach).
    half = np.ceil((axes + pad_mm) / spacing).astype(int) + 1
    box_shape = tuple(int(n) for n in 2 * half + 1)
    coords_mm = [((np.arange(n) - h) * s).astype(np.float32) for n, h, s in zip(box_shape, half, spacing, strict=True)]
    grids = np.meshgrid(*coords_mm, indexing="ij", sparse=True)  # broadcastable (n0,1,1), (1,n1,1), (1,1,n2)

    if shape.deformation == "simplex":
        displacement = _simplex_displacement(coords_mm, shape, exact_noise)
    elif shape.deformation == "elastic":
        displacement = _elastic_displacement(box_shape, spacing, shape)
    else:
        displacement = [0.0, 0.0, 0.0]

    # Eq. A.13 (backward mapping): voxel p is tumour if the ellipsoid contains p' = p + d(p).
    radius2 = np.zeros(box_shape, dtype=np.float32)
    for grid, d, a in zip(grids, displacement, axes, strict=True):
        radius2 += ((grid + d) * np.float32(1.0 / a)) ** 2
    return radius2 <= 1.0


def random_tumour_mask(
    spacing: Sequence[float],
    deformation: str | None = "simplex",
    size: str = "paper",
    rng: RandomLike = None,
    *,
    max_tries: int = 10,
    **overrides,
) -> np.ndarray:
    """A random tumour mask: tight bool box in the axis order of ``spacing`` (mm per axis).

    deformation: "simplex" (Quinton et al. 2026, A.2, default), "elastic" (A.1) or None (plain ellipsoid).
    size: "paper" (semi-axes N(27, 4.5) mm clipped to [13.5, 40.5]), "tiny", "small", "medium", "large"
        (Hu et al. 2023, Table 6: r = 4, 8, 16, 32 mm) or "mix" (one of those four, equally likely).
    rng: numpy Generator or integer seed; the same seed gives the same mask.
    max_tries: a draw whose mask is empty (possible only for tumours not much larger than a voxel) is
        redrawn up to this many times; after that the undeformed ellipsoid of the last draw is
        returned, which always holds its centre voxel. The result is never empty.
    overrides: keyword arguments of ``draw_tumour_shape`` (semi_axes_mm, amplitude_mm,
        simplex_lambda_per_mm, elastic_smoothing_mm, semi_axis_mean_mm, ...), all in mm.
    """
    rng = np.random.default_rng(rng)
    for _ in range(max(1, max_tries)):
        shape = draw_tumour_shape(deformation, size, rng, **overrides)
        mask = render_tumour_mask(shape, spacing)
        if mask.size > 0:
            return mask
    return render_tumour_mask(replace(shape, deformation=None, amplitude_mm=0.0), spacing)


def equivalent_radius_mm(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Radius in mm of the sphere with the mask's volume (voxel count times voxel volume)."""
    volume_mm3 = float(np.count_nonzero(mask)) * float(np.prod(check_spacing(spacing)))
    return (3.0 * volume_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0)


def crop_to_bounding_box(mask: np.ndarray) -> np.ndarray:
    """The smallest box of ``mask`` holding all its True voxels (shape (0, 0, 0) if there are none)."""
    box = box_slices(mask)
    if box is None:
        return np.zeros((0,) * mask.ndim, dtype=bool)
    return np.ascontiguousarray(mask[box])


def _simplex_displacement(coords_mm: list[np.ndarray], shape: TumourShape, exact: bool) -> list[np.ndarray]:
    """Eq. A.12 on a coarse grid of nodes, splined to the voxels (or at every voxel if ``exact``): d in mm."""
    lam = shape.simplex_lambda_per_mm
    sigma = shape.amplitude_mm / SNOISE3_RMS
    n_voxels = [len(c) for c in coords_mm]
    if exact:
        n_nodes = n_voxels
    else:
        # Nodes every SIMPLEX_NODE_STEP noise units, spanning first to last voxel centre; never more
        # nodes than voxels.
        node_step_mm = SIMPLEX_NODE_STEP / lam
        n_nodes = [min(len(c), math.ceil((c[-1] - c[0]) / node_step_mm) + 1) for c in coords_mm]
    nodes_mm = [np.linspace(c[0], c[-1], n) for c, n in zip(coords_mm, n_nodes, strict=True)]
    node_grids = np.meshgrid(*nodes_mm, indexing="ij")

    displacement = []
    for offset in shape.simplex_offsets:
        # Eq. A.12: noise coordinates are p_mm * lambda + offset_c (one offset per component c).
        u0, u1, u2 = [(g * lam + o).ravel().tolist() for g, o in zip(node_grids, offset, strict=True)]
        noise = np.fromiter(map(snoise3, u0, u1, u2), dtype=np.float32, count=len(u0)).reshape(n_nodes)
        if n_nodes != n_voxels:
            splines = [_spline_matrix(n, m) for n, m in zip(n_nodes, n_voxels, strict=True)]
            noise = np.einsum("ia,jb,kc,abc->ijk", *splines, noise, optimize=True)
            np.clip(noise, -1.0, 1.0, out=noise)  # the spline may overshoot the nodes; keeps |d| <= sigma
        displacement.append(sigma * noise)
    return displacement


@functools.lru_cache(maxsize=512)
def _spline_matrix(n_nodes: int, n_voxels: int) -> np.ndarray:
    """(n_voxels, n_nodes) matrix of scipy.ndimage.zoom's cubic spline along one axis.

    zoom(order=3, grid_mode=False) maps the first and last node onto the first and last voxel. It is
    linear, so zooming the identity gives its matrix; being separable, applying this matrix along
    each axis equals the 3D zoom (to float precision) at a fraction of the cost.
    """
    identity = np.eye(n_nodes)
    matrix = ndimage.zoom(identity, (n_voxels / n_nodes, 1.0), order=3, grid_mode=False, mode="mirror")
    assert matrix.shape == (n_voxels, n_nodes)
    return matrix.astype(np.float32)


def _elastic_displacement(box_shape: tuple[int, int, int], spacing: np.ndarray, shape: TumourShape) -> list[np.ndarray]:
    """Eq. A.1: smoothed white noise per component, scaled to RMS ``amplitude_mm``, clipped; in mm."""
    noise_rng = np.random.default_rng(shape.elastic_seed)
    sigma_voxels = shape.elastic_smoothing_mm / spacing  # isotropic smoothing in mm
    clip_mm = shape.max_displacement_mm()
    displacement = []
    for _ in range(3):
        white = noise_rng.standard_normal(box_shape, dtype=np.float32)
        smooth = ndimage.gaussian_filter(white, sigma_voxels, mode="reflect")
        smooth *= np.float32(shape.amplitude_mm / max(float(smooth.std()), 1e-12))
        displacement.append(np.clip(smooth, -clip_mm, clip_mm))
    return displacement
