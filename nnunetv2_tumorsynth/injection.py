"""Glue between nnU-Net's trainer and the synthesis bank, kept out of the trainer classes.

``SyntheticTumourTraining`` holds what a SynthTumor trainer needs during training: the bank, its
texture backend, the training cases, and per-epoch bookkeeping for the log. The trainer calls
``start`` when nnU-Net builds its training dataset, ``before_epoch`` and ``after_epoch`` around each
epoch; nothing here runs at inference.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict

import numpy as np

from nnunetv2_tumorsynth.bank import (
    GenerationStats,
    SynthesisBank,
    SyntheticTumourDataset,
    SynthSettings,
    count_uses,
    entry_paths,
    write_preview,
)
from nnunetv2_tumorsynth.nnunet import find_ddpm_checkpoint, organ_and_tumour_labels
from nnunetv2_tumorsynth.texture import DDPMTexture, HeuristicTexture

SETTINGS_ENV = "TUMORSYNTH_SETTINGS"


def resolve_settings(defaults: SynthSettings) -> SynthSettings:
    """The trainer's settings, updated from the JSON file named by ``$TUMORSYNTH_SETTINGS`` if set."""
    path = os.environ.get(SETTINGS_ENV)
    return defaults.updated_from_json(path) if path else defaults


class SyntheticTumourTraining:
    def __init__(self, settings: SynthSettings, log, output_folder: str, dataset_json: dict, plans_manager,
                 configuration_manager, configuration: str, fold, device, rank: int = 0, world_size: int = 1):
        self.settings, self.log = settings, log
        self.bank_folder = os.path.join(output_folder, "synthesis_bank")
        self.preview_folder = output_folder
        self.organ_label, self.tumour_label = organ_and_tumour_labels(
            dataset_json, settings.organ_label, settings.tumour_label)
        if len(dataset_json["channel_names"]) != 1:
            raise ValueError(
                f"synthetic tumours support single-channel datasets; {plans_manager.dataset_name} has "
                f"{len(dataset_json['channel_names'])} channels {dataset_json['channel_names']}")
        self.spacing = tuple(configuration_manager.spacing)
        self.texture = self._texture(plans_manager, configuration_manager, configuration, fold, device)
        self.bank = SynthesisBank(self.bank_folder, self.texture, settings, self.spacing, self.organ_label,
                                  self.tumour_label, rank)
        self.rank, self.world_size = rank, world_size
        self.dataset = None
        self.cases: list[str] = []
        self.entries_per_epoch = 1
        self._uses_at_epoch_start = 0
        self._epoch_stats = GenerationStats()
        log(f"synthetic tumours: settings {asdict(settings)}; organ label {self.organ_label}, tumour label "
            f"{self.tumour_label}; bank {self.bank_folder}")

    def _texture(self, plans_manager, configuration_manager, configuration, fold, device):
        s = self.settings
        if s.texture == "heuristic":
            return HeuristicTexture()
        if s.texture != "ddpm":
            raise ValueError(f"unknown texture backend {s.texture!r}; choose 'ddpm' or 'heuristic'")
        from nnunetv2_tumorsynth.ddpm import check_compatible

        path = find_ddpm_checkpoint(plans_manager.dataset_name, plans_manager.plans_name, configuration, fold)
        texture = DDPMTexture(path, steps=s.ddpm_steps, sampler=s.ddpm_sampler, device=str(device))
        check_compatible(texture.metadata, self.spacing, {"scheme": configuration_manager.normalization_schemes[0]})
        self.log(f"synthetic tumours: diffusion model {path} (preset {texture.metadata['preset']}, crop "
                 f"{texture.crop_size} voxels, {s.ddpm_steps} {s.ddpm_sampler.upper()} steps)")
        return texture

    def start(self, dataset_tr, batch_size: int, iterations_per_epoch: int, epoch: int) -> SyntheticTumourDataset:
        """Fill the bank for the first epoch and return the wrapped training dataset."""
        self.dataset, self.cases = dataset_tr, list(dataset_tr.identifiers)
        samples = batch_size * iterations_per_epoch * self.settings.probability
        self.entries_per_epoch = max(1, math.ceil(samples / self.settings.reuse))
        missing = sum(1 for c in self.cases if not entry_paths(self.bank_folder, c))
        initial = max(self.entries_per_epoch, missing) if self.rank == 0 else self.entries_per_epoch
        stats = self.bank.generate(self.dataset, self.cases, initial, epoch)
        self.log(f"synthetic tumours: initial bank {stats.made} entries in {stats.seconds:.1f} s; then "
                 f"{self.entries_per_epoch} new entries per epoch (probability {self.settings.probability}, "
                 f"each entry reused ~{self.settings.reuse} times)")
        self._report_skipped(stats)
        return SyntheticTumourDataset(dataset_tr, self.bank_folder, self.settings.probability, self.tumour_label,
                                      self.settings.dump_samples)

    def before_epoch(self, epoch: int) -> None:
        self._uses_at_epoch_start = count_uses(self.bank_folder)
        self._epoch_stats = self.bank.generate(self.dataset, self.cases, self.entries_per_epoch, epoch)
        self._report_skipped(self._epoch_stats)

    def after_epoch(self, epoch: int) -> None:
        s = self._epoch_stats
        uses = count_uses(self.bank_folder) - self._uses_at_epoch_start
        volume = f"{np.mean(s.volumes_ml):.1f} ml" if s.volumes_ml else "n/a"
        held = sum(len(entry_paths(self.bank_folder, c)) for c in self.cases)
        self.log(f"synthetic tumours: {s.made} made (mean volume {volume}) in {s.seconds:.2f} s; "
                 f"{uses} training samples received one; bank holds {held} entries")
        every = self.settings.preview_every
        if self.rank == 0 and every and (epoch + 1) % every == 0:
            png = os.path.join(self.preview_folder, f"synthetic_tumours_epoch{epoch:04d}.png")
            if write_preview(self.bank_folder, png):
                self.log(f"synthetic tumours: preview {png}")

    def _report_skipped(self, stats: GenerationStats) -> None:
        for case in stats.skipped_cases:
            self.log(f"synthetic tumours: WARNING case {case} skipped (organ label {self.organ_label} "
                     f"empty or too small for a tumour)")
