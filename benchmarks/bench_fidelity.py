"""Benchmark: do synthetic tumours look like the fold's real ones? Fidelity before and after calibration.

Uses the Scarce dataset (Dataset961_Scarce, tiny plans, fold "all") and the tiny DDPM that ``bench_benefit.py``
built in its ``--workdir`` (``--data phantom`` or ``--data real_mr``), so the figures describe exactly what the
benefit benchmark's arms trained with. Each variant is one ``tumorsynth_generate --replace-real`` run: every real
training tumour is replaced by a synthetic one in its own mask, ``-n`` images (the training cases with a tumour in
turn, a new random generator per image):

=================  =====================================================================================
variant            tumorsynth_generate arguments
=================  =====================================================================================
heuristic before   ``--texture heuristic --size mix``: Hu et al. 2023's priors, contrast sign at random
heuristic after    ``--texture heuristic`` (size "data"): contrast, internal SD and edge drawn from the
                   fold's annotated tumours (``synthesis.statistics.FoldStatistics.draw``)
ddpm before        ``--texture ddpm`` with a copy of the checkpoint without its recorded intensity range:
                   the sampler clamps the predicted x0 to the crop's own range widened by 50 %, as before
ddpm after         ``--texture ddpm``: the sampler clamps to the training tumours' and parenchyma's range
=================  =====================================================================================

Measured on the written raw images against their source cases, with ``synthesis.statistics.measure_tumours``
(the features the trainers' fidelity check uses; contrast and internal SD in SDs of a 5 mm ring of parenchyma,
so the raw scale does not matter):

- per replaced lesion, its contrast minus the contrast of the real tumour it replaced (median, ring SDs);
- the two-sample Kolmogorov-Smirnov statistic of contrast, internal SD, border gradient and large-scale
  brightness variation inside the tumour (``smooth_sd``), all synthetic lesions against the fold's real training
  tumours;
- the masked MSE of each fill against the tumour it replaced (nnU-Net's normalised units, as
  ``bench_ddpm_quality.py``; mean over lesions; these tumours were the DDPM's training data, so it compares
  samplers and step counts, not generalisation);
- DDPM: the share of fill voxels at or beyond the recorded clamp bounds (the raw fill values normalised back
  with the source case's own nnU-Net normalisation), beside the same share of the real tumours they replaced
  (the bounds are quantiles of the real intensities, so a perfect model would not reach 0).

Goal (issue "calibration"): |median contrast difference| <= 0.5 SD, KS <= 0.5 for both features, clamp share
<= 1 %. Run (after bench_benefit.py has built its workdir; the DDPM arm's checkpoint is needed)::

    python benchmarks/bench_fidelity.py --workdir /tmp/bench_benefit [-n 16] [--steps 50] \\
        [--sampler ddim|ddpm|dpm++2m] [--variants ...]
"""

from __future__ import annotations

import json
import os
import time

from _common import TINY_PLANS, argument_parser, checkpoint_without_range, nnunet_env, run_cli

DATASET = "Dataset961_Scarce"
VARIANTS = {  # name: (texture, extra tumorsynth_generate arguments, strip the checkpoint's intensity range)
    "heuristic before": ("heuristic", ["--size", "mix"], False),
    "heuristic after": ("heuristic", [], False),
    "ddpm before": ("ddpm", [], True),
    "ddpm after": ("ddpm", [], False),
}
FIRST_ID = 980  # variant k is written as dataset FIRST_ID + k


def scarce_source():
    """The Scarce dataset's fold "all" as tumorsynth_generate reads it (raw and preprocessed cases, normalisation);
    nnU-Net's folders must be set in ``os.environ`` (``main`` does)."""
    from nnunetv2_tumorsynth.generate.settings import GenerateSettings
    from nnunetv2_tumorsynth.generate.source import GenerationSource

    return GenerationSource(GenerateSettings(dataset=DATASET, as_dataset=999, fold="all", plans=TINY_PLANS,
                                             texture="heuristic", device="cpu"))


