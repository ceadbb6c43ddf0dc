"""Synthetic tumours with nnU-Net's 2d configuration (real CLIs on the phantom), and the cascade's refusal.

nnU-Net stores 2d cases as 3D volumes resampled in-plane only, each keeping its own slice spacing: the bank
makes tumours in 3D there (z spacing: the median slice spacing of the cases) and the 2d network trains on
their slices.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re

import numpy as np
import pytest
from conftest import cli, log_line, run

pytestmark = pytest.mark.e2e

PLANS_2D = "tumorsynthTiny2dPlans"
TRAINER = "nnUNetTrainerSynthTumorHeuristicTiny"
PHANTOM_SPACING = (3.0, 1.5, 1.5)  # z, y, x (phantom.PhantomSettings), every case the same


@pytest.fixture(scope="module")
def phantom_2d(phantom_dataset):
    """The session's phantom also preprocessed for 2d, with tiny 2d plans.

    nnU-Net's planner always writes the 2d configuration into nnUNetPlans.json (``-c`` only selects what is
    preprocessed), so ``nnUNetv2_preprocess -c 2d`` completes what ``nnUNetv2_plan_and_preprocess -c 2d
    3d_fullres`` would do, without planning again.
    """
    ds = phantom_dataset
    plans = json.load(open(os.path.join(ds.preprocessed, "nnUNetPlans.json")))
    assert plans["configurations"]["2d"]["spacing"] == list(PHANTOM_SPACING[1:])
    if not glob.glob(os.path.join(ds.preprocessed, "nnUNetPlans_2d", "*.pkl")):
        run([cli("nnUNetv2_preprocess"), "-d", str(ds.dataset_id), "-c", "2d", "-np", "1"], env=ds.env)
    if not os.path.isfile(os.path.join(ds.preprocessed, PLANS_2D + ".json")):
        # 2d: the patch is (y, x), the last two of --patch; a whole 64 x 64 slice keeps validation short
        run([cli("tumorsynth_tiny_plans"), "-d", str(ds.dataset_id), "-c", "2d", "-o", PLANS_2D, "--patch", "1", "64",
             "64"], env=ds.env)
    tiny = json.load(open(os.path.join(ds.preprocessed, PLANS_2D + ".json")))
    config = tiny["configurations"]["2d"]
    assert list(tiny["configurations"]) == ["2d"] and config["patch_size"] == [64, 64]
    assert config["architecture"]["arch_kwargs"]["strides"] == [[1, 1], [2, 2], [2, 2]]
    return ds


@pytest.fixture(scope="module")
def run_2d(phantom_2d, tmp_path_factory):
    settings = tmp_path_factory.mktemp("s2d") / "settings.json"
    settings.write_text(json.dumps({"probability": 1.0, "dump_samples": 20}))
    run([cli("nnUNetv2_train"), str(phantom_2d.dataset_id), "2d", "0", "-p", PLANS_2D, "-tr", TRAINER, "-device",
         "cpu"], env={**phantom_2d.env, "TUMORSYNTH_SETTINGS": str(settings)})
    return os.path.join(os.environ["nnUNet_results"], phantom_2d.name, f"{TRAINER}__{PLANS_2D}__2d", "fold_0")


def test_2d_training_makes_3d_tumours_and_uses_them(run_2d, phantom_2d):
    folder = run_2d
    assert os.path.isfile(os.path.join(folder, "checkpoint_final.pth"))
    log = open(glob.glob(os.path.join(folder, "training_log_*.txt"))[0]).read()
    assert log_line(log, "2d", "3D", f"{list(PHANTOM_SPACING)} mm"), "the bank's 3-axis spacing is logged"
    assert "WARNING" not in log, "the phantom's cases share one slice spacing"
    assert int(re.search(r"initial bank (\d+) entries", log)[1]) > 0
    uses = [int(u) for u in re.findall(r"(\d+) of \d+ samples the data loaders prepared received one", log)]
    assert len(uses) == 2 and sum(uses) > 0, "entries reached the 2d network's training samples"

    split = json.load(open(os.path.join(phantom_2d.preprocessed, "splits_final.json")))[0]
    entries = glob.glob(os.path.join(folder, "synthesis_bank", "phantom*", "*.npz"))
    assert entries
    large = 0
    for path in entries:
        assert os.path.basename(os.path.dirname(path)) in split["train"]
        e = np.load(path)
        mask = e["mask"]
        assert mask.ndim == 3 and len(e["corner"]) == 3 and mask.any()
        # the bank's spacing is 3-axis mm: its volume is the mask's voxels at 3.0 x 1.5 x 1.5 mm
        assert np.isclose(float(e["volume_ml"]), mask.sum() * np.prod(PHANTOM_SPACING) / 1000.0)
        radius_mm = (3.0 * float(e["volume_ml"]) * 1000.0 / (4.0 * np.pi)) ** (1 / 3)
        if radius_mm >= PHANTOM_SPACING[0]:  # at least two slices thick
            large += 1
            assert mask.any(axis=(1, 2)).sum() > 1, f"{path}: a {radius_mm:.1f} mm tumour lies in one slice"
    assert large, "no entry large enough to span several slices"
    # the z extent in mm matches the in-plane one (a tumour is round in mm, not in voxels): z is 3.0 mm here
    extents = np.array([np.load(p)["mask"].shape for p in entries]) * np.array(PHANTOM_SPACING)
    assert 0.6 < np.median(extents[:, 0] / extents[:, 1:].mean(axis=1)) < 1.6

    dumps = glob.glob(os.path.join(folder, "synthesis_bank", "dumps", "*.npz"))
    assert dumps
    for path in dumps:
        d = np.load(path)
        m = d["mask"]
        assert np.array_equal(d["data_after"][:, ~m], d["data_before"][:, ~m])
        assert np.all(d["seg_after"][:, m] == 2)


def test_2d_bank_previews_and_realism(run_2d, tmp_path):
    """A 2d bank is read with the dataset's 3-axis spacing: previews and realism statistics work on it."""
    bank = os.path.join(run_2d, "synthesis_bank")
    run([cli("tumorsynth_preview"), "-i", bank, "-o", str(tmp_path / "png"), "--max", "2", "--no-progress"])
    assert glob.glob(str(tmp_path / "png" / "page*.png"))
    run([cli("tumorsynth_realism"), "-s", bank, "-o", str(tmp_path / "realism"), "--no-progress"])
    report = json.load(open(tmp_path / "realism" / "realism.json"))
    assert report["n_synthetic"] > 0 and report["n_real"] > 0


