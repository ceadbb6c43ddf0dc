"""Tumour statistics of a fold and the calibrated draws made from them (synthesis.statistics)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import log_line

from nnunetv2_tumorsynth.bank.session import SyntheticTumourTraining
from nnunetv2_tumorsynth.bank.settings import SynthSettings
from nnunetv2_tumorsynth.bank.store import SynthesisBank, entry_paths
from nnunetv2_tumorsynth.synthesis.entry import Entry
from nnunetv2_tumorsynth.synthesis.features import parenchyma_mean_sd, parenchyma_ring
from nnunetv2_tumorsynth.synthesis.shape import equivalent_radius_mm
from nnunetv2_tumorsynth.synthesis.statistics import RING_MM, FoldStatistics, measure_tumours
from nnunetv2_tumorsynth.synthesis.synthesise import TumourSettings
from nnunetv2_tumorsynth.synthesis.texture import HeuristicTexture, ring_statistics

SPACING = (2.0, 1.0, 1.0)
SHAPE = (30, 80, 80)


def ball(centre, radius_mm):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SPACING)], indexing="ij")
    return sum((g - c * s) ** 2 for g, c, s in zip(grids, centre, SPACING)) <= radius_mm**2


def untrained_checkpoint(tmp_path, tumour: tuple, parenchyma: tuple, clamp: tuple) -> str:
    """A tiny DDPM checkpoint (untrained) for (16, 32, 32) crops that records these intensity ranges."""
    from nnunetv2_tumorsynth.ddpm import build_model, make_metadata, save_checkpoint

    model = build_model("tiny")
    meta = make_metadata(model, crop_size_vox=(16, 32, 32), spacing_mm=SPACING,
                         normalisation={"scheme": "ZScoreNormalization"},
                         intensity_range={"tumour": list(tumour), "parenchyma": list(parenchyma), "clamp": list(clamp)})
    return str(save_checkpoint(tmp_path / "m.pth", model, meta))


def liver_with_tumours(rng, contrast_sd: float, radius_mm: float):
    """A liver (label 1, mean 0, SD 1) with three tumours (label 2) of ``contrast_sd`` and ``radius_mm``."""
    organ = ball((15, 40, 40), 34.0)
    image = rng.normal(0.0, 1.0, SHAPE).astype(np.float32) * organ - 3.0 * ~organ
    labels = organ.astype(np.uint8)
    for centre in ((15, 30, 28), (15, 52, 40), (15, 32, 54)):
        tumour = ball(centre, radius_mm) & organ
        image[tumour] += contrast_sd
        labels[tumour] = 2
    return image, labels


def test_measured_contrast_size_and_depth():
    image, labels = liver_with_tumours(np.random.default_rng(0), -1.5, 6.0)
    rows = measure_tumours(image, labels, 1, 2, SPACING, "case")
    assert len(rows) == 3
    for row in rows:
        assert row.contrast_sd == pytest.approx(-1.5, abs=0.3)
        assert row.internal_sd == pytest.approx(1.0, abs=0.25)
        assert row.radius_mm == pytest.approx(6.0, rel=0.15)
        assert min(row.axis_ratios) > 0.7, "a ball is round"
        assert 8.0 < row.depth_mm < 34.0
        assert row.smooth_sd < 0.2, "uniform tumours with speckle: no large-scale variation inside"
    ramp = np.arange(SHAPE[2], dtype=np.float32) * 0.3  # 0.3 SD per mm along x: SD 0.8 within a 6 mm ball
    for row in measure_tumours(image + ramp * (labels == 2), labels, 1, 2, SPACING):
        assert 0.3 < row.smooth_sd < 0.8, "a ramp across the tumour is large-scale (smoothing keeps about half)"


def test_parenchyma_statistics_leave_out_a_vessel():
    """A bright vessel in a tumour's ring is not parenchyma: with one crossing the ring, the contrast and grain are
    measured in the same units as away from it (a ring SD inflated by the vessel would make them read fainter)."""
    rng = np.random.default_rng(3)
    values = rng.normal(1.0, 0.2, 5000)
    assert parenchyma_mean_sd(values) == pytest.approx((1.0, 0.2), abs=0.01)
    with_vessel = np.concatenate([values, np.full(600, 4.0)])  # 11 % of the ring at +15 SDs
    assert with_vessel.std() > 0.5
    assert parenchyma_mean_sd(with_vessel) == pytest.approx((1.0, 0.2), abs=0.01)
    checkerboard = np.tile([90.0, 110.0], 500)  # a bimodal parenchyma keeps every voxel (no outliers)
    assert parenchyma_mean_sd(checkerboard) == pytest.approx((100.0, 10.0))

    image, labels = liver_with_tumours(np.random.default_rng(0), -1.5, 6.0)
    vessel = np.zeros(SHAPE, bool)
    vessel[:, 36:38, 24:33] = True  # beside the first tumour (centre y 30, x 28, 6 mm), inside its 5 mm ring
    vessel &= labels == 1
    with_vessel = image + 6.0 * vessel
    plain_rows, vessel_rows = (measure_tumours(im, labels, 1, 2, SPACING) for im in (image, with_vessel))
    ring = parenchyma_ring(labels == 2, labels == 1, SPACING, RING_MM)
    assert (vessel & ring).sum() > 20, "the vessel crosses the ring"
    assert with_vessel[ring].std() > 1.3 * image[ring].std()
    for plain, beside in zip(plain_rows, vessel_rows):
        assert beside.contrast_sd == pytest.approx(plain.contrast_sd, abs=0.1)
        assert beside.internal_sd == pytest.approx(plain.internal_sd, abs=0.05)
    mask = (labels == 2) & (np.abs(np.indices(SHAPE)[1] - 30) < 8) & (np.abs(np.indices(SHAPE)[2] - 28) < 8)
    spacing = np.asarray(SPACING)
    assert ring_statistics(with_vessel, mask, labels == 1, spacing) == pytest.approx(
        ring_statistics(image, mask, labels == 1, spacing), abs=0.03)


def test_draws_follow_the_fold_and_are_a_function_of_the_generator():
    image, labels = liver_with_tumours(np.random.default_rng(0), -1.5, 6.0)
    statistics = FoldStatistics(measure_tumours(image, labels, 1, 2, SPACING))
    assert statistics.calibrated
    draws = [statistics.draw(np.random.default_rng(seed)) for seed in range(200)]
    assert all(d.contrast_sd <= 0 for d in draws), "darker tumours only: never a brighter synthetic one"
    radii = [np.prod(d.semi_axes_mm) ** (1 / 3) for d in draws]
    assert np.median(radii) == pytest.approx(6.0, rel=0.15) and max(radii) < 12.0
    assert statistics.draw(np.random.default_rng(7)) == statistics.draw(np.random.default_rng(7))
    assert FoldStatistics.from_json(statistics.to_json()).tumours == statistics.tumours
    assert not FoldStatistics(statistics.tumours[:2]).calibrated, "two tumours are too few to draw from"


def test_calibrated_heuristic_bank_makes_tumours_like_the_real_ones(tmp_path):
    rng = np.random.default_rng(1)
    image, labels = liver_with_tumours(rng, -1.5, 6.0)
    statistics = FoldStatistics(measure_tumours(image, labels, 1, 2, SPACING))

    class OneCase:
        def load_case(self, identifier):
            return image[None], labels[None], None, {}

    settings = SynthSettings(texture="heuristic", size="data", seed=0, margin_mm=2.0)
    bank = SynthesisBank(str(tmp_path), HeuristicTexture(), settings, SPACING, 1, 2, statistics=statistics)
    made = bank.generate(OneCase(), ["case0"] * 1, 8, epoch=0)
    assert made.made == 8
    contrasts, radii = [], []
    for path in entry_paths(str(tmp_path), "case0"):
        entry = Entry.load(path)
        synthetic = image.copy()
        synthetic_labels = labels.copy()
        entry.paste_into(synthetic)
        synthetic_labels[entry.box][entry.mask] = 3
        row = measure_tumours(synthetic, synthetic_labels, 1, 3, SPACING)[0]
        contrasts.append(row.contrast_sd)
        radii.append(equivalent_radius_mm(entry.mask, SPACING))
    assert all(c < 0 for c in contrasts), contrasts
    assert np.median(contrasts) == pytest.approx(-1.5, abs=0.5)
    assert np.median(radii) == pytest.approx(6.0, rel=0.3)


def test_ddpm_fills_stay_inside_the_recorded_intensity_range(tmp_path):
    """An untrained model inpaints noise; the sampler clamps x0 to the checkpoint's range, not the crop's (which
    here reaches -5, 'fat'), so no fill value lies outside the recorded range."""
    from nnunetv2_tumorsynth.synthesis.texture import make_texture

    checkpoint = untrained_checkpoint(tmp_path, tumour=(-2.0, 0.5), parenchyma=(-1.5, 1.5), clamp=(-2.0, 1.5))
    texture = make_texture("ddpm", checkpoint=checkpoint, ddpm_steps=5)
    rng = np.random.default_rng(0)
    crops = rng.normal(0.0, 1.0, (2, 1, 16, 32, 32)).astype(np.float32)
    crops[:, :, :, :4] = -5.0  # fat at the crop's edge
    masks = np.zeros(crops.shape, bool)
    masks[:, :, 5:11, 10:22, 10:22] = True
    filled = texture.fill(crops, masks, ~masks, rng)
    assert np.array_equal(filled[~masks], crops[~masks])
    assert filled[masks].min() >= -2.0 - 1e-5 and filled[masks].max() <= 1.5 + 1e-5


def test_ddpm_fills_with_a_strength_below_one_keep_the_drawn_brightness(tmp_path):
    """SDEdit start (``DDPMTexture`` strength < 1): the mask is first filled by the calibrated heuristic tumour, so even
    an untrained model, started near the clean end of the schedule, returns tumours as dark as drawn."""
    from nnunetv2_tumorsynth.synthesis.statistics import TumourDraw
    from nnunetv2_tumorsynth.synthesis.texture import make_texture

    checkpoint = untrained_checkpoint(tmp_path, tumour=(-6.0, 1.0), parenchyma=(-3.0, 3.0), clamp=(-6.0, 3.0))
    rng = np.random.default_rng(0)
    crops = rng.normal(0.0, 1.0, (2, 1, 16, 32, 32)).astype(np.float32)
    masks = np.zeros(crops.shape, bool)
    masks[:, :, 5:11, 10:22, 10:22] = True
    draw = TumourDraw(semi_axes_mm=(6.0, 6.0, 6.0), amplitude_mm=0.0, preset="small", contrast_sd=-3.0,
                      internal_sd=0.5, edge_blur_mm=0.5)
    texture = make_texture("ddpm", checkpoint=checkpoint, ddpm_steps=5, ddpm_sampler="dpm++2m", ddpm_strength=0.02)
    filled = texture.fill(crops, masks, ~masks, np.random.default_rng(1), SPACING, draws=[draw, draw])
    assert np.array_equal(filled[~masks], crops[~masks])
    assert -3.5 < float(np.median(filled[masks])) < -2.0, "about 3 parenchyma SDs darker, as drawn"
    without_draws = texture.fill(crops, masks, ~masks, np.random.default_rng(1), SPACING)  # Hu et al. 2023's priors
    assert np.array_equal(without_draws[~masks], crops[~masks])
    with pytest.raises(ValueError, match="ddpm_strength"):
        TumourSettings(ddpm_strength=1.5).check()


def test_ddpm_fills_with_brightness_data_sit_at_the_drawn_contrast_with_the_drawn_spread(tmp_path, monkeypatch):
    """``ddpm_brightness: "data"`` (the default): a model whose fills are faint (here inpainting returns N(0.5, 0.7)
    in the mask) is shifted so the fill's mean is the draw's contrast from the parenchyma ring (parenchyma N(0, 1):
    -3 SDs is a mean near -3), its grain scaled so that the fill's spread, edge blend included, is the drawn one
    (0.5), nothing outside the mask changes, and it stays in the recorded range: a draw brighter than the range
    allows is shifted only until 1 % of the fill would leave it, and a spread is not widened where the range does
    not allow it.
    Without draws (label-free) the fill is left as sampled."""
    import nnunetv2_tumorsynth.ddpm as ddpm
    from nnunetv2_tumorsynth.synthesis.statistics import TumourDraw
    from nnunetv2_tumorsynth.synthesis.texture import make_texture

    def faint_inpaint(model, images, masks, **kwargs):
        noise = np.random.default_rng(kwargs["seed"]).normal(0.5, 0.7, images.shape).astype(np.float32)
        return np.where(masks, noise, images)

    monkeypatch.setattr(ddpm, "inpaint", faint_inpaint)
    checkpoint = untrained_checkpoint(tmp_path, tumour=(-6.0, 1.0), parenchyma=(-3.0, 3.0), clamp=(-6.0, 4.0))
    crops = np.random.default_rng(0).normal(0.0, 1.0, (4, 1, 16, 32, 32)).astype(np.float32)
    masks = np.zeros(crops.shape, bool)
    masks[:, :, 5:11, 10:22, 10:22] = True
    draws = [TumourDraw(semi_axes_mm=(6.0, 6.0, 6.0), amplitude_mm=0.0, preset="small", contrast_sd=c,
                        internal_sd=s, edge_blur_mm=0.5) for c, s in ((-3.0, 0.5), (2.0, 0.5), (6.0, 0.5), (-5.0, 1.5))]
    as_sampled = make_texture("ddpm", checkpoint=checkpoint, ddpm_brightness="model").fill(
        crops, masks, ~masks, np.random.default_rng(1), SPACING, draws=draws)
    shifted = make_texture("ddpm", checkpoint=checkpoint).fill(
        crops, masks, ~masks, np.random.default_rng(1), SPACING, draws=draws)
    assert np.array_equal(shifted[~masks], crops[~masks])
    assert shifted[masks].min() >= -6.0 - 1e-5 and shifted[masks].max() <= 4.0 + 1e-5
    for b, contrast in enumerate((-3.0, 2.0)):
        inside, sampled = shifted[b, 0][masks[b, 0]], as_sampled[b, 0][masks[b, 0]]
        ring = crops[b, 0][~masks[b, 0]]
        assert abs((inside.mean() - ring.mean()) / ring.std() - contrast) < 0.1
        assert inside.std() == pytest.approx(0.5 * ring.std(), rel=0.05)  # the drawn spread, edge blend included,
        assert sampled.std() == pytest.approx(0.7, rel=0.1)  # not the model's
    too_bright = shifted[2, 0][masks[2, 0]]
    assert too_bright.mean() < 4.0 - 0.5 and np.mean(too_bright >= 4.0 - 1e-5) <= 0.011
    near_floor = shifted[3, 0][masks[3, 0]]  # a wider spread at -5 SDs would push the fill through the floor of -6
    assert near_floor.std() < 1.2 * as_sampled[3, 0][masks[3, 0]].std(), "not widened 1.5 x: the range stops it"
    assert np.mean(near_floor <= -6.0 + 1e-5) <= 0.011
    unshifted = make_texture("ddpm", checkpoint=checkpoint).fill(crops, masks, ~masks, np.random.default_rng(1),
                                                                SPACING)
    assert np.array_equal(unshifted, make_texture("ddpm", checkpoint=checkpoint, ddpm_brightness="model").fill(
        crops, masks, ~masks, np.random.default_rng(1), SPACING))
    with pytest.raises(ValueError, match="ddpm_brightness"):
        TumourSettings(ddpm_brightness="bright").check()


def test_ddpm_fills_with_brightness_data_take_the_drawn_tumours_large_scale_variation_and_spread(tmp_path, monkeypatch):
    """A model that fills each mask dark on one side and parenchyma-grey on the other (a ramp of 0.5 SD per mm along
    x) with a faint grain (N(0, 0.4)): a draw from a uniform tumour (``smooth_sd`` 0.05, ``internal_sd`` 0.6)
    loses the ramp and gets the drawn spread from the grain; a draw from a tumour as blotchy as the fill keeps the
    ramp; statistics without ``smooth_sd`` (NaN, written before it was measured) keep it too."""
    import nnunetv2_tumorsynth.ddpm as ddpm
    from nnunetv2_tumorsynth.synthesis.statistics import TumourDraw, large_scale_component
    from nnunetv2_tumorsynth.synthesis.texture import make_texture

    def ramped_inpaint(model, images, masks, **kwargs):
        grain = np.random.default_rng(kwargs["seed"]).normal(0.0, 0.4, images.shape).astype(np.float32)
        ramp = 0.5 * np.arange(images.shape[-1], dtype=np.float32) - 8.0  # mask x 10-21: -3 to +2.5
        return np.where(masks, grain + ramp, images)

    monkeypatch.setattr(ddpm, "inpaint", ramped_inpaint)
    checkpoint = untrained_checkpoint(tmp_path, tumour=(-9.0, 9.0), parenchyma=(-3.0, 3.0), clamp=(-9.0, 9.0))
    crops = np.random.default_rng(0).normal(0.0, 1.0, (3, 1, 16, 32, 32)).astype(np.float32)
    masks = np.zeros(crops.shape, bool)
    masks[:, :, 5:11, 10:22, 10:22] = True
    draws = [TumourDraw(semi_axes_mm=(6.0, 6.0, 6.0), amplitude_mm=0.0, preset="small", contrast_sd=-2.0,
                        internal_sd=0.6, edge_blur_mm=0.5, smooth_sd=s) for s in (0.05, 5.0, float("nan"))]
    filled = make_texture("ddpm", checkpoint=checkpoint).fill(crops, masks, ~masks, np.random.default_rng(1),
                                                             SPACING, draws=draws)
    assert np.array_equal(filled[~masks], crops[~masks])
    mask = masks[0, 0]
    sampled = ramped_inpaint(None, crops, masks, seed=0)[0, 0]
    sampled_smooth = large_scale_component(sampled, mask, SPACING).std()
    smooth = [large_scale_component(filled[b, 0], mask, SPACING).std() for b in range(3)]
    ring = crops[0, 0][~mask]
    assert sampled_smooth > 0.8
    assert smooth[0] < 0.15 * ring.std(), "the ramp is gone: large-scale variation near the drawn 0.05 ring SDs"
    assert filled[0, 0][mask].std() == pytest.approx(0.6 * ring.std(), rel=0.2), "the drawn spread, from the grain"
    assert (filled[0, 0][mask].mean() - ring.mean()) / ring.std() == pytest.approx(-2.0, abs=0.1)
    for b in (1, 2):  # spread scaled down to the drawn 0.6 by at most GRAIN_SCALE's factor 0.5; the ramp's shape kept
        assert smooth[b] > 0.5 * sampled_smooth


def test_grain_scale_gives_the_drawn_spread_with_the_edge_blend_included():
    """A fill dark in its middle and grey at its rim, shifted brighter over a blended edge, flattens: scaling its
    spread by target / own SD (the factor before) left it at under two thirds of the target; the solved factor gives the
    target, also for a darker shift (the blend then adds spread) and for a uniform weight (target / own SD)."""
    from nnunetv2_tumorsynth.synthesis.texture import GRAIN_SCALE, grain_scale

    rng = np.random.default_rng(0)
    weight = np.linspace(0.3, 1.0, 2000)  # rim to middle
    values = -2.0 * weight + rng.normal(0.0, 0.3, weight.size)  # dark in the middle, grey at the rim
    for shift in (4.0, -1.0):
        scale = grain_scale(values, weight, shift, target_sd=0.8)
        filled = values.mean() + scale * (values - values.mean()) + shift * weight
        assert filled.std() == pytest.approx(0.8, rel=1e-6)
    naive = values.mean() + 0.8 / values.std() * (values - values.mean()) + 4.0 * weight
    assert naive.std() < 0.65 * 0.8, "the old factor: the blend cancels much of the fill's own pattern"
    flat = rng.normal(0.0, 0.5, 1000)
    assert grain_scale(flat, np.ones(1000), 3.0, 1.0) == pytest.approx(1.0 / flat.std())
    assert grain_scale(flat, np.ones(1000), 3.0, 100.0) == GRAIN_SCALE[1]
    assert grain_scale(flat, weight[:1000], 30.0, 0.1) == GRAIN_SCALE[0], "the blend alone is wider than the target"


def test_fidelity_check_warns_about_contrast_and_clamped_fills():
    from dataclasses import replace

    from nnunetv2_tumorsynth.synthesis.statistics import fidelity_check

    image, labels = liver_with_tumours(np.random.default_rng(0), -1.5, 6.0)
    real = FoldStatistics(measure_tumours(image, labels, 1, 2, SPACING))
    alike = fidelity_check(real, real.tumours, clamp_share=0.0)
    assert alike.warnings == [] and "contrast_sd" in alike.table()
    brighter = [replace(t, contrast_sd=t.contrast_sd + 2.5) for t in real.tumours]
    off = fidelity_check(real, brighter, clamp_share=0.05)
    assert len(off.warnings) == 2
    median = float(np.median([t.contrast_sd for t in brighter]))
    assert median > 0.5 and f"median contrast ({median:+.2f}" in off.warnings[0] and "5.0 %" in off.warnings[1]
    assert "ddpm_brightness 'data'" in off.warnings[0], "the remedy for faint diffusion fills is named"
    mixed = FoldStatistics([replace(t, contrast_sd=-t.contrast_sd) if i == 0 else t
                            for i, t in enumerate(real.tumours)])
    warnings = fidelity_check(mixed, brighter, clamp_share=0.0).warnings
    assert len(warnings) == 1 and "darker (2) and brighter (1)" in warnings[0], "no median of a two-signed set"
    assert "ddpm_brightness 'data'" in warnings[0], "a mixed fold is where diffusion fills need the drawn sign"


def test_generate_refuses_size_data_only_when_most_calibrated_tumours_outgrow_the_crop():
    """tumorsynth_generate's check before it writes anything follows the synthesiser, which draws an oversized
    calibrated tumour again: a crop that most draws fit is accepted, one that most draws outgrow is refused."""
    from nnunetv2_tumorsynth.generate.generator import Generator
    from nnunetv2_tumorsynth.generate.settings import GenerateError

    image, labels = liver_with_tumours(np.random.default_rng(0), -2.0, 6.0)
    statistics = FoldStatistics(measure_tumours(image, labels, 1, 2, SPACING))

    def generator(crop):
        fake = SimpleNamespace(texture=FixedCropTexture(crop), statistics=statistics, checkpoint="model.pth",
                               settings=SimpleNamespace(replace_real=False, size="data", deformation="simplex"),
                               source=SimpleNamespace(spacing=SPACING, name="Dataset999_Fake"))
        fake._calibrated_boxes = lambda: Generator._calibrated_boxes(fake)
        return fake

    boxes = Generator._calibrated_boxes(generator(None))
    largest = np.max(boxes, axis=0)
    typical = np.median(boxes, axis=0).astype(int)
    assert (largest > typical).any(), "the test needs draws larger than the typical one"
    Generator._check_tumours_fit_crop(generator(tuple(int(v) for v in typical)))  # half or more fit: accepted
    with pytest.raises(GenerateError, match="--size data"):
        Generator._check_tumours_fit_crop(generator(tuple(int(v) - 2 for v in typical)))


class FixedCropTexture:
    """Stands in for the diffusion texture: a fixed context crop (voxels, z y x), fill unused."""

    def __init__(self, crop_size):
        self.crop_size = crop_size


def test_calibrated_tumours_are_drawn_again_until_they_fit_the_diffusion_crop():
    """Calibrated sizes follow the fold's tumours with jitter, so some draws outgrow a small diffusion crop: the
    synthesiser draws those again instead of handing the sampler a mask larger than its crop."""
    from nnunetv2_tumorsynth.synthesis.synthesise import TumourSettings, TumourSynthesiser

    image, labels = liver_with_tumours(np.random.default_rng(0), -2.0, 6.0)
    statistics = FoldStatistics(measure_tumours(image, labels, 1, 2, SPACING))
    crop = (9, 15, 15)  # 18 x 15 x 15 mm: the 6 mm tumours with jitter and deformation sometimes exceed it
    data, seg = image[None], labels[None]
    rng = np.random.default_rng(1)
    unconstrained = TumourSynthesiser(FixedCropTexture(None), TumourSettings(texture="heuristic"), SPACING, 1, 2, rng,
                                      statistics)
    boxes = [unconstrained.plan("case", data, seg).mask.shape for _ in range(40)]
    assert any(any(s > c for s, c in zip(box, crop)) for box in boxes), "the test needs draws larger than the crop"
    synthesiser = TumourSynthesiser(FixedCropTexture(crop), TumourSettings(), SPACING, 1, 2,
                                    np.random.default_rng(1), statistics)
    for _ in range(40):
        assert all(s <= c for s, c in zip(synthesiser.plan("case", data, seg).mask.shape, crop))
    too_small = TumourSynthesiser(FixedCropTexture((3, 3, 3)), TumourSettings(), SPACING, 1, 2,
                                  np.random.default_rng(1), statistics)
    with pytest.raises(ValueError, match="larger than the diffusion model's context crop"):
        too_small.plan("case", data, seg)


def test_quality_gate_data_takes_the_faintest_annotated_tumour(tmp_path):
    image, labels = liver_with_tumours(np.random.default_rng(2), -1.5, 6.0)

    class OneCase:
        identifiers = ["case0"]

        def load_case(self, identifier):
            return image[None], labels[None], None, {"class_locations": {2: np.argwhere(labels[None] == 2)}}

    lines: list[str] = []
    settings = SynthSettings(texture="heuristic", size="data", seed=0, margin_mm=2.0, min_contrast_sd="data",
                             preview_every=0)
    settings.check()
    dataset = SimpleNamespace(name="Dataset999_Fake", spacing=SPACING, organ_label=1, tumour_label=2, num_channels=1,
                              configuration="3d_fullres", configuration_manager=SimpleNamespace(spacing=SPACING))
    training = SyntheticTumourTraining(settings, lines.append, str(tmp_path), dataset, 0, torch.device("cpu"))
    training.start(OneCase(), batch_size=2, iterations_per_epoch=10, epoch=0)
    training.stop()
    faintest = min(abs(t.contrast_sd) for t in measure_tumours(image, labels, 1, 2, SPACING))
    assert training.bank.min_contrast_sd == pytest.approx(0.5 * faintest) and 1.0 < faintest < 2.0
    assert log_line(lines, "quality gate", f"{0.5 * faintest:.2f}")
    for bad in ("faint", -0.5, True):
        with pytest.raises(ValueError, match="min_contrast_sd"):
            SynthSettings(min_contrast_sd=bad).check()


def test_recorded_intensity_range_is_the_training_tumours_and_ring_percentiles():
    """The checkpoint's range: 0.5 and 99.5 % of the training tumours' and their ring's intensities; the clamp
    spans both."""
    from scipy import ndimage

    from nnunetv2_tumorsynth.ddpm.data import RANGE_PERCENTILES, tumour_intensities
    from nnunetv2_tumorsynth.synthesis.statistics import RING_MM

    cases = {f"case{i}": liver_with_tumours(np.random.default_rng(i), -2.0, 6.0) for i in range(2)}
    source = SimpleNamespace(training_cases=["case0", "case1"], channel=0, tumour_label=2, organ_label=1,
                             spacing=SPACING,
                             load_case=lambda case: (cases[case][0][None], cases[case][1][None]))
    ranges, statistics = tumour_intensities([source])
    assert RANGE_PERCENTILES == (0.5, 99.5) and len(statistics) == 6

    tumour, ring = [], []
    for image, labels in cases.values():
        tumour.append(image[labels == 2])
        near = ndimage.distance_transform_edt(labels != 2, sampling=SPACING) <= RING_MM
        ring.append(image[near & (labels == 1)])
    tumour, ring = np.concatenate(tumour), np.concatenate(ring)
    assert ranges["tumour"] == pytest.approx(np.percentile(tumour, [0.5, 99.5]))
    assert ranges["parenchyma"] == pytest.approx(np.percentile(ring, [0.5, 99.5]))
    assert ranges["clamp"] == pytest.approx([min(ranges["tumour"][0], ranges["parenchyma"][0]),
                                             max(ranges["tumour"][1], ranges["parenchyma"][1])])
