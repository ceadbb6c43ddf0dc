"""Our trainers found, trained and predicted through the real nnUNetv2_train / nnUNetv2_predict CLIs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import cli, run

pytestmark = pytest.mark.e2e


def test_nnunet_train_finds_our_trainer(tiny_model, phantom_dataset):
    assert "Using trainer 'nnUNetTrainerTiny' from" in tiny_model.stdout
    fold = os.path.join(os.environ["nnUNet_results"], phantom_dataset.name,
                        f"nnUNetTrainerTiny__{phantom_dataset.plans}__3d_fullres", "fold_0")
    assert os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))


def test_nnunet_train_without_env_fails_clearly(phantom_dataset):
    env = {k: v for k, v in phantom_dataset.env.items() if k != "nnUNet_extTrainer"}
    result = run([cli("nnUNetv2_train"), str(phantom_dataset.dataset_id), "3d_fullres", "0",
                  "-p", phantom_dataset.plans, "-tr", "nnUNetTrainerTiny", "-device", "cpu"], env=env, check=False)
    assert result.returncode != 0
    assert "nnUNet_extTrainer" in result.stderr + result.stdout


def test_nnunet_predict_with_our_trainer(tiny_model, phantom_dataset, tmp_path):
    out = tmp_path / "pred"
    run([cli("nnUNetv2_predict"), "-d", str(phantom_dataset.dataset_id), "-c", "3d_fullres", "-f", "0",
         "-p", phantom_dataset.plans, "-tr", "nnUNetTrainerTiny", "-i", os.path.join(phantom_dataset.raw, "imagesTs"),
         "-o", str(out), "-device", "cpu", "-npp", "1", "-nps", "1"], env=phantom_dataset.env)
    for case in ("phantomts_000", "phantomts_001"):
        pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        ref = sitk.ReadImage(os.path.join(phantom_dataset.raw, "imagesTs", f"{case}_0000.nii.gz"))
        assert pred.GetSize() == ref.GetSize()
        assert np.allclose(pred.GetDirection(), ref.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}


