"""``tumorsynth_generate`` on bad input: refused before anything is written, with one line that names the file, label
or setting and says what to do; never a Python traceback, never a corrupt or inconsistent case copied silently.

All on the session phantom (heuristic texture, one image, tiny plans, CPU). Damaged sources are copies of it under
fresh ids (raw and preprocessed folders), so the session phantom's files are never changed.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import SimpleITK as sitk
from conftest import TINY_PLANS, cli, run

CORRUPT_ID, GEOMETRY_ID, NO_ROOM_ID, LABELS_ID = 931, 932, 934, 935
OUT_IDS = {CORRUPT_ID: 937, GEOMETRY_ID: 938, NO_ROOM_ID: 934, LABELS_ID: 936}


def generate(source_id: int, env: dict, *extra: str):
    return run([cli("tumorsynth_generate"), "-d", str(source_id), "-p", TINY_PLANS, "-f", "0", "-n", "1",
                "--as-dataset", str(OUT_IDS[source_id]), "--no-progress", "-device", "cpu", *extra],
               env=env, check=False)


def error_line(result, *keys: str) -> str:
    """The one error line of a failed run; it holds every key; no traceback."""
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tumorsynth_generate: error: "), result.stderr[-3000:]
    assert all(key in lines[0] for key in keys), lines[0]
    return lines[0]


def no_dataset(dataset_id: int, staging: bool = False) -> bool:
    """The dataset does not exist (nor, with ``staging``, its staging folder: refused before starting)."""
    raw = os.environ["nnUNet_raw"]
    found = glob.glob(os.path.join(raw, f"Dataset{dataset_id}_*"))
    if staging:
        found += glob.glob(os.path.join(raw, f".Dataset{dataset_id}_*"))
    return not found


def copy_phantom(ds, dataset_id: int, name: str) -> tuple[str, list[str]]:
    """Raw and preprocessed copy of the session phantom as ``Dataset<id>_<name>``: (raw folder, fold 0's sorted
    training cases, the order tumorsynth_generate takes its sources in)."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    full = f"Dataset{dataset_id}_{name}"
    raw = shutil.copytree(ds.raw, os.path.join(os.environ["nnUNet_raw"], full))
    preprocessed = shutil.copytree(ds.preprocessed, os.path.join(os.environ["nnUNet_preprocessed"], full))
    splits_file = os.path.join(preprocessed, "splits_final.json")
    if not os.path.isfile(splits_file):  # as nnU-Net (and tumorsynth_generate) would make it
        cases = sorted(f[: -len(".nii.gz")] for f in os.listdir(os.path.join(raw, "labelsTr")))
        json.dump(generate_crossval_split(cases, seed=12345, n_splits=5), open(splits_file, "w"))
    return raw, sorted(json.load(open(splits_file))[0]["train"])


