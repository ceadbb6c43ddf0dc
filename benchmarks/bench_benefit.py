"""Benchmark: do synthetic tumours help when annotated tumours are scarce? (Quinton et al. 2026; Hu et al. 2023)

Everything runs through the real commands, on phantoms, in private nnU-Net folders under ``--workdir``:

1. Three phantom datasets that share one held-out test set (``--test`` cases, every one with 1-3 tumours of
   4-11 mm radius, ``tumorsynth_make_phantom --test-seed``) and differ only in their training cases:
   ``Scarce`` (``--train`` cases, only ``--annotated`` of them with tumours, the others tumour-free),
   ``Full`` (every training case with tumours) and ``Free`` (no tumour at all: the label-free setting of
   Hu et al. 2023). ``nnUNetv2_plan_and_preprocess`` and ``tumorsynth_tiny_plans`` (same plans for all).
   With ``--data real_mr`` the three datasets (same ids, same Scarce / Full / Free split, one shared test set)
   come instead from ``real_mr_dataset.write_real_mr_dataset``: augmented copies of one real abdominal MR with
   1-3 hypointense liver lesions of 4-16 mm equivalent radius drawn by that script's own recipe (not the
   project's synthesis): anatomy and lesions the project did not draw. All its lesions are darker than the liver.
2. ``tumorsynth_pretrain_ddpm`` on the Scarce training tumours (tiny preset and its CPU recipe: lr 2e-3, batch 4,
   at least 3,000 iterations; CPU).
3. Arms, each trained ``--runs`` times (independent runs: different random initialisation and augmentation)
   with the same plans and the same iteration budget (``-tr ..._<E>epochs``, 250 iterations per epoch):

   ===========  ===========  =====================================================================
   arm          dataset      trainer
   ===========  ===========  =====================================================================
   plain        Scarce       nnUNetTrainer_<E>epochs (nnU-Net's own)
   ddpm         Scarce       nnUNetTrainerSynthTumor_<E>epochs (the tiny DDPM of step 2)
   heur         Scarce       nnUNetTrainerSynthTumorHeuristic_<E>epochs
   free         Free         nnUNetTrainerSynthTumorHeuristic_<E>epochs (no real tumour)
   full         Full         nnUNetTrainer_<E>epochs (every tumour annotated)
   gated        Scarce       as ddpm, with the quality gate ``min_contrast_sd: "data"``
   heur_before  Scarce       as heur, calibration off (size "small", contrast sign at random)
   ddpm_before  Scarce       as ddpm, calibration off and the checkpoint's intensity range dropped
   strength     Scarce       as ddpm, fills start from the calibrated tumour: ``ddpm_strength: 0.7``
   ddpm_model   Scarce       as ddpm, fills keep the model's brightness: ``ddpm_brightness: "model"``
   ===========  ===========  =====================================================================

   Synthetic tumours use the trainers' defaults: size "data" (sizes, and for the heuristic texture contrast,
   internal SD and edge, drawn from the fold's annotated training tumours, never from the test cases; the
   label-free arm has none and uses Hu et al. 2023's priors); DPM-Solver++(2M), 5 steps, for the DDPM arms. The
   label-free arm uses p = 1 (``ARM_SETTINGS``), the others the trainers' p = 0.5. Label-free heuristic tumours
   (free) have the polarity of ``--heuristic-polarity`` (default: the trainers' default, "either"; "darker" is
   Hu et al. 2023's); calibrated ones (heur) take the sign of the fold's tumours.
4. ``nnUNetv2_predict`` on the test set; ``tumorsynth_evaluate`` of every arm with the plain arm of the same
   run as baseline (tumour Dice, NSD at 2 mm, lesion sensitivity by size bin, paired tests). With
   ``--postprocess`` every arm's predictions also go through ``tumorsynth_postprocess`` (predicted tumours below
   half the radius of the smallest Scarce training tumour removed; one threshold for every arm) and are
   evaluated again as ``<arm>_pp`` against ``plain_pp``.
5. One table: mean ± std over runs; per-run report folders under ``<workdir>/reports``. The phantom's tumours
   are darker or brighter than the organ (half each in expectation); the table gives the sensitivity for each
   polarity separately (``lesion_polarities``: the tumour's mean against the organ's mean in the raw image).

Run::

    python benchmarks/bench_benefit.py [--workdir /tmp/bench_benefit] [--runs 3] [--epochs 10] \\
        [--train 8] [--annotated 2] [--test 12] [--features 8 16 32] [--arms plain ddpm heur free full gated] \\
        [--heuristic-polarity either|darker|brighter] [--data phantom|real_mr] [--real-mr-source DIR] [--postprocess]

Measured: see the README section "Does it help?" (the figures, the command and the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np
from _common import (
    TINY_PLANS,
    argument_parser,
    checkpoint_without_range,
    nnunet_env,
    phantom_commands,
    run_cli,
    trainers_path,
)

DATASETS = {"Scarce": 961, "Full": 962, "Free": 963}
ARMS = {  # arm: (dataset, trainer without the _<E>epochs suffix)
    "plain": ("Scarce", "nnUNetTrainer"),
    "ddpm": ("Scarce", "nnUNetTrainerSynthTumor"),
    "heur": ("Scarce", "nnUNetTrainerSynthTumorHeuristic"),
    "free": ("Free", "nnUNetTrainerSynthTumorHeuristic"),
    "full": ("Full", "nnUNetTrainer"),
    "gated": ("Scarce", "nnUNetTrainerSynthTumor"),  # with the quality gate (ARM_SETTINGS)
    "heur_before": ("Scarce", "nnUNetTrainerSynthTumorHeuristic"),  # calibration off (ARM_SETTINGS)
    "ddpm_before": ("Scarce", "nnUNetTrainerSynthTumor"),  # calibration off, checkpoint without intensity range
    "strength": ("Scarce", "nnUNetTrainerSynthTumor"),  # SDEdit start from the calibrated tumour (ARM_SETTINGS)
    "ddpm_model": ("Scarce", "nnUNetTrainerSynthTumor"),  # fills keep the model's brightness (ARM_SETTINGS)
}
SYNTH_SETTINGS = {"preview_every": 0}  # the trainers' defaults otherwise (DDPM: DPM-Solver++(2M), 5 steps)
# The label-free arm has no real tumour: every sample gets a synthetic one (Hu et al. 2023 put synthetic tumours
# into every healthy scan). At p = 0.5 and 1,250 iterations the network did not segment even the synthetic
# tumours of its own bank (measured on training cases, never on the test set).
# The "before" arms switch calibration off as it was before it existed: size "small" (Hu et al. 2023's priors for
# sizes and, for the heuristic texture, contrast, grain and edge), heuristic contrast sign at random, and (ddpm)
# the sampler clamps to the crop's range widened by 50 % (a copy of the checkpoint without ``intensity_range``).
# Everything else (DDPM model, sampler, steps) is the same as in the "after" arms.
ARM_SETTINGS = {"free": {"probability": 1.0}, "gated": {"min_contrast_sd": "data"},
                "heur_before": {"size": "small", "heuristic_polarity": "either"}, "ddpm_before": {"size": "small"},
                "strength": {"ddpm_strength": 0.7}, "ddpm_model": {"ddpm_brightness": "model"}}


def sh(cmd: list[str], env: dict, log: str) -> float:
    """Run a command of this environment, echoed and logged; fail loudly with its output; return its seconds."""
    seconds = run_cli(cmd, env, echo=True, log=log).seconds
    print(f"  {seconds:.0f} s", flush=True)
    return seconds


def needed_datasets(arms: list[str]) -> list[str]:
    """The datasets the arms train on; Scarce always (its imagesTs / labelsTs are the shared test set)."""
    return [name for name in DATASETS if name == "Scarce" or any(ARMS[arm][0] == name for arm in arms)]


def planned(env: dict, name: str) -> bool:
    return os.path.isfile(os.path.join(env["nnUNet_preprocessed"], f"Dataset{DATASETS[name]}_{name}",
                                       f"{TINY_PLANS}.json"))


def make_datasets(env: dict, args: argparse.Namespace, log: str) -> None:
    """The datasets of ``args.arms`` that are not planned yet (an existing one is kept: --reuse adds arms)."""
    for name in needed_datasets(args.arms):
        if planned(env, name):
            continue
        dataset_id = DATASETS[name]
        annotated = {"Scarce": args.annotated, "Full": args.train, "Free": 0}[name]
        commands = phantom_commands(
            dataset_id,
            phantom=["--name", name, "-n", str(args.train), "--n-test", str(args.test), "--tumour-cases",
                     str(annotated), "--tumour-free-every", "0", "--seed", str(args.seed), "--test-seed",
                     str(args.seed + 1000)],
            plan=["--verify_dataset_integrity"],
            tiny_plans=["--features", *map(str, args.features), "--patch", *map(str, args.patch), "--batch",
                        str(args.batch)])
        if args.data == "real_mr":  # written in-process instead of tumorsynth_make_phantom; same planning after
            write_real_mr(env, args, name, dataset_id, annotated, log)
            commands = commands[1:]
        for cmd in commands:
            sh(cmd, env, log)


def write_real_mr(env: dict, args: argparse.Namespace, name: str, dataset_id: int, annotated: int, log: str) -> None:
    """One dataset of real_mr_dataset.py (the workdir is the benchmark's own: an existing one is replaced)."""
    from real_mr_dataset import DEFAULT_SOURCE, summary, write_real_mr_dataset

    call = (f"write_real_mr_dataset({env['nnUNet_raw']!r}, {dataset_id}, {name!r}, n_train={args.train}, "
            f"n_annotated={annotated}, n_test={args.test}, seed={args.seed}, test_seed={args.seed + 1000})")
    print("$", call, flush=True)
    start = time.perf_counter()
    folder = write_real_mr_dataset(env["nnUNet_raw"], dataset_id, name, args.train, annotated, args.test, args.seed,
                                   args.seed + 1000, overwrite=True, source_dir=args.real_mr_source or DEFAULT_SOURCE)
    print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    with open(log, "a") as f:
        f.write(f"$ {call}\n{summary(folder)}\n")


def run_env(env: dict, workdir: str, run: int, arm: str = "plain") -> dict:
    """Each run trains into its own nnUNet_results, so runs of the same trainer do not collide; an arm that trains
    the same trainer on the same dataset as an earlier arm (gated) gets its own as well."""
    shares = list(ARMS.values()).index(ARMS[arm]) != list(ARMS).index(arm)
    results = os.path.join(workdir, f"results_run{run}" + (f"_{arm}" if shares else ""))
    for name, dataset_id in DATASETS.items():  # the DDPM (trained once) is found by the trainers through the env
        os.makedirs(os.path.join(results, f"Dataset{dataset_id}_{name}"), exist_ok=True)
    return {**env, "nnUNet_results": results}


def lesion_polarities(images: str, labels: str) -> dict[tuple[str, int], str]:
    """(case, lesion) -> "darker" | "brighter": each test tumour's mean against its organ's mean in the raw image.

    Lesions are numbered as ``tumorsynth_evaluate`` numbers them (connected components, full connectivity,
    in the label array's raster order), so they join with its lesions.csv."""
    import SimpleITK as sitk
    from scipy import ndimage

    polarities = {}
    for name in sorted(os.listdir(labels)):
        case = name[: -len(".nii.gz")]
        label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(labels, name)))
        image = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(images, f"{case}_0000.nii.gz")))
        components, n = ndimage.label(label == 2, structure=np.ones((3, 3, 3), bool))
        organ_mean = image[label == 1].mean()
        for i in range(1, n + 1):
            polarities[(case, i)] = "darker" if image[components == i].mean() < organ_mean else "brighter"
    return polarities


