"""Network presets around MONAI's 3D ``DiffusionModelUNet`` (the noise predictor ``eps_theta``).

The U-Net itself is MONAI's; this module only chooses its arguments (presets) and wraps it so that every
network in the project is called the same way: ``model(x_t, t, mask) -> eps`` with
``x_t`` (B, 1, z, y, x), ``t`` (B,) integer timesteps, ``mask`` (B, 1, z, y, x), in nnU-Net's preprocessed
axis order. With ``mask_channel=True`` the mask is concatenated to ``x_t`` as a second input channel
(DiffTumor, Chen et al. 2024, section 3.2, conditions its diffusion model on the tumour mask this way); otherwise the
mask only enters through the sampler's clamping of the known region (Quinton et al. 2026, eq. 2) and is ignored here.

Presets (parameter counts with one input channel, i.e. ``mask_channel=False``; the mask channel adds
``27 * channels[0]`` weights to the first convolution):

- ``paper``: Quinton et al. 2026, Table 1: channels (128, 256, 512, 1024), 3 residual blocks per level, attention at
  the last level only: 862,137,473 parameters (the paper's 8.62e8). Table 1's "attention head channels
  0, 0, 0, 768" comes from MONAI Generative, whose attention block used ``num_heads = 1024 // 768 = 1`` head
  of 1024 channels (scale 1/sqrt(1024)) without checking divisibility. Current MONAI requires
  ``channels % num_head_channels == 0``, so the same single 1024-channel head is written
  ``num_head_channels = 1024``. Head channels and GroupNorm groups (32) do not change the parameter count.
  No mask channel, as in the paper.
- ``fast``: on-the-fly synthesis on a GPU. channels (32, 64, 128, 256), 2 residual blocks, attention at the
  last level (8 heads of 32 channels), 16 GroupNorm groups: 41,336,641 parameters (+864 with the mask
  channel). The cost of a 3D diffusion U-Net is dominated by the full-resolution level (conv FLOPs grow with
  channels[0]**2 times the number of voxels), so the first width is cut by 4 and one residual block per level
  removed: ~1.5 TFLOP per forward pass on a 64 x 96 x 128 crop against ~30 TFLOP for ``paper`` (20x fewer),
  while the cheap low-resolution levels keep enough width for context. Uses the mask channel: with a small
  network and few sampling steps, telling the network where the unknown region is (instead of letting it
  infer it from the noise statistics, which fails at small t where x_t is almost clean) is the cheap and
  standard fix.
- ``tiny``: CPU tests. channels (8, 16, 32), 1 residual block, attention at the last level (2 heads of 16
  channels), 8 GroupNorm groups: 452,281 parameters (+216 with the mask channel). Uses the mask channel like
  ``fast`` so that tests exercise the path used for on-the-fly synthesis.

Crop sizes must be divisible by ``2 ** (len(channels) - 1)`` along z, y and x (``size_divisor``): 8 for
``paper`` and ``fast``, 4 for ``tiny``; ``inpaint`` pads internally.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from .schedule import NoiseSchedule


@dataclass(frozen=True)
class Preset:
    """MONAI ``DiffusionModelUNet`` arguments of one preset, plus whether it takes the mask as input."""

    channels: tuple[int, ...]
    num_res_blocks: int
    attention_levels: tuple[bool, ...]
    num_head_channels: tuple[int, ...]
    norm_num_groups: int
    mask_channel: bool
    description: str

    def monai_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``DiffusionModelUNet`` (except spatial_dims / in_channels / out_channels)."""
        return {
            "channels": list(self.channels),
            "num_res_blocks": self.num_res_blocks,
            "attention_levels": list(self.attention_levels),
            "num_head_channels": list(self.num_head_channels),
            "norm_num_groups": self.norm_num_groups,
            # scaled_dot_product_attention: same parameters and maths, less memory than the explicit matrix
            "use_flash_attention": True,
        }


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        channels=(128, 256, 512, 1024),
        num_res_blocks=3,
        attention_levels=(False, False, False, True),
        num_head_channels=(0, 0, 0, 1024),
        norm_num_groups=32,
        mask_channel=False,
        description="Quinton et al. 2026, Table 1: 862,137,473 parameters; for offline generation",
    ),
    "fast": Preset(
        channels=(32, 64, 128, 256),
        num_res_blocks=2,
        attention_levels=(False, False, False, True),
        num_head_channels=(0, 0, 0, 32),
        norm_num_groups=16,
        mask_channel=True,
        description="on-the-fly synthesis on a GPU: 41.3 M parameters, ~20x fewer FLOPs than paper",
    ),
    "tiny": Preset(
        channels=(8, 16, 32),
        num_res_blocks=1,
        attention_levels=(False, False, True),
        num_head_channels=(0, 0, 16),
        norm_num_groups=8,
        mask_channel=True,
        description="CPU tests: 0.45 M parameters",
    ),
}

