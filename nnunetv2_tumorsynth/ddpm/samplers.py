"""DDPM, DDIM and DPM-Solver++(2M) inpainting samplers (Quinton et al. 2026, eq. 1-2; Song et al. 2021, DDIM,
eq. 12 and 16; Lu et al. 2022, DPM-Solver++, Algorithm 2).

One step per sampler (``ddpm_step``, ``ddim_step``, ``DPMSolverMultistep.step``: x_t, the predicted noise, t
and t_prev in, x_{t_prev} out) and one inpainting loop (``inpaint_loop``) that starts from the masked forward process
(eq. 1, ``schedule.q_sample_masked``) at the noisiest timestep of the subsequence, takes one network
evaluation per step, and clamps the known region (mask = 0) to the original image after every
step (eq. 2: ``x_{t-1} = (1 - m) x0 + m (...)``, written with ``torch.where`` for a boolean mask). The
returned crops are bit-identical to the input outside the mask. Sampler arithmetic is float32; only the
network forward may run under bf16 autocast (CUDA).

Timesteps are 0-based (t = 0 .. T-1, ``abar_{-1} = 1``), see ``schedule.py``. Arrays are (B, 1, z, y, x) in
nnU-Net's preprocessed axis order.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .schedule import NoiseSchedule, q_sample_masked, timestep_subsequence

# eps_theta: (x_t (B, 1, z, y, x), t (B,) int64, mask (B, 1, z, y, x) bool) -> predicted noise (B, 1, z, y, x)
EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

SAMPLERS = ("ddim", "ddpm", "dpm++2m")  # same tuple as synthesis.synthesise.SAMPLERS (settings)


def _predict_eps(
    model: EpsModel, x_t: torch.Tensor, t: int, mask: torch.Tensor, autocast_dtype: torch.dtype | None
) -> torch.Tensor:
    """One network evaluation ``eps_theta(x_t, t, m)`` in float32 (autocast only around the forward)."""
    timesteps = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
    if autocast_dtype is not None:
        with torch.autocast(device_type=x_t.device.type, dtype=autocast_dtype):
            eps = model(x_t, timesteps, mask)
    else:
        eps = model(x_t, timesteps, mask)
    return eps.float()


def _standard_normal(like: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """N(0, I) noise shaped like ``like`` (B, ...), crop b drawn from ``generators[b]``.

    Drawn on the CPU (generators are CPU generators) and moved to ``like``'s device, so a seed gives the same
    noise on every device and the noise of a crop does not depend on which other crops share its batch.
    """
    if len(generators) != like.shape[0]:
        raise ValueError(f"need one generator per crop: {len(generators)} generators for {like.shape[0]} crops")
    noise = [torch.randn(like.shape[1:], generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(noise).to(like.device)


def _iterate(steps: list[int], progress: bool, desc: str) -> Any:
    if not progress:
        return enumerate(steps)
    from tqdm import tqdm

    return enumerate(tqdm(steps, desc=desc, leave=False))


def known_range(x0: torch.Tensor, mask: torch.Tensor, slack: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-crop bounds for the predicted clean image: the known region's [min, max] widened by ``slack`` x range.

    nnU-Net's z-scored intensities have no fixed range, so the usual clip to [-1, 1] does not apply; an
    imperfect noise estimate at large t is amplified by 1/sqrt(abar_t) (~50 at t = T-1) and, unclipped,
    makes samples blow up. Crops without known voxels are not clipped. Shapes (B, 1, 1, 1, 1).
    """
    big = torch.finfo(x0.dtype).max
    known_lo = torch.where(mask, torch.full_like(x0, big), x0).amin(dim=(1, 2, 3, 4), keepdim=True)
    known_hi = torch.where(mask, torch.full_like(x0, -big), x0).amax(dim=(1, 2, 3, 4), keepdim=True)
    has_known = known_hi >= known_lo
    width = torch.where(has_known, known_hi - known_lo, torch.zeros_like(known_hi))
    lo = torch.where(has_known, known_lo - slack * width, torch.full_like(known_lo, -big))
    hi = torch.where(has_known, known_hi + slack * width, torch.full_like(known_hi, big))
    return lo, hi


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, abar_t: float,
               x0_bounds: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The clean image implied by a noise estimate (Ho et al. 2020, eq. 15; Song et al. 2021, eq. 12 "predicted
    x0"), clipped to ``x0_bounds`` (lo, hi) when given: the one x0 prediction of every sampler."""
    x0_pred = (x_t - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)
    return x0_pred if x0_bounds is None else torch.clamp(x0_pred, *x0_bounds)


def ddpm_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    t_prev: int,
    schedule: NoiseSchedule,
    noise: torch.Tensor | None = None,
    x0_bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One ancestral DDPM step ``x_t -> x_{t_prev}`` (Ho et al. 2020, Algorithm 2; Quinton et al. 2026, eq. 2).

    ``t_prev`` is the next timestep of the subsequence (``t - 1`` without respacing, ``-1`` after the last
    step); a respaced step uses ``alpha_t = abar_t / abar_prev`` (Nichol & Dhariwal 2021). ``noise`` is
    N(0, I) shaped like ``x_t``; it is needed only when ``t_prev >= 0``. ``x0_bounds`` (lo, hi) clips the
    predicted clean image (see ``known_range``). Without clipping the result equals eq. 2's
    ``mu_theta = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)`` plus noise.
    """
    abar_t, abar_prev = schedule.abar(t), schedule.abar(t_prev)
    alpha_t = abar_t / abar_prev  # = 1 - beta_t when no step is skipped
    beta_t = 1.0 - alpha_t
    x0_pred = predict_x0(x_t, eps, abar_t, x0_bounds)  # Ho et al. eq. 15
    # Ho et al. eq. 7: posterior mean of q(x_{t-1} | x_t, x0_pred); equals mu_theta when nothing is clipped
    mean = (math.sqrt(abar_prev) * beta_t / (1.0 - abar_t) * x0_pred
            + math.sqrt(alpha_t) * (1.0 - abar_prev) / (1.0 - abar_t) * x_t)
    if t_prev < 0:
        return mean
    if noise is None:
        raise ValueError("ddpm_step needs noise for every step but the last")
    variance = beta_t * (1.0 - abar_prev) / (1.0 - abar_t)  # "fixed small" Sigma_t
    return mean + math.sqrt(variance) * noise  # mu + sqrt(Sigma) z


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    t_prev: int,
    schedule: NoiseSchedule,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    x0_bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One DDIM step ``x_t -> x_{t_prev}`` (Song et al. 2021, eq. 12 with sigma_t(eta) of eq. 16).

    ``eta = 0`` is deterministic; ``noise`` (N(0, I) like ``x_t``) is needed only when ``eta > 0`` and
    ``t_prev >= 0``. With ``x0_bounds`` the predicted x0 is clipped and the noise estimate re-derived from it.
    """
    abar_t, abar_prev = schedule.abar(t), schedule.abar(t_prev)
    x0_pred = predict_x0(x_t, eps, abar_t, x0_bounds)  # eq. 12, "predicted x0"
    if x0_bounds is not None:
        eps = (x_t - math.sqrt(abar_t) * x0_pred) / math.sqrt(1.0 - abar_t)
    # eq. 16: sigma_t(eta) = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
    sigma = eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar_t)) * math.sqrt(1.0 - abar_t / abar_prev)
    direction = math.sqrt(max(1.0 - abar_prev - sigma**2, 0.0)) * eps  # eq. 12, "direction pointing to x_t"
    x_prev = math.sqrt(abar_prev) * x0_pred + direction
    if sigma > 0.0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise")
        x_prev = x_prev + sigma * noise  # eq. 12, "random noise" sigma_t z
    return x_prev


