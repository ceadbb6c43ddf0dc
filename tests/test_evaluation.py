"""tumorsynth_evaluate: metrics against hand-computed values and MONAI, conventions, lesions, tests, bad input."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import stats

from nnunetv2_tumorsynth.cli.evaluate import main as evaluate_main
from nnunetv2_tumorsynth.evaluation import MissingCasesError, evaluate_folders, label_metrics, match_lesions
from nnunetv2_tumorsynth.evaluation.lesions import equivalent_radius_mm, size_bin, size_bin_names
from nnunetv2_tumorsynth.evaluation.metrics import image_diagonal_mm, joint_bounding_box, monai_whole_volume
from nnunetv2_tumorsynth.evaluation.statistics import paired_tests

SPACING = (2.0, 0.7, 0.9)  # mm, array axis order (z, y, x): anisotropic
SHAPE = (28, 64, 56)


def sphere(shape, spacing, centre_mm, radius_mm) -> np.ndarray:
    """Voxels whose centre (index x spacing, in mm) lies within ``radius_mm`` of ``centre_mm``."""
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm ** 2


def lens_volume(R: float, r: float, d: float) -> float:
    """Volume (mm^3) of the intersection of two spheres of radii R, r whose centres are d mm apart."""
    return math.pi * (R + r - d) ** 2 * (d * d + 2 * d * r - 3 * r * r + 2 * d * R + 6 * r * R - 3 * R * R) / (12 * d)


def sphere_distances(R: float, r: float, d: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from points of sphere A (radius R) to the surface of sphere B (radius r, centre d mm away),
    and back, at surface positions equally spaced in cos(angle), i.e. equal surface area (Archimedes)."""
    u = np.linspace(-1.0, 1.0, 200001)
    return np.abs(np.sqrt(R * R + d * d - 2 * R * d * u) - r), np.abs(np.sqrt(r * r + d * d - 2 * r * d * u) - R)


# ------------------------------------------------------------------ metrics against hand-computed values

R_A, R_B, OFFSET = 12.0, 10.0, 4.0  # mm; sphere B is 4 mm further along z (the 2 mm axis)
CENTRE = (28.0, 22.0, 24.0)


@pytest.fixture(scope="module")
def two_spheres():
    a = sphere(SHAPE, SPACING, CENTRE, R_A)
    b = sphere(SHAPE, SPACING, (CENTRE[0] + OFFSET, *CENTRE[1:]), R_B)
    return a, b


def test_dice_precision_recall_match_the_sphere_lens(two_spheres):
    reference, prediction = two_spheres
    m = label_metrics(reference, prediction, SPACING)
    v_int = lens_volume(R_A, R_B, OFFSET)
    v_a, v_b = 4 / 3 * math.pi * R_A ** 3, 4 / 3 * math.pi * R_B ** 3
    assert m.dice == pytest.approx(2 * v_int / (v_a + v_b), abs=0.01)  # 0.668
    assert m.recall == pytest.approx(v_int / v_a, abs=0.02)
    assert m.precision == pytest.approx(v_int / v_b, abs=0.02)
    assert m.reference_volume_ml == pytest.approx(v_a / 1000, rel=0.03)
    assert m.reference_volume_ml == pytest.approx(m.reference_voxels * np.prod(SPACING) / 1000)
    assert m.flag == ""


def test_distances_and_nsd_match_the_spheres(two_spheres):
    """Voxelised surfaces deviate from the spheres by up to about a voxel (2 mm along z here)."""
    reference, prediction = two_spheres
    d_ab, d_ba = sphere_distances(R_A, R_B, OFFSET)
    m = label_metrics(reference, prediction, SPACING, tolerance_mm=5.0)
    assert max(d_ab.max(), d_ba.max()) == pytest.approx(6.0)  # R + d - r
    assert m.hd == pytest.approx(6.0, abs=max(SPACING))
    hd95 = max(np.quantile(d_ab, 0.95), np.quantile(d_ba, 0.95))  # 5.70 mm
    assert m.hd95 == pytest.approx(hd95, abs=max(SPACING))
    assert m.hd95 <= m.hd
    # NSD: share of the surface area of both spheres within 5 mm of the other surface (0.871)
    nsd = (R_A ** 2 * (d_ab <= 5).mean() + R_B ** 2 * (d_ba <= 5).mean()) / (R_A ** 2 + R_B ** 2)
    assert m.nsd == pytest.approx(nsd, abs=0.08)
    tolerances = [1.0, 2.0, 3.0, 5.0, 6.5]
    values = [label_metrics(reference, prediction, SPACING, tolerance_mm=t).nsd for t in tolerances]
    assert values == sorted(values) and values[-1] == 1.0


