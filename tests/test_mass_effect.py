"""nnunetv2_tumorsynth.synthesis.mass_effect: Hu et al. 2023 eq. 5, and the bank moving image and labels together
in the mass-effect region only."""

from __future__ import annotations

import numpy as np
import pytest

from nnunetv2_tumorsynth.bank.overlay import overlay_entry
from nnunetv2_tumorsynth.bank.settings import SynthSettings
from nnunetv2_tumorsynth.bank.store import SynthesisBank, entry_paths
from nnunetv2_tumorsynth.synthesis.entry import Entry
from nnunetv2_tumorsynth.synthesis.mass_effect import MassEffect
from nnunetv2_tumorsynth.synthesis.shape import equivalent_radius_mm
from nnunetv2_tumorsynth.synthesis.texture import HeuristicTexture

SPACING = np.array([3.0, 1.5, 1.5])


def ball(shape, centre, radius_mm, spacing=SPACING) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
    return d2 <= radius_mm**2


def test_mass_effect_follows_hu_eq5_and_leaves_the_outside_unchanged():
    shape = (24, 48, 48)
    centre = (12, 24, 24)
    tumour = ball(shape, centre, 8.0)
    grid = np.indices(shape).astype(float)
    radial = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, SPACING))).astype(np.float32)
    labels = (radial < 14.0).astype(np.int8)  # an "organ" ball that should bulge outward
    effect = MassEffect(intensity=30.0)
    warped, warped_labels, region = effect.warp(radial, labels, tumour, SPACING)
    gamma_max = 1.3 * equivalent_radius_mm(tumour, SPACING)
    assert effect.reach_mm(tumour, SPACING) == pytest.approx(gamma_max)
    assert np.array_equal(warped[~region], radial[~region]) and np.array_equal(warped_labels[~region], labels[~region])
    gamma = radial[region]
    expected = (1 - (1 - gamma / gamma_max) ** 2 * 0.3) * gamma  # eq. 5: value found at gamma'
    assert np.abs(warped[region] - expected).max() < 0.6  # mm; linear interpolation of the distance field
    assert np.all(warped[region] <= gamma + 1e-3), "content comes from nearer the centre: it is pushed outward"
    assert warped_labels.sum() >= labels.sum()
    unchanged, *_ = MassEffect(intensity=0.0).warp(radial, labels, tumour, SPACING)
    assert np.array_equal(unchanged, radial)
    with pytest.raises(ValueError, match="eq. 5"):
        MassEffect(intensity=130.0)


class OneCase:
    def __init__(self, data, seg):
        self.data, self.seg, self.identifiers = data, seg, ["case0"]

    def load_case(self, identifier):
        return self.data, self.seg, None, {"class_locations": {2: np.argwhere(self.seg == 2)}}


def test_bank_with_mass_effect_moves_image_and_labels_together_only_in_the_region(tmp_path):
    rng = np.random.default_rng(2)
    shape = (20, 48, 48)
    organ = ball(shape, (10, 24, 24), 30.0)
    seg = organ.astype(np.int8)[None]
    data = (rng.normal(0, 1, shape).astype(np.float32) + 3 * organ)[None]
    settings = SynthSettings(texture="heuristic", size="small", seed=0, mass_effect=30.0, margin_mm=0.0)
    bank = SynthesisBank(str(tmp_path), HeuristicTexture(), settings, tuple(SPACING), organ_label=1, tumour_label=2)
    assert bank.generate(OneCase(data, seg), ["case0"], 1, epoch=0).made == 1
    entry = Entry.load(entry_paths(str(tmp_path), "case0")[0])
    assert entry.region is not None and entry.region.values.shape == entry.region.mask.shape
    data_out, seg_out, props = overlay_entry(data, seg, {"class_locations": {}}, entry, tumour_label=2)
    data_out, seg_out = np.asarray(data_out), np.asarray(seg_out)
    changed_region = np.zeros(shape, bool)
    corner = entry.region.corner
    lo, hi = np.maximum(corner, 0), np.minimum(corner + entry.region.mask.shape, shape)
    changed_region[tuple(slice(a, b) for a, b in zip(lo, hi))] = entry.region.mask[
        tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, corner))]
    outside = ~changed_region[None]
    assert np.array_equal(data_out[outside], data[outside]), "bit-exact outside the entry's region"
    assert np.array_equal(seg_out[outside], seg[outside])
    tumour = np.zeros(shape, bool)
    box = entry.box
    tumour[box] = entry.mask
    assert np.all(seg_out[0][tumour] == 2) and (seg_out[0] == 2).sum() == tumour.sum()
    assert changed_region.sum() > 1.5 * tumour.sum(), "the region reaches beyond the tumour"
    assert len(props["class_locations"][2]) == tumour.sum()