class DPMSolverMultistep:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2, data prediction, midpoint form): a
    second-order multistep solver of the diffusion ODE that keeps DDIM-50 fidelity in 5 to 10 steps.

    Stateful like a diffusers scheduler (one instance per sampling run): ``step`` remembers the previous
    predicted x0 and its log-SNR. With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) and
    lambda_t = log(alpha_t / sigma_t), one step t -> t_prev with h = lambda_prev - lambda_t is

        D     = x0_t                                               (first step and the last: first order = DDIM)
        D     = (1 + 1 / (2 r)) x0_t - 1 / (2 r) x0_last,  r = h_last / h                (second order, eq. 2M)
        x_prev = (sigma_prev / sigma_t) x_t - alpha_prev (exp(-h) - 1) D

    The last step (to t_prev = -1, the clean image) is first order and returns the predicted x0, as diffusers'
    ``DPMSolverMultistepScheduler`` does with ``final_sigmas_type="zero"`` (checked against it in
    ``tests/test_ddpm.py``). ``x0_bounds`` clips each predicted x0 before it enters D.
    """

    def __init__(self):
        self.last_x0: torch.Tensor | None = None
        self.last_h: float | None = None

    def step(
        self,
        x_t: torch.Tensor,
        eps: torch.Tensor,
        t: int,
        t_prev: int,
        schedule: NoiseSchedule,
        noise: torch.Tensor | None = None,
        x0_bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        abar_t, abar_prev = schedule.abar(t), schedule.abar(t_prev)
        x0_pred = predict_x0(x_t, eps, abar_t, x0_bounds)  # data prediction x_theta
        if t_prev < 0:  # sigma_prev = 0: the ODE's end point is the predicted clean image (first order)
            return x0_pred
        alpha_prev, sigma_t, sigma_prev = math.sqrt(abar_prev), math.sqrt(1.0 - abar_t), math.sqrt(1.0 - abar_prev)
        lambda_t = 0.5 * math.log(abar_t / (1.0 - abar_t))  # log(alpha_t / sigma_t)
        lambda_prev = 0.5 * math.log(abar_prev / (1.0 - abar_prev))
        h = lambda_prev - lambda_t
        if self.last_x0 is None:
            d = x0_pred  # first step: DPM-Solver++(1) = DDIM
        else:
            r = self.last_h / h
            d = (1.0 + 0.5 / r) * x0_pred - (0.5 / r) * self.last_x0  # Algorithm 2, D_i
        self.last_x0, self.last_h = x0_pred, h
        return (sigma_prev / sigma_t) * x_t - alpha_prev * math.expm1(-h) * d  # Algorithm 2, x_{t_i}


def sampling_timesteps(num_train_timesteps: int, steps: int, strength: float = 1.0,
                       spacing: str = "linspace") -> list[int]:
    """Descending timesteps of a sampler: ``steps`` evaluations over the first ``strength`` of the schedule.

    ``strength = 1`` is ``schedule.timestep_subsequence(T, steps, spacing)``: sampling starts from (almost) pure
    noise. ``strength < 1`` starts at timestep ``round(strength T) - 1`` from the image inside the mask noised to
    that level (SDEdit, Meng et al. 2022, section 3): the denoising keeps that image's coarse content (brightness)
    and redraws its fine texture. ``steps`` is capped at the ``round(strength T)`` timesteps available.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    start = max(1, round(strength * num_train_timesteps))
    return timestep_subsequence(start, min(steps, start), spacing)


