"""One module per ``tumorsynth_*`` command; each is a thin layer over the library."""

import argparse


def add_bank_location_arguments(parser: argparse.ArgumentParser) -> None:
    """-d / -c / -p: where a synthesis bank's preprocessed cases are, when the bank is not under $nnUNet_results."""
    parser.add_argument("-d", default=None, help="bank only: dataset, when the bank is not under $nnUNet_results")
    parser.add_argument("-c", default=None, help="bank only: configuration")
    parser.add_argument("-p", default=None, help="bank only: plans identifier")
