"""tumorsynth_evaluate on real nnUNetv2_predict output: two tiny trainings, one as the baseline of the other."""

from __future__ import annotations

import csv
import json
import os

import pytest
from conftest import cli, run

pytestmark = pytest.mark.e2e

TRAINER = "nnUNetTrainerTiny"
FOLDS = ("3", "0")  # two different models of the same tiny trainer: prediction, baseline (fold 0: tiny_model)


@pytest.fixture(scope="module")
def predictions(phantom_dataset, tiny_model, tmp_path_factory):
    """nnUNetTrainerTiny on two folds (fold 0 is the session's ``tiny_model``), each predicting the phantom's test
    images."""
    out = tmp_path_factory.mktemp("evaluate_e2e")
    folders = {}
    for fold in FOLDS:
        if fold != "0":
            run([cli("nnUNetv2_train"), str(phantom_dataset.dataset_id), "3d_fullres", fold, "-p",
                 phantom_dataset.plans, "-tr", TRAINER, "-device", "cpu"], env=phantom_dataset.env)
        folders[fold] = out / f"pred_fold{fold}"
        run([cli("nnUNetv2_predict"), "-d", str(phantom_dataset.dataset_id), "-c", "3d_fullres", "-f", fold,
             "-p", phantom_dataset.plans, "-tr", TRAINER, "-i", os.path.join(phantom_dataset.raw, "imagesTs"),
             "-o", str(folders[fold]), "-device", "cpu", "-npp", "1", "-nps", "1"], env=phantom_dataset.env)
    return out, folders


def test_evaluate_predict_output_with_a_baseline(predictions, phantom_dataset):
    out, folders = predictions
    report = out / "report"
    result = run([cli("tumorsynth_evaluate"), "-ref", os.path.join(phantom_dataset.raw, "labelsTs"),
                  "-pred", str(folders["3"]), "-baseline", str(folders["0"]), "-o", str(report), "-np", "2"],
                 env=phantom_dataset.env)
    assert "| pred_fold3 | 2 |" in result.stdout and "| pred_fold0 | 2 |" in result.stdout
    assert "Lesion detection by size" in result.stdout and "cases: 100%" in result.stderr
    expected = {"summary.json", "cases.csv", "lesions.csv", "report.md", "boxplots_label1.png", "boxplots_label2.png",
                "sensitivity_by_size_label2.png", "dice_difference_pred_fold3_vs_pred_fold0_label1.png",
                "dice_difference_pred_fold3_vs_pred_fold0_label2.png"}
    assert set(os.listdir(report)) == expected, "only the report files, no temporary files left"

    summary = json.loads((report / "summary.json").read_text())
    # dataset.json found in the prediction folder (nnUNetv2_predict writes it there)
    assert summary["settings"]["dataset_json"] == str(folders["3"] / "dataset.json")
    assert summary["settings"]["labels"] == {"1": "liver", "2": "tumour"}
    assert summary["settings"]["lesion_labels"] == ["2"]
    assert list(summary["folders"]) == ["pred_fold3", "pred_fold0"]
    cases = ["phantomts_000", "phantomts_001"]
    n_lesions = None
    for name, folder in summary["folders"].items():
        assert folder["n_cases"] == 2 and folder["missing_cases"] == []
        assert [c["case"] for c in folder["metric_per_case"]] == cases
        for case in folder["metric_per_case"]:
            assert case["spacing"] == pytest.approx([3.0, 1.5, 1.5])  # the phantom's header spacing, z y x
            for label in ("1", "2"):
                m = case["metrics"][label]
                assert m["flag"] in ("", "both_empty", "reference_empty", "prediction_empty")
                assert m["hd"] is not None and m["hd95"] is not None and m["hd95"] <= m["hd"] + 1e-6
                if m["dice"] is not None:
                    assert 0.0 <= m["dice"] <= 1.0
        for label in ("1", "2"):
            assert folder["n_defined"][label]["dice"] + folder["n_undefined"][label]["dice"] == 2
        lesions = folder["lesions"]["2"]
        assert lesions["n_lesions"] == sum(b["n_lesions"] for b in lesions["by_size"])
        n_lesions = lesions["n_lesions"] if n_lesions is None else n_lesions
        assert lesions["n_lesions"] == n_lesions > 0, f"{name}: the reference lesions do not depend on the folder"
    (comparison,) = summary["comparisons"]
    assert (comparison["prediction"], comparison["baseline"]) == ("pred_fold3", "pred_fold0")
    assert comparison["cases"] == cases
    assert set(comparison["tests"]["2"]) == {"dice", "nsd", "precision", "recall", "hd", "hd95"}
    text = (report / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text

    rows = list(csv.DictReader(open(report / "cases.csv")))
    assert len(rows) == 2 * 2 * 2
    assert {(r["folder"], r["case"], r["label"]) for r in rows} == {
        (f, c, lab) for f in ("pred_fold3", "pred_fold0") for c in cases for lab in ("1", "2")}
    lesion_rows = list(csv.DictReader(open(report / "lesions.csv")))
    assert len(lesion_rows) == 2 * n_lesions
    markdown = (report / "report.md").read_text()
    assert "| Folder | Cases | Dice (%) | NSD@5 mm (%) |" in markdown and "pred_fold3 vs pred_fold0" in markdown
    assert "## Conventions" in markdown and "HD95" in markdown
    for name in expected:
        if name.endswith(".png"):
            assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in markdown

    # an existing report folder is refused without --overwrite, and nothing in it changes
    before = {name: (report / name).stat().st_mtime_ns for name in expected}
    again = run([cli("tumorsynth_evaluate"), "-ref", os.path.join(phantom_dataset.raw, "labelsTs"),
                 "-pred", str(folders["3"]), "-o", str(report)], env=phantom_dataset.env, check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert {name: (report / name).stat().st_mtime_ns for name in expected} == before


def test_evaluate_a_fold_validation_folder_against_gt_segmentations(predictions, phantom_dataset):
    """A fold's validation/ folder holds that fold's cases only: the others are listed as missing."""
    out, _ = predictions
    validation = os.path.join(os.environ["nnUNet_results"], phantom_dataset.name,
                              f"{TRAINER}__{phantom_dataset.plans}__3d_fullres", f"fold_{FOLDS[0]}", "validation")
    gt = os.path.join(phantom_dataset.preprocessed, "gt_segmentations")
    args = [cli("tumorsynth_evaluate"), "-ref", gt, "-pred", validation, "-o", str(out / "val_report"), "-np", "1",
            "-l", "tumour"]
    strict = run(args, env=phantom_dataset.env, check=False)
    assert strict.returncode == 2 and "without a segmentation" in strict.stderr
    run([*args, "--overwrite", "--allow-missing"], env=phantom_dataset.env)
    summary = json.loads((out / "val_report" / "summary.json").read_text())
    folder = summary["folders"]["validation"]
    n_val = len([f for f in os.listdir(validation) if f.endswith(".nii.gz")])
    assert folder["n_cases"] == n_val and len(folder["missing_cases"]) == 8 - n_val
    # dataset.json found beside gt_segmentations (the preprocessed dataset's)
    assert summary["settings"]["dataset_json"] == os.path.join(phantom_dataset.preprocessed, "dataset.json")
    assert summary["settings"]["labels"] == {"2": "tumour"}
