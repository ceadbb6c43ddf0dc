"""Set-up shared by the benchmark scripts: threads, nnU-Net folders, console scripts, phantom datasets.

The scripts run as ``python benchmarks/<script>.py``, so this folder is on ``sys.path`` and they import this
module as ``from _common import ...``. Only the standard library is imported here at module level: the
scripts call ``single_threaded()`` before numpy is imported and set nnU-Net's folders before nnunetv2 is.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, NamedTuple, TypeVar

NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
TINY_PLANS = "tumorsynthTinyPlans"  # the plans identifier that tumorsynth_tiny_plans writes
OUTPUT_TAIL = 5000  # characters of a failed command's stdout and stderr that are shown
T = TypeVar("T")


def single_threaded() -> None:
    """Limit OpenMP, MKL and OpenBLAS to one thread; call before numpy is imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose --help shows the script's docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def set_nnunet_folders(env: MutableMapping[str, str], workdir: str, keep_set: bool = False) -> None:
    """Point ``env``'s nnU-Net folders at ``workdir/<variable>`` (keeping set ones if ``keep_set``); make them."""
    for var in NNUNET_FOLDERS:
        if not (keep_set and var in env):
            env[var] = os.path.join(workdir, var)
        os.makedirs(env[var], exist_ok=True)


def nnunet_env(workdir: str) -> dict[str, str]:
    """A copy of ``os.environ`` with nnU-Net's folders under ``workdir`` (made if missing)."""
    env = dict(os.environ)
    set_nnunet_folders(env, workdir)
    return env


def console_script(name: str) -> str:
    """Path of console script ``name`` installed beside this Python interpreter."""
    return os.path.join(os.path.dirname(sys.executable), name)


class Ran(NamedTuple):
    """Outcome of a successful ``run_cli``."""

    stdout: str
    seconds: float


def run_cli(cmd: Sequence[str], env: Mapping[str, str] | None = None, echo: bool = False,
            log: str | None = None) -> Ran:
    """Run console script ``cmd[0]`` of this environment; exit with the end of its output if it fails."""
    if echo:
        print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    result = subprocess.run([console_script(cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if log:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{result.stdout}\n{result.stderr}\n")
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{result.stdout[-OUTPUT_TAIL:]}\n{result.stderr[-OUTPUT_TAIL:]}")
    return Ran(result.stdout, seconds)


def trainers_path(env: Mapping[str, str] | None = None) -> str:
    """The folder of this plugin's nnU-Net trainers, for ``nnUNet_extTrainer`` (``tumorsynth_env``)."""
    return run_cli(["tumorsynth_env", "--trainers-path"], env).stdout.strip()


def phantom_commands(dataset_id: int | str, phantom: Sequence[str] = (), plan: Sequence[str] = (),
                     tiny_plans: Sequence[str] | None = (), processes: int = 2) -> list[list[str]]:
    """Commands that make a phantom dataset, plan and preprocess it (3d_fullres) and add tiny plans (unless None)."""
    commands = [
        ["tumorsynth_make_phantom", "-d", str(dataset_id), *phantom],
        ["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "3d_fullres", *plan, "-np", str(processes)],
    ]
    if tiny_plans is not None:
        commands.append(["tumorsynth_tiny_plans", "-d", str(dataset_id), *tiny_plans])
    return commands


def timed_call(function: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[float, float, T]:
    """(wall seconds, CPU seconds of this process, result) of one call; CPU time is less affected by other loads."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def command_line(full: bool = False) -> str:
    """This invocation: ``python script args``, or with ``full`` the interpreter's path, shell-quoted."""
    if full:
        return shlex.join([sys.executable, *sys.argv])
    return " ".join([os.path.basename(sys.executable), *sys.argv])


def load_average() -> tuple[float, ...]:
    """The 1, 5 and 15 minute load averages, rounded to 0.1."""
    return tuple(round(v, 1) for v in os.getloadavg())


def machine_line(load_before: tuple[float, ...], when: str = "") -> str:
    """CPU count and load averages before (``when``, e.g. " the trainings") and now, for a benchmark's footer."""
    return (f"machine: {os.cpu_count()} CPUs; load average (1, 5, 15 min) before{when} {load_before}, "
            f"after {load_average()}")


def torch_platform() -> str:
    """'torch <version>, python <version>, <machine>' for a benchmark's header."""
    import torch

    return f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}"


def require_cuda() -> None:
    """Exit with a message unless a CUDA device is available."""
    import torch

    if not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device available")


def checkpoint_without_range(checkpoint: str, out: str) -> str:
    """A copy of ``checkpoint`` whose metadata lacks ``intensity_range`` (a checkpoint of the previous release)."""
    import torch

    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    payload["metadata"].pop("intensity_range", None)
    torch.save(payload, out)
    return out
