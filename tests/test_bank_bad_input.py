"""Broken files around training: unreadable bank entries, corrupt diffusion checkpoints, bad settings files.

Each is a clear error that names the file (or, for a bank entry, a warning naming it while training goes on),
never a raw traceback or a dead data-loader worker.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from nnunetv2_tumorsynth.bank.overlay import SyntheticTumourDataset
from nnunetv2_tumorsynth.bank.settings import SynthSettings
from nnunetv2_tumorsynth.bank.store import SynthesisBank, entry_paths
from nnunetv2_tumorsynth.ddpm import build_model, load_checkpoint, make_metadata, save_checkpoint
from nnunetv2_tumorsynth.phantom import PhantomSettings, make_phantom_case
from nnunetv2_tumorsynth.synthesis.texture import HeuristicTexture, make_texture

SPACING = (3.0, 1.5, 1.5)


class OneCase:
    identifiers = ["case0"]

    def __init__(self):
        image, label = make_phantom_case(np.random.default_rng(0), PhantomSettings(), True)
        self.data = ((image - image.mean()) / image.std())[None].astype(np.float32)
        self.seg = label[None].astype(np.int8)

    def load_case(self, identifier):
        return self.data, self.seg, None, {"class_locations": {2: np.argwhere(self.seg == 2)}}


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_unreadable_bank_entry_is_set_aside_and_training_goes_on(tmp_path, damage):
    case = OneCase()
    settings = SynthSettings(texture="heuristic", size="small", seed=0)
    SynthesisBank(str(tmp_path), HeuristicTexture(), settings, SPACING, 1, 2).generate(case, ["case0"], 1, 0)
    path = entry_paths(str(tmp_path), "case0")[0]
    content = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2] if damage == "truncated" else b"")
    wrapped = SyntheticTumourDataset(case, str(tmp_path), probability=1.0, tumour_label=2)
    with pytest.warns(UserWarning, match=os.path.basename(path)):
        data, seg, _, _ = wrapped.load_case("case0")
    assert data is case.data and seg is case.seg, "the real case is used"
    assert entry_paths(str(tmp_path), "case0") == [], "the entry is moved aside"
    assert os.listdir(tmp_path / "unreadable") == [f"case0__{os.path.basename(path)}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrapped.load_case("case0")  # nothing left to warn about


def test_corrupt_checkpoint_is_an_error_naming_the_file(tmp_path):
    model = build_model("tiny")
    meta = make_metadata(model, crop_size_vox=(16, 32, 32), spacing_mm=SPACING,
                         normalisation={"scheme": "ZScoreNormalization"})
    path = str(save_checkpoint(tmp_path / "checkpoint_best.pth", model, meta))
    load_checkpoint(path)
    content = open(path, "rb").read()
    for damaged in (content[: len(content) // 2], content[:64], b""):
        with open(path, "wb") as f:
            f.write(damaged)
        with pytest.raises(ValueError, match=f"{path}.*(truncated|corrupt)"):
            make_texture("ddpm", checkpoint=path)  # what the trainers and tumorsynth_generate load


def test_settings_file_is_checked_when_read(tmp_path, monkeypatch):
    from nnunetv2_tumorsynth.bank.settings import resolve_settings

    path = tmp_path / "settings.json"
    monkeypatch.setenv("TUMORSYNTH_SETTINGS", str(path))
    path.write_text("{probability: 1}")
    with pytest.raises(ValueError, match=f"TUMORSYNTH_SETTINGS={path}.*cannot read"):
        resolve_settings(SynthSettings())
    for bad, name in (({"size": "huge"}, "size"), ({"probability": 7}, "probability"),
                      ({"texture": "paint"}, "texture"), ({"min_inside_fraction": 0}, "min_inside_fraction")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=f"{path}.*'{name}'"):
            resolve_settings(SynthSettings())
    path.write_text(json.dumps({"size": "small", "probability": 1.0}))
    assert resolve_settings(SynthSettings()).size == "small"
