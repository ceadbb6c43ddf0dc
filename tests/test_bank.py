"""nnunetv2_tumorsynth.bank: the synthesis bank, its overlay on training samples, its settings file and
preview: unit tests on small arrays (no nnU-Net run)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

from nnunetv2_tumorsynth.bank.overlay import OverlaidArray, SyntheticTumourDataset, count_uses, overlay_entry
from nnunetv2_tumorsynth.bank.settings import SynthSettings
from nnunetv2_tumorsynth.bank.store import SynthesisBank, entry_paths, fill_batch_size, write_preview
from nnunetv2_tumorsynth.phantom import PhantomSettings, make_phantom_case
from nnunetv2_tumorsynth.synthesis.entry import Entry
from nnunetv2_tumorsynth.synthesis.placement import SMALLER_SIZES
from nnunetv2_tumorsynth.synthesis.shape import equivalent_radius_mm
from nnunetv2_tumorsynth.synthesis.statistics import measure_tumours
from nnunetv2_tumorsynth.synthesis.texture import HeuristicTexture

SPACING = (3.0, 1.5, 1.5)


class FakeDataset:
    """Stands in for nnU-Net's preprocessed dataset: load_case -> (data, seg, seg_prev, properties)."""

    def __init__(self, cases: dict):
        self.cases = cases
        self.identifiers = sorted(cases)

    def load_case(self, identifier):
        data, seg = self.cases[identifier]
        locations = {2: np.argwhere(seg == 2)}
        return data, seg, None, {"class_locations": locations}


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(0)
    cases = {}
    for i, with_tumours in enumerate([True, False, True]):
        image, label = make_phantom_case(rng, PhantomSettings(), with_tumours)
        image = (image - image.mean()) / image.std()
        cases[f"case{i}"] = (image[None].astype(np.float32), label[None].astype(np.int8))
    empty = np.zeros((1, 16, 32, 32), np.int8)
    cases["no_organ"] = (np.zeros((1, 16, 32, 32), np.float32), empty)
    return FakeDataset(cases)


def make_bank(folder, **settings):
    s = SynthSettings(**{"texture": "heuristic", "size": "small", "seed": 1, **settings})
    return SynthesisBank(str(folder), HeuristicTexture(), s, SPACING, organ_label=1, tumour_label=2)


def test_bank_entries_lie_in_the_organ_away_from_tumours(dataset, tmp_path):
    bank = make_bank(tmp_path)
    with pytest.warns(UserWarning, match="no_organ"):
        stats = bank.generate(dataset, dataset.identifiers, 6, epoch=0)
    assert stats.made == 6 and stats.skipped_cases == ["no_organ"]
    assert all(0 < v < 20 for v in stats.volumes_ml)
    for case in ("case0", "case1", "case2"):
        paths = entry_paths(str(tmp_path), case)
        assert len(paths) == 2, "cases with the fewest entries are served first"
        data, seg, _, _ = dataset.load_case(case)
        for path in paths:
            e = Entry.load(path)
            box = e.box
            assert e.mask.any()
            assert np.all(seg[0][box][e.mask] == 1), "inside the organ, never on an existing tumour"
            assert np.array_equal(e.before, data[0][box])
            assert not np.allclose(e.values[e.mask], e.before[e.mask])
            assert e.volume_ml == pytest.approx(e.mask.sum() * np.prod(SPACING) / 1000)
    assert not [f for f in os.listdir(tmp_path / "case0") if f.startswith(".")], "no temporary files left"


def ball_organ_case(shape, centre_mm, semi_axes_mm):
    """(data, seg) of a case whose organ (label 1) is an ellipsoid; centre in mm from the array's centre."""
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, SPACING)], indexing="ij",
                        sparse=True)
    organ = sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre_mm, semi_axes_mm)) <= 1.0
    image = np.where(organ, 1.0, 0.0) + np.random.default_rng(0).normal(0.0, 0.1, shape)
    return image[None].astype(np.float32), organ[None].astype(np.int8)


def test_bank_counts_fallbacks_and_records_sizes(dataset, tmp_path):
    # an organ of radius 15 mm: a 'paper' tumour (semi-axes about 27 mm) never fits, even clipped
    small = FakeDataset({"small": ball_organ_case((16, 32, 32), (0.0, 0.0, 0.0), (15.0, 15.0, 15.0))})
    bank = make_bank(tmp_path, size="paper")
    stats = bank.generate(small, ["small"], 3, epoch=0)
    assert stats.made == 3 and stats.fallbacks == 3
    assert stats.sizes_requested == ["paper"] * 3
    assert all(size in SMALLER_SIZES for size in stats.sizes_used)
    assert len(stats.radii_mm) == len(stats.requested_radii_mm) == 3
    assert all(r > 20.0 for r in stats.requested_radii_mm), "the radius asked for: a 'paper' draw"
    assert all(r < 15.0 for r in stats.radii_mm), "the radius placed: a smaller preset"
    entries = [Entry.load(p) for p in entry_paths(str(tmp_path), "small")]
    placed = sorted(equivalent_radius_mm(e.mask, SPACING) for e in entries)
    assert placed == pytest.approx(sorted(stats.radii_mm))

    # the phantom's liver holds 'small' tumours: no fallback
    stats = make_bank(tmp_path / "phantom").generate(dataset, ["case0", "case1"], 2, epoch=0)
    assert stats.fallbacks == 0 and stats.sizes_used == stats.sizes_requested == ["small", "small"]
    assert all(5.0 < r < 11.0 for r in stats.radii_mm)


