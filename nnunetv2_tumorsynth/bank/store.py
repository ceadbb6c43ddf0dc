"""The synthesis bank: synthetic tumours made once on the GPU, pasted many times by the data loaders.

Diffusion sampling is too slow for nnU-Net's CPU data-loader workers and too slow to run at every
iteration. So the trainer's process generates *entries*: for one training case, a tumour mask placed
inside the organ and the case's image values inside that mask after inpainting, in the case's own
preprocessed context. Each entry is one ``.npz`` file, written atomically, in
``<bank>/<case identifier>/``. The data-loader workers, when they load a case, overlay one of its
entries with probability p *before the patch is cropped*, so nnU-Net's augmentation treats the
synthetic tumour exactly like a real one, and they add its voxels to the case's foreground locations
so nnU-Net's foreground oversampling can pick it. Entries are reused under different augmentations
and replaced as training goes (``max_entries_per_case`` newest are kept). The trainer makes entries
either at the start of every epoch or, by default, in a background thread while training runs
(``nnunetv2_tumorsynth.bank.background``); both call ``SynthesisBank.generate``.

Arrays are in nnU-Net's preprocessed axis order: data (C, z, y, x), seg (1, z, y, x); spacing in mm
in that order. Entry corners are voxel indices of the preprocessed case.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

from nnunetv2_tumorsynth.files import atomic_path
from nnunetv2_tumorsynth.geometry import bounding_box
from nnunetv2_tumorsynth.synthesis.mass_effect import MassEffect
from nnunetv2_tumorsynth.synthesis.placement import clip_to_organ, place_tumour, vessel_mask_from_intensity
from nnunetv2_tumorsynth.synthesis.shape import equivalent_radius_mm, random_tumour_mask

SMALLER_SIZES = ("medium", "small", "tiny")  # tried in turn when a tumour of the requested size does not fit
HEURISTIC_CONTEXT_VOXELS = 4  # margin around the tumour box given to the heuristic texture (and its vessel search)


@dataclass
class SynthSettings:
    """Settings of synthetic-tumour training (trainer attributes; overridable by a JSON file).

    probability: chance that a training sample receives one synthetic tumour (the paper adds one).
    deformation / size: mask shape, see ``masks.random_tumour_mask`` ("simplex"|"elastic"|None;
        "paper"|"tiny"|"small"|"medium"|"large"|"mix").
    texture: "ddpm" (the diffusion model of ``tumorsynth_pretrain_ddpm``) or "heuristic" (Hu et al. 2023).
    heuristic_polarity: heuristic texture only: "either" (default: darker or brighter at random),
        "darker" (Hu et al. 2023; portal venous and delayed phases) or "brighter" (arterial phase); see
        ``texture.HeuristicTexture`` for what each did in the benefit benchmark.
    ddpm_steps / ddpm_sampler: sampling of the diffusion model during training.
    reuse: how many training samples one entry serves on average; sets how many entries are made
        per epoch (iterations x batch size x probability / reuse).
    max_entries_per_case: newest entries kept per case; older ones are deleted.
    margin_mm: minimum distance between a synthetic tumour and existing tumours.
    min_inside_fraction: at least this fraction of a tumour's voxels lies inside the organ; the rest,
        bulging out of the organ or out of the case where the field of view cuts the organ, is clipped
        away (``placement.place_tumour``). Default 0.8: on a real MR liver cut to 60 mm in z, 98 % of
        paper-size tumours then fit at their drawn size (23 % at 1.0, which falls back to smaller presets
        69 % of the time); median equivalent radius 25.6 mm placed for 26.3 mm drawn
        (``benchmarks/bench_placement_real.py``). 1.0 keeps every tumour wholly inside the organ.
    avoid_vessels: keep tumours away from bright vessel-like structures (Hu et al. 2023's threshold,
        ``placement.vessel_mask_from_intensity``, margin ``margin_mm``). Default False: on the real MR the
        detector marks bright voxels 34 mm (median) from the labelled vessels, which are darker than the
        liver there, and paper-size tumours then fit at their drawn size in 17 % of draws instead of 98 %
        (at 0.8; 71 % of entries fall back to smaller presets); tumours touching a labelled vessel drop
        from 5 % to 0 %, mostly because they are smaller ('small' tumours: 1 % to 0 %). Turn it on for
        contrast-enhanced CT or MR where vessels are bright.
    organ_label / tumour_label: names or values; None = found from dataset.json.
    preview_every: write a PNG preview every this many epochs (0 = never).
    dump_samples: each data-loader worker saves its first N overlays (before/after) for inspection.
    seed: base seed of the generator (None = random).
    background: make entries in a thread of the trainer's process while training runs (True; see
        ``nnunetv2_tumorsynth.bank.background``), or at the start of every epoch while training waits (False;
        fully reproducible under ``seed``). None (default): True when training on a CUDA device, False
        otherwise (on a small CPU there is no idle core for the generator to use; see the README).
    background_seconds: with ``background``, a budget of generator work per epoch in wall seconds
        instead of the entry count above (None = the count).
    background_threads: PyTorch intra-op threads of the background generator thread.
    background_nice: added to the background generator thread's nice value on Linux (0 = none). On a
        CPU-only machine 10 keeps the training thread's speed at the cost of slower synthesis.
    mass_effect: I of Hu et al. 2023, eq. 5 (0 = off, their value 30): the tumour pushes the tissue around
        it outward (``mass_effect.MassEffect``); image and labels move together inside a ball of 1.3 x the
        tumour's equivalent radius, nothing changes outside it. Not used by ``tumorsynth_generate``.
    """

    probability: float = 0.5
    deformation: str | None = "simplex"
    size: str = "paper"
    texture: str = "ddpm"
    heuristic_polarity: str = "either"
    ddpm_steps: int = 50
    ddpm_sampler: str = "ddim"
    reuse: int = 10
    max_entries_per_case: int = 8
    margin_mm: float = 5.0
    min_inside_fraction: float = 0.8
    avoid_vessels: bool = False
    organ_label: str | int | None = None
    tumour_label: str | int | None = None
    preview_every: int = 50
    dump_samples: int = 0
    seed: int | None = None
    background: bool | None = None
    background_seconds: float | None = None
    background_threads: int = 1
    background_nice: int = 0
    mass_effect: float = 0.0

    def updated_from_json(self, path: str) -> SynthSettings:
        """A copy with the keys of the JSON file at ``path`` replaced; unknown keys are an error."""
        with open(path) as f:
            overrides = json.load(f)
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"{path}: unknown synthetic-tumour settings {unknown}; known: {sorted(known)}")
        return SynthSettings(**{**asdict(self), **overrides})


@dataclass
class GenerationStats:
    """What one call of ``SynthesisBank.generate`` did.

    made: entries written. volumes_ml: tumour volume of each entry in ml (after clipping to the organ).
    skipped_cases: cases found unusable. seconds: wall time of the call.
    Per entry, in the order written: sizes_requested (the settings' size preset), sizes_used (the preset
    placed, smaller after a fallback), radii_mm (equivalent radius in mm of the placed mask after
    clipping), requested_radii_mm (equivalent radius in mm of the first tumour drawn at the requested
    preset, i.e. a sample of the size distribution asked for). fallbacks: entries whose preset used is not
    the one requested (the requested size did not fit in two draws).
    """

    made: int = 0
    volumes_ml: list[float] = field(default_factory=list)
    skipped_cases: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sizes_requested: list[str] = field(default_factory=list)
    sizes_used: list[str] = field(default_factory=list)
    radii_mm: list[float] = field(default_factory=list)
    requested_radii_mm: list[float] = field(default_factory=list)
    fallbacks: int = 0


def entry_paths(bank_folder: str, case: str) -> list[str]:
    """Finished entries of ``case``, oldest first (temporary files are ignored)."""
    folder = os.path.join(bank_folder, case)
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".npz") and not f.startswith("."))


def load_entry(path: str) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


class SynthesisBank:
    """Makes entries for training cases. Runs in the trainer's process (GPU for the DDPM backend)."""

    def __init__(self, folder: str, texture, settings: SynthSettings, spacing: tuple[float, float, float],
                 organ_label: int, tumour_label: int, rank: int = 0):
        self.folder, self.texture, self.settings = folder, texture, settings
        self.spacing = tuple(float(s) for s in spacing)
        self.organ_label, self.tumour_label, self.rank = organ_label, tumour_label, rank
        self.mass_effect = MassEffect(settings.mass_effect) if settings.mass_effect > 0 else None
        self.rng = np.random.default_rng(None if settings.seed is None else [settings.seed, rank])
        self.unusable_cases: set[str] = set()
        self._counter = 0
        os.makedirs(folder, exist_ok=True)

    def generate(self, dataset, cases: list[str], n: int, epoch: int) -> GenerationStats:
        """Make ``n`` new entries, for the cases with the fewest entries first."""
        stats = GenerationStats()
        start = time.perf_counter()
        usable = [c for c in cases if c not in self.unusable_cases]
        jobs = []
        while len(jobs) < n and usable:
            counts = np.array([len(entry_paths(self.folder, c)) for c in usable]) + np.array(
                [sum(j["case"] == c for j in jobs) for c in usable])
            fewest = [c for c, k in zip(usable, counts) if k == counts.min()]
            case = fewest[self.rng.integers(len(fewest))]
            job = self._plan_entry(dataset, case)
            if job is None:
                usable.remove(case)
                stats.skipped_cases.append(case)
                continue
            jobs.append(job)
        if jobs:
            self._fill(jobs)
            for job in jobs:
                stats.volumes_ml.append(self._write(job, epoch))
                self._prune(job["case"])
                stats.sizes_requested.append(job["size_requested"])
                stats.sizes_used.append(job["size"])
                stats.radii_mm.append(job["radius_mm"])
                stats.requested_radii_mm.append(job["requested_radius_mm"])
                stats.fallbacks += int(job["size"] != job["size_requested"])
        stats.made = len(jobs)
        stats.seconds = time.perf_counter() - start
        return stats

    def _plan_entry(self, dataset, case: str) -> dict | None:
        """Mask and position for one entry (CPU work); None if the organ has no room (warned once).

        Tries two draws of the requested size preset, then two of each of ``SMALLER_SIZES`` (a fallback).
        A tumour may bulge out of the organ, or out of the case's array where the field of view cuts the
        organ, by up to ``1 - settings.min_inside_fraction`` of its voxels; that part is clipped away (the
        mask box is cut to the array). Besides the mask (bool box, case axis order) and ``corner`` (voxel index)
        the job records ``size_requested`` (the settings' preset), ``size`` (the preset used),
        ``radius_mm`` (equivalent radius in mm of the mask after clipping) and ``requested_radius_mm``
        (equivalent radius in mm of the first tumour drawn at the requested preset, before placement).
        """
        data, seg, _, _ = dataset.load_case(case)
        seg = np.asarray(seg[0])
        organ = (seg == self.organ_label) | (seg == self.tumour_label)  # tumours lie inside the organ
        if not (seg == self.organ_label).any():
            self._unusable(case, f"case {case} has no voxels of organ label {self.organ_label}; skipped")
            return None
        image = np.asarray(data[0])
        forbidden = seg == self.tumour_label
        if self.settings.avoid_vessels:
            forbidden |= vessel_mask_from_intensity(image, organ, self.spacing)
        organ_lo, organ_hi = (np.array(index) for index in bounding_box(organ))  # the organ's box, voxels
        requested = self.settings.size
        requested_radius_mm = None  # equivalent radius (mm) of the first tumour drawn at the requested size
        for size in (requested, *SMALLER_SIZES):
            for _ in range(2):
                mask = random_tumour_mask(self.spacing, self.settings.deformation, size, rng=self.rng)
                if requested_radius_mm is None:
                    requested_radius_mm = equivalent_radius_mm(mask, self.spacing)
                # A tumour allowed to bulge out of the organ may also cross the array's edge (an organ cut by
                # the field of view): place it in the organ's box grown by one tumour box per side, padded
                # beyond the array as outside the organ (forbidden voxels all lie in the organ's box), then
                # keep only the part of the tumour's box inside the case.
                reach = np.array(mask.shape) if self.settings.min_inside_fraction < 1.0 else np.zeros(3, int)
                region = [[int(a), int(b)] for a, b in zip(organ_lo - reach, organ_hi + reach)]  # voxels, half-open
                corner = place_tumour(crop_and_pad_nd(organ, region, False), mask,
                                      crop_and_pad_nd(forbidden, region, False), rng=self.rng,
                                      spacing=self.spacing, min_inside_fraction=self.settings.min_inside_fraction,
                                      margin_mm=self.settings.margin_mm)
                if corner is not None:
                    corner = np.array(corner) + organ_lo - reach  # voxel index in the case; may be < 0
                    mask = clip_to_organ(mask, organ, corner)
                    lo = np.maximum(corner, 0)
                    hi = np.minimum(corner + np.array(mask.shape), organ.shape)
                    mask = mask[tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, corner))]
                    corner = lo
                    if mask.any():
                        return {"case": case, "image": image, "organ": organ, "labels": seg, "corner": corner,
                                "mask": mask, "size": size, "size_requested": requested,
                                "radius_mm": equivalent_radius_mm(mask, self.spacing),
                                "requested_radius_mm": requested_radius_mm}
        self._unusable(case, f"case {case}: organ label {self.organ_label} too small for even a "
                             f"'{SMALLER_SIZES[-1]}' tumour; skipped")
        return None

    def _unusable(self, case: str, message: str) -> None:
        self.unusable_cases.add(case)
        warnings.warn(message, stacklevel=3)

    def make_entry(self, case: str, data: np.ndarray, seg: np.ndarray) -> dict | None:
        """One entry for one case's arrays, returned instead of written (offline generation).

        ``data`` (C, z, y, x) and ``seg`` (1, z, y, x) as nnU-Net's ``load_case`` returns them. The tumour
        is drawn, placed and filled exactly as ``generate`` does, with ``self.rng``. Returns None if the
        organ has no room. The dict holds ``corner`` (voxel index of the mask box's first corner),
        ``mask`` (bool box), ``values`` (float32, the box after inpainting), ``size`` (the size preset
        used after any fallback to smaller sizes), ``box`` (the texture's context crop) and ``preview``.
        """
        job = self._plan_entry(_CaseArrays(data, seg), case)
        if job is not None:
            self._check_fits_context(job)
            self._fill([job])
        return job

    def fill_masks(self, case: str, data: np.ndarray, seg: np.ndarray,
                   boxes: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
        """Entries for given masks (e.g. real tumours to replace), no placement; filled in one batch.

        ``boxes``: (corner, mask) pairs, corner the voxel index of the bool mask box's first corner in the
        case. Returns one entry dict per box, as ``make_entry`` does (without ``size``).
        """
        seg0 = np.asarray(seg[0])
        organ = (seg0 == self.organ_label) | (seg0 == self.tumour_label)
        jobs = [{"case": case, "image": np.asarray(data[0]), "organ": organ, "labels": seg0,
                 "corner": np.asarray(corner), "mask": np.asarray(mask, bool)} for corner, mask in boxes]
        for job in jobs:
            self._check_fits_context(job)
        if jobs:
            self._fill(jobs)
        return jobs

    def _check_fits_context(self, job: dict) -> None:
        crop = self.texture.crop_size
        if crop is not None and any(s > c for s, c in zip(job["mask"].shape, crop)):
            raise ValueError(
                f"case {job['case']}: tumour box {tuple(job['mask'].shape)} voxels is larger than the diffusion "
                f"model's context crop {tuple(crop)}; use smaller tumours or a model trained with a larger --crop")

    def _context_box(self, job: dict) -> list[list[int]]:
        """Crop box (half-open, case voxels) around the tumour: the model's crop size, or a small margin
        (with mass effect: wide enough for its whole ball)."""
        corner, size = job["corner"], np.array(job["mask"].shape)
        crop = self.texture.crop_size
        if crop is None:
            margin = np.full(3, HEURISTIC_CONTEXT_VOXELS)
            if self.mass_effect is not None:
                reach = np.ceil(self.mass_effect.reach_mm(job["mask"], self.spacing) / np.array(self.spacing))
                margin = np.maximum(margin, reach.astype(int) - size // 2 + 2)
            return [[int(c) - int(m), int(c + s) + int(m)] for c, s, m in zip(corner, size, margin)]
        start = corner + size // 2 - np.array(crop) // 2
        return [[int(s), int(s + c)] for s, c in zip(start, crop)]

    def _fill(self, jobs: list[dict]) -> None:
        """Run the texture backend on every job's context crop (batched when crops share a size).

        With mass effect the crop is warped first (image and labels), and the job gets the ``region_*``
        arrays: the voxels that changed around the tumour, image values and labels, in the context box.
        """
        crops, masks, parenchymas, originals = [], [], [], []
        for job in jobs:
            box = self._context_box(job)
            job["box"] = box
            full_mask = np.zeros(job["organ"].shape, bool)
            sl = tuple(slice(c, c + s) for c, s in zip(job["corner"], job["mask"].shape))
            full_mask[sl] = job["mask"]
            crop = crop_and_pad_nd(job["image"], box, 0.0).astype(np.float32)
            mask = crop_and_pad_nd(full_mask, box, False)
            originals.append(crop)
            if "labels" in job:  # the parenchyma: organ label only, existing tumours excluded
                labels = crop_and_pad_nd(job["labels"], box, 0)
                if self.mass_effect is not None:
                    in_case = crop_and_pad_nd(np.ones(job["organ"].shape, bool), box, False)
                    crop, labels, region = self.mass_effect.warp(crop, labels, mask, self.spacing)
                    job["region_mask"] = (region | mask) & in_case
                    job["region_labels"] = np.where(mask, self.tumour_label, labels).astype(labels.dtype)
                    job["region_corner"] = np.array([b[0] for b in box])
                parenchyma = labels == self.organ_label
            else:
                parenchyma = crop_and_pad_nd(job["organ"], box, False)
            crops.append(crop[None])
            masks.append(mask[None])
            parenchymas.append(parenchyma[None])
        if self.texture.crop_size is not None:
            filled = list(self.texture.fill(np.stack(crops), np.stack(masks), np.stack(parenchymas), self.rng,
                                            spacing=self.spacing))
        else:
            filled = [self.texture.fill(c[None], m[None], o[None], self.rng, spacing=self.spacing)[0]
                      for c, m, o in zip(crops, masks, parenchymas)]
        for job, crop, mask, before in zip(jobs, filled, masks, originals):
            offset = [int(c) - b[0] for c, b in zip(job["corner"], job["box"])]
            sl = tuple(slice(o, o + s) for o, s in zip(offset, job["mask"].shape))
            job["values"] = np.asarray(crop[0][sl], np.float32)
            job["before"] = np.asarray(job["image"][tuple(slice(int(c), int(c) + s) for c, s in
                                                          zip(job["corner"], job["mask"].shape))], np.float32)
            assert np.array_equal(np.asarray(mask[0][sl]), job["mask"])
            if "region_mask" in job:
                job["region_values"] = np.where(job["region_mask"], crop[0], before).astype(np.float32)
            z, y = (o + s // 2 for o, s in zip(offset[:2], job["mask"].shape[:2]))
            job["preview"] = {
                "axial_before": before[z], "axial_after": crop[0][z], "axial_mask": mask[0][z],
                "coronal_before": before[:, y], "coronal_after": crop[0][:, y], "coronal_mask": mask[0][:, y],
            }

    def _write(self, job: dict, epoch: int) -> float:
        """Write one entry atomically; returns its tumour volume in ml."""
        folder = os.path.join(self.folder, job["case"])
        os.makedirs(folder, exist_ok=True)
        self._counter += 1
        name = f"e{epoch:05d}_r{self.rank}_p{os.getpid()}_{self._counter:06d}.npz"
        volume_ml = float(job["mask"].sum() * np.prod(self.spacing) / 1000.0)
        region = {k: job[k] for k in ("region_corner", "region_mask", "region_values", "region_labels") if k in job}
        with atomic_path(os.path.join(folder, name)) as tmp:  # hidden temporary name, then rename
            np.savez(tmp, corner=job["corner"], mask=job["mask"], values=job["values"], before=job["before"],
                     volume_ml=volume_ml, epoch=epoch, **region,
                     **{f"preview_{k}": v for k, v in job["preview"].items()})
        return volume_ml

    def remove_unfinished(self) -> int:
        """Delete temporary entry files that an earlier process of this rank left (killed mid-write).

        Finished entries are never touched. Returns the number of files removed.
        """
        removed = 0
        for case in os.listdir(self.folder):
            folder = os.path.join(self.folder, case)
            if case.startswith(".") or not os.path.isdir(folder):
                continue
            for name in os.listdir(folder):
                if name.startswith(".") and name.endswith(".npz") and f"_r{self.rank}_" in name \
                        and f"_p{os.getpid()}_" not in name:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(folder, name))
                        removed += 1
        return removed

    def _prune(self, case: str) -> None:
        for path in entry_paths(self.folder, case)[: -self.settings.max_entries_per_case]:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


class _CaseArrays:
    """One case's arrays behind the ``load_case`` interface that ``SynthesisBank._plan_entry`` reads."""

    def __init__(self, data: np.ndarray, seg: np.ndarray):
        self.data, self.seg = data, seg

    def load_case(self, identifier: str):
        return self.data, self.seg, None, {}


class OverlaidArray:
    """A case array (C, z, y, x) with an entry pasted in, read lazily slice by slice.

    nnU-Net's data loader only crops a patch out of the case (``acvl_utils`` ``crop_and_pad_nd``), so
    the synthetic tumour is pasted into the requested slab instead of copying the whole case.
    ``fill`` is the entry's values (float data) or a scalar (the tumour label for seg).
    """

    def __init__(self, base, corner: np.ndarray, mask: np.ndarray, fill):
        self.base, self.corner, self.mask, self.fill = base, np.asarray(corner), mask, fill
        self.shape, self.dtype, self.ndim = tuple(base.shape), base.dtype, len(base.shape)

    def __getitem__(self, key) -> np.ndarray:
        if not (isinstance(key, tuple) and len(key) == self.ndim and all(isinstance(k, slice) for k in key)):
            return np.asarray(self.materialise())[key]
        out = np.array(self.base[key])
        starts = [k.indices(n)[0] for k, n in zip(key[1:], self.shape[1:])]
        stops = [k.indices(n)[1] for k, n in zip(key[1:], self.shape[1:])]
        lo = np.maximum(starts, self.corner)
        hi = np.minimum(stops, self.corner + np.array(self.mask.shape))
        if np.any(hi <= lo):
            return out
        in_out = (slice(None), *(slice(a - s, b - s) for a, b, s in zip(lo, hi, starts)))
        in_entry = tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, self.corner))
        m = self.mask[in_entry]
        region = out[in_out]
        if np.isscalar(self.fill):
            region[:, m] = self.fill
        else:
            region[:, m] = self.fill[(slice(None), *in_entry)][:, m]
        out[in_out] = region
        return out

    def materialise(self) -> np.ndarray:
        return self[tuple(slice(None) for _ in range(self.ndim))]

    def __array__(self, dtype=None, copy=None):
        out = self.materialise()
        return out if dtype is None else out.astype(dtype)