def test_corrupt_raw_image_says_restore_it_not_preprocess(phantom_dataset):
    """F: a truncated raw image is named as corrupt, with the advice to restore it; re-running
    nnUNetv2_plan_and_preprocess would bake the damage in."""
    raw, _ = copy_phantom(phantom_dataset, CORRUPT_ID, "PhantomCorrupt")
    images = sorted(glob.glob(os.path.join(raw, "imagesTr", "*.nii.gz")))
    for path in images:
        content = open(path, "rb").read()
        open(path, "wb").write(content[: len(content) // 2])
    line = error_line(generate(CORRUPT_ID, phantom_dataset.env, "--texture", "heuristic"), "corrupt", "restore")
    assert any(path in line for path in images), line
    assert "plan_and_preprocess" not in line, line
    assert no_dataset(OUT_IDS[CORRUPT_ID])


def test_label_with_other_geometry_than_its_image_is_refused(phantom_dataset):
    """B: a label whose origin differs from its image's would make a dataset nnU-Net refuses: refused, naming both
    files, whether it is a source case (read) or a real case copied by --include-real."""
    raw, training = copy_phantom(phantom_dataset, GEOMETRY_ID, "PhantomShifted")

    def shift(case: str, mm: float) -> tuple[str, str]:
        label_file = os.path.join(raw, "labelsTr", f"{case}.nii.gz")
        label = sitk.ReadImage(label_file)
        label.SetOrigin(tuple(o + mm for o in label.GetOrigin()))
        sitk.WriteImage(label, label_file, True)
        return os.path.join(raw, "imagesTr", f"{case}_0000.nii.gz"), label_file

    first = shift(training[0], 5.0)  # the source of image 0
    error_line(generate(GEOMETRY_ID, phantom_dataset.env, "--texture", "heuristic"), "origin", *first)
    assert no_dataset(OUT_IDS[GEOMETRY_ID])
    shift(training[0], -5.0)
    last = shift(training[-1], 5.0)  # never a source of image 0: read only to be copied by --include-real
    include_real = generate(GEOMETRY_ID, phantom_dataset.env, "--texture", "heuristic", "--include-real",
                            "--overwrite")  # --overwrite: other settings than the first run's staging folder
    error_line(include_real, "origin", *last)
    assert no_dataset(OUT_IDS[GEOMETRY_ID])


def test_tumour_size_larger_than_the_ddpm_crop_is_refused_before_starting(phantom_dataset, tmp_path):
    """C: medium tumours (up to 23 x 45 x 45 voxels here) cannot be inpainted by a model with a 16 x 32 x 32 crop."""
    from nnunetv2_tumorsynth.ddpm import build_model, make_metadata, save_checkpoint

    plans = json.load(open(os.path.join(phantom_dataset.preprocessed, f"{TINY_PLANS}.json")))
    model = build_model("tiny")
    meta = make_metadata(model, crop_size_vox=(16, 32, 32), spacing_mm=plans["configurations"]["3d_fullres"]["spacing"],
                         normalisation={"scheme": "ZScoreNormalization"})
    checkpoint = str(save_checkpoint(tmp_path / "checkpoint_best.pth", model, meta))
    result = run([cli("tumorsynth_generate"), "-d", str(phantom_dataset.dataset_id), "-p", TINY_PLANS, "-n", "1",
                  "--as-dataset", str(NO_ROOM_ID), "--texture", "ddpm", "--checkpoint", checkpoint, "--steps", "2",
                  "--size", "medium", "-device", "cpu", "--no-progress"], env=phantom_dataset.env, check=False)
    error_line(result, "(16, 32, 32)", "--size medium", "--crop", checkpoint)
    assert no_dataset(NO_ROOM_ID, staging=True), "refused before the staging folder exists"


def test_no_recognisable_labels_says_to_name_them(phantom_dataset):
    """E: labels named neither like an organ nor like a tumour: the error says --organ-label / --tumour-label, and
    naming them works."""
    raw, _ = copy_phantom(phantom_dataset, LABELS_ID, "Unnamed")
    for folder in (raw, os.path.join(os.environ["nnUNet_preprocessed"], os.path.basename(raw))):
        dataset_json = json.load(open(os.path.join(folder, "dataset.json")))
        dataset_json["labels"] = {"background": 0, "parenchyma": 1, "focus": 2}
        json.dump(dataset_json, open(os.path.join(folder, "dataset.json"), "w"))
    error_line(generate(LABELS_ID, phantom_dataset.env, "--texture", "heuristic"), "--organ-label", "parenchyma")
    assert no_dataset(OUT_IDS[LABELS_ID], staging=True)
    run([cli("tumorsynth_generate"), "-d", str(LABELS_ID), "-p", TINY_PLANS, "-n", "1", "--as-dataset",
         str(OUT_IDS[LABELS_ID]), "--texture", "heuristic", "--size", "small", "--organ-label", "parenchyma",
         "--tumour-label", "focus", "--no-progress"], env=phantom_dataset.env)
    assert not no_dataset(OUT_IDS[LABELS_ID])
