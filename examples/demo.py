"""The whole nnunetv2-tumorsynth workflow on a phantom dataset, on CPU, through the real commands.

    python examples/demo.py [--workdir demo_output] [--overwrite]

Every step is a command a user would type; they are printed as they run. The nnU-Net folders live
under ``--workdir`` so the demo never touches your own nnU-Net data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

BIN = os.path.dirname(sys.executable)
DATASET = "990"


def sh(env: dict, *cmd: str) -> str:
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    result = subprocess.run([os.path.join(BIN, cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:], sep="\n")
        sys.exit(f"demo step failed: {' '.join(cmd)}")
    print(f"  ... done in {time.time() - start:.0f} s", flush=True)
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="demo_output")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing --workdir first")
    args = parser.parse_args()
    work = os.path.abspath(args.workdir)
    if os.path.exists(work):
        if not args.overwrite:
            sys.exit(f"{work} exists (an earlier demo?); pass --overwrite to replace it, or choose --workdir")
        shutil.rmtree(work)
    env = os.environ.copy()
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[var] = os.path.join(work, var)
        os.makedirs(env[var])
    env.update(nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1", nnUNet_compile="false")
    env["nnUNet_extTrainer"] = sh(env, "tumorsynth_env", "--trainers-path").strip()

    sh(env, "tumorsynth_make_phantom", "-d", DATASET, "-n", "8", "--n-test", "2")
    sh(env, "nnUNetv2_plan_and_preprocess", "-d", DATASET, "-c", "3d_fullres", "--verify_dataset_integrity", "-np", "2")
    sh(env, "tumorsynth_tiny_plans", "-d", DATASET)
    plans = ["-p", "tumorsynthTinyPlans"]
    cpu = ["-device", "cpu"]
    raw = os.path.join(env["nnUNet_raw"], "Dataset990_Phantom")
    results = os.path.join(env["nnUNet_results"], "Dataset990_Phantom")

    # 1. baseline nnU-Net and nnU-Net with diffusion-inpainted synthetic tumours (same short schedule)
    sh(env, "nnUNetv2_train", DATASET, "3d_fullres", "0", *plans, "-tr", "nnUNetTrainerTiny", *cpu)
    # the fold has only a handful of tumours: many epochs, a large learning rate (paper: 5e-5) and a
    # small crop keep this to a few CPU minutes; expect rough textures from so little training
    sh(env, "tumorsynth_pretrain_ddpm", "-d", DATASET, "-c", "3d_fullres", "-f", "0", *plans, "--preset", "tiny",
       "--epochs", "300", "--batch-size", "4", "--lr", "2e-3", "--crop", "16", "32", "32", *cpu)
    sh(env, "nnUNetv2_train", DATASET, "3d_fullres", "0", *plans, "-tr", "nnUNetTrainerSynthTumorTiny", *cpu)
    for trainer in ("nnUNetTrainerTiny", "nnUNetTrainerSynthTumorTiny"):
        sh(env, "nnUNetv2_predict", "-d", DATASET, "-c", "3d_fullres", "-f", "0", *plans, "-tr", trainer,
           "-i", os.path.join(raw, "imagesTs"), "-o", os.path.join(work, "predictions", trainer), *cpu,
           "-npp", "1", "-nps", "1")
        fold = os.path.join(results, f"{trainer}__tumorsynthTinyPlans__3d_fullres", "fold_0")
        dice = json.load(open(os.path.join(fold, "validation", "summary.json")))["mean"]
        print(f"  {trainer}: validation Dice per label", {k: round(v["Dice"], 3) for k, v in dice.items()},
              "(after 6 training iterations: a check of the pipeline, not of the method)")
    synth_folder = os.path.join(results, "nnUNetTrainerSynthTumorTiny__tumorsynthTinyPlans__3d_fullres", "fold_0")
    previews = sorted(f for f in os.listdir(synth_folder) if f.startswith("synthetic_tumours"))
    print("  synthetic tumours: previews", [os.path.join(synth_folder, f) for f in previews])

    # 2. box-only annotations: box-guided nnU-Net, then pseudo-masks for an LLD-MMRI-style folder
    sh(env, "nnUNetv2_train", DATASET, "3d_fullres", "0", *plans, "-tr", "nnUNetTrainerBBoxChannelTiny", *cpu)
    lld = make_lld_mmri_folder(raw, os.path.join(work, "lld_mmri"))
    sh(env, "tumorsynth_pseudolabel", "-bbox", os.path.join(lld, "Annotation.json"), "-i", os.path.join(lld, "images"),
       "-o", os.path.join(work, "pseudo_masks"), "-d", DATASET, "-c", "3d_fullres", "-f", "0", *plans,
       "-tr", "nnUNetTrainerBBoxChannelTiny", "--as-dataset", "991", *cpu)
    sh(env, "nnUNetv2_plan_and_preprocess", "-d", "991", "-c", "3d_fullres", "--verify_dataset_integrity", "-np", "1")
    print(f"done: everything is under {work}")


def make_lld_mmri_folder(raw: str, folder: str) -> str:
    """Box-only annotations in LLD-MMRI's layout, made from the phantom's test cases (boxes of the true tumours)."""
    import SimpleITK as sitk

    from nnunetv2_tumorsynth.boxes import lesion_boxes, write_lld_mmri

    cases = {}
    for i, case in enumerate(sorted(f[: -len(".nii.gz")] for f in os.listdir(os.path.join(raw, "labelsTs")))):
        label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(raw, "labelsTs", f"{case}.nii.gz")))
        series = os.path.join(folder, "images", f"patient{i}", "study0")
        os.makedirs(series)
        shutil.copyfile(os.path.join(raw, "imagesTs", f"{case}_0000.nii.gz"), os.path.join(series, "series0.nii.gz"))
        boxes = [b for lesion in lesion_boxes(label == 2) for b in lesion]
        cases[f"patient{i}"] = [{"studyUID": "study0", "seriesUID": "series0", "phase": "C+A", "boxes": boxes}]
    write_lld_mmri(cases, os.path.join(folder, "Annotation.json"))
    return folder


if __name__ == "__main__":
    main()
