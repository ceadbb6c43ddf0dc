"""``tumorsynth_env``: print the shell line that lets nnU-Net find our trainers.

Usage::

    eval "$(tumorsynth_env)"            # sets nnUNet_extTrainer for this shell
    tumorsynth_env --trainers-path      # only the folder
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex


def trainers_path() -> str:
    """Folder holding the installed trainer modules (works for regular and editable installs)."""
    spec = importlib.util.find_spec("nnunetv2_tumorsynth_trainers")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "nnunetv2_tumorsynth_trainers is not installed. Reinstall the package: pip install nnunetv2-tumorsynth"
        )
    return os.path.abspath(list(spec.submodule_search_locations)[0])


def export_line() -> str:
    """``export nnUNet_extTrainer=...``, keeping any folders the user already listed there."""
    ours = trainers_path()
    existing = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p and p != ours]
    return "export nnUNet_extTrainer=" + shlex.quote(os.pathsep.join([ours, *existing]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Print the shell line that points nnU-Net's nnUNet_extTrainer at the tumorsynth trainers. "
        'Use it as: eval "$(tumorsynth_env)"'
    )
    parser.add_argument("--trainers-path", action="store_true", help="print only the trainers folder")
    args = parser.parse_args(argv)
    print(trainers_path() if args.trainers_path else export_line())


if __name__ == "__main__":
    main()
