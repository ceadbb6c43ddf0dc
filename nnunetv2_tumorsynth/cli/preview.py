"""``tumorsynth_preview``: PNG montages of synthetic tumours (generated dataset, ``--replace-real`` output, bank).

Usage::

    tumorsynth_preview -i INPUT -o OUT [--per-page 4] [--source DATASET] [--cases C ...] [--max N]
        [--fov-mm 60] [-d DATASET -c CONFIGURATION -p PLANS] [--overwrite]

INPUT is a dataset written by ``tumorsynth_generate`` (folder, id or name; "before" is its source raw image),
a trainer's ``synthesis_bank`` folder (or the ``fold_<f>`` folder holding it; "before" is the preprocessed
case), or a plain raw dataset (its real tumours, no "before"). Everything is done by
:func:`nnunetv2_tumorsynth.preview.preview`.
"""

from __future__ import annotations

import argparse

from nnunetv2_tumorsynth.cli import add_bank_location_arguments
from nnunetv2_tumorsynth.inspection.items import PreviewInputError
from nnunetv2_tumorsynth.inspection.preview import preview


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="PNG montages of synthetic tumours: per tumour, axial, coronal and sagittal slices through its "
        "centre, before and after, with the mask outline (red; other tumours cyan), intensity window from the "
        "organ; one PNG per page of N tumours, named after the cases and entries (index in preview_index.csv).")
    parser.add_argument("-i", required=True,
                        help="a dataset written by tumorsynth_generate (folder, id or name), a synthesis_bank folder "
                             "(or the trainer's fold_<f> folder), or a raw dataset (real tumours)")
    parser.add_argument("-o", required=True, help="output folder for the PNGs")
    parser.add_argument("--per-page", type=int, default=4, help="tumours per PNG (default 4)")
    parser.add_argument("--source", default=None,
                        help="raw dataset of the source cases of a generated dataset (default: the one its record "
                             "names)")
    parser.add_argument("--cases", nargs="+", default=None,
                        help="only these cases (generated, source or bank case ids)")
    parser.add_argument("--max", type=int, default=None, help="at most this many tumours")
    parser.add_argument("--fov-mm", type=float, default=60.0,
                        help="smallest field of view of a panel in mm (default 60; a larger tumour gets 2.5 x its "
                             "size)")
    add_bank_location_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace previews already in the output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        pages = preview(args.i, args.o, per_page=args.per_page, source=args.source, dataset=args.d,
                        configuration=args.c, plans_identifier=args.p, cases=args.cases, max_tumours=args.max,
                        fov_mm=args.fov_mm, overwrite=args.overwrite, progress=not args.no_progress)
    except (PreviewInputError, FileExistsError, FileNotFoundError, ValueError) as e:
        parser.exit(1, f"tumorsynth_preview: error: {e}\n")
    print(f"wrote {len(pages)} PNG page(s) to {args.o}")


if __name__ == "__main__":
    main()