def inpaint_loop(
    model: EpsModel,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    mask: torch.Tensor,
    generators: Sequence[torch.Generator],
    timesteps: list[int],
    step: Callable[..., torch.Tensor],
    needs_noise: Callable[[int], bool],
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    clip_x0: bool | tuple[float, float] = True,
    desc: str = "sampling",
) -> torch.Tensor:
    """Inpainting with any sampler ``step`` (``ddpm_step`` or ``ddim_step``) on the descending ``timesteps``.

    Starts from the masked forward process at the first timestep (Quinton et al. 2026, eq. 1: the function
    training uses), then per timestep: one network evaluation, one sampler step, and the known region
    clamped to the original (eq. 2: ``x_{t-1} = (1 - m) x0 + m (...)``). ``needs_noise(t_prev)`` says
    whether the step draws fresh noise (from ``generators``, one per crop).

    Args:
        x0: images (B, 1, z, y, x), float32; the known region (mask False) is kept as is.
        mask: (B, 1, z, y, x) bool, True = region to inpaint.
        clip_x0: clip the predicted clean image at every step: True to ``known_range``, (lo, hi) to these
            bounds (a checkpoint's recorded intensity range of its training tumours and their parenchyma), False
            not at all.
    Returns:
        inpainted images (B, 1, z, y, x), float32, equal to ``x0`` outside the mask.
    """
    if isinstance(clip_x0, tuple):
        x0_bounds = tuple(torch.full((x0.shape[0], 1, 1, 1, 1), float(v), device=x0.device) for v in clip_x0)
    else:
        x0_bounds = known_range(x0, mask) if clip_x0 else None
    t_first = torch.full((x0.shape[0],), timesteps[0], dtype=torch.long, device=x0.device)
    x_t = q_sample_masked(schedule, x0, mask, t_first, _standard_normal(x0, generators))  # eq. 1
    for i, t in _iterate(timesteps, progress, desc):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        eps = _predict_eps(model, x_t, t, mask, autocast_dtype)
        noise = _standard_normal(x0, generators) if needs_noise(t_prev) else None
        x_prev = step(x_t, eps, t, t_prev, schedule, noise=noise, x0_bounds=x0_bounds)
        x_t = torch.where(mask, x_prev, x0)  # eq. 2: known region clamped to the original
    return x_t


