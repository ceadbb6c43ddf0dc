"""Synthesise one case's tumours: plan (shape + placement) and fill (texture) -> ``Entry``.

The one code path of the synthesis bank (on-the-fly training) and of offline generation, so both make the
same tumours. Arrays in, arrays out: ``data`` (C, z, y, x) and ``seg`` (1, z, y, x) in nnU-Net's
preprocessed axis order, spacing in mm in that order; no nnU-Net import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from nnunetv2_tumorsynth.synthesis.entry import Entry, MassEffectRegion
from nnunetv2_tumorsynth.synthesis.mass_effect import MassEffect
from nnunetv2_tumorsynth.synthesis.placement import SMALLER_SIZES, place_random_tumour
from nnunetv2_tumorsynth.synthesis.shape import DEFORMATIONS, SIZES, equivalent_radius_mm
from nnunetv2_tumorsynth.synthesis.statistics import FoldStatistics, TumourDraw
from nnunetv2_tumorsynth.synthesis.texture import BRIGHTNESS, POLARITIES, TEXTURES
from nnunetv2_tumorsynth.synthesis.vessels import vessel_mask_from_intensity

HEURISTIC_CONTEXT_VOXELS = 4  # margin around the tumour box given to the heuristic texture (and its vessel search)
MAX_DRAWS = 20  # draws of a tumour before a size too large for the diffusion model's crop is an error
SAMPLERS = ("ddim", "ddpm", "dpm++2m")  # ddpm.samplers.SAMPLERS (without importing torch)


@dataclass(kw_only=True)
class TumourSettings:
    """How one synthetic tumour is drawn, placed and filled (shared by the trainers and ``tumorsynth_generate``).

    deformation / size: mask shape, see ``synthesis.shape.random_tumour_mask``; size "data" (default) draws the
        size, and for the heuristic texture the contrast, grain and edge, from the fold's annotated tumours
        (``synthesis.statistics``), or from Hu et al. 2023's priors (size "mix") when the fold has too few.
    texture: "ddpm" (the diffusion model of ``tumorsynth_pretrain_ddpm``) or "heuristic" (Hu et al. 2023).
    heuristic_polarity: heuristic texture only: "either", "darker" or "brighter" (``texture.HeuristicTexture``).
    ddpm_steps / ddpm_sampler: sampling of the diffusion model; on the fly DPM-Solver++(2M) with 5 steps, the
        fewest within 5 % of DDIM 50's masked error and as faithful per lesion (docs/benchmarks.md, few-step sampling).
    ddpm_strength: 1 (default) samples each diffusion fill from noise (the paper's); below 1 the fill starts from the
        calibrated heuristic tumour noised to that share of the schedule (SDEdit; ``texture.DDPMTexture``). 0.7 made
        too-faint fills dark enough on a phantom but cost the benefit on real MR (docs/ddpm.md, "Strength").
    ddpm_brightness: "data" (default) shifts each diffusion fill to the calibrated draw's contrast to its parenchyma
        ring, keeping the model's grain; "model" keeps the brightness as sampled (``texture.DDPMTexture``;
        docs/ddpm.md, "Brightness").
    margin_mm: minimum distance between a synthetic tumour and existing tumours.
    min_inside_fraction: at least this fraction of a tumour's voxels lies inside the organ; the rest is clipped
        away (``placement.place_random_tumour``). 1.0 keeps every tumour wholly inside the organ; the default 0.8
        is measured in docs/benchmarks.md (placement on the real MR).
    avoid_vessels: keep tumours away from bright vessel-like structures (``vessels.vessel_mask_from_intensity``);
        off by default (measured in docs/benchmarks.md); turn it on for contrast-enhanced CT or MR.
    mass_effect: I of Hu et al. 2023, eq. 5 (0 = off, their value 30), see ``mass_effect.MassEffect``.
    organ_label / tumour_label: names or values; None = found from dataset.json.
    seed: base seed of the random generator (None = random).
    """

    deformation: str | None = "simplex"
    size: str = "data"
    texture: str = "ddpm"
    heuristic_polarity: str = "either"
    ddpm_steps: int = 5
    ddpm_sampler: str = "dpm++2m"
    ddpm_strength: float = 1.0
    ddpm_brightness: str = "data"
    margin_mm: float = 5.0
    min_inside_fraction: float = 0.8
    avoid_vessels: bool = False
    mass_effect: float = 0.0
    organ_label: str | int | None = None
    tumour_label: str | int | None = None
    seed: int | None = None

    def check(self) -> None:
        """Raise ValueError naming the first setting with a value outside its choices or range."""
        choices = {"deformation": DEFORMATIONS, "size": SIZES, "texture": TEXTURES,
                   "heuristic_polarity": tuple(POLARITIES), "ddpm_sampler": SAMPLERS,
                   "ddpm_brightness": BRIGHTNESS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"setting {name!r} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 < self.min_inside_fraction <= 1.0:
            raise ValueError(f"setting 'min_inside_fraction' must be in (0, 1], got {self.min_inside_fraction!r}")
        if self.ddpm_steps < 1:
            raise ValueError(f"setting 'ddpm_steps' must be at least 1, got {self.ddpm_steps!r}")
        if not 0.0 < self.ddpm_strength <= 1.0:
            raise ValueError(f"setting 'ddpm_strength' must be in (0, 1], got {self.ddpm_strength!r}")


class NoRoom(Exception):
    """The case's organ has no room for a tumour (or no organ voxel); the message says which."""