def test_bank_places_paper_tumours_in_an_organ_cut_by_the_field_of_view(tmp_path):
    # 16 slices of 3 mm: the organ (semi-axes 80 x 45 x 45 mm) is cut at 48 mm in z, as by a field of view;
    # a 'paper' tumour (about 54 mm across) then fits only if it may cross the organ's cut face
    shape = (16, 64, 64)
    cut = FakeDataset({"cut": ball_organ_case(shape, (0.0, 0.0, 0.0), (80.0, 45.0, 45.0))})
    whole = make_bank(tmp_path / "whole", size="paper", min_inside_fraction=1.0)
    assert whole.generate(cut, ["cut"], 4, epoch=0).fallbacks >= 2
    bank = make_bank(tmp_path / "default", size="paper")
    stats = bank.generate(cut, ["cut"], 4, epoch=0)
    assert stats.made == 4 and stats.fallbacks == 0 and stats.sizes_used == ["paper"] * 4
    organ = cut.cases["cut"][1][0] == 1
    for path in entry_paths(str(tmp_path / "default"), "cut"):
        e = Entry.load(path)
        corner, size = e.corner, np.array(e.mask.shape)
        assert np.all(corner >= 0) and np.all(corner + size <= shape), "the box lies in the case"
        box = tuple(slice(int(c), int(c) + n) for c, n in zip(corner, size))
        assert e.mask.any() and not np.any(e.mask & ~organ[box]), "clipped to the organ"


def test_fill_batch_size_follows_the_texture(dataset, tmp_path):
    assert fill_batch_size(HeuristicTexture()) == 1, "no fixed crop: filled one at a time, nothing gained"
    assert fill_batch_size(SimpleNamespace(crop_size=(16, 32, 32), batch_size=4)) == 4, "the DDPM texture's batch"
    assert fill_batch_size(SimpleNamespace(crop_size=(16, 32, 32))) == 1

    calls = []

    class Texture:  # fixed crop: the whole generate call is one texture call
        crop_size, batch_size = (16, 32, 32), 3

        def fill(self, images, masks, organs, rng, spacing=None, draws=None):
            calls.append(len(images))
            return images + masks

    bank = SynthesisBank(str(tmp_path), Texture(), SynthSettings(texture="heuristic", size="small", seed=1), SPACING,
                         organ_label=1, tumour_label=2)
    assert bank.generate(dataset, ["case0", "case1"], 3, epoch=0).made == 3 and calls == [3]


def test_bank_keeps_only_the_newest_entries(dataset, tmp_path):
    bank = make_bank(tmp_path, max_entries_per_case=2)
    for epoch in range(3):
        bank.generate(dataset, ["case0"], 2, epoch)
    names = [os.path.basename(p) for p in entry_paths(str(tmp_path), "case0")]
    assert len(names) == 2 and all(n.startswith("e00002") for n in names)


def written_contrasts(dataset, folder) -> list[float]:
    """Contrast to the parenchyma ring (ring SDs) of every written entry, measured as real tumours are."""
    contrasts = []
    for case in dataset.identifiers:
        data, seg, _, _ = dataset.load_case(case)
        for path in entry_paths(str(folder), case):
            entry = Entry.load(path)
            image, labels = data[0].copy(), seg[0].copy()
            entry.paste_into(image)
            labels[entry.box][entry.mask] = 3
            contrasts += [t.contrast_sd for t in measure_tumours(image, labels, 1, 3, SPACING)]
    return contrasts


def test_quality_gate_drops_only_entries_fainter_than_its_threshold(dataset, tmp_path):
    cases = ["case0", "case1", "case2"]
    ungated = make_bank(tmp_path / "off", max_entries_per_case=20)
    stats = ungated.generate(dataset, cases, 12, epoch=0)
    contrasts = np.abs(written_contrasts(dataset, tmp_path / "off"))
    assert stats.made == 12 and stats.rejected == 0 and len(contrasts) == 12
    threshold = float(np.median(contrasts))
    gated = make_bank(tmp_path / "on", max_entries_per_case=20, min_contrast_sd=threshold)
    stats = gated.generate(dataset, cases, 12, epoch=0)
    kept = np.abs(written_contrasts(dataset, tmp_path / "on"))
    assert stats.made + stats.rejected == 12 and stats.rejected > 0 and stats.made == len(kept) > 0
    assert np.all(kept >= threshold), "no written entry is fainter than the gate"
    with pytest.raises(ValueError, match="min_contrast_sd"):
        SynthSettings(min_contrast_sd=-1.0).check()