def ddpm_inpaint(
    model: EpsModel,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    mask: torch.Tensor,
    generators: Sequence[torch.Generator],
    steps: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    clip_x0: bool | tuple[float, float] = True,
    strength: float = 1.0,
) -> torch.Tensor:
    """Ancestral DDPM inpainting (Quinton et al. 2026, eq. 2; Ho et al. 2020, Algorithm 2 with the clamp).

    With ``steps=None`` (or T) every timestep T-1 .. 0 is visited, exactly the paper's eq. 2; with fewer the
    same step runs on ``timestep_subsequence(T, steps)`` (respaced). ``strength``: see ``sampling_timesteps``.
    Arguments as ``inpaint_loop``.
    """
    timesteps = sampling_timesteps(schedule.num_train_timesteps, steps or schedule.num_train_timesteps, strength)
    return inpaint_loop(model, schedule, x0, mask, generators, timesteps, ddpm_step,
                        needs_noise=lambda t_prev: t_prev >= 0, autocast_dtype=autocast_dtype,
                        progress=progress, clip_x0=clip_x0, desc="DDPM")


def ddim_inpaint(
    model: EpsModel,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    mask: torch.Tensor,
    generators: Sequence[torch.Generator],
    steps: int = 250,
    eta: float = 0.0,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    clip_x0: bool | tuple[float, float] = True,
    strength: float = 1.0,
) -> torch.Tensor:
    """DDIM inpainting (Song et al. 2021, eq. 12) with the known region clamped after every step (eq. 2).

    ``steps`` network evaluations on ``timestep_subsequence(T, steps)`` (the paper samples with 250).
    ``eta = 0`` is deterministic given the starting noise. ``strength``: see ``sampling_timesteps``. Arguments as
    ``inpaint_loop``.
    """
    timesteps = sampling_timesteps(schedule.num_train_timesteps, steps, strength)
    return inpaint_loop(model, schedule, x0, mask, generators, timesteps, functools.partial(ddim_step, eta=eta),
                        needs_noise=lambda t_prev: eta > 0.0 and t_prev >= 0, autocast_dtype=autocast_dtype,
                        progress=progress, clip_x0=clip_x0, desc="DDIM")


