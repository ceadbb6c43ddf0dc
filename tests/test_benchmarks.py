"""The benefit and fidelity benchmarks' options and the real-anatomy dataset builder, without training.

The builder runs on a stand-in source made here (an MR-like volume with a liver label 5), not on the real MR of
../shared, so the test makes its own data."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(REPO, "benchmarks")


def benchmark_module(name: str):
    """benchmarks/<name>.py as a module (its sibling modules importable, as when it runs as a script)."""
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stand_in_source(tmp_path_factory) -> str:
    """mr_abdomen.nii.gz / mr_abdomen_seg.nii.gz: 20 x 60 x 70 voxels of 3 mm, a textured ellipsoid 'liver' (5)."""
    folder = tmp_path_factory.mktemp("real_mr_stand_in")
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:20, :60, :70]
    liver = ((z - 10) / 8.5) ** 2 + ((y - 30) / 22) ** 2 + ((x - 35) / 26) ** 2 <= 1
    image = 60 + 40 * liver + rng.normal(0, 8, liver.shape)
    files = ((image, "mr_abdomen.nii.gz", np.float32), (5 * liver, "mr_abdomen_seg.nii.gz", np.uint8))
    for array, name, dtype in files:
        volume = sitk.GetImageFromArray(array.astype(dtype))
        volume.SetSpacing((3.0, 3.0, 3.0))
        sitk.WriteImage(volume, str(folder / name))
    return str(folder)


def md5_of_split(folder: str, split: str) -> str:
    digest = hashlib.md5()
    for sub in (f"images{split}", f"labels{split}"):
        for name in sorted(os.listdir(os.path.join(folder, sub))):
            digest.update(sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, sub, name))).tobytes())
    return digest.hexdigest()


def test_real_mr_dataset_builder(stand_in_source, tmp_path):
    real_mr = benchmark_module("real_mr_dataset")
    raw = str(tmp_path / "raw")
    scarce = real_mr.write_real_mr_dataset(raw, 961, "Scarce", 4, 1, 3, seed=0, test_seed=1000,
                                           source_dir=stand_in_source)
    full = real_mr.write_real_mr_dataset(raw, 962, "Full", 3, 3, 3, seed=5, test_seed=1000,
                                         source_dir=stand_in_source)
    with open(os.path.join(scarce, "dataset.json")) as f:
        assert json.load(f)["labels"] == {"background": 0, "liver": 1, "tumour": 2}
    labels = [sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(scarce, "labelsTr", n)))
              for n in sorted(os.listdir(os.path.join(scarce, "labelsTr")))]
    assert [bool((label == 2).any()) for label in labels] == [True, False, False, False]  # only 1 annotated
    assert all(set(np.unique(label)) <= {0, 1, 2} for label in labels)
    # the test set depends only on the test seed: the same bytes whatever the training settings
    assert md5_of_split(scarce, "Ts") == md5_of_split(full, "Ts")
    with open(os.path.join(scarce, "lesions.json")) as f:
        lesions = json.load(f)["lesions"]
    assert lesions and all(lesion["contrast_sd"] < 0 for lesion in lesions)  # the recipe's lesions are hypointense
    with pytest.raises(FileExistsError):
        real_mr.write_real_mr_dataset(raw, 961, "Scarce", 4, 1, 3, source_dir=stand_in_source)
    with pytest.raises(ValueError, match="n_annotated"):
        real_mr.write_real_mr_dataset(raw, 963, "Bad", 2, 3, 1, source_dir=stand_in_source)
    with pytest.raises(FileNotFoundError, match="mr_abdomen"):
        real_mr.write_real_mr_dataset(raw, 964, "Missing", 2, 1, 1, source_dir=str(tmp_path))


def test_bench_benefit_options_are_checked_before_any_work(tmp_path):
    script = os.path.join(BENCHMARKS, "bench_benefit.py")
    run = [sys.executable, script, "--workdir", str(tmp_path / "work")]
    result = subprocess.run([*run, "--arms", "heur"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "plain arm is the baseline" in result.stderr
    result = subprocess.run([*run, "--data", "ct"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "real_mr" in result.stderr
    assert not os.path.exists(tmp_path / "work")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "data.txt").write_text("phantom")
    result = subprocess.run([*run, "--data", "real_mr", "--reuse"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "holds --data phantom" in result.stderr


def test_bench_fidelity_summary():
    fidelity = benchmark_module("bench_fidelity")
    from nnunetv2_tumorsynth.synthesis.statistics import TumourStatistics

    real = [TumourStatistics(case="a", radius_mm=5.0, axis_ratios=(1.0, 1.0), contrast_sd=c, internal_sd=1.0,
                             border_gradient_sd=0.5, depth_mm=3.0) for c in (-1.0, -1.5, -2.0)]
    rows = [{"contrast_sd": c + 0.5, "real_contrast_sd": c, "internal_sd": 1.0, "real_internal_sd": 1.0,
             "fill_voxels": 10, "at_bounds": 1, "real_at_bounds": k, "masked_mse": -c}
            for k, c in enumerate((-1.0, -1.5, -2.0))]
    summary = fidelity.summarise(rows, real)
    assert summary["median_contrast_difference_sd"] == pytest.approx(0.5)
    assert summary["ks_internal_sd"] == pytest.approx(0.0)
    assert 0.0 < summary["ks_contrast"] <= 1.0
    assert summary["clamp_share"] == pytest.approx(0.1)
    assert summary["real_clamp_share"] == pytest.approx(0.1), "the replaced real tumours' own share, same voxels"
    assert summary["masked_mse"] == pytest.approx(1.5), "mean over lesions"
    clamp_keys = ("fill_voxels", "at_bounds", "real_at_bounds")
    heuristic_rows = [{k: v for k, v in r.items() if k not in clamp_keys} for r in rows]
    assert "clamp_share" not in fidelity.summarise(heuristic_rows, real)


def test_bench_benefit_makes_only_the_datasets_its_arms_train_on():
    benefit = benchmark_module("bench_benefit")
    assert benefit.needed_datasets(["plain", "heur"]) == ["Scarce"]
    assert benefit.needed_datasets(["plain", "full", "free"]) == ["Scarce", "Full", "Free"]


def test_bench_benefit_arms_of_the_same_trainer_train_into_their_own_results(tmp_path):
    benefit = benchmark_module("bench_benefit")
    folders = {arm: benefit.run_env({}, str(tmp_path), 1, arm)["nnUNet_results"] for arm in benefit.ARMS}
    assert folders["plain"] == folders["ddpm"] == folders["full"] == str(tmp_path / "results_run1")
    assert folders["gated"] == str(tmp_path / "results_run1_gated"), "gated and ddpm share trainer and dataset"
    assert folders["heur_before"] == str(tmp_path / "results_run1_heur_before")
    assert folders["ddpm_before"] == str(tmp_path / "results_run1_ddpm_before")


def test_bench_benefit_before_arms_switch_calibration_off(tmp_path):
    """The "before" arms' settings are valid trainer settings that turn calibration off; the DDPM one gets a
    checkpoint without its recorded intensity range."""
    import torch

    from nnunetv2_tumorsynth.bank.settings import SynthSettings

    benefit = benchmark_module("bench_benefit")
    for arm in ("heur_before", "ddpm_before"):
        path = tmp_path / f"{arm}.json"
        path.write_text(json.dumps({**benefit.SYNTH_SETTINGS, **benefit.ARM_SETTINGS[arm]}))
        settings = SynthSettings().updated_from_json(str(path))
        settings.check()
        assert settings.size != "data", "size 'data' is what turns calibration on"
    assert benefit.ARM_SETTINGS["heur_before"]["heuristic_polarity"] == "either"
    checkpoint = tmp_path / "ddpm.pth"
    torch.save({"metadata": {"intensity_range": [-1.0, 1.0], "crop": [8, 8, 8]}, "weights": {}}, checkpoint)
    stripped = benefit.checkpoint_without_range(str(checkpoint), str(tmp_path / "no_range.pth"))
    metadata = torch.load(stripped, weights_only=True)["metadata"]
    assert "intensity_range" not in metadata and metadata["crop"] == [8, 8, 8]


def write_benefit(folder, rows: dict) -> None:
    os.makedirs(folder)
    with open(os.path.join(folder, "benefit.json"), "w") as f:
        json.dump({"rows": rows}, f)


def test_bench_label_efficiency_options_table_curve_and_figure(tmp_path):
    script = os.path.join(BENCHMARKS, "bench_label_efficiency.py")
    work = tmp_path / "curve"
    result = subprocess.run([sys.executable, script, "--workdir", str(work), "--annotated", "0", "2"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "between 1 and --train 8" in result.stderr and not work.exists()
    result = subprocess.run([sys.executable, script, "--workdir", str(work), "--report-only"], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 2 and "no results" in result.stderr

    def run(dice, sensitivity=0.5, fp=1.0):
        return {"dice": dice, "sensitivity": sensitivity, "fp_per_case": fp}

    plain = {1: [0.0, 0.1], 2: [0.2, 0.2], 4: [0.5, 0.6], 8: [0.8, 0.9]}
    heur = {1: [0.3, 0.3], 2: [0.6, 0.7], 4: [0.7, 0.7], 8: [0.9, 0.9]}
    for k in plain:
        write_benefit(work / f"annotated{k}", {"plain": [run(d) for d in plain[k]], "heur": [run(d) for d in heur[k]]})
    result = subprocess.run([sys.executable, script, "--workdir", str(work), "--report-only"], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "| 4 | heur | 2 | 0.700 ± 0.000 (0.700 / 0.700)" in result.stdout
    assert "1 annotated case(s) reach the tumour Dice that plain nnU-Net reaches with 2" in result.stdout
    assert "2 annotated case(s) reach the tumour Dice that plain nnU-Net reaches with 4" in result.stdout
    assert (work / "label_efficiency.png").stat().st_size > 1000

    efficiency = benchmark_module("bench_label_efficiency")
    command = efficiency.benefit_command(
        type("Args", (), {"workdir": str(work), "train": 8, "test": 12, "epochs": 10, "arm": "heur",
                          "data": "real_mr", "seed": 3})(), 4, 2)
    assert command[command.index("--workdir") + 1] == str(work / "annotated4")
    for option, value in (("--annotated", "4"), ("--runs", "2"), ("--data", "real_mr"), ("--seed", "3")):
        assert command[command.index(option) + 1] == value
    assert "--reuse" in command and command[command.index("--arms") + 1:command.index("--arms") + 3] == ["plain",
                                                                                                        "heur"]


def test_false_positive_components_are_the_predicted_tumours_touching_no_reference_tumour():
    fp = benchmark_module("false_positive_components")
    reference = np.zeros((10, 20, 20), np.uint8)
    reference[2:8, 2:18, 2:18] = 1  # organ
    reference[4:6, 4:7, 4:7] = 2  # one tumour
    image = np.where(reference == 1, 0.0, -5.0) + 0.1 * np.random.default_rng(0).normal(size=reference.shape)
    prediction = np.zeros_like(reference)
    prediction[4:6, 5:8, 5:8] = 2  # overlaps the tumour: a detection
    prediction[3, 12, 12] = 2  # a one-voxel speck inside the organ
    image[3, 12, 12] = -2.0
    prediction[0:2, 0:2, 0:2] = 2  # 8 voxels outside the organ (26-connected)
    rows = sorted(fp.false_positive_components(prediction, reference, image), key=lambda r: r["voxels"])
    assert [r["voxels"] for r in rows] == [1, 8]
    assert [r["inside_organ"] for r in rows] == [True, False]
    assert rows[0]["contrast_sd"] < -5
