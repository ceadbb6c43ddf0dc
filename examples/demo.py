"""The whole nnunetv2-tumorsynth workflow on a phantom dataset, on CPU, through the real commands.

    python examples/demo.py [--workdir demo_output]

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
    args = parser.parse_args()
    work = os.path.abspath(args.workdir)
    if os.path.exists(work):
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
    sh(env, "nnUNetv2_train", DATASET, "3d_fullres", "0", *plans, "-tr", "nnUNetTrainerTiny", "-device", "cpu")
    raw = os.path.join(env["nnUNet_raw"], "Dataset990_Phantom")
    pred = os.path.join(work, "predictions")
    sh(env, "nnUNetv2_predict", "-d", DATASET, "-c", "3d_fullres", "-f", "0", *plans, "-tr", "nnUNetTrainerTiny",
       "-i", os.path.join(raw, "imagesTs"), "-o", pred, "-device", "cpu", "-npp", "1", "-nps", "1")
    summary = os.path.join(env["nnUNet_results"], "Dataset990_Phantom",
                           "nnUNetTrainerTiny__tumorsynthTinyPlans__3d_fullres", "fold_0", "validation", "summary.json")
    dice = json.load(open(summary))["mean"]
    print("validation Dice per label:", {k: round(v["Dice"], 3) for k, v in dice.items()})
    print(f"predictions in {pred}")


if __name__ == "__main__":
    main()
