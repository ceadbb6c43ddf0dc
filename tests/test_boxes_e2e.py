"""Box-guided pseudo-labelling end to end with the real CLIs, on the shared phantom dataset (tiny plans, CPU).

nnUNetv2_train (nnUNetTrainerBBoxChannelTiny) -> an LLD-MMRI-style Annotation.json for the held-out
phantom cases (images/<patient>/<study>/<series>.nii.gz, one series per phase) -> tumorsynth_pseudolabel
--as-dataset -> nnUNetv2_plan_and_preprocess --verify_dataset_integrity on the new dataset. Plain
nnUNetv2_predict on the box model fails with a message naming tumorsynth_pseudolabel.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import cli, run

from nnunetv2_tumorsynth.boxes import Box, lesion_boxes, margin_in_voxels, rasterise, write_lld_mmri

pytestmark = pytest.mark.e2e

TRAINER = "nnUNetTrainerBBoxChannelTiny"
PSEUDO_ID = 994
PHASES = ("C+A", "C+V", "C+Delay", "T2WI")  # T2WI is not among the default phases: filtered out
OVER_THE_BORDER = Box((0, 0, 60), (2, 3, 70))  # added to the C+V series: x reaches past the 64 voxels


@pytest.fixture(scope="module")
def bbox_model(phantom_dataset) -> str:
    run([cli("nnUNetv2_train"), str(phantom_dataset.dataset_id), "3d_fullres", "0", "-p", phantom_dataset.plans,
         "-tr", TRAINER, "-device", "cpu"], env=phantom_dataset.env)
    folder = os.path.join(os.environ["nnUNet_results"], phantom_dataset.name,
                          f"{TRAINER}__{phantom_dataset.plans}__3d_fullres")
    assert os.path.isfile(os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    return folder


@pytest.fixture(scope="module")
def lld_layout(phantom_dataset, tmp_path_factory):
    """LLD-MMRI layout of the phantom's test cases: two patients, four phases each, plus one patient whose
    image is missing; one box reaches outside its image (clipped with a warning)."""
    root = tmp_path_factory.mktemp("lld")
    cases, truth = {}, {}
    for i, case in enumerate(("phantomts_000", "phantomts_001")):
        label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(phantom_dataset.raw, "labelsTs", f"{case}.nii.gz")))
        boxes = [b for lesion in lesion_boxes(label == 2) for b in lesion]
        patient = f"MR-{i}"
        entries = []
        for j, phase in enumerate(PHASES):
            folder = root / "images" / patient / f"study{i}"
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(os.path.join(phantom_dataset.raw, "imagesTs", f"{case}_0000.nii.gz"),
                            folder / f"series{j}.nii.gz")
            entry_boxes = list(boxes)
            if j == 1:  # same tumours plus a box hanging over the image border
                entry_boxes.append(OVER_THE_BORDER)
            entries.append({"studyUID": f"study{i}", "seriesUID": f"series{j}", "phase": phase, "boxes": entry_boxes})
        cases[patient] = entries
        truth[patient] = (case, label, boxes)
    cases["MR-9"] = [{"studyUID": "s", "seriesUID": "gone", "phase": "C+A", "boxes": [Box((1, 1, 1), (3, 3, 3))]}]
    write_lld_mmri(cases, str(root / "Annotation.json"))
    return root, truth


def test_pseudolabel_as_dataset_then_nnunet_plans_it(bbox_model, lld_layout, phantom_dataset, tmp_path):
    root, truth = lld_layout
    out = tmp_path / "pseudo"
    cmd = [cli("tumorsynth_pseudolabel"), "-bbox", str(root / "Annotation.json"), "-i", str(root / "images"),
           "-o", str(out), "-d", str(phantom_dataset.dataset_id), "-c", "3d_fullres", "-f", "0", "-tr", TRAINER,
           "-p", phantom_dataset.plans, "--as-dataset", str(PSEUDO_ID), "-device", "cpu", "--disable_tta",
           "--save-boxes"]
    result = run(cmd, env=phantom_dataset.env)
    log = result.stdout + result.stderr
    assert "MR-9" in log and "gone.nii.gz" in log, "the missing image is listed"
    assert "MR-0_CV" in log and "clipped" in log, "the box over the border is clipped with a warning"

    expected = sorted(f"MR-{i}_{p}" for i in range(2) for p in ("CA", "CV", "CDelay"))
    summary = json.load(open(out / "pseudolabel_summary.json"))
    assert sorted(c["case"] for c in summary["cases"]) == expected
    assert [m["case"] for m in summary["missing_images"]] == ["MR-9_CA"]
    for patient, (case, label, boxes) in truth.items():
        image = sitk.ReadImage(os.path.join(phantom_dataset.raw, "imagesTs", f"{case}_0000.nii.gz"))
        for phase in ("CA", "CV", "CDelay"):
            pseudo = sitk.ReadImage(str(out / f"{patient}_{phase}.nii.gz"))
            # the pseudo-mask lives on the original image's grid
            assert pseudo.GetSize() == image.GetSize()
            assert np.allclose(pseudo.GetSpacing(), image.GetSpacing())
            assert np.allclose(pseudo.GetOrigin(), image.GetOrigin())
            assert np.allclose(pseudo.GetDirection(), image.GetDirection())
            mask = sitk.GetArrayFromImage(pseudo)
            assert set(np.unique(mask)) <= {0, 1, 2}
            # the box raster written next to it is the ground truth's boxes, voxel for voxel
            phase_boxes = boxes + ([OVER_THE_BORDER] if phase == "CV" else [])
            box_raster = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "boxes" / f"{patient}_{phase}.nii.gz")))
            assert (box_raster.astype(bool) == rasterise(phase_boxes, label.shape)).all()
            # tumour only inside the boxes plus the 5 mm margin
            margin = margin_in_voxels(5.0, image.GetSpacing()[::-1])
            assert not ((mask == 2) & ~rasterise([b.expanded(margin) for b in phase_boxes], label.shape)).any()
    assert not any((truth["MR-1"][1] == 2).ravel()), "phantomts_001 is tumour-free"

    dataset = os.path.join(os.environ["nnUNet_raw"], f"Dataset{PSEUDO_ID}_PhantomPseudo")
    ds = json.load(open(os.path.join(dataset, "dataset.json")))
    source = json.load(open(os.path.join(phantom_dataset.raw, "dataset.json")))
    assert ds["labels"] == source["labels"] and ds["channel_names"] == source["channel_names"]
    assert ds["numTraining"] == 6
    assert sorted(os.listdir(os.path.join(dataset, "labelsTr"))) == sorted(f"{c}.nii.gz" for c in expected)
    assert sorted(os.listdir(os.path.join(dataset, "imagesTr"))) == sorted(f"{c}_0000.nii.gz" for c in expected)

    again = run(cmd, env=phantom_dataset.env, check=False)
    assert again.returncode != 0 and "--overwrite" in again.stderr, "existing outputs are never overwritten silently"

    run([cli("nnUNetv2_plan_and_preprocess"), "-d", str(PSEUDO_ID), "-c", "3d_fullres",
         "--verify_dataset_integrity", "-np", "1"], env=phantom_dataset.env)
    assert os.path.isfile(os.path.join(os.environ["nnUNet_preprocessed"], f"Dataset{PSEUDO_ID}_PhantomPseudo",
                                       "nnUNetPlans.json"))


def test_plain_nnunet_predict_names_tumorsynth_pseudolabel(bbox_model, phantom_dataset, tmp_path):
    result = run([cli("nnUNetv2_predict"), "-d", str(phantom_dataset.dataset_id), "-c", "3d_fullres", "-f", "0",
                  "-p", phantom_dataset.plans, "-tr", TRAINER, "-i", os.path.join(phantom_dataset.raw, "imagesTs"),
                  "-o", str(tmp_path / "pred"), "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta"],
                 env=phantom_dataset.env, check=False)
    assert result.returncode != 0
    assert "nnUNetv2_predict feeds" in result.stderr and "tumorsynth_pseudolabel" in result.stderr


def test_pseudolabel_refuses_bad_annotations_and_models_without_box_channel(bbox_model, lld_layout, phantom_dataset,
                                                                          tmp_path):
    root, _ = lld_layout
    content = json.load(open(root / "Annotation.json"))
    del content["Annotation_info"]["MR-1"][2]["annotation"]["lesion"]  # a lesion-less entry is fine ...
    content["Annotation_info"]["MR-1"][2]["annotation"]["lesion"] = {"0": {"category": 6, "bbox": {"3D_box": {
        "x_min": 3, "y_min": 3, "z_min": 3}}}}  # ... an incomplete box is not
    bad = tmp_path / "Annotation.json"
    bad.write_text(json.dumps(content))
    base = ["-i", str(root / "images"), "-o", str(tmp_path / "out"), "-d", str(phantom_dataset.dataset_id),
            "-p", phantom_dataset.plans, "-device", "cpu"]
    result = run([cli("tumorsynth_pseudolabel"), "-bbox", str(bad), "-tr", TRAINER, *base], env=phantom_dataset.env,
                 check=False)
    assert result.returncode == 2
    assert "patient MR-1, entry 2" in result.stderr and "missing x_max" in result.stderr

    # a model whose checkpoint says it was trained without boxes (plain nnU-Net trainer)
    env = dict(phantom_dataset.env, nnUNet_results=str(tmp_path / "results"))
    plain = tmp_path / "results" / phantom_dataset.name / f"nnUNetTrainer_5epochs__{phantom_dataset.plans}__3d_fullres"
    shutil.copytree(bbox_model, plain, ignore=shutil.ignore_patterns("validation", "*.png", "*.txt"))
    checkpoint = torch.load(plain / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainer_5epochs"
    torch.save(checkpoint, plain / "fold_0" / "checkpoint_final.pth")
    result = run([cli("tumorsynth_pseudolabel"), "-bbox", str(root / "Annotation.json"), "-tr", "nnUNetTrainer_5epochs",
                  *base], env=env, check=False)
    assert result.returncode == 2
    assert "has no tumour box channel" in result.stderr and "nnUNetTrainerBBoxChannel" in result.stderr
