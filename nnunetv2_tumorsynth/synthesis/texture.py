"""Texture backends: fill a tumour mask inside an image crop with tumour-like intensities.

Both backends share one interface, ``fill(images, masks, organs, rng, spacing, draws) -> images``, on crops of
shape (B, 1, z, y, x) in nnU-Net's preprocessed axis order and intensity normalisation; ``organs`` is the
organ's parenchyma label (existing tumours excluded), ``spacing`` mm per axis, ``draws`` per crop the tumour's
calibrated parameters (``synthesis.statistics.TumourDraw``) or None. Voxels outside each mask are returned
bit-identical.

- ``DDPMTexture``: the bundled diffusion model inpaints the mask (Quinton et al. 2026, eq. 1-2).
- ``HeuristicTexture``: Hu et al.'s (2023) hand-made texture (Gaussian noise scaled up and blurred, blurred
  edge, optional brighter capsule), no model needed. Mass effect (Hu et al. 2023, eq. 5) moves voxels
  outside the mask and is applied by the bank before the texture (``mass_effect.MassEffect``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from nnunetv2_tumorsynth.geometry import check_spacing
from nnunetv2_tumorsynth.synthesis.features import parenchyma_mean_sd, parenchyma_ring
from nnunetv2_tumorsynth.synthesis.statistics import RING_MM, TumourDraw, large_scale_component
from nnunetv2_tumorsynth.synthesis.vessels import vessel_mask_from_intensity

BRIGHTNESS = ("model", "data")  # DDPMTexture.brightness
MAX_SHIFTED_OUT = 0.01  # brightness "data": share of a fill's voxels the shift may push out of the recorded range
SMOOTHING_ROUNDS = 5  # brightness "data": most rounds that scale a fill's large-scale variation down to the draw's
# brightness "data": the factor that brings a fill's spread to the draw's stays within; chosen on the training tumours
# (tumorsynth_generate --replace-real, docs/benchmarks.md "The grain with the edge blend"): 1.5 left them fainter
GRAIN_SCALE = (0.5, 3.0)


class DDPMTexture:
    """Diffusion inpainting with a checkpoint from ``tumorsynth_pretrain_ddpm``.

    ``brightness`` "data" (default) shifts each sampled fill inside the mask, blended over the drawn edge, so that its
    mean sits at the calibrated draw's contrast to its parenchyma ring (``synthesis.statistics``): the model gives
    the grain, the fold's tumours the brightness, as for the heuristic texture. A model trained on a handful of
    darker and brighter tumours fills new places with about their average (docs/ddpm.md, "Brightness"). "model",
    and fills without a draw (label-free), keep the brightness as sampled.

    ``strength`` 1 samples each fill from noise (Quinton et al. 2026, eq. 2). Below 1 the mask is first filled with
    the heuristic texture drawn from the fold's tumours (``HeuristicTexture`` with the calibrated ``draws``), which
    is noised to timestep ``strength T`` and denoised by the model (SDEdit, Meng et al. 2022): the tumour keeps the
    drawn brightness and gets the model's texture. For a model whose fills at new places are too faint (trained on a
    handful of bright and dark tumours, it fills them with their average); not the default (docs/ddpm.md, "Strength").
    """

    def __init__(self, checkpoint: str, steps: int = 50, sampler: str = "ddim", device: str = "cpu",
                 batch_size: int = 4, strength: float = 1.0, brightness: str = "data"):
        from nnunetv2_tumorsynth.ddpm import load_checkpoint

        if brightness not in BRIGHTNESS:
            raise ValueError(f"setting 'ddpm_brightness' must be one of {list(BRIGHTNESS)}, got {brightness!r}")
        self.model, self.metadata = load_checkpoint(checkpoint, map_location=device)
        self.model.to(device)
        self.checkpoint = checkpoint
        self.steps, self.sampler, self.device, self.batch_size = steps, sampler, device, batch_size
        self.strength, self.brightness = strength, brightness

    @property
    def crop_size(self) -> tuple[int, int, int]:
        """Context crop (voxels, z y x) the model was trained on."""
        return tuple(int(v) for v in self.metadata["crop_size_vox"])

    def fill(self, images: np.ndarray, masks: np.ndarray, organs: np.ndarray, rng: np.random.Generator,
             spacing: Sequence[float] = (1.0, 1.0, 1.0),
             draws: Sequence[TumourDraw | None] | None = None) -> np.ndarray:
        """Inpaint each mask of (B, 1, z, y, x) crops. With ``strength`` < 1 the start inside each mask is the
        heuristic tumour of its ``draws`` entry (Hu et al. 2023's priors where it is None); arguments as
        ``HeuristicTexture.fill``."""
        from nnunetv2_tumorsynth.ddpm import inpaint

        if self.strength < 1.0:
            images = HeuristicTexture().fill(images, masks, organs, rng, spacing, draws)
        seed = int(rng.integers(2**31))
        filled = inpaint(self.model, images, masks, steps=self.steps, sampler=self.sampler, seed=seed,
                         batch_size=self.batch_size, device=self.device, clip_x0=self.x0_range or True,
                         strength=self.strength)
        if self.brightness == "data" and draws is not None:
            spacing = np.asarray(check_spacing(spacing), float)
            for b, draw in enumerate(draws):
                if draw is not None:
                    filled[b, 0] = self._match_drawn_brightness(filled[b, 0], masks[b, 0].astype(bool),
                                                                organs[b, 0].astype(bool), spacing, draw)
        return filled

    def _match_drawn_brightness(self, image: np.ndarray, mask: np.ndarray, organ: np.ndarray, spacing: np.ndarray,
                                draw: TumourDraw) -> np.ndarray:
        """Bring the fill's intensity statistics to the draw's, in ring SDs of its parenchyma ring:

        1. its large-scale variation (``statistics.large_scale_component``) is scaled down to at most
           ``draw.smooth_sd`` ring SDs, the real drawn tumour's: a model that learnt a handful of tumours can fill a
           larger mask with a dark blob on one side and parenchyma grey on the other, where the fold's tumours are
           uniform; a fold of blotchy tumours keeps blotchy fills;
        2. its spread around its mean is scaled so that the finished fill, step 3's blended shift included
           (``grain_scale``), has ``draw.internal_sd`` ring SDs (a factor within ``GRAIN_SCALE``; a larger spread
           only as far as step 3 then keeps ``MAX_SHIFTED_OUT`` inside the recorded range): a small model's grain
           comes out fainter than the tumours it learnt;
        3. a constant, blended over ``draw.edge_blur_mm`` (``edge_weight``), is added so that the mean inside the
           mask is ``draw.contrast_sd`` ring SDs from the parenchyma ring's mean. The shift stops where more than
           ``MAX_SHIFTED_OUT`` of the fill's voxels would leave the recorded range (``x0_range``; the rest is
           clamped to it): a tumour drawn darker than its place allows comes out as dark as the training tumours
           get, not as a block of voxels at the bound.

        The pattern of the grain stays the model's; its amounts are the fold's tumours' (docs/ddpm.md,
        "Brightness")."""
        organ_mean, organ_sd = ring_statistics(image, mask, organ, spacing)
        weight = edge_weight(mask, draw.edge_blur_mm, spacing)[mask]
        image = image.copy()
        for _ in range(SMOOTHING_ROUNDS):  # smoothing is no projection: removing a share of the smoothed
            smooth = large_scale_component(image, mask, spacing)  # fill leaves some of it; a few rounds converge
            excess = 1.0 - draw.smooth_sd * organ_sd / max(float(smooth.std()), 1e-9)
            if not excess > 0.05:  # also False for a NaN smooth_sd (statistics written before it was measured)
                break
            image[mask] -= (excess * smooth).astype(image.dtype)
        values = image[mask].astype(np.float64)
        target_mean = organ_mean + draw.contrast_sd * organ_sd
        shift = (target_mean - values.mean()) / weight.mean()  # scaling around the mean leaves the mean as it is
        wanted = grain_scale(values, weight, shift, draw.internal_sd * organ_sd)
        for scale in np.linspace(wanted, 1.0, 5) if wanted > 1.0 else [wanted]:  # wider only while the range allows
            scaled = values.mean() + scale * (values - values.mean())
            if self._share_out_of_range(scaled + shift * weight) <= MAX_SHIFTED_OUT:
                break
        filled = scaled + self._limited_shift(scaled, weight, shift) * weight
        image[mask] = (filled if self.x0_range is None else np.clip(filled, *self.x0_range)).astype(image.dtype)
        return image

    def _share_out_of_range(self, values: np.ndarray) -> float:
        """Share of ``values`` outside the recorded range (0 without one)."""
        if self.x0_range is None:
            return 0.0
        return float(np.mean((values < self.x0_range[0]) | (values > self.x0_range[1])))

    def _limited_shift(self, values: np.ndarray, weight: np.ndarray, shift: float) -> float:
        """``shift`` (times ``weight`` per voxel), reduced so that at most ``MAX_SHIFTED_OUT`` of ``values`` leave
        the recorded range."""
        if self.x0_range is None:
            return shift
        low, high = self.x0_range
        weight = np.maximum(weight, 1e-6)
        if shift < 0:  # voxel v leaves the range below when shift < (low - value_v) / w_v
            return min(0.0, max(shift, float(np.quantile((low - values) / weight, 1.0 - MAX_SHIFTED_OUT))))
        return max(0.0, min(shift, float(np.quantile((high - values) / weight, MAX_SHIFTED_OUT))))  # ... above

    @property
    def x0_range(self) -> tuple[float, float] | None:
        """The range the sampler clamps the predicted clean image to: the training tumours' and their parenchyma's
        intensities (0.5 to 99.5 %), as the checkpoint records them; None for checkpoints that do not (the crop's
        own range widened by 50 % is used then)."""
        bounds = self.metadata.get("intensity_range", {}).get("clamp")
        return None if bounds is None else (float(bounds[0]), float(bounds[1]))


def grain_scale(values: np.ndarray, weight: np.ndarray, shift: float, target_sd: float) -> float:
    """The factor ``a`` (within ``GRAIN_SCALE``) for which ``mean + a (values - mean) + shift weight`` has the SD
    ``target_sd``: the shift blended over the edge adds spread of its own, and takes some away where the fill's own
    pattern runs against it (a fill dark in the middle and grey at its rim, shifted brighter, flattens), so the
    factor is solved with it: a^2 var(v) + 2 a shift cov(v, w) + shift^2 var(w) = target_sd^2. When the blend alone
    is wider than the target, the smallest factor."""
    deviation = values - values.mean()
    variance, covariance = float(np.mean(deviation**2)), float(np.mean(deviation * (weight - weight.mean())))
    constant = shift**2 * float(weight.var()) - target_sd**2
    discriminant = (shift * covariance) ** 2 - variance * constant
    if variance <= 1e-12 or discriminant < 0:
        return GRAIN_SCALE[0]
    return float(np.clip((-shift * covariance + np.sqrt(discriminant)) / variance, *GRAIN_SCALE))


def edge_weight(mask: np.ndarray, blur_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Blend weight of a tumour's fill: the mask blurred by a Gaussian of ``blur_mm`` (sigma, mm; per axis in
    voxels with ``spacing``), zero outside the mask so the outside stays untouched (Hu et al. 2023, eq. 4)."""
    return ndimage.gaussian_filter(mask.astype(np.float32), blur_mm / spacing) * mask