def generated_images(source, generated: str):
    """Per written image: (its record, its source case, the image as float64 (z, y, x), spacing in mm (z, y, x))."""
    import numpy as np
    import SimpleITK as sitk

    with open(os.path.join(generated, "synthesis_records.json")) as f:
        records = json.load(f)
    for record in records:
        case = source.load(record["source_case"])
        image_file = os.path.join(generated, "imagesTr", f"{record['image']}_0000{source.file_ending}")
        image = sitk.GetArrayFromImage(sitk.ReadImage(image_file)).astype(np.float64)
        yield record, case, image, case.raw_image.GetSpacing()[::-1]


def lesion_rows(source, generated: str, bounds: tuple[float, float] | None) -> list[dict]:
    """One row per replaced lesion: the synthetic and the real tumour's features, and (DDPM) clamp counts."""
    import numpy as np

    from nnunetv2_tumorsynth.synthesis.features import tumour_components
    from nnunetv2_tumorsynth.synthesis.statistics import measure_tumours, voxels_at_bounds

    rows = []
    for record, case, image, spacing in generated_images(source, generated):
        real_image = case.raw_array.astype(np.float64)
        labels = case.raw_label_array
        organ, tumour = source.organ_label, source.tumour_label
        synthetic = measure_tumours(image, labels, organ, tumour, spacing, record["image"])
        real = measure_tumours(real_image, labels, organ, tumour, spacing, record["source_case"])
        for k, component in enumerate(tumour_components(labels == tumour)):
            if np.array_equal(image[component], real_image[component]):
                continue  # left real (larger than the model's crop)
            row = {"image": record["image"], "case": record["source_case"], "lesion": k,
                   "radius_mm": real[k].radius_mm, "real_contrast_sd": real[k].contrast_sd,
                   "contrast_sd": synthetic[k].contrast_sd, "real_internal_sd": real[k].internal_sd,
                   "internal_sd": synthetic[k].internal_sd, "border_gradient_sd": synthetic[k].border_gradient_sd,
                   "smooth_sd": synthetic[k].smooth_sd,
                   # as bench_ddpm_quality.py: mean squared fill error over the mask, nnU-Net's normalised units
                   "masked_mse": float(np.mean((case.inverse.forward(image[component])
                                                - case.inverse.forward(real_image[component])) ** 2))}
            if bounds is not None:
                row["fill_voxels"] = int(component.sum())
                row["at_bounds"] = voxels_at_bounds(case.inverse.forward(image[component]), bounds)
                # the floor a perfect model would reach: the bounds are quantiles of the training tumours' and their
                # parenchyma's intensities (ddpm.data.RANGE_PERCENTILES), so some real tumour voxels lie beyond them
                row["real_at_bounds"] = voxels_at_bounds(case.inverse.forward(real_image[component]), bounds)
            rows.append(row)
    return rows


def new_place_rows(source, generated: str, bounds: tuple[float, float] | None) -> list[dict]:
    """One row per synthetic tumour placed at a new place (``--new-places``): its features and clamp counts."""
    import SimpleITK as sitk

    from nnunetv2_tumorsynth.synthesis.features import tumour_components
    from nnunetv2_tumorsynth.synthesis.statistics import measure_tumours, voxels_at_bounds

    rows = []
    for record, case, image, spacing in generated_images(source, generated):
        labels = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(generated, "labelsTr",
                                                                    f"{record['image']}{source.file_ending}")))
        synthetic = measure_tumours(image, labels, source.organ_label, source.tumour_label, spacing, record["image"])
        real_tumour = case.raw_label_array == source.tumour_label
        for k, component in enumerate(tumour_components(labels == source.tumour_label)):
            if real_tumour[component].any():
                continue  # a real tumour of the source case
            row = {"image": record["image"], "case": record["source_case"], "lesion": k,
                   "radius_mm": synthetic[k].radius_mm, "contrast_sd": synthetic[k].contrast_sd,
                   "internal_sd": synthetic[k].internal_sd, "border_gradient_sd": synthetic[k].border_gradient_sd,
                   "smooth_sd": synthetic[k].smooth_sd}
            if bounds is not None:
                row["fill_voxels"] = int(component.sum())
                row["at_bounds"] = voxels_at_bounds(case.inverse.forward(image[component]), bounds)
                row["real_at_bounds"] = 0  # no real tumour there
            rows.append(row)
    return rows


