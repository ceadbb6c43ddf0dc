"""``tumorsynth_generate``: offline synthetic datasets in the original raw geometry.

Unit level: the inverse of every supported nnU-Net normalisation, and the mapping back to the raw grid
(resampling, un-cropping, un-transposing) on a phantom whose plans resample every axis and transpose
(x first), with CT normalisation. Batched synthesis with a stub texture on a small phantom preprocessed with
hand-made plans in this process (one fill call per batch, determinism, resuming an interrupted batch,
``--replace-real``). End to end on the session phantom (anisotropic, rotated direction):
a tiny DDPM pretrained for fold 0, datasets with and without ``--include-real``, ``kill -9`` and resume,
``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` and a tiny nnU-Net trained with the written
splits, ``--replace-real``, and the error cases.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import _ROOT, TINY_PLANS, cli, log_line, run
from scipy import ndimage

from nnunetv2_tumorsynth.cli.tiny_plans import main as tiny_plans_main
from nnunetv2_tumorsynth.generate.generator import generate_dataset
from nnunetv2_tumorsynth.generate.normalisation import InverseNormalisation, inverse_normalisation
from nnunetv2_tumorsynth.generate.raw_grid import to_raw_grid
from nnunetv2_tumorsynth.generate.settings import GenerateError, GenerateSettings
from nnunetv2_tumorsynth.generate.source import GenerationSource
from nnunetv2_tumorsynth.phantom import PhantomSettings, write_phantom_dataset
from nnunetv2_tumorsynth.synthesis.shape import MIX_SIZES

TRANSPOSED_ID, FROM_TRANSPOSED_ID = 965, 966
DDPM_ID, KILLED_ID, REPLACED_ID, MIX_ID, MIX_AGAIN_ID = 961, 962, 963, 964, 967
TRANSPOSED_PLANS = "tumorsynthResampledPlans"
FAST_ID, FAST_PLANS = 950, "tumorsynthHandMadePlans"  # 951-956: datasets generated from it
DDPM_ARGS = ["--texture", "ddpm", "--steps", "20", "--size", "small", "-n", "3", "-device", "cpu", "--seed", "0",
             "--batch-size", "2"]
TUMOUR, ORGAN = 2, 1


def quiet(_message: str) -> None:
    pass


def raw_root() -> str:
    return os.environ["nnUNet_raw"]


def dataset_folder(dataset_id: int) -> str:
    found = glob.glob(os.path.join(raw_root(), f"Dataset{dataset_id:03d}_*"))
    assert len(found) == 1, found
    return found[0]


def read(path: str) -> tuple[sitk.Image, np.ndarray]:
    image = sitk.ReadImage(path)
    return image, sitk.GetArrayFromImage(image)


def check_dataset(folder: str, source_raw: str, replaced: bool = False) -> list[dict]:
    """Every generated case: source geometry, raw voxels bit-identical outside the region, labels as promised."""
    records = json.load(open(os.path.join(folder, "synthesis_records.json")))
    dataset_json = json.load(open(os.path.join(folder, "dataset.json")))
    assert dataset_json["numTraining"] == len(records) == len(os.listdir(os.path.join(folder, "imagesTr")))
    for record in records:
        name, case = record["image"], record["source_case"]
        out_image, out = read(os.path.join(folder, "imagesTr", f"{name}_0000.nii.gz"))
        out_label_image, out_label = read(os.path.join(folder, "labelsTr", f"{name}.nii.gz"))
        raw_image, raw = read(os.path.join(source_raw, "imagesTr", f"{case}_0000.nii.gz"))
        _, raw_label = read(os.path.join(source_raw, "labelsTr", f"{case}.nii.gz"))
        for image in (out_image, out_label_image):
            assert image.GetSize() == raw_image.GetSize()
            assert image.GetSpacing() == raw_image.GetSpacing()
            assert image.GetOrigin() == raw_image.GetOrigin()
            assert image.GetDirection() == raw_image.GetDirection()
        assert out.dtype == raw.dtype and out_label.dtype == raw_label.dtype
        if record["mode"] == "real":
            assert np.array_equal(out, raw) and np.array_equal(out_label, raw_label)
            continue
        if replaced:
            assert np.array_equal(out_label, raw_label), "--replace-real keeps the label"
            region = raw_label == TUMOUR
        else:
            region = out_label != raw_label
            assert np.all(out_label[region] == TUMOUR) and np.all(raw_label[region] == ORGAN), "new tumour in organ"
            spacing = np.prod(raw_image.GetSpacing())
            assert record["tumours"][0]["volume_ml"] == pytest.approx(region.sum() * spacing / 1000)
        assert region.any()
        assert np.array_equal(out[~region], raw[~region]), "outside the region the raw voxels are bit-identical"
        assert np.mean(out[region] != raw[region]) > 0.5, "inside the region the image changed"
    return records


def check_splits(folder: str, records: list[dict], source_splits: list[dict]) -> list[dict]:
    """Each case validates in the fold of its source case; train and val never share a source case."""
    splits = json.load(open(os.path.join(folder, "splits_final.json")))
    source_of = {r["image"]: r["source_case"] for r in records}
    for split in splits:
        assert set(split["train"]) | set(split["val"]) == set(source_of)
        val_sources = {source_of[n] for n in split["val"]}
        assert not val_sources & {source_of[n] for n in split["train"]}, "no source case on both sides"
        assert any(val_sources <= set(s["val"]) for s in source_splits)
    return splits


# ------------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("scheme, use_mask", [("ZScoreNormalization", False), ("ZScoreNormalization", True),
                                              ("CTNormalization", False), ("NoNormalization", False),
                                              ("RescaleTo01Normalization", False)])
def test_inverse_normalisation_undoes_nnunet(scheme, use_mask):
    import nnunetv2.preprocessing.normalization.default_normalization_schemes as schemes

    rng = np.random.default_rng(0)
    image = rng.normal(300.0, 80.0, (6, 10, 12)).astype(np.float32)
    seg = np.zeros(image.shape, np.int16)
    seg[:, :2] = -1  # outside the non-zero region
    properties = {"mean": 310.0, "std": 70.0, "percentile_00_5": 120.0, "percentile_99_5": 480.0}
    inverse = inverse_normalisation(image, seg, scheme, use_mask, properties)  # also checks against nnU-Net
    normalised = getattr(schemes, scheme)(use_mask_for_norm=use_mask, intensityproperties=properties).run(
        image.copy(), seg)
    inside = seg >= 0 if use_mask else np.ones(image.shape, bool)
    expected = np.clip(image, 120.0, 480.0) if scheme == "CTNormalization" else image
    np.testing.assert_allclose(inverse(normalised[inside]), expected[inside], rtol=1e-5, atol=1e-3)


def test_unknown_normalisation_is_refused():
    image = np.ones((2, 3, 4), np.float32)
    with pytest.raises(GenerateError, match="cannot be inverted.*ZScoreNormalization"):
        inverse_normalisation(image, np.zeros(image.shape, np.int16), "MyOwnNormalization", False, {})
    assert InverseNormalisation("CTNormalization", 2.0, 10.0, (0.0, 20.0))(np.array([-10.0, 1.0, 10.0])).tolist() == \
        [0.0, 12.0, 20.0]


# ------------------------------------------------------- resampled, transposed, CT-normalised phantom


@pytest.fixture(scope="module")
def transposed_source(phantom_dataset):
    """Dataset965: phantom at 1.5 x 1.5 x 3.0 mm (z, y, x) preprocessed in this process with plans that put x
    first (transpose [2, 0, 1]), resample every axis (to 4.0 x 2.0 x 1.25 mm) and normalise like CT."""
    name = f"Dataset{TRANSPOSED_ID}_PhantomTransposed"
    raw = write_phantom_dataset(raw_root(), TRANSPOSED_ID, "PhantomTransposed", num_train=5, seed=3,
                                settings=PhantomSettings(shape=(40, 48, 24), spacing=(1.5, 1.5, 3.0)), overwrite=True)
    cases = [f"phantomtr_{i:03d}" for i in range(5)]
    foreground = np.concatenate([read(os.path.join(raw, "imagesTr", f"{c}_0000.nii.gz"))[1][
        read(os.path.join(raw, "labelsTr", f"{c}.nii.gz"))[1] > 0] for c in cases])
    plans = json.load(open(os.path.join(phantom_dataset.preprocessed, f"{TINY_PLANS}.json")))
    plans.update(dataset_name=name, plans_name=TRANSPOSED_PLANS, transpose_forward=[2, 0, 1],
                 transpose_backward=[1, 2, 0], original_median_spacing_after_transp=[3.0, 1.5, 1.5])
    plans["foreground_intensity_properties_per_channel"] = {"0": {
        "mean": float(foreground.mean()), "std": float(foreground.std()), "min": float(foreground.min()),
        "max": float(foreground.max()), "median": float(np.median(foreground)),
        "percentile_00_5": float(np.percentile(foreground, 0.5)),
        "percentile_99_5": float(np.percentile(foreground, 99.5))}}
    plans["configurations"] = {"3d_fullres": {**plans["configurations"]["3d_fullres"],
                                              "data_identifier": f"{TRANSPOSED_PLANS}_3d_fullres",
                                              "spacing": [4.0, 2.0, 1.25],
                                              "normalization_schemes": ["CTNormalization"]}}
    preprocess_here(name, raw, plans, cases)
    return name, raw


def preprocess_here(name: str, raw: str, plans: dict, cases: list[str]) -> None:
    """Write ``plans`` and dataset.json into ``$nnUNet_preprocessed/<name>`` and preprocess ``cases`` of the raw
    folder for the plans' 3d_fullres configuration with nnU-Net's DefaultPreprocessor in this process."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    preprocessed = os.path.join(os.environ["nnUNet_preprocessed"], name)
    data_folder = os.path.join(preprocessed, plans["configurations"]["3d_fullres"]["data_identifier"])
    os.makedirs(data_folder, exist_ok=True)
    json.dump(plans, open(os.path.join(preprocessed, f"{plans['plans_name']}.json"), "w"))
    dataset_json = json.load(open(os.path.join(raw, "dataset.json")))
    json.dump(dataset_json, open(os.path.join(preprocessed, "dataset.json"), "w"))
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration("3d_fullres")
    for case in cases:
        DefaultPreprocessor(verbose=False).run_case_save(
            os.path.join(data_folder, case), [os.path.join(raw, "imagesTr", f"{case}_0000.nii.gz")],
            os.path.join(raw, "labelsTr", f"{case}.nii.gz"), plans_manager, configuration, dataset_json)


