"""Noise schedule, masked forward process and masked training loss (Quinton et al. 2026, section 2.2.2).

Notation follows the paper (Quinton et al. 2026) and Ho et al. (2020): ``beta_t`` is the variance added at step t,
``alpha_t = 1 - beta_t`` and ``abar_t = prod_{s<=t} alpha_s``. Timesteps are 0-based indices
``t = 0 .. T-1`` (the paper's t = 1 .. T shifted by one, as in MONAI), so ``abar[0] = alpha_0`` and the
clean image corresponds to "index -1" with ``abar = 1``.

Arrays are ``(B, C, z, y, x)`` in nnU-Net's preprocessed axis order; masks are ``(B, 1, z, y, x)``,
boolean or {0, 1}, True where the tumour is (the region that is noised and inpainted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# The paper (Quinton et al. 2026, Table 1) states "scaled linear beta" with T = 1000 but not the end points. We use
# the values of MONAI's 3D DDPM tutorials (same DiffusionModelUNet and the same AdamW lr 5e-5 setting the
# paper reports): beta_start = 0.0005, beta_end = 0.0195. With T = 1000 this gives abar_{T-1} ~ 4e-4,
# i.e. x_{T-1} keeps about 2 % of the original signal amplitude (SNR ~ 4e-4): close to pure noise.
DEFAULT_NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_BETA_START = 0.0005
DEFAULT_BETA_END = 0.0195
SCHEDULE_KINDS = ("scaled_linear", "linear")


@dataclass(frozen=True)
class NoiseSchedule:
    """Discrete variance schedule ``beta_0 .. beta_{T-1}`` and its cumulative products.

    ``kind="scaled_linear"`` (the paper's): ``beta_t = (sqrt(beta_start) + t / (T-1) *
    (sqrt(beta_end) - sqrt(beta_start)))**2``, i.e. linear in ``sqrt(beta)``. ``kind="linear"`` (Ho et al.)
    is linear in ``beta``. Values are computed in float64 on the CPU (also when built inside a
    ``torch.device("meta")`` context) and handed out as float32 tensors.
    """

    num_train_timesteps: int = DEFAULT_NUM_TRAIN_TIMESTEPS
    beta_start: float = DEFAULT_BETA_START
    beta_end: float = DEFAULT_BETA_END
    kind: str = "scaled_linear"
    betas: torch.Tensor = field(init=False, repr=False, compare=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown beta schedule kind {self.kind!r}; expected one of {SCHEDULE_KINDS}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(
                f"need 0 < beta_start < beta_end < 1, got beta_start={self.beta_start}, beta_end={self.beta_end}"
            )
        T = self.num_train_timesteps
        if self.kind == "scaled_linear":
            sqrt_betas = torch.linspace(
                math.sqrt(self.beta_start), math.sqrt(self.beta_end), T, dtype=torch.float64, device="cpu"
            )
            betas = sqrt_betas**2
        else:
            betas = torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float64, device="cpu")
        # frozen dataclass: derived tensors are set once here
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1.0 - betas, dim=0))  # abar_t

    def abar(self, t: int) -> float:
        """``abar_t`` as a Python float; ``t = -1`` means the clean image (``abar = 1``)."""
        if t < 0:
            return 1.0
        return float(self.alphas_cumprod[t])

    def abar_at(self, t: torch.Tensor, ndim: int = 5) -> torch.Tensor:
        """``abar_t`` for timesteps ``t`` (B,), as float32 of shape (B, 1, ..., 1) with ``ndim`` dims."""
        values = self.alphas_cumprod.to(t.device)[t.long()].to(torch.float32)
        return values.reshape(-1, *([1] * (ndim - 1)))

    def to_metadata(self) -> dict[str, Any]:
        """Plain-dict description stored in checkpoints (``from_metadata`` rebuilds the schedule)."""
        return {
            "kind": self.kind,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> NoiseSchedule:
        return cls(
            num_train_timesteps=int(meta["num_train_timesteps"]),
            beta_start=float(meta["beta_start"]),
            beta_end=float(meta["beta_end"]),
            kind=str(meta["kind"]),
        )


def timestep_subsequence(num_train_timesteps: int, steps: int, spacing: str = "linspace") -> list[int]:
    """Descending timesteps used by a sampler with ``steps`` network evaluations.

    "linspace": evenly spaced from ``T-1`` (the noisiest training step, where sampling starts) down to 0, rounded
    to integers; ``steps == T`` gives every timestep ``T-1, ..., 0`` (the paper's DDPM, eq. 2). "trailing"
    (Lin et al. 2024, Table 2): ``round(T - k T / steps) - 1`` for k = 0 .. steps-1, so the last evaluation is at
    ``T/steps - 1`` rather than at 0 and no evaluation is spent on the almost clean step 0 -> -1; used by the
    few-step solver (``samplers.DPMSolverMultistep``).
    """
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}] (T), got {steps}")
    if spacing == "trailing":
        values = torch.arange(num_train_timesteps, 0, -num_train_timesteps / steps, dtype=torch.float64)
        return (values.round() - 1).long().tolist()[:steps]
    if spacing != "linspace":
        raise ValueError(f"timestep spacing must be 'linspace' or 'trailing', got {spacing!r}")
    if steps == 1:
        return [num_train_timesteps - 1]
    values = torch.linspace(num_train_timesteps - 1, 0, steps, dtype=torch.float64, device="cpu")
    return values.round().long().tolist()


def as_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """Boolean view of a {0, 1} or boolean mask (non-zero = inside the tumour)."""
    return mask if mask.dtype == torch.bool else mask != 0


def q_sample_masked(
    schedule: NoiseSchedule, x0: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Masked forward process, Quinton et al. 2026, eq. 1.

    ``x_t = (1 - m) x0 + m (sqrt(abar_t) x0 + sqrt(1 - abar_t) eps)``. Implemented with ``torch.where`` so
    voxels outside the mask are exactly ``x0`` (bit-identical), whatever the noise holds there.

    Args:
        x0: clean images (B, C, z, y, x), float.
        mask: (B, 1, z, y, x) or (B, C, z, y, x), boolean or {0, 1}; True = noised.
        t: (B,) integer timesteps in [0, T-1].
        noise: standard normal noise, same shape as ``x0``.
    """
    abar = schedule.abar_at(t, x0.ndim).to(x0.dtype)
    noised = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
    return torch.where(as_bool_mask(mask), noised, x0)


def masked_noise_loss(eps_pred: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked MSE on the predicted noise, Quinton et al. 2026, eq. 3, normalised by mask size per sample.

    Per sample: ``sum(m * (eps - eps_pred)**2) / sum(m)`` (mean squared error over the masked voxels,
    so a small tumour weighs as much as a large one); then the mean over samples whose mask is not empty.
    Predictions outside the mask do not enter the loss (not even NaNs: they are selected away, not
    multiplied by 0). If every mask is empty the loss is 0 (still connected to ``eps_pred``'s graph).

    Args:
        eps_pred, eps: (B, C, z, y, x).
        mask: (B, 1, z, y, x) or (B, C, z, y, x), boolean or {0, 1}.
    """
    m = as_bool_mask(mask).expand_as(eps)
    sq_err = torch.where(m, (eps.float() - eps_pred.float()) ** 2, torch.zeros((), device=eps.device))
    per_sample_sum = sq_err.flatten(1).sum(dim=1)
    per_sample_count = m.flatten(1).sum(dim=1)
    non_empty = per_sample_count > 0
    if not bool(non_empty.any()):
        return per_sample_sum.sum() * 0.0
    per_sample = per_sample_sum[non_empty] / per_sample_count[non_empty].to(per_sample_sum.dtype)
    return per_sample.mean()


def sample_timesteps(
    batch_size: int,
    num_train_timesteps: int,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Uniform training timesteps (B,) in [0, T-1] (Ho et al., Algorithm 1)."""
    gen_device = generator.device if generator is not None else device
    t = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator, device=gen_device)
    return t.to(device)


def masked_diffusion_loss(
    model: nn.Module | Any,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    mask: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    autocast: bool = False,
) -> torch.Tensor:
    """The training loss: eq. 1 (``q_sample_masked``), the network's noise estimate, eq. 3 (``masked_noise_loss``).

    This is the one loss path: ``tumorsynth_pretrain_ddpm`` (with per-crop seeded ``t`` and ``noise``),
    ``training_step``, the benchmarks and the tests all call it.

    Args:
        model: a ``MaskedDiffusionUNet`` (or any callable ``(x_t, t, mask) -> eps``).
        x0: clean image crops (B, 1, z, y, x), float32, on the model's device.
        mask: tumour masks (B, 1, z, y, x), boolean or {0, 1}.
        t: (B,) integer timesteps in [0, T-1]; noise: N(0, I) like ``x0``.
        autocast: run the network forward under bf16 autocast (the loss stays float32).
    """
    x_t = q_sample_masked(schedule, x0, mask, t, noise)  # eq. 1
    if autocast:
        with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16):
            eps_pred = model(x_t, t, mask)
    else:
        eps_pred = model(x_t, t, mask)
    return masked_noise_loss(eps_pred, noise, mask)  # eq. 3


def training_step(
    model: nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``masked_diffusion_loss`` with ``t ~ U{0..T-1}`` and ``eps ~ N(0, I)`` drawn here (Ho et al. 2020,
    Algorithm 1). No backward, no optimiser step: the caller owns those.

    Args:
        generator: optional ``torch.Generator`` on ``x0``'s device, for reproducible t and noise.
    """
    t = sample_timesteps(x0.shape[0], schedule.num_train_timesteps, x0.device, generator)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return masked_diffusion_loss(model, schedule, x0, mask, t, noise)