def test_2d_spacing_ddpm_check_and_pretraining_source(phantom_2d, tmp_path, monkeypatch):
    """In-process: the 3-axis spacing, the slice-spacing warning, the DDPM compatibility error naming
    ``tumorsynth_pretrain_ddpm -c 2d``, and the 2d spacing of tumorsynth_pretrain_ddpm's data source."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    import nnunetv2_tumorsynth.bank.session as injection
    import nnunetv2_tumorsynth.nnunet as nnunet
    from nnunetv2_tumorsynth.bank.settings import SynthSettings
    from nnunetv2_tumorsynth.ddpm import build_model, make_metadata, save_checkpoint
    from nnunetv2_tumorsynth.ddpm.data import open_source
    from nnunetv2_tumorsynth.nnunet import PreprocessedDataset

    ds = phantom_2d
    plans = json.load(open(os.path.join(ds.preprocessed, PLANS_2D + ".json")))
    dataset_json = json.load(open(os.path.join(ds.preprocessed, "dataset.json")))
    pm = PlansManager(plans)
    cm = pm.get_configuration("2d")
    assert nnunet.preprocessed_spacing_mm(ds.name, plans, cm.spacing) == PHANTOM_SPACING
    assert open_source(ds.dataset_id, PLANS_2D, "2d", 0).spacing == PHANTOM_SPACING

    def training(settings, log):
        dataset = PreprocessedDataset(ds.name, plans, "2d", dataset_json)
        return injection.SyntheticTumourTraining(settings, log.append, str(tmp_path / "out"), dataset, 0, "cpu")

    heuristic = SynthSettings(texture="heuristic")
    log: list[str] = []
    assert training(heuristic, log).bank.spacing == PHANTOM_SPACING

    # cases with other slice spacings: the median is used, and the log says so
    slices = [3.0] * 5 + [5.0, 5.0, 2.5]
    monkeypatch.setattr(nnunet, "case_slice_spacings_mm", lambda name, plans: slices)
    monkeypatch.setattr(injection, "case_slice_spacings_mm", lambda name, plans: slices)
    log = []
    assert training(heuristic, log).spacing == PHANTOM_SPACING
    assert log_line(log, "WARNING", "3 of 8", "2.5", "median 3 mm"), log
    monkeypatch.undo()

    def checkpoint(spacing, configuration):
        model = build_model("tiny")
        meta = make_metadata(model, crop_size_vox=(16, 32, 32), spacing_mm=spacing,
                             normalisation={"scheme": "ZScoreNormalization"},
                             datasets=[{"name": ds.name, "configuration": configuration, "fold": 0}])
        return str(save_checkpoint(tmp_path / f"{configuration}.pth", model, meta))

    ddpm = SynthSettings(texture="ddpm", ddpm_steps=2)
    monkeypatch.setenv("TUMORSYNTH_DDPM_CHECKPOINT", checkpoint((2.0, 1.0, 1.0), "3d_fullres"))
    with pytest.raises(ValueError, match="spacing mismatch") as err:
        training(ddpm, [])
    assert f"tumorsynth_pretrain_ddpm -d {ds.name} -c 2d -f 0 -p {PLANS_2D}" in str(err.value)
    assert "own slice spacing" in str(err.value) and "['3d_fullres']" in str(err.value)
    # a model whose spacing matches the 2d cases' 3D spacing is accepted
    monkeypatch.setenv("TUMORSYNTH_DDPM_CHECKPOINT", checkpoint(PHANTOM_SPACING, "2d"))
    log = []
    training(ddpm, log)
    assert any("diffusion model" in m for m in log)


def test_cascade_is_refused_clearly_lowres_is_not(phantom_dataset, tmp_path):
    """3d_cascade_fullres: the previous stage's segmentation channel would never show the synthetic tumours, so
    the trainer refuses it at start; 3d_lowres (a plain 3d configuration) trains as 3d_fullres does."""
    ds = phantom_dataset
    plans = json.load(open(os.path.join(ds.preprocessed, ds.plans + ".json")))
    cascade = copy.deepcopy(plans)
    cascade["plans_name"] = "tumorsynthTinyCascadePlans"
    full = cascade["configurations"]["3d_fullres"]
    cascade["configurations"]["3d_lowres"] = {**copy.deepcopy(full), "next_stage": ["3d_cascade_fullres"]}
    cascade["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    path = os.path.join(ds.preprocessed, cascade["plans_name"] + ".json")
    with open(path, "w") as f:
        json.dump(cascade, f)
    try:
        result = run([cli("nnUNetv2_train"), str(ds.dataset_id), "3d_cascade_fullres", "0", "-p",
                      cascade["plans_name"], "-tr", TRAINER, "-device", "cpu"], env=ds.env, check=False)
        assert result.returncode != 0
        out = result.stdout + result.stderr
        assert "does not support the cascade configuration '3d_cascade_fullres'" in out
        assert "'3d_lowres'" in out and "Train 2d, 3d_fullres" in out
    finally:
        os.remove(path)

    import torch
    from nnunetv2_tumorsynth_trainers.nnUNetTrainerSynthTumor import nnUNetTrainerSynthTumorHeuristicTiny

    dataset_json = json.load(open(os.path.join(ds.preprocessed, "dataset.json")))
    # nnUNetv2_train adds "continue_training" to the plans it hands the trainer
    trainer = nnUNetTrainerSynthTumorHeuristicTiny({**cascade, "continue_training": False}, "3d_lowres", 0,
                                                   dataset_json, torch.device("cpu"))
    assert not trainer.is_cascaded and trainer.synthesis is None
