"""Realism features on shapes with known values, the KS comparison, and the report files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from nnunetv2_tumorsynth.inspection import realism
from nnunetv2_tumorsynth.inspection.realism import compare
from nnunetv2_tumorsynth.synthesis.features import (
    boundary_gradient,
    image_features,
    sphericity,
    tumour_features,
    voxel_face_area_mm2,
)

SPACINGS = [(1.0, 1.0, 1.0), (3.0, 1.5, 1.5)]


def grid_mm(shape, spacing):
    """Voxel-centre coordinates in mm relative to the array centre, (z, y, x) broadcastable."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij")


def ball(radius_mm, spacing, margin_mm=12.0):
    shape = [int(np.ceil(2 * (radius_mm + margin_mm) / s)) + 1 for s in spacing]
    z, y, x = grid_mm(shape, spacing)
    r = np.sqrt(z**2 + y**2 + x**2)
    return r <= radius_mm, r


@pytest.mark.parametrize("spacing", SPACINGS)
def test_sphere_volume_and_sphericity(spacing):
    mask, r = ball(12.0, spacing)
    features = tumour_features(np.where(mask, 50.0, 100.0 + (r % 2)), mask, ~mask, spacing)
    assert features["volume_ml"] == mask.sum() * np.prod(spacing) / 1000
    assert features["volume_ml"] == pytest.approx(4 / 3 * np.pi * 12.0**3 / 1000, rel=0.05)  # voxelised ball
    assert features["sphericity"] == pytest.approx(1.0, abs=0.03)
    assert sphericity(mask, spacing, "marching_cubes") == pytest.approx(features["sphericity"])


def test_sphericity_of_a_prolate_spheroid_and_the_voxel_face_bias():
    spacing = (1.0, 1.0, 1.0)
    z, y, x = grid_mm((51, 31, 31), spacing)
    a, c = 7.0, 14.0  # semi-axes mm: x = y = a, z = c
    mask = (x / a) ** 2 + (y / a) ** 2 + (z / c) ** 2 <= 1
    e = math.sqrt(1 - a**2 / c**2)
    area = 2 * math.pi * a**2 * (1 + c / (a * e) * math.asin(e))
    exact = math.pi ** (1 / 3) * (6 * 4 / 3 * math.pi * a * a * c) ** (2 / 3) / area  # 0.929
    assert sphericity(mask, spacing, "marching_cubes") == pytest.approx(exact, abs=0.03)
    # the documented fallback: voxel faces overestimate a smooth surface by ~1.5x
    sphere, _ = ball(12.0, spacing)
    assert sphericity(sphere, spacing, "voxel_faces") == pytest.approx(0.66, abs=0.03)
    # a 2 x 3 x 4 box of voxels: 2 (6 + 8 + 12) = 52 faces of 1 mm^2
    box = np.zeros((6, 7, 8), bool)
    box[2:4, 2:5, 2:6] = True
    assert voxel_face_area_mm2(box, spacing) == 52
    assert voxel_face_area_mm2(box, (2.0, 1.0, 1.0)) == 2 * 12 + 2 * 8 * 2 + 2 * 6 * 2


