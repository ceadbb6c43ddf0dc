"""Wall time per epoch of nnUNetTrainerSynthTumor (synchronous and background synthesis) over plain nnU-Net.

    python benchmarks/bench_synth_overhead.py [--device cpu|cuda] [--preset tiny|fast] [--steps 50]
        [--probability 0.5] [--crop 32 64 64] [--rounds 1] [--heuristic] [--workdir /tmp/tumorsynth_bench]
        [--background-threads 1] [--background-nice 0 [10 ...]] [--background-seconds S]

Makes a phantom dataset, plans it with nnU-Net (tiny plans on CPU, nnU-Net's own plans with --full-plans),
pretrains a diffusion model of ``--preset`` for a few epochs, then trains, in this order and with the same
5 x 25-iteration schedule, ``--rounds`` times: nnUNetTrainerShort (plain), nnUNetTrainerSynthTumorShort
with synchronous synthesis (``"background": false``), nnUNetTrainerSynthTumorShort with the background
generator (the default), and with ``--heuristic`` nnUNetTrainerSynthTumorHeuristicShort (background).
Each training starts from an empty output folder (no bank left by the previous one). Epoch times are read
from nnU-Net's own training logs, the synthesis figures (entries made, seconds the generator was busy,
seconds the training loop waited) from our per-epoch log line; the first epoch of every training is dropped
(start-up), and medians over the remaining epochs of all rounds are compared. The initial bank, made before
the first epoch, is reported on its own. On CUDA it also prints each training's peak GPU memory (the most
``nvidia-smi`` reported while it ran, polled every 0.5 s: CUDA context and cache included).

Measured on an idle 2-core machine (no GPU), tiny plans, tiny DDPM, p = 0.5, reuse 10 (3 entries per epoch),
before the background generator existed (all synchronous):

    --crop 16 32 32 --steps 20   plain 13.59 s/epoch; DDPM 15.89 (ratio 1.17, synthesis 2.17 s/epoch);
                                 heuristic 11.55 (0.85)
    (defaults: crop 32 64 64, 50 steps)  plain 15.50; DDPM 65.75 (4.24, synthesis 51.4 s/epoch);
                                 heuristic 14.46 (0.93)

Plain epochs vary by about +-15 % between runs on this machine (12.4-16.9 s), so ratios below ~1.15 are
within noise. For the synchronous/background comparison see the README (figures taken on a shared machine).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import threading

from _common import (
    TINY_PLANS,
    argument_parser,
    command_line,
    load_average,
    machine_line,
    nnunet_env,
    phantom_commands,
    run_cli,
    trainers_path,
)

DATASET = "995"
NAME = "Dataset995_Phantom"


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


def read_log(folder: str) -> str:
    return open(sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]).read()


def epoch_figures(log: str) -> dict[str, list[float]]:
    """Per epoch: nnU-Net's epoch time, and our synthesis line (entries made, generator busy s, training waited s)."""
    synth = re.findall(r"synthetic tumours: (\d+) made .*?generator busy ([0-9.]+) s, training waited ([0-9.]+) s",
                       log)
    return {"epoch_s": [float(m) for m in re.findall(r"Epoch time: ([0-9.]+) s", log)],
            "made": [float(m[0]) for m in synth], "busy_s": [float(m[1]) for m in synth],
            "waited_s": [float(m[2]) for m in synth]}


def initial_bank_seconds(log: str) -> float | None:
    m = re.search(r"initial bank \d+ entries in ([0-9.]+) s", log)
    return float(m[1]) if m else None


