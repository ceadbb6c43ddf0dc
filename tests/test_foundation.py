"""Foundation: phantom dataset, label roles, tiny plans, and trainer discovery through the real CLIs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import cli, run

from nnunetv2_tumorsynth.nnunet import make_tiny_plans, organ_and_tumour_labels, trainers_path
from nnunetv2_tumorsynth.phantom import PhantomSettings, make_phantom_case, write_phantom_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_phantom_case_has_organ_vessels_and_tumours():
    rng = np.random.default_rng(3)
    image, label = make_phantom_case(rng, PhantomSettings())
    assert image.shape == label.shape == (32, 64, 64)
    assert set(np.unique(label)) == {0, 1, 2}
    organ = image[label == 1]
    assert (organ > 180).mean() > 0.005, "vessels should be bright tubes inside the organ"
    assert abs(np.median(organ) - 120) < 15
    _, no_tumour = make_phantom_case(rng, PhantomSettings(), with_tumours=False)
    assert 2 not in no_tumour


def test_phantom_dataset_is_valid_and_geometry_is_not_trivial(phantom_dataset):
    ds = json.load(open(os.path.join(phantom_dataset.raw, "dataset.json")))
    assert ds["labels"] == {"background": 0, "liver": 1, "tumour": 2}
    assert ds["numTraining"] == 8
    img = sitk.ReadImage(os.path.join(phantom_dataset.raw, "imagesTr", "phantomtr_000_0000.nii.gz"))
    assert img.GetSpacing() == (1.5, 1.5, 3.0)
    assert not np.allclose(np.array(img.GetDirection()).reshape(3, 3), np.eye(3))
    tumour_free = [f for f in sorted(os.listdir(os.path.join(phantom_dataset.raw, "labelsTr")))
                   if 2 not in sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(phantom_dataset.raw, "labelsTr", f)))]
    assert tumour_free == ["phantomtr_001.nii.gz", "phantomtr_005.nii.gz"]
    # nnU-Net's own preprocessing ran (the fixture used --verify_dataset_integrity)
    assert os.path.isfile(os.path.join(phantom_dataset.preprocessed, "nnUNetPlans.json"))


def test_phantom_refuses_to_overwrite(tmp_path):
    write_phantom_dataset(str(tmp_path), 991, num_train=1, settings=PhantomSettings(shape=(8, 16, 16)))
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_phantom_dataset(str(tmp_path), 991, name="Other", num_train=1)
    write_phantom_dataset(str(tmp_path), 991, num_train=2, settings=PhantomSettings(shape=(8, 16, 16)),
                          overwrite=True)
    assert len(os.listdir(tmp_path / "Dataset991_Phantom" / "imagesTr")) == 2
    assert sorted(os.listdir(tmp_path)) == ["Dataset991_Phantom"], "no temporary folder left behind"


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


@pytest.fixture(scope="session")
def tiny_model(phantom_dataset):
    """nnUNetTrainerTiny trained through the real nnUNetv2_train CLI (found via nnUNet_extTrainer)."""
    result = run([cli("nnUNetv2_train"), str(phantom_dataset.dataset_id), "3d_fullres", "0",
                  "-p", phantom_dataset.plans, "-tr", "nnUNetTrainerTiny", "-device", "cpu"],
                 env=phantom_dataset.env)
    return result


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


def test_phantom_scarce_tumour_setting_shares_the_test_set(tmp_path):
    """--tumour-cases K: only the first K training cases carry tumours; --test-seed: identical test cases."""
    settings = PhantomSettings(tumour_free_every=0)
    scarce = write_phantom_dataset(str(tmp_path), 11, "Scarce", 3, 2, seed=1, settings=settings, tumour_cases=1,
                                   test_seed=5)
    full = write_phantom_dataset(str(tmp_path), 12, "Full", 3, 2, seed=1, settings=settings, tumour_cases=3,
                                 test_seed=5)

    def tumour_voxels(folder, split, case):
        return int((sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, f"labels{split}", case))) == 2).sum())

    assert tumour_voxels(scarce, "Tr", "phantomtr_000.nii.gz") > 0
    assert [tumour_voxels(scarce, "Tr", f"phantomtr_00{i}.nii.gz") for i in (1, 2)] == [0, 0]
    assert all(tumour_voxels(full, "Tr", f"phantomtr_00{i}.nii.gz") > 0 for i in range(3))
    for case in ("phantomts_000", "phantomts_001"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(scarce, "imagesTs", f"{case}_0000.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(full, "imagesTs", f"{case}_0000.nii.gz")))
        assert np.array_equal(a, b) and tumour_voxels(scarce, "Ts", f"{case}.nii.gz") > 0
    with pytest.raises(ValueError, match="tumour_cases"):
        write_phantom_dataset(str(tmp_path), 13, "Bad", 3, 0, settings=settings, tumour_cases=4)
