"""Texture backends: fill a tumour mask inside an image crop with tumour-like intensities.

Both backends share one interface, ``fill(images, masks, organs, rng) -> images``, on crops of shape
(B, 1, z, y, x) in nnU-Net's preprocessed axis order and intensity normalisation. Voxels outside each
mask are returned bit-identical.

- ``DDPMTexture``: the bundled diffusion model inpaints the mask (Quinton et al. 2026, eq. 1-2).
- ``HeuristicTexture``: Hu et al.'s (2023) hand-made texture (Gaussian noise scaled up and blurred, blurred
  edge, optional brighter capsule), no model needed. Mass effect (Hu et al. 2023, eq. 5) is not implemented:
  it would move voxels outside the mask, which breaks the "outside untouched" contract of the bank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


class DDPMTexture:
    """Diffusion inpainting with a checkpoint from ``tumorsynth_pretrain_ddpm``."""

    def __init__(self, checkpoint: str, steps: int = 50, sampler: str = "ddim", device: str = "cpu",
                 batch_size: int = 4):
        from nnunetv2_tumorsynth.ddpm import load_checkpoint

        self.model, self.metadata = load_checkpoint(checkpoint, map_location=device)
        self.model.to(device)
        self.checkpoint = checkpoint
        self.steps, self.sampler, self.device, self.batch_size = steps, sampler, device, batch_size

    @property
    def crop_size(self) -> tuple[int, int, int]:
        """Context crop (voxels, z y x) the model was trained on."""
        return tuple(int(v) for v in self.metadata["crop_size_vox"])

    def fill(self, images: np.ndarray, masks: np.ndarray, organs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from nnunetv2_tumorsynth.ddpm import inpaint

        seed = int(rng.integers(2**31))
        return inpaint(self.model, images, masks, steps=self.steps, sampler=self.sampler, seed=seed,
                       batch_size=self.batch_size, device=self.device)


@dataclass(frozen=True)
class HeuristicTexture:
    """Hu et al. 2023, section 3.1 texture, adapted to normalised MR intensities.

    Intensities are in units of the organ's own standard deviation, since MR has no fixed scale:
    the tumour mean is the organ mean plus ``contrast_sd`` organ SDs, darker or brighter with equal
    probability (MR liver tumours can be either). Sizes are in voxels of the crop.
    """

    contrast_sd: tuple[float, float] = (1.5, 3.0)  # |tumour mean - organ mean| / organ SD, uniform
    scale_up: tuple[float, float] = (1.1, 1.5)  # eta: noise grain enlargement (Hu et al. 2023, Table 1)
    texture_blur: float = 0.6  # sigma_b, voxels
    edge_blur: tuple[float, float] = (0.6, 1.2)  # sigma_c, voxels
    capsule_probability: float = 0.5
    capsule_sd: float = 1.0  # capsule brightening, organ SDs (Hu et al.'s (2023) d relative to the organ)
    crop_size: tuple[int, int, int] | None = None  # no fixed context needed

    def fill(self, images: np.ndarray, masks: np.ndarray, organs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = images.copy()
        for b in range(images.shape[0]):
            out[b, 0] = self._fill_one(images[b, 0], masks[b, 0].astype(bool), organs[b, 0].astype(bool), rng)
        return out

    def _fill_one(self, image: np.ndarray, mask: np.ndarray, organ: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # random parameters, drawn in one place
        reference = image[organ & ~mask] if (organ & ~mask).sum() > 20 else image[mask]
        organ_mean, organ_sd = float(reference.mean()), float(reference.std()) + 1e-3
        contrast = rng.choice([-1.0, 1.0]) * rng.uniform(*self.contrast_sd)
        eta = rng.uniform(*self.scale_up)
        edge_sigma = rng.uniform(*self.edge_blur)
        capsule = rng.uniform() < self.capsule_probability

        # texture: Gaussian noise N(mu_t, sigma_p) on a grid eta times coarser, scaled up (cubic) and blurred
        coarse = [max(2, int(np.ceil(n / eta))) for n in image.shape]
        noise = rng.normal(organ_mean + contrast * organ_sd, organ_sd, coarse).astype(np.float32)
        texture = ndimage.zoom(noise, [n / c for n, c in zip(image.shape, coarse)], order=3)[
            : image.shape[0], : image.shape[1], : image.shape[2]]
        texture = ndimage.gaussian_filter(texture, self.texture_blur)  # Hu et al. 2023, eq. 3

        # blend weight: blurred mask, kept inside the mask so the outside is untouched (Hu et al. 2023, eq. 4)
        weight = ndimage.gaussian_filter(mask.astype(np.float32), edge_sigma) * mask
        if capsule:  # Hu et al. 2023, eq. 6-8: brighten the band where the blurred mask is in [0.4, 0.7]
            band = ((weight >= 0.4) & (weight <= 0.7)).astype(np.float32)
            texture = texture + self.capsule_sd * organ_sd * ndimage.gaussian_filter(band, 0.8)
        filled = (1.0 - weight) * image + weight * texture
        return np.where(mask, filled.astype(image.dtype), image)
