"""Tests of nnunetv2_tumorsynth.synthesis.shape: tumour shapes from deformed ellipsoids (CPU, a few seconds)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nnunetv2_tumorsynth.synthesis import shape as masks
from nnunetv2_tumorsynth.synthesis.shape import (
    SIZE_PRESETS,
    draw_tumour_shape,
    equivalent_radius_mm,
    random_tumour_mask,
    render_tumour_mask,
)

SPACING = (3.0, 1.5, 1.5)  # the paper's resampled spacing, (z, y, x)
SIZES = ["paper", "tiny", "small", "medium", "large", "mix"]
DEFORMATIONS = ["simplex", "elastic", None]


def touches_all_faces(mask: np.ndarray) -> bool:
    return all(
        mask[idx].any() for axis in range(3) for idx in ((slice(None),) * axis + (0,), (slice(None),) * axis + (-1,))
    )


@pytest.mark.parametrize("deformation", DEFORMATIONS)
@pytest.mark.parametrize("size", SIZES)
def test_mask_is_tight_nonempty_bool(size, deformation):
    for seed in range(3):
        mask = random_tumour_mask(SPACING, deformation, size, rng=seed)
        assert mask.dtype == bool and mask.ndim == 3
        assert mask.any()
        assert touches_all_faces(mask), f"box not tight: {mask.shape}"


def test_paper_semi_axes_are_clipped_normal():
    rng = np.random.default_rng(0)
    axes = np.array([draw_tumour_shape("simplex", "paper", rng).semi_axes_mm for _ in range(2000)])
    assert axes.min() >= 13.5 and axes.max() <= 40.5
    assert abs(axes.mean() - 27.0) < 0.5
    assert abs(axes.std() - 4.5) < 0.4


@pytest.mark.parametrize("deformation", DEFORMATIONS)
def test_paper_equivalent_radius_is_plausible(deformation):
    rng = np.random.default_rng(1)
    radii = [equivalent_radius_mm(random_tumour_mask(SPACING, deformation, "paper", rng), SPACING) for _ in range(20)]
    assert 13.5 <= min(radii) and max(radii) <= 40.5
    assert 22.0 < np.median(radii) < 32.0


def test_size_presets_follow_hu2023_radii():
    for size in ["tiny", "small", "medium", "large"]:
        r = SIZE_PRESETS[size].radius_mm
        rng = np.random.default_rng(2)
        shapes = [draw_tumour_shape("simplex", size, rng) for _ in range(300)]
        axes = np.array([s.semi_axes_mm for s in shapes])
        amplitudes = np.array([s.amplitude_mm for s in shapes])
        assert axes.min() >= 0.75 * r and axes.max() <= 1.25 * r
        lo, hi = SIZE_PRESETS[size].amplitude_range_mm
        assert amplitudes.min() >= lo and amplitudes.max() <= hi
        spacing = (1.0, 1.0, 1.0) if size == "tiny" else SPACING
        radii = [equivalent_radius_mm(render_tumour_mask(s, spacing), spacing) for s in shapes[:10]]
        assert 0.6 * r < np.median(radii) < 1.4 * r


def test_mix_draws_every_size():
    rng = np.random.default_rng(3)
    radii = {round(draw_tumour_shape(None, "mix", rng).semi_axes_mm[0] / 4.0) for _ in range(200)}
    # semi-axes of tiny are 3-5 mm and of large 24-40 mm: both ends must occur
    assert min(radii) <= 1 and max(radii) >= 7


def test_anisotropic_spacing_gives_round_masks_in_mm():
    for spacing in [(3.0, 1.5, 1.5), (5.0, 0.7, 0.9), (1.0, 2.0, 0.5)]:
        mask = random_tumour_mask(spacing, None, semi_axes_mm=(20.0, 20.0, 20.0), rng=0)
        extent_mm = np.array(mask.shape) * np.array(spacing)
        # a 40 mm wide ball covers 40 mm to within one voxel on every axis
        assert np.all(np.abs(extent_mm - 40.0) <= np.array(spacing) + 1e-6), (spacing, extent_mm)
        assert abs(equivalent_radius_mm(mask, spacing) - 20.0) < 1.0


def test_anisotropic_semi_axes_follow_axis_order():
    mask = random_tumour_mask((2.0, 1.0, 1.0), None, semi_axes_mm=(10.0, 20.0, 30.0), rng=0)
    extent_mm = np.array(mask.shape) * np.array((2.0, 1.0, 1.0))
    assert np.allclose(extent_mm, [20.0, 40.0, 60.0], atol=2.0)


@pytest.mark.parametrize("deformation", DEFORMATIONS)
def test_deterministic_under_seed_and_different_across_seeds(deformation):
    a = random_tumour_mask(SPACING, deformation, rng=42)
    b = random_tumour_mask(SPACING, deformation, rng=42)
    c = random_tumour_mask(SPACING, deformation, rng=43)
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    gen_a, gen_b = np.random.default_rng(7), np.random.default_rng(7)
    assert np.array_equal(
        random_tumour_mask(SPACING, deformation, rng=gen_a),
        random_tumour_mask(SPACING, deformation, rng=gen_b),
    )


@pytest.mark.parametrize("deformation", ["simplex", "elastic"])
def test_deformation_changes_the_ellipsoid(deformation):
    shape = draw_tumour_shape(deformation, "paper", rng=5, amplitude_mm=5.0)
    plain = render_tumour_mask(draw_tumour_shape(None, "paper", rng=5), SPACING)
    deformed = render_tumour_mask(shape, SPACING)
    assert plain.shape != deformed.shape or np.count_nonzero(plain != deformed) > 0.05 * plain.sum()
    # deformation moves the surface, it does not blow the tumour up or shrink it much
    ratio = deformed.sum() / plain.sum()
    assert 0.7 < ratio < 1.3


def test_coarse_simplex_matches_per_voxel_simplex():
    """The fast path (noise on coarse nodes, cubic spline) against snoise3 at every voxel."""
    rng = np.random.default_rng(11)
    for _ in range(3):
        shape = draw_tumour_shape("simplex", "paper", rng)
        fast = masks.render_uncropped(shape, SPACING)
        exact = masks.render_uncropped(shape, SPACING, exact_noise=True)
        dice = 2 * np.count_nonzero(fast & exact) / (fast.sum() + exact.sum())
        assert dice > 0.97, dice


def test_simplex_amplitude_is_rms_displacement():
    shape = draw_tumour_shape("simplex", "paper", rng=0, amplitude_mm=4.0, simplex_lambda_per_mm=0.05)
    coords = [np.arange(-60.0, 60.0, 2.0, dtype=np.float32)] * 3
    d = masks._simplex_displacement(coords, shape, exact=False)
    rms = [float(np.sqrt(np.mean(c**2))) for c in d]
    assert all(2.8 < r < 5.2 for r in rms), rms
    assert max(float(np.abs(c).max()) for c in d) <= 4.0 / masks.SNOISE3_RMS


def test_elastic_amplitude_is_rms_displacement():
    shape = draw_tumour_shape("elastic", "paper", rng=0, amplitude_mm=3.0)
    d = masks._elastic_displacement((40, 60, 60), np.array(SPACING), shape)
    for c in d:
        assert abs(float(np.sqrt(np.mean(c**2))) - 3.0) < 0.1
        assert float(np.abs(c).max()) <= masks.ELASTIC_CLIP_RMS * 3.0 + 1e-4


def test_paper_simplex_masks_are_single_components():
    rng = np.random.default_rng(8)
    n_components = [
        ndimage.label(random_tumour_mask(SPACING, "simplex", "paper", rng), np.ones((3, 3, 3)))[1] for _ in range(30)
    ]
    assert sum(n == 1 for n in n_components) >= 29


def test_tiny_tumour_at_coarse_spacing_is_never_empty():
    rng = np.random.default_rng(9)
    for _ in range(30):
        mask = random_tumour_mask((6.0, 5.0, 5.0), "simplex", "tiny", rng)
        assert mask.any() and touches_all_faces(mask)


def test_overrides_are_applied():
    shape = draw_tumour_shape(
        "elastic", "paper", rng=0, semi_axes_mm=(10, 11, 12), amplitude_mm=2.5, elastic_smoothing_mm=4.0
    )
    assert shape.semi_axes_mm == (10.0, 11.0, 12.0)
    assert shape.amplitude_mm == 2.5 and shape.elastic_smoothing_mm == 4.0
    assert draw_tumour_shape("simplex", rng=0, simplex_lambda_per_mm=0.1).simplex_lambda_per_mm == 0.1
    mask = random_tumour_mask(SPACING, None, rng=0, semi_axis_mean_mm=15.0, semi_axis_std_mm=0.0)
    assert abs(equivalent_radius_mm(mask, SPACING) - 15.0) < 1.5


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        random_tumour_mask(SPACING, "bspline")
    with pytest.raises(ValueError):
        random_tumour_mask(SPACING, size="huge")
    with pytest.raises(ValueError):
        random_tumour_mask((1.0, 1.0))
    with pytest.raises(ValueError):
        random_tumour_mask((1.0, -1.0, 1.0))
    with pytest.raises(TypeError):
        random_tumour_mask(SPACING, no_such_option=3)