def test_concentric_spheres_every_distance_is_the_radius_difference():
    a = sphere(SHAPE, SPACING, CENTRE, 12.0)
    b = sphere(SHAPE, SPACING, CENTRE, 8.0)
    m = label_metrics(a, b, SPACING, tolerance_mm=5.0)
    assert m.hd == pytest.approx(4.0, abs=1.0) and m.hd95 == pytest.approx(4.0, abs=1.0)
    assert m.nsd == 1.0
    assert label_metrics(a, b, SPACING, tolerance_mm=2.0).nsd == 0.0
    # spacing is used per axis: doubling every spacing doubles the distances
    doubled = label_metrics(a, b, tuple(2 * s for s in SPACING), tolerance_mm=10.0)
    assert doubled.hd == pytest.approx(2 * m.hd, rel=1e-6) and doubled.nsd == 1.0
    assert doubled.dice == m.dice


@pytest.mark.parametrize("tolerance_mm", [2.0, 5.0])
def test_equal_to_monai_on_the_whole_uncropped_volume(two_spheres, tolerance_mm):
    reference, prediction = two_spheres
    prediction = prediction.copy()
    prediction[0:2, 0:4, -5:] = True  # a second component touching the image border
    prediction[20:22, 50:52, 3:5] = True
    ours = label_metrics(reference, prediction, SPACING, tolerance_mm=tolerance_mm)
    monai = monai_whole_volume(reference, prediction, SPACING, tolerance_mm)
    for key, value in monai.items():
        assert getattr(ours, key) == pytest.approx(value, abs=1e-6), key


def test_crop_keeps_a_margin_and_clips_at_the_border():
    a = np.zeros((10, 12, 14), dtype=bool)
    b = np.zeros_like(a)
    a[3:5, 4:6, 0:2] = True
    b[4:7, 5:9, 1:3] = True
    assert joint_bounding_box(a, b, margin=2) == (slice(1, 9), slice(2, 11), slice(0, 5))
    assert joint_bounding_box(np.zeros_like(a), np.zeros_like(a)) is None


# ------------------------------------------------------------------ empty masks


def test_both_empty_dice_undefined_hd_zero():
    empty = np.zeros(SHAPE, dtype=bool)
    m = label_metrics(empty, empty, SPACING)
    assert math.isnan(m.dice) and math.isnan(m.nsd) and math.isnan(m.precision) and math.isnan(m.recall)
    assert m.hd == 0.0 and m.hd95 == 0.0 and m.flag == "both_empty"


@pytest.mark.parametrize("empty_side", ["reference", "prediction"])
def test_one_empty_dice_zero_hd_image_diagonal(two_spheres, empty_side):
    mask = two_spheres[0]
    empty = np.zeros_like(mask)
    reference, prediction = (empty, mask) if empty_side == "reference" else (mask, empty)
    m = label_metrics(reference, prediction, SPACING)
    diagonal = math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(SHAPE, SPACING)))
    assert image_diagonal_mm(SHAPE, SPACING) == pytest.approx(diagonal)
    assert m.dice == 0.0 and m.nsd == 0.0 and m.hd == pytest.approx(diagonal) and m.hd95 == pytest.approx(diagonal)
    assert m.flag == f"{empty_side}_empty"
    if empty_side == "reference":
        assert m.precision == 0.0 and math.isnan(m.recall)
    else:
        assert m.recall == 0.0 and math.isnan(m.precision)


# ------------------------------------------------------------------ lesions


