"""Bundled 3D diffusion model for tumour inpainting (Quinton et al. 2026, section 2.2.2).

- ``network``: presets ("paper", "fast", "tiny") of MONAI's ``DiffusionModelUNet`` and ``build_model``.
- ``schedule``: scaled-linear betas (T = 1000), the masked forward process (eq. 1), the masked loss (eq. 3)
  and ``training_step``.
- ``samplers``: DDPM (eq. 2) and DDIM inpainting; ``inpaint`` is the entry point.
- ``checkpoint``: atomic ``save_checkpoint``, ``load_checkpoint``, metadata and ``check_compatible``.

Arrays are (C, z, y, x) or (B, C, z, y, x) in nnU-Net's preprocessed axis order; masks are True where the
tumour is (the region that is noised and inpainted); spacing and sizes in mm at the interfaces.
"""

from .checkpoint import (
    REQUIRED_METADATA_KEYS,
    check_compatible,
    load_checkpoint,
    make_metadata,
    read_checkpoint,
    save_checkpoint,
)
from .network import PARAMETER_COUNTS, PRESETS, MaskedDiffusionUNet, Preset, build_model, count_parameters
from .samplers import crop_generators, ddim_inpaint, ddpm_inpaint, inpaint
from .schedule import (
    NoiseSchedule,
    masked_noise_loss,
    q_sample_masked,
    sample_timesteps,
    timestep_subsequence,
    training_step,
)

__all__ = [
    "PARAMETER_COUNTS",
    "PRESETS",
    "REQUIRED_METADATA_KEYS",
    "MaskedDiffusionUNet",
    "NoiseSchedule",
    "Preset",
    "build_model",
    "check_compatible",
    "count_parameters",
    "crop_generators",
    "ddim_inpaint",
    "ddpm_inpaint",
    "inpaint",
    "load_checkpoint",
    "make_metadata",
    "masked_noise_loss",
    "q_sample_masked",
    "read_checkpoint",
    "sample_timesteps",
    "save_checkpoint",
    "timestep_subsequence",
    "training_step",
]