def summarise(rows: list[dict], real_tumours: list) -> dict:
    """The variant's figures: median paired contrast difference; per feature the KS statistic against the real
    tumours and both medians; clamp share."""
    import numpy as np
    from scipy import stats

    contrast = np.array([r["contrast_sd"] for r in rows])
    real_contrast = np.array([t.contrast_sd for t in real_tumours])
    if rows and "real_contrast_sd" in rows[0]:  # replaced tumours: paired with the tumour each replaced
        difference = float(np.median(contrast - [r["real_contrast_sd"] for r in rows]))
    else:  # new places: unpaired, difference of the medians
        difference = float(np.median(contrast) - np.median(real_contrast))
    out = {"lesions": len(rows), "median_contrast_difference_sd": difference}
    for feature, ks_key in (("contrast_sd", "ks_contrast"), ("internal_sd", "ks_internal_sd"),
                            ("border_gradient_sd", "ks_border_gradient"), ("smooth_sd", "ks_smooth")):
        if rows and feature not in rows[0]:
            continue
        synthetic = np.array([r[feature] for r in rows])
        real = np.array([getattr(t, feature) for t in real_tumours])
        out |= {ks_key: float(stats.ks_2samp(synthetic, real).statistic),
                f"median_{feature}": float(np.median(synthetic)), f"real_median_{feature}": float(np.median(real))}
    if rows and "masked_mse" in rows[0]:
        out["masked_mse"] = float(np.mean([r["masked_mse"] for r in rows]))  # mean over lesions
    if rows and "fill_voxels" in rows[0]:
        voxels = max(1, sum(r["fill_voxels"] for r in rows))
        out["clamp_share"] = sum(r["at_bounds"] for r in rows) / voxels
        out["real_clamp_share"] = sum(r["real_at_bounds"] for r in rows) / voxels
    return out


