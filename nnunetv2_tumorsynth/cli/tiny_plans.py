"""``tumorsynth_tiny_plans``: derive CPU-sized nnU-Net plans from existing ones (tests, demo).

The new plans share the preprocessed data of the source plans (same ``data_identifier``), so nothing
is preprocessed again; only the network and patch shrink. Train with::

    nnUNetv2_train 990 3d_fullres 0 -p tumorsynthTinyPlans -tr nnUNetTrainerTiny -device cpu
"""

from __future__ import annotations

import argparse
import copy
import os

from nnunetv2_tumorsynth.nnunet import dataset_name, load_plans, preprocessed_folder, write_json_atomic

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

    Strides are (1,1,1), (1,2,2), (2,2,2) for (z, y, x), so ``patch_size`` (voxels, z y x) must be
    divisible by (2, 4, 4).
    """
    if len(features) != 3:
        raise ValueError("tiny plans use exactly 3 stages: give 3 feature counts")
    if patch_size[0] % 2 or patch_size[1] % 4 or patch_size[2] % 4:
        raise ValueError(f"patch size {patch_size} must be divisible by (2, 4, 4)")
    config = copy.deepcopy(plans["configurations"][configuration])
    arch = config["architecture"]["arch_kwargs"]
    arch.update(
        n_stages=3,
        features_per_stage=list(features),
        kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        n_conv_per_stage=[1, 1, 1],
        n_conv_per_stage_decoder=[1, 1],
    )
    config["patch_size"] = list(patch_size)
    config["batch_size"] = batch_size
    tiny = copy.deepcopy(plans)
    tiny["plans_name"] = plans_name
    tiny["configurations"] = {configuration: config}
    return tiny


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write CPU-sized plans next to existing nnU-Net plans.")
    parser.add_argument("-d", required=True, help="dataset id or name")
    parser.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-p", default="nnUNetPlans", help="source plans identifier (default nnUNetPlans)")
    parser.add_argument("-o", default=TINY_PLANS, help=f"new plans identifier (default {TINY_PLANS})")
    parser.add_argument("--features", type=int, nargs=3, default=(4, 8, 16))
    parser.add_argument("--patch", type=int, nargs=3, default=(16, 32, 32), metavar=("Z", "Y", "X"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    name = dataset_name(args.d)
    out = os.path.join(preprocessed_folder(name), args.o + ".json")
    if os.path.exists(out) and not args.overwrite:
        parser.error(f"{out} exists; pass --overwrite to replace it")
    tiny = make_tiny_plans(load_plans(name, args.p), args.c, args.o, tuple(args.features), tuple(args.patch),
                           args.batch)
    write_json_atomic(tiny, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
