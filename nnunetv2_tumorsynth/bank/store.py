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
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from nnunetv2_tumorsynth.bank.settings import SynthSettings
from nnunetv2_tumorsynth.figures import new_figure, save_figure
from nnunetv2_tumorsynth.synthesis.entry import Entry, UnreadableEntry
from nnunetv2_tumorsynth.synthesis.features import tumour_features
from nnunetv2_tumorsynth.synthesis.statistics import RING_MM, FoldStatistics
from nnunetv2_tumorsynth.synthesis.synthesise import NoRoom, PlannedTumour, TumourSynthesiser

BANK_SUBFOLDERS = ("usage", "dumps", "unreadable")  # bank folders that are not cases


@dataclass
class SynthesisStats:
    """What synthesis did (one ``SynthesisBank.generate`` call, or cumulative totals; they add up with ``+``).

    made: entries written. busy_seconds: wall seconds spent making them. volumes_ml: tumour volume of each entry
    (after clipping to the organ). skipped_cases: cases found unusable. Per entry, in the order written:
    sizes_requested (the settings' size preset), sizes_used (the preset placed, smaller after a fallback),
    radii_mm (equivalent radius in mm of the placed mask after clipping), requested_radii_mm (equivalent radius
    in mm of the first tumour drawn at the requested preset). fallbacks: entries placed with a smaller preset.
    rejected: entries filled but not written, too faint for the quality gate (``SynthSettings.min_contrast_sd``).
    """

    made: int = 0
    busy_seconds: float = 0.0
    volumes_ml: list[float] = field(default_factory=list)
    skipped_cases: list[str] = field(default_factory=list)
    sizes_requested: list[str] = field(default_factory=list)
    sizes_used: list[str] = field(default_factory=list)
    radii_mm: list[float] = field(default_factory=list)
    requested_radii_mm: list[float] = field(default_factory=list)
    fallbacks: int = 0
    rejected: int = 0

    def add(self, other: SynthesisStats, busy_seconds: float | None = None) -> None:
        """Count ``other`` in; ``busy_seconds`` replaces its own wall time when given."""
        self.made += other.made
        self.busy_seconds += other.busy_seconds if busy_seconds is None else busy_seconds
        self.volumes_ml += other.volumes_ml
        self.skipped_cases += other.skipped_cases
        self.sizes_requested += other.sizes_requested
        self.sizes_used += other.sizes_used
        self.radii_mm += other.radii_mm
        self.requested_radii_mm += other.requested_radii_mm
        self.fallbacks += other.fallbacks
        self.rejected += other.rejected

    def add_entry(self, entry: Entry) -> None:
        self.made += 1
        self.volumes_ml.append(entry.volume_ml)
        self.sizes_requested.append(entry.size_requested)
        self.sizes_used.append(entry.size)
        self.radii_mm.append(entry.radius_mm)
        self.requested_radii_mm.append(entry.requested_radius_mm)
        self.fallbacks += int(entry.size != entry.size_requested)

    def __add__(self, other: SynthesisStats) -> SynthesisStats:
        """Both together, as a new object (lists copied)."""
        total = SynthesisStats()
        for part in (self, other):
            total.add(part)
        return total


def fill_batch_size(texture) -> int:
    """Tumours worth filling in one texture call: the texture's crops per network evaluation (``batch_size``) when it
    has a fixed context crop (the DDPM texture, which samples them batched), else 1 (the heuristic texture fills one
    crop at a time, so a larger call gains nothing and only makes the caller's work coarser)."""
    if texture.crop_size is None:
        return 1
    return max(1, int(getattr(texture, "batch_size", 1)))


def entry_paths(bank_folder: str, case: str) -> list[str]:
    """Finished entries of ``case``, oldest first (temporary files are ignored)."""
    folder = os.path.join(bank_folder, case)
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".npz") and not f.startswith("."))


def bank_cases(bank_folder: str) -> list[str]:
    """Case folders of a bank, sorted."""
    return sorted(c for c in os.listdir(bank_folder) if not c.startswith(".") and c not in BANK_SUBFOLDERS
                  and os.path.isdir(os.path.join(bank_folder, c)))


