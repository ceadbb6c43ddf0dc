"""The code passes ``ruff check`` with the project's settings (pyproject.toml), so style is kept by the suite."""

from __future__ import annotations

import os

from conftest import cli, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_check_is_clean():
    result = run([cli("ruff"), "check", "--no-cache", "."], cwd=ROOT, check=False)
    assert result.returncode == 0, f"ruff check . found problems (fix them or run ruff check --fix):\n{result.stdout}"
