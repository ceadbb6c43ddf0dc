"""Our sampler steps against MONAI's schedulers (same betas, random inputs): the arithmetic is checked
against a library's, not only against our own reading of Ho et al. 2020 and Song et al. 2021."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from nnunetv2_tumorsynth.ddpm.samplers import DPMSolverMultistep, ddim_step, ddpm_step
from nnunetv2_tumorsynth.ddpm.schedule import NoiseSchedule, timestep_subsequence

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


def diffusers_dpm_solver(**overrides):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(num_train_timesteps=T, trained_betas=SCHEDULE.betas.numpy(),
                                       algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                       final_sigmas_type="zero", **overrides)


@pytest.mark.parametrize("steps", [3, 5, 10, 20])
def test_trailing_timesteps_match_diffusers(steps):
    library = diffusers_dpm_solver(timestep_spacing="trailing")
    library.set_timesteps(steps)
    assert timestep_subsequence(T, steps, spacing="trailing") == [int(t) for t in library.timesteps]


@pytest.mark.parametrize("steps", [2, 5, 10, 20])
def test_dpm_solver_trajectory_matches_diffusers(steps):
    """The same random noise estimates fed to ours and to diffusers' DPMSolverMultistepScheduler, step by step."""
    timesteps = timestep_subsequence(T, steps, spacing="trailing")
    library = diffusers_dpm_solver()
    library.set_timesteps(timesteps=timesteps)
    ours = DPMSolverMultistep()
    g = torch.Generator().manual_seed(steps)
    x_ours = x_lib = torch.randn(2, 1, 6, 5, 4, generator=g)
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        eps = torch.randn(2, 1, 6, 5, 4, generator=g)
        x_lib = library.step(eps, t, x_lib).prev_sample
        x_ours = ours.step(x_ours, eps, t, t_prev, SCHEDULE)
        torch.testing.assert_close(x_ours, x_lib, rtol=1e-4, atol=1e-4)


def test_dpm_solver_first_step_is_ddim():
    x_t, eps = torch.randn(1, 1, 3, 3, 3), torch.randn(1, 1, 3, 3, 3)
    torch.testing.assert_close(DPMSolverMultistep().step(x_t, eps, 999, 799, SCHEDULE),
                               ddim_step(x_t, eps, 999, 799, SCHEDULE), rtol=1e-5, atol=1e-5)


def test_dpm_solver_clipped_x0_bounds_the_result():
    x_t = torch.full((1, 1, 2, 2, 2), 10.0)
    lo, hi = torch.full((1, 1, 1, 1, 1), -1.0), torch.full((1, 1, 1, 1, 1), 1.0)
    out = DPMSolverMultistep().step(x_t, torch.zeros_like(x_t), 99, -1, SCHEDULE, x0_bounds=(lo, hi))
    assert float(out.max()) <= 1.0
