"""GPU check in one call: synthesis overhead in nnU-Net training, DDPM sampling and pretraining speed, peak memory.

    python benchmarks/gpu_check.py [--workdir /tmp/gpu_check] [--budget-s 480] [--dry-run] [--compile]
        [--peak-tflops T]

Made to run within the few minutes a GPU is lent: everything, data included, within ``--budget-s`` seconds of
wall time (default 480 = 8 min) on one CUDA GPU. Prints one Markdown table, also written to
``<workdir>/gpu_check.md`` and ``<workdir>/gpu_check.json`` (the rows grouped by part under the keys
``epoch_time``, ``sampling``, ``peak_memory`` and ``pretraining``). Measured:

1. epoch time (part ``epoch_time``): a phantom of realistic size (8 cases of 64 x 256 x 256 voxels at
   3 x 1.5 x 1.5 mm) planned and preprocessed with nnU-Net's default plans (nnUNetPlans, 3d_fullres), a
   ``fast`` DDPM pretrained for 2 epochs (tumorsynth_pretrain_ddpm, the paper's crop), then nnUNetTrainerShort
   (plain nnU-Net) and nnUNetTrainerSynthTumorShort (probability p = 0.5, background synthesis, the trainers'
   defaults otherwise), 5 epochs x 25 iterations each. Reported: the median epoch time (s, nnU-Net's log, first
   epoch of each training dropped) of each, their ratio (goal <= 1.05), and the seconds per epoch the training
   loop waited for synthesis (our per-epoch log line; the initial bank, made before epoch 0, in the note).
2. sampling (part ``sampling``): DDPM presets ``fast`` and ``paper`` at the paper's crop (64 x 96 x 128 voxels
   z y x at 3 x 1.5 x 1.5 mm), one tumour, batch 1, bf16 autocast: the time of one sampling step (ms; DDIM,
   20 steps timed, divided by 20) against the time its FLOPs (one forward, FlopCounterMode on the meta device)
   take at the GPU's dense bf16 peak (per cent of peak), and the time to inpaint one tumour (s) with the
   few-step default, DPM-Solver++(2M) with 5 steps.
3. peak memory (part ``peak_memory``, MiB): of each training, the most ``nvidia-smi`` reported for GPU 0 while it
   ran (polled every 0.5 s; CUDA context and cache included; GPU 0's use before the trainings is in the note), and
   of each in-process measurement, ``torch.cuda.max_memory_allocated``.
4. pretraining (part ``pretraining``): training iterations per second (it/s) of tumorsynth_pretrain_ddpm's step
   (forward + backward + AdamW, bf16 autocast), ``paper`` preset, batch 1, the paper's crop, in this process,
   against the FLOP bound at the bf16 peak.

The parts run in the order 1, 2, 4 (part 3 is measured along with them; part 1 first, while this process holds
no CUDA context). A training is stopped as soon as nnU-Net logs "Training done." (its final validation is not
waited for: it is not measured). Each step must end by its cumulative share of the budget (``SHARES``: setup
27 %, plain training 18 %, SynthTumor training 20 %, sampling 17 %, pretraining 10 %, 8 % left for start-up and
the table; time a step leaves unused goes to the next ones); a step still running then is stopped (a command's
process group is killed, an in-process measurement interrupted by SIGALRM) and its rows say "not reached,
budget", or use the epochs a stopped training logged. A step that fails puts its error in one line in its rows;
the table is printed in every case. nnU-Net's torch.compile is off (``nnUNet_compile=false``) unless
``--compile``, so that two trainings fit in the budget; plain and SynthTumor epochs are compared under the same
setting. The bf16 peak comes from bench_ddpm's table (``PEAK_BF16_TFLOPS``, by device name) unless
``--peak-tflops``. The commands' output goes to ``<workdir>/logs``; only the nnU-Net folders and logs of an
earlier run in ``--workdir`` are removed.

``--dry-run``: the same code on the CPU with tiny sizes, to check the script (tests/test_gpu_check.py): 5 cases
of 32 x 64 x 64 voxels, tumorsynth_tiny_plans, a tiny DDPM pretrained for 1 epoch on 16 x 32 x 32 crops,
nnUNetTrainerTiny and nnUNetTrainerSynthTumorTiny (2 epochs of 3 iterations, so one epoch each is measured;
2 DDIM steps per synthetic tumour), sampling and pretraining of the tiny preset on 8 x 16 x 16 crops with 2
steps. About a minute and a half on a 2-core machine; its figures say nothing about a GPU, and its memory rows
give the peak resident memory (RSS) of the CPU processes instead. Without ``--dry-run`` and without CUDA it
exits with a message.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import glob
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from _common import (
    NNUNET_FOLDERS,
    TINY_PLANS,
    argument_parser,
    command_line,
    console_script,
    load_average,
    machine_line,
    nnunet_env,
    phantom_commands,
    require_cuda,
    torch_platform,
    trainers_path,
)
from bench_ddpm import GPU_CROP, GPU_SPACING_MM, bench_inpaint, bench_training, count_flops, peak_tflops
from bench_synth_overhead import DATASET, NAME, GpuMemoryPeak, epoch_figures, initial_bank_seconds, read_log

T = TypeVar("T")

# cumulative shares of --budget-s: each step must end by start + budget x (its share + the shares before it)
SHARES = {"setup": 0.27, "plain": 0.18, "synth": 0.20, "sampling": 0.17, "pretraining": 0.10}
PARTS = {"epoch_time": "1 epoch time", "sampling": "2 DDPM sampling", "peak_memory": "3 peak memory",
         "pretraining": "4 DDPM pretraining"}
NOT_REACHED = "not reached, budget"
STOPPED = "not reached, budget (stopped while running)"
RATIO_GOAL = 1.05
SYNTH_SETTINGS = {"probability": 0.5, "background": True, "preview_every": 0}  # the rest: the trainers' defaults
KILL_GRACE_S = 10.0  # after SIGTERM, seconds before SIGKILL


@dataclass(frozen=True)
class Sizes:
    """What is made and measured: nnU-Net's default plans on a GPU, tiny sizes on the CPU for --dry-run."""

    device: str
    phantom: tuple[str, ...]  # tumorsynth_make_phantom arguments
    processes: int  # nnU-Net fingerprint and preprocessing processes
    tiny_plans: tuple[str, ...] | None  # tumorsynth_tiny_plans arguments; None: nnU-Net's own plans
    plans: str
    pretrain: tuple[str, ...]  # tumorsynth_pretrain_ddpm arguments: preset, epochs, crop
    plain_trainer: str
    synth_trainer: str
    synth_steps: int | None  # setting ddpm_steps of the SynthTumor training; None: the trainer's
    presets: tuple[str, ...]  # DDPM presets whose sampling is timed
    crop: tuple[int, int, int]  # (z, y, x) voxels, sampling and pretraining
    spacing_mm: tuple[float, float, float]
    ddim_steps: int  # DDIM steps timed for the step time
    few_steps: int  # DPM-Solver++(2M) steps of the per-tumour time
    repeats: int
    pretrain_preset: str
    train_iters: int  # training iterations per repeat