def test_step_contrast_and_heterogeneity_in_organ_sds():
    spacing = (3.0, 1.5, 1.5)
    shape = (24, 48, 48)
    parity = np.indices(shape).sum(0) % 2
    organ = np.zeros(shape, bool)
    organ[2:-2, 4:-4, 4:-4] = True
    tumour, _ = ball(8.0, spacing, margin_mm=0)
    tumour = np.pad(tumour, [((n - t) // 2, n - t - (n - t) // 2) for n, t in zip(shape, tumour.shape)])
    # organ: 90 / 110 checkerboard (mean 100, SD 10); tumour: 35 / 45 checkerboard (mean 40, SD 5)
    image = np.where(parity, 110.0, 90.0)
    image[tumour] = np.where(parity, 45.0, 35.0)[tumour]
    organ &= ~tumour
    features = tumour_features(image, tumour, organ, spacing)
    assert features["organ_mean"] == pytest.approx(100.0, abs=0.05)
    assert features["organ_sd"] == pytest.approx(10.0, abs=0.01)
    assert features["contrast_sd"] == pytest.approx((40 - 100) / 10, abs=0.02)
    assert features["heterogeneity_sd"] == pytest.approx(0.5, abs=0.01)
    # a shell of organ around the tumour gives the same reference here
    shell = tumour_features(image, tumour, organ, spacing, shell_mm=6.0)
    assert shell["contrast_sd"] == pytest.approx(-6.0, abs=0.1)
    # image_features finds the tumour from the label and agrees
    label = np.where(tumour, 2, np.where(organ, 1, 0))
    (row,) = image_features(image, label, 1, 2, spacing)
    assert row["contrast_sd"] == pytest.approx(features["contrast_sd"])


@pytest.mark.parametrize("spacing", SPACINGS)
def test_linear_ramp_border_gives_its_slope(spacing):
    radius, half_width, step = 10.0, 5.0, 60.0  # intensity ramps linearly from 40 to 100 over r in [5, 15] mm
    tumour, r = ball(radius, spacing)
    image = 40.0 + step * np.clip((r - (radius - half_width)) / (2 * half_width), 0, 1)
    organ = ~tumour
    slope = step / (2 * half_width)  # 6 units per mm
    assert boundary_gradient(image, tumour, organ, spacing) == pytest.approx(slope, rel=0.03)
    features = tumour_features(image, tumour, organ, spacing)
    assert features["boundary_gradient"] == pytest.approx(slope, rel=0.03)
    assert features["boundary_gradient_sd"] == pytest.approx(features["boundary_gradient"] / features["organ_sd"])


def test_border_band_ignores_the_organs_own_edge():
    """A tumour touching the organ's edge: the jump from organ to background does not count."""
    spacing = (1.0, 1.0, 1.0)
    image = np.zeros((20, 20, 20))
    organ = np.zeros(image.shape, bool)
    organ[:, :, :10] = True
    image[organ] = 100.0
    tumour = np.zeros(image.shape, bool)
    tumour[5:15, 5:15, 4:10] = True  # flush with the organ's edge at x = 10
    image[tumour] = 100.0  # no contrast: every gradient inside organ + tumour is zero
    assert boundary_gradient(image, tumour, organ, spacing) == 0.0


def test_compare_matches_scipy_and_skips_nan():
    rng = np.random.default_rng(0)
    real = [{"volume_ml": v} for v in rng.normal(5, 1, 30)]
    synthetic = [{"volume_ml": v} for v in rng.normal(6, 1, 20)] + [{"volume_ml": math.nan}]
    (c,) = compare(real, synthetic, ["volume_ml"])
    expected = stats.ks_2samp([r["volume_ml"] for r in real], [s["volume_ml"] for s in synthetic[:-1]])
    assert c.n_real == 30 and c.n_synthetic == 20
    assert c.ks_statistic == pytest.approx(expected.statistic) and c.ks_pvalue == pytest.approx(expected.pvalue)
    (same,) = compare(real, real, ["volume_ml"])
    assert same.ks_statistic == 0.0


def test_report_files(tmp_path):
    rng = np.random.default_rng(1)
    rows = [{k: float(rng.normal()) for k in realism.FEATURES} for _ in range(8)]
    rows[0]["sphericity"] = math.nan
    report = realism.write_report(rows[:5], rows[5:], str(tmp_path), "real set", "synthetic set", notes=["a note"])
    for name in ("realism.json", "realism.md", "realism_features.csv", "realism_histograms.png"):
        assert (tmp_path / name).is_file()
    saved = json.loads((tmp_path / "realism.json").read_text())  # strict JSON: NaN written as null
    assert saved["n_real"] == 5 and saved["mean_ks_statistic"] == pytest.approx(report["mean_ks_statistic"])
    assert "| sphericity | 4 | 3 |" in (tmp_path / "realism.md").read_text()
    assert len((tmp_path / "realism_features.csv").read_text().splitlines()) == 9