# Parameter counts with one input channel (no mask channel); asserted in tests/test_ddpm.py.
PARAMETER_COUNTS: dict[str, int] = {"paper": 862_137_473, "fast": 41_336_641, "tiny": 452_281}


class MaskedDiffusionUNet(nn.Module):
    """Noise predictor ``eps_theta(x_t, t[, m])``: MONAI's ``DiffusionModelUNet`` (spatial_dims=3).

    Holds what is needed to use the network: the preset name, whether the mask is an input channel, the
    exact MONAI arguments and the noise schedule it is (to be) trained with.

    Args:
        network_kwargs: ``DiffusionModelUNet`` arguments (see ``Preset.monai_kwargs``).
        mask_channel: concatenate the mask as a second input channel.
        preset: preset name, recorded for checkpoints ("custom" if not from ``PRESETS``).
        schedule: the noise schedule; default scaled-linear T = 1000 (see ``schedule.py``).
    """

    def __init__(
        self,
        network_kwargs: dict[str, Any],
        mask_channel: bool,
        preset: str = "custom",
        schedule: NoiseSchedule | None = None,
    ) -> None:
        super().__init__()
        self.preset = preset
        self.mask_channel = bool(mask_channel)
        self.network_kwargs = dict(network_kwargs)
        self.schedule = schedule if schedule is not None else NoiseSchedule()
        in_channels = 2 if self.mask_channel else 1
        self.unet = DiffusionModelUNet(spatial_dims=3, in_channels=in_channels, out_channels=1, **network_kwargs)

    @property
    def size_divisor(self) -> int:
        """Crop sizes (z, y, x) must be multiples of this (one 2x downsampling between levels)."""
        return 2 ** (len(self.network_kwargs["channels"]) - 1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise ``eps`` in ``x_t``.

        Args:
            x_t: noisy images (B, 1, z, y, x); z, y, x multiples of ``size_divisor``.
            t: (B,) integer timesteps in [0, T-1].
            mask: (B, 1, z, y, x), boolean or {0, 1}; required if ``mask_channel``, ignored otherwise.
        Returns:
            predicted noise (B, 1, z, y, x).
        """
        if self.mask_channel:
            if mask is None:
                raise ValueError(f"preset {self.preset!r} was built with mask_channel=True: pass the mask")
            x_t = torch.cat([x_t, mask.to(x_t.dtype)], dim=1)
        return self.unet(x_t, t)

    def describe(self) -> dict[str, Any]:
        """Plain-dict description recorded in checkpoint metadata."""
        return {
            "preset": self.preset,
            "mask_channel": self.mask_channel,
            "network_kwargs": dict(self.network_kwargs),
            "schedule": self.schedule.to_metadata(),
        }


def build_model(
    preset: str,
    mask_channel: bool | None = None,
    schedule: NoiseSchedule | None = None,
    device: torch.device | str | None = None,
) -> MaskedDiffusionUNet:
    """Build the noise predictor of a preset ("paper", "fast", "tiny"); weights randomly initialised.

    Args:
        preset: a key of ``PRESETS``.
        mask_channel: give the mask as a second input channel; None = the preset's default
            (paper: False, fast: True, tiny: True).
        schedule: noise schedule to attach; None = default scaled-linear, T = 1000.
        device: where to allocate the weights; ``torch.device("meta")`` builds the 862 M-parameter ``paper``
            network without allocating memory (for counting parameters or FLOPs).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown DDPM preset {preset!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    use_mask = p.mask_channel if mask_channel is None else bool(mask_channel)
    if device is None:
        return MaskedDiffusionUNet(p.monai_kwargs(), use_mask, preset=preset, schedule=schedule)
    with torch.device(device):
        return MaskedDiffusionUNet(p.monai_kwargs(), use_mask, preset=preset, schedule=schedule)


def count_parameters(preset: str, mask_channel: bool = False) -> int:
    """Number of trainable parameters of a preset, counted on the meta device (no memory, milliseconds)."""
    model = build_model(preset, mask_channel=mask_channel, device="meta")
    return sum(p.numel() for p in model.parameters())


def preset_table() -> list[dict[str, Any]]:
    """Presets as plain dicts (for printing/logging)."""
    return [{"name": name, **asdict(p)} for name, p in PRESETS.items()]
