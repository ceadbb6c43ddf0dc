"""Bad input to the commands, without a planned dataset: each is a one-line error (or a skipped case with a line)
that names the file, label or value and says what to do; never a Python traceback, never a silent success.

Every test runs the installed command in a private set of empty nnU-Net folders (``nnunet_env``), so the session's
folders are never touched.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import cli, run

UNKNOWN_ID = "987"  # no Dataset987_* anywhere in the private folders
PREVIEW_ID, PSEUDO_ID, PHANTOM_ID = 942, 943, 941


@pytest.fixture
def nnunet_env(tmp_path) -> dict:
    """The environment with empty private nnUNet_raw, nnUNet_preprocessed and nnUNet_results folders."""
    env = os.environ.copy()
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[var] = str(tmp_path / var)
        os.makedirs(env[var])
    return env


def failed(result, *keys: str, returncode: int | None = None) -> str:
    """The error line of a command that must fail with a message holding every key, without a traceback."""
    assert result.returncode != 0, f"the command succeeded:\n{result.stdout[-3000:]}"
    if returncode is not None:
        assert result.returncode == returncode, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error) == 1, result.stderr[-3000:]
    assert all(key in error[0] for key in keys), error[0]
    return error[0]


def truncate(path: str) -> None:
    """Cut a file to half its bytes, as a killed copy or download leaves it."""
    content = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])


# ----------------------------------------------------------------------------------- unknown dataset id (D)


def test_unknown_dataset_id_is_a_one_line_error(nnunet_env, tmp_path):
    tiny = run([cli("tumorsynth_tiny_plans"), "-d", UNKNOWN_ID], env=nnunet_env, check=False)
    failed(tiny, f"dataset {UNKNOWN_ID}", "nnUNetv2_plan_and_preprocess")
    generate = run([cli("tumorsynth_generate"), "-d", UNKNOWN_ID, "--as-dataset", "940", "--texture", "heuristic",
                    "--no-progress"], env=nnunet_env, check=False)
    failed(generate, f"dataset {UNKNOWN_ID}", "nnUNetv2_plan_and_preprocess", returncode=1)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("case,x_min,y_min,z_min,x_max,y_max,z_max\ncase0,1,1,1,3,3,3\n")
    pseudo = run([cli("tumorsynth_pseudolabel"), "-d", UNKNOWN_ID, "-bbox", str(boxes), "-i", str(tmp_path),
                  "-o", str(tmp_path / "out")], env=nnunet_env, check=False)
    failed(pseudo, f"dataset {UNKNOWN_ID}", "-d")
    assert not os.listdir(nnunet_env["nnUNet_raw"]), "nothing was written"


# ------------------------------------------------------------------------------ argument ranges (G)


@pytest.mark.parametrize("args, keys", [
    (["-n", "-3"], ["-n -3", "at least 1"]),
    (["-n", "0"], ["-n 0", "at least 1"]),
    (["--n-test", "-1"], ["--n-test -1"]),
    (["--shape", "4", "4", "4"], ["--shape 4 4 4", "too small", "16 32 32"]),
])
def test_make_phantom_refuses_impossible_sizes(nnunet_env, args, keys):
    result = run([cli("tumorsynth_make_phantom"), "-d", str(PHANTOM_ID), *args], env=nnunet_env, check=False)
    failed(result, *keys, returncode=2)  # argparse's usage error
    assert not os.listdir(nnunet_env["nnUNet_raw"]), "no dataset was written"


def test_tiny_plans_refuses_empty_stages(nnunet_env):
    result = run([cli("tumorsynth_tiny_plans"), "-d", UNKNOWN_ID, "--features", "0", "0", "0"], env=nnunet_env,
                 check=False)
    failed(result, "--features 0 0 0", "at least 1", returncode=2)


# ------------------------------------------------------------------------- truncated images (A)


def test_preview_of_a_raw_dataset_refuses_a_truncated_image(nnunet_env, tmp_path):
    from nnunetv2_tumorsynth.phantom import write_phantom_dataset

    folder = write_phantom_dataset(str(tmp_path / "raw"), PREVIEW_ID, "PreviewCorrupt", num_train=2, seed=1)
    labels = [os.path.join(folder, "labelsTr", f) for f in sorted(os.listdir(os.path.join(folder, "labelsTr")))]
    with_tumour = next(p for p in labels if (sitk.GetArrayFromImage(sitk.ReadImage(p)) == 2).any())
    image = os.path.join(folder, "imagesTr", os.path.basename(with_tumour).replace(".nii.gz", "_0000.nii.gz"))
    truncate(image)
    result = run([cli("tumorsynth_preview"), "-i", folder, "-o", str(tmp_path / "png"), "--no-progress"],
                 env=nnunet_env, check=False)
    failed(result, image, "truncated", returncode=1)


def test_pseudolabel_skips_a_truncated_image_with_a_line_naming_it(nnunet_env, tmp_path):
    """Checked before the model is loaded: the corrupt case is listed and skipped (as an unreadable image is); with
    no complete case left the run stops with an error naming the file. The model here is only its dataset.json."""
    model = os.path.join(nnunet_env["nnUNet_results"], f"Dataset{PSEUDO_ID}_Fake",
                         "nnUNetTrainerBBoxChannel__nnUNetPlans__3d_fullres")
    os.makedirs(model)
    with open(os.path.join(model, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
                   "numTraining": 1, "file_ending": ".nii.gz"}, f)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for case in ("good", "cut"):
        sitk.WriteImage(sitk.GetImageFromArray(rng.normal(100, 20, (8, 16, 16)).astype(np.float32)),
                        str(images / f"{case}_0000.nii.gz"), True)
    corrupt = str(images / "cut_0000.nii.gz")
    truncate(corrupt)
    boxes = tmp_path / "boxes.csv"
    with open(boxes, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "x_min", "y_min", "z_min", "x_max", "y_max", "z_max"])
        writer.writerows([["good", 2, 2, 2, 6, 6, 4], ["cut", 2, 2, 2, 6, 6, 4]])
    cmd = [cli("tumorsynth_pseudolabel"), "-d", str(PSEUDO_ID), "-bbox", str(boxes), "-i", str(images), "-device",
           "cpu"]
    result = run([*cmd, "-o", str(tmp_path / "both")], env=nnunet_env, check=False)
    skipped = [line for line in result.stdout.splitlines() if corrupt in line]
    assert skipped and "cut" in skipped[0] and "skipped" in skipped[0], result.stdout[-3000:]
    failed(result, "checkpoint_final.pth")  # the good case goes on to the model, which has no checkpoint here

    os.remove(images / "good_0000.nii.gz")
    with open(boxes, "w") as f:
        f.write("case,x_min,y_min,z_min,x_max,y_max,z_max\ncut,2,2,2,6,6,4\n")
    result = run([*cmd, "-o", str(tmp_path / "cut_only")], env=nnunet_env, check=False)
    failed(result, corrupt, "truncated", "-i", returncode=2)