def dpm_solver_inpaint(
    model: EpsModel,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    mask: torch.Tensor,
    generators: Sequence[torch.Generator],
    steps: int = 10,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    clip_x0: bool | tuple[float, float] = True,
    strength: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(2M) inpainting (``DPMSolverMultistep``) on ``steps`` trailing timesteps, the known region
    clamped after every step (Quinton et al. 2026, eq. 2). Deterministic given the starting noise. ``strength``:
    see ``sampling_timesteps``."""
    timesteps = sampling_timesteps(schedule.num_train_timesteps, steps, strength, spacing="trailing")
    return inpaint_loop(model, schedule, x0, mask, generators, timesteps, DPMSolverMultistep().step,
                        needs_noise=lambda t_prev: False, autocast_dtype=autocast_dtype, progress=progress,
                        clip_x0=clip_x0, desc="DPM-Solver++")


def _pad_to_multiple(x: torch.Tensor, divisor: int, mode: str) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Pad (B, C, z, y, x) at the high end of z, y, x up to multiples of ``divisor``.

    ``mode="replicate"`` for images (context continues smoothly), ``"constant"`` (0) for masks.
    """
    size = tuple(int(s) for s in x.shape[2:])
    padded = tuple(-(-s // divisor) * divisor for s in size)
    if padded == size:
        return x, size
    pads = []
    # F.pad wants (x_lo, x_hi, y_lo, y_hi, z_lo, z_hi)
    for s, p in zip(reversed(size), reversed(padded), strict=True):
        pads += [0, p - s]
    if mode == "constant":
        return F.pad(x, pads, mode="constant", value=0.0), size
    return F.pad(x, pads, mode=mode), size


def crop_generators(seed: int | np.random.Generator | None, n: int) -> list[torch.Generator]:
    """``n`` independent CPU generators derived from one seed (numpy ``SeedSequence.spawn``).

    ``seed=None`` draws a fresh seed from torch's global RNG (so ``torch.manual_seed`` still pins it); a
    ``numpy.random.Generator`` contributes one draw.
    """
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,), device="cpu").item())
    elif isinstance(seed, np.random.Generator):
        seed = int(seed.integers(0, 2**62))
    children = np.random.SeedSequence(int(seed)).spawn(n)
    generators = []
    for child in children:
        g = torch.Generator(device="cpu")
        g.manual_seed(int(child.generate_state(1, dtype=np.uint64)[0]) & (2**63 - 1))
        generators.append(g)
    return generators


