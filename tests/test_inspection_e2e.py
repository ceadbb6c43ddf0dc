"""Looking at synthetic tumours end to end on the phantom, through the real CLIs.

``tumorsynth_generate --replace-real`` (heuristic texture) -> ``tumorsynth_preview`` -> ``tumorsynth_turing
export`` -> two made-up reader sheets -> ``tumorsynth_turing score`` (figures checked by hand) ->
``tumorsynth_realism``; then the same realism statistics for the DDPM backend (a tiny DDPM trained for one
epoch: a pipeline check, not a quality figure).
"""

from __future__ import annotations

import csv
import json
import os

import pytest
from conftest import _ROOT, cli, run

pytestmark = pytest.mark.e2e

REPLACED_HEURISTIC_ID, REPLACED_DDPM_ID = 981, 982


def generate_replaced(ds, dataset_id: int, *extra: str, env: dict | None = None) -> str:
    run([cli("tumorsynth_generate"), "-d", str(ds.dataset_id), "-c", "3d_fullres", "-f", "0", "-p", ds.plans,
         "--as-dataset", str(dataset_id), "--replace-real", "--seed", "1", "-device", "cpu", "--no-progress", *extra],
        env=env or ds.env)
    raw = os.environ["nnUNet_raw"]
    (name,) = [d for d in os.listdir(raw) if d.startswith(f"Dataset{dataset_id}_")]
    return os.path.join(raw, name)


@pytest.fixture(scope="module")
def replaced_heuristic(phantom_dataset) -> str:
    return generate_replaced(phantom_dataset, REPLACED_HEURISTIC_ID, "--texture", "heuristic")


def write_sheet(path, answers: dict[str, str]) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "answer"])
        writer.writerows(sorted(answers.items()))
    return str(path)


def realism_rows(folder) -> list[dict]:
    with open(os.path.join(folder, "realism_features.csv")) as f:
        return list(csv.DictReader(f))