def real_training_tumours(source) -> list:
    """The fold's annotated training tumours, measured in the raw images as the synthetic ones are."""
    import numpy as np
    import SimpleITK as sitk

    from nnunetv2_tumorsynth.synthesis.statistics import measure_tumours

    tumours = []
    for name in source.cases_with(source.tumour_label):
        case = source.load(name)
        tumours += measure_tumours(case.raw_array.astype(np.float64), case.raw_label_array, source.organ_label,
                                   source.tumour_label, sitk.Image.GetSpacing(case.raw_image)[::-1], name)
    return tumours


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--workdir", default="/tmp/bench_benefit", help="bench_benefit.py's --workdir")
    parser.add_argument("-n", type=int, default=16, help="replaced images per variant")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps of the DDPM variants")
    parser.add_argument("--sampler", choices=("ddim", "ddpm", "dpm++2m"), default="ddim",
                        help="sampler of the DDPM variants")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None,
                        help="diffusion checkpoint of the DDPM variants (default: the one bench_benefit.py trained)")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name (keeps several runs apart)")
    parser.add_argument("--strength", type=float, default=None,
                        help="tumorsynth_generate --strength of the DDPM variants (default: its default)")
    parser.add_argument("--brightness", choices=("model", "data"), default=None,
                        help="tumorsynth_generate --brightness of the DDPM variants (default: its default)")
    parser.add_argument("--new-places", action="store_true",
                        help="new tumours at new places (size 'data') instead of --replace-real: what the trainers' "
                        "banks make; compared unpaired with the real training tumours")
    args = parser.parse_args()

    work = os.path.abspath(args.workdir)
    env = nnunet_env(work)
    env.update(nnUNet_def_n_proc="1", nnUNet_compile="false")
    checkpoint = args.checkpoint or os.path.join(env["nnUNet_results"], DATASET,
                                                 f"tumorsynth_ddpm__{TINY_PLANS}__3d_fullres", "fold_all",
                                                 "checkpoint_best.pth")
    needs_ddpm = any(VARIANTS[v][0] == "ddpm" for v in args.variants)
    if needs_ddpm and not os.path.isfile(checkpoint):
        parser.error(f"{checkpoint} does not exist: run bench_benefit.py --workdir {args.workdir} with the ddpm arm")
    with open(os.path.join(work, "data.txt")) as f:
        data = f.read().strip()
    bounds = None
    if needs_ddpm:
        import torch

        meta = torch.load(checkpoint, map_location="cpu", weights_only=True)["metadata"]
        bounds = tuple(meta["intensity_range"]["clamp"])

    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    source = scarce_source()
    real = real_training_tumours(source)
    results = {}
    for name in args.variants:
        texture, extra, strip = VARIANTS[name]
        dataset_id = FIRST_ID + list(VARIANTS).index(name)
        cmd = ["tumorsynth_generate", "-d", DATASET, "-f", "all", "-p", TINY_PLANS,
               *([] if args.new_places else ["--replace-real"]), "-n",
               str(args.n), "--as-dataset", str(dataset_id), "--name", "Fidelity" + name.title().replace(" ", ""),
               "--texture", texture, "--seed", str(args.seed), "-device", "cpu", "--overwrite", "--no-progress",
               *extra]
        if texture == "ddpm":
            used = checkpoint_without_range(checkpoint, os.path.join(work, "ddpm_no_range.pth")) if strip else \
                checkpoint
            cmd += ["--checkpoint", used, "--steps", str(args.steps), "--sampler", args.sampler,
                    *([] if args.strength is None else ["--strength", str(args.strength)]),
                    *([] if args.brightness is None else ["--brightness", args.brightness])]
        start = time.perf_counter()
        run_cli(cmd, env, echo=True, log=os.path.join(work, "fidelity_commands.log"))
        seconds = time.perf_counter() - start
        generated = os.path.join(env["nnUNet_raw"], f"Dataset{dataset_id}_{cmd[cmd.index('--name') + 1]}")
        measure = new_place_rows if args.new_places else lesion_rows
        rows = measure(source, generated, bounds if texture == "ddpm" else None)
        results[name] = summarise(rows, real) | {"seconds": seconds, "rows": rows}

    header = ("variant", "lesions", "median contrast diff (SD)", "KS contrast", "KS internal SD", "KS border gradient",
              "KS smooth", "contrast synth / real", "smooth synth / real", "internal SD synth / real",
              "clamp share synth / real", "masked MSE", "generate s")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        clamp = f"{100 * r['clamp_share']:.2f} / {100 * r['real_clamp_share']:.2f} %" if "clamp_share" in r else "-"
        cells = [str(r["lesions"]), f"{r['median_contrast_difference_sd']:+.2f}", f"{r['ks_contrast']:.2f}",
                 f"{r['ks_internal_sd']:.2f}", f"{r['ks_border_gradient']:.2f}" if "ks_border_gradient" in r else "-",
                 f"{r['ks_smooth']:.2f}" if "ks_smooth" in r else "-",
                 f"{r['median_contrast_sd']:+.2f} / {r['real_median_contrast_sd']:+.2f}",
                 f"{r['median_smooth_sd']:.2f} / {r['real_median_smooth_sd']:.2f}" if "ks_smooth" in r else "-",
                 f"{r['median_internal_sd']:.2f} / {r['real_median_internal_sd']:.2f}", clamp,
                 f"{r['masked_mse']:.3f}" if "masked_mse" in r else "-", f"{r['seconds']:.0f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    print(f"data {data}: {len(real)} real training tumours; -n {args.n} replaced images per variant, {args.sampler} "
          f"{args.steps} steps; clamp bounds {bounds}; checkpoint {checkpoint}")
    kind = "_newplaces" if args.new_places else ""
    with open(os.path.join(work, f"fidelity{kind}_{args.sampler}_{args.steps}steps{args.tag}.json"), "w") as f:
        json.dump({"args": vars(args), "data": data, "results": results, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