def test_real_tumours_map_back_onto_themselves(transposed_source):
    """The preprocessed image and tumour label, mapped back, land on the raw ones (geometry and intensities)."""
    name, _ = transposed_source
    source = GenerationSource(GenerateSettings(dataset=name, as_dataset=0, plans=TRANSPOSED_PLANS, fold="all"))
    case = source.load("phantomtr_000")
    assert case.data.shape[1:] != case.raw_array.shape, "the plans resample and transpose"
    values, region = to_raw_grid(case.data[0], case.seg[0] == TUMOUR, case.properties, source.plans_manager,
                                 source.configuration_manager)
    raw_tumour = case.raw_label_array == TUMOUR
    dice = 2 * (region & raw_tumour).sum() / (region.sum() + raw_tumour.sum())
    assert dice > 0.75, dice  # small tumours, 3.0 -> 4.0 mm and back along x
    inner = ndimage.binary_erosion(case.raw_label_array > 0, iterations=2)
    back = case.inverse(values[inner])
    low, high = case.inverse.clip
    expected = np.clip(case.raw_array[inner].astype(float), low, high)
    assert np.corrcoef(back, expected)[0, 1] > 0.75
    assert abs(back.mean() - expected.mean()) < 0.15 * expected.std(), "intensity scale restored"


