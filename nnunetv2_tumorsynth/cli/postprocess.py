"""``tumorsynth_postprocess``: remove predicted tumours the fold's annotated tumours make implausible.

Usage (after ``nnUNetv2_predict``, with the dataset, plans, configuration and fold of the model that predicted)::

    tumorsynth_postprocess -i PRED_FOLDER -o OUT_FOLDER -d DATASET [-p nnUNetPlans] [-c 3d_fullres] [-f 0]
        [--min-volume-mm3 V | --min-radius-fraction 0.5] [--keep-outside-organ] [--tumour-label tumour] [--overwrite]

Argument parsing and one call of :func:`nnunetv2_tumorsynth.nnunet.postprocess.postprocess_folder`. Errors are one
line on stderr, exit code 1 when an input file is unusable, 2 for anything else; nothing in -i is changed.
"""

from __future__ import annotations

import argparse

from nnunetv2_tumorsynth.cli import fold_argument
from nnunetv2_tumorsynth.cli.evaluate import one_line
from nnunetv2_tumorsynth.files import CorruptFile
from nnunetv2_tumorsynth.nnunet.postprocess import MIN_RADIUS_FRACTION, postprocess_folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Remove predicted tumours (connected components, 26-connectivity) smaller than a sphere of "
        f"--min-radius-fraction (default {MIN_RADIUS_FRACTION:g}) x the equivalent radius of the smallest annotated "
        "tumour in the fold's training cases, or than --min-volume-mm3, and tumours touching no organ voxel when "
        "every annotated training tumour touches the organ; each takes the label around it. Writes the label maps, "
        "dataset.json, plans.json and postprocessing.json into -o.")
    parser.add_argument("-i", required=True, help="folder of predicted label maps (nnUNetv2_predict output)")
    parser.add_argument("-o", required=True, help="output folder (refused if it exists, unless --overwrite)")
    parser.add_argument("-d", required=True, help="dataset id or name the model was trained on")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-f", type=fold_argument, default=0,
                        help="fold whose training cases set the threshold, or 'all' (default 0)")
    parser.add_argument("--min-volume-mm3", type=float, default=None,
                        help="remove tumours smaller than this (mm^3) instead of the fold's threshold")
    parser.add_argument("--min-radius-fraction", type=float, default=MIN_RADIUS_FRACTION,
                        help="threshold sphere radius / smallest annotated tumour's equivalent radius "
                        f"(default {MIN_RADIUS_FRACTION:g})")
    parser.add_argument("--keep-outside-organ", action="store_true",
                        help="keep predicted tumours that touch no organ voxel (removed by default when every "
                        "annotated training tumour touches the organ)")
    parser.add_argument("--tumour-label", default=None, help="tumour label name or value (default from dataset.json)")
    parser.add_argument("--overwrite", action="store_true", help="write into an existing output folder")
    args = parser.parse_args(argv)
    try:
        summary = postprocess_folder(args.i, args.o, args.d, plans=args.p, configuration=args.c, fold=args.f,
                                     min_volume_mm3=args.min_volume_mm3, fraction=args.min_radius_fraction,
                                     tumour_label=args.tumour_label, keep_outside_organ=args.keep_outside_organ,
                                     overwrite=args.overwrite)
    except CorruptFile as error:
        parser.exit(1, f"tumorsynth_postprocess: error: {one_line(error)}\n")
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as error:
        parser.exit(2, f"tumorsynth_postprocess: error: {one_line(error)}\n")
    record = summary.as_dict()
    print(f"removed {record['removed_small_total']} tumour components smaller than {summary.min_volume_mm3:.1f} mm^3 "
          f"and {record['removed_outside_organ_total']} touching no organ voxel ({summary.rule}) from "
          f"{len(summary.removed)} label maps; wrote {args.o}")


if __name__ == "__main__":
    main()
