"""tumorsynth_preview's pieces on data made here: orientation, panels, windows, record reading, pages."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_tumorsynth.inspection import preview
from nnunetv2_tumorsynth.inspection.items import TumourItem, generated_items
from nnunetv2_tumorsynth.inspection.preview import (
    lps_reorientation,
    organ_window,
    page_file_name,
    reorient,
    tumour_panels,
    write_previews,
)
from nnunetv2_tumorsynth.phantom import DIRECTION


def test_reading_a_generated_dataset_does_not_import_torch():
    """The readers of generated datasets and banks take the generator's file names from ``generate.settings``,
    which must stay free of torch (previews run on machines without a GPU stack loaded)."""
    code = ("import sys; import nnunetv2_tumorsynth.inspection.items as items; "
            "assert items.RECORDS_JSON == 'synthesis_records.json'; assert 'torch' not in sys.modules, 'torch'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lps_reorientation_matches_simpleitk():
    rng = np.random.default_rng(0)
    array = rng.normal(size=(4, 5, 6)).astype(np.float32)
    permuted = (0, 0, 1, -1, 0, 0, 0, -1, 0)  # index x along world -y, index y along -z, index z along +x
    for direction in ((1, 0, 0, 0, 1, 0, 0, 0, 1), DIRECTION, (-1, 0, 0, 0, 1, 0, 0, 0, -1), permuted):
        image = sitk.GetImageFromArray(array)
        image.SetDirection(direction)
        expected = sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))
        permutation, flips = lps_reorientation(direction)
        assert np.array_equal(reorient(array, permutation, flips), expected), direction
    assert lps_reorientation(None) == ((0, 1, 2), (False, False, False))


def _item(shape=(20, 40, 40), spacing=(3.0, 1.5, 1.5), centre=(10, 20, 20), radius_vox=(1, 2, 2)) -> TumourItem:
    z, y, x = np.indices(shape)
    mask = sum(((g - c) / r) ** 2 for g, c, r in zip((z, y, x), centre, radius_vox)) <= 1
    organ = np.zeros(shape, bool)
    organ[2:-2, 4:-4, 4:-4] = True
    organ &= ~mask
    rng = np.random.default_rng(1)
    before = (100 + 5 * rng.normal(size=shape)).astype(np.float32)
    after = before.copy()
    after[mask] = 60.0
    return TumourItem("case_a", "t1", "case_a", before, after, mask, organ, mask.copy(), spacing, None)


def test_panels_are_cut_through_the_centre_in_mm():
    item = _item()
    panels = tumour_panels(item, fov_mm=30.0)
    axial, coronal, sagittal = panels["axial"], panels["coronal"], panels["sagittal"]
    # 30 mm: +-10 voxels of 1.5 mm in y and x, +-5 voxels of 3 mm in z around the centre (10, 20, 20)
    assert axial.after.shape == (21, 21) and coronal.after.shape == (11, 21) and sagittal.after.shape == (11, 21)
    assert axial.extent == pytest.approx((-15.75, 15.75, 15.75, -15.75)) and axial.origin == "upper"
    assert coronal.extent == pytest.approx((-15.75, 15.75, -16.5, 16.5)) and coronal.origin == "lower"
    assert np.array_equal(axial.mask, item.mask[10, 10:31, 10:31])
    assert np.array_equal(coronal.before, item.before[5:16, 20, 10:31])
    assert np.array_equal(sagittal.after, item.after[5:16, 10:31, 20])
    # a tumour larger than the field of view widens it (2.5 x its extent)
    big = tumour_panels(_item(radius_vox=(3, 6, 6)), fov_mm=10.0)
    assert big["axial"].after.shape[0] > 21


def test_organ_window_widens_the_organ_percentiles():
    image = np.arange(1000, dtype=float).reshape(10, 10, 10)
    organ = np.zeros(image.shape, bool)
    organ[:5] = True  # values 0..499
    low, high = organ_window(image, organ)
    p1, p99 = np.percentile(np.arange(500), [1, 99])
    assert (low, high) == pytest.approx((p1 - 0.5 * (p99 - p1), p99 + 0.5 * (p99 - p1)))


def test_page_names_and_pages(tmp_path):
    items = [_item() for _ in range(3)]
    for k, item in enumerate(items):
        item.case, item.entry, item.source_case = f"case_{k}", f"e{k:05d}", f"case_{k}"
    assert page_file_name(2, items[:2]) == "page002__case_0-e00000__case_1-e00001.png"
    assert len(page_file_name(1, items * 20)) <= 220 and "_more" in page_file_name(1, items * 20)
    pages = write_previews(items, str(tmp_path), per_page=2, progress=False)
    assert [os.path.basename(p) for p in pages] == ["page001__case_0-e00000__case_1-e00001.png",
                                                    "page002__case_2-e00002.png"]
    with open(tmp_path / "preview_index.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["page"][:7], r["case"], r["entry"]) for r in rows] == [
        ("page001", "case_0", "e00000"), ("page001", "case_1", "e00001"), ("page002", "case_2", "e00002")]
    with pytest.raises(FileExistsError):
        write_previews(items, str(tmp_path), progress=False)
    assert len(write_previews(items[:1], str(tmp_path), overwrite=True, progress=False)) == 1
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".png")]) == 1


def _write_case(folder, case, image, label):
    for sub, name, array in (("imagesTr", f"{case}_0000.nii.gz", image), ("labelsTr", f"{case}.nii.gz", label)):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        out = sitk.GetImageFromArray(array)
        out.SetSpacing((1.5, 1.5, 3.0))
        out.SetDirection(DIRECTION)
        sitk.WriteImage(out, os.path.join(folder, sub, name))


def _dataset_json(folder):
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
                   "numTraining": 1, "file_ending": ".nii.gz"}, f)


def test_generated_items_find_the_synthetic_tumours(tmp_path):
    """A dataset laid out as tumorsynth_generate writes it: an added tumour, and a replace-real image whose
    second real tumour was kept real (the record says so)."""
    source, generated = str(tmp_path / "Dataset001_Src"), str(tmp_path / "Dataset002_Gen")
    shape = (10, 30, 30)
    label = np.zeros(shape, np.uint8)
    label[1:9, 3:27, 3:27] = 1
    label[3:6, 5:10, 5:10] = 2  # real tumour 1
    label[3:6, 18:24, 18:24] = 2  # real tumour 2
    image = np.full(shape, 100, np.int16)
    _write_case(source, "c0", image, label)
    _dataset_json(source)
    added_label = label.copy()
    added_label[5:8, 12:16, 4:8] = 2
    added = image.copy()
    added[added_label != label] = 40
    replaced = image.copy()
    replaced[3:6, 5:10, 5:10] = 150
    _write_case(generated, "c0_synth0000", added, added_label)
    _write_case(generated, "c0_replaced0001", replaced, label)
    _write_case(generated, "c0", image, label)
    _dataset_json(generated)
    records = [
        {"image": "c0_synth0000", "index": 0, "mode": "synthetic", "source_case": "c0",
         "source_image": os.path.join(source, "imagesTr", "c0_0000.nii.gz"), "tumours": [{"volume_ml": 0.3}]},
        {"image": "c0_replaced0001", "index": 1, "mode": "replaced", "source_case": "c0",
         "source_image": os.path.join(source, "imagesTr", "c0_0000.nii.gz"),
         "tumours": [{"replaced": True}, {"replaced": False}]},
        {"image": "c0", "index": None, "mode": "real", "source_case": "c0", "tumours": []},
    ]
    with open(os.path.join(generated, "synthesis_records.json"), "w") as f:
        json.dump(records, f)
    with open(os.path.join(generated, "tumorsynth_generate.json"), "w") as f:
        json.dump({"source_raw": source}, f)

    items = list(generated_items(generated))
    assert [(i.case, i.entry, i.source_case) for i in items] == [("c0_synth0000", "t1", "c0"),
                                                                  ("c0_replaced0001", "t1", "c0")]
    assert np.array_equal(items[0].mask, added_label != label)
    assert items[0].tumours.sum() == (added_label == 2).sum()
    assert np.array_equal(items[1].mask[3:6, 5:10, 5:10], np.ones((3, 5, 5), bool)) and items[1].mask.sum() == 75
    assert np.array_equal(items[0].before, image.astype(np.float32))
    assert preview.input_kind(generated) == "generated" and preview.input_kind(source) == "raw"
    pages = preview.preview(generated, str(tmp_path / "png"), progress=False)
    assert len(pages) == 1 and "c0_synth0000-t1" in pages[0]
    real = list(preview.real_items(source))
    assert [i.entry for i in real] == ["t1", "t2"] and all(i.before is None for i in real)