def test_generate_on_resampled_transposed_data(transposed_source):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    name, raw = transposed_source
    folder = generate_dataset(GenerateSettings(
        dataset=name, as_dataset=FROM_TRANSPOSED_ID, plans=TRANSPOSED_PLANS, texture="heuristic", num_images=3,
        size="small", seed=1), progress=False, log=quiet)
    records = check_dataset(folder, raw)
    assert len(records) == 3 and all(r["mode"] == "synthetic" for r in records)
    clip = json.load(open(os.path.join(os.environ["nnUNet_preprocessed"], name, f"{TRANSPOSED_PLANS}.json")))[
        "foreground_intensity_properties_per_channel"]["0"]
    for record in records:
        itk, image = read(os.path.join(folder, "imagesTr", f"{record['image']}_0000.nii.gz"))
        label = read(os.path.join(folder, "labelsTr", f"{record['image']}.nii.gz"))[1]
        new = label != read(os.path.join(raw, "labelsTr", f"{record['source_case']}.nii.gz"))[1]
        assert record["tumours"][0]["size"] in ("small", "tiny")
        index = np.argwhere(new).mean(axis=0)[::-1]  # (x, y, z) index for ITK
        np.testing.assert_allclose(record["tumours"][0]["centre_mm"],
                                   itk.TransformContinuousIndexToPhysicalPoint(index.tolist()), atol=1e-6)
        # CT normalisation: mapped-back values lie in the plans' clip range
        assert clip["percentile_00_5"] - 1e-3 <= image[new].min() and image[new].max() <= clip["percentile_99_5"] + 1e-3
    verify_dataset_integrity(folder, num_processes=1)
    # tumorsynth_preview / _turing / _realism read what was written (records, and the settings' source folder)
    from nnunetv2_tumorsynth.inspection import preview

    assert preview.input_kind(folder) == "generated"
    items = list(preview.generated_items(folder))
    assert {(i.case, i.source_case) for i in items} == {(r["image"], r["source_case"]) for r in records}
    assert all(i.mask.any() and i.before is not None for i in items)


