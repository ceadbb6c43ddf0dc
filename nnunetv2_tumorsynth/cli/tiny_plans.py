"""``tumorsynth_tiny_plans``: derive CPU-sized nnU-Net plans from existing ones (tests, demo).

The new plans share the preprocessed data of the source plans (same ``data_identifier``), so nothing
is preprocessed again; only the network and patch shrink. Train with::

    nnUNetv2_train 990 3d_fullres 0 -p tumorsynthTinyPlans -tr nnUNetTrainerTiny -device cpu
"""

from __future__ import annotations

import argparse

from nnunetv2_tumorsynth.nnunet import TINY_PLANS, make_tiny_plans, write_tiny_plans  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write CPU-sized plans next to existing nnU-Net plans.")
    parser.add_argument("-d", required=True, help="dataset id or name")
    parser.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-p", default="nnUNetPlans", help="source plans identifier (default nnUNetPlans)")
    parser.add_argument("-o", default=TINY_PLANS, help=f"new plans identifier (default {TINY_PLANS})")
    parser.add_argument("--features", type=int, nargs=3, default=(4, 8, 16),
                        help="features per stage of the 3-stage U-Net (default 4 8 16)")
    parser.add_argument("--patch", type=int, nargs=3, default=(16, 32, 32), metavar=("Z", "Y", "X"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    for flag, values in (("--features", args.features), ("--patch", args.patch), ("--batch", [args.batch])):
        if min(values) < 1:
            parser.error(f"{flag} {' '.join(map(str, values))}: every value must be at least 1")
    try:
        out = write_tiny_plans(args.d, args.c, args.p, args.o, tuple(args.features), tuple(args.patch), args.batch,
                               args.overwrite)
    except (FileExistsError, FileNotFoundError, KeyError, ValueError) as e:
        parser.error(str(e))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
