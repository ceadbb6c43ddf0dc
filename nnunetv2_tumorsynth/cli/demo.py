"""``tumorsynth_demo``: the method shown working on phantoms, on a CPU, in one command.

    tumorsynth_demo [--workdir demo] [--seed 0] [--overwrite]

Argparse and one call of :func:`nnunetv2_tumorsynth.demo.run_demo`; see that module for what runs.
"""

from __future__ import annotations

import argparse

from nnunetv2_tumorsynth.demo import DemoSettings, run_demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="tumorsynth_demo",
        description="Plain nnU-Net vs nnU-Net with synthetic tumours when annotated tumours are scarce, on phantom "
        "data through the real commands (about 12 minutes on 2 CPU cores), then box-guided pseudo-labelling and "
        "offline generation. Prints each command, the comparison table and where the report and pictures are.")
    parser.add_argument("--workdir", default="demo", help="everything is written here (default ./demo)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete a work folder made by another version of the demo (or holding other files)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the phantom data (training cases; the held-out cases use seed + 1000)")
    args = parser.parse_args(argv)
    try:
        run_demo(DemoSettings(workdir=args.workdir, overwrite=args.overwrite, seed=args.seed))
    except (FileExistsError, RuntimeError) as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