def median_or_dash(values: list[float], fmt: str = "{:.2f}") -> str:
    return fmt.format(statistics.median(values)) if values else "-"


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps during training")
    parser.add_argument("--probability", type=float, default=0.5)
    parser.add_argument("--ddpm-epochs", type=int, default=2)
    parser.add_argument("--crop", type=int, nargs=3, default=(32, 64, 64), help="DDPM context crop, voxels z y x")
    parser.add_argument("--full-plans", action="store_true", help="nnU-Net's own plans instead of tiny plans")
    parser.add_argument("--rounds", type=int, default=1, help="train every variant this many times, interleaved")
    parser.add_argument("--heuristic", action="store_true", help="also the heuristic texture (background mode)")
    parser.add_argument("--background-threads", type=int, default=None, help="setting background_threads")
    parser.add_argument("--background-nice", type=int, nargs="+", default=[0],
                        help="setting background_nice; several values: one background variant each")
    parser.add_argument("--background-seconds", type=float, default=None, help="setting background_seconds")
    parser.add_argument("--workdir", default="/tmp/tumorsynth_bench")
    parser.add_argument("--reuse-workdir", action="store_true",
                        help="keep dataset, plans and DDPM of an earlier run in --workdir; retrain only the trainers")
    args = parser.parse_args()

    reuse = args.reuse_workdir and os.path.isdir(args.workdir)
    if os.path.exists(args.workdir) and not reuse:
        shutil.rmtree(args.workdir)
    env = nnunet_env(args.workdir)
    env.setdefault("nnUNet_n_proc_DA", "2")
    env.update(nnUNet_def_n_proc="1")
    env["nnUNet_extTrainer"] = trainers_path(env)
    common = {"probability": args.probability, "ddpm_steps": args.steps, "size": "small", "preview_every": 0}
    background = {"background": True}
    for key in ("background_threads", "background_seconds"):
        if getattr(args, key) is not None:
            background[key] = getattr(args, key)
    variants = [  # (label, trainer, settings)
        ("plain nnU-Net", "nnUNetTrainerShort", common),
        ("SynthTumor DDPM synchronous", "nnUNetTrainerSynthTumorShort", {**common, "background": False}),
    ]
    for nice in args.background_nice:
        variants.append((f"SynthTumor DDPM background nice+{nice}", "nnUNetTrainerSynthTumorShort",
                         {**common, **background, "background_nice": nice}))
    if args.heuristic:
        variants.append(("SynthTumor heuristic background", "nnUNetTrainerSynthTumorHeuristicShort",
                         {**common, **background, "background_nice": args.background_nice[0]}))

    plans = "nnUNetPlans" if args.full_plans else TINY_PLANS
    if not reuse:
        tiny_plans = None if args.full_plans else ["--features", "8", "16", "32", "--patch", "32", "64", "64"]
        for cmd in phantom_commands(DATASET, phantom=["-n", "10"], tiny_plans=tiny_plans):
            run_cli(cmd, env)
        t = run_cli(["tumorsynth_pretrain_ddpm", "-d", DATASET, "-c", "3d_fullres", "-f", "0", "-p", plans,
                     "--preset", args.preset, "--epochs", str(args.ddpm_epochs), "--crop", *map(str, args.crop),
                     "-device", args.device], env).seconds
        print(f"pretrained {args.preset} DDPM for {args.ddpm_epochs} epochs in {t:.0f} s")

    load_before = load_average()
    figures = {label: {"epoch_s": [], "made": [], "busy_s": [], "waited_s": [], "initial_s": []}
               for label, _, _ in variants}
    peaks: dict[str, int] = {}
    for round_ in range(args.rounds):
        for label, trainer, settings in variants:
            path = os.path.join(args.workdir, "settings.json")
            with open(path, "w") as f:
                json.dump(settings, f)
            env["TUMORSYNTH_SETTINGS"] = path
            folder = os.path.join(env["nnUNet_results"], NAME, f"{trainer}__{plans}__3d_fullres", "fold_0")
            shutil.rmtree(folder, ignore_errors=True)  # no bank or checkpoint of an earlier variant or round
            memory = GpuMemoryPeak() if args.device == "cuda" else contextlib.nullcontext()
            with memory:
                seconds = run_cli(["nnUNetv2_train", DATASET, "3d_fullres", "0", "-p", plans, "-tr", trainer,
                                   "-device", args.device], env).seconds
            if isinstance(memory, GpuMemoryPeak) and memory.peak_mib:
                peaks[label] = max(peaks.get(label, 0), memory.peak_mib)
            log = read_log(folder)
            for key, values in epoch_figures(log).items():
                figures[label][key] += values[1:]  # first epoch dropped
            if initial_bank_seconds(log) is not None:
                figures[label]["initial_s"].append(initial_bank_seconds(log))
            print(f"round {round_ + 1}/{args.rounds}: {label}: {seconds:.0f} s", flush=True)

    base = statistics.median(figures["plain nnU-Net"]["epoch_s"])
    print(f"\ndevice {args.device}, plans {plans}, DDPM preset {args.preset}, crop {' '.join(map(str, args.crop))}, "
          f"{args.steps} DDIM steps, p = {args.probability}; 5 epochs x 25 iterations x {args.rounds} round(s), "
          f"first epoch of each training dropped; medians per epoch")
    print(f"{'variant':34s} {'epoch s':>8s} {'ratio':>6s} {'made':>5s} {'busy s':>7s} {'waited s':>9s} "
          f"{'waited %':>9s} {'initial bank s':>15s} {'peak GPU MiB':>13s}")
    for label, f in figures.items():
        median = statistics.median(f["epoch_s"])
        waited = f"{100 * statistics.median(f['waited_s']) / median:.1f}" if f["waited_s"] else "-"
        print(f"{label:34s} {median:8.2f} {median / base:6.2f} {median_or_dash(f['made'], '{:.0f}'):>5s} "
              f"{median_or_dash(f['busy_s']):>7s} {median_or_dash(f['waited_s']):>9s} {waited:>9s} "
              f"{median_or_dash(f['initial_s']):>15s} {str(peaks.get(label, '-')):>13s}")
    print("epoch times per variant:", {k: [round(t, 1) for t in f["epoch_s"]] for k, f in figures.items()})
    print(machine_line(load_before, " the trainings"))
    print("command:", command_line())


if __name__ == "__main__":
    main()
