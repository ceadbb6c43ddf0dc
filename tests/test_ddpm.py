"""Tests of the bundled diffusion model (nnunetv2_tumorsynth.ddpm): CPU only, tiny preset, < 60 s."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from nnunetv2_tumorsynth.ddpm import (
    PARAMETER_COUNTS,
    NoiseSchedule,
    build_model,
    check_compatible,
    count_parameters,
    crop_generators,
    ddim_inpaint,
    ddpm_inpaint,
    inpaint,
    load_checkpoint,
    make_metadata,
    masked_noise_loss,
    q_sample_masked,
    read_checkpoint,
    save_checkpoint,
    timestep_subsequence,
    training_step,
)


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    """Small 3D convolutions run faster on one thread, especially on a shared, loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_model(mask_channel: bool | None = None, seed: int = 0) -> torch.nn.Module:
    """Tiny preset with every weight perturbed: MONAI zero-initialises the output convolution, so a fresh
    network predicts eps = 0 everywhere, which would make the sampler tests blind to the network."""
    torch.manual_seed(seed)
    model = build_model("tiny", mask_channel=mask_channel)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _crop_and_mask(shape=(16, 16, 16), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An image crop (1, z, y, x) and a ball-shaped mask (1, z, y, x) in its middle."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn((1, *shape), generator=g)
    zz, yy, xx = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    centre = [(s - 1) / 2 for s in shape]
    radius = min(shape) / 4
    ball = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2
    return image, ball[None]


# ---------------------------------------------------------------------------------------------- network


def test_paper_preset_has_exactly_the_papers_parameter_count():
    assert count_parameters("paper") == 862_137_473
    # the mask channel adds one 3x3x3 input filter per first-level channel
    assert count_parameters("paper", mask_channel=True) == 862_137_473 + 27 * 128


def test_fast_and_tiny_parameter_counts():
    assert count_parameters("fast") == PARAMETER_COUNTS["fast"] == 41_336_641
    assert count_parameters("tiny") == PARAMETER_COUNTS["tiny"] == 452_281
    assert count_parameters("fast") < 50_000_000
    assert count_parameters("tiny") < 1_000_000


def test_tiny_forward_shapes_and_mask_requirement():
    model = _tiny_model(mask_channel=True)
    assert model.size_divisor == 4
    for shape in [(16, 16, 16), (16, 24, 32)]:
        x = torch.randn(2, 1, *shape)
        with torch.inference_mode():
            eps = model(x, torch.tensor([0, 999]), torch.ones_like(x, dtype=torch.bool))
        assert eps.shape == x.shape
        assert torch.isfinite(eps).all()
    with pytest.raises(ValueError, match="mask_channel=True"):
        model(torch.randn(1, 1, 16, 16, 16), torch.tensor([3]))
    no_mask = _tiny_model(mask_channel=False)
    assert no_mask.unet.conv_in.conv.in_channels == 1
    assert model.unet.conv_in.conv.in_channels == 2


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown DDPM preset"):
        build_model("huge")


# --------------------------------------------------------------------------------------------- schedule


def test_scaled_linear_schedule_values():
    s = NoiseSchedule()
    assert (s.num_train_timesteps, s.beta_start, s.beta_end, s.kind) == (
        1000,
        0.0005,
        0.0195,
        "scaled_linear",
    )
    betas = s.betas
    assert betas.shape == (1000,)
    assert torch.all(betas[1:] > betas[:-1])  # monotone
    assert math.isclose(float(betas[0]), 0.0005, rel_tol=1e-12)
    assert math.isclose(float(betas[-1]), 0.0195, rel_tol=1e-12)
    # scaled linear: sqrt(beta) is linear in t
    t = torch.arange(1000, dtype=torch.float64)
    expected = (math.sqrt(0.0005) + t / 999 * (math.sqrt(0.0195) - math.sqrt(0.0005))) ** 2
    torch.testing.assert_close(betas, expected, rtol=1e-12, atol=0)
    sqrt_betas = betas.sqrt()
    torch.testing.assert_close(
        sqrt_betas[1:] - sqrt_betas[:-1],
        torch.full((999,), float(sqrt_betas[1] - sqrt_betas[0]), dtype=torch.float64),
        rtol=1e-9,
        atol=1e-12,
    )
    abar = s.alphas_cumprod
    assert torch.all((abar > 0) & (abar < 1))
    assert torch.all(abar[1:] < abar[:-1])
    torch.testing.assert_close(abar, torch.cumprod(1 - expected, 0), rtol=1e-12, atol=0)
    assert 1e-4 < float(abar[-1]) < 1e-3  # x_{T-1} is close to pure noise
    assert s.abar(-1) == 1.0
    assert NoiseSchedule.from_metadata(s.to_metadata()) == s
    linear = NoiseSchedule(kind="linear", beta_start=1e-4, beta_end=0.02)
    torch.testing.assert_close(linear.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    with pytest.raises(ValueError):
        NoiseSchedule(kind="cosine")


def test_sampling_timesteps_with_a_strength_start_part_way_down_the_schedule():
    from nnunetv2_tumorsynth.ddpm.samplers import sampling_timesteps

    assert sampling_timesteps(1000, 5) == timestep_subsequence(1000, 5)
    assert sampling_timesteps(1000, 5, 0.5, "trailing") == [499, 399, 299, 199, 99]
    assert sampling_timesteps(1000, 50, 0.01) == list(range(9, -1, -1))  # capped at the 10 timesteps available
    with pytest.raises(ValueError, match="strength"):
        sampling_timesteps(1000, 5, 0.0)


@pytest.mark.parametrize("strength", [0.1, 0.3])
def test_inpainting_with_a_strength_starts_from_the_image_noised_to_that_timestep(strength):
    """SDEdit: with a model that predicts no noise, deterministic DDIM returns x_t0 / sqrt(abar_t0), i.e. the start
    image plus noise of SD sqrt((1 - abar) / abar) at t0 = round(strength T) - 1, and nothing outside the mask."""
    schedule = NoiseSchedule()
    start = torch.linspace(-1.0, 1.0, 16 * 32 * 32).reshape(1, 1, 16, 32, 32)
    mask = torch.zeros_like(start, dtype=torch.bool)
    mask[..., 1:15, 2:30, 2:30] = True  # 10,976 voxels: the noise's SD is estimated within about 1 %
    zero_eps = lambda x, t, m: torch.zeros_like(x)  # noqa: E731
    out = inpaint(zero_eps, start, mask, steps=5, sampler="ddim", seed=0, schedule=schedule, clip_x0=False,
                  strength=strength)
    t0 = round(strength * schedule.num_train_timesteps) - 1
    expected_sd = math.sqrt((1.0 - schedule.abar(t0)) / schedule.abar(t0))
    residual = (out - start)[mask]
    assert abs(float(residual.std()) / expected_sd - 1.0) < 0.03 and abs(float(residual.mean())) < 0.03
    assert torch.equal(out[~mask], start[~mask])


def test_timestep_subsequence():
    assert timestep_subsequence(1000, 1000) == list(range(999, -1, -1))
    ts = timestep_subsequence(1000, 250)
    assert len(ts) == 250 and ts[0] == 999 and ts[-1] == 0
    assert all(a > b for a, b in zip(ts[:-1], ts[1:], strict=True))
    assert timestep_subsequence(1000, 1) == [999]
    with pytest.raises(ValueError):
        timestep_subsequence(1000, 1001)


def test_forward_process_noises_only_the_mask():
    s = NoiseSchedule()
    x0 = torch.randn(2, 1, 8, 8, 8) * 1000.0 + 0.1  # large values: arithmetic would round, where() does not
    mask = torch.rand(2, 1, 8, 8, 8) > 0.5
    noise = torch.randn_like(x0)
    noise[~mask] = float("nan")  # whatever the noise holds outside the mask must not leak
    t = torch.tensor([10, 900])
    x_t = q_sample_masked(s, x0, mask, t, noise)
    assert torch.equal(x_t[~mask], x0[~mask])
    abar = s.alphas_cumprod[t].float().reshape(2, 1, 1, 1, 1)
    expected = abar.sqrt() * x0 + (1 - abar).sqrt() * noise  # eq. 1 inside the mask
    torch.testing.assert_close(x_t[mask], expected[mask])


def test_masked_loss_ignores_outside_and_is_normalised_per_sample():
    eps = torch.zeros(2, 1, 8, 8, 8)
    mask = torch.zeros(2, 1, 8, 8, 8, dtype=torch.bool)
    mask[0, :, :2, :2, :2] = True  # 8 voxels
    mask[1] = True  # 512 voxels
    pred = torch.ones_like(eps)  # error 1 everywhere inside
    assert math.isclose(float(masked_noise_loss(pred, eps, mask)), 1.0, rel_tol=1e-6)
    # outside-mask predictions do not matter, not even NaN
    pred_outside = pred.clone()
    pred_outside[~mask] = float("nan")
    assert math.isclose(float(masked_noise_loss(pred_outside, eps, mask)), 1.0, rel_tol=1e-6)
    # size-normalised: the 8-voxel tumour weighs as much as the 512-voxel one
    pred2 = torch.zeros_like(eps)
    pred2[0][mask[0]] = 2.0  # MSE 4 on the small mask, 0 on the large
    assert math.isclose(float(masked_noise_loss(pred2, eps, mask.float())), 2.0, rel_tol=1e-6)
    # samples with an empty mask are left out of the mean
    mask_empty = mask.clone()
    mask_empty[1] = False
    assert math.isclose(float(masked_noise_loss(pred2, eps, mask_empty)), 4.0, rel_tol=1e-6)
    assert float(masked_noise_loss(pred2, eps, torch.zeros_like(mask))) == 0.0


def test_training_step_gives_gradients_and_is_reproducible():
    model = _tiny_model().train()
    image, mask = _crop_and_mask((16, 16, 16))
    x0, m = image[None], mask[None]
    loss = training_step(model, model.schedule, x0, m, generator=torch.Generator().manual_seed(3))
    assert loss.ndim == 0 and torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    assert model.unet.conv_in.conv.weight.grad is not None
    assert float(model.unet.conv_in.conv.weight.grad.abs().sum()) > 0
    again = training_step(model, model.schedule, x0, m, generator=torch.Generator().manual_seed(3))
    assert float(again.detach()) == float(loss.detach())


# --------------------------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_inpaint_keeps_outside_bit_identical_and_is_seeded(sampler):
    model = _tiny_model()
    # a batch of two crops (B, 1, z, y, x) with different masks
    crops = [_crop_and_mask((16, 16, 16), seed=0), _crop_and_mask((16, 16, 16), seed=1)]
    image = torch.stack([c[0] for c in crops])
    mask = torch.stack([c[1] for c in crops])
    mask[1, :, :4] = False  # crop 1: the ball cut by a plane
    # DDPM visits every step of its schedule (eq. 2): a T = 12 schedule keeps the test fast
    kwargs = {"steps": 10} if sampler == "ddim" else {"steps": None, "schedule": NoiseSchedule(num_train_timesteps=12)}
    out_a = inpaint(model, image, mask, sampler=sampler, seed=1, batch_size=2, **kwargs)
    out_b = inpaint(model, image, mask, sampler=sampler, seed=1, batch_size=2, **kwargs)
    out_c = inpaint(model, image, mask, sampler=sampler, seed=2, batch_size=2, **kwargs)
    assert out_a.shape == image.shape and out_a.dtype == image.dtype
    assert torch.equal(out_a[~mask], image[~mask])  # bit-identical outside
    assert torch.isfinite(out_a).all()
    for b in range(2):
        assert not torch.allclose(out_a[b][mask[b]], image[b][mask[b]])  # changed inside
        assert not torch.allclose(out_a[b][mask[b]], out_c[b][mask[b]])  # seeds differ
    assert torch.equal(out_a, out_b)  # deterministic under a seed


def test_inpaint_numpy_batch_padding_and_mask_channel_off():
    model = _tiny_model(mask_channel=False)
    shape = (13, 18, 21)  # not divisible by 4: padded internally and cropped back
    img0, m0 = _crop_and_mask(shape, seed=0)
    img1, m1 = _crop_and_mask(shape, seed=1)
    images = torch.stack([img0, img1]).numpy().astype(np.float64)
    masks = torch.stack([m0, m1]).numpy()
    out = inpaint(model, images, masks, steps=5, seed=7, batch_size=2)
    assert isinstance(out, np.ndarray) and out.shape == images.shape and out.dtype == np.float64
    assert np.array_equal(out[~masks], images[~masks])
    assert not np.allclose(out[masks], images[masks])
    # the same crops one at a time, and crop 0 alone: same noise per crop, so the same result up to the
    # float rounding of batched vs single convolutions (amplified by 1/sqrt(abar) in the sampler)
    out_b1 = inpaint(model, images, masks[:, 0], steps=5, seed=7, batch_size=1)  # mask without channel axis
    np.testing.assert_allclose(out_b1, out, rtol=1e-3, atol=1e-3)
    single = inpaint(model, images[0], masks[0], steps=5, seed=7)
    np.testing.assert_allclose(single, out[0], rtol=1e-3, atol=1e-3)


def test_inpaint_rejects_bad_shapes():
    model = _tiny_model()
    with pytest.raises(ValueError, match="one channel"):
        inpaint(model, torch.zeros(2, 16, 16, 16), torch.zeros(2, 16, 16, 16), steps=2)
    with pytest.raises(ValueError, match="does not match"):
        inpaint(model, torch.zeros(1, 16, 16, 16), torch.zeros(1, 8, 16, 16), steps=2)
    with pytest.raises(ValueError, match="sampler"):
        inpaint(model, torch.zeros(1, 16, 16, 16), torch.zeros(1, 16, 16, 16), sampler="euler")


class _Oracle:
    """A perfect noise predictor: knows x0, returns eps with x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps.

    Records (t, x_t, eps) of every call."""

    def __init__(self, schedule: NoiseSchedule, x0: torch.Tensor) -> None:
        self.schedule = schedule
        self.x0 = x0
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        abar = self.schedule.abar_at(t, x_t.ndim)
        eps = (x_t - abar.sqrt() * self.x0) / (1 - abar).sqrt()
        self.calls.append((int(t[0]), x_t.clone(), eps.clone()))
        return eps


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_a_perfect_noise_predictor_recovers_x0(eta):
    schedule = NoiseSchedule()
    image, mask = _crop_and_mask((16, 16, 16))
    x0, m = image[None], mask[None]
    oracle = _Oracle(schedule, x0)
    out = ddim_inpaint(oracle, schedule, x0, m, crop_generators(0, 1), steps=10, eta=eta)
    assert len(oracle.calls) == 10 and oracle.calls[0][0] == 999 and oracle.calls[-1][0] == 0
    torch.testing.assert_close(out[m], x0[m], rtol=0, atol=1e-4)
    assert torch.equal(out[~m], x0[~m])
    if eta == 0.0:
        # deterministic DDIM (eq. 12) with exact eps keeps x_t on the line sqrt(abar) x0 + sqrt(1-abar) eps_0
        # with one fixed eps_0: the implied noise is the same at every step
        eps_first = oracle.calls[0][2][m]
        for _, _, eps in oracle.calls[1:]:
            torch.testing.assert_close(eps[m], eps_first, rtol=0, atol=1e-3)


def test_ddpm_with_a_perfect_noise_predictor_follows_the_forward_marginals():
    schedule = NoiseSchedule()
    x0 = torch.randn(1, 1, 24, 24, 24, generator=torch.Generator().manual_seed(5))
    m = torch.ones_like(x0, dtype=torch.bool)
    m[..., :2] = False  # a thin known region
    oracle = _Oracle(schedule, x0)
    out = ddpm_inpaint(oracle, schedule, x0, m, crop_generators(0, 1), steps=None)
    assert len(oracle.calls) == 1000  # eq. 2: every timestep
    torch.testing.assert_close(out[m], x0[m], rtol=0, atol=1e-4)
    assert torch.equal(out[~m], x0[~m])
    # with the true posterior q(x_{t-1} | x_t, x0) (mean mu, variance beta-tilde), x_t ~ q(x_t | x0):
    # the implied noise is standard normal at every step
    for t, _, eps in oracle.calls[::111]:
        z = eps[m]
        assert abs(float(z.mean())) < 0.05, t
        assert abs(float(z.std()) - 1.0) < 0.05, t


# ------------------------------------------------------------------------------------------- checkpoints


def _metadata(model):
    return make_metadata(
        model,
        crop_size_vox=(64, 96, 128),
        spacing_mm=(3.0, 1.5, 1.5),
        normalisation={"scheme": "ZScoreNormalization"},
        datasets=[
            {
                "name": "Dataset501_ATLAS",
                "configuration": "3d_fullres",
                "fold": 0,
                "normalisation": {"scheme": "ZScoreNormalization"},
            }
        ],
        epoch=12,
        best_val_loss=0.031,
    )


def test_checkpoint_round_trip(tmp_path):
    model = _tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=1e-5)
    image, mask = _crop_and_mask((16, 16, 16))
    training_step(model.train(), model.schedule, image[None], mask[None]).backward()
    optimizer.step()
    meta = _metadata(model)
    assert meta["crop_size_mm"] == [192.0, 144.0, 192.0]
    path = save_checkpoint(tmp_path / "ddpm.pt", model, meta, optimizer=optimizer, extra_state={"step": 7})
    save_checkpoint(tmp_path / "ddpm.pt", model, meta, optimizer=optimizer, extra_state={"step": 7})  # overwrite
    assert sorted(os.listdir(tmp_path)) == ["ddpm.pt"]  # no temporary file left behind

    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta
    assert loaded_meta["preset"] == "tiny" and loaded_meta["mask_channel"] is True
    assert loaded_meta["schedule"] == {
        "kind": "scaled_linear",
        "num_train_timesteps": 1000,
        "beta_start": 0.0005,
        "beta_end": 0.0195,
    }
    assert loaded_meta["training"] == {"epoch": 12, "best_val_loss": 0.031}
    assert loaded.schedule == model.schedule and not loaded.training
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    payload = read_checkpoint(path)
    assert payload["extra_state"] == {"step": 7}
    torch.optim.AdamW(loaded.parameters(), lr=5e-5).load_state_dict(payload["optimizer"])
    # the loaded network computes the same thing
    x = torch.randn(1, 1, 16, 16, 16)
    t, m = torch.tensor([500]), torch.ones_like(x)
    with torch.inference_mode():
        assert torch.equal(model.eval()(x, t, m), loaded(x, t, m))


def test_save_checkpoint_refuses_incomplete_or_inconsistent_metadata(tmp_path):
    model = _tiny_model()
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint(tmp_path / "a.pt", model, {"epoch": 1})
    meta = _metadata(model)
    meta["preset"] = "paper"
    with pytest.raises(ValueError, match="preset"):
        save_checkpoint(tmp_path / "a.pt", model, meta)
    assert not os.listdir(tmp_path)


def test_check_compatible():
    meta = _metadata(_tiny_model())
    check_compatible(meta, (3.0, 1.5, 1.5), "ZScoreNormalization")  # no error
    check_compatible(meta, (3.01, 1.5, 1.5), {"scheme": "ZScoreNormalization"})  # within 1 %
    with pytest.raises(ValueError, match=r"spacing mismatch.*\[3.0, 1.5, 1.5\].*\[2.0, 1.5, 1.5\]"):
        check_compatible(meta, (2.0, 1.5, 1.5), "ZScoreNormalization")
    with pytest.raises(ValueError, match="scheme mismatch.*ZScoreNormalization.*CTNormalization"):
        check_compatible(meta, (3.0, 1.5, 1.5), "CTNormalization")
    meta_ct = dict(meta, normalisation={"scheme": "CTNormalization", "mean": 100.0, "std": 50.0})
    with pytest.raises(ValueError, match="'mean' differs"):
        check_compatible(meta_ct, (3.0, 1.5, 1.5), {"scheme": "CTNormalization", "mean": 80.0, "std": 50.0})
