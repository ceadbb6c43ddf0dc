"""``tumorsynth_turing``: visual Turing test kit (Quinton et al. 2026 section 2.5; Hu et al. 2023 Table 2).

Usage::

    tumorsynth_turing export --real DATASET --replaced DATASET -o READERS --key-dir KEY [-k K] [--seed S]
        [--crop-margin-mm 20] [--pairing same|disjoint] [--overwrite]
    tumorsynth_turing score --key KEY/turing_key.json --sheets reader_A.csv reader_B.csv [-o OUT]

``export`` writes READERS/volumes/turing_###.nii.gz, READERS/reader_sheet.csv (id, answer) and
READERS/INSTRUCTIONS.txt, and the answer key KEY/turing_key.json in another folder. ``score`` prints the
Markdown report and writes turing_scores.md / .json. Everything is done by :mod:`nnunetv2_tumorsynth.inspection.turing`.
"""

from __future__ import annotations

import argparse
import os

from nnunetv2_tumorsynth.inspection.items import PreviewInputError
from nnunetv2_tumorsynth.inspection.turing import TuringError, export_from_replace_real
from nnunetv2_tumorsynth.inspection.turing_scores import score_and_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Visual Turing test: export shuffled volumes with real and synthetic tumours (the same cases with "
        "their real tumours replaced, from tumorsynth_generate --replace-real) under neutral ids with a separate "
        "answer key; score filled reader sheets (sensitivity, specificity, accuracy, Fleiss' kappa).")
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="write the readers' volumes and sheet, and the answer key")
    export.add_argument("--real", required=True, help="the real raw dataset (folder, id or name)")
    export.add_argument("--replaced", required=True,
                        help="the dataset written by tumorsynth_generate --replace-real from it (folder, id or name)")
    export.add_argument("-o", required=True, help="readers' folder (volumes/, reader_sheet.csv, INSTRUCTIONS.txt)")
    export.add_argument("--key-dir", required=True, help="folder for turing_key.json (not inside -o)")
    export.add_argument("-k", type=int, default=None,
                        help="volumes of each kind (default: every case available once)")
    export.add_argument("--seed", type=int, default=None,
                        help="selection and shuffling seed (default: random, written into the key)")
    export.add_argument("--crop-margin-mm", type=float, default=None,
                        help="crop every volume to the box of its organ and tumours (the real label) grown by this "
                             "margin in mm; real and synthetic volumes of a case get the same box (default: no crop)")
    export.add_argument("--crop-labels", type=int, nargs="+", default=None,
                        help="label values that define the crop box (default: the organ and tumour labels of "
                             "dataset.json)")
    export.add_argument("--pairing", choices=("same", "disjoint"), default="same",
                        help="same: the K synthetic volumes are the K real cases with their tumours replaced (the "
                             "paper's protocol, default); disjoint: real and synthetic volumes from different cases")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in these folders")

    score = commands.add_parser("score", help="score filled reader sheets against the key")
    score.add_argument("--key", required=True, help="turing_key.json (or its folder)")
    score.add_argument("--sheets", nargs="+", required=True,
                       help="filled reader sheets (CSV: id, answer = real | synthetic | unsure); reader = file name")
    score.add_argument("--names", nargs="+", default=None, help="reader names, one per sheet (default: file names)")
    score.add_argument("-o", default=None, help="write turing_scores.md and turing_scores.json here")
    args = parser.parse_args(argv)

    try:
        if args.command == "export":
            key = export_from_replace_real(args.real, args.replaced, args.o, args.key_dir, k=args.k, seed=args.seed,
                                           crop_margin_mm=args.crop_margin_mm, crop_labels=args.crop_labels,
                                           pairing=args.pairing, overwrite=args.overwrite)
            print(f"wrote {len(key['items'])} volumes ({key['k']} real, {key['k']} synthetic) to "
                  f"{os.path.join(args.o, 'volumes')}, the reader sheet {os.path.join(args.o, 'reader_sheet.csv')} "
                  f"and the key {os.path.join(args.key_dir, 'turing_key.json')} (seed {key['seed']})")
        else:
            _, markdown = score_and_report(args.sheets, args.key, args.names, args.o)
            print(markdown)
            if args.o:
                print(f"wrote turing_scores.md and turing_scores.json to {args.o}")
    except (TuringError, PreviewInputError, FileExistsError, FileNotFoundError) as e:
        parser.exit(1, f"tumorsynth_turing: error: {e}\n")


if __name__ == "__main__":
    main()
