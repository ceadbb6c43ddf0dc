"""The box-guided model of ``tumorsynth_pseudolabel``: found under ``$nnUNet_results``, checked to take a box
channel, loaded as nnU-Net's predictor."""

from __future__ import annotations

import multiprocessing
import os
from typing import NamedTuple

import torch

from nnunetv2_tumorsynth.boxes.pseudolabel_settings import PseudolabelError, PseudolabelSettings
from nnunetv2_tumorsynth.nnunet import dataset_name, ensure_trainers_findable


def model_folder(name: str, trainer: str, plans: str, configuration: str) -> str:
    """``$nnUNet_results/<Dataset>/<trainer>__<plans>__<configuration>``."""
    from nnunetv2.paths import nnUNet_results

    if not nnUNet_results:
        raise PseudolabelError("nnUNet_results is not set; export nnUNet_results=/path/to/nnUNet_results")
    return os.path.join(nnUNet_results, name, f"{trainer}__{plans}__{configuration}")


def first_conv_in_channels(network_weights: dict) -> int:
    """Input channels of a network from its state dict: the first convolution weight's second axis."""
    for value in network_weights.values():
        if hasattr(value, "ndim") and value.ndim in (4, 5):
            return int(value.shape[1])
    raise PseudolabelError("no convolution weights found in the checkpoint")


def check_box_model(checkpoint: dict, trainer_class: type, num_image_channels: int, checkpoint_path: str) -> None:
    """Refuse a model trained without the box channel (by its trainer class and its first convolution)."""
    trainer_name = checkpoint.get("trainer_name", "?")
    in_channels = first_conv_in_channels(checkpoint["network_weights"])
    if not getattr(trainer_class, "uses_box_channel", False) or in_channels != num_image_channels + 1:
        config = checkpoint.get("init_args", {}).get("configuration", "3d_fullres")
        raise PseudolabelError(
            f"{checkpoint_path} was trained by {trainer_name} with {in_channels} input channel(s) for "
            f"{num_image_channels} image channel(s): it has no tumour box channel, so boxes cannot guide it. Train a "
            f"box-guided model first: nnUNetv2_train DATASET {config} FOLD -tr nnUNetTrainerBBoxChannel"
        )


def load_predictor(folder: str, fold: str, checkpoint_name: str, device: torch.device, use_mirroring: bool,
                   step_size: float):
    """nnU-Net's predictor for a trained box-channel model and the model's trainer class, after checking
    that it really has the box channel and reads images with SimpleITK."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    fold = fold if fold == "all" else int(fold)
    checkpoint_path = os.path.join(folder, f"fold_{fold}", checkpoint_name)
    if not os.path.isfile(checkpoint_path):
        raise PseudolabelError(f"{checkpoint_path} does not exist. Train the box-guided model first, e.g. "
                               f"nnUNetv2_train DATASET CONFIGURATION {fold} -tr nnUNetTrainerBBoxChannel")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    ensure_trainers_findable()
    trainer_class = recursive_find_trainer_class_by_name(checkpoint["trainer_name"])
    num_image_channels = len(load_json(os.path.join(folder, "dataset.json"))["channel_names"])
    check_box_model(checkpoint, trainer_class, num_image_channels, checkpoint_path)
    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(folder, (fold,), checkpoint_name)
    if predictor.plans_manager.image_reader_writer_class is not SimpleITKIO:
        raise PseudolabelError(
            f"the plans read images with {predictor.plans_manager.image_reader_writer_class.__name__}; box coordinates "
            f"are voxel indices of SimpleITK arrays, so only SimpleITKIO plans are supported")
    return predictor, trainer_class


class BoxModel(NamedTuple):
    """Where a trained box-guided model is: its dataset's name, its results folder and its dataset.json."""

    dataset_name: str
    folder: str
    dataset_json: dict


def find_model(settings: PseudolabelSettings) -> BoxModel:
    """The trained box-guided model that ``settings`` names (checked to exist)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_results

    try:
        name = dataset_name(settings.dataset)
    except (RuntimeError, ValueError) as e:  # nnU-Net's multi-line "Could not find a dataset with the ID ..."
        raise PseudolabelError(f"dataset {settings.dataset}: {str(e).split('. ')[0]} in nnUNet_results="
                               f"{nnUNet_results!r}; check -d (the dataset the box-guided model was trained on)") from e
    folder = model_folder(name, settings.trainer, settings.plans, settings.configuration)
    if not os.path.isfile(os.path.join(folder, "dataset.json")):
        raise PseudolabelError(f"{folder} holds no trained model. Train it first: nnUNetv2_train {settings.dataset} "
                               f"{settings.configuration} {settings.fold} -tr {settings.trainer} -p {settings.plans}")
    return BoxModel(name, folder, load_json(os.path.join(folder, "dataset.json")))


def pick_device(name: str | None) -> torch.device:
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    return device