def parenchyma_statistics(image: np.ndarray, mask: np.ndarray, organ: np.ndarray,
                          spacing: np.ndarray) -> tuple[float, float]:
    """Mean and SD of the parenchyma around the tumour: organ voxels that are neither vessel nor mask.

    Falls back to the organ with vessels (too few pure parenchyma voxels), then to the mask itself."""
    vessels = vessel_mask_from_intensity(image, organ, spacing) if organ.sum() > 20 else np.zeros_like(organ)
    for reference in (organ & ~vessels & ~mask, organ & ~mask, mask):
        if reference.sum() > 20:
            values = image[reference]
            return float(values.mean()), float(values.std()) + 1e-3
    values = image[mask]
    return float(values.mean()), float(values.std()) + 1e-3


def ring_statistics(image: np.ndarray, mask: np.ndarray, organ: np.ndarray,
                    spacing: np.ndarray) -> tuple[float, float]:
    """Mean and SD of the parenchyma ring, organ voxels within ``RING_MM`` of the mask, without outliers (as the
    fold's tumours are measured, ``features.parenchyma_mean_sd``); the whole parenchyma when the ring has too few
    voxels."""
    ring = parenchyma_ring(mask, organ, spacing, RING_MM)
    if ring.sum() > 20:
        mean, sd = parenchyma_mean_sd(image[ring])
        return mean, sd + 1e-3
    return parenchyma_statistics(image, mask, organ, spacing)


