"""Wall time per epoch of nnUNetTrainerSynthTumor over plain nnU-Net, same data and settings, one run.

    python benchmarks/bench_synth_overhead.py [--device cpu|cuda] [--preset tiny|fast] [--steps 50]
        [--probability 0.5] [--workdir /tmp/tumorsynth_bench]

Makes a phantom dataset, plans it with nnU-Net (tiny plans on CPU, nnU-Net's own plans with --full-plans),
pretrains a diffusion model of ``--preset`` for a few epochs, then trains, in this order, with the same
5 x 25-iteration schedule: nnUNetTrainerShort (plain), nnUNetTrainerSynthTumorShort (DDPM texture) and
nnUNetTrainerSynthTumorHeuristicShort. Epoch times are read from nnU-Net's own training logs; the first
epoch is dropped (start-up), medians of the rest are compared. On CUDA it also prints each training's peak
GPU memory (the most ``nvidia-smi`` reported while it ran, polled every 0.5 s: CUDA context and cache included).

Measured on an idle 2-core machine (no GPU), tiny plans, tiny DDPM, p = 0.5, reuse 10 (3 entries per epoch):

    --crop 16 32 32 --steps 20   plain 13.59 s/epoch; DDPM 15.89 (ratio 1.17, synthesis 2.17 s/epoch);
                                 heuristic 11.55 (0.85)
    (defaults: crop 32 64 64, 50 steps)  plain 15.50; DDPM 65.75 (4.24, synthesis 51.4 s/epoch);
                                 heuristic 14.46 (0.93)

Plain epochs vary by about +-15 % between runs on this machine (12.4-16.9 s), so ratios below ~1.15 are
within noise.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

BIN = os.path.dirname(sys.executable)
DATASET = "995"
NAME = "Dataset995_Phantom"


def sh(env, *cmd):
    start = time.time()
    result = subprocess.run([os.path.join(BIN, cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:])
        sys.exit(f"failed: {' '.join(cmd)}")
    return result.stdout, time.time() - start


class GpuMemoryPeak:
    """Polls ``nvidia-smi`` in a thread while a command runs; ``peak_mib`` is the most used on GPU 0."""

    def __init__(self) -> None:
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True).stdout.strip()
            except OSError:  # no nvidia-smi: the peak is reported as unknown
                return
            if out.isdigit():
                self.peak_mib = max(self.peak_mib, int(out))
            self._stop.wait(0.5)

    def __enter__(self) -> GpuMemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def epoch_times(folder: str) -> list[float]:
    log = sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]
    return [float(m) for m in re.findall(r"Epoch time: ([0-9.]+) s", open(log).read())]


def synthesis_seconds(folder: str) -> list[float]:
    log = sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]
    return [float(m) for m in re.findall(r"made \(mean volume [^)]*\) in ([0-9.]+) s", open(log).read())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps during training")
    parser.add_argument("--probability", type=float, default=0.5)
    parser.add_argument("--ddpm-epochs", type=int, default=2)
    parser.add_argument("--crop", type=int, nargs=3, default=(32, 64, 64), help="DDPM context crop, voxels z y x")
    parser.add_argument("--full-plans", action="store_true", help="nnU-Net's own plans instead of tiny plans")
    parser.add_argument("--workdir", default="/tmp/tumorsynth_bench")
    parser.add_argument("--reuse-workdir", action="store_true",
                        help="keep dataset, plans and DDPM of an earlier run in --workdir; retrain only the trainers")
    args = parser.parse_args()

    reuse = args.reuse_workdir and os.path.isdir(args.workdir)
    if os.path.exists(args.workdir) and not reuse:
        shutil.rmtree(args.workdir)
    env = os.environ.copy()
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[var] = os.path.join(args.workdir, var)
        os.makedirs(env[var], exist_ok=True)
    env.setdefault("nnUNet_n_proc_DA", "2")
    env.update(nnUNet_def_n_proc="1")
    env["nnUNet_extTrainer"] = sh(env, "tumorsynth_env", "--trainers-path")[0].strip()
    settings = os.path.join(args.workdir, "settings.json")
    with open(settings, "w") as f:
        json.dump({"probability": args.probability, "ddpm_steps": args.steps, "size": "small",
                   "preview_every": 0}, f)
    env["TUMORSYNTH_SETTINGS"] = settings

    plans = "nnUNetPlans" if args.full_plans else "tumorsynthTinyPlans"
    if not reuse:
        sh(env, "tumorsynth_make_phantom", "-d", DATASET, "-n", "10")
        sh(env, "nnUNetv2_plan_and_preprocess", "-d", DATASET, "-c", "3d_fullres", "-np", "2")
        if not args.full_plans:
            sh(env, "tumorsynth_tiny_plans", "-d", DATASET, "--features", "8", "16", "32", "--patch", "32", "64", "64")
        _, t = sh(env, "tumorsynth_pretrain_ddpm", "-d", DATASET, "-c", "3d_fullres", "-f", "0", "-p", plans,
                  "--preset", args.preset, "--epochs", str(args.ddpm_epochs), "--crop", *map(str, args.crop),
                  "-device", args.device)
        print(f"pretrained {args.preset} DDPM for {args.ddpm_epochs} epochs in {t:.0f} s")

    rows, peaks = {}, {}
    for trainer in ("nnUNetTrainerShort", "nnUNetTrainerSynthTumorShort", "nnUNetTrainerSynthTumorHeuristicShort"):
        memory = GpuMemoryPeak() if args.device == "cuda" else contextlib.nullcontext()
        with memory:
            sh(env, "nnUNetv2_train", DATASET, "3d_fullres", "0", "-p", plans, "-tr", trainer, "-device", args.device)
        if isinstance(memory, GpuMemoryPeak) and memory.peak_mib:
            peaks[trainer] = memory.peak_mib
        folder = os.path.join(env["nnUNet_results"], NAME, f"{trainer}__{plans}__3d_fullres", "fold_0")
        times = epoch_times(folder)[1:]
        rows[trainer] = (statistics.median(times), times, synthesis_seconds(folder)[1:])
    base = rows["nnUNetTrainerShort"][0]
    print(f"\ndevice {args.device}, plans {plans}, DDPM preset {args.preset}, {args.steps} DDIM steps, "
          f"p = {args.probability}; 5 epochs x 25 iterations, first epoch dropped")
    print(f"{'trainer':40s} {'median epoch s':>15s} {'ratio':>7s} {'synthesis s/epoch':>18s} {'peak GPU MiB':>13s}")
    for trainer, (median, _, synth) in rows.items():
        synth_txt = f"{statistics.median(synth):.2f}" if synth else "-"
        peak_txt = str(peaks[trainer]) if trainer in peaks else "-"
        print(f"{trainer:40s} {median:15.2f} {median / base:7.2f} {synth_txt:>18s} {peak_txt:>13s}")
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))


if __name__ == "__main__":
    main()
