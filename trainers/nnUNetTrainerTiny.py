from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_tumorsynth.nnunet import ShortSchedule


class nnUNetTrainerTiny(ShortSchedule, nnUNetTrainer):
    """Plain nnU-Net, 2 epochs of 3 iterations: for CPU tests and the demo (with tumorsynth_tiny_plans)."""

    schedule = (2, 3, 1)


class nnUNetTrainerShort(ShortSchedule, nnUNetTrainer):
    """Plain nnU-Net, 5 epochs of 25 iterations: the baseline of benchmarks/bench_synth_overhead.py."""

    schedule = (5, 25, 5)
