"""Helpers for nnU-Net trainers: finding our trainer classes, short schedules, the fold's diffusion model."""

from __future__ import annotations

import importlib.util
import os
import shlex

from nnunetv2.paths import nnUNet_results


def ddpm_output_folder(name: str, plans_identifier: str, configuration: str, fold: int | str) -> str:
    """``$nnUNet_results/<Dataset>/tumorsynth_ddpm__<plans>__<configuration>/fold_<f>``."""
    if not nnUNet_results:
        raise RuntimeError("nnUNet_results is not set; export nnUNet_results=/path/to/nnUNet_results")
    return os.path.join(nnUNet_results, name, f"tumorsynth_ddpm__{plans_identifier}__{configuration}", f"fold_{fold}")


DDPM_CHECKPOINT_ENV = "TUMORSYNTH_DDPM_CHECKPOINT"


def find_ddpm_checkpoint(name: str, plans_identifier: str, configuration: str, fold: int | str) -> str:
    """The diffusion checkpoint for this dataset, plans, configuration and fold.

    ``$TUMORSYNTH_DDPM_CHECKPOINT`` (a file) wins; otherwise ``checkpoint_best.pth`` (else
    ``checkpoint_latest.pth``) in ``ddpm_output_folder``. Raises FileNotFoundError with the
    ``tumorsynth_pretrain_ddpm`` command to run.
    """
    explicit = os.environ.get(DDPM_CHECKPOINT_ENV)
    if explicit:
        if not os.path.isfile(explicit):
            raise FileNotFoundError(f"{DDPM_CHECKPOINT_ENV}={explicit} does not exist")
        return explicit
    folder = ddpm_output_folder(name, plans_identifier, configuration, fold)
    for candidate in ("checkpoint_best.pth", "checkpoint_latest.pth"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"No diffusion model for {name} ({plans_identifier}, {configuration}, fold {fold}) in {folder}. "
        f"Train it first: tumorsynth_pretrain_ddpm -d {name} -c {configuration} -f {fold} -p {plans_identifier} "
        f"(or point {DDPM_CHECKPOINT_ENV} at a checkpoint, or use nnUNetTrainerSynthTumorHeuristic, which needs none)"
    )


class ShortSchedule:
    """Mixin for nnU-Net trainer variants with a shorter schedule (tests, demos, benchmarks).

    Put it before the trainer class and set ``schedule = (epochs, iterations per epoch, validation
    iterations per epoch)``; ``None`` keeps the trainer's value. Applied at the start of ``initialize``,
    before nnU-Net builds the learning-rate schedule and logs its hyperparameters, so that variants need
    no ``__init__`` of their own (nnU-Net derives its init arguments from the ``__init__`` signature).
    """

    schedule: tuple[int | None, int | None, int | None] = (None, None, None)

    def initialize(self) -> None:
        epochs, iterations, val_iterations = self.schedule
        self.num_epochs = epochs if epochs is not None else self.num_epochs
        self.num_iterations_per_epoch = iterations if iterations is not None else self.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = (val_iterations if val_iterations is not None
                                             else self.num_val_iterations_per_epoch)
        super().initialize()



def trainers_path() -> str:
    """Folder holding the installed trainer modules (works for regular and editable installs)."""
    spec = importlib.util.find_spec("nnunetv2_tumorsynth_trainers")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "nnunetv2_tumorsynth_trainers is not installed. Reinstall the package: pip install nnunetv2-tumorsynth"
        )
    return os.path.abspath(list(spec.submodule_search_locations)[0])


def trainers_export_line() -> str:
    """``export nnUNet_extTrainer=...``, keeping any folders the user already listed there."""
    ours = trainers_path()
    existing = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p and p != ours]
    return "export nnUNet_extTrainer=" + shlex.quote(os.pathsep.join([ours, *existing]))


def ensure_trainers_findable() -> None:
    """Let nnU-Net find our trainer classes in this process even if ``eval "$(tumorsynth_env)"`` was not run."""
    ours = trainers_path()
    listed = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if ours not in listed:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([ours, *listed])