# ------------------------------------------------------- batched synthesis, stub texture, no nnU-Net planning


class RecordingTexture:
    """Stands in for the DDPM texture (fixed context crop, ``batch_size`` crops per network evaluation): fills each
    mask with N(3, 1) draws of ``rng`` and records how many crops every fill call got."""

    crop_size = (16, 32, 32)

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.calls: list[int] = []

    def fill(self, images, masks, organs, rng, spacing=None, draws=None):
        self.calls.append(len(images))
        out = images.copy()
        out[masks] = rng.normal(3.0, 1.0, int(masks.sum())).astype(out.dtype)
        return out


@pytest.fixture(scope="module")
def fast_source():
    """Dataset950: a small phantom (5 training cases, 24 x 48 x 48 voxels) preprocessed in this process with
    hand-made plans that neither transpose nor resample (no nnU-Net planning, so not end to end)."""
    from test_boxes import make_plans

    name, spacing = f"Dataset{FAST_ID}_PhantomFast", (3.0, 1.5, 1.5)
    raw = write_phantom_dataset(raw_root(), FAST_ID, "PhantomFast", num_train=5, seed=4,
                                settings=PhantomSettings(shape=(24, 48, 48), spacing=spacing), overwrite=True)
    plans = make_plans(transpose=(0, 1, 2), spacing=spacing)
    plans.update(dataset_name=name, plans_name=FAST_PLANS)
    plans["configurations"]["3d_fullres"]["data_identifier"] = f"{FAST_PLANS}_3d_fullres"
    preprocess_here(name, raw, plans, [f"phantomtr_{i:03d}" for i in range(5)])
    return name, raw


@pytest.fixture
def stub_textures(monkeypatch) -> list[RecordingTexture]:
    """Every generator made in the test gets a ``RecordingTexture`` of its settings' batch size (appended here)."""
    from nnunetv2_tumorsynth.generate import generator

    made: list[RecordingTexture] = []

    def load_stub(settings, dataset, fold, device, checkpoint=None, batch_size=4):
        made.append(RecordingTexture(batch_size))
        return made[-1], None

    monkeypatch.setattr(generator, "load_texture", load_stub)
    return made