def test_lesion_matching_size_bins_and_false_positives():
    shape, spacing = (30, 80, 80), (2.0, 0.8, 0.8)
    reference = np.zeros(shape, dtype=bool)
    radii = {"small": 3.0, "medium": 7.0, "large": 15.0}
    centres = {"small": (10, 10, 10), "medium": (20, 20, 50), "large": (30, 40, 30)}
    for name in radii:
        reference |= sphere(shape, spacing, centres[name], radii[name])
    reference[0, 0, 0] = reference[1, 1, 1] = True  # two voxels touching by a corner: one lesion (26-connectivity)
    prediction = sphere(shape, spacing, centres["large"], 14.0)
    medium = sphere(shape, spacing, centres["medium"], radii["medium"])
    part = medium & (np.arange(shape[2]) * spacing[2] < centres["medium"][2] - 5.0)[None, None, :]
    prediction |= part  # covers a small part of the medium lesion
    prediction |= sphere(shape, spacing, (50, 55, 10), 2.0)  # false positive
    prediction[29, 79, 79] = True  # false positive (a single voxel)

    result = match_lesions(reference, prediction, spacing, min_overlap=0.0)
    lesions = sorted(result.lesions, key=lambda x: x.voxels)
    assert len(lesions) == 4
    corner, small, medium_l, large = lesions
    assert corner.voxels == 2 and not corner.detected and corner.size_bin == "<5"
    for lesion, radius in ((small, 3.0), (medium_l, 7.0), (large, 15.0)):
        assert lesion.radius_mm == pytest.approx(radius, rel=0.1)
        assert lesion.volume_ml == pytest.approx(lesion.voxels * np.prod(spacing) / 1000)
    assert [x.size_bin for x in (small, medium_l, large)] == ["<5", "5-10", "10-20"]
    assert not small.detected and medium_l.detected and large.detected
    assert 0 < medium_l.overlap < 0.3
    assert result.predicted_components == 4 and result.false_positives == 2

    strict = match_lesions(reference, prediction, spacing, min_overlap=0.5)
    assert [x.detected for x in sorted(strict.lesions, key=lambda x: x.voxels)] == [False, False, False, True]
    assert strict.false_positives == 2  # a component touching a lesion is never a false positive

    box = joint_bounding_box(reference, prediction, 1)
    cropped = match_lesions(reference[box], prediction[box], spacing)
    assert [x.as_dict() for x in cropped.lesions] == [x.as_dict() for x in result.lesions]
    with pytest.raises(ValueError, match="min_overlap"):
        match_lesions(reference, prediction, spacing, min_overlap=2.0)


def test_size_bins():
    assert size_bin_names((5, 10, 20)) == ["<5", "5-10", "10-20", ">=20"]
    assert [size_bin(r, (5, 10, 20)) for r in (4.99, 5.0, 9.9, 10.0, 19.9, 20.0, 50.0)] == \
        ["<5", "5-10", "5-10", "10-20", "10-20", ">=20", ">=20"]
    assert size_bin_names(()) == ["all"] and size_bin(3.0, ()) == "all"
    assert equivalent_radius_mm(4 / 3 * math.pi * 1000) == pytest.approx(10.0)
    for bad in ((10, 5), (0, 5), (5, 5)):
        with pytest.raises(ValueError, match="size bins"):
            size_bin_names(bad)


# ------------------------------------------------------------------ paired tests


def test_paired_tests_one_tailed_and_nan_pairs_left_out():
    pred = [0.80, 0.75, 0.90, float("nan"), 0.60, 0.70]
    base = [0.70, 0.72, 0.85, 0.50, 0.62, 0.61]
    r = paired_tests(pred, base, higher_is_better=True)
    a, b = np.array([0.80, 0.75, 0.90, 0.60, 0.70]), np.array([0.70, 0.72, 0.85, 0.62, 0.61])
    assert r["n_pairs"] == 5 and r["n_excluded"] == 1 and r["alternative"] == "greater"
    assert r["mean_difference"] == pytest.approx((a - b).mean())
    assert r["std_difference"] == pytest.approx((a - b).std(ddof=1))
    assert r["t_p_value"] == pytest.approx(stats.ttest_rel(a, b, alternative="greater").pvalue)
    assert r["t_p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue / 2)  # one-tailed = half the two-tailed
    assert r["wilcoxon_p_value"] == pytest.approx(stats.wilcoxon(a, b, alternative="greater").pvalue)
    # distances: smaller is better
    hd = paired_tests([3.0, 4.0, 2.0, 5.0], [6.0, 5.0, 4.0, 5.5], higher_is_better=False)
    assert hd["alternative"] == "less" and hd["t_p_value"] < 0.05
    # nothing to test: None, never NaN
    for p, q in (([0.5, 0.6], [0.5, 0.6]), ([0.5], [0.4]), ([], [])):
        r = paired_tests(p, q)
        assert r["t_p_value"] is None and r["wilcoxon_p_value"] is None


# ------------------------------------------------------------------ folders and the command

LABELS = {"background": 0, "liver": 1, "tumour": 2}
FOLDER_SPACING = (2.5, 0.8, 0.8)  # z, y, x
FOLDER_SHAPE = (16, 40, 40)


def write_label_map(path, array, spacing=FOLDER_SPACING, origin=(0.0, 0.0, 0.0)) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def phantom_case(tumours: int, shift: int = 0) -> np.ndarray:
    """A liver block and ``tumours`` separate spheres of radii 3, 4.5, 6 mm (``shift`` voxels along y)."""
    seg = np.zeros(FOLDER_SHAPE, dtype=np.uint8)
    seg[2:14, 5:35, 5:35] = 1
    for k in range(tumours):
        centre = (4 + 4 * k, 9 + 10 * k + shift, 9 + 10 * k)
        seg[sphere(FOLDER_SHAPE, FOLDER_SPACING, [c * s for c, s in zip(centre, FOLDER_SPACING)], 3.0 + 1.5 * k)] = 2
    return seg


@pytest.fixture
def folders(tmp_path):
    """labelsTs with 4 cases (one without tumour), a prediction and a baseline; dataset.json beside labelsTs."""
    ref, pred, base = tmp_path / "labelsTs", tmp_path / "pred", tmp_path / "base"
    for folder in (ref, pred, base):
        folder.mkdir()
    for i, tumours in enumerate((2, 1, 0, 3)):
        write_label_map(ref / f"case_{i:03d}.nii.gz", phantom_case(tumours))
        write_label_map(pred / f"case_{i:03d}.nii.gz", phantom_case(tumours, shift=1))
        worse = phantom_case(max(tumours - 1, 0), shift=2)  # misses a tumour
        if i >= 2:
            worse[1:3, 35:38, 2:5] = 2  # a false-positive blob
        write_label_map(base / f"case_{i:03d}.nii.gz", worse)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz",
                                                       "channel_names": {"0": "MR"}, "numTraining": 4}))
    return tmp_path