def overlay_entry(data, seg, properties: dict, entry: dict, tumour_label: int, max_locations: int = 10000):
    """Case with the entry's synthetic tumour: (data, seg, properties) as nnU-Net's ``load_case`` returns.

    Outside the entry's region nothing changes: the region is the tumour mask, or with mass effect the
    ball around it where image and labels were warped together (``region_*`` arrays of the entry).

    The tumour's voxels are added to ``properties['class_locations'][tumour_label]`` (rows of
    (channel, z, y, x), nnU-Net's format) so foreground oversampling can choose them.
    """
    corner, mask = entry["corner"], entry["mask"].astype(bool)
    if "region_corner" in entry:  # mass effect: the whole region moved, image and labels together
        region_corner, region = entry["region_corner"], entry["region_mask"].astype(bool)
        data_out = OverlaidArray(data, region_corner, region, entry["region_values"][None].astype(data.dtype))
        seg_out = OverlaidArray(seg, region_corner, region, entry["region_labels"][None].astype(seg.dtype))
    else:
        values = entry["values"][None] if entry["values"].ndim == 3 else entry["values"]
        data_out = OverlaidArray(data, corner, mask, values.astype(data.dtype, copy=False))
        seg_out = OverlaidArray(seg, corner, mask, seg.dtype.type(tumour_label))
    voxels = np.argwhere(mask) + corner
    if len(voxels) > max_locations:
        voxels = voxels[np.random.choice(len(voxels), max_locations, replace=False)]
    locations = np.concatenate([np.zeros((len(voxels), 1), voxels.dtype), voxels], axis=1)
    properties = dict(properties)
    class_locations = dict(properties.get("class_locations", {}))
    existing = class_locations.get(tumour_label)
    class_locations[tumour_label] = locations if existing is None or len(existing) == 0 else np.concatenate(
        [np.asarray(existing), locations.astype(np.asarray(existing).dtype)])
    properties["class_locations"] = class_locations
    return data_out, seg_out, properties


