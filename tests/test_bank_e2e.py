"""nnUNetTrainerSynthTumor* through the real nnUNetv2_train / nnUNetv2_predict CLIs on the phantom."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import cli, log_line, run

pytestmark = pytest.mark.e2e

TUMOUR_FREE = {"phantomtr_001", "phantomtr_005"}


def results_folder(ds, trainer: str) -> str:
    return os.path.join(os.environ["nnUNet_results"], ds.name, f"{trainer}__{ds.plans}__3d_fullres", "fold_0")


def train(ds, trainer: str, tmp_path, extra_env: dict | None = None, settings: dict | None = None, check=True,
          fold: str = "0"):
    env = dict(ds.env)
    if settings is not None:
        path = tmp_path / f"{trainer}_settings.json"
        path.write_text(json.dumps(settings))
        env["TUMORSYNTH_SETTINGS"] = str(path)
    env.update(extra_env or {})
    return run([cli("nnUNetv2_train"), str(ds.dataset_id), "3d_fullres", fold, "-p", ds.plans, "-tr", trainer,
                "-device", "cpu"], env=env, check=check)


def check_synthetic_samples(folder: str, preprocessed: str) -> None:
    """Dumped overlays: tumour label added, image changed only inside the synthetic mask, training cases only."""
    split = json.load(open(os.path.join(preprocessed, "splits_final.json")))[0]
    dumps = glob.glob(os.path.join(folder, "synthesis_bank", "dumps", "*.npz"))
    assert dumps, "no synthetic tumour reached a training sample"
    cases = set()
    for path in dumps:
        case = os.path.basename(path).split("__")[0]
        cases.add(case)
        d = np.load(path)
        mask = d["mask"]
        assert np.array_equal(d["data_after"][:, ~mask], d["data_before"][:, ~mask])
        assert not np.allclose(d["data_after"][:, mask], d["data_before"][:, mask])
        assert np.all(d["seg_after"][:, mask] == 2)
        if case in TUMOUR_FREE:
            assert not (d["seg_before"] == 2).any() and (d["seg_after"] == 2).any()
    used = {json.loads(line)["case"] for f in glob.glob(os.path.join(folder, "synthesis_bank", "usage", "*.jsonl"))
            for line in open(f)}
    assert used and used <= set(split["train"]), "synthetic tumours only in training cases"
    assert not used & set(split["val"]), "validation cases never receive synthetic tumours"
    assert cases & TUMOUR_FREE, "a tumour-free training case received a synthetic tumour"


@pytest.fixture(scope="module")
def heuristic_run(phantom_dataset, tmp_path_factory):
    """Synchronous synthesis (the default on CPU); the resume test (fold 1) and the DDPM test (fold 2) run the
    background generator."""
    result = train(phantom_dataset, "nnUNetTrainerSynthTumorHeuristicTiny", tmp_path_factory.mktemp("h"),
                   settings={"probability": 1.0, "dump_samples": 100})
    return result, results_folder(phantom_dataset, "nnUNetTrainerSynthTumorHeuristicTiny")


def test_heuristic_trainer_injects_synthetic_tumours(heuristic_run, phantom_dataset):
    result, folder = heuristic_run
    log = open(glob.glob(os.path.join(folder, "training_log_*.txt"))[0]).read()
    assert "'probability': 1.0" in log, "settings from TUMORSYNTH_SETTINGS are recorded in the log"
    assert log_line(log, "synchronous", "CUDA"), "the log says why synthesis is synchronous"
    assert log_line(log, "initial bank", "every epoch", "synchronous")
    assert log.count("samples the data loaders prepared received one") == 2, "one report per epoch"
    counts = [(int(o), int(n)) for o, n in re.findall(r"(\d+) of (\d+) samples the data loaders prepared", log)]
    assert all(0 < o <= n for o, n in counts), "overlays are counted against the samples the loaders prepared"
    assert "mean volume" in log and " ml)" in log
    waits = [float(w) for w in re.findall(r"training waited ([0-9.]+) s", log)]
    busy = [float(b) for b in re.findall(r"generator busy ([0-9.]+) s", log)]
    assert len(waits) == 2 and waits == busy, "synchronous: training waits as long as synthesis works"
    assert glob.glob(os.path.join(folder, "synthetic_tumours_epoch*.png"))
    assert os.path.isfile(os.path.join(folder, "checkpoint_final.pth"))
    check_synthetic_samples(folder, phantom_dataset.preprocessed)


def test_predict_and_val_after_synthetic_training(heuristic_run, phantom_dataset, tmp_path):
    _, folder = heuristic_run
    out = tmp_path / "pred"
    run([cli("nnUNetv2_predict"), "-d", str(phantom_dataset.dataset_id), "-c", "3d_fullres", "-f", "0",
         "-p", phantom_dataset.plans, "-tr", "nnUNetTrainerSynthTumorHeuristicTiny",
         "-i", os.path.join(phantom_dataset.raw, "imagesTs"), "-o", str(out), "-device", "cpu", "-npp", "1",
         "-nps", "1"], env=phantom_dataset.env)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["phantomts_000.nii.gz", "phantomts_001.nii.gz"]
    bank_before = sorted(glob.glob(os.path.join(folder, "synthesis_bank", "*", "*.npz")))
    train_args = [cli("nnUNetv2_train"), str(phantom_dataset.dataset_id), "3d_fullres", "0", "-p",
                  phantom_dataset.plans, "-tr", "nnUNetTrainerSynthTumorHeuristicTiny", "-device", "cpu", "--val"]
    run(train_args, env=phantom_dataset.env)
    assert sorted(glob.glob(os.path.join(folder, "synthesis_bank", "*", "*.npz"))) == bank_before, \
        "--val must not synthesise"
    result = run([cli("nnUNetv2_find_best_configuration"), str(phantom_dataset.dataset_id), "-c", "3d_fullres",
                  "-tr", "nnUNetTrainerSynthTumorHeuristicTiny", "-p", phantom_dataset.plans, "-f", "0", "-np", "1"],
                 env=phantom_dataset.env)
    assert "nnUNetv2_predict -d Dataset990_Phantom" in result.stdout


def test_pretrained_weights_and_continue(heuristic_run, phantom_dataset, tmp_path):
    """-pretrained_weights (fold 1 starts from fold 0's network), then --c after an interruption: the resumed
    run keeps the bank, does not wait for an initial bank and synthesises in the background."""
    _, fold0 = heuristic_run
    trainer = "nnUNetTrainerSynthTumorHeuristicTiny"
    args = [cli("nnUNetv2_train"), str(phantom_dataset.dataset_id), "3d_fullres", "1", "-p", phantom_dataset.plans,
            "-tr", trainer, "-device", "cpu"]
    settings = tmp_path / "background.json"
    settings.write_text(json.dumps({"background": True}))
    env = {**phantom_dataset.env, "TUMORSYNTH_SETTINGS": str(settings)}
    result = run([*args, "-pretrained_weights", os.path.join(fold0, "checkpoint_final.pth")], env=env)
    assert "Loading pretrained weights" in result.stdout
    folder = os.path.join(os.environ["nnUNet_results"], phantom_dataset.name,
                          f"{trainer}__{phantom_dataset.plans}__3d_fullres", "fold_1")
    bank = sorted(glob.glob(os.path.join(folder, "synthesis_bank", "*", "*.npz")))
    assert bank
    # as if interrupted after the first epoch: only a checkpoint_latest.pth saying "1 epoch done" is left
    # (nnU-Net deletes checkpoint_latest.pth when a training finishes, so it is made from the final one)
    final = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    final["current_epoch"] = 1
    final["logging"] = {k: v[:1] for k, v in final["logging"].items()}
    torch.save(final, os.path.join(folder, "checkpoint_latest.pth"))
    os.remove(os.path.join(folder, "checkpoint_final.pth"))
    os.remove(os.path.join(folder, "checkpoint_best.pth"))
    logs_before = set(glob.glob(os.path.join(folder, "training_log_*.txt")))
    run([*args, "--c"], env=env)
    new_logs = set(glob.glob(os.path.join(folder, "training_log_*.txt"))) - logs_before
    assert len(new_logs) == 1, "nnU-Net starts a new log for the continued run"
    log = open(new_logs.pop()).read()
    assert "Epoch 1" in log and "Epoch 0" not in log
    assert log.count("samples the data loaders prepared received one") == 1
    assert "initial bank 0 entries" in log and "background generator makes" in log, "no wait on resume"
    assert "training waited 0.00 s" in log
    made = int(re.search(r"background generator stopped after waiting [0-9.]+ s; it made (\d+) entries", log)[1])
    bank_after = set(glob.glob(os.path.join(folder, "synthesis_bank", "*", "*.npz")))
    assert set(bank) <= bank_after, "the bank survives --c"
    assert len(bank_after - set(bank)) == made, "every entry the generator made is complete in the bank"
    assert not glob.glob(os.path.join(folder, "synthesis_bank", "*", ".*")), "no temporary file left"
    assert os.path.isfile(os.path.join(folder, "checkpoint_final.pth"))


def test_ddpm_trainer_without_checkpoint_says_what_to_run(phantom_dataset, tmp_path):
    # fold 3: no diffusion model is ever trained for it in the test suite
    result = train(phantom_dataset, "nnUNetTrainerSynthTumorTiny", tmp_path, check=False, fold="3",
                   extra_env={"TUMORSYNTH_DDPM_CHECKPOINT": ""})
    assert result.returncode != 0
    assert "tumorsynth_pretrain_ddpm -d Dataset990_Phantom -c 3d_fullres -f 3" in result.stdout + result.stderr


def test_ddpm_trainer_end_to_end(phantom_dataset, tmp_path):
    """Pretrain a tiny DDPM (fold 2), train SynthTumorTiny with it, then predict without the DDPM."""
    ds = phantom_dataset
    run([cli("tumorsynth_pretrain_ddpm"), "-d", str(ds.dataset_id), "-c", "3d_fullres", "-f", "2", "-p", ds.plans,
         "--preset", "tiny", "--epochs", "1", "--crop", "16", "32", "32", "-device", "cpu", "--overwrite"],
        env=ds.env)
    train(ds, "nnUNetTrainerSynthTumorTiny", tmp_path, fold="2",
                   settings={"probability": 1.0, "dump_samples": 100, "ddpm_steps": 5, "background": True})
    folder = os.path.join(os.environ["nnUNet_results"], ds.name, f"nnUNetTrainerSynthTumorTiny__{ds.plans}__3d_fullres",
                          "fold_2")
    log = open(glob.glob(os.path.join(folder, "training_log_*.txt"))[0]).read()
    assert "diffusion model" in log and "preset tiny" in log and "5 DPM++2M steps" in log
    assert "background generator makes" in log and log.count("training waited 0.00 s") == 2
    assert "background generator stopped" in log and "ERROR the background generator" not in log
    split = json.load(open(os.path.join(ds.preprocessed, "splits_final.json")))[2]
    dumps = glob.glob(os.path.join(folder, "synthesis_bank", "dumps", "*.npz"))
    assert dumps
    for path in dumps:
        assert os.path.basename(path).split("__")[0] in split["train"]
        d = np.load(path)
        assert np.array_equal(d["data_after"][:, ~d["mask"]], d["data_before"][:, ~d["mask"]])
        assert np.all(d["seg_after"][:, d["mask"]] == 2)

    ddpm = os.path.join(os.environ["nnUNet_results"], ds.name, f"tumorsynth_ddpm__{ds.plans}__3d_fullres")
    shutil.move(ddpm, ddpm + "_moved")  # inference must not need the diffusion model
    try:
        out = tmp_path / "pred"
        run([cli("nnUNetv2_predict"), "-d", str(ds.dataset_id), "-c", "3d_fullres", "-f", "2", "-p", ds.plans,
             "-tr", "nnUNetTrainerSynthTumorTiny", "-i", os.path.join(ds.raw, "imagesTs"), "-o", str(out),
             "-device", "cpu", "-npp", "1", "-nps", "1"], env=ds.env)
        assert len(list(out.glob("*.nii.gz"))) == 2
    finally:
        shutil.move(ddpm + "_moved", ddpm)
