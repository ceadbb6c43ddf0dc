"""``tumorsynth_pseudolabel``: pseudo-masks (organ and tumour) from tumour bounding boxes.

Usage::

    tumorsynth_pseudolabel -bbox Annotation.json -i LLD-MMRI/images -o pseudo -d 501 -c 3d_fullres -f 0 \\
        [-tr nnUNetTrainerBBoxChannel] [-p nnUNetPlans] [--phases C+A C+V C+Delay] [--categories 6] \\
        [--margin-mm 5] [--as-dataset 502] [-device cpu|cuda] [--overwrite]

Argparse and one call of :func:`nnunetv2_tumorsynth.pseudolabel.pseudolabel_folder`, which says what is
done to each case; from Python, call that with a :class:`~nnunetv2_tumorsynth.pseudolabel.PseudolabelSettings`.
"""

from __future__ import annotations

import argparse

from nnunetv2_tumorsynth.boxes import PAPER_PHASES, AnnotationError
from nnunetv2_tumorsynth.boxes.pseudolabel import pseudolabel_folder
from nnunetv2_tumorsynth.boxes.pseudolabel_settings import PseudolabelError, PseudolabelSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tumorsynth_pseudolabel",
        description="Pseudo-masks (organ and tumour) from tumour bounding boxes with a box-guided nnU-Net "
        "(nnUNetTrainerBBoxChannel). Reads LLD-MMRI's Annotation.json or the generic box format (see README).")
    parser.add_argument("-bbox", required=True, help="LLD-MMRI Annotation.json, or generic boxes: a JSON per case, a "
                        "folder of them, or a CSV")
    parser.add_argument("-i", required=True, help="image folder (LLD-MMRI: <patient>/<study>/<series>.nii.gz)")
    parser.add_argument("-o", default=None, help="output folder for the label maps (optional with --as-dataset)")
    parser.add_argument("-d", required=True, help="dataset the box-guided model was trained on (id or name)")
    parser.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-f", default="0", help="fold (default 0)")
    parser.add_argument("-tr", default="nnUNetTrainerBBoxChannel", help="trainer (default nnUNetTrainerBBoxChannel)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name (default checkpoint_final.pth)")
    parser.add_argument("--phases", nargs="+", default=list(PAPER_PHASES),
                        help="LLD-MMRI phases to use, each its own case (default: C+A C+V C+Delay, as in the paper; "
                        "'all' keeps every phase)")
    parser.add_argument("--categories", nargs="+", type=int, default=None,
                        help="LLD-MMRI lesion categories: keep series whose lesions all have one of them "
                        "(6 = hepatocellular carcinoma; default: all)")
    parser.add_argument("--margin-mm", type=float, default=5.0,
                        help="tumour further than this from every box is removed (mm, default 5)")
    parser.add_argument("--keep-outside", action="store_true",
                        help="keep predicted tumour outside the boxes (default: removed, see --margin-mm)")
    parser.add_argument("--organ-label", default=None, help="organ label name or value (default: from dataset.json)")
    parser.add_argument("--tumour-label", default=None, help="tumour label name or value (default: from dataset.json)")
    parser.add_argument("--as-dataset", type=int, default=None, metavar="ID",
                        help="also write $nnUNet_raw/Dataset<ID>_<source>Pseudo (imagesTr, labelsTr, dataset.json)")
    parser.add_argument("--save-boxes", action="store_true", help="also write the box rasters to <-o>/boxes/")
    parser.add_argument("-device", default=None, choices=["cpu", "cuda", "mps"],
                        help="default: cuda when available, else cpu")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step (fraction of the patch)")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring at test time (faster)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = PseudolabelSettings(
        annotations=args.bbox, images=args.i, dataset=args.d, output_folder=args.o, configuration=args.c, fold=args.f,
        trainer=args.tr, plans=args.p, checkpoint=args.chk,
        phases=None if [p.lower() for p in args.phases] == ["all"] else tuple(args.phases),
        categories=tuple(args.categories) if args.categories else None,
        margin_mm=None if args.keep_outside else args.margin_mm, organ_label=args.organ_label,
        tumour_label=args.tumour_label, as_dataset=args.as_dataset, save_boxes=args.save_boxes, device=args.device,
        step_size=args.step_size, use_mirroring=not args.disable_tta, overwrite=args.overwrite)
    try:
        pseudolabel_folder(settings)
    except (PseudolabelError, AnnotationError, FileNotFoundError, FileExistsError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
