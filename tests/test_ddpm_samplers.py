"""Our sampler steps against MONAI's schedulers (same betas, random inputs): the arithmetic is checked
against a library's, not only against our own reading of Ho et al. 2020 and Song et al. 2021."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from nnunetv2_tumorsynth.ddpm.samplers import ddim_step, ddpm_step
from nnunetv2_tumorsynth.ddpm.schedule import NoiseSchedule

T = 1000
SCHEDULE = NoiseSchedule()  # scaled linear, beta 0.0005 .. 0.0195


def monai_kwargs() -> dict:
    return {"num_train_timesteps": T, "schedule": "scaled_linear_beta", "beta_start": SCHEDULE.beta_start,
            "beta_end": SCHEDULE.beta_end, "clip_sample": False}


def test_same_betas_as_monai():
    monai = DDPMScheduler(**monai_kwargs())
    torch.testing.assert_close(SCHEDULE.betas.float(), monai.betas.float(), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(SCHEDULE.alphas_cumprod.float(), monai.alphas_cumprod.float(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("t", [999, 500, 37, 1, 0])
def test_ddpm_step_matches_monai(t):
    monai = DDPMScheduler(**monai_kwargs())
    g = torch.Generator().manual_seed(t)
    x_t = torch.randn(2, 1, 6, 5, 4, generator=g)
    eps = torch.randn(2, 1, 6, 5, 4, generator=g)
    # MONAI draws its noise from the generator it is given: draw the same noise for ours
    noise = torch.randn(eps.size(), generator=torch.Generator().manual_seed(123))
    expected, _ = monai.step(eps, t, x_t, generator=torch.Generator().manual_seed(123))
    ours = ddpm_step(x_t, eps, t, t - 1, SCHEDULE, noise=noise if t > 0 else None)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("steps", [10, 50, 250])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_matches_monai(steps, eta):
    monai = DDIMScheduler(**monai_kwargs())
    monai.set_timesteps(steps)
    g = torch.Generator().manual_seed(steps)
    for t in [int(v) for v in monai.timesteps[:: max(1, steps // 4)]] + [int(monai.timesteps[-1])]:
        t_prev = t - T // steps  # MONAI's respacing
        x_t = torch.randn(2, 1, 6, 5, 4, generator=g)
        eps = torch.randn(2, 1, 6, 5, 4, generator=g)
        noise = torch.randn(eps.shape, generator=torch.Generator().manual_seed(t))
        expected, _ = monai.step(eps, t, x_t, eta=eta, generator=torch.Generator().manual_seed(t))
        ours = ddim_step(x_t, eps, t, t_prev if t_prev >= 0 else -1, SCHEDULE, eta=eta, noise=noise)
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_ddpm_step_clipped_x0_stays_in_bounds_at_last_step():
    x_t = torch.full((1, 1, 2, 2, 2), 10.0)
    eps = torch.zeros_like(x_t)
    lo, hi = torch.full((1, 1, 1, 1, 1), -1.0), torch.full((1, 1, 1, 1, 1), 1.0)
    out = ddpm_step(x_t, eps, 0, -1, SCHEDULE, x0_bounds=(lo, hi))
    assert float(out.max()) <= 1.0 + 1e-6  # at t = 0 the mean is the clipped x0


def test_steps_ask_for_noise_when_they_need_it():
    x = torch.zeros(1, 1, 2, 2, 2)
    with pytest.raises(ValueError, match="noise"):
        ddpm_step(x, x, 10, 9, SCHEDULE)
    with pytest.raises(ValueError, match="noise"):
        ddim_step(x, x, 10, 5, SCHEDULE, eta=1.0)
