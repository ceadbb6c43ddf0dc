"""Tests of nnunetv2_tumorsynth.synthesis.placement: tumour positions inside an organ (CPU, a few seconds)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from scipy import ndimage

from nnunetv2_tumorsynth.bank.settings import SynthSettings
from nnunetv2_tumorsynth.synthesis.placement import clip_to_organ, place_tumour
from nnunetv2_tumorsynth.synthesis.shape import random_tumour_mask
from nnunetv2_tumorsynth.synthesis.vessels import vessel_mask_from_intensity

SPACING = np.array((2.0, 1.0, 1.0))  # (z, y, x) mm
SHAPE = (40, 96, 96)


def grid_mm(shape=SHAPE, spacing=SPACING):
    return np.meshgrid(
        *[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)],
        indexing="ij",
        sparse=True,
    )


def ellipsoid(semi_axes_mm, centre_mm=(0.0, 0.0, 0.0), shape=SHAPE, spacing=SPACING):
    grids = grid_mm(shape, spacing)
    return sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre_mm, semi_axes_mm, strict=True)) <= 1.0


def ball(radius_mm, spacing=SPACING):
    return random_tumour_mask(spacing, None, semi_axes_mm=(radius_mm,) * 3, rng=0)


def paste(tumour, corner, shape=SHAPE):
    out = np.zeros(shape, bool)
    out[tuple(slice(c, c + n) for c, n in zip(corner, tumour.shape, strict=True))] = tumour
    return out


ORGAN = ellipsoid((35.0, 42.0, 42.0))
WHOLE = {"min_inside_fraction": 1.0}  # the whole tumour inside the organ (the default lets it bulge out)


def test_tumour_lies_fully_inside_organ():
    rng = np.random.default_rng(0)
    for _ in range(10):
        tumour = random_tumour_mask(SPACING, "simplex", "medium", rng)
        corner = place_tumour(ORGAN, tumour, rng=rng, spacing=SPACING, **WHOLE)
        assert corner is not None
        assert all(isinstance(c, int) for c in corner)
        placed = paste(tumour, corner)
        assert placed.sum() == tumour.sum()
        assert not np.any(placed & ~ORGAN)


def test_forbidden_and_margin_are_respected():
    rng = np.random.default_rng(1)
    existing = ellipsoid((8.0, 10.0, 10.0), centre_mm=(0.0, 10.0, -5.0))
    vessel = ellipsoid((40.0, 3.0, 3.0), centre_mm=(0.0, -20.0, 15.0)) & ORGAN
    forbidden = existing | vessel
    distance_to_forbidden = ndimage.distance_transform_edt(~forbidden, sampling=SPACING)
    for margin in (0.0, 5.0):
        for _ in range(8):
            tumour = ball(6.0)
            corner = place_tumour(ORGAN, tumour, forbidden, rng=rng, spacing=SPACING, margin_mm=margin, **WHOLE)
            assert corner is not None
            placed = paste(tumour, corner)
            assert not np.any(placed & ~ORGAN)
            assert distance_to_forbidden[placed].min() > margin


def test_none_when_tumour_larger_than_organ():
    small_organ = ellipsoid((8.0, 10.0, 10.0))
    assert place_tumour(small_organ, ball(15.0), rng=0, spacing=SPACING, **WHOLE) is None
    # fits in the box of the organ but not in the organ: a thin shell
    shell = ORGAN & ~ellipsoid((28.0, 35.0, 35.0))
    assert place_tumour(shell, ball(9.0), rng=0, spacing=SPACING, **WHOLE) is None
    # no room left between forbidden voxels
    forbidden = ORGAN & ~ellipsoid((10.0, 10.0, 10.0))
    assert place_tumour(ORGAN, ball(9.0), forbidden, rng=0, spacing=SPACING, **WHOLE) is None
    assert place_tumour(np.zeros(SHAPE, bool), ball(3.0), rng=0, spacing=SPACING) is None


def test_partial_inside_fraction():
    slab = np.zeros(SHAPE, bool)
    slab[16:24, 10:86, 10:86] = True  # 16 mm thick: a 24 mm ball cannot fit whole
    tumour = ball(12.0)
    assert place_tumour(slab, tumour, rng=0, spacing=SPACING, **WHOLE) is None
    rng = np.random.default_rng(2)
    for _ in range(5):
        corner = place_tumour(slab, tumour, rng=rng, spacing=SPACING, min_inside_fraction=0.5)
        assert corner is not None
        assert all(c >= 0 for c in corner)
        assert all(c + n <= s for c, n, s in zip(corner, tumour.shape, SHAPE, strict=True))
        inside = np.count_nonzero(
            slab[tuple(slice(c, c + n) for c, n in zip(corner, tumour.shape, strict=True))] & tumour
        )
        assert 0.5 <= inside / tumour.sum() < 1.0
        clipped = clip_to_organ(tumour, slab, corner)
        assert clipped.shape == tumour.shape
        assert clipped.sum() == inside
        assert not np.any(paste(clipped, corner) & ~slab)


def test_default_lets_a_tumour_bulge_out_at_the_organ_border():
    """At the default min_inside_fraction (the trainers' too) a tumour thicker than the organ is placed at
    its border; clipped to the organ it keeps at least that fraction of its voxels."""
    fraction = inspect.signature(place_tumour).parameters["min_inside_fraction"].default
    assert fraction == SynthSettings().min_inside_fraction
    assert 0.5 <= fraction < 1.0
    slab = np.zeros(SHAPE, bool)
    slab[16:24, 10:86, 10:86] = True  # 16 mm thick; a ball of radius 12 mm keeps at most 85 % inside it
    tumour = ball(12.0)
    assert place_tumour(slab, tumour, rng=0, spacing=SPACING, **WHOLE) is None
    rng = np.random.default_rng(6)
    for _ in range(5):
        corner = place_tumour(slab, tumour, rng=rng, spacing=SPACING)
        assert corner is not None
        clipped = clip_to_organ(tumour, slab, corner)
        assert fraction * tumour.sum() <= clipped.sum() < tumour.sum()
        assert not np.any(paste(clipped, corner) & ~slab)


def test_finds_the_only_place_that_fits():
    organ = ellipsoid((6.0, 8.0, 8.0), centre_mm=(0, -30, -30)) | ellipsoid((20.0, 20.0, 20.0), centre_mm=(0, 20, 20))
    big_part = ellipsoid((20.0, 20.0, 20.0), centre_mm=(0, 20, 20))
    rng = np.random.default_rng(3)
    for _ in range(5):
        corner = place_tumour(organ, ball(12.0), rng=rng, spacing=SPACING, **WHOLE)
        assert corner is not None
        assert not np.any(paste(ball(12.0), corner) & ~big_part)


def test_deterministic_under_seed_and_spread_out():
    tumour = ball(5.0)
    a = place_tumour(ORGAN, tumour, rng=5, spacing=SPACING)
    b = place_tumour(ORGAN, tumour, rng=5, spacing=SPACING)
    assert a == b
    corners = {place_tumour(ORGAN, tumour, rng=seed, spacing=SPACING) for seed in range(20)}
    assert len(corners) >= 15  # random positions, not always the same spot


def test_clip_to_organ_beyond_array_edge():
    organ = np.ones((10, 10, 10), bool)
    clipped = clip_to_organ(np.ones((4, 4, 4), bool), organ, (-2, 8, 0))
    assert clipped.shape == (4, 4, 4)
    assert clipped.sum() == 2 * 2 * 4


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        place_tumour(ORGAN, np.zeros((3, 3, 3), bool))
    with pytest.raises(ValueError):
        place_tumour(ORGAN, ball(3.0), forbidden=np.zeros((3, 3, 3), bool))
    with pytest.raises(ValueError):
        place_tumour(ORGAN, ball(3.0), min_inside_fraction=0.0)


def vessel_phantom(seed=0):
    """Organ with textured parenchyma (mean 120, sd 8) and three bright tubes (200), noise sd 6."""
    rng = np.random.default_rng(seed)
    organ = ORGAN
    texture = ndimage.gaussian_filter(rng.standard_normal(SHAPE), (0.7, 1.2, 1.2))
    image = np.where(organ, 120.0 + 8.0 * texture / texture.std(), 0.0)
    z, y, x = grid_mm()
    tubes = np.zeros(SHAPE, bool)
    for cy, cx, radius in ((-15.0, 10.0, 2.5), (12.0, -8.0, 2.0), (5.0, 22.0, 3.0)):
        tubes |= (y - cy - 0.2 * z) ** 2 + (x - cx) ** 2 <= radius**2
    tubes &= organ
    image[tubes] = 200.0
    image = ndimage.gaussian_filter(image, 0.5) + rng.normal(0.0, 6.0, SHAPE)
    return image, organ, tubes


@pytest.mark.parametrize("scale", ["HU-like", "normalised"])
def test_vessel_mask_finds_bright_tubes(scale):
    image, organ, tubes = vessel_phantom()
    if scale == "normalised":
        image = (image - image.min()) / (image.max() - image.min())
    vessels = vessel_mask_from_intensity(image, organ, SPACING)
    assert vessels.shape == organ.shape and vessels.dtype == bool
    assert not np.any(vessels & ~organ)
    core = ndimage.binary_erosion(tubes, iterations=1)
    recall = np.count_nonzero(vessels & core) / core.sum()
    near_tubes = ndimage.binary_dilation(tubes, iterations=2)
    precision = np.count_nonzero(vessels & near_tubes) / vessels.sum()
    assert recall > 0.9, recall
    assert precision > 0.9, precision


def test_tumours_avoid_detected_vessels():
    image, organ, tubes = vessel_phantom(1)
    vessels = vessel_mask_from_intensity(image, organ, SPACING)
    rng = np.random.default_rng(4)
    for _ in range(5):
        tumour = random_tumour_mask(SPACING, "simplex", "small", rng)
        corner = place_tumour(organ, tumour, vessels, rng=rng, spacing=SPACING, margin_mm=2.0)
        assert corner is not None
        assert not np.any(paste(tumour, corner) & tubes)