def sensitivity_by_polarity(lesions_csv: str, arm: str, polarities: dict[tuple[str, int], str]) -> dict:
    """Share of the darker and of the brighter test tumours that an arm detected (tumorsynth_evaluate's lesions)."""
    import csv

    found: dict[str, list[bool]] = {"darker": [], "brighter": []}
    with open(lesions_csv) as f:
        for row in csv.DictReader(f):
            if row["folder"] == arm and row["label"] == "2":
                found[polarities[(row["case"], int(row["lesion"]))]].append(row["detected"] == "True")
    return {f"{key}_sensitivity": float(np.mean(v)) if v else None for key, v in found.items()} | {
        f"{key}_n": len(v) for key, v in found.items()}


def summarise(summary_file: str, arm: str) -> dict:
    """The figures of one arm in one run from tumorsynth_evaluate's summary.json (arm = the prediction)."""
    with open(summary_file) as f:
        summary = json.load(f)
    folder = summary["folders"][arm]
    lesions = folder["lesions"]["2"]  # labels by value: 1 liver, 2 tumour (phantom)
    by_size = {b["bin"]: b for b in lesions["by_size"]}
    small = [b for name, b in by_size.items() if name.startswith("<")]
    row = {"dice": folder["mean"]["2"]["dice"], "nsd": folder["mean"]["2"]["nsd"],
           "sensitivity": lesions["sensitivity"], "fp_per_case": lesions["false_positives_per_case"],
           "small_sensitivity": small[0]["sensitivity"] if small else None,
           "small_n": small[0]["n_lesions"] if small else 0,
           "organ_dice": folder["mean"]["1"]["dice"]}
    for comparison in summary["comparisons"]:
        row["p_t"] = comparison["tests"]["2"]["dice"]["t_p_value"]
        row["p_wilcoxon"] = comparison["tests"]["2"]["dice"]["wilcoxon_p_value"]
    return row