def fast_settings(name: str, as_dataset: int, **overrides) -> GenerateSettings:
    return GenerateSettings(**{"dataset": name, "as_dataset": as_dataset, "plans": FAST_PLANS, "texture": "heuristic",
                               "size": "small", "num_images": 5, "seed": 3, "batch_size": 2, **overrides})


def same_images(folder_a: str, folder_b: str, name: str) -> tuple[bool, bool]:
    """(images equal, labels equal) of case ``name`` in two generated datasets."""
    return tuple(np.array_equal(read(os.path.join(folder_a, sub, name + ending))[1],
                                read(os.path.join(folder_b, sub, name + ending))[1])
                 for sub, ending in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")))


def test_batched_generation_fills_each_batch_in_one_call(fast_source, stub_textures):
    name, raw = fast_source
    folder = generate_dataset(fast_settings(name, FAST_ID + 1), progress=False, log=quiet)
    assert stub_textures[-1].calls == [2, 2, 1], "5 images in batches of 2: one fill call per batch"
    records = check_dataset(folder, raw)  # bit-identical to the source outside the new tumours
    assert [r["batch"] for r in records] == [[0, 1], [0, 1], [2, 3], [2, 3], [4]]
    assert [r["fill_rng"] for r in records] == [f"numpy.random.default_rng([3, {i}])" for i in (0, 0, 2, 2, 4)]

    again = generate_dataset(fast_settings(name, FAST_ID + 2), progress=False, log=quiet)
    assert all(same_images(folder, again, r["image"]) == (True, True) for r in records), "same seed and batch size"

    single = generate_dataset(fast_settings(name, FAST_ID + 3, batch_size=1), progress=False, log=quiet)
    assert stub_textures[-1].calls == [1] * 5
    assert [r["image"] for r in check_dataset(single, raw)] == [r["image"] for r in records]
    # each image is planned from its own generator whatever the batch: same tumour masks; the fill's draws come
    # from the batch's first image's generator: image 0 (first in its batch either way) is identical, image 1 not
    assert all(same_images(folder, single, r["image"])[1] for r in records)
    assert same_images(folder, single, records[0]["image"])[0]
    assert not same_images(folder, single, records[1]["image"])[0]


def test_batched_generation_resumes_an_interrupted_batch(fast_source, stub_textures, monkeypatch):
    """Interrupted after the first image of a batch of 3: the re-run makes that batch whole again (same draws),
    writes only its unfinished images, and the dataset equals an uninterrupted run's."""
    from nnunetv2_tumorsynth.generate import generator

    name, raw = fast_source
    settings = fast_settings(name, FAST_ID + 4, batch_size=3)
    write_json = generator.write_json_atomic
    records_written = []

    def interrupt_at_second_record(data, path):
        if os.path.basename(os.path.dirname(path)) == "records":
            if records_written:
                raise KeyboardInterrupt  # as Ctrl-C after image 0 of batch [0, 1, 2] was written
            records_written.append(path)
        write_json(data, path)

    monkeypatch.setattr(generator, "write_json_atomic", interrupt_at_second_record)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(settings, progress=False, log=quiet)
    monkeypatch.setattr(generator, "write_json_atomic", write_json)
    staging = os.path.join(raw_root(), f".Dataset{FAST_ID + 4}_PhantomFastSynth.partial")
    assert [os.path.basename(p) for p in glob.glob(os.path.join(staging, "records", "*.json"))] == ["0000.json"]
    assert not glob.glob(os.path.join(raw_root(), f"Dataset{FAST_ID + 4}_*")), "no partial dataset is visible"
    first_image = json.load(open(os.path.join(staging, "records", "0000.json")))["image"] + "_0000.nii.gz"
    written_at = os.stat(os.path.join(staging, "imagesTr", first_image)).st_mtime_ns

    lines: list[str] = []
    resumed = generate_dataset(settings, progress=False, log=lines.append)
    assert stub_textures[-1].calls == [3, 2], "batch [0, 1, 2] made whole again, then [3, 4]"
    assert log_line(lines, "resuming") and log_line(lines, "1 finished image", "not rewritten")
    assert log_line(lines, "made 4 images")
    uninterrupted = generate_dataset(fast_settings(name, FAST_ID + 5, batch_size=3), progress=False, log=quiet)
    records = check_dataset(resumed, raw)
    assert len(records) == 5
    assert all(same_images(resumed, uninterrupted, r["image"]) == (True, True) for r in records)
    assert os.stat(os.path.join(resumed, "imagesTr", first_image)).st_mtime_ns == written_at, \
        "the finished image was not rewritten"


def test_batched_replace_real(fast_source, stub_textures):
    name, raw = fast_source
    folder = generate_dataset(fast_settings(name, FAST_ID + 6, replace_real=True, num_images=None),
                              progress=False, log=quiet)
    records = check_dataset(folder, raw, replaced=True)
    replaced = [sum(t["replaced"] for t in r["tumours"]) for r in records]
    assert len(stub_textures[-1].calls) == (len(records) + 1) // 2, "one fill call per batch of 2 images"
    assert sum(stub_textures[-1].calls) == sum(replaced), "every real tumour of a batch in its one call"


# ------------------------------------------------------------------------- in-process, session phantom


def test_mix_sizes_elastic_reproducible_and_no_real_cases(phantom_dataset):
    settings = dict(dataset=phantom_dataset.dataset_id, plans=TINY_PLANS, texture="heuristic", num_images=3,
                    size="mix", deformation="elastic", seed=5)
    first = generate_dataset(GenerateSettings(as_dataset=MIX_ID, **settings), progress=False, log=quiet)
    again = generate_dataset(GenerateSettings(as_dataset=MIX_AGAIN_ID, **settings), progress=False, log=quiet)
    records = check_dataset(first, phantom_dataset.raw)
    assert all(r["tumours"][0]["size"] in MIX_SIZES and r["deformation"] == "elastic" for r in records)
    assert [r["image"] for r in records] == [r["image"] for r in json.load(
        open(os.path.join(again, "synthesis_records.json")))]
    for record in records:
        for sub, ending in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):
            a = read(os.path.join(first, sub, record["image"] + ending))[1]
            b = read(os.path.join(again, sub, record["image"] + ending))[1]
            assert np.array_equal(a, b), "same seed, same images"
    rows = list(csv.DictReader(open(os.path.join(first, "synthesis_records.csv"))))
    assert [row["image"] for row in rows] == [r["image"] for r in records]
    assert all(float(row["volume_ml"]) > 0 and row["texture"] == "heuristic" and row["polarity"] == "either"
               for row in rows)
    split = json.load(open(os.path.join(phantom_dataset.preprocessed, "splits_final.json")))
    assert not {r["source_case"] for r in records} & set(split[0]["val"]), "fold 0's validation cases never read"
    check_splits(first, records, split)
    assert not glob.glob(os.path.join(raw_root(), f".Dataset{MIX_ID}_*")), "no staging or temporary folder left"


