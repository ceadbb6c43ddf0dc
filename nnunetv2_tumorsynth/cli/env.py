"""``tumorsynth_env``: print the shell line that lets nnU-Net find our trainers.

Usage::

    eval "$(tumorsynth_env)"            # sets nnUNet_extTrainer for this shell
    tumorsynth_env --trainers-path      # only the folder
"""

from __future__ import annotations

import argparse

from nnunetv2_tumorsynth.nnunet import trainers_export_line, trainers_path  # noqa: F401  (trainers_path: old import)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Print the shell line that points nnU-Net's nnUNet_extTrainer at the tumorsynth trainers. "
        'Use it as: eval "$(tumorsynth_env)"'
    )
    parser.add_argument("--trainers-path", action="store_true", help="print only the trainers folder")
    args = parser.parse_args(argv)
    print(trainers_path() if args.trainers_path else trainers_export_line())


if __name__ == "__main__":
    main()