def test_preview_turing_and_realism(phantom_dataset, replaced_heuristic, tmp_path):
    ds = phantom_dataset
    records = json.load(open(os.path.join(replaced_heuristic, "synthesis_records.json")))
    replaced = [r for r in records if r["mode"] == "replaced"]
    n_tumours = sum(len(r["tumours"]) for r in replaced)

    # previews: one row per replaced tumour, 3 per page, file names with case and entry
    out = tmp_path / "previews"
    run([cli("tumorsynth_preview"), "-i", str(REPLACED_HEURISTIC_ID), "-o", str(out), "--per-page", "3",
         "--no-progress"], env=ds.env)
    pages = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert len(pages) == -(-n_tumours // 3)
    assert pages[0].startswith(f"page001__{replaced[0]['image']}-t1")
    with open(out / "preview_index.csv") as f:
        assert len(list(csv.DictReader(f))) == n_tumours

    # Turing export: the same K cases once real, once with their tumours replaced, key elsewhere
    readers, key_dir = tmp_path / "readers", tmp_path / "key"
    run([cli("tumorsynth_turing"), "export", "--real", str(ds.dataset_id), "--replaced", str(REPLACED_HEURISTIC_ID),
         "-o", str(readers), "--key-dir", str(key_dir), "--seed", "5", "--crop-margin-mm", "10"], env=ds.env)
    key = json.load(open(key_dir / "turing_key.json"))
    k = key["k"]
    assert k == len(replaced) == 4, "fold 0 of the phantom has four training cases with tumours"
    assert sorted(os.listdir(readers / "volumes")) == [f"turing_{i:03d}.nii.gz" for i in range(1, 2 * k + 1)]
    assert not os.path.exists(readers / "turing_key.json")

    # two made-up readers: A right everywhere except one synthetic volume marked unsure; B says real to all
    truth = {item["id"]: item["truth"] for item in key["items"]}
    unsure = sorted(v for v, t in truth.items() if t == "synthetic")[0]
    sheet_a = write_sheet(tmp_path / "reader_A.csv", {v: "unsure" if v == unsure else t for v, t in truth.items()})
    sheet_b = write_sheet(tmp_path / "reader_B.csv", {v: "real" for v in truth})
    scores = tmp_path / "scores"
    result = run([cli("tumorsynth_turing"), "score", "--key", str(key_dir), "--sheets", sheet_a, sheet_b,
                  "-o", str(scores)], env=ds.env)
    assert "| reader_A | 75.0 | 100.0 | 87.5 | 1 | 100.0 | 100.0 | 100.0 |" in result.stdout
    scored = json.load(open(scores / "turing_scores.json"))
    a, b = scored["readers"]["reader_A"], scored["readers"]["reader_B"]
    assert (a["sensitivity"], a["specificity"], a["accuracy"]) == pytest.approx((3 / 4, 1, 7 / 8))
    assert (b["sensitivity"], b["specificity"], b["accuracy"]) == pytest.approx((0, 1, 1 / 2))
    # by hand: the 4 real volumes agree (P_i = 1), the 4 synthetic ones do not (P_i = 0): P = 1/2; answers
    # real 4 + 8, synthetic 3, unsure 1 of 16: P_e = (144 + 9 + 1) / 256; kappa = (128 - 154) / (256 - 154)
    assert scored["fleiss_kappa"] == pytest.approx(-26 / 102)
    assert os.path.isfile(scores / "turing_scores.md")

    # realism: the synthetic tumours fill the real masks of the replaced cases
    report_dir = tmp_path / "realism"
    run([cli("tumorsynth_realism"), "-s", replaced_heuristic, "-o", str(report_dir), "--no-progress"], env=ds.env)
    report = json.load(open(report_dir / "realism.json"))
    assert report["n_synthetic"] == n_tumours and report["real"] == ds.name
    rows = realism_rows(report_dir)
    real = {(r["case"], round(float(r["volume_ml"]), 6)) for r in rows if r["kind"] == "real"}
    synthetic = [(r["source_case"], round(float(r["volume_ml"]), 6)) for r in rows if r["kind"] == "synthetic"]
    assert set(synthetic) <= real, "same masks, same volumes"
    assert os.path.getsize(report_dir / "realism_histograms.png") > 10_000
    features = {c["feature"]: c for c in report["comparison"]}
    assert 0 <= features["contrast_sd"]["ks_statistic"] <= 1


def tiny_ddpm_checkpoint(ds) -> str:
    """A tiny DDPM for fold 0 (one epoch, crop 16 x 32 x 32): test_generate's when it already made one in this
    session (same settings), else one trained here in a private nnUNet_results."""
    for results in ("results_generate", "results_looking"):
        folder = os.path.join(_ROOT, results, ds.name, f"tumorsynth_ddpm__{ds.plans}__3d_fullres", "fold_0")
        for name in ("checkpoint_best.pth", "checkpoint_latest.pth"):
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    env = dict(ds.env, OMP_NUM_THREADS="1", nnUNet_results=os.path.join(_ROOT, "results_looking"))
    run([cli("tumorsynth_pretrain_ddpm"), "-d", str(ds.dataset_id), "-c", "3d_fullres", "-f", "0", "-p", ds.plans,
         "--preset", "tiny", "--epochs", "1", "--crop", "16", "32", "32", "-device", "cpu"], env=env)
    return tiny_ddpm_checkpoint(ds)


def test_realism_of_the_ddpm_backend(phantom_dataset, tmp_path):
    """A tiny DDPM (one epoch) replaces the real tumours; realism statistics run on the result."""
    ds = phantom_dataset
    checkpoint = tiny_ddpm_checkpoint(ds)
    folder = generate_replaced(ds, REPLACED_DDPM_ID, "--texture", "ddpm", "--steps", "5", "--checkpoint", checkpoint,
                               env=dict(ds.env, OMP_NUM_THREADS="1"))
    out = tmp_path / "realism_ddpm"
    result = run([cli("tumorsynth_realism"), "-s", folder, "-o", str(out), "--no-progress"], env=ds.env)
    assert "mean KS statistic" in result.stdout
    report = json.load(open(out / "realism.json"))
    assert report["n_synthetic"] >= 1 and any("ddpm" in note for note in report["notes"])
