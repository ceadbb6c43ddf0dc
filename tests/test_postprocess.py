"""tumorsynth_postprocess: predicted tumours smaller than the fold's smallest annotated one allows are removed."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import cli, run

from nnunetv2_tumorsynth.nnunet.postprocess import min_tumour_volume_mm3, remove_small_tumours


def test_small_tumours_take_the_label_around_them_and_the_threshold_is_in_mm3():
    """Two 2-voxel specks (one inside the organ, one outside) go, a 27-voxel tumour stays; a removed speck takes
    the organ label inside the organ and background outside. The same voxel count counts in mm^3: with 3 mm
    slices the specks are 18 mm^3 and stay under a 10 mm^3 threshold."""
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[2:10, 2:10, 2:10] = 1
    labels[3:6, 3:6, 3:6] = 2
    labels[8, 8, 7:9] = 2  # inside the organ
    labels[0, 11, 10:12] = 2  # outside
    cleaned, removed = remove_small_tumours(labels, 2, (1.0, 1.0, 1.0), min_volume_mm3=10.0)
    assert removed == 2
    assert (cleaned[3:6, 3:6, 3:6] == 2).all() and (cleaned == 2).sum() == 27
    assert (cleaned[8, 8, 7:9] == 1).all() and (cleaned[0, 11, 10:12] == 0).all()
    assert (labels == 2).sum() == 31, "the input is not modified"
    kept, removed = remove_small_tumours(labels, 2, (3.0, 3.0, 1.0), min_volume_mm3=10.0)
    assert removed == 0 and np.array_equal(kept, labels)
    assert min_tumour_volume_mm3(4.0) == pytest.approx(4 / 3 * math.pi * 2.0**3)


def md5(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


@pytest.mark.e2e
def test_postprocess_cli_removes_specks_with_the_folds_threshold(phantom_dataset, tmp_path):
    """Predictions = the phantom's test labels plus a one-voxel tumour inside the liver and one outside: the command
    removes both with the threshold from fold 0's annotated training tumours, keeps every real tumour, copies
    dataset.json, records what it did, never touches -i, takes a threshold of the user's (--min-volume-mm3),
    refuses an existing -o and names a truncated file."""
    predictions = tmp_path / "pred"
    predictions.mkdir()
    shutil.copy(os.path.join(phantom_dataset.raw, "dataset.json"), predictions / "dataset.json")
    cases = ("phantomts_000", "phantomts_001")
    for case in cases:
        label = sitk.ReadImage(os.path.join(phantom_dataset.raw, "labelsTs", f"{case}.nii.gz"))
        array = sitk.GetArrayFromImage(label)
        liver = np.argwhere(array == 1)
        inside = liver[len(liver) // 2]
        array[tuple(inside)] = 2
        array[0, 0, 0] = 2
        speckled = sitk.GetImageFromArray(array)
        speckled.CopyInformation(label)
        sitk.WriteImage(speckled, str(predictions / f"{case}.nii.gz"))
    before = {name: md5(str(predictions / name)) for name in os.listdir(predictions)}
    out = tmp_path / "out"
    arguments = [cli("tumorsynth_postprocess"), "-i", str(predictions), "-o", str(out), "-d",
                 str(phantom_dataset.dataset_id), "-p", phantom_dataset.plans, "-f", "0"]
    result = run(arguments, env=phantom_dataset.env)
    assert "fold 0" in result.stdout
    record = json.loads((out / "postprocessing.json").read_text())
    assert record["tumour_label"] == 2 and record["removed_total"] >= 4 and "fold 0" in record["rule"]
    assert 0 < record["min_volume_mm3"] < 4 / 3 * math.pi * 4.0**3, "half the radius of a phantom tumour (>= 4 mm)"
    assert (out / "dataset.json").is_file()
    for case in cases:
        reference = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(phantom_dataset.raw, "labelsTs",
                                                                       f"{case}.nii.gz")))
        cleaned = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(cleaned), reference), "specks gone, the real tumours kept"
        assert cleaned.GetSpacing() == sitk.ReadImage(str(predictions / f"{case}.nii.gz")).GetSpacing()
    assert before == {name: md5(str(predictions / name)) for name in os.listdir(predictions)}, "-i untouched"
    everything = run(arguments[:4] + [str(tmp_path / "all_gone")] + arguments[5:] + ["--min-volume-mm3", "1e9"],
                     env=phantom_dataset.env)
    assert "given: --min-volume-mm3 1e+09" in everything.stdout
    assert not (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "all_gone" / f"{cases[0]}.nii.gz"))) == 2).any()
    again = run(arguments, env=phantom_dataset.env, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr
    data = (predictions / f"{cases[0]}.nii.gz").read_bytes()
    (predictions / f"{cases[0]}.nii.gz").write_bytes(data[: len(data) // 2])
    broken = run(arguments + ["--overwrite"], env=phantom_dataset.env, check=False)
    assert broken.returncode == 1 and cases[0] in broken.stderr