# ----------------------------------------------------------------------------------- end to end (CLI)


@pytest.fixture(scope="module")
def ddpm_env(phantom_dataset):
    """A tiny DDPM pretrained for fold 0 in a private nnUNet_results (found by tumorsynth_generate)."""
    env = dict(phantom_dataset.env, OMP_NUM_THREADS="1", nnUNet_results=os.path.join(_ROOT, "results_generate"))
    os.makedirs(env["nnUNet_results"], exist_ok=True)
    run([cli("tumorsynth_pretrain_ddpm"), "-d", str(phantom_dataset.dataset_id), "-c", "3d_fullres", "-f", "0",
         "-p", TINY_PLANS, "--preset", "tiny", "--epochs", "1", "--crop", "16", "32", "32", "-device", "cpu"],
        env=env)
    return env


def generate_cmd(ds, dataset_id: int, *extra: str) -> list[str]:
    return [cli("tumorsynth_generate"), "-d", str(ds.dataset_id), "-c", "3d_fullres", "-f", "0", "-p", TINY_PLANS,
            "--as-dataset", str(dataset_id), "--no-progress", *extra]


@pytest.fixture(scope="module")
def ddpm_dataset(phantom_dataset, ddpm_env):
    result = run(generate_cmd(phantom_dataset, DDPM_ID, *DDPM_ARGS, "--include-real"), env=ddpm_env)
    assert "wrote" in result.stdout
    return dataset_folder(DDPM_ID)


