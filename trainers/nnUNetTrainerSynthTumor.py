"""nnU-Net trainers with synthetic tumours injected on the fly (Quinton et al. 2026; see nnunetv2_tumorsynth.bank).

Settings are the class attribute ``synth`` (a ``SynthSettings``); variants replace a field or two.
``$TUMORSYNTH_SETTINGS`` may name a JSON file that overrides them for an experiment. On a GPU the bank
is filled by default by a background thread of this process (``nnunetv2_tumorsynth.bank.background``); the
trainer stops it at the end of training and whenever ``run_training`` ends with an exception (Ctrl-C too).
"""

from dataclasses import replace

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_tumorsynth.bank.session import SyntheticTumourTraining
from nnunetv2_tumorsynth.bank.settings import SynthSettings, resolve_settings
from nnunetv2_tumorsynth.nnunet import ShortSchedule


class nnUNetTrainerSynthTumor(nnUNetTrainer):
    """Diffusion-inpainted tumours (simplex masks, p = 0.5), from the fold's tumorsynth_pretrain_ddpm model."""

    synth = SynthSettings()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_cascaded:  # the previous stage's segmentation is an input channel the bank does not paste into
            raise ValueError(
                f"{self.__class__.__name__} does not support the cascade configuration {configuration!r}: its input "
                f"includes the segmentation predicted by {self.configuration_manager.previous_stage_name!r}, and the "
                f"synthetic tumours are pasted into the image and the label only, so that channel would never show "
                f"them. Train 2d, 3d_fullres (or 3d_lowres on its own) with synthetic tumours, or the cascade with a "
                f"trainer without them (nnUNetTrainer).")
        self.synthesis = None

    def get_tr_and_val_datasets(self):
        # only the training split is wrapped: validation never sees synthetic tumours
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        self.synthesis = SyntheticTumourTraining.from_trainer(self, resolve_settings(self.synth))
        dataset_tr = self.synthesis.start(dataset_tr, self.batch_size, self.num_iterations_per_epoch,
                                          self.current_epoch)
        return dataset_tr, dataset_val

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.synthesis.before_epoch(self.current_epoch)

    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)
        self.synthesis.after_epoch(self.current_epoch)

    def on_train_end(self):
        self.synthesis.stop()  # before the final checkpoint: no entry is written after training
        super().on_train_end()

    def run_training(self):
        # nnU-Net calls on_train_end only when training completes; errors and Ctrl-C end here
        try:
            super().run_training()
        finally:
            if self.synthesis is not None:
                self.synthesis.stop()


class nnUNetTrainerSynthTumorElastic(nnUNetTrainerSynthTumor):
    """Elastic (Gaussian-noise) mask deformation instead of simplex (Quinton et al. 2026, A.1)."""

    synth = replace(SynthSettings(), deformation="elastic")


class nnUNetTrainerSynthTumor_p025(nnUNetTrainerSynthTumor):
    synth = replace(SynthSettings(), probability=0.25)


class nnUNetTrainerSynthTumor_p075(nnUNetTrainerSynthTumor):
    synth = replace(SynthSettings(), probability=0.75)


class nnUNetTrainerSynthTumorSizeMix(nnUNetTrainerSynthTumor):
    """Size mix of Hu et al. 2023, Table 6 (tiny 4 mm ... large 32 mm) for small-tumour detection."""

    synth = replace(SynthSettings(), size="mix")


class nnUNetTrainerSynthTumorHeuristic(nnUNetTrainerSynthTumor):
    """Hand-made texture of Hu et al. 2023: no diffusion model needed."""

    synth = replace(SynthSettings(), texture="heuristic")


class nnUNetTrainerSynthTumorTiny(ShortSchedule, nnUNetTrainerSynthTumor):
    """Short schedule for CPU tests: 2 epochs of 3 iterations, small tumours, preview every epoch."""

    schedule = (2, 3, 1)
    synth = replace(SynthSettings(), size="small", preview_every=1)


class nnUNetTrainerSynthTumorHeuristicTiny(nnUNetTrainerSynthTumorTiny):
    synth = replace(nnUNetTrainerSynthTumorTiny.synth, texture="heuristic")


class nnUNetTrainerSynthTumorShort(ShortSchedule, nnUNetTrainerSynthTumor):
    """Same schedule as nnUNetTrainerShort (5 x 25 iterations), for benchmarks/bench_synth_overhead.py."""

    schedule = (5, 25, 5)


class nnUNetTrainerSynthTumorHeuristicShort(nnUNetTrainerSynthTumorShort):
    synth = replace(SynthSettings(), texture="heuristic")


class nnUNetTrainerSynthTumor_5epochs(ShortSchedule, nnUNetTrainerSynthTumor):
    """5 epochs of 250 iterations (like nnU-Net's nnUNetTrainer_5epochs): the demo and quick comparisons."""

    schedule = (5, None, None)


class nnUNetTrainerSynthTumor_10epochs(ShortSchedule, nnUNetTrainerSynthTumor):
    """10 epochs (like nnU-Net's nnUNetTrainer_10epochs): benchmarks/bench_benefit.py."""

    schedule = (10, None, None)


class nnUNetTrainerSynthTumorHeuristic_5epochs(ShortSchedule, nnUNetTrainerSynthTumorHeuristic):
    """The heuristic texture, 5 epochs of 250 iterations."""

    schedule = (5, None, None)


class nnUNetTrainerSynthTumorHeuristic_10epochs(ShortSchedule, nnUNetTrainerSynthTumorHeuristic):
    """The heuristic texture, 10 epochs of 250 iterations."""

    schedule = (10, None, None)


class nnUNetTrainerSynthTumor_20epochs(ShortSchedule, nnUNetTrainerSynthTumor):
    """20 epochs (like nnU-Net's nnUNetTrainer_20epochs): benchmarks/bench_benefit.py --epochs 20."""

    schedule = (20, None, None)


class nnUNetTrainerSynthTumorHeuristic_20epochs(ShortSchedule, nnUNetTrainerSynthTumorHeuristic):
    """The heuristic texture, 20 epochs of 250 iterations."""

    schedule = (20, None, None)


class nnUNetTrainerSynthTumor_50epochs(ShortSchedule, nnUNetTrainerSynthTumor):
    """50 epochs (like nnU-Net's nnUNetTrainer_50epochs): benchmarks/bench_benefit.py --epochs 50."""

    schedule = (50, None, None)


class nnUNetTrainerSynthTumorHeuristic_50epochs(ShortSchedule, nnUNetTrainerSynthTumorHeuristic):
    """The heuristic texture, 50 epochs of 250 iterations."""

    schedule = (50, None, None)