class SyntheticTumourDataset:
    """nnU-Net training dataset whose cases receive a bank entry with probability ``probability``.

    Wraps the dataset object of ``nnUNetTrainer.get_tr_and_val_datasets`` (training split only).
    Runs in the data-loader workers: reads the bank folder, never writes entries. Each overlay is
    appended to ``<bank>/usage/<pid>.jsonl`` (counts for the training log).
    """

    def __init__(self, dataset, bank_folder: str, probability: float, tumour_label: int, dump_samples: int = 0):
        self.dataset, self.bank_folder = dataset, bank_folder
        self.probability, self.tumour_label, self.dump_samples = probability, tumour_label, dump_samples
        self.identifiers = dataset.identifiers
        self._dumped = 0

    def __getitem__(self, identifier):
        return self.load_case(identifier)

    def load_case(self, identifier):
        data, seg, seg_prev, properties = self.dataset.load_case(identifier)
        if np.random.uniform() >= self.probability:
            return data, seg, seg_prev, properties
        paths = entry_paths(self.bank_folder, identifier)
        if not paths:
            return data, seg, seg_prev, properties
        path = paths[np.random.randint(len(paths))]
        try:
            entry = load_entry(path)
        except (FileNotFoundError, OSError, ValueError):  # pruned or replaced meanwhile: use the real case
            return data, seg, seg_prev, properties
        data_out, seg_out, properties = overlay_entry(data, seg, properties, entry, self.tumour_label)
        self._log_use(identifier, path, data, seg, data_out, seg_out, entry)
        return data_out, seg_out, seg_prev, properties

    def _log_use(self, identifier, path, data, seg, data_out, seg_out, entry) -> None:
        usage = os.path.join(self.bank_folder, "usage")
        os.makedirs(usage, exist_ok=True)
        with open(os.path.join(usage, f"{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps({"case": identifier, "entry": os.path.basename(path)}) + "\n")
        if self._dumped < self.dump_samples:
            self._dumped += 1
            box = tuple(slice(int(c), int(c) + s) for c, s in zip(entry["corner"], entry["mask"].shape))
            full = (slice(None), *box)
            dumps = os.path.join(self.bank_folder, "dumps")
            os.makedirs(dumps, exist_ok=True)
            name = os.path.join(dumps, f"{identifier}__{os.getpid()}_{self._dumped}.npz")
            np.savez(name + ".tmp.npz", data_before=np.asarray(data[full]), data_after=data_out[full],
                     seg_before=np.asarray(seg[full]), seg_after=seg_out[full], mask=entry["mask"],
                     corner=entry["corner"])
            os.replace(name + ".tmp.npz", name)


def count_uses(bank_folder: str) -> int:
    """Total overlays logged by all data-loader workers so far."""
    usage = os.path.join(bank_folder, "usage")
    if not os.path.isdir(usage):
        return 0
    total = 0
    for name in os.listdir(usage):
        with open(os.path.join(usage, name)) as f:
            total += sum(1 for _ in f)
    return total


def write_preview(bank_folder: str, png_path: str, max_entries: int = 4) -> int:
    """PNG of the newest entries: axial and coronal slices before and after, with the mask outline.

    Safe while a background generator writes and prunes entries (a pruned entry leaves its row empty).
    Returns the number of entries listed (0 = nothing written).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    newest = sorted((p for c in os.listdir(bank_folder) if not c.startswith(".") and c not in ("usage", "dumps")
                     for p in entry_paths(bank_folder, c)), key=os.path.basename)[-max_entries:]
    if not newest:
        return 0
    fig, axes = plt.subplots(len(newest), 4, figsize=(12, 3 * len(newest)), squeeze=False)
    for row, path in zip(axes, newest):
        try:
            entry = load_entry(path)
        except (FileNotFoundError, OSError, ValueError):  # pruned by a generator meanwhile: leave the row empty
            for ax in row:
                ax.axis("off")
            continue
        for col, (view, when) in enumerate([(v, w) for v in ("axial", "coronal") for w in ("before", "after")]):
            image = entry[f"preview_{view}_{when}"]
            vmin, vmax = np.percentile(entry[f"preview_{view}_before"], [1, 99])
            row[col].imshow(image, cmap="gray", vmin=vmin, vmax=vmax, aspect="auto")
            if when == "after":
                row[col].contour(entry[f"preview_{view}_mask"], levels=[0.5], colors="r", linewidths=0.8)
            row[col].set_title(f"{os.path.basename(os.path.dirname(path))} {view} {when}", fontsize=8)
            row[col].axis("off")
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return len(newest)
