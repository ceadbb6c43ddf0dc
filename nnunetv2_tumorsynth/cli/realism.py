"""``tumorsynth_realism``: synthetic tumours against the real tumours of the same dataset, feature by feature.

Usage::

    tumorsynth_realism -s SYNTHETIC -o OUT [--real DATASET] [--source DATASET] [--shell-mm 10]
        [-d DATASET -c CONFIGURATION -p PLANS] [--overwrite]

SYNTHETIC is a dataset written by ``tumorsynth_generate`` (``--replace-real`` or not; folder, id or name)
or a trainer's synthesis bank. Writes realism.md / .json, realism_features.csv (one row per tumour) and
realism_histograms.png. Everything is done by :func:`nnunetv2_tumorsynth.inspection.realism.realism`.
"""

from __future__ import annotations

import argparse
import os

from nnunetv2_tumorsynth.cli import add_bank_location_arguments
from nnunetv2_tumorsynth.inspection.items import PreviewInputError
from nnunetv2_tumorsynth.inspection.realism import realism


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Realism statistics: volume, contrast to the organ, internal heterogeneity, border gradient and "
        "sphericity of each synthetic and each real tumour; histograms side by side (PNG) and a two-sample "
        "Kolmogorov-Smirnov statistic per feature (Markdown, JSON, CSV).")
    parser.add_argument("-s", "--synthetic", required=True,
                        help="a dataset written by tumorsynth_generate (folder, id or name) or a synthesis_bank folder")
    parser.add_argument("-o", required=True, help="output folder")
    parser.add_argument("--real", default=None,
                        help="raw dataset with the real tumours (default: the generated dataset's source dataset; "
                             "a bank is compared with its own dataset's preprocessed cases)")
    parser.add_argument("--source", default=None,
                        help="raw dataset of the generated images' source cases, if the record's paths moved")
    parser.add_argument("--shell-mm", type=float, default=None,
                        help="organ reference = organ within this distance of each tumour (default: the whole organ)")
    add_bank_location_arguments(parser)
    parser.add_argument("--organ-label", default=None, help="organ label name or value (default from dataset.json)")
    parser.add_argument("--tumour-label", default=None, help="tumour label name or value (default from dataset.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in the output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        report = realism(args.synthetic, args.o, real=args.real, source=args.source, shell_mm=args.shell_mm,
                         dataset=args.d, configuration=args.c, plans_identifier=args.p, organ_label=args.organ_label,
                         tumour_label=args.tumour_label, overwrite=args.overwrite, progress=not args.no_progress)
    except (PreviewInputError, FileExistsError, FileNotFoundError, ValueError) as e:
        parser.exit(1, f"tumorsynth_realism: error: {e}\n")
    with open(os.path.join(args.o, "realism.md")) as f:
        print(f.read())
    print(f"mean KS statistic {report['mean_ks_statistic']:.3f} (texture features "
          f"{report['mean_ks_statistic_texture']:.3f}); wrote {args.o}")


if __name__ == "__main__":
    main()