def run_cli(args: list[str]) -> int:
    try:
        evaluate_main([str(a) for a in args])
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_evaluate_folders_report_and_numbers(folders, capsys):
    out = folders / "report"
    code = run_cli(["-ref", folders / "labelsTs", "-pred", folders / "pred", "-baseline", folders / "base",
                    "-o", out, "-np", "1"])
    printed = capsys.readouterr().out
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["labels"] == {"1": "liver", "2": "tumour"}
    assert summary["settings"]["lesion_labels"] == ["2"]
    assert summary["settings"]["dataset_json"] == str(folders / "dataset.json")
    assert list(summary["folders"]) == ["pred", "base"]
    pred = summary["folders"]["pred"]
    assert pred["n_cases"] == 4 and pred["role"] == "prediction"
    case = pred["metric_per_case"][0]
    assert case["spacing"] == pytest.approx(FOLDER_SPACING)  # from the header, array axis order
    # case_002 has no tumour in either folder: Dice undefined (null), counted, excluded from the mean
    no_tumour = pred["metric_per_case"][2]["metrics"]["2"]
    assert no_tumour["dice"] is None and no_tumour["hd"] == 0.0 and no_tumour["flag"] == "both_empty"
    assert pred["n_undefined"]["2"]["dice"] == 1 and pred["n_defined"]["2"]["dice"] == 3
    dices = [c["metrics"]["2"]["dice"] for c in pred["metric_per_case"] if c["metrics"]["2"]["dice"] is not None]
    assert pred["mean"]["2"]["dice"] == pytest.approx(np.mean(dices))
    assert pred["std"]["2"]["dice"] == pytest.approx(np.std(dices, ddof=1))
    # the numbers equal label_metrics on the arrays
    ref0 = sitk.GetArrayFromImage(sitk.ReadImage(str(folders / "labelsTs" / "case_000.nii.gz")))
    pred0 = sitk.GetArrayFromImage(sitk.ReadImage(str(folders / "pred" / "case_000.nii.gz")))
    direct = label_metrics(ref0 == 2, pred0 == 2, FOLDER_SPACING).as_dict()
    assert pred["metric_per_case"][0]["metrics"]["2"] == pytest.approx(direct)
    # baseline: case_001 lost its only tumour -> prediction_empty, HD = image diagonal
    base = summary["folders"]["base"]
    lost = base["metric_per_case"][1]["metrics"]["2"]
    assert lost["flag"] == "prediction_empty" and lost["dice"] == 0.0
    assert lost["hd"] == pytest.approx(image_diagonal_mm(FOLDER_SHAPE, FOLDER_SPACING))
    assert base["flags"]["2"]["prediction_empty"] == 1
    # lesions: 6 tumours in the reference, all found by pred, the baseline misses some and has false positives
    assert pred["lesions"]["2"]["n_lesions"] == 6 and pred["lesions"]["2"]["sensitivity"] == 1.0
    assert base["lesions"]["2"]["sensitivity"] < 1.0 and base["lesions"]["2"]["n_false_positives"] >= 1
    assert [b["bin"] for b in pred["lesions"]["2"]["by_size"]] == ["<5", "5-10", "10-20", ">=20"]
    assert sum(b["n_lesions"] for b in pred["lesions"]["2"]["by_size"]) == 6
    # comparison
    (comparison,) = summary["comparisons"]
    assert comparison["prediction"] == "pred" and comparison["baseline"] == "base"
    dice_test = comparison["tests"]["2"]["dice"]
    assert dice_test["alternative"] == "greater" and dice_test["n_pairs"] == 3 and dice_test["n_excluded"] == 1
    assert comparison["tests"]["2"]["hd"]["alternative"] == "less"
    assert len(comparison["dice_differences"]["2"]) == 4
    # no NaN or inf anywhere in the JSON
    assert "NaN" not in (out / "summary.json").read_text() and "Infinity" not in (out / "summary.json").read_text()
    # CSVs
    rows = list(csv.DictReader(open(out / "cases.csv")))
    assert len(rows) == 2 * 4 * 2  # folders x cases x labels
    tumour_rows = [r for r in rows if r["label"] == "2" and r["folder"] == "pred"]
    assert tumour_rows[2]["dice"] == "" and tumour_rows[2]["flag"] == "both_empty"
    assert tumour_rows[0]["lesions"] == "2" and tumour_rows[0]["false_positives"] == "0"
    lesion_rows = list(csv.DictReader(open(out / "lesions.csv")))
    assert len(lesion_rows) == 12 and {r["size_bin"] for r in lesion_rows} <= {"<5", "5-10", "10-20", ">=20"}
    # report.md: Table-3-like table, conventions, figures
    report = (out / "report.md").read_text()
    assert "| Folder | Cases | Dice (%) | NSD@5 mm (%) | Precision (%) | Recall (%) | HD (mm) | HD95 (mm) |" in report
    assert "Quinton et al. 2026, Table 3" in report and "both_empty" in report
    assert "larger of the two directed 95th percentiles" in report
    assert "t-test p" in report and "Wilcoxon p" in report and "<5 mm" in report
    for name in ("boxplots_label1.png", "boxplots_label2.png", "sensitivity_by_size_label2.png",
                 "dice_difference_pred_vs_base_label1.png", "dice_difference_pred_vs_base_label2.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in report
    assert sorted(os.listdir(out)) == sorted(["summary.json", "cases.csv", "lesions.csv", "report.md",
                                             "boxplots_label1.png", "boxplots_label2.png",
                                             "sensitivity_by_size_label2.png",
                                             "dice_difference_pred_vs_base_label1.png",
                                             "dice_difference_pred_vs_base_label2.png"])
    # the command prints the tables; the function returns the same numbers
    assert "| pred | 4 |" in printed and "Lesion detection by size" in printed
    again = evaluate_folders(str(folders / "labelsTs"), str(folders / "pred"), baselines=[str(folders / "base")],
                             num_processes=1, verbose=False)
    assert again["folders"] == summary["folders"] and again["comparisons"] == summary["comparisons"]


def test_labels_by_name_or_value(folders):
    by_name = evaluate_folders(str(folders / "labelsTs"), str(folders / "pred"), labels=["tumour"], num_processes=1,
                               verbose=False)
    by_value = evaluate_folders(str(folders / "labelsTs"), str(folders / "pred"), labels=[2], num_processes=1,
                                verbose=False)
    assert by_name["settings"]["labels"] == {"2": "tumour"} and by_name["folders"] == by_value["folders"]
    liver = evaluate_folders(str(folders / "labelsTs"), str(folders / "pred"), labels=["1"], num_processes=1,
                             verbose=False)
    assert liver["settings"]["lesion_labels"] == ["1"]  # no tumour-named label evaluated: every label


def test_unknown_labels_listed(folders, capsys):
    code = run_cli(["-ref", folders / "labelsTs", "-pred", folders / "pred", "-o", folders / "r", "-l", "2", "7",
                    "vessel"])
    err = capsys.readouterr().err
    assert code == 2 and "['7', 'vessel']" in err and "'tumour': 2" in err
    assert not (folders / "r").exists()


def test_region_based_labels_refused(folders):
    dj = {"labels": {"background": 0, "whole": [1, 2], "tumour": 2}, "file_ending": ".nii.gz"}
    with pytest.raises(ValueError, match="region-based"):
        evaluate_folders(str(folders / "labelsTs"), str(folders / "pred"), dataset_json=dj, verbose=False)


def test_geometry_mismatch_names_case_and_both_geometries(folders, capsys):
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(folders / "pred" / "case_001.nii.gz")))
    write_label_map(folders / "pred" / "case_001.nii.gz", seg, spacing=(3.0, 0.8, 0.8))
    code = run_cli(["-ref", folders / "labelsTs", "-pred", folders / "pred", "-o", folders / "r", "-np", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "case_001" in err
    assert "spacing (3, 0.8, 0.8) mm" in err and "spacing (2.5, 0.8, 0.8) mm" in err
    assert not (folders / "r").exists()
    write_label_map(folders / "pred" / "case_001.nii.gz", seg, origin=(0.0, 5.0, 0.0))
    with pytest.raises(ValueError, match=r"case_001.*origin \(0, 5, 0\)"):
        evaluate_folders(str(folders / "labelsTs"), str(folders / "pred"), num_processes=1, verbose=False)
    write_label_map(folders / "pred" / "case_001.nii.gz", seg[:, :, :-1])
    with pytest.raises(ValueError, match=r"case_001.*shape \(16, 40, 39\)"):
        evaluate_folders(str(folders / "labelsTs"), str(folders / "pred"), num_processes=1, verbose=False)


def test_missing_predictions_listed_rest_evaluated(folders, capsys):
    os.remove(folders / "pred" / "case_003.nii.gz")
    out = folders / "report"
    code = run_cli(["-ref", folders / "labelsTs", "-pred", folders / "pred", "-o", out, "-np", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "pred: case_003" in err and "--allow-missing" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folders"]["pred"]["n_cases"] == 3 and summary["folders"]["pred"]["missing_cases"] == ["case_003"]
    assert "missing (not evaluated): case_003" in (out / "report.md").read_text()
    assert run_cli(["-ref", folders / "labelsTs", "-pred", folders / "pred", "-o", out, "-np", "1",
                    "--overwrite", "--allow-missing"]) == 0
    with pytest.raises(MissingCasesError) as error:
        evaluate_folders(str(folders / "labelsTs"), str(folders / "pred"), num_processes=1, verbose=False)
    assert error.value.missing == {"pred": ["case_003"]} and error.value.summary["folders"]["pred"]["n_cases"] == 3


def test_case_missing_from_a_baseline_is_named(folders, capsys):
    os.remove(folders / "base" / "case_000.nii.gz")
    code = run_cli(["-ref", folders / "labelsTs", "-pred", folders / "pred", "-baseline", folders / "base",
                    "-o", folders / "report", "-np", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "base: case_000" in err and "pred:" not in err
    summary = json.loads((folders / "report" / "summary.json").read_text())
    assert summary["comparisons"][0]["cases"] == ["case_001", "case_002", "case_003"]


def test_existing_report_folder_refused_without_overwrite(folders, capsys):
    out = folders / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = run_cli(["-ref", folders / "labelsTs", "-pred", folders / "pred", "-o", out])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert os.listdir(out) == ["notes.txt"]
    assert run_cli(["-ref", folders / "labelsTs", "-pred", folders / "pred", "-o", out, "--overwrite",
                    "-np", "1"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "summary.json").is_file()
    # never the input folders themselves
    assert run_cli(["-ref", folders / "labelsTs", "-pred", folders / "pred", "-o", folders / "pred",
                    "--overwrite"]) == 2
    assert "input folder" in capsys.readouterr().err


def test_dataset_json_lookup(folders, capsys):
    (folders / "dataset.json").rename(folders / "elsewhere.json")
    code = run_cli(["-ref", folders / "labelsTs", "-pred", folders / "pred", "-o", folders / "r"])
    err = capsys.readouterr().err
    assert code == 2 and "no dataset.json found" in err and "-djfile" in err
    assert run_cli(["-ref", folders / "labelsTs", "-pred", folders / "pred", "-o", folders / "r", "-np", "1",
                    "-djfile", folders / "elsewhere.json"]) == 0
    # nnUNetv2_predict writes dataset.json into the prediction folder: found there first
    (folders / "elsewhere.json").rename(folders / "pred" / "dataset.json")
    summary = evaluate_folders(str(folders / "labelsTs"), str(folders / "pred"), num_processes=1, verbose=False)
    assert summary["settings"]["dataset_json"] == str(folders / "pred" / "dataset.json")