def _model_device(model: Any) -> torch.device:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def inpaint(
    model: EpsModel,
    image: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
    steps: int | None = 250,
    sampler: str = "ddim",
    seed: int | np.random.Generator | None = None,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    eta: float = 0.0,
    schedule: NoiseSchedule | None = None,
    autocast: bool = True,
    progress: bool = False,
    clip_x0: bool | tuple[float, float] = True,
    strength: float = 1.0,
) -> np.ndarray | torch.Tensor:
    """Inpaint the masked region of image crops with the diffusion model (Quinton et al. 2026, section 2.2.2).

    Voxels outside the mask are returned bit-identical to ``image`` (same dtype); inside, the sampled values
    are cast to ``image``'s dtype.

    Args:
        model: a ``MaskedDiffusionUNet`` (from ``build_model`` / ``load_checkpoint``) or any callable
            ``(x_t, t, mask) -> eps``. An ``nn.Module`` is put in eval mode for the call (restored after)
            and, if ``device`` is given, moved there in place (``model.to(device)``).
        image: one crop (1, z, y, x) or a batch (B, 1, z, y, x), numpy or torch, normalised as the model's
            training data (see the checkpoint metadata), axes in nnU-Net's preprocessed order.
        mask: same shape as ``image`` (or without its channel axis), boolean or {0, 1}; True = inpaint.
        steps: network evaluations. DDIM: any number in [1, T], None = 250 (the paper's). DDPM: None = all
            T steps (the paper's eq. 2), fewer = respaced DDPM. DPM-Solver++(2M): None = 10.
        sampler: "ddim", "ddpm" or "dpm++2m" (``DPMSolverMultistep``, few steps).
        seed: int, ``numpy.random.Generator`` or None (see ``crop_generators``). Crop b always gets the b-th
            child seed, so results do not depend on ``batch_size``.
        batch_size: crops per network evaluation.
        device: "cpu", "cuda", ...; None = the model's device.
        eta: DDIM stochasticity (0 = deterministic DDIM; ignored by DDPM).
        schedule: noise schedule; None = ``model.schedule`` if present, else the default.
        autocast: on CUDA, run the network forward under bf16 autocast (sampler arithmetic stays float32).
        progress: show a tqdm bar over the steps.
        clip_x0: clip the predicted clean image at every step: True to the known region's range widened by 50%
            (``known_range``), (lo, hi) to fixed bounds (``DDPMTexture`` passes its checkpoint's recorded range of
            the training tumours and their parenchyma), False not at all (an imperfect model's samples can blow up).
        strength: 1 (default) samples from noise, as the paper; below 1 the image inside the mask is noised to
            timestep ``round(strength T) - 1`` and denoised from there (SDEdit, ``sampling_timesteps``): pass an image
            whose mask already holds a rough tumour (``DDPMTexture`` puts the calibrated heuristic one there).

    Crop sizes that are not multiples of the model's ``size_divisor`` (2 ** (levels - 1)) are padded at the
    high end of each axis (image: edge replicate, mask: 0, i.e. known) and cropped back; no error.

    Returns:
        the inpainted image, same type (numpy or torch, torch on ``image``'s device), shape and dtype.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    is_numpy = isinstance(image, np.ndarray)
    image_t = torch.from_numpy(image) if is_numpy else image
    mask_t = torch.from_numpy(np.asarray(mask)) if isinstance(mask, np.ndarray) else mask
    if not isinstance(image_t, torch.Tensor) or not isinstance(mask_t, torch.Tensor):
        raise TypeError("image and mask must be numpy arrays or torch tensors")
    if image_t.ndim not in (4, 5) or image_t.shape[-4] != 1:
        raise ValueError(
            f"image must be one crop (1, z, y, x) or a batch (B, 1, z, y, x) with one channel; "
            f"got shape {tuple(image_t.shape)}"
        )
    if mask_t.shape == image_t.shape[:-4] + image_t.shape[-3:]:
        mask_t = mask_t.unsqueeze(-4)
    if mask_t.shape != image_t.shape:
        raise ValueError(
            f"mask shape {tuple(mask_t.shape)} does not match image shape {tuple(image_t.shape)} "
            f"(or the image shape without its channel axis)"
        )
    single = image_t.ndim == 4
    images = image_t.unsqueeze(0) if single else image_t
    masks = (mask_t.unsqueeze(0) if single else mask_t).to(images.device)
    masks = masks if masks.dtype == torch.bool else masks != 0

    run_device = torch.device(device) if device is not None else _model_device(model)
    if schedule is None:
        schedule = getattr(model, "schedule", None) or NoiseSchedule()
    divisor = int(getattr(model, "size_divisor", 1))
    autocast_dtype = torch.bfloat16 if (autocast and run_device.type == "cuda") else None
    generators = crop_generators(seed, images.shape[0])

    was_training = None
    if isinstance(model, nn.Module):
        was_training = model.training
        model.eval()
        if device is not None:
            model.to(run_device)

    sampled = images.to(torch.float32, copy=True)  # float32 working copy; only masked voxels are replaced
    todo = [b for b in range(images.shape[0]) if bool(masks[b].any())]  # empty masks: nothing to sample
    try:
        with torch.inference_mode():
            for start in range(0, len(todo), batch_size):
                idx = todo[start : start + batch_size]
                x0 = images[idx].to(run_device, torch.float32)
                if not bool(torch.isfinite(x0).all()):
                    raise ValueError(f"image crops {idx} contain NaN or inf")
                m = masks[idx].to(run_device)
                x0_pad, size = _pad_to_multiple(x0, divisor, mode="replicate")
                m_pad = _pad_to_multiple(m.float(), divisor, mode="constant")[0] > 0.5
                chunk_generators = [generators[b] for b in idx]
                if sampler == "dpm++2m":
                    out = dpm_solver_inpaint(model, schedule, x0_pad, m_pad, chunk_generators, steps=steps or 10,
                                             autocast_dtype=autocast_dtype, progress=progress, clip_x0=clip_x0,
                                             strength=strength)
                elif sampler == "ddim":
                    out = ddim_inpaint(
                        model,
                        schedule,
                        x0_pad,
                        m_pad,
                        chunk_generators,
                        steps=steps or 250,
                        eta=eta,
                        autocast_dtype=autocast_dtype,
                        progress=progress,
                        clip_x0=clip_x0,
                        strength=strength,
                    )
                else:
                    out = ddpm_inpaint(
                        model,
                        schedule,
                        x0_pad,
                        m_pad,
                        chunk_generators,
                        steps=steps,
                        autocast_dtype=autocast_dtype,
                        progress=progress,
                        clip_x0=clip_x0,
                        strength=strength,
                    )
                out = out[..., : size[0], : size[1], : size[2]]
                sampled[idx] = out.to(sampled.device)
    finally:
        if was_training is not None and was_training:
            model.train()

    # bit-identical outside the mask: select from the original tensor, no arithmetic on it
    result = torch.where(masks, sampled.to(images.dtype), images)
    if single:
        result = result[0]
    return result.numpy() if is_numpy else result