def mean_std(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--workdir", default="/tmp/bench_benefit")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10, choices=(5, 10, 20, 50), help="250 iterations each")
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--annotated", type=int, default=2, help="training cases with annotated tumours (Scarce)")
    parser.add_argument("--test", type=int, default=12)
    parser.add_argument("--features", type=int, nargs=3, default=(8, 16, 32))
    parser.add_argument("--patch", type=int, nargs=3, default=(16, 32, 32))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--ddpm-epochs", type=int, default=None,
                        help="tumorsynth_pretrain_ddpm --epochs (one pass over the annotated tumours each; default: "
                             "the tiny preset's recipe, 300 epochs and at least 3000 iterations)")
    parser.add_argument("--arms", nargs="+", default=["plain", "ddpm", "heur", "free", "full"], choices=list(ARMS))
    parser.add_argument("--heuristic-polarity", choices=("either", "darker", "brighter"), default="either",
                        help="polarity of the heuristic tumours of the heur and free arms (SynthSettings)")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (the test set uses seed + 1000)")
    parser.add_argument("--data", choices=("phantom", "real_mr"), default="phantom",
                        help="datasets: phantoms (tumorsynth_make_phantom) or augmented copies of one real MR with "
                             "independently drawn lesions (benchmarks/real_mr_dataset.py)")
    parser.add_argument("--real-mr-source", metavar="DIR", default=None,
                        help="folder of mr_abdomen.nii.gz and mr_abdomen_seg.nii.gz (--data real_mr; default "
                             "../shared/data/real_mr beside the repository)")
    parser.add_argument("--postprocess", action="store_true",
                        help="also evaluate every arm after tumorsynth_postprocess (rows <arm>_pp; one threshold for "
                             "all arms, from the Scarce training tumours)")
    parser.add_argument("--reuse", action="store_true", help="keep an existing --workdir: skip finished steps")
    args = parser.parse_args()
    if "plain" not in args.arms:
        parser.error("the plain arm is the baseline of every comparison: keep it in --arms")

    work = os.path.abspath(args.workdir)
    if os.path.exists(work) and not args.reuse:
        shutil.rmtree(work)
    data_file = os.path.join(work, "data.txt")  # which datasets this workdir holds: --reuse must not mix them
    held = None
    if os.path.isfile(data_file):
        with open(data_file) as f:
            held = f.read().strip()
    elif os.path.isdir(os.path.join(work, "nnUNet_raw", f"Dataset{DATASETS['Scarce']}_Scarce")):
        held = "phantom"  # a workdir from before --data
    if held is not None and held != args.data:
        parser.error(f"{work} holds --data {held} datasets; use another --workdir or drop --reuse")
    env = nnunet_env(work)
    with open(data_file, "w") as f:
        f.write(args.data)
    env.update(nnUNet_n_proc_DA="2", nnUNet_def_n_proc="1", nnUNet_compile="false")
    env["nnUNet_extTrainer"] = trainers_path(env)
    settings_files = {}  # arm: its TUMORSYNTH_SETTINGS file
    for arm in ARMS:
        settings_files[arm] = os.path.join(work, f"synth_settings_{arm}.json")
        with open(settings_files[arm], "w") as f:
            json.dump({**SYNTH_SETTINGS, "heuristic_polarity": args.heuristic_polarity, **ARM_SETTINGS.get(arm, {})},
                      f)
    log = os.path.join(work, "commands.log")
    timings_file = os.path.join(work, "timings.json")  # kept across --reuse invocations: the whole cost
    timings: dict[str, float] = {}
    if args.reuse and os.path.isfile(timings_file):
        with open(timings_file) as f:
            timings = json.load(f)
    start_all = time.perf_counter()

    scarce = f"Dataset{DATASETS['Scarce']}_Scarce"
    if not all(planned(env, name) for name in needed_datasets(args.arms)):
        t0 = time.perf_counter()
        make_datasets(env, args, log)
        timings["datasets"] = timings.get("datasets", 0.0) + time.perf_counter() - t0
    test_images = os.path.join(env["nnUNet_raw"], scarce, "imagesTs")
    test_labels = os.path.join(env["nnUNet_raw"], scarce, "labelsTs")

    checkpoint = os.path.join(env["nnUNet_results"], scarce, f"tumorsynth_ddpm__{TINY_PLANS}__3d_fullres",
                              "fold_all", "checkpoint_best.pth")
    if {"ddpm", "gated", "ddpm_before", "strength", "ddpm_model"} & set(args.arms) and not os.path.isfile(checkpoint):
        timings["ddpm_pretraining"] = sh(
            ["tumorsynth_pretrain_ddpm", "-d", str(DATASETS["Scarce"]), "-c", "3d_fullres", "-f", "all", "-p",
             TINY_PLANS, "--preset", "tiny", *(["--epochs", str(args.ddpm_epochs)] if args.ddpm_epochs else []),
             "--crop", "16", "32", "32", "--val-fraction", "0", "-device", "cpu", "--overwrite"],
            env, log)  # the tiny preset's CPU recipe
    env["TUMORSYNTH_DDPM_CHECKPOINT"] = checkpoint
    arm_env = {arm: {} for arm in ARMS}
    if "ddpm_before" in args.arms:
        arm_env["ddpm_before"]["TUMORSYNTH_DDPM_CHECKPOINT"] = checkpoint_without_range(
            checkpoint, os.path.join(work, "ddpm_no_range.pth"))

    rows: dict[str, list[dict]] = {arm: [] for arm in args.arms + ([f"{a}_pp" for a in args.arms]
                                                                   if args.postprocess else [])}
    polarities = lesion_polarities(test_images, test_labels)
    for run in range(args.runs):
        renv = run_env(env, work, run)  # evaluation only; each arm trains and predicts in its own (below)
        predictions = {}
        for arm in args.arms:
            dataset, trainer = ARMS[arm]
            dataset_id = str(DATASETS[dataset])
            trainer = f"{trainer}_{args.epochs}epochs"
            out = os.path.join(work, "predictions", f"run{run}", arm)
            predictions[arm] = out
            if os.path.isdir(out) and args.reuse:
                continue
            timings[f"{arm}_run{run}_train"] = sh(
                ["nnUNetv2_train", dataset_id, "3d_fullres", "all", "-p", TINY_PLANS, "-tr", trainer, "-device",
                 "cpu"],
                {**run_env(env, work, run, arm), "TUMORSYNTH_SETTINGS": settings_files[arm], **arm_env[arm]}, log)
            timings[f"{arm}_run{run}_predict"] = sh(
                ["nnUNetv2_predict", "-d", dataset_id, "-c", "3d_fullres", "-f", "all", "-p", TINY_PLANS, "-tr",
                 trainer, "-i", test_images, "-o", out + ".partial", "-device", "cpu", "--disable_tta", "-npp", "1",
                 "-nps", "1"], run_env(env, work, run, arm), log)
            os.replace(out + ".partial", out)
            with open(timings_file, "w") as f:
                json.dump(timings, f, indent=1)
        for arm in args.arms if args.postprocess else []:
            predictions[f"{arm}_pp"] = predictions[arm] + "_pp"
            if not (os.path.isdir(predictions[f"{arm}_pp"]) and args.reuse):
                timings[f"{arm}_run{run}_postprocess"] = sh(
                    ["tumorsynth_postprocess", "-i", predictions[arm], "-o", predictions[f"{arm}_pp"], "-d",
                     str(DATASETS["Scarce"]), "-p", TINY_PLANS, "-f", "all", "--overwrite"], renv, log)
        for arm in rows:
            report = os.path.join(work, "reports", f"run{run}", arm)
            plain = "plain_pp" if arm.endswith("_pp") else "plain"
            baseline = [] if arm == plain else ["-baseline", predictions[plain]]
            timings[f"{arm}_run{run}_evaluate"] = sh(
                ["tumorsynth_evaluate", "-ref", test_labels, "-pred", predictions[arm], *baseline, "-l", "liver",
                 "tumour", "--tolerance-mm", "2", "-np", "2", "-o", report, "--overwrite"], renv, log)
            rows[arm].append(summarise(os.path.join(report, "summary.json"), arm)
                             | sensitivity_by_polarity(os.path.join(report, "lesions.csv"), arm, polarities))

    total = time.perf_counter() - start_all
    n_darker = sum(v == "darker" for v in polarities.values())
    header = ("arm", "tumour Dice", "tumour NSD@2mm", "lesion sens.", "sens. <5 mm",
              f"sens. darker ({n_darker})", f"sens. brighter ({len(polarities) - n_darker})", "FP/case",
              "organ Dice", "p (t, vs plain)", "p (Wilcoxon)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, r in rows.items():
        cells = [mean_std([x[key] for x in r]) for key in ("dice", "nsd", "sensitivity", "small_sensitivity",
                                                           "darker_sensitivity", "brighter_sensitivity",
                                                           "fp_per_case", "organ_dice")]
        for key in ("p_t", "p_wilcoxon"):
            cells.append("-" if arm in ("plain", "plain_pp") else
                         ", ".join("n/a" if x.get(key) is None else f"{x[key]:.3g}" for x in r))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    print(f"{args.runs} run(s) per arm, {args.epochs} x 250 iterations, plans {args.features} patch {args.patch}; "
          f"data {args.data}, test set: {args.test} cases; this invocation {total / 60:.1f} min; all steps (trainings, "
          f"predictions, DDPM pretraining, including earlier --reuse invocations) {sum(timings.values()) / 60:.1f} min")
    with open(os.path.join(work, "benefit.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows, "timings_s": timings, "total_s": total, "table": table}, f,
                  indent=2)


if __name__ == "__main__":
    main()