def set_aside(path: str, error: Exception) -> None:
    """Move an unreadable entry to ``<bank>/unreadable/`` (once, by whichever process gets there first) and
    warn with its path, so training goes on without it."""
    bank_folder = os.path.dirname(os.path.dirname(path))
    target = os.path.join(bank_folder, "unreadable", f"{os.path.basename(os.path.dirname(path))}__"
                                                     f"{os.path.basename(path)}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, target)
        warnings.warn(f"synthetic tumours: {error}; moved to {target}, training goes on without it", stacklevel=2)


class SynthesisBank:
    """Makes entries for training cases and keeps the newest ones per case. Runs in the trainer's process."""

    def __init__(self, folder: str, texture, settings: SynthSettings, spacing: tuple[float, float, float],
                 organ_label: int, tumour_label: int, rank: int = 0, statistics: FoldStatistics | None = None):
        self.folder, self.settings = folder, settings
        self.spacing = tuple(float(s) for s in spacing)
        self.organ_label, self.tumour_label, self.rank = organ_label, tumour_label, rank
        rng = np.random.default_rng(None if settings.seed is None else [settings.seed, rank])
        self.synthesiser = TumourSynthesiser(texture, settings, self.spacing, organ_label, tumour_label, rng,
                                             statistics)
        self.unusable_cases: set[str] = set()
        self._counter = 0
        # the quality gate's threshold in parenchyma-ring SDs (0 = off); "data" is set from the fold's tumours by
        # the training session (``SyntheticTumourTraining._calibrate``), off until then
        self.min_contrast_sd = 0.0 if settings.min_contrast_sd == "data" else float(settings.min_contrast_sd)
        os.makedirs(folder, exist_ok=True)

    @property
    def texture(self):
        """The texture backend (the synthesiser's)."""
        return self.synthesiser.texture

    @texture.setter
    def texture(self, texture) -> None:
        self.synthesiser.texture = texture

    def generate(self, dataset, cases: list[str], n: int, epoch: int) -> SynthesisStats:
        """Make ``n`` new entries, for the cases with the fewest entries first; ``dataset`` has nnU-Net's
        ``load_case``. All ``n`` are planned first, then filled in one texture call (the DDPM texture samples
        ``batch_size`` crops per network evaluation; ``fill_batch_size`` is the ``n`` that uses this fully).
        With the quality gate on, entries fainter than ``min_contrast_sd`` are counted in ``rejected`` and not
        written."""
        stats = SynthesisStats()
        start = time.perf_counter()
        usable = [c for c in cases if c not in self.unusable_cases]
        rng = self.synthesiser.rng
        jobs = []
        while len(jobs) < n and usable:
            counts = np.array([len(entry_paths(self.folder, c)) for c in usable]) + np.array(
                [sum(j.case == c for j in jobs) for c in usable])
            fewest = [c for c, k in zip(usable, counts) if k == counts.min()]
            case = fewest[rng.integers(len(fewest))]
            data, seg, _, _ = dataset.load_case(case)
            try:
                jobs.append(self.synthesiser.plan(case, data, seg))
            except NoRoom as e:
                self.unusable_cases.add(case)
                warnings.warn(f"{e}; skipped", stacklevel=2)
                usable.remove(case)
                stats.skipped_cases.append(case)
        for job, entry in zip(jobs, self.synthesiser.fill(jobs) if jobs else []):
            if self.min_contrast_sd > 0 and abs(self.contrast_sd(job, entry)) < self.min_contrast_sd:
                stats.rejected += 1
                continue
            entry.epoch = epoch
            self._write(entry)
            self._prune(entry.case)
            stats.add_entry(entry)
        stats.busy_seconds = time.perf_counter() - start
        return stats

    def contrast_sd(self, job: PlannedTumour, entry: Entry) -> float:
        """The entry's signed contrast to its parenchyma ring, in ring SDs, measured as the fold's real tumours are
        (``statistics.measure_tumours``' ``contrast_sd``): the quality gate's measure of visibility."""
        image = np.array(job.image, np.float32)
        entry.paste_into(image)
        tumour = np.zeros(image.shape, bool)
        tumour[entry.box] = entry.mask
        parenchyma = job.labels == self.organ_label
        features = tumour_features(image, tumour, parenchyma, self.spacing,
                                   other_tumours=job.labels == self.tumour_label, shell_mm=RING_MM)
        return features["contrast_sd"] if np.isfinite(features["contrast_sd"]) else 0.0

    def _write(self, entry: Entry) -> None:
        folder = os.path.join(self.folder, entry.case)
        os.makedirs(folder, exist_ok=True)
        self._counter += 1
        entry.save(os.path.join(folder, f"e{entry.epoch:05d}_r{self.rank}_p{os.getpid()}_{self._counter:06d}.npz"))

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
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def write_preview(bank_folder: str, png_path: str, max_entries: int = 4) -> int:
    """PNG of the newest entries: axial and coronal slices before and after, with the mask outline.

    Safe while a background generator writes and prunes entries (a pruned entry leaves its row empty).
    Returns the number of entries listed (0 = nothing written).
    """
    newest = sorted((p for c in bank_cases(bank_folder) for p in entry_paths(bank_folder, c)),
                    key=os.path.basename)[-max_entries:]
    if not newest:
        return 0
    fig, axes = new_figure(len(newest), 4, figsize=(12, 3 * len(newest)))
    for row, path in zip(axes, newest):
        try:
            preview = Entry.load(path).preview
        except (FileNotFoundError, UnreadableEntry):  # pruned by a generator meanwhile: leave the row empty
            for ax in row:
                ax.axis("off")
            continue
        for col, (view, when) in enumerate([(v, w) for v in ("axial", "coronal") for w in ("before", "after")]):
            vmin, vmax = np.percentile(preview[f"{view}_before"], [1, 99])
            row[col].imshow(preview[f"{view}_{when}"], cmap="gray", vmin=vmin, vmax=vmax, aspect="auto")
            if when == "after":
                row[col].contour(preview[f"{view}_mask"], levels=[0.5], colors="r", linewidths=0.8)
            row[col].set_title(f"{os.path.basename(os.path.dirname(path))} {view} {when}", fontsize=8)
            row[col].axis("off")
    fig.tight_layout()
    save_figure(fig, png_path, dpi=80)
    return len(newest)
