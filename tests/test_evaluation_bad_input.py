"""``tumorsynth_evaluate`` on bad inputs: truncated or unreadable label maps, label values nobody declared, a bad
dataset.json, and plain folders without any dataset.json (labels from ``-l``).

Every test runs the installed command on three tiny 16x16x16 label maps it writes itself; an error must be one
line on stderr (no traceback) that names the file or case, and no report may be written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import cli, log_line, run

LABELS = {"background": 0, "liver": 1, "tumour": 2}
CASES = ("case_000", "case_001", "case_002")


def label_map(seed: int) -> np.ndarray:
    """A liver block with a tumour cube and some noise of both labels (so that the data, not the header, is most
    of a compressed file's bytes)."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((16, 16, 16), dtype=np.uint8)
    seg[2:14, 2:14, 2:14] = 1
    seg[5:9, 5:9, 5:9] = 2
    seg.flat[rng.choice(seg.size, 800, replace=False)] = rng.integers(0, 3, 800)
    return seg


def write_label_map(path: Path, seg: np.ndarray) -> None:
    image = sitk.GetImageFromArray(seg.astype(np.uint8))
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))


def make_folders(root: Path, ending: str = ".nii.gz", dataset_json: bool = True) -> Path:
    """``root/labelsTs`` and ``root/pred`` with the three cases (predictions slightly changed); dataset.json
    beside labelsTs unless ``dataset_json`` is False."""
    (root / "labelsTs").mkdir()
    (root / "pred").mkdir()
    for i, case in enumerate(CASES):
        reference = label_map(i)
        prediction = reference.copy()
        prediction[3:5, 3:6, 3:6] = 2
        write_label_map(root / "labelsTs" / f"{case}{ending}", reference)
        write_label_map(root / "pred" / f"{case}{ending}", prediction)
    if dataset_json:
        (root / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ending,
                                                       "channel_names": {"0": "CT"}, "numTraining": 3}))
    return root


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    return make_folders(tmp_path)


def evaluate(root: Path, *extra: str, out: str = "report", installed: bool = False) -> subprocess.CompletedProcess:
    """Run ``tumorsynth_evaluate``: the installed command when ``installed``, else its ``main`` in this process
    (the same code, without a Python start-up per call); an exception other than its exit fails the test."""
    argv = ["-ref", str(root / "labelsTs"), "-pred", str(root / "pred"), "-o", str(root / out), "-np", "1", *extra]
    if installed:
        return run([cli("tumorsynth_evaluate"), *argv], check=False)
    from nnunetv2_tumorsynth.cli.evaluate import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main(argv)
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


def error_line(result: subprocess.CompletedProcess, code: int, *keys: str) -> str:
    """The command's one-line error, which must hold every key; exit code ``code``, no traceback."""
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = log_line(result.stderr, "tumorsynth_evaluate: error:", *keys)
    assert line is not None and line.startswith("tumorsynth_evaluate: error:"), result.stderr[-3000:]
    return line


def keep_first_bytes(path: Path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:n])


@pytest.mark.parametrize("role", ["pred", "labelsTs"])
def test_truncated_nifti_is_an_error_naming_the_file(folders: Path, role: str):
    """A half-written .nii.gz (a killed nnUNetv2_predict) decodes in SimpleITK with zeros past the cut: never a
    silent score."""
    broken = folders / role / "case_001.nii.gz"
    keep_first_bytes(broken, broken.stat().st_size // 2)
    line = error_line(evaluate(folders, installed=role == "pred"), 1, str(broken), "truncated", "case_001", "again")
    if role == "pred":
        assert "predict case case_001 again" in line
    assert not (folders / "report").exists()


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_prediction_with_a_truncated_header_is_a_one_line_error(tmp_path: Path, ending: str):
    root = make_folders(tmp_path, ending)
    broken = root / "pred" / f"case_002{ending}"
    keep_first_bytes(broken, 100)
    error_line(evaluate(root), 1, str(broken), "case_002")
    assert not (root / "report").exists()


@pytest.mark.parametrize("role, change, values", [
    ("pred", lambda seg: np.where(seg == 2, 3, seg), "3"),  # tumour written as 3 in a 0/1/2 dataset
    ("pred", lambda seg: np.where(np.arange(seg.size).reshape(seg.shape) == 100, 5, seg), "5"),  # one stray 5
    ("labelsTs", lambda seg: np.where(seg == 1, 4, seg), "4"),
])
def test_undeclared_label_values_are_an_error_naming_case_and_values(folders, role, change, values):
    path = folders / role / "case_002.nii.gz"
    write_label_map(path, change(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))))
    line = error_line(evaluate(folders), 1, "case_002", str(path), f"label values {values} ", "dataset.json")
    assert "declared: 0, 1, 2" in line
    assert not (folders / "report").exists()


@pytest.mark.parametrize("content", [
    "{\"labels\": {\"background\": 0,",  # invalid JSON (cut off)
    json.dumps({"file_ending": ".nii.gz"}),  # no labels
    json.dumps({"labels": ["background", "liver"], "file_ending": ".nii.gz"}),  # labels not a map
])
def test_bad_dataset_json_is_named(folders: Path, content: str):
    bad = folders / "bad.json"
    bad.write_text(content)
    error_line(evaluate(folders, "-djfile", str(bad)), 2, str(bad))
    assert not (folders / "report").exists()


def test_plain_folders_without_dataset_json_take_the_labels_from_l(tmp_path: Path):
    root = make_folders(tmp_path, dataset_json=False)
    result = evaluate(root, "-l", "1", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((root / "report" / "summary.json").read_text())
    settings = summary["settings"]
    assert settings["dataset_json"] is None and settings["file_ending"] == ".nii.gz"
    assert settings["labels"] == {"1": "label_1", "2": "label_2"}
    assert summary["folders"]["pred"]["n_cases"] == 3
    # the same numbers as with a dataset.json
    (root / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
    with_json = evaluate(root, out="report_json")
    assert with_json.returncode == 0, with_json.stderr[-3000:]
    cases = json.loads((root / "report_json" / "summary.json").read_text())["folders"]["pred"]["metric_per_case"]
    assert [c["metrics"] for c in cases] == [c["metrics"] for c in summary["folders"]["pred"]["metric_per_case"]]
    # without a dataset.json, -l declares the values: a 2 in the files is not one of -l 1
    os.remove(root / "dataset.json")
    line = error_line(evaluate(root, "-l", "1", out="report_l1"), 1, "case_000", "label values 2 ", "-l")
    assert "declared: 0, 1" in line and not (root / "report_l1").exists()