GPU = Sizes(device="cuda", phantom=("-n", "8", "--shape", "64", "256", "256"), processes=8, tiny_plans=None,
            plans="nnUNetPlans", pretrain=("--preset", "fast", "--epochs", "2"), plain_trainer="nnUNetTrainerShort",
            synth_trainer="nnUNetTrainerSynthTumorShort", synth_steps=None, presets=("fast", "paper"), crop=GPU_CROP,
            spacing_mm=GPU_SPACING_MM, ddim_steps=20, few_steps=5, repeats=3, pretrain_preset="paper",
            train_iters=5)
DRY = Sizes(device="cpu", phantom=("-n", "5"), processes=1, tiny_plans=(), plans=TINY_PLANS,
            pretrain=("--preset", "tiny", "--epochs", "1", "--crop", "16", "32", "32"),
            plain_trainer="nnUNetTrainerTiny", synth_trainer="nnUNetTrainerSynthTumorTiny", synth_steps=2,
            presets=("tiny",), crop=(8, 16, 16), spacing_mm=(3.0, 1.5, 1.5), ddim_steps=2, few_steps=2, repeats=1,
            pretrain_preset="tiny", train_iters=1)


@dataclass
class Row:
    """One line of the table; ``value`` None when not measured (the note says why)."""

    part: str  # a key of PARTS
    measurement: str
    value: float | None
    unit: str
    against: str = ""
    note: str = ""