def test_ddpm_dataset_geometry_records_and_splits(ddpm_dataset, phantom_dataset):
    records = check_dataset(ddpm_dataset, phantom_dataset.raw)
    split = json.load(open(os.path.join(phantom_dataset.preprocessed, "splits_final.json")))
    real = sorted(r["image"] for r in records if r["mode"] == "real")
    assert real == sorted(split[0]["train"]), "--include-real copies exactly fold 0's training cases"
    synthetic = [r for r in records if r["mode"] == "synthetic"]
    assert len(synthetic) == 3 and [r["index"] for r in synthetic] == [0, 1, 2]
    checkpoint = synthetic[0]["checkpoint"]
    assert checkpoint.endswith(os.path.join("fold_0", "checkpoint_best.pth")) or checkpoint.endswith("latest.pth")
    import hashlib

    assert synthetic[0]["checkpoint_sha256"] == hashlib.sha256(open(checkpoint, "rb").read()).hexdigest()
    assert all(r["texture"] == "ddpm" and r["steps"] == 20 and r["sampler"] == "ddim" for r in synthetic)
    splits = check_splits(ddpm_dataset, records, split)
    assert len(splits) == 4, "the four source folds whose validation cases are fold 0's training cases"
    assert os.path.isfile(os.path.join(ddpm_dataset, "tumorsynth_preview.png"))


@pytest.mark.e2e  # runs the CLI itself
def test_train_tiny_nnunet_with_written_splits(ddpm_dataset, ddpm_env):
    """plan_and_preprocess (verify_dataset_integrity) copies the splits; nnU-Net trains and validates with them."""
    name = os.path.basename(ddpm_dataset)
    run([cli("nnUNetv2_plan_and_preprocess"), "-d", str(DDPM_ID), "-c", "3d_fullres", "--verify_dataset_integrity",
         "-np", "1"], env=ddpm_env)
    splits = json.load(open(os.path.join(ddpm_dataset, "splits_final.json")))
    preprocessed = os.path.join(os.environ["nnUNet_preprocessed"], name)
    assert json.load(open(os.path.join(preprocessed, "splits_final.json"))) == splits
    tiny_plans_main(["-d", str(DDPM_ID)])  # in this process: one start-up less
    run([cli("nnUNetv2_train"), str(DDPM_ID), "3d_fullres", "0", "-p", TINY_PLANS, "-tr", "nnUNetTrainerTiny",
         "-device", "cpu"], env=ddpm_env)
    fold = os.path.join(ddpm_env["nnUNet_results"], name, f"nnUNetTrainerTiny__{TINY_PLANS}__3d_fullres", "fold_0")
    log = open(glob.glob(os.path.join(fold, "training_log_*.txt"))[0]).read()
    assert log_line(log, f"{len(splits[0]['train'])} training", f"{len(splits[0]['val'])} validation"), \
        "nnU-Net used the written split"
    validated = sorted(os.path.basename(p)[: -len(".nii.gz")] for p in glob.glob(os.path.join(fold, "validation",
                                                                                             "*.nii.gz")))
    assert validated == sorted(splits[0]["val"])


