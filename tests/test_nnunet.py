"""nnunetv2_tumorsynth.nnunet: label roles, tiny plans, the installed trainers folder, the DDPM checkpoint lookup
(no nnU-Net run; the trainers through the real CLIs are in test_nnunet_e2e.py)."""

from __future__ import annotations

import os

import pytest

from nnunetv2_tumorsynth.nnunet import find_ddpm_checkpoint, make_tiny_plans, organ_and_tumour_labels, trainers_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "labels, expected",
    [
        ({"background": 0, "liver": 1, "tumour": 2}, (1, 2)),
        ({"background": 0, "Liver": 1, "Tumor": 2}, (1, 2)),
        ({"background": 0, "liver": 2, "liver_lesion": 1}, (2, 1)),
    ],
)
def test_label_roles_from_names(labels, expected):
    assert organ_and_tumour_labels({"labels": labels}) == expected


def test_label_roles_error_lists_labels_and_override_works():
    labels = {"labels": {"background": 0, "kidney": 1, "mass": 2}}
    with pytest.raises(ValueError, match="kidney.*organ-label"):
        organ_and_tumour_labels(labels)
    assert organ_and_tumour_labels(labels, organ="kidney", tumour=2) == (1, 2)
    with pytest.raises(ValueError, match="not among"):
        organ_and_tumour_labels(labels, organ="spleen", tumour="mass")


def test_tiny_plans_shrink_network_and_keep_data():
    plans = {"plans_name": "nnUNetPlans", "configurations": {"3d_fullres": {
        "data_identifier": "nnUNetPlans_3d_fullres", "patch_size": [64, 128, 128], "batch_size": 2,
        "architecture": {"arch_kwargs": {"n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320]}}},
        "2d": {}}}
    tiny = make_tiny_plans(plans)
    config = tiny["configurations"]["3d_fullres"]
    assert list(tiny["configurations"]) == ["3d_fullres"] and tiny["plans_name"] == "tumorsynthTinyPlans"
    assert config["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert config["architecture"]["arch_kwargs"]["features_per_stage"] == [4, 8, 16]
    assert config["patch_size"] == [16, 32, 32]
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [64, 128, 128], "source plans untouched"
    with pytest.raises(ValueError):
        make_tiny_plans(plans, patch_size=(15, 32, 32))


def test_trainers_folder_is_the_installed_one():
    path = trainers_path()
    assert os.path.isfile(os.path.join(path, "nnUNetTrainerTiny.py"))
    if os.environ.get("TUMORSYNTH_EXPECT_INSTALLED"):
        # CI installs with a plain `pip install .`: the trainers must come from site-packages
        assert os.path.abspath(path) != os.path.join(REPO, "trainers"), f"{path} is the source checkout"
        assert "site-packages" in path


def test_missing_ddpm_checkpoint_says_what_to_run(monkeypatch):
    monkeypatch.delenv("TUMORSYNTH_DDPM_CHECKPOINT", raising=False)
    with pytest.raises(FileNotFoundError, match="tumorsynth_pretrain_ddpm -d Dataset123_X -c 3d_fullres -f 0"):
        find_ddpm_checkpoint("Dataset123_X", "nnUNetPlans", "3d_fullres", 0)
