"""``tumorsynth_generate``: an offline synthetic dataset (Quinton et al. 2026, section 2.6) as a new raw dataset.

Usage::

    tumorsynth_generate -d 501 -c 3d_fullres -f 0 [-p nnUNetPlans] -n 1000 --as-dataset 503 \\
        [--texture ddpm|heuristic] [--polarity darker|brighter|either] [--steps 250] [--sampler ddim] [--strength S] \\
        [--brightness model|data] [--deformation simplex|elastic] \\
        [--size data|paper|tiny|small|medium|large|mix] [--include-real] [--replace-real] [--seed S] \\
        [-device cuda|cpu] [--overwrite]

Everything is done by :func:`nnunetv2_tumorsynth.generate.generate_dataset`; see its module for how the
images are made and written.
"""

from __future__ import annotations

import argparse

from nnunetv2_tumorsynth.generate.generator import generate_dataset
from nnunetv2_tumorsynth.generate.settings import DEVICES, GenerateError, GenerateSettings
from nnunetv2_tumorsynth.synthesis.shape import DEFORMATIONS, SIZES
from nnunetv2_tumorsynth.synthesis.synthesise import SAMPLERS
from nnunetv2_tumorsynth.synthesis.texture import BRIGHTNESS, POLARITIES, TEXTURES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write $nnUNet_raw/Dataset<ID>_<name>: synthetic tumours (mask, placement and texture of the "
        "synthesis bank) added to the training cases of one fold, each image in its source case's original geometry "
        "and intensity scale, with splits_final.json that keeps every image in its source case's fold, and one "
        "record per image (synthesis_records.json/.csv). Interrupted runs resume when started again.")
    parser.add_argument("-d", required=True, help="source dataset id or name, e.g. 501")
    parser.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-f", default="0", help="fold whose training cases are the sources (default 0)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-n", type=int, default=None,
                        help="number of synthetic images (default 1000; with --replace-real one per training case "
                             "with a tumour)")
    parser.add_argument("--as-dataset", type=int, required=True, help="id of the new raw dataset, e.g. 503")
    parser.add_argument("--name", default=None,
                        help="name of the new dataset after the id (default <source name>Synth, or "
                             "<source name>Replaced with --replace-real)")
    parser.add_argument("--texture", choices=TEXTURES, default="ddpm",
                        help="ddpm: the diffusion model of tumorsynth_pretrain_ddpm (default); heuristic: Hu et al. "
                             "2023's hand-made texture, no model needed")
    parser.add_argument("--polarity", choices=list(POLARITIES), default="either",
                        help="heuristic texture: tumours darker or brighter than the organ at random (default), "
                             "darker (Hu et al. 2023; portal venous and delayed phases) or brighter (arterial phase)")
    parser.add_argument("--steps", type=int, default=250, help="diffusion sampling steps (default 250, the paper's)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="default ddim")
    parser.add_argument("--strength", type=float, default=None,
                        help="diffusion fills start from noise (1, the default and the paper's) or from the "
                             "calibrated heuristic tumour noised to this share of the schedule (SDEdit, below 1; "
                             "docs/ddpm.md)")
    parser.add_argument("--brightness", choices=BRIGHTNESS, default=None,
                        help="diffusion fills take the contrast, spread and large-scale variation drawn from the "
                             "fold's annotated tumours (data, the default, as the trainers) or keep the model's "
                             "(model); docs/ddpm.md")
    parser.add_argument("--checkpoint", default=None,
                        help="diffusion checkpoint (default: the one tumorsynth_pretrain_ddpm wrote for this dataset, "
                             "plans, configuration and fold)")
    parser.add_argument("--deformation", choices=[d or "none" for d in DEFORMATIONS], default="simplex",
                        help="mask deformation (default simplex)")
    parser.add_argument("--size", choices=SIZES, default="data",
                        help="tumour size: data (default: drawn from the fold's annotated tumours, Hu et al. 2023's "
                             "sizes when it has fewer than 3; the heuristic texture's contrast, internal SD and edge "
                             "too, also with --replace-real) or a preset (paper: semi-axes N(27, 4.5) mm; heuristic "
                             "texture with Hu et al. 2023's priors)")
    parser.add_argument("--include-real", action="store_true", help="also copy the fold's real training cases")
    parser.add_argument("--replace-real", action="store_true",
                        help="replace each real tumour by a synthetic one in the same mask (visual Turing test, "
                             "realism statistics) instead of adding a tumour")
    parser.add_argument("--margin-mm", type=float, default=5.0,
                        help="minimum distance between a new tumour and existing tumours, mm (default 5)")
    parser.add_argument("--avoid-vessels", action="store_true", help="keep new tumours away from bright vessels")
    parser.add_argument("--organ-label", default=None, help="organ label name or value (default from dataset.json)")
    parser.add_argument("--tumour-label", default=None, help="tumour label name or value (default from dataset.json)")
    parser.add_argument("--seed", type=int, default=0, help="image i uses numpy.random.default_rng([seed, i])")
    parser.add_argument("-device", choices=DEVICES, default="cuda", help="default cuda")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="diffusion crops per network evaluation, and images whose tumours are sampled together "
                             "(default 4); the images depend on it through their random draws only, not in "
                             "distribution (the heuristic texture makes one image at a time)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset with this id, and restart an unfinished generation that "
                             "was made with other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    settings = GenerateSettings(
        dataset=args.d, as_dataset=args.as_dataset, configuration=args.c, fold=args.f, plans=args.p,
        num_images=args.n, name=args.name, texture=args.texture, heuristic_polarity=args.polarity,
        ddpm_steps=args.steps,
        ddpm_sampler=args.sampler, checkpoint=args.checkpoint,
        **({} if args.strength is None else {"ddpm_strength": args.strength}),
        **({} if args.brightness is None else {"ddpm_brightness": args.brightness}),
        deformation=None if args.deformation == "none" else args.deformation,
        size=args.size, include_real=args.include_real, replace_real=args.replace_real, margin_mm=args.margin_mm,
        avoid_vessels=args.avoid_vessels, organ_label=args.organ_label, tumour_label=args.tumour_label,
        seed=args.seed, device=args.device, batch_size=args.batch_size, overwrite=args.overwrite)
    try:
        folder = generate_dataset(settings, progress=not args.no_progress)
    except (GenerateError, FileExistsError, FileNotFoundError) as e:
        parser.exit(1, f"tumorsynth_generate: error: {e}\n")
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
