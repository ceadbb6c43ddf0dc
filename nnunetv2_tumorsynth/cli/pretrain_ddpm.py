"""``tumorsynth_pretrain_ddpm``: train the tumour-inpainting diffusion model on a fold's training tumours.

    tumorsynth_pretrain_ddpm -d 501 [502 ...] -c 3d_fullres -f 0 [-p nnUNetPlans] [--preset paper]
        [--epochs 5000] [--min-iterations 0] [--batch-size 1] [--lr 5e-5] [--crop Z Y X] [-device cuda|cpu]
        [--c | --overwrite] [--seed 0] [--val-fraction 0.1]

Defaults are per preset (``ddpm.training.PRESET_DEFAULTS``): the paper's recipe, and for ``tiny`` the CPU recipe
(lr 2e-3, batch 4, 300 epochs and at least 3,000 iterations; an explicit ``--epochs`` is trained as given
unless ``--min-iterations`` is given too).
    torchrun --nproc_per_node 4 $(which tumorsynth_pretrain_ddpm) -d 501 -c 3d_fullres -f 0

Writes ``$nnUNet_results/<first dataset>/tumorsynth_ddpm__<plans>__<configuration>/fold_<f>/``. The work is
done by ``nnunetv2_tumorsynth.ddpm.training.train_ddpm``; this module only parses arguments.
"""

from __future__ import annotations

import argparse
import sys

from nnunetv2_tumorsynth.cli import fold_argument
from nnunetv2_tumorsynth.ddpm.network import PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tumorsynth_pretrain_ddpm",
        description="Train the 3D diffusion model (DDPM) that inpaints tumour texture, on crops around the tumours "
        "of the training cases of one fold of nnU-Net's preprocessed data (the fold's validation cases stay "
        "unseen). Several datasets are pooled if they share spacing and normalisation.",
    )
    parser.add_argument("-d", nargs="+", required=True, metavar="DATASET",
                        help="dataset id(s) or name(s); output goes under the first one's results folder")
    parser.add_argument("-c", default="3d_fullres", help="nnU-Net configuration (default 3d_fullres)")
    parser.add_argument("-f", type=fold_argument, required=True, help="fold (0-4, or 'all')")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="network preset: paper (862 M parameters, Quinton et al. 2026, Table 1), fast (on-the-fly "
                        "synthesis), tiny (CPU tests). Default paper; with --c the checkpoint's")
    parser.add_argument("--epochs", type=int, default=None,
                        help="total epochs, one pass over the training tumours each (default 5000, as the paper; "
                        "tiny preset 300)")
    parser.add_argument("--min-iterations", type=int, default=None,
                        help="train at least this many iterations, adding epochs when the fold has few tumours "
                        "(default 0; tiny preset without --epochs: 3000)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="crops per iteration and process (default 1; tiny preset 4)")
    parser.add_argument("--crop", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="crop size in voxels, preprocessed axis order (default: the paper's 192 x 144 x 192 mm "
                        "converted to the plans' spacing, rounded to a multiple of the network's size divisor)")
    parser.add_argument("-device", choices=("cuda", "cpu"), default="cuda", help="default cuda")
    parser.add_argument("--c", action="store_true", dest="resume", help="continue from checkpoint_latest.pth")
    parser.add_argument("--overwrite", action="store_true", help="start over, replacing existing checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="fraction of the training cases with tumours held out, with all their tumours, for "
                        "the validation loss (default 0.1; at least one case when there are two or more; 0 = none)")
    parser.add_argument("--lr", type=float, default=None,
                        help="AdamW learning rate (default 5e-5, the paper's; tiny preset 2e-3)")
    parser.add_argument("--weight-decay", type=float, default=1e-5, help="AdamW weight decay (default 1e-5)")
    parser.add_argument("--ema-decay", type=float, default=0.999,
                        help="checkpoints hold an exponential moving average of the weights with this decay "
                        "(default 0.999; 0 = the trained weights)")
    parser.add_argument("--channel", type=int, default=0, help="input channel (modality) to learn (default 0)")
    parser.add_argument("--organ-label", default=None, help="organ label name or value if not found by name")
    parser.add_argument("--tumour-label", default=None, help="tumour label name or value if not found by name")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--c and --overwrite exclude each other")

    from nnunetv2_tumorsynth.ddpm.training import PRESET_DEFAULTS, TrainingSettings, train_ddpm

    defaults = PRESET_DEFAULTS[args.preset or "paper"]
    if args.min_iterations is None:  # an explicit --epochs is trained as given
        args.min_iterations = defaults["min_iterations"] if args.epochs is None else 0
    for name in ("epochs", "batch_size", "lr"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])

    settings = TrainingSettings(
        datasets=args.d,
        configuration=args.c,
        fold=args.f,
        plans_identifier=args.p,
        preset=args.preset,
        epochs=args.epochs,
        min_iterations=args.min_iterations,
        batch_size=args.batch_size,
        crop_size=args.crop,
        device=args.device,
        resume=args.resume,
        overwrite=args.overwrite,
        seed=args.seed,
        val_fraction=args.val_fraction,
        lr=args.lr,
        weight_decay=args.weight_decay,
        ema_decay=args.ema_decay,
        channel=args.channel,
        organ_label=args.organ_label,
        tumour_label=args.tumour_label,
        extra_log=["command: " + " ".join(["tumorsynth_pretrain_ddpm", *(argv if argv is not None else sys.argv[1:])])],
    )
    try:
        summary = train_ddpm(settings)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if summary["rank"] != 0:
        return
    if summary["iterations"]:
        print(f"speed: {summary['iterations_per_second']:.3f} training iterations/s per process")
    print(f"output: {summary['output_folder']}")


if __name__ == "__main__":
    main()