class Budget:
    """Deadlines (time.monotonic) of the steps, from the cumulative SHARES of ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic()
        self.seconds = seconds

    def deadline(self, step: str) -> float:
        steps = list(SHARES)
        return self.start + self.seconds * sum(SHARES[s] for s in steps[: steps.index(step) + 1])

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def progress(budget: Budget, message: str) -> None:
    print(f"[{budget.elapsed():5.0f} s] {message}", flush=True)


def one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Finished:
    """Outcome of ``run_until``: exit code (None: stopped at the deadline; 0 also when stopped because ``done``),
    seconds, peak RSS of the main process (MiB), its error line."""

    returncode: int | None
    seconds: float
    max_rss_mib: float
    error: str


def error_line(log_path: str) -> str:
    """The last line of a command's output that names an error, else its last line."""
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if re.search(r"Error|Exception|error:|^failed", line)]
    return one_line((errors or lines or ["(no output)"])[-1])


def run_until(cmd: list[str], env: dict[str, str], deadline: float, log_path: str,
              done: Callable[[], bool] | None = None) -> Finished:
    """Run console script ``cmd[0]`` in its own process group, output to ``log_path``, until it exits; stop the
    group (SIGTERM, then SIGKILL after KILL_GRACE_S) at ``deadline`` or as soon as ``done()`` is true; not started
    if ``deadline`` has passed."""
    start = time.monotonic()
    if start >= deadline:
        return Finished(None, 0.0, 0.0, "")
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen([console_script(cmd[0]), *cmd[1:]], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        stopped_at, finished_early = None, False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.monotonic()
            if stopped_at is None and (now >= deadline or (done is not None and done())):
                stopped_at, finished_early = now, now < deadline
                os.killpg(proc.pid, signal.SIGTERM)
            elif stopped_at is not None and now >= stopped_at + KILL_GRACE_S:
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if stopped_at is not None:  # data-loader workers the stopped main process left behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if stopped_at is None:
        returncode = proc.returncode
    else:
        returncode = 0 if finished_early else None
    error = error_line(log_path) if returncode not in (0, None) else ""
    return Finished(returncode, time.monotonic() - start, usage.ru_maxrss / 1024, error)


@dataclass
class Training:
    """One nnU-Net training: how it ended, per-epoch figures of its log, peak memory, synthesis settings seen."""

    finished: Finished
    figures: dict[str, list[float]]
    initial_bank_s: float | None
    peak_mib: float | None
    sampler: str
    reason: str = ""  # why it did not run, for one that did not

    def epochs(self, key: str = "epoch_s") -> list[float]:
        """Figures of every epoch after the first (start-up)."""
        return self.figures.get(key, [])[1:]

    def problem(self) -> str:
        """Why its epoch figures are missing or partial ('' if all epochs ran)."""
        if self.reason:
            return self.reason
        logged = len(self.figures.get("epoch_s", []))
        if self.finished.returncode is None:
            return NOT_REACHED if logged < 2 else f"stopped at budget after {logged} epochs"
        if self.finished.returncode != 0:
            return f"error: {self.finished.error}"
        return "" if logged >= 2 else f"only {logged} epoch(s) logged"


def not_run(reason: str) -> Training:
    return Training(Finished(None, 0.0, 0.0, ""), {}, None, None, "", reason)


def training_log(folder: str) -> str:
    """nnU-Net's training log in ``folder`` ('' if none yet)."""
    return read_log(folder) if glob.glob(os.path.join(folder, "training_log_*.txt")) else ""


def train(sizes: Sizes, trainer: str, env: dict[str, str], deadline: float, log_path: str) -> Training:
    """Train fold 0 of the phantom with ``trainer`` from an empty output folder, until its last epoch is logged
    (nnU-Net's final validation is not waited for) or ``deadline``."""
    folder = os.path.join(env["nnUNet_results"], NAME, f"{trainer}__{sizes.plans}__3d_fullres", "fold_0")
    shutil.rmtree(folder, ignore_errors=True)
    memory = GpuMemoryPeak() if sizes.device == "cuda" else contextlib.nullcontext()
    with memory:
        finished = run_until(["nnUNetv2_train", DATASET, "3d_fullres", "0", "-p", sizes.plans, "-tr", trainer,
                              "-device", sizes.device], env, deadline, log_path,
                             done=lambda: "Training done." in training_log(folder))
    log = training_log(folder)
    sampler, steps = re.search(r"'ddpm_sampler': '([^']+)'", log), re.search(r"'ddpm_steps': (\d+)", log)
    sampler_text = f"{sampler[1]} {steps[1]} steps" if sampler and steps else ""
    if isinstance(memory, GpuMemoryPeak):
        peak = float(memory.peak_mib) if memory.peak_mib else None
    else:
        peak = finished.max_rss_mib
    return Training(finished, epoch_figures(log), initial_bank_seconds(log), peak, sampler_text)


def median_note(values: list[float], problem: str) -> str:
    note = f"median of {len(values)} epoch(s), first dropped"
    return f"{note}; {problem}" if problem else note


def epoch_time_rows(sizes: Sizes, plain: Training, synth: Training) -> list[Row]:
    """Part 1's rows: each trainer's median epoch, their ratio, the seconds waited for synthesis."""
    rows = []
    medians = {}
    for label, trainer, training in (("plain nnU-Net", sizes.plain_trainer, plain),
                                     ("SynthTumor", sizes.synth_trainer, synth)):
        epochs = training.epochs()
        medians[label] = statistics.median(epochs) if epochs else None
        rows.append(Row("epoch_time", f"{label} epoch ({trainer})", medians[label], "s",
                        note=median_note(epochs, training.problem()) if epochs else training.problem()))
    plain_s, synth_s = medians["plain nnU-Net"], medians["SynthTumor"]
    ratio = synth_s / plain_s if plain_s and synth_s else None
    rows.insert(0, Row("epoch_time", "SynthTumor / plain epoch time", ratio, "ratio", f"goal <= {RATIO_GOAL}",
                       note=(f"p = {SYNTH_SETTINGS['probability']}, background synthesis, "
                             f"{synth.sampler or 'sampler not logged'}, plans {sizes.plans}"
                             if ratio else plain.problem() or synth.problem() or "needs both epoch times")))
    waited = synth.epochs("waited_s")
    if waited:
        median = statistics.median(waited)
        against = f"{100 * median / synth_s:.1f} % of a SynthTumor epoch" if synth_s else ""
        initial = f"{synth.initial_bank_s:.1f} s" if synth.initial_bank_s is not None else "not logged"
        rows.append(Row("epoch_time", "training waited for synthesis, per epoch", median, "s", against,
                        f"median of {len(waited)} epoch(s), total {sum(waited):.2f} s; initial bank (before epoch 0, "
                        f"not in the ratio) {initial}"))
    else:
        rows.append(Row("epoch_time", "training waited for synthesis, per epoch", None, "s",
                        note=synth.problem() or "no synthesis line in the log"))
    return rows


def training_memory_rows(sizes: Sizes, plain: Training, synth: Training, before_mib: int | None) -> list[Row]:
    """Part 3's rows of the two trainings."""
    if sizes.device == "cuda":
        against = "nvidia-smi, all of GPU 0 (context and cache included)"
        before = f"GPU 0 used before the trainings: {before_mib} MiB" if before_mib is not None else ""
    else:
        against, before = "peak RSS of the training process (CPU, dry run)", ""
    return [Row("peak_memory", f"{label} training", training.peak_mib, "MiB", against,
                "; ".join(x for x in (before if not training.reason else "", training.problem()) if x))
            for label, training in (("plain nnU-Net", plain), ("SynthTumor", synth))]


def part_epoch_time(sizes: Sizes, args: argparse.Namespace, budget: Budget) -> list[Row]:
    """Part 1 (and its part 3 rows): make and plan the phantom, pretrain the DDPM, train plain and SynthTumor."""
    logs = os.path.join(args.workdir, "logs")
    env = nnunet_env(args.workdir)
    if sizes.device == "cpu":
        env.update(nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1")
    env["nnUNet_compile"] = "true" if args.compile else "false"
    settings = os.path.join(args.workdir, "synth_settings.json")
    with open(settings, "w") as f:
        json.dump({**SYNTH_SETTINGS, **({"ddpm_steps": sizes.synth_steps} if sizes.synth_steps else {})}, f)
    env["TUMORSYNTH_SETTINGS"] = settings  # read by the SynthTumor trainer only

    def failed(reason: str) -> list[Row]:
        return epoch_time_rows(sizes, not_run(reason), not_run(reason)) + \
            training_memory_rows(sizes, not_run(reason), not_run(reason), None)

    deadline = budget.deadline("setup")
    try:
        env["nnUNet_extTrainer"] = trainers_path(env)
    except SystemExit as e:
        return failed(f"error: {one_line(str(e))}")
    commands = phantom_commands(DATASET, phantom=sizes.phantom, plan=("-npfp", str(sizes.processes)),
                                tiny_plans=sizes.tiny_plans, processes=sizes.processes)
    commands.append(["tumorsynth_pretrain_ddpm", "-d", DATASET, "-c", "3d_fullres", "-f", "0", "-p", sizes.plans,
                     *sizes.pretrain, "-device", sizes.device])
    for i, cmd in enumerate(commands):
        progress(budget, f"setup: {' '.join(cmd)}")
        done = run_until(cmd, env, deadline, os.path.join(logs, f"setup{i}_{cmd[0]}.txt"))
        if done.returncode is None:
            return failed(f"{NOT_REACHED} (setup: {cmd[0]} stopped)")
        if done.returncode != 0:
            return failed(f"error in setup, {cmd[0]}: {done.error}")

    before_mib = None
    if sizes.device == "cuda":
        with GpuMemoryPeak() as idle:  # one or two nvidia-smi readings
            time.sleep(0.6)
        before_mib = idle.peak_mib
    trainings = {}
    for step, trainer in (("plain", sizes.plain_trainer), ("synth", sizes.synth_trainer)):
        if time.monotonic() >= budget.deadline(step):
            trainings[step] = not_run(NOT_REACHED)
            continue
        progress(budget, f"part 1: training {trainer}")
        trainings[step] = train(sizes, trainer, env, budget.deadline(step), os.path.join(logs, f"train_{step}.txt"))
        progress(budget, f"part 1: {trainer} {trainings[step].problem() or 'done'}")
    plain, synth = trainings["plain"], trainings["synth"]
    return epoch_time_rows(sizes, plain, synth) + training_memory_rows(sizes, plain, synth, before_mib)


class BudgetExceeded(BaseException):
    """Raised by SIGALRM in the main thread when an in-process measurement reaches its deadline (not an
    Exception, so that no ``except Exception`` in the measured code swallows it)."""


@contextlib.contextmanager
def alarm_at(deadline: float) -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise BudgetExceeded

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def in_process(deadline: float, function: Callable[..., T], *args: Any) -> tuple[T | None, str]:
    """(result, '') of ``function(*args)``, or (None, why): not reached / stopped at ``deadline``, or its error."""
    if time.monotonic() >= deadline:
        return None, NOT_REACHED
    try:
        with alarm_at(deadline):
            return function(*args), ""
    except BudgetExceeded:
        return None, STOPPED
    except Exception as e:  # noqa: BLE001 - the row says the error, the other parts still run
        return None, f"error: {one_line(f'{type(e).__name__}: {e}')}"
    finally:
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """CUDA: torch.cuda.max_memory_allocated since the last reset; CPU: this process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_against(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated"
    return "peak RSS of this process so far (CPU, dry run)"


def against_peak(flops: float, seconds: float, peak: float | None, unit: str) -> str:
    """The time ``flops`` take at the bf16 peak (in ``unit``: ms, ms/it or s) and the per cent of the peak that
    doing them in ``seconds`` achieves."""
    if not peak:
        return "no bf16 peak known for this device"
    bound = flops / (peak * 1e12)
    shown = bound * 1e3 if unit.startswith("ms") else bound
    return f"FLOP bound {shown:.3g} {unit} at {peak:g} TFLOP/s: {100 * bound / seconds:.1f} % of peak"


def crop_text(sizes: Sizes) -> str:
    return f"crop {' x '.join(map(str, sizes.crop))} (z y x)"


def sampling_step(sizes: Sizes, preset: str, device: torch.device) -> tuple[int, float]:
    """FLOPs of one forward pass and seconds per DDIM step (median over ``sizes.repeats`` inpaintings)."""
    flops = count_flops(preset, sizes.crop, train=False)
    times = bench_inpaint(preset, sizes.crop, sizes.spacing_mm, sizes.ddim_steps, device, sizes.repeats)
    return flops, statistics.median(times) / sizes.ddim_steps


def inpaint_tumour(sizes: Sizes, preset: str, device: torch.device) -> float:
    """Seconds to inpaint one tumour with DPM-Solver++(2M) in ``sizes.few_steps`` steps (median)."""
    times = bench_inpaint(preset, sizes.crop, sizes.spacing_mm, sizes.few_steps, device, sizes.repeats,
                          sampler="dpm++2m")
    return statistics.median(times)


def pretraining_iteration(sizes: Sizes, device: torch.device) -> tuple[int, float]:
    """FLOPs of one forward + backward pass and seconds per training iteration (median)."""
    flops = count_flops(sizes.pretrain_preset, sizes.crop, train=True)
    times = bench_training(sizes.pretrain_preset, sizes.crop, device, amp=device.type == "cuda",
                           repeats=sizes.repeats, iters=sizes.train_iters)
    return flops, statistics.median(times)


def part_sampling(sizes: Sizes, peak: float | None, budget: Budget) -> list[Row]:
    """Part 2 (and its part 3 rows): step time (DDIM) and per-tumour time (DPM-Solver++(2M)) of each preset."""
    device = torch.device(sizes.device)
    deadline = budget.deadline("sampling")
    rows: list[Row] = []
    for preset in sizes.presets:
        progress(budget, f"part 2: sampling, {preset} preset")
        reset_peak_memory(device)

        stepped, why_step = in_process(deadline, sampling_step, sizes, preset, device)
        inpainted, why_tumour = in_process(deadline, inpaint_tumour, sizes, preset, device)
        flops = stepped[0] if stepped else None
        label = f"{preset}: one sampling step (DDIM, bf16 autocast on CUDA)"
        if stepped:
            rows.append(Row("sampling", label, stepped[1] * 1e3, "ms",
                            against_peak(stepped[0], stepped[1], peak, "ms"),
                            f"{stepped[0] / 1e12:.4g} TFLOP per forward; {crop_text(sizes)}; median of "
                            f"{sizes.repeats} x {sizes.ddim_steps} steps / {sizes.ddim_steps}"))
        else:
            rows.append(Row("sampling", label, None, "ms", note=why_step))
        label = f"{preset}: inpaint one tumour, dpm++2m {sizes.few_steps} steps"
        if inpainted is not None:
            against = against_peak(flops * sizes.few_steps, inpainted, peak, "s") if flops else ""
            rows.append(Row("sampling", label, inpainted, "s", against,
                            f"{crop_text(sizes)}, batch 1; median of {sizes.repeats}"))
        else:
            rows.append(Row("sampling", label, None, "s", note=why_tumour))
        measured = stepped is not None or inpainted is not None
        rows.append(Row("peak_memory", f"{preset} sampling (both rows above)",
                        peak_memory_mib(device) if measured else None, "MiB", memory_against(device),
                        "" if measured else why_step))
    return rows


def part_pretraining(sizes: Sizes, peak: float | None, budget: Budget) -> list[Row]:
    """Part 4 (and its part 3 row): training iterations per second of the pretraining step, batch 1."""
    device = torch.device(sizes.device)
    preset = sizes.pretrain_preset
    progress(budget, f"part 4: pretraining iterations, {preset} preset")
    reset_peak_memory(device)

    result, why = in_process(budget.deadline("pretraining"), pretraining_iteration, sizes, device)
    label = f"{preset}: pretraining iterations (fwd + bwd + AdamW, batch 1, bf16 autocast on CUDA)"
    if result is None:
        return [Row("pretraining", label, None, "it/s", note=why),
                Row("peak_memory", f"{preset} pretraining", None, "MiB", memory_against(device), why)]
    flops, seconds = result
    against = against_peak(flops, seconds, peak, "ms/it")
    return [Row("pretraining", label, 1 / seconds, "it/s", against,
                f"{flops / 1e12:.4g} TFLOP per iteration (fwd + bwd); {crop_text(sizes)}; median of {sizes.repeats} "
                f"x {sizes.train_iters} iterations"),
            Row("peak_memory", f"{preset} pretraining", peak_memory_mib(device), "MiB", memory_against(device))]


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def markdown(header: list[str], rows: list[Row]) -> str:
    lines = [*header, "", "| part | measurement | value | unit | against | note |", "|---|---|---:|---|---|---|"]
    for key in PARTS:
        for r in (r for r in rows if r.part == key):
            cells = [PARTS[key], r.measurement, number(r.value), r.unit, r.against, r.note]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def clean_workdir(workdir: str) -> None:
    """Remove what an earlier run made in ``workdir`` (only that), and make the folders."""
    for name in (*NNUNET_FOLDERS, "logs"):
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--workdir", default="/tmp/gpu_check")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall seconds for everything (default 480)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check the script, no GPU figures")
    parser.add_argument("--compile", action="store_true", help="nnU-Net's torch.compile in the trainings")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU dense bf16 peak, TFLOP/s")
    args = parser.parse_args()
    if not args.dry_run:
        try:
            require_cuda()
        except SystemExit as e:
            sys.exit(f"{e}: gpu_check.py measures on a CUDA GPU (--dry-run checks it on the CPU with tiny sizes)")
    sizes = DRY if args.dry_run else GPU
    args.workdir = os.path.abspath(args.workdir)
    budget = Budget(args.budget_s)
    load_before = load_average()
    clean_workdir(args.workdir)
    if sizes.device == "cuda":
        torch.backends.cudnn.benchmark = True

    rows = part_epoch_time(sizes, args, budget)  # first: this process holds no CUDA context yet
    device = torch.device(sizes.device)
    peak = peak_tflops(argparse.Namespace(peak_tflops=args.peak_tflops), device)
    rows += part_sampling(sizes, peak, budget)
    rows += part_pretraining(sizes, peak, budget)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run: tiny sizes, no GPU figures)"
    header = [f"## GPU check: {name}", "",
              f"{torch_platform()}, CUDA {torch.version.cuda}; bf16 peak {peak or '-'} TFLOP/s; budget "
              f"{args.budget_s:g} s, wall {budget.elapsed():.0f} s; nnU-Net torch.compile "
              f"{'on' if args.compile else 'off'}", "", f"command: `{command_line()}`", "",
              machine_line(load_before)]
    table = markdown(header, rows)
    print("\n" + table, flush=True)
    with open(os.path.join(args.workdir, "gpu_check.md"), "w") as f:
        f.write(table + "\n")
    result = {"device": name, "platform": torch_platform(), "cuda": torch.version.cuda, "dry_run": args.dry_run,
              "budget_s": args.budget_s, "wall_s": round(budget.elapsed(), 1), "bf16_peak_tflops": peak,
              "compile": args.compile, "command": command_line(full=True),
              "parts": {key: [asdict(r) for r in rows if r.part == key] for key in PARTS}}
    with open(os.path.join(args.workdir, "gpu_check.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwritten: {os.path.join(args.workdir, 'gpu_check.md')}, {os.path.join(args.workdir, 'gpu_check.json')}")


if __name__ == "__main__":
    main()