@pytest.mark.e2e  # runs the CLI itself
def test_kill_and_resume(ddpm_dataset, phantom_dataset, ddpm_env):
    """kill -9 after the first image: nothing visible in nnUNet_raw; a re-run finishes with the same images (batches
    of 2: a kill inside the first batch makes the re-run fill that batch whole again)."""
    cmd = generate_cmd(phantom_dataset, KILLED_ID, *DDPM_ARGS)
    staging = os.path.join(raw_root(), f".Dataset{KILLED_ID}_PhantomSynth.partial")
    process = subprocess.Popen(cmd, env=ddpm_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=_ROOT)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and process.poll() is None:
            if glob.glob(os.path.join(staging, "records", "*.json")):
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    finished = glob.glob(os.path.join(staging, "records", "*.json"))
    assert 1 <= len(finished) < 3
    assert not glob.glob(os.path.join(raw_root(), f"Dataset{KILLED_ID}_*")), "no partial dataset is visible"
    result = run(cmd, env=ddpm_env)
    assert "resuming" in result.stdout
    folder = dataset_folder(KILLED_ID)
    assert not os.path.exists(staging)
    records = check_dataset(folder, phantom_dataset.raw)
    assert len(records) == 3
    for record in records:
        for sub, ending in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):
            resumed = read(os.path.join(folder, sub, record["image"] + ending))[1]
            uninterrupted = read(os.path.join(ddpm_dataset, sub, record["image"] + ending))[1]
            np.testing.assert_allclose(resumed, uninterrupted, rtol=1e-5, atol=1e-4)


@pytest.mark.e2e  # runs the CLI itself
def test_replace_real(phantom_dataset):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    ds = phantom_dataset
    run(generate_cmd(ds, REPLACED_ID, "--replace-real", "--include-real", "--texture", "heuristic", "--seed", "2"),
        env=ds.env)
    folder = dataset_folder(REPLACED_ID)
    assert folder.endswith("PhantomReplaced")
    records = check_dataset(folder, ds.raw, replaced=True)
    replaced = [r for r in records if r["mode"] == "replaced"]
    split = json.load(open(os.path.join(ds.preprocessed, "splits_final.json")))[0]
    with_tumour = [c for c in split["train"] if (read(os.path.join(ds.raw, "labelsTr", f"{c}.nii.gz"))[1]
                                                 == TUMOUR).any()]
    assert sorted(r["source_case"] for r in replaced) == sorted(with_tumour), "one image per case with tumours"
    for record in replaced:
        assert record["tumours"] and all(t["replaced"] and t["size"] == "real mask" for t in record["tumours"])
    verify_dataset_integrity(folder, num_processes=1)


def test_errors_name_what_to_do(ddpm_dataset, phantom_dataset, capsys, monkeypatch):
    from nnunetv2_tumorsynth.cli.generate import main

    monkeypatch.delenv("TUMORSYNTH_DDPM_CHECKPOINT", raising=False)
    ds = phantom_dataset
    with pytest.raises(SystemExit) as exit_info:  # the CLI in this process: argparse, one library call, message
        main(["-d", str(ds.dataset_id), "-p", TINY_PLANS, "--as-dataset", str(DDPM_ID), "--texture", "heuristic",
              "-n", "1", "--no-progress"])
    message = capsys.readouterr().err
    assert exit_info.value.code == 1 and "already exists" in message and "--overwrite" in message
    assert not glob.glob(os.path.join(raw_root(), f".Dataset{DDPM_ID}_*")), "nothing started"
    # fold 3: no diffusion model was trained for it (this process's nnUNet_results holds none)
    with pytest.raises(FileNotFoundError, match="tumorsynth_pretrain_ddpm -d Dataset990_Phantom -c 3d_fullres -f 3"):
        generate_dataset(GenerateSettings(dataset=ds.dataset_id, as_dataset=968, fold=3, plans=TINY_PLANS,
                                          device="cpu", num_images=1), progress=False, log=quiet)
    assert not glob.glob(os.path.join(raw_root(), "*968_*"))
    with pytest.raises(GenerateError, match=r"heuristic_polarity.*either.*'dark'"):
        generate_dataset(GenerateSettings(dataset=ds.dataset_id, as_dataset=969, plans=TINY_PLANS,
                                          texture="heuristic", heuristic_polarity="dark"), progress=False, log=quiet)
    with pytest.raises(GenerateError, match="is the source dataset"):
        generate_dataset(GenerateSettings(dataset=ds.dataset_id, as_dataset=ds.dataset_id, plans=TINY_PLANS,
                                          texture="heuristic"), progress=False, log=quiet)
