"""Visual Turing kit: Fleiss' kappa, reader scores (Hu et al. 2023 Table 2 reproduced), sheets, export."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_tumorsynth.inspection.turing import TuringCase, TuringError, export_turing_test
from nnunetv2_tumorsynth.inspection.turing_scores import (
    fleiss_kappa,
    markdown_scores,
    read_sheet,
    reader_scores,
    score_turing,
    write_scores,
)


def test_fleiss_kappa_by_hand():
    # 4 volumes, 3 readers, categories (real, synthetic, unsure)
    table = np.array([[3, 0, 0], [0, 3, 0], [2, 1, 0], [1, 1, 1]])
    # P_i = (sum n^2 - 3) / 6: 1, 1, 1/3, 0 -> P = 7/12; p_j = (6, 5, 1) / 12 -> P_e = 62/144
    p, p_e = 7 / 12, 62 / 144
    assert fleiss_kappa(table) == pytest.approx((p - p_e) / (1 - p_e))
    assert fleiss_kappa(np.array([[2, 0, 0], [0, 2, 0]])) == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa(np.array([[2, 0, 0], [2, 0, 0]])))  # one category everywhere: undefined
    with pytest.raises(ValueError):
        fleiss_kappa(np.array([[2, 0, 0], [1, 0, 0]]))  # unequal numbers of ratings


def test_fleiss_kappa_matches_statsmodels():
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    rng = np.random.default_rng(0)
    for readers, volumes in ((2, 10), (3, 30), (5, 17)):
        answers = rng.integers(0, 3, size=(volumes, readers))
        answers[: volumes // 2] = answers[: volumes // 2, :1]  # some agreement
        table = np.stack([(answers == c).sum(1) for c in range(3)], axis=1)
        assert fleiss_kappa(table) == pytest.approx(inter_rater.fleiss_kappa(table, method="fleiss"), abs=1e-12)


def _answers(truth_and_answer: list[tuple[str, str, int]]) -> tuple[dict, dict]:
    truth, answers = {}, {}
    for true, answer, count in truth_and_answer:
        for _ in range(count):
            volume = f"v{len(truth):03d}"
            truth[volume], answers[volume] = true, answer
    return truth, answers


def test_reader_scores_reproduce_hu_et_al_2023_table_2():
    """Hu et al. 2023 Table 2: 20 real and 30 synthetic CT scans; their figures exclude unsure answers."""
    truth, junior = _answers([("real", "real", 5), ("real", "synthetic", 15), ("synthetic", "real", 21),
                              ("synthetic", "synthetic", 8), ("synthetic", "unsure", 1)])
    s = reader_scores(junior, truth)
    assert (round(100 * s["accuracy_decided"], 1), round(100 * s["sensitivity_decided"], 1),
            round(100 * s["specificity_decided"], 1)) == (26.5, 27.6, 25.0)
    assert s["n_unsure"] == 1 and s["n_real"] == 20 and s["n_synthetic"] == 30
    # unsure counted as wrong: 8 / 30 synthetic found, 5 / 20 real called real, 13 / 50 correct
    assert (s["sensitivity"], s["specificity"], s["accuracy"]) == pytest.approx((8 / 30, 5 / 20, 13 / 50))

    truth, senior = _answers([("real", "real", 10), ("real", "synthetic", 2), ("real", "unsure", 8),
                              ("synthetic", "real", 7), ("synthetic", "synthetic", 12), ("synthetic", "unsure", 11)])
    s = reader_scores(senior, truth)
    assert (round(100 * s["accuracy_decided"], 1), round(100 * s["sensitivity_decided"], 1),
            round(100 * s["specificity_decided"], 1)) == (71.0, 63.2, 83.3)
    assert s["n_unsure"] == 19


def _write_sheet(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "answer"])
        writer.writerows(rows)
    return str(path)


def test_sheet_errors_name_the_problem(tmp_path):
    ids = ["turing_001", "turing_002", "turing_003"]
    good = _write_sheet(tmp_path / "a.csv", [["turing_001", " Real "], ["turing_002", "SYNTHETIC"],
                                             ["turing_003", "unsure"]])
    assert read_sheet(good, ids) == {"turing_001": "real", "turing_002": "synthetic", "turing_003": "unsure"}
    bad = _write_sheet(tmp_path / "b.csv", [["turing_001", "fake"], ["turing_004", "real"], ["turing_003", ""]])
    with pytest.raises(TuringError) as error:
        read_sheet(bad, ids)
    message = str(error.value)
    assert "b.csv" in message and "'fake'" in message and "no answer for turing_002" in message
    assert "turing_004" in message and "turing_003: answer ''" in message


def _make_case(folder, name: str, rng, pixel_type=np.int16) -> TuringCase:
    shape = (12, 20, 24)
    label = np.zeros(shape, np.uint8)
    label[3:9, 5:15, 6:18] = 1
    label[5:7, 8:11, 9:12] = 2
    real = rng.normal(100, 10, shape)
    synthetic = real.copy()
    synthetic[label == 2] += 30.4  # not an integer: rounded on export for an int16 real image
    paths = []
    for kind, array, dtype in (("real", real, pixel_type), ("synthetic", synthetic, np.float32),
                               ("label", label, np.uint8)):
        image = sitk.GetImageFromArray(np.rint(array).astype(dtype) if kind == "real" else array.astype(dtype))
        image.SetSpacing((1.5, 1.5, 3.0))
        image.SetOrigin((10.0, -5.0, 40.0))
        image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        path = os.path.join(folder, f"{name}_{kind}.nii.gz")
        sitk.WriteImage(image, path)
        paths.append(path)
    return TuringCase(name, *paths)


def test_export_writes_shuffled_neutral_volumes_and_a_separate_key(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    cases = [_make_case(str(tmp_path / "in"), f"case{i}", rng) for i in range(5)]
    readers, key_folder = tmp_path / "readers", tmp_path / "key"
    key = export_turing_test(cases, str(readers), str(key_folder), k=3, seed=7, crop_margin_mm=3.0)
    ids = [item["id"] for item in key["items"]]
    assert ids == [f"turing_{i:03d}" for i in range(1, 7)]
    assert sorted(item["truth"] for item in key["items"]) == ["real"] * 3 + ["synthetic"] * 3
    by_case = {}
    for item in key["items"]:
        by_case.setdefault(item["case"], []).append(item)
    assert all(len(v) == 2 for v in by_case.values()), "same cases: each chosen case once real, once synthetic"
    assert sorted(os.listdir(readers)) == ["INSTRUCTIONS.txt", "reader_sheet.csv", "volumes"]
    assert sorted(os.listdir(readers / "volumes")) == [f"{i}.nii.gz" for i in ids]
    assert os.listdir(key_folder) == ["turing_key.json"]
    with open(readers / "reader_sheet.csv") as f:
        assert list(csv.reader(f)) == [["id", "answer"]] + [[i, ""] for i in ids]

    for items in by_case.values():
        volumes = {i["truth"]: sitk.ReadImage(str(readers / "volumes" / f"{i['id']}.nii.gz")) for i in items}
        real, synthetic = volumes["real"], volumes["synthetic"]
        # crop: label foreground (z 3:9, y 5:15, x 6:18) + 3 mm = 1 voxel in z, 2 in y and x
        assert real.GetSize() == synthetic.GetSize() == (12 + 4, 10 + 4, 6 + 2)
        assert real.GetOrigin() == synthetic.GetOrigin()
        assert real.GetPixelID() == synthetic.GetPixelID() == sitk.sitkInt16, "stored alike, no type giveaway"
        case = next(c for c in cases if c.case == items[0]["case"])
        original = sitk.ReadImage(case.real_image)
        assert np.allclose(real.GetOrigin(), original.TransformIndexToPhysicalPoint((4, 3, 2)))
        expected = sitk.GetArrayFromImage(sitk.ReadImage(case.synthetic_image))[2:10, 3:17, 4:20]
        assert np.array_equal(sitk.GetArrayFromImage(synthetic), np.rint(expected).astype(np.int16))

    again = export_turing_test(cases, str(tmp_path / "r2"), str(tmp_path / "k2"), k=3, seed=7)
    assert [(i["truth"], i["case"]) for i in again["items"]] == [(i["truth"], i["case"]) for i in key["items"]]
    other = export_turing_test(cases, str(tmp_path / "r3"), str(tmp_path / "k3"), k=3, seed=8)
    assert [(i["truth"], i["case"]) for i in other["items"]] != [(i["truth"], i["case"]) for i in key["items"]]
    disjoint = export_turing_test(cases, str(tmp_path / "r4"), str(tmp_path / "k4"), k=2, seed=1, pairing="disjoint")
    assert len({i["case"] for i in disjoint["items"]}) == 4

    with pytest.raises(TuringError, match="must not be the readers' folder"):
        export_turing_test(cases, str(readers), str(readers / "key"), k=1, seed=0)
    with pytest.raises(FileExistsError):
        export_turing_test(cases, str(readers), str(key_folder), k=1, seed=0)
    with pytest.raises(TuringError, match="only 5 are available"):
        export_turing_test(cases, str(tmp_path / "r5"), str(tmp_path / "k5"), k=6, seed=0)
    export_turing_test(cases, str(readers), str(key_folder), k=1, seed=0, overwrite=True)
    assert len(os.listdir(readers / "volumes")) == 2, "overwrite removes the earlier volumes"


def test_score_two_readers_by_hand(tmp_path):
    items = [{"id": f"turing_00{i}", "truth": t} for i, t in enumerate(
        ["real", "synthetic", "synthetic", "real", "real", "synthetic"], start=1)]
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"items": items}))
    a = _write_sheet(tmp_path / "reader_A.csv", [["turing_001", "real"], ["turing_002", "synthetic"],
                                                 ["turing_003", "real"], ["turing_004", "real"],
                                                 ["turing_005", "synthetic"], ["turing_006", "unsure"]])
    b = _write_sheet(tmp_path / "reader_B.csv", [["turing_001", "real"], ["turing_002", "real"],
                                                 ["turing_003", "synthetic"], ["turing_004", "real"],
                                                 ["turing_005", "real"], ["turing_006", "synthetic"]])
    result = score_turing([a, b], str(key))
    ra, rb = result["readers"]["reader_A"], result["readers"]["reader_B"]
    # A: synthetic 1 of 3 found (one unsure), real 2 of 3 -> accuracy 3 / 6; decided: 1 / 2, 2 / 3, 3 / 5
    assert (ra["sensitivity"], ra["specificity"], ra["accuracy"]) == pytest.approx((1 / 3, 2 / 3, 1 / 2))
    assert (ra["sensitivity_decided"], ra["specificity_decided"], ra["accuracy_decided"]) == pytest.approx(
        (1 / 2, 2 / 3, 3 / 5))
    # B: synthetic 2 of 3, real 3 of 3 -> 5 / 6
    assert (rb["sensitivity"], rb["specificity"], rb["accuracy"]) == pytest.approx((2 / 3, 1.0, 5 / 6))
    # kappa: agreement on 001, 004 (P_i = 1), disagreement elsewhere (P_i = 0) -> P = 1/3;
    # answers: real 3 + 4, synthetic 2 + 2, unsure 1 of 12 -> P_e = (49 + 16 + 1) / 144; kappa = -18 / 78
    p_e = 66 / 144
    assert result["fleiss_kappa"] == pytest.approx((1 / 3 - p_e) / (1 - p_e))
    assert result["fleiss_kappa"] == pytest.approx(-18 / 78)
    assert result["mean_over_readers"]["accuracy"]["mean"] == pytest.approx((1 / 2 + 5 / 6) / 2)
    json_path, md_path = write_scores(result, str(tmp_path / "out"))
    text = open(md_path).read()
    assert "| reader_A | 33.3 | 66.7 | 50.0 | 1 | 50.0 | 66.7 | 60.0 |" in text
    assert "Fleiss' kappa" in text and "Hu et al. 2023" in text
    assert json.load(open(json_path))["fleiss_kappa"] == pytest.approx(result["fleiss_kappa"])
    single = score_turing([a], str(key))
    assert single["fleiss_kappa"] is None and "n/a (one reader)" in markdown_scores(single)
