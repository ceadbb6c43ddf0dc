"""nnunetv2_tumorsynth.synthesis.texture: fidelity of the heuristic texture (Hu et al. 2023): parenchyma
statistics, contrast and polarity, capsule, blur and grain in mm."""

from __future__ import annotations

import numpy as np
import pytest

from nnunetv2_tumorsynth.bank.settings import SynthSettings
from nnunetv2_tumorsynth.synthesis.texture import HeuristicTexture, parenchyma_statistics

SPACING = np.array([3.0, 1.5, 1.5])


def ball(shape, centre, radius_mm, spacing=SPACING) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
    return d2 <= radius_mm**2


def parenchyma_crop(rng, shape=(16, 40, 40)):
    """Parenchyma N(0, 1) with a bright vessel tube (+10) and an existing dark tumour (-8, not organ)."""
    image = rng.normal(0.0, 1.0, shape).astype(np.float32)
    organ = np.ones(shape, bool)
    vessel = np.zeros(shape, bool)
    vessel[:, 4:7, 4:7] = True
    image[vessel] += 10.0
    tumour = ball(shape, (8, 30, 30), 6.0)
    image[tumour] -= 8.0
    organ &= ~tumour  # the organ label of the parenchyma excludes existing tumours
    return image, organ, vessel


def test_parenchyma_statistics_exclude_vessels_and_existing_tumours():
    rng = np.random.default_rng(0)
    image, organ, vessel = parenchyma_crop(rng)
    mask = ball(image.shape, (8, 20, 20), 5.0)
    mean, sd = parenchyma_statistics(image, mask, organ, SPACING)
    assert abs(mean) < 0.1 and abs(sd - 1.0) < 0.1
    # what the old box-shell mean saw: vessels and tumours pull the mean and blow up the SD
    everything = image[~mask]
    assert everything.std() > 1.3


def fill_one(texture: HeuristicTexture, image, mask, organ, seed=0, spacing=SPACING):
    return texture.fill(image[None, None], mask[None, None], organ[None, None], np.random.default_rng(seed),
                        spacing=spacing)[0, 0]


def test_tumour_contrast_is_in_parenchyma_sds_and_outside_is_untouched():
    rng = np.random.default_rng(1)
    image, organ, _ = parenchyma_crop(rng)
    mask = ball(image.shape, (8, 20, 20), 7.0)
    texture = HeuristicTexture(contrast_sd=(3.0, 3.0), capsule_probability=0.0)
    out = fill_one(texture, image, mask, organ)
    assert np.array_equal(out[~mask], image[~mask])
    core = mask & (ball(image.shape, (8, 20, 20), 4.0))
    assert 2.3 < abs(out[core].mean() - image[organ & ~mask].mean()) < 3.7


@pytest.mark.parametrize("polarity, signs", [("darker", {-1}), ("brighter", {1}), ("either", {-1, 1})])
def test_polarity_sets_the_sign_of_the_tumour_contrast(polarity, signs):
    rng = np.random.default_rng(2)
    image, organ, _ = parenchyma_crop(rng)
    mask = ball(image.shape, (8, 20, 20), 7.0)
    core = mask & ball(image.shape, (8, 20, 20), 4.0)
    parenchyma = image[organ & ~mask].mean()
    texture = HeuristicTexture(contrast_sd=(2.0, 2.0), capsule_probability=0.0, polarity=polarity)
    seen = {int(np.sign(fill_one(texture, image, mask, organ, seed)[core].mean() - parenchyma)) for seed in range(12)}
    assert seen == signs


def test_default_polarity_is_either_and_a_bad_one_is_refused():
    assert HeuristicTexture().polarity == "either" and SynthSettings().heuristic_polarity == "either"
    with pytest.raises(ValueError, match="heuristic_polarity"):
        HeuristicTexture(polarity="dark")


def capsule_contrast(texture, seed):
    """(rim mean - core mean) in parenchyma SDs for one filled ball of 9 mm radius."""
    rng = np.random.default_rng(seed)
    image, organ, _ = parenchyma_crop(rng)
    mask = ball(image.shape, (8, 20, 20), 9.0)
    out = fill_one(texture, image, mask, organ, seed)
    depth = ndimage_depth(mask)
    rim, core = mask & (depth <= 2.0), mask & (depth > 4.5)
    return (out[rim].mean() - out[core].mean()) / image[organ & ~mask].std()


def ndimage_depth(mask):
    from scipy import ndimage

    return ndimage.distance_transform_edt(np.pad(mask, 1), sampling=SPACING)[1:-1, 1:-1, 1:-1]


def test_capsule_is_visible_in_parenchyma_sds():
    with_capsule = [capsule_contrast(HeuristicTexture(capsule_probability=1.0), s) for s in range(4)]
    without = [capsule_contrast(HeuristicTexture(capsule_probability=0.0), s) for s in range(4)]
    assert np.mean(with_capsule) > 1.5, with_capsule
    assert abs(np.mean(without)) < 0.6, without


def test_blur_and_grain_are_in_mm():
    """The same physical tumour at two spacings: the edge profile is the same function of mm."""
    # a contrast of 40 SDs: the profile is the blend weight, the texture's grain (1 SD) is 2.5 % of it
    texture = HeuristicTexture(contrast_sd=(40.0, 40.0), capsule_probability=0.0, edge_blur_mm=(3.0, 3.0))
    profiles = []
    for spacing in ((2.0, 2.0, 2.0), (1.0, 1.0, 1.0)):
        n = int(round(40 / spacing[0]))
        image = np.zeros((n, n, n), np.float32)
        organ = np.ones_like(image, bool)
        mask = ball(image.shape, (n / 2, n / 2, n / 2), 12.0, spacing)
        out = fill_one(texture, image, mask, organ, seed=3, spacing=spacing)
        profile = np.abs(out[n // 2, n // 2, n // 2:])  # centre to edge along x, one value per voxel
        profiles.append(profile / profile[0])
    coarse, fine = profiles[0], profiles[1][::2]  # both at 0, 2, 4, ... mm from the centre
    assert np.abs(coarse - fine).max() < 0.1
    assert coarse[5] < 0.8  # 10 mm from the centre, 2 mm inside the edge: the blur is visible


def test_heuristic_texture_changes_only_the_mask():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 1, 16, 20, 20)).astype(np.float32)
    mask = np.zeros_like(image, bool)
    mask[:, :, 5:11, 6:14, 6:14] = True
    organ = np.ones_like(mask)
    out = HeuristicTexture().fill(image, mask, organ, rng)
    assert np.array_equal(out[~mask], image[~mask])
    inside = out[mask].reshape(2, -1).mean(1) - image[mask].reshape(2, -1).mean(1)
    assert np.all(np.abs(inside) > 0.5), "tumour mean differs from the organ by > 0.5 organ SD"
