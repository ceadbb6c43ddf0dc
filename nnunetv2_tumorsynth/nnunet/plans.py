"""Tiny plans: a copy of nnU-Net's plans with a 3-stage U-Net that trains in seconds on a CPU."""

from __future__ import annotations

import copy
import os

from nnunetv2.paths import nnUNet_preprocessed

from nnunetv2_tumorsynth.files import write_json_atomic
from nnunetv2_tumorsynth.nnunet.dataset import dataset_name, load_plans, preprocessed_folder

TINY_PLANS = "tumorsynthTinyPlans"


def make_tiny_plans(
    plans: dict,
    configuration: str = "3d_fullres",
    plans_name: str = TINY_PLANS,
    features: tuple[int, ...] = (4, 8, 16),
    patch_size: tuple[int, int, int] = (16, 32, 32),
    batch_size: int = 2,
) -> dict:
    """A copy of ``plans`` holding only ``configuration``, with a 3-stage U-Net of ``features``.

    3d: strides are (1,1,1), (1,2,2), (2,2,2) for (z, y, x), so ``patch_size`` (voxels, z y x) must be
    divisible by (2, 4, 4). 2d (a configuration with 2 spacing entries): strides (1,1), (2,2), (2,2); the
    patch is (y, x), and a 3-entry ``patch_size`` gives its last two, so each must be divisible by 4.
    """
    if len(features) != 3:
        raise ValueError("tiny plans use exactly 3 stages: give 3 feature counts")
    if min(features) < 1 or min(patch_size) < 1 or batch_size < 1:
        raise ValueError(f"features {tuple(features)}, patch size {tuple(patch_size)} and batch size {batch_size} must "
                         f"be positive")
    if configuration not in plans["configurations"]:
        raise KeyError(f"configuration {configuration!r} is not in the plans; available: "
                       f"{sorted(plans['configurations'])}")
    config = copy.deepcopy(plans["configurations"][configuration])
    if "architecture" not in config:
        raise ValueError(f"configuration {configuration!r} inherits from {config.get('inherits_from')!r}; tiny plans "
                         f"need a configuration with its own architecture (2d, 3d_fullres or 3d_lowres)")
    if len(config.get("spacing", config.get("patch_size", ()))) == 2:
        patch_size = tuple(patch_size[-2:])
        if patch_size[0] % 4 or patch_size[1] % 4:
            raise ValueError(f"2d patch size {patch_size} (y, x) must be divisible by (4, 4)")
        kernels, strides = [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]]
    else:
        if patch_size[0] % 2 or patch_size[1] % 4 or patch_size[2] % 4:
            raise ValueError(f"patch size {patch_size} must be divisible by (2, 4, 4)")
        kernels, strides = [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    arch = config["architecture"]["arch_kwargs"]
    arch.update(
        n_stages=3,
        features_per_stage=list(features),
        kernel_sizes=kernels,
        strides=strides,
        n_conv_per_stage=[1, 1, 1],
        n_conv_per_stage_decoder=[1, 1],
    )
    config["patch_size"] = list(patch_size)
    config["batch_size"] = batch_size
    tiny = copy.deepcopy(plans)
    tiny["plans_name"] = plans_name
    tiny["configurations"] = {configuration: config}
    return tiny


def write_tiny_plans(dataset: str | int, configuration: str = "3d_fullres", source_plans: str = "nnUNetPlans",
                     plans_name: str = TINY_PLANS, features: tuple[int, ...] = (4, 8, 16),
                     patch_size: tuple[int, int, int] = (16, 32, 32), batch_size: int = 2,
                     overwrite: bool = False) -> str:
    """Write ``<plans_name>.json`` beside the dataset's ``<source_plans>.json`` (see ``make_tiny_plans``);
    refuses to replace an existing file unless ``overwrite``. Returns its path."""
    try:
        name = dataset_name(dataset)
    except (RuntimeError, ValueError) as e:  # nnU-Net's multi-line "Could not find a dataset with the ID ..."
        raise FileNotFoundError(f"dataset {dataset}: {str(e).split('. ')[0]} in nnUNet_preprocessed="
                                f"{nnUNet_preprocessed!r}; check -d, or plan it first: nnUNetv2_plan_and_preprocess "
                                f"-d {dataset}") from e
    out = os.path.join(preprocessed_folder(name), plans_name + ".json")
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    tiny = make_tiny_plans(load_plans(name, source_plans), configuration, plans_name, features, patch_size, batch_size)
    write_json_atomic(tiny, out)
    return out
