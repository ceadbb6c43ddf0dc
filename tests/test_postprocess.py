"""tumorsynth_postprocess: predicted tumours smaller than the fold's smallest annotated one allows, or outside the
organ when every annotated one touches it, are removed."""

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
from scipy import ndimage

from nnunetv2_tumorsynth.nnunet.postprocess import min_tumour_volume_mm3, remove_implausible_tumours, tumours_touching


def test_small_tumours_take_the_label_around_them_and_the_threshold_is_in_mm3():
    """Two 2-voxel specks (one inside the organ, one outside) go, a 27-voxel tumour stays; a removed speck takes
    the organ label inside the organ and background outside. The same voxel count counts in mm^3: with 3 mm
    slices the specks are 18 mm^3 and stay under a 10 mm^3 threshold."""
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[2:10, 2:10, 2:10] = 1
    labels[3:6, 3:6, 3:6] = 2
    labels[8, 8, 7:9] = 2  # inside the organ
    labels[0, 11, 10:12] = 2  # outside
    cleaned, removed = remove_implausible_tumours(labels, 2, (1.0, 1.0, 1.0), min_volume_mm3=10.0)
    assert removed == {"small": 2, "outside_organ": 0}
    assert (cleaned[3:6, 3:6, 3:6] == 2).all() and (cleaned == 2).sum() == 27
    assert (cleaned[8, 8, 7:9] == 1).all() and (cleaned[0, 11, 10:12] == 0).all()
    assert (labels == 2).sum() == 31, "the input is not modified"
    kept, removed = remove_implausible_tumours(labels, 2, (3.0, 3.0, 1.0), min_volume_mm3=10.0)
    assert removed == {"small": 0, "outside_organ": 0} and np.array_equal(kept, labels)
    assert min_tumour_volume_mm3(4.0) == pytest.approx(4 / 3 * math.pi * 2.0**3)


def test_tumours_touching_no_organ_voxel_are_removed_with_the_organ_rule():
    """A 27-voxel tumour outside the organ (background all around) goes with the organ rule and stays without it;
    one at the organ's edge (touching organ and background) and one inside stay."""
    labels = np.zeros((16, 16, 16), np.uint8)
    labels[2:12, 2:12, 2:12] = 1
    labels[4:7, 4:7, 4:7] = 2  # inside
    labels[10:13, 10:13, 10:13] = 2  # across the organ's edge
    labels[13:16, 0:3, 13:16] = 2  # outside, in the background
    assert sorted(tumours_touching(labels, 2, 1)) == [False, True, True]
    cleaned, removed = remove_implausible_tumours(labels, 2, (1.0, 1.0, 1.0), min_volume_mm3=10.0, organ_label=1)
    assert removed == {"small": 0, "outside_organ": 1}
    assert (cleaned[13:16, 0:3, 13:16] == 0).all() and (cleaned == 2).sum() == 27 + 27
    kept, removed = remove_implausible_tumours(labels, 2, (1.0, 1.0, 1.0), min_volume_mm3=10.0)
    assert removed == {"small": 0, "outside_organ": 0} and np.array_equal(kept, labels)


def md5(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def reference_of(dataset, case: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(dataset.raw, "labelsTs", f"{case}.nii.gz")))


@pytest.mark.e2e
def test_postprocess_cli_removes_specks_with_the_folds_threshold(phantom_dataset, tmp_path):
    """Predictions = the phantom's test labels plus a one-voxel tumour inside the liver and one outside, and a
    tumour-sized one in the background: the command removes the specks with the threshold from fold 0's annotated
    training tumours and the one outside the liver (every phantom tumour touches the liver), keeps every real
    tumour, copies dataset.json, records what it did, never touches -i, keeps the one outside with
    --keep-outside-organ, takes a threshold of the user's (--min-volume-mm3), refuses an existing -o and names a
    truncated file."""
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
        background = np.argwhere(ndimage.binary_erosion(array == 0, np.ones((9, 9, 9), bool)))
        z, y, x = background[len(background) // 2]
        assert not array[z - 3:z + 4, y - 3:y + 4, x - 3:x + 4].any()
        array[z - 2:z + 3, y - 2:y + 3, x - 2:x + 3] = 2  # 125 voxels, far from the liver
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
    assert record["tumour_label"] == 2 and record["removed_small_total"] >= 4 and "fold 0" in record["rule"]
    assert record["organ_label"] == 1 and record["removed_outside_organ_total"] == 2 and "touches" in record["rule"]
    assert 0 < record["min_volume_mm3"] < 4 / 3 * math.pi * 4.0**3, "half the radius of a phantom tumour (>= 4 mm)"
    assert (out / "dataset.json").is_file()
    for case in cases:
        reference = reference_of(phantom_dataset, case)
        cleaned = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(cleaned), reference), "specks gone, the real tumours kept"
        assert cleaned.GetSpacing() == sitk.ReadImage(str(predictions / f"{case}.nii.gz")).GetSpacing()
    assert before == {name: md5(str(predictions / name)) for name in os.listdir(predictions)}, "-i untouched"
    outside = run(arguments[:4] + [str(tmp_path / "outside_kept")] + arguments[5:] + ["--keep-outside-organ"],
                  env=phantom_dataset.env)
    assert "0 touching no organ voxel" in outside.stdout
    kept = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "outside_kept" / f"{cases[0]}.nii.gz")))
    assert (kept == 2).sum() == (reference_of(phantom_dataset, cases[0]) == 2).sum() + 125
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