POLARITIES = {"darker": [-1.0], "brighter": [1.0], "either": [-1.0, 1.0]}  # signs of the tumour contrast
TEXTURES = ("ddpm", "heuristic")


@dataclass(frozen=True)
class HeuristicTexture:
    """Hu et al. 2023, section 3.1 texture, adapted to normalised MR intensities; lengths in mm.

    Intensities are in units of the parenchyma's own standard deviation, since MR has no fixed scale.
    The parenchyma is the organ label of the context crop (``organs``: existing tumours are not in it)
    minus bright vessels (``placement.vessel_mask_from_intensity``) minus the new tumour's mask. The
    tumour mean is the parenchyma mean plus or minus ``contrast_sd`` parenchyma SDs; ``polarity`` says
    which sign: "either" (default) with equal probability, as MR liver tumours can be either; "darker" as
    Hu et al. 2023 draw it, mu_t ~ U(30, mu_p - 10) HU, 0.5 to 4 SDs of CT liver parenchyma (about 20 HU),
    and as HCC washes out in the portal venous and delayed phases; "brighter" for arterial-phase
    hyperenhancement. What each polarity did in the benefit benchmark: docs/benchmarks.md.

    Grain, texture blur, edge blur and the capsule are in mm and converted per axis with the crop's
    spacing (Hu et al. 2023, Table 1, give them in voxels of CT of about 1 mm, so their voxel values are
    taken as mm here).
    """

    contrast_sd: tuple[float, float] = (1.0, 4.0)  # |tumour mean - parenchyma mean| / parenchyma SD, uniform
    polarity: str = "either"  # sign of the tumour mean against the parenchyma: "darker" | "brighter" | "either"
    grain_mm: tuple[float, float] = (1.1, 1.5)  # eta: size of one noise cell (Hu et al. 2023, Table 1), >= 1 voxel
    texture_blur_mm: float = 0.6  # sigma_b
    edge_blur_mm: tuple[float, float] = (0.6, 1.2)  # sigma_c
    capsule_probability: float = 0.5
    capsule_sd: float = 3.0  # capsule brightening d, parenchyma SDs (Hu et al. 2023: d = 120 HU)
    capsule_width_mm: float = 2.0  # the rim of the mask that is brightened (Hu et al. 2023's band (lb, ub))
    capsule_blur_mm: float = 0.8  # sigma_d
    crop_size: tuple[int, int, int] | None = None  # no fixed context needed

    def __post_init__(self):
        if self.polarity not in POLARITIES:
            raise ValueError(f"heuristic texture polarity (setting heuristic_polarity) must be one of "
                             f"{list(POLARITIES)}, got {self.polarity!r}")

    def fill(self, images: np.ndarray, masks: np.ndarray, organs: np.ndarray, rng: np.random.Generator,
             spacing: Sequence[float] = (1.0, 1.0, 1.0),
             draws: Sequence[TumourDraw | None] | None = None) -> np.ndarray:
        """Fill each mask of (B, 1, z, y, x) crops; ``organs``: the parenchyma label (no tumours) per crop;
        ``spacing``: mm per axis (z, y, x); ``draws``: per crop, the tumour's parameters calibrated to the fold's
        tumours (``synthesis.statistics``), or None for Hu et al. 2023's priors. Voxels outside each mask are
        returned bit-identical."""
        spacing = np.asarray(check_spacing(spacing), float)
        out = images.copy()
        for b in range(images.shape[0]):
            draw = None if draws is None else draws[b]
            fill = self._fill_one if draw is None else self._fill_calibrated
            args = (images[b, 0], masks[b, 0].astype(bool), organs[b, 0].astype(bool), rng, spacing)
            out[b, 0] = fill(*args) if draw is None else fill(*args, draw)
        return out

    def _texture(self, image: np.ndarray, mean: float, sd: float, grain_mm: float, rng: np.random.Generator,
                 spacing: np.ndarray) -> np.ndarray:
        """Gaussian noise N(mean, sd) on a grid of grain_mm cells, scaled up (cubic) and blurred (Hu et al. 2023,
        eq. 3)."""
        coarse = [max(2, min(n, int(np.ceil(n * s / grain_mm)))) for n, s in zip(image.shape, spacing)]
        noise = rng.normal(mean, sd, coarse).astype(np.float32)
        texture = ndimage.zoom(noise, [n / c for n, c in zip(image.shape, coarse)], order=3)[
            : image.shape[0], : image.shape[1], : image.shape[2]]
        return ndimage.gaussian_filter(texture, self.texture_blur_mm / spacing)

    def _fill_calibrated(self, image: np.ndarray, mask: np.ndarray, organ: np.ndarray, rng: np.random.Generator,
                         spacing: np.ndarray, draw: TumourDraw) -> np.ndarray:
        """The tumour's mean at ``draw.contrast_sd`` ring SDs from its parenchyma ring, the SD inside the mask at
        ``draw.internal_sd`` ring SDs, a blurred edge of ``draw.edge_blur_mm``; no capsule (the fold's tumours
        set the look; see ``synthesis.statistics``)."""
        organ_mean, organ_sd = ring_statistics(image, mask, organ, spacing)
        texture = self._texture(image, 0.0, 1.0, rng.uniform(*self.grain_mm), rng, spacing)
        inside = texture[mask]
        texture = (texture - inside.mean()) / (inside.std() + 1e-6) * draw.internal_sd * organ_sd
        texture += organ_mean + draw.contrast_sd * organ_sd
        weight = edge_weight(mask, draw.edge_blur_mm, spacing)
        filled = (1.0 - weight) * image + weight * texture
        return np.where(mask, filled.astype(image.dtype), image)

    def _fill_one(self, image: np.ndarray, mask: np.ndarray, organ: np.ndarray, rng: np.random.Generator,
                  spacing: np.ndarray) -> np.ndarray:
        # random parameters, drawn in one place
        organ_mean, organ_sd = parenchyma_statistics(image, mask, organ, spacing)
        contrast = rng.choice(POLARITIES[self.polarity]) * rng.uniform(*self.contrast_sd)
        grain_mm = rng.uniform(*self.grain_mm)
        edge_sigma_mm = rng.uniform(*self.edge_blur_mm)
        capsule = rng.uniform() < self.capsule_probability

        # texture: Gaussian noise N(mu_t, sigma_p) on a grid of grain_mm cells, scaled up (cubic) and blurred
        texture = self._texture(image, organ_mean + contrast * organ_sd, organ_sd, grain_mm, rng, spacing)

        weight = edge_weight(mask, edge_sigma_mm, spacing)
        filled = (1.0 - weight) * image + weight * texture
        if capsule:  # Hu et al. 2023, eq. 6-8: brighten the tumour's rim, blurred, by d
            depth_mm = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
            rim = ((depth_mm > 0) & (depth_mm <= self.capsule_width_mm)).astype(np.float32)
            filled = filled + self.capsule_sd * organ_sd * ndimage.gaussian_filter(rim, self.capsule_blur_mm / spacing)
        return np.where(mask, filled.astype(image.dtype), image)


def make_texture(texture: str, *, heuristic_polarity: str = "either", checkpoint: str | None = None,
                 ddpm_steps: int = 50, ddpm_sampler: str = "ddim", device: str = "cpu", batch_size: int = 4,
                 ddpm_strength: float = 1.0, ddpm_brightness: str = "data"):
    """The one texture factory: "heuristic" (Hu et al. 2023) or "ddpm" (needs ``checkpoint``)."""
    if texture == "heuristic":
        return HeuristicTexture(polarity=heuristic_polarity)
    if texture != "ddpm":
        raise ValueError(f"unknown texture {texture!r}; choose one of {list(TEXTURES)}")
    if checkpoint is None:
        raise ValueError("the ddpm texture needs a diffusion checkpoint (tumorsynth_pretrain_ddpm)")
    return DDPMTexture(checkpoint, steps=ddpm_steps, sampler=ddpm_sampler, device=device, batch_size=batch_size,
                       strength=ddpm_strength, brightness=ddpm_brightness)
