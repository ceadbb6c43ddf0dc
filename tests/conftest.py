"""Shared fixtures: private nnU-Net folders, a phantom dataset planned by nnU-Net, tiny plans.

The nnU-Net folder variables are set before anything imports nnunetv2 (it reads them at import
time), always to a fresh temporary folder: the tests never touch a user's nnU-Net data.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import pytest

_ROOT = tempfile.mkdtemp(prefix="tumorsynth_tests_")
for _var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ[_var] = os.path.join(_ROOT, _var)
    os.makedirs(os.environ[_var], exist_ok=True)
os.environ["nnUNet_n_proc_DA"] = "1"  # one augmentation worker (0 breaks nnU-Net's planner); 2 CPU cores here
os.environ["nnUNet_def_n_proc"] = "1"  # export/preprocessing pools: spawning 8 workers costs ~30 s here
os.environ["nnUNet_compile"] = "false"
# two test workers share 2 cores (pytest -n 2, pyproject.toml): OpenMP threads that wait sleep instead of spinning,
# so that two torch processes do not slow each other down by busy-waiting
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BIN = os.path.dirname(sys.executable)
PHANTOM_ID = 990
TINY_PLANS = "tumorsynthTinyPlans"

# Fixtures that plan and preprocess through the real nnU-Net CLIs: every test that uses one of them, directly or
# through another fixture (pytest's ``fixturenames`` is the whole closure), is end to end.
E2E_FIXTURES = frozenset({"phantom_dataset"})


def pytest_collection_modifyitems(config, items):
    """Mark ``e2e`` every test that needs a dataset planned by nnU-Net (``E2E_FIXTURES``) and every test in a
    ``*_e2e.py`` file, so that ``pytest -m "not e2e"`` is the fast unit-level run. Tests that run the training or
    planning CLIs themselves without those fixtures carry the mark explicitly (``pytestmark`` or a decorator)."""
    for item in items:
        if E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())) or item.path.name.endswith("_e2e.py"):
            item.add_marker(pytest.mark.e2e)


def cli(name: str) -> str:
    """Path of an installed console script of this environment (nnU-Net's or ours)."""
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is the package installed in this environment?")
    return path


def run(cmd: list[str], env: dict | None = None, timeout: int = 900, check: bool = True, cwd: str | None = None):
    """Run a CLI; on failure show its output in the assertion message."""
    result = subprocess.run(cmd, env=env or os.environ.copy(), capture_output=True, text=True, timeout=timeout,
                            cwd=cwd or _ROOT)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}"
            f"\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


def log_line(log: str | list[str], *keys: str) -> str | None:
    """The first line of ``log`` (a text or a list of messages) that holds every key, else None.

    Tests check what a log message must carry (figures, file and case names, WARNING) with this, not its exact
    wording, which may change freely."""
    lines = log.splitlines() if isinstance(log, str) else [line for m in log for line in str(m).splitlines()]
    return next((line for line in lines if all(key in line for key in keys)), None)


@pytest.fixture(scope="session")
def cli_env() -> dict:
    """The environment a user gets after ``eval "$(tumorsynth_env)"``."""
    env = os.environ.copy()
    line = run([cli("tumorsynth_env")]).stdout.strip()
    assert line.startswith("export nnUNet_extTrainer=")
    env["nnUNet_extTrainer"] = line.split("=", 1)[1].strip("'\"")
    return env


@dataclass
class PhantomDataset:
    dataset_id: int
    name: str
    raw: str
    preprocessed: str
    env: dict
    plans: str = TINY_PLANS
    configuration: str = "3d_fullres"


@pytest.fixture(scope="session")
def phantom_dataset(cli_env) -> PhantomDataset:
    """Dataset990_Phantom (8 training + 2 test cases) planned and preprocessed by nnU-Net, plus tiny plans."""
    run([cli("tumorsynth_make_phantom"), "-d", str(PHANTOM_ID), "-n", "8", "--n-test", "2"], env=cli_env)
    run([cli("nnUNetv2_plan_and_preprocess"), "-d", str(PHANTOM_ID), "-c", "3d_fullres",
         "--verify_dataset_integrity", "-np", "2"], env=cli_env)
    run([cli("tumorsynth_tiny_plans"), "-d", str(PHANTOM_ID)], env=cli_env)
    name = f"Dataset{PHANTOM_ID}_Phantom"
    return PhantomDataset(PHANTOM_ID, name, os.path.join(os.environ["nnUNet_raw"], name),
                          os.path.join(os.environ["nnUNet_preprocessed"], name), cli_env)


@pytest.fixture(scope="session")
def tiny_model(phantom_dataset):
    """nnUNetTrainerTiny, fold 0, trained through the real nnUNetv2_train CLI (found via nnUNet_extTrainer); the
    completed process. Shared by the tests that need a trained plain model (one training saves ~30 s)."""
    return run([cli("nnUNetv2_train"), str(phantom_dataset.dataset_id), "3d_fullres", "0",
                "-p", phantom_dataset.plans, "-tr", "nnUNetTrainerTiny", "-device", "cpu"], env=phantom_dataset.env)
