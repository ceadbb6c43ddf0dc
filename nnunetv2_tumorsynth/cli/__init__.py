"""One module per ``tumorsynth_*`` command; each is a thin layer over the library."""

import argparse


def add_bank_location_arguments(parser: argparse.ArgumentParser) -> None:
    """-d / -c / -p: where a synthesis bank's preprocessed cases are, when the bank is not under $nnUNet_results."""
    parser.add_argument("-d", default=None, help="bank only: dataset, when the bank is not under $nnUNet_results")
    parser.add_argument("-c", default=None, help="bank only: configuration")
    parser.add_argument("-p", default=None, help="bank only: plans identifier")


def fold_argument(value: str) -> int | str:
    """nnU-Net's fold argument (``-f``): an integer, or "all" (a model trained on every case)."""
    return value if value == "all" else int(value)
