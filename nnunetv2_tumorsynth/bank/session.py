"""Glue between nnU-Net's trainer and the synthesis bank, kept out of the trainer classes.

``SyntheticTumourTraining`` holds what a SynthTumor trainer needs during training: the bank, its
texture backend, the training cases, the background generator, and per-epoch bookkeeping for the
log. The trainer calls ``start`` when nnU-Net builds its training dataset, ``before_epoch`` and
``after_epoch`` around each epoch, and ``stop`` when training ends or fails; nothing here runs at
inference.

Two modes (``SynthSettings.background``; by default background on CUDA, synchronous otherwise):

- background: the first epoch waits for an initial bank (one entry for every training case that has
  none yet); from then on a ``BackgroundGenerator`` thread makes the epoch's entries while training
  runs and the training loop never waits for synthesis.
- synchronous: ``entries_per_epoch`` entries are made at the start of every epoch while training
  waits; fully reproducible under ``SynthSettings.seed``.

Per epoch the log reports entries made, seconds the generator was busy, and seconds the training
loop waited for it (in the synchronous mode the two are the same).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict

import numpy as np
import torch

from nnunetv2_tumorsynth.bank.background import BackgroundGenerator
from nnunetv2_tumorsynth.bank.overlay import SyntheticTumourDataset, Usage, count_uses
from nnunetv2_tumorsynth.bank.settings import SynthSettings
from nnunetv2_tumorsynth.bank.store import SynthesisBank, SynthesisStats, entry_paths, write_preview
from nnunetv2_tumorsynth.files import json_safe, write_json_atomic
from nnunetv2_tumorsynth.nnunet import PreprocessedDataset, case_slice_spacings_mm, find_ddpm_checkpoint
from nnunetv2_tumorsynth.synthesis.entry import Entry, UnreadableEntry
from nnunetv2_tumorsynth.synthesis.statistics import (
    GATE_FRACTION,
    MIN_TUMOURS,
    FidelityCheck,
    FoldStatistics,
    fidelity_check,
    measure_cases,
    measure_tumours,
    voxels_at_bounds,
)
from nnunetv2_tumorsynth.synthesis.texture import make_texture

STATISTICS_JSON = "tumour_statistics.json"
FIDELITY_ENTRIES = 16  # the fidelity check runs once the bank holds this many entries


def load_texture(settings: SynthSettings, dataset: PreprocessedDataset, fold: int | str, device: str,
                 checkpoint: str | None = None, batch_size: int = 4):
    """(texture, checkpoint path or None) for ``settings.texture``: the fold's diffusion model (or ``checkpoint``),
    checked against the dataset's spacing and normalisation; ValueError says what to run when it does not fit."""
    if settings.texture != "ddpm":
        return make_texture(settings.texture, heuristic_polarity=settings.heuristic_polarity), None
    from nnunetv2_tumorsynth.ddpm import check_compatible

    path = checkpoint or find_ddpm_checkpoint(dataset.name, dataset.plans_identifier, dataset.configuration, fold)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"diffusion checkpoint {path} does not exist; train one with tumorsynth_pretrain_ddpm")
    texture = make_texture("ddpm", checkpoint=path, ddpm_steps=settings.ddpm_steps, ddpm_sampler=settings.ddpm_sampler,
                           device=str(device), batch_size=batch_size, ddpm_strength=settings.ddpm_strength,
                           ddpm_brightness=settings.ddpm_brightness)
    try:
        check_compatible(texture.metadata, dataset.spacing, {"scheme": dataset.normalisation()["scheme"]})
    except ValueError as e:
        made_for = [d.get("configuration") for d in texture.metadata.get("datasets", []) if isinstance(d, dict)]
        note = (f" nnU-Net's {dataset.configuration} cases are 3D volumes at the plans' in-plane spacing, each with "
                f"its own slice spacing (median {dataset.spacing[0]:g} mm), which a 3d_fullres model generally does "
                f"not match." if len(dataset.configuration_manager.spacing) == 2 else "")
        raise ValueError(
            f"{e} (checkpoint {path}, trained on configuration(s) {made_for or 'unknown'}; this training: "
            f"{dataset.configuration}).{note} Train a diffusion model on this configuration's data: "
            f"tumorsynth_pretrain_ddpm -d {dataset.name} -c {dataset.configuration} -f {fold} -p "
            f"{dataset.plans_identifier} (or use nnUNetTrainerSynthTumorHeuristic, which needs none)") from e
    return texture, path


