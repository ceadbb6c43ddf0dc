"""benchmarks/gpu_check.py: its --dry-run on the CPU (tiny sizes, same code as on a GPU), its budget, no CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.py")
PARTS = {"1 epoch time": "epoch_time", "2 DDPM sampling": "sampling", "3 peak memory": "peak_memory",
         "4 DDPM pretraining": "pretraining"}


def gpu_check(workdir: str, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """Run the script as a user does, from the repository root."""
    return subprocess.run([sys.executable, SCRIPT, "--workdir", workdir, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def table_rows(stdout: str) -> list[list[str]]:
    """Cells of the printed Markdown table's rows (header and separator left out)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith("| ")]
    return [r for r in rows if r[0] != "part"]


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@pytest.mark.e2e
def test_dry_run_measures_every_part(tmp_path):
    """The whole check on the CPU: a number in every part of the table and of the JSON, the epoch ratio too.

    The budget is generous so that a loaded test machine still reaches every part; the dry run itself takes
    about a minute on an idle 2-core machine."""
    result = gpu_check(str(tmp_path), "--dry-run", "--budget-s", "1500", timeout=1800)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    rows = table_rows(result.stdout)
    for part in PARTS:
        values = [r[2] for r in rows if r[0] == part]
        assert any(is_number(v) for v in values), f"no figure in part {part!r}:\n{result.stdout}"
    ratio = next(r for r in rows if r[1] == "SynthTumor / plain epoch time")
    assert is_number(ratio[2]), ratio
    assert "GPU check: CPU (dry run" in result.stdout and f"torch {torch.__version__}" in result.stdout

    with open(tmp_path / "gpu_check.json") as f:
        report = json.load(f)
    assert set(report["parts"]) == set(PARTS.values())
    for key, rows_of_part in report["parts"].items():
        assert any(isinstance(r["value"], (int, float)) for r in rows_of_part), (key, rows_of_part)
    assert report["dry_run"] is True
    assert os.path.isfile(tmp_path / "gpu_check.md")


@pytest.fixture(scope="module")
def gpu_check_module():
    """benchmarks/gpu_check.py as a module, for the checks that need no dry run of their own."""
    benchmarks = os.path.join(REPO, "benchmarks")
    if benchmarks not in sys.path:  # its sibling modules (_common, bench_ddpm), as when it runs as a script
        sys.path.insert(0, benchmarks)
    import gpu_check

    return gpu_check


def test_budget_stops_parts_and_still_prints_the_table(gpu_check_module, tmp_path, monkeypatch, capsys):
    """With a budget of a few seconds every part ends cleanly: rows it could not measure say 'not reached, budget'
    (on a fast machine a quick row, such as a FLOP count, may still be measured)."""
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--dry-run", "--workdir", str(tmp_path), "--budget-s", "3"])
    gpu_check_module.main()
    rows = table_rows(capsys.readouterr().out)
    stopped = []
    for part in PARTS:
        notes = [r[5] for r in rows if r[0] == part]
        assert notes, (part, rows)  # every part has its rows, measured or not
        stopped.append(any("not reached, budget" in n for n in notes))
    assert any(stopped), "the slow parts (training) cannot finish within a 3 s budget"
    with open(tmp_path / "gpu_check.json") as f:
        assert set(json.load(f)["parts"]) == set(PARTS.values())


def test_without_cuda_and_dry_run_exits_with_a_message(gpu_check_module, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--workdir", str(tmp_path)])
    with pytest.raises(SystemExit, match="no CUDA device.*--dry-run"):
        gpu_check_module.main()
    assert not os.path.exists(tmp_path / "gpu_check.json")


def test_in_process_measurement_is_stopped_at_its_deadline(gpu_check_module):
    """SIGALRM interrupts an in-process measurement at its deadline; one past its deadline does not start."""
    in_process = gpu_check_module.in_process
    start = time.monotonic()
    assert in_process(start + 0.3, time.sleep, 30) == (None, gpu_check_module.STOPPED)
    assert time.monotonic() - start < 10
    assert in_process(start, time.sleep, 30) == (None, gpu_check_module.NOT_REACHED)
    result, why = in_process(time.monotonic() + 30, divmod, 7, 0)
    assert result is None and why.startswith("error: ZeroDivisionError")
    assert in_process(time.monotonic() + 30, divmod, 7, 2) == ((3, 1), "")