def test_overlaid_array_crops_like_a_pasted_copy():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 10, 12, 14)).astype(np.float32)
    mask = rng.uniform(size=(4, 5, 6)) > 0.4
    values = rng.normal(size=(1, 4, 5, 6)).astype(np.float32) + 10
    corner = np.array([6, 2, 8])
    pasted = base.copy()
    region = pasted[:, 6:10, 2:7, 8:14]
    region[:, mask] = values[:, mask]
    lazy = OverlaidArray(base, corner, mask, values)
    for bbox in ([[0, 10], [0, 12], [0, 14]], [[5, 9], [-3, 6], [9, 20]], [[0, 3], [0, 3], [0, 3]]):
        np.testing.assert_array_equal(crop_and_pad_nd(lazy, bbox, 0), crop_and_pad_nd(pasted, bbox, 0))
    np.testing.assert_array_equal(np.asarray(lazy), pasted)
    assert np.array_equal(base[0, 0], pasted[0, 0]), "the base array is never modified"


def test_overlay_entry_labels_tumour_and_offers_it_to_oversampling(dataset, tmp_path):
    make_bank(tmp_path).generate(dataset, ["case1"], 1, 0)
    entry = Entry.load(entry_paths(str(tmp_path), "case1")[0])
    data, seg, _, props = dataset.load_case("case1")
    assert len(props["class_locations"][2]) == 0, "case1 has no real tumour"
    data2, seg2, props2 = overlay_entry(data, seg, props, entry, tumour_label=2)
    seg_full, data_full = np.asarray(seg2), np.asarray(data2)
    assert (seg_full == 2).sum() == entry.mask.sum()
    changed = data_full != data
    assert changed.any() and not changed[seg_full != 2].any(), "image differs only inside the synthetic mask"
    locations = props2["class_locations"][2]
    assert len(locations) == entry.mask.sum() and np.all(locations[:, 0] == 0)
    assert np.all(seg_full[0][tuple(locations[:, 1:].T)] == 2)


def test_dataset_wrapper_probability_and_usage_log(dataset, tmp_path):
    make_bank(tmp_path).generate(dataset, ["case0", "case1"], 2, 0)
    always = SyntheticTumourDataset(dataset, str(tmp_path), 1.0, 2, dump_samples=1)
    never = SyntheticTumourDataset(dataset, str(tmp_path), 0.0, 2)
    np.random.seed(0)
    _, seg, _, _ = always.load_case("case1")
    assert (np.asarray(seg) == 2).any()
    _, seg, _, _ = never.load_case("case1")
    assert not (np.asarray(seg) == 2).any()
    data, _, _, _ = always.load_case("case2")  # no entries for case2: the real case comes back
    assert data is dataset.cases["case2"][0]
    usage = count_uses(str(tmp_path))
    assert (usage.loaded, usage.overlaid) == (3, 1), "every load is counted, and the one that received an entry"
    dumps = os.listdir(tmp_path / "dumps")
    assert len(dumps) == 1 and dumps[0].startswith("case1__")


def test_settings_from_json(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"probability": 0.8, "deformation": "elastic"}))
    s = SynthSettings().updated_from_json(str(path))
    assert s.probability == 0.8 and s.deformation == "elastic" and s.size == "data"
    path.write_text(json.dumps({"probabilty": 0.8}))
    with pytest.raises(ValueError, match="probabilty"):
        SynthSettings().updated_from_json(str(path))


def test_preview_png(dataset, tmp_path):
    make_bank(tmp_path).generate(dataset, ["case0", "case2"], 2, 0)
    png = str(tmp_path / "preview.png")
    assert write_preview(str(tmp_path), png) == 2
    assert os.path.getsize(png) > 1000


def test_remove_unfinished_touches_only_this_ranks_temporary_files(tmp_path):
    bank = make_bank(tmp_path)  # rank 0
    folder = tmp_path / "case0"
    folder.mkdir()
    names = [".tmp7_e00001_r0_p7_000001.npz",  # killed mid-write by an earlier process of rank 0
             ".tmp8_e00001_r1_p8_000001.npz",  # another rank may be writing it right now
             "e00001_r0_p7_000002.npz"]  # a finished entry
    for name in names:
        (folder / name).write_bytes(b"")
    assert bank.remove_unfinished() == 1
    assert sorted(os.listdir(folder)) == sorted(names[1:])