class SyntheticTumourTraining:
    """The bank, its texture, the training cases, the background generator and the per-epoch log of one training."""

    def __init__(self, settings: SynthSettings, log, output_folder: str, dataset: PreprocessedDataset,
                 fold: int | str, device, rank: int = 0, world_size: int = 1):
        self.settings, self.log = settings, log
        self.bank_folder = os.path.join(output_folder, "synthesis_bank")
        self.preview_folder = output_folder
        self.organ_label, self.tumour_label = dataset.organ_label, dataset.tumour_label
        if dataset.num_channels != 1:
            raise ValueError(
                f"synthetic tumours support single-channel datasets; {dataset.name} has {dataset.num_channels} "
                f"channels {dataset.dataset_json['channel_names']}")
        self.spacing = dataset.spacing
        if len(dataset.configuration_manager.spacing) == 2:
            self._log_2d_spacing(dataset)
        self.texture, checkpoint = load_texture(settings, dataset, fold, device)
        if checkpoint is not None:
            log(f"synthetic tumours: diffusion model {checkpoint} (preset {self.texture.metadata['preset']}, crop "
                f"{self.texture.crop_size} voxels, {settings.ddpm_steps} {settings.ddpm_sampler.upper()} steps, "
                f"strength {settings.ddpm_strength:g}, brightness '{settings.ddpm_brightness}')")
        self.bank = SynthesisBank(self.bank_folder, self.texture, settings, self.spacing, self.organ_label,
                                  self.tumour_label, rank)
        self.rank, self.world_size, self.device = rank, world_size, device
        on_cuda = torch.device(device).type == "cuda"
        self.background = on_cuda if settings.background is None else settings.background
        self.dataset = None
        self.cases: list[str] = []
        self.entries_per_epoch = 1
        self.generator: BackgroundGenerator | None = None
        self._totals = SynthesisStats()  # synchronous mode: what the epochs made so far
        self._reported = SynthesisStats()  # totals at the last log line
        self._waited_this_epoch = 0.0  # seconds the training loop waited for synthesis
        self._uses_at_epoch_start = Usage()
        self.statistics: FoldStatistics | None = None
        self.fidelity: FidelityCheck | None = None  # made once the bank holds FIDELITY_ENTRIES entries
        log(f"synthetic tumours: settings {asdict(settings)}; organ label {self.organ_label}, tumour label "
            f"{self.tumour_label}; bank {self.bank_folder}")
        if settings.background is None:
            log(f"synthetic tumours: 'background' not set: {'background' if self.background else 'synchronous'} "
                f"synthesis because the device is {'' if on_cuda else 'not '}CUDA")

    @classmethod
    def from_trainer(cls, trainer, settings: SynthSettings) -> SyntheticTumourTraining:
        """The session of an nnU-Net trainer (its plans, configuration, fold, device, log and DDP rank)."""
        import torch.distributed as dist

        dataset = PreprocessedDataset(trainer.plans_manager.dataset_name, trainer.plans_manager.plans,
                                      trainer.configuration_name, trainer.dataset_json, settings.organ_label,
                                      settings.tumour_label)
        return cls(settings, trainer.print_to_log_file, trainer.output_folder, dataset, trainer.fold, trainer.device,
                   trainer.local_rank, dist.get_world_size() if trainer.is_ddp else 1)

    def _log_2d_spacing(self, dataset: PreprocessedDataset) -> None:
        """2d: nnU-Net's 2d cases are 3D volumes resampled in-plane only, so tumours are made in 3D there (the
        network sees their slices) with z the dataset's median slice spacing; other slice spacings are logged."""
        spacing = self.spacing
        self.log(f"synthetic tumours: {dataset.configuration} configuration: tumours are made in 3D in each case's "
                 f"volume (the network trains on its slices) at {list(spacing)} mm (z, y, x): the plans' in-plane "
                 f"spacing and the median slice spacing of the cases (nnU-Net's 2d preprocessing does not resample z)")
        slices = case_slice_spacings_mm(dataset.name, dataset.plans)
        other = [z for z in slices if not math.isclose(z, spacing[0], rel_tol=0.01)]
        if other:
            self.log(f"synthetic tumours: WARNING {len(other)} of {len(slices)} cases have another slice spacing "
                     f"({min(slices):g} to {max(slices):g} mm, median {spacing[0]:g} mm); the bank uses the median "
                     f"for every case, so in those cases tumour sizes, margins and volumes along z are scaled by "
                     f"their slice spacing / {spacing[0]:g} mm")

    def start(self, dataset_tr, batch_size: int, iterations_per_epoch: int, epoch: int) -> SyntheticTumourDataset:
        """Make the initial bank (training waits for it) and return the wrapped training dataset."""
        self.dataset, self.cases = dataset_tr, list(dataset_tr.identifiers)
        samples = batch_size * iterations_per_epoch * self.settings.probability
        self.entries_per_epoch = max(1, math.ceil(samples / self.settings.reuse))
        self._calibrate()
        removed = self.bank.remove_unfinished()
        if removed:
            self.log(f"synthetic tumours: removed {removed} unfinished entry files of an interrupted run")
        held = sum(len(entry_paths(self.bank_folder, c)) for c in self.cases)
        missing = sum(1 for c in self.cases if not entry_paths(self.bank_folder, c))
        if self.background:  # one entry for every case without one; rank 0 does it for all ranks
            initial = missing if self.rank == 0 else 0
        else:
            initial = max(self.entries_per_epoch, missing) if self.rank == 0 else self.entries_per_epoch
        stats = self.bank.generate(self.dataset, self.cases, initial, epoch)
        self._totals.add(stats)
        self._reported = self._copy_totals()
        self._report_skipped(stats.skipped_cases)
        s = self.settings
        if self.background:
            budget = f"{s.background_seconds:g} s of generator work" if s.background_seconds is not None else \
                f"{self.entries_per_epoch} new entries"
            how = (f"then a background generator makes {budget} per epoch while training runs "
                   f"({s.background_threads} intra-op thread(s), nice +{s.background_nice}"
                   f"{', own CUDA stream' if torch.device(self.device).type == 'cuda' else ''})")
            self.generator = BackgroundGenerator(
                self.bank, self.dataset, self.cases, self.entries_per_epoch, s.background_seconds,
                s.background_threads, s.background_nice, self.device)
        else:
            how = f"then {self.entries_per_epoch} new entries at the start of every epoch (synchronous)"
        self.check_fidelity()
        gate = f", {stats.rejected} rejected by the quality gate" if stats.rejected else ""
        self.log(f"synthetic tumours: initial bank {stats.made} entries{gate} in {stats.busy_seconds:.1f} s (bank held "
                 f"{held} "
                 f"before); {how}; probability {s.probability}, each entry reused ~{s.reuse} times")
        return SyntheticTumourDataset(dataset_tr, self.bank_folder, s.probability, self.tumour_label,
                                      s.dump_samples)

    def _calibrate(self) -> None:
        """Measure the training cases' annotated tumours (``tumour_statistics.json`` in the output folder); with
        size "data" the synthetic tumours are drawn from them, or from Hu et al. 2023's priors when too few."""
        statistics = FoldStatistics(measure_cases(self.dataset, self.cases, self.organ_label, self.tumour_label,
                                                  self.spacing))
        self.statistics = statistics
        write_json_atomic(json_safe(statistics.to_json()), os.path.join(self.preview_folder, STATISTICS_JSON))
        self.log("synthetic tumours: the fold's annotated training tumours (median [10-90 %]):\n" + statistics.table())
        if self.settings.min_contrast_sd == "data":
            if statistics.calibrated:
                self.bank.min_contrast_sd = GATE_FRACTION * statistics.faintest_contrast_sd()
                self.log(f"synthetic tumours: quality gate: entries fainter than {self.bank.min_contrast_sd:.2f} "
                         f"parenchyma SDs ({GATE_FRACTION:g} x the faintest annotated tumour) are not written")
            else:
                self.log(f"synthetic tumours: quality gate off: fewer than {MIN_TUMOURS} annotated tumours to set it")
        if self.settings.size != "data":
            return
        if statistics.calibrated:
            self.bank.synthesiser.statistics = statistics
            self.log("synthetic tumours: size 'data': sizes" + (", contrast, grain and edges" if
                     self.settings.texture == "heuristic" else "") + " drawn from these tumours")
        else:
            self.log(f"synthetic tumours: size 'data' but fewer than {MIN_TUMOURS} annotated tumours (label-free): "
                     f"Hu et al. 2023's priors (sizes tiny to large, contrast 1-4 parenchyma SDs)")

    def check_fidelity(self) -> None:
        """Once the bank holds ``FIDELITY_ENTRIES`` entries: measure them as the real tumours are measured, log the
        comparison, and warn when the synthetic tumours differ from the real ones (``statistics.fidelity_check``)."""
        if self.fidelity is not None or self.rank != 0 or not self.statistics or not self.statistics.tumours:
            return
        paths = sorted((p for c in self.cases for p in entry_paths(self.bank_folder, c)), key=os.path.basename)
        if len(paths) < FIDELITY_ENTRIES:
            return
        synthetic, at_bounds, fill_voxels = [], 0, 0
        bounds = getattr(self.texture, "x0_range", None)
        for path in paths[-2 * FIDELITY_ENTRIES:]:
            try:
                entry = Entry.load(path)
            except (FileNotFoundError, UnreadableEntry):
                continue
            data, seg = self.dataset.load_case(entry.case)[:2]
            image, labels = np.array(data[0], np.float32), np.array(seg[0])
            entry.paste_into(image)
            synthetic_label = int(labels.max()) + 1
            labels[entry.box][entry.mask] = synthetic_label
            synthetic += measure_tumours(image, labels, self.organ_label, synthetic_label, self.spacing, entry.case)
            if bounds is not None:
                values = entry.values[entry.mask]
                at_bounds += voxels_at_bounds(values, bounds)
                fill_voxels += values.size
        self.fidelity = fidelity_check(self.statistics, synthetic, at_bounds / fill_voxels if fill_voxels else None)
        self.log(f"synthetic tumours: fidelity check, {len(synthetic)} synthetic tumours against the "
                 f"{len(self.statistics.tumours)} annotated ones (medians, KS statistic):\n" + self.fidelity.table())
        for warning in self.fidelity.warnings:
            self.log(f"synthetic tumours: WARNING {warning}")

    def before_epoch(self, epoch: int) -> None:
        """Synchronous: make the epoch's entries (training waits). Background: hand the generator its budget."""
        self._uses_at_epoch_start = count_uses(self.bank_folder)
        if self.generator is None:
            stats = self.bank.generate(self.dataset, self.cases, self.entries_per_epoch, epoch)
            self._totals.add(stats)
            self._waited_this_epoch = stats.busy_seconds
            return
        self.generator.check()
        self._waited_this_epoch = 0.0  # the training loop never waits for the background generator
        self.generator.new_epoch(epoch)  # the first call starts its thread

    def after_epoch(self, epoch: int) -> None:
        """Log what synthesis did since the last report; raise a background generator's error."""
        if self.generator is not None:
            self.generator.check()
        now = self._copy_totals()
        last, self._reported = self._reported, now
        made, busy = now.made - last.made, now.busy_seconds - last.busy_seconds
        volumes = now.volumes_ml[len(last.volumes_ml):]
        self._report_skipped(now.skipped_cases[len(last.skipped_cases):])
        uses = count_uses(self.bank_folder) - self._uses_at_epoch_start
        volume = f"{np.mean(volumes):.1f} ml" if volumes else "n/a"
        held = sum(len(entry_paths(self.bank_folder, c)) for c in self.cases)
        # requested vs achieved size of this epoch's entries (equivalent radii in mm, after clipping)
        requested = sorted(set(now.sizes_requested[len(last.sizes_requested):]))
        used = now.sizes_used[len(last.sizes_used):]
        radii = now.radii_mm[len(last.radii_mm):]
        drawn = now.requested_radii_mm[len(last.requested_radii_mm):]
        fallbacks = now.fallbacks - last.fallbacks
        rejected = now.rejected - last.rejected
        gate = f" ({rejected} more rejected as fainter than {self.bank.min_contrast_sd:.2f} SD)" if rejected else ""
        sizes = "sizes n/a"
        if radii:
            sizes = (f"size {'/'.join(requested)} requested, median equivalent radius {np.median(drawn):.1f} mm "
                     f"drawn vs {np.median(radii):.1f} mm placed (after clipping), {fallbacks} fallback(s) to "
                     f"smaller presets")
            smaller = ", ".join(f"{size} {used.count(size)}" for size in sorted(set(used) - set(requested)))
            if smaller:
                sizes += f" ({smaller})"
        self.log(f"synthetic tumours: {made} made{gate} (mean volume {volume}); generator busy {busy:.2f} s, "
                 f"training waited {self._waited_this_epoch:.2f} s; {uses.overlaid} of {uses.loaded} samples the data "
                 f"loaders prepared received one (prefetching included, so counts run ahead of the epoch); "
                 f"bank holds {held} entries; {sizes}")
        self.check_fidelity()
        every = self.settings.preview_every
        if self.rank == 0 and every and (epoch + 1) % every == 0:
            png = os.path.join(self.preview_folder, f"synthetic_tumours_epoch{epoch:04d}.png")
            if write_preview(self.bank_folder, png):
                self.log(f"synthetic tumours: preview {png}")

    def stop(self) -> None:
        """Stop the background generator and wait for it (idempotent). Called at the end of training and on
        errors or Ctrl-C. A generator error is written to the log with its traceback; stop never raises it
        (``after_epoch`` and ``before_epoch`` do)."""
        generator, self.generator = self.generator, None
        if generator is None:
            return
        waited = generator.stop()
        totals = generator.totals()
        self.log(f"synthetic tumours: background generator stopped after waiting {waited:.2f} s; it made "
                 f"{totals.made} entries in {totals.busy_seconds:.1f} s of work")
        if generator.error is not None:
            self.log(f"synthetic tumours: ERROR the background generator failed in epoch {generator.error_epoch}:\n"
                     f"{generator.error_traceback}")

    def _copy_totals(self) -> SynthesisStats:
        """Cumulative figures of both the synchronous calls and the background generator."""
        return self._totals + (self.generator.totals() if self.generator is not None else SynthesisStats())

    def _report_skipped(self, skipped_cases: list[str]) -> None:
        for case in skipped_cases:
            self.log(f"synthetic tumours: WARNING case {case} skipped (organ label {self.organ_label} "
                     f"empty or too small for a tumour)")
