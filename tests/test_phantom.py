"""nnunetv2_tumorsynth.phantom: the phantom case, the phantom dataset on disk, and the session's dataset as
nnU-Net planned it (that one test is e2e: it uses the ``phantom_dataset`` fixture)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_tumorsynth.phantom import PhantomSettings, make_phantom_case, write_phantom_dataset


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


def test_tumour_polarity_fixes_the_sign_and_nothing_else():
    from scipy import ndimage

    def tumour_means(polarity):
        image, label = make_phantom_case(np.random.default_rng(5), PhantomSettings(tumour_polarity=polarity))
        components, n = ndimage.label(label == 2)
        organ = np.median(image[label == 1])
        return label, [image[components == i].mean() - organ for i in range(1, n + 1)]

    label_either, either = tumour_means("either")
    assert min(either) < 0 < max(either), "this seed draws both polarities"
    for polarity, sign in (("darker", -1), ("brighter", 1)):
        label, means = tumour_means(polarity)
        assert np.array_equal(label, label_either), "the same tumours, only their sign fixed"
        assert all(sign * m > 15 for m in means), (polarity, means)


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
