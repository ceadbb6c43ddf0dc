"""``tumorsynth_evaluate``: the papers' metrics, lesion detection by size and paired tests against baselines.

Usage::

    tumorsynth_evaluate -ref LABELS_FOLDER -pred PRED_FOLDER [-baseline BASELINE_FOLDER ...] [-djfile dataset.json]
        [-l 2 | -l tumour ...] [--tolerance-mm 5] [--min-overlap 0] [--size-bins-mm 5 10 20]
        [--lesion-labels tumour ...] [-np 4] -o REPORT_FOLDER [--overwrite] [--allow-missing]

Without a dataset.json (none given with -djfile, none in -pred or beside -ref) the label values of ``-l`` are the
labels, and the file ending is inferred from the files of -ref, as with ``nnUNetv2_evaluate_simple -l``.

Argument parsing and one call of :func:`nnunetv2_tumorsynth.evaluation.evaluate_folders`. Errors are one line
on stderr and nothing is written: exit code 1 when an input file is unusable (truncated, corrupt or unreadable,
or holding label values that dataset.json or -l does not declare), 2 for anything else (arguments, dataset.json,
folders, geometry mismatches, missing cases).
"""

from __future__ import annotations

import argparse

from nnunetv2.configuration import default_num_processes

from nnunetv2_tumorsynth.evaluation import DEFAULT_SIZE_BINS_MM, UndeclaredLabelValues, evaluate_folders
from nnunetv2_tumorsynth.files import CorruptFile


def one_line(error: BaseException) -> str:
    """The error's message on one line."""
    return " ".join(line.strip() for line in str(error).splitlines())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Evaluate predicted label maps against references (nnU-Net folder layout): Dice, surface Dice "
        "at a tolerance in mm, precision, recall, HD and HD95 in mm (each image's own spacing), lesion-wise "
        "detection by size, and one-tailed paired tests (t-test, Wilcoxon) against baseline folders. Writes "
        "summary.json, cases.csv, lesions.csv, report.md and PNG figures into -o."
    )
    parser.add_argument("-ref", required=True, help="folder of reference label maps, e.g. labelsTs or gt_segmentations")
    parser.add_argument("-pred", required=True, help="folder of predicted label maps (same file names), e.g. the "
                        "output of nnUNetv2_predict")
    parser.add_argument("-baseline", nargs="+", action="extend", default=[], metavar="BASELINE_FOLDER",
                        help="prediction folder(s) to compare with; cases are paired by file name")
    parser.add_argument("-djfile", default=None, help="dataset.json (labels, file ending); default: dataset.json in "
                        "-pred, else in the parent of -ref, else none (then -l gives the label values)")
    parser.add_argument("-l", nargs="+", action="extend", default=None, metavar="LABEL",
                        help="labels to evaluate, by name or value (default: every foreground label); without a "
                        "dataset.json, the label values of the files besides background 0")
    parser.add_argument("--tolerance-mm", type=float, default=5.0, help="surface Dice tolerance in mm (default 5)")
    parser.add_argument("--min-overlap", type=float, default=0.0,
                        help="fraction of a reference lesion's voxels that must be predicted for it to count as "
                        "detected (default 0: any overlapping voxel)")
    parser.add_argument("--size-bins-mm", type=float, nargs="*", default=list(DEFAULT_SIZE_BINS_MM), metavar="MM",
                        help="edges of the lesion size bins, equivalent-sphere radius in mm (default 5 10 20)")
    parser.add_argument("--lesion-labels", nargs="+", default=None, metavar="LABEL",
                        help="labels that get the per-lesion analysis (default: evaluated labels named like a "
                        "tumour, else all evaluated labels)")
    parser.add_argument("-np", type=int, default=default_num_processes,
                        help=f"cases evaluated in parallel (default {default_num_processes})")
    parser.add_argument("-o", required=True, help="report folder (refused if it exists, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="write into an existing report folder")
    parser.add_argument("--allow-missing", action="store_true",
                        help="exit 0 when cases of -ref have no prediction (they are listed and left out either way)")
    args = parser.parse_args(argv)
    try:
        evaluate_folders(args.ref, args.pred, baselines=args.baseline, dataset_json=args.djfile, labels=args.l,
                         tolerance_mm=args.tolerance_mm, min_overlap=args.min_overlap,
                         size_bins_mm=args.size_bins_mm, lesion_labels=args.lesion_labels, num_processes=args.np,
                         output_folder=args.o, overwrite=args.overwrite, allow_missing=args.allow_missing,
                         verbose=True)
    except (CorruptFile, UndeclaredLabelValues) as error:
        parser.exit(1, f"tumorsynth_evaluate: error: {one_line(error)}\n")
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        parser.exit(2, f"tumorsynth_evaluate: error: {one_line(error)}\n")


if __name__ == "__main__":
    main()
