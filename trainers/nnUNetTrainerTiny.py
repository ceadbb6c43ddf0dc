import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerTiny(nnUNetTrainer):
    """Plain nnU-Net, 2 epochs of 3 iterations: for CPU tests and the demo (with tumorsynth_tiny_plans)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 1


class nnUNetTrainerShort(nnUNetTrainer):
    """Plain nnU-Net, 5 epochs of 25 iterations: the baseline of benchmarks/bench_synth_overhead.py."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5
        self.num_iterations_per_epoch = 25
        self.num_val_iterations_per_epoch = 5