@dataclass
class PlannedTumour:
    """A planned tumour, before filling: the case's arrays, the tumour box and how it was drawn."""

    case: str
    image: np.ndarray  # (z, y, x)
    labels: np.ndarray  # (z, y, x)
    organ: np.ndarray  # organ or tumour label: where tumours lie
    corner: np.ndarray
    mask: np.ndarray
    size: str | None = None
    size_requested: str | None = None
    requested_radius_mm: float | None = None
    draw: TumourDraw | None = None  # calibrated parameters (size "data" with fold statistics)
    box: list[list[int]] = field(default_factory=list)


class TumourSynthesiser:
    """Draws, places and fills synthetic tumours in one case's arrays with ``rng``; the texture runs batched."""

    def __init__(self, texture, settings: TumourSettings, spacing: Sequence[float], organ_label: int,
                 tumour_label: int, rng: np.random.Generator, statistics: FoldStatistics | None = None):
        self.texture, self.settings, self.rng = texture, settings, rng
        self.statistics = statistics if statistics is not None and statistics.calibrated else None
        self.spacing = tuple(float(s) for s in spacing)
        self.organ_label, self.tumour_label = organ_label, tumour_label
        self.mass_effect = MassEffect(settings.mass_effect) if settings.mass_effect > 0 else None

    def plan(self, case: str, data, seg) -> PlannedTumour:
        """Draw and place one tumour (CPU work); raises ``NoRoom`` when the organ has no room.

        With a diffusion texture the tumour must fit the model's context crop: a larger draw (calibrated sizes
        follow the fold's tumours, jittered) is drawn again, up to ``MAX_DRAWS`` times, then it is an error."""
        labels = np.asarray(seg[0])
        if not (labels == self.organ_label).any():
            raise NoRoom(f"case {case} has no voxels of organ label {self.organ_label}")
        organ = (labels == self.organ_label) | (labels == self.tumour_label)  # tumours lie inside the organ
        image = np.asarray(data[0])
        forbidden = labels == self.tumour_label
        if self.settings.avoid_vessels:
            forbidden |= vessel_mask_from_intensity(image, organ, self.spacing)
        for _ in range(MAX_DRAWS):  # a tumour larger than the diffusion model's context crop is drawn again
            size, draw, overrides = self.settings.size, None, None
            if size == "data" and self.statistics is not None:
                draw = self.statistics.draw(self.rng)
                size, overrides = draw.preset, {"semi_axes_mm": draw.semi_axes_mm}
                if self.settings.deformation is not None:
                    overrides["amplitude_mm"] = draw.amplitude_mm
            elif size == "data":  # no fold statistics (label-free): Hu et al. 2023's sizes
                size = "mix"
            placed = place_random_tumour(organ, forbidden, self.spacing, self.rng, size=size,
                                         deformation=self.settings.deformation,
                                         min_inside_fraction=self.settings.min_inside_fraction,
                                         margin_mm=self.settings.margin_mm, shape_overrides=overrides)
            if placed is None:
                raise NoRoom(f"case {case}: organ label {self.organ_label} too small for even a "
                             f"'{SMALLER_SIZES[-1]}' tumour")
            job = PlannedTumour(case, image, labels, organ, placed.corner, placed.mask, placed.size,
                                self.settings.size, placed.requested_radius_mm, draw if placed.size == size else None)
            if self.fits_context(job):
                return job
        self.check_fits_context(job)  # MAX_DRAWS draws too large for the context crop: say so
        return job

    def synthesise(self, case: str, data, seg) -> Entry:
        """One new tumour in one case, planned and filled; raises ``NoRoom``."""
        return self.fill([self.plan(case, data, seg)])[0]

    def plan_masks(self, case: str, data, seg, boxes: list[tuple[np.ndarray, np.ndarray]]) -> list[PlannedTumour]:
        """Jobs for given masks (e.g. real tumours to replace), no placement and no fill, so that the masks of
        several cases can be filled in one texture call.

        ``boxes``: (corner, bool mask box) pairs, corner the voxel index of the box's first corner in the case.
        With size "data" and fold statistics, the heuristic texture draws its contrast, internal SD and edge from
        them as for a placed tumour (the mask sets the size).
        """
        labels = np.asarray(seg[0])
        organ = (labels == self.organ_label) | (labels == self.tumour_label)
        calibrated = self.settings.size == "data" and self.statistics is not None
        jobs = [PlannedTumour(case, np.asarray(data[0]), labels, organ, np.asarray(corner), np.asarray(mask, bool),
                     draw=self.statistics.draw(self.rng) if calibrated else None)
                for corner, mask in boxes]
        for job in jobs:
            self.check_fits_context(job)
        return jobs

    def fits_context(self, job: PlannedTumour) -> bool:
        """The tumour's box fits the texture's fixed context crop (always true without one)."""
        crop = self.texture.crop_size
        return crop is None or all(s <= c for s, c in zip(job.mask.shape, crop))

    def check_fits_context(self, job: PlannedTumour) -> None:
        """Raise ValueError when the tumour's box is larger than the texture's fixed context crop."""
        crop = self.texture.crop_size
        if not self.fits_context(job):
            raise ValueError(
                f"case {job.case}: tumour box {tuple(job.mask.shape)} voxels is larger than the diffusion model's "
                f"context crop {tuple(crop)}; use smaller tumours or a model trained with a larger --crop")

    def _context_box(self, job: PlannedTumour) -> list[list[int]]:
        """Crop box (half-open, case voxels) around the tumour: the model's crop size, or a small margin
        (with mass effect: wide enough for its whole ball)."""
        corner, size = job.corner, np.array(job.mask.shape)
        crop = self.texture.crop_size
        if crop is None:
            margin = np.full(3, HEURISTIC_CONTEXT_VOXELS)
            if self.mass_effect is not None:
                reach = np.ceil(self.mass_effect.reach_mm(job.mask, self.spacing) / np.array(self.spacing))
                margin = np.maximum(margin, reach.astype(int) - size // 2 + 2)
            return [[int(c) - int(m), int(c + s) + int(m)] for c, s, m in zip(corner, size, margin)]
        start = corner + size // 2 - np.array(crop) // 2
        return [[int(s), int(s + c)] for s, c in zip(start, crop)]

    def fill(self, jobs: list[PlannedTumour]) -> list[Entry]:
        """Run the texture on every job's context crop (batched when the texture has a fixed crop size).

        With mass effect the crop is warped first (image and labels) and the entry gets the region that moved.
        """
        from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd  # imports torch: only when used

        crops, masks, parenchymas, originals, regions = [], [], [], [], []
        for job in jobs:
            job.box = self._context_box(job)
            full_mask = np.zeros(job.organ.shape, bool)
            full_mask[tuple(slice(c, c + s) for c, s in zip(job.corner, job.mask.shape))] = job.mask
            crop = crop_and_pad_nd(job.image, job.box, 0.0).astype(np.float32)
            mask = crop_and_pad_nd(full_mask, job.box, False)
            labels = crop_and_pad_nd(job.labels, job.box, 0)
            originals.append(crop)
            region = None
            if self.mass_effect is not None:
                in_case = crop_and_pad_nd(np.ones(job.organ.shape, bool), job.box, False)
                crop, labels, moved = self.mass_effect.warp(crop, labels, mask, self.spacing)
                region = MassEffectRegion(np.array([b[0] for b in job.box]), (moved | mask) & in_case, None,
                                          np.where(mask, self.tumour_label, labels).astype(labels.dtype))
            regions.append(region)
            crops.append(crop[None])
            masks.append(mask[None])
            parenchymas.append((labels == self.organ_label)[None])  # organ label only: existing tumours excluded
        if self.texture.crop_size is not None:
            filled = list(self.texture.fill(np.stack(crops), np.stack(masks), np.stack(parenchymas), self.rng,
                                            spacing=self.spacing, draws=[j.draw for j in jobs]))
        else:
            filled = [self.texture.fill(c[None], m[None], o[None], self.rng, spacing=self.spacing, draws=[j.draw])[0]
                      for c, m, o, j in zip(crops, masks, parenchymas, jobs)]
        return [self._entry(*args) for args in zip(jobs, filled, masks, originals, regions)]

    def _entry(self, job: PlannedTumour, crop: np.ndarray, mask: np.ndarray, before: np.ndarray,
               region: MassEffectRegion | None) -> Entry:
        offset = [int(c) - b[0] for c, b in zip(job.corner, job.box)]
        in_crop = tuple(slice(o, o + s) for o, s in zip(offset, job.mask.shape))
        assert np.array_equal(np.asarray(mask[0][in_crop]), job.mask)
        if region is not None:
            region.values = np.where(region.mask, crop[0], before).astype(np.float32)
        z, y = (o + s // 2 for o, s in zip(offset[:2], job.mask.shape[:2]))
        entry = Entry(
            case=job.case, corner=np.asarray(job.corner), mask=job.mask,
            values=np.asarray(crop[0][in_crop], np.float32),
            before=np.asarray(job.image[tuple(slice(int(c), int(c) + s) for c, s in zip(job.corner, job.mask.shape))],
                              np.float32),
            volume_ml=float(job.mask.sum() * np.prod(self.spacing) / 1000.0),
            size=job.size, size_requested=job.size_requested,
            radius_mm=equivalent_radius_mm(job.mask, self.spacing) if job.size is not None else None,
            requested_radius_mm=job.requested_radius_mm, region=region,
            preview={"axial_before": before[z], "axial_after": crop[0][z], "axial_mask": mask[0][z],
                     "coronal_before": before[:, y], "coronal_after": crop[0][:, y], "coronal_mask": mask[0][:, y]})
        return entry
