"""The examples (``examples/``) on phantom data shaped like the real releases, so they cannot rot.

- ``convert_atlas.py`` on a small fake ATLAS release (``imagesTr/im<i>.nii.gz``, ``labelsTr/lb<i>.nii.gz``,
  ``imagesTs``/``labelsTs``): the nnU-Net dataset (checked by nnU-Net's own ``verify_dataset_integrity``), the
  split file, byte-identical copies, the untouched source, and every refusal (missing label or image, label
  value outside {0, 1, 2}, geometry mismatch, existing dataset id);
- ``check_lld_mmri.py`` on a fake LLD-MMRI release (``images/<patient>/<study>/<series>.nii.gz``,
  ``labels/Annotation.json`` with categories, phases and DICOM spacing): selection by phase and category,
  missing image, JSON vs header spacing, boxes outside the image;
- ``paper_pipeline.sh``: the cheap steps really run (conversion, LLD-MMRI reading); the whole sequence as a
  dry run, every printed command parsed by the installed command's own argument parser (nnU-Net's and ours),
  with the paper's settings and with a CPU stand-in's overrides.

No network is trained here (other tests do); the whole file takes well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_tumorsynth.phantom import PhantomSettings, make_phantom_case, to_sitk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
PIPELINE = os.path.join(EXAMPLES, "paper_pipeline.sh")
BIN = os.path.dirname(sys.executable)
SHAPE = (12, 32, 32)  # (z, y, x) voxels at the phantom's 3.0 x 1.5 x 1.5 mm
N_TRAIN, N_TEST = 6, 2


def load_example(name: str):
    """``examples/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


convert_atlas = load_example("convert_atlas")
check_lld_mmri = load_example("check_lld_mmri")


def tree_digest(folder: str) -> dict[str, str]:
    """``{relative path: sha1}`` of every file under ``folder`` (to show that a folder was not modified)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha1(f.read()).hexdigest()
    return out


# ---------------------------------------------------------------------------------------------------------
# A fake ATLAS release
# ---------------------------------------------------------------------------------------------------------


def write_atlas_release(folder: str, n_train: int = N_TRAIN, n_test: int = N_TEST) -> str:
    """``folder/imagesTr/im<i>.nii.gz``, ``labelsTr/lb<i>.nii.gz`` (i = 0..n_train-1) and the test set in
    ``imagesTs``/``labelsTs``, as the ATLAS release names them; phantom volumes (labels 0, 1, 2)."""
    settings = PhantomSettings(shape=SHAPE)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub))
    for split, n, offset in (("Tr", n_train, 0), ("Ts", n_test, 100)):
        for i in range(n):
            image, label = make_phantom_case(np.random.default_rng(offset + i), settings)
            sitk.WriteImage(to_sitk(image, settings.spacing), os.path.join(folder, f"images{split}", f"im{i}.nii.gz"))
            sitk.WriteImage(to_sitk(label, settings.spacing), os.path.join(folder, f"labels{split}", f"lb{i}.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def atlas_release(tmp_path_factory) -> str:
    return write_atlas_release(str(tmp_path_factory.mktemp("ATLAS")))


@pytest.fixture
def nnunet_dirs(tmp_path) -> dict[str, str]:
    """Fresh, empty nnU-Net raw and preprocessed folders of this test."""
    dirs = {"raw": str(tmp_path / "nnUNet_raw"), "preprocessed": str(tmp_path / "nnUNet_preprocessed")}
    for folder in dirs.values():
        os.makedirs(folder)
    return dirs


def test_convert_atlas_writes_an_nnunet_dataset(atlas_release, nnunet_dirs):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    before = tree_digest(atlas_release)
    # the preprocessed folder exists already: the split goes there too
    os.makedirs(os.path.join(nnunet_dirs["preprocessed"], "Dataset501_ATLAS"))
    out = convert_atlas.convert_atlas(atlas_release, 501, raw_folder=nnunet_dirs["raw"],
                                      preprocessed_folder=nnunet_dirs["preprocessed"])
    assert out == os.path.join(nnunet_dirs["raw"], "Dataset501_ATLAS")
    assert sorted(os.listdir(nnunet_dirs["raw"])) == ["Dataset501_ATLAS"]  # no temporary folder left
    assert tree_digest(atlas_release) == before  # the source is only read

    train = [f"ATLAS_{i:03d}" for i in range(N_TRAIN)]
    test = [f"ATLAS_test_{i:03d}" for i in range(N_TEST)]
    assert sorted(os.listdir(os.path.join(out, "imagesTr"))) == [f"{c}_0000.nii.gz" for c in train]
    assert sorted(os.listdir(os.path.join(out, "labelsTr"))) == [f"{c}.nii.gz" for c in train]
    assert sorted(os.listdir(os.path.join(out, "imagesTs"))) == [f"{c}_0000.nii.gz" for c in test]
    assert sorted(os.listdir(os.path.join(out, "labelsTs"))) == [f"{c}.nii.gz" for c in test]
    for i in range(N_TRAIN):  # copied byte for byte
        assert filecmp.cmp(os.path.join(atlas_release, "imagesTr", f"im{i}.nii.gz"),
                           os.path.join(out, "imagesTr", f"ATLAS_{i:03d}_0000.nii.gz"), shallow=False)
        assert filecmp.cmp(os.path.join(atlas_release, "labelsTr", f"lb{i}.nii.gz"),
                           os.path.join(out, "labelsTr", f"ATLAS_{i:03d}.nii.gz"), shallow=False)

    with open(os.path.join(out, "dataset.json")) as f:
        dataset_json = json.load(f)
    assert dataset_json["labels"] == {"background": 0, "liver": 1, "tumour": 2}
    assert dataset_json["numTraining"] == N_TRAIN and dataset_json["file_ending"] == ".nii.gz"
    assert list(dataset_json["channel_names"].values()) != ["CT"]  # z-score normalisation per image
    assert "Data 2023" in dataset_json["description"]  # the ATLAS citation

    # splits: nnU-Net's own default split of the sorted case ids; fold 0 is the paper's split
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    with open(os.path.join(out, "splits_final.json")) as f:
        splits = json.load(f)
    assert splits == [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]}
                      for s in generate_crossval_split(list(np.sort(train)), seed=12345, n_splits=5)]
    assert sorted(c for s in splits for c in s["val"]) == train
    with open(os.path.join(nnunet_dirs["preprocessed"], "Dataset501_ATLAS", "splits_final.json")) as f:
        assert json.load(f) == splits
    with open(os.path.join(out, "atlas_conversion.json")) as f:
        record = json.load(f)
    assert record["cases"]["ATLAS_003"]["image"].endswith(os.path.join("imagesTr", "im3.nii.gz"))

    # nnU-Net's own check of the dataset (what --verify_dataset_integrity runs)
    verify_dataset_integrity(out, num_processes=1)


def test_paper_split_is_48_12_per_fold():
    ids = [f"ATLAS_{i:03d}" for i in range(60)]
    splits = convert_atlas.atlas_splits(ids)
    assert len(splits) == 5
    assert all((len(s["train"]), len(s["val"])) == (48, 12) for s in splits)
    assert sorted(c for s in splits for c in s["val"]) == ids
    assert convert_atlas.PAPER_SPLIT == (48, 12, 30)


def _release_copy(atlas_release: str, tmp_path) -> str:
    folder = str(tmp_path / "ATLAS_copy")
    shutil.copytree(atlas_release, folder)
    return folder


def _rewrite(path: str, edit) -> None:
    image = sitk.ReadImage(path)
    edited = edit(image)
    sitk.WriteImage(edited, path)


def _with_value(image: sitk.Image, value: int) -> sitk.Image:
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = value
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def _shifted(image: sitk.Image) -> sitk.Image:
    out = sitk.Image(image)
    out.SetOrigin(tuple(o + 2.0 for o in image.GetOrigin()))
    out.SetSpacing(tuple(s * 1.1 for s in image.GetSpacing()))
    return out


@pytest.mark.parametrize("case", ["missing label", "missing image", "bad label value", "geometry"])
def test_convert_atlas_refuses_bad_releases(case, atlas_release, nnunet_dirs, tmp_path):
    source = _release_copy(atlas_release, tmp_path)
    if case == "missing label":
        os.remove(os.path.join(source, "labelsTr", "lb2.nii.gz"))
        expected = [os.path.join(source, "imagesTr", "im2.nii.gz"), "no label"]
    elif case == "missing image":
        os.remove(os.path.join(source, "imagesTr", "im4.nii.gz"))
        expected = [os.path.join(source, "labelsTr", "lb4.nii.gz"), "no image"]
    elif case == "bad label value":
        _rewrite(os.path.join(source, "labelsTr", "lb1.nii.gz"), lambda image: _with_value(image, 3))
        expected = [os.path.join(source, "labelsTr", "lb1.nii.gz"), "label values", "3"]
    else:
        _rewrite(os.path.join(source, "labelsTs", "lb0.nii.gz"), _shifted)
        expected = [os.path.join(source, "labelsTs", "lb0.nii.gz"), os.path.join(source, "imagesTs", "im0.nii.gz"),
                    "spacing, origin", "image size (32, 32, 12), spacing (1.5, 1.5, 3)", "label size (32, 32, 12), "
                    "spacing (1.65, 1.65, 3.3)"]
    with pytest.raises(convert_atlas.ConversionError) as error:
        convert_atlas.convert_atlas(source, 501, raw_folder=nnunet_dirs["raw"],
                                    preprocessed_folder=nnunet_dirs["preprocessed"])
    for text in expected:
        assert text in str(error.value), (text, str(error.value))
    assert os.listdir(nnunet_dirs["raw"]) == []  # nothing written


def test_convert_atlas_refuses_an_existing_dataset_id(atlas_release, nnunet_dirs):
    os.makedirs(os.path.join(nnunet_dirs["raw"], "Dataset501_Other", "imagesTr"))
    with pytest.raises(FileExistsError, match="Dataset501_Other already exists"):
        convert_atlas.convert_atlas(atlas_release, 501, raw_folder=nnunet_dirs["raw"], preprocessed_folder="")
    assert os.listdir(os.path.join(nnunet_dirs["raw"], "Dataset501_Other")) == ["imagesTr"]  # untouched
    convert_atlas.convert_atlas(atlas_release, 501, overwrite=True, raw_folder=nnunet_dirs["raw"],
                                preprocessed_folder="")
    assert sorted(os.listdir(nnunet_dirs["raw"])) == ["Dataset501_ATLAS"]


# ---------------------------------------------------------------------------------------------------------
# A fake LLD-MMRI release
# ---------------------------------------------------------------------------------------------------------

# patient -> [(phase, categories of its lesions)]: the paper keeps category 6 (HCC) in C+A, C+V, C+Delay
LLD_SERIES = {
    "MR001": [("C+A", [6]), ("C+V", [6]), ("C+Delay", [6]), ("T2WI", [6])],  # T2WI: not a paper phase
    "MR002": [("C+A", [3]), ("C+V", [3])],  # metastasis: not HCC
    "MR003": [("C+A", [6, 3]), ("C+V", [6])],  # C+A mixes categories: skipped with a warning
    "MR004": [("C+A", [6]), ("C+V", [6]), ("C+Delay", [6])],  # C+V image missing
    "MR005": [("C+A", [-1])],  # the challenge's validation patients: category -1
}


def write_lld_release(folder: str) -> tuple[str, str]:
    """``folder/images/<patient>/<study>/<series>.nii.gz`` and ``folder/labels/Annotation.json`` as LLD-MMRI
    ships them: per series ``studyUID``, ``seriesUID``, ``phase``, DICOM ``pixel_spacing`` ([row, column] mm)
    and ``slice_thickness``, and per lesion ``category`` with a ``3D_box`` and per-slice ``2D_box`` list.
    Returns (annotation file, images folder)."""
    settings = PhantomSettings(shape=SHAPE)
    images = os.path.join(folder, "images")
    info: dict[str, list[dict]] = {}
    for p, (patient, series) in enumerate(LLD_SERIES.items()):
        info[patient] = []
        for s, (phase, categories) in enumerate(series):
            study, uid = f"1.2.840.{p}", f"1.2.840.{p}.{s}"
            if not (patient == "MR004" and phase == "C+V"):
                image, _ = make_phantom_case(np.random.default_rng(10 * p + s), settings)
                os.makedirs(os.path.join(images, patient, study), exist_ok=True)
                sitk.WriteImage(to_sitk(image, settings.spacing), os.path.join(images, patient, study, f"{uid}.nii.gz"))
            lesions = {}
            for k, category in enumerate(categories):
                x0, y0, z0 = 8 + 10 * k, 10, 3
                x1 = 40 if (patient == "MR001" and phase == "C+Delay") else x0 + 6  # reaches past the 32 voxels
                lesions[str(k)] = {"category": category, "bbox": {
                    "2D_box": [{"x_min": x0, "y_min": y0, "x_max": x1, "y_max": y0 + 5, "z": z, "slice_idx": z,
                                "area": (x1 - x0) * 5} for z in range(z0, z0 + 3)],
                    "3D_box": {"x_min": x0, "y_min": y0, "z_min": z0, "x_max": x1, "y_max": y0 + 5, "z_max": z0 + 2}}}
            in_plane = [1.6, 1.6] if (patient == "MR001" and phase == "C+V") else [1.5, 1.5]
            info[patient].append({"studyUID": study, "seriesUID": uid, "phase": phase, "pixel_spacing": in_plane,
                                  "slice_thickness": 2.5, "annotation": {"num_targets": len(lesions),
                                                                         "lesion": lesions}})
    annotation = os.path.join(folder, "labels", "Annotation.json")
    os.makedirs(os.path.dirname(annotation))
    with open(annotation, "w") as f:
        json.dump({"Annotation_info": info}, f)
    return annotation, images


@pytest.fixture(scope="module")
def lld_release(tmp_path_factory) -> tuple[str, str]:
    return write_lld_release(str(tmp_path_factory.mktemp("LLD-MMRI")))


def test_check_lld_mmri_paper_selection(lld_release, tmp_path):
    annotation, images = lld_release
    report = str(tmp_path / "check" / "lld.json")
    result = check_lld_mmri.check_lld_mmri(annotation, images, ("C+A", "C+V", "C+Delay"), (6,), report)
    summary = result["summary"]
    assert [r["case"] for r in result["series"]] == ["MR001_CA", "MR001_CV", "MR001_CDelay", "MR003_CV", "MR004_CA",
                                                     "MR004_CV", "MR004_CDelay"]
    assert summary["series_in_file"] == 12 and summary["series_selected"] == 7
    assert summary["patients_selected"] == 3
    assert summary["series_per_phase"] == {"C+A": 2, "C+Delay": 2, "C+V": 3}
    assert summary["lesions_per_category"] == {"6": 7}
    assert summary["series_skipped_mixed_categories"] == 1  # MR003 C+A
    assert [os.path.relpath(f, images) for f in summary["images_missing"]] == [
        os.path.join("MR004", "1.2.840.3", "1.2.840.3.1.nii.gz")]
    assert summary["in_plane_spacing_mismatch"] == ["MR001_CV"]
    assert summary["slice_thickness_differs_from_z_spacing"] == 6  # 2.5 mm thick, 3.0 mm apart
    assert summary["slice_axis"] == {"z": 6}
    assert summary["boxes_clipped"] == 1 and summary["boxes_outside"] == 0
    assert summary["spacing_used"].startswith("NIfTI header")
    row = next(r for r in result["series"] if r["case"] == "MR001_CV")
    assert row["header_spacing_xyz"] == [1.5, 1.5, 3.0] and row["json_spacing_xyz"] == [1.6, 1.6, 2.5]
    with open(report) as f:
        assert json.load(f)["summary"] == summary


def test_check_lld_mmri_reads_what_pseudolabel_reads(lld_release):
    """The check goes through tumorsynth_pseudolabel's reader: the same cases for the same filters."""
    from nnunetv2_tumorsynth.boxes import read_box_annotations
    from nnunetv2_tumorsynth.cli.pseudolabel import build_parser

    annotation, images = lld_release
    args = build_parser().parse_args(["-bbox", annotation, "-i", images, "-d", "501", "--as-dataset", "502"])
    defaults = check_lld_mmri.check_lld_mmri(annotation, images)  # the same defaults: paper phases, all categories
    cases = read_box_annotations(annotation, images, tuple(args.phases), args.categories)
    ids = [c.case_id for c in cases]
    assert [r["case"] for r in defaults["series"]] == ids and len(ids) == 11
    assert "MR002_CA" in ids and "MR005_CA" in ids and "MR001_T2WI" not in ids
    everything = check_lld_mmri.check_lld_mmri(annotation, images, None, None)
    assert everything["summary"]["series_selected"] == 12


# ---------------------------------------------------------------------------------------------------------
# paper_pipeline.sh
# ---------------------------------------------------------------------------------------------------------


def pipeline_env(tmp_path, atlas_release: str, lld_release: tuple[str, str], **overrides: str) -> dict:
    annotation, images = lld_release
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), PYTHON=sys.executable,
               ATLAS_SRC=atlas_release, LLD_ANNOTATION=annotation, LLD_IMAGES=images, WORK=str(tmp_path / "work"))
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[var] = str(tmp_path / var)
        os.makedirs(env[var], exist_ok=True)
    env.update(overrides)
    return env


def run_pipeline(env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", PIPELINE], env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"paper_pipeline.sh exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def commands(stdout: str) -> list[list[str]]:
    """The commands the pipeline printed (lines ``+ cmd args``), split as the shell would."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def test_pipeline_runs_the_data_steps(tmp_path, atlas_release, lld_release):
    """The conversion and the LLD-MMRI reading really run through the pipeline."""
    env = pipeline_env(tmp_path, atlas_release, lld_release, STEPS="convert_atlas check_lld")
    result = run_pipeline(env)
    raw = os.path.join(env["nnUNet_raw"], "Dataset501_ATLAS")
    assert len(os.listdir(os.path.join(raw, "imagesTr"))) == N_TRAIN
    assert os.path.isfile(os.path.join(raw, "splits_final.json"))
    with open(os.path.join(env["WORK"], "lld_mmri_check.json")) as f:
        summary = json.load(f)["summary"]
    assert summary["series_selected"] == 7 and summary["categories"] == [6]
    assert "7 of 12 series selected" in result.stdout
    assert [os.path.basename(c[1]) for c in commands(result.stdout)] == ["convert_atlas.py", "check_lld_mmri.py"]

    again = run_pipeline(dict(env, STEPS="convert_atlas"), check=False)  # the dataset exists: a failing step
    assert again.returncode != 0 and "already exists" in again.stderr  # stops the pipeline (OVERWRITE=1 replaces)


class _Parsed(Exception):
    """Raised by the patched argparse as soon as a command line is parsed: nothing of the command runs."""

    def __init__(self, namespace: argparse.Namespace, extras: list[str]):
        super().__init__("parsed")
        self.namespace, self.extras = namespace, extras


def parse_with_installed_cli(argv: list[str], monkeypatch) -> argparse.Namespace:
    """Parse ``argv`` with the argument parser of the installed command ``argv[0]`` (a console script of nnU-Net
    or of this package, or an ``examples/*.py`` file) and stop right after parsing. Fails on unknown flags."""
    program = argv[0]
    if program.endswith(".py"):
        entry = load_example(os.path.splitext(os.path.basename(program))[0]).main
    else:
        found = [ep for ep in entry_points(group="console_scripts") if ep.name == program]
        assert found, f"{program} is not an installed console script"
        entry = found[0].load()
    original = argparse.ArgumentParser.parse_known_args

    def parse_and_stop(self, args=None, namespace=None):
        namespace, extras = original(self, args, namespace)
        raise _Parsed(namespace, extras)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", parse_and_stop)
        patch.setattr(sys, "argv", [program, *argv[1:]])
        try:
            entry()
        except _Parsed as parsed:
            assert parsed.extras == [], f"{shlex.join(argv)}: unknown arguments {parsed.extras}"
            return parsed.namespace
        except SystemExit as e:
            raise AssertionError(f"{shlex.join(argv)}: rejected by its argument parser (exit {e.code})") from None
    raise AssertionError(f"{shlex.join(argv)}: the command returned without parsing arguments")


TRAINER_CLASSES = set()
for _name in os.listdir(os.path.join(ROOT, "trainers")):
    if _name.endswith(".py"):
        with open(os.path.join(ROOT, "trainers", _name)) as _f:
            TRAINER_CLASSES |= set(re.findall(r"^class (\w+)\(", _f.read(), re.MULTILINE))


def check_commands(cmds: list[list[str]], monkeypatch) -> list[tuple[str, argparse.Namespace]]:
    """Every command parses with its installed parser, and every trainer it names exists."""
    parsed = []
    for cmd in cmds:
        program = os.path.basename(cmd[1]) if cmd[0] == sys.executable else cmd[0]
        args = parse_with_installed_cli([program, *cmd[2:]] if cmd[0] == sys.executable else cmd, monkeypatch)
        trainer = getattr(args, "tr", None)
        if trainer is not None:
            assert trainer == "nnUNetTrainer" or trainer in TRAINER_CLASSES, f"unknown trainer {trainer}"
        parsed.append((program, args))
    return parsed


PAPER_SEQUENCE = [
    "convert_atlas.py", "check_lld_mmri.py", "nnUNetv2_plan_and_preprocess", "nnUNetv2_train",
    "tumorsynth_pseudolabel", "nnUNetv2_extract_fingerprint", "nnUNetv2_move_plans_between_datasets",
    "nnUNetv2_preprocess", "tumorsynth_pretrain_ddpm", "nnUNetv2_train", "nnUNetv2_train", "tumorsynth_generate",
    "nnUNetv2_extract_fingerprint", "nnUNetv2_move_plans_between_datasets", "nnUNetv2_preprocess", "nnUNetv2_train",
    "nnUNetv2_predict", "nnUNetv2_predict", "nnUNetv2_predict", "tumorsynth_evaluate", "tumorsynth_evaluate",
]


def test_pipeline_dry_run_has_the_papers_settings(tmp_path, atlas_release, lld_release, monkeypatch):
    env = pipeline_env(tmp_path, atlas_release, lld_release, DRY_RUN="1")
    result = run_pipeline(env)
    cmds = commands(result.stdout)
    parsed = check_commands(cmds, monkeypatch)
    assert [p for p, _ in parsed] == PAPER_SEQUENCE
    assert os.listdir(env["nnUNet_raw"]) == [] and not os.path.exists(env["WORK"])  # a dry run writes nothing
    a = [args for _, args in parsed]
    assert (a[2].d, a[2].c, a[2].verify_dataset_integrity) == ([501], ["3d_fullres"], True)
    assert (a[3].dataset_name_or_id, a[3].configuration, a[3].fold, a[3].tr) == (
        "501", "3d_fullres", "0", "nnUNetTrainerBBoxChannel")
    assert (a[4].d, a[4].f, a[4].tr, a[4].phases, a[4].categories, a[4].as_dataset) == (
        "501", "0", "nnUNetTrainerBBoxChannel", ["C+A", "C+V", "C+Delay"], [6], 502)
    assert a[4].bbox == lld_release[0] and a[4].i == lld_release[1]
    assert a[5].d == [502] and (a[6].s, a[6].t, a[6].sp, a[6].tp) == ("501", "502", "nnUNetPlans", "nnUNetPlans")
    assert (a[7].d, a[7].plans_name, a[7].c) == ([502], "nnUNetPlans", ["3d_fullres"])
    assert (a[8].d, a[8].f, a[8].preset, a[8].epochs, a[8].device) == (["501", "502"], 0, "paper", 5000, "cuda")
    assert (a[9].tr, a[10].tr) == ("nnUNetTrainer", "nnUNetTrainerSynthTumor")
    assert (a[11].d, a[11].n, a[11].steps, a[11].sampler, a[11].include_real, a[11].as_dataset) == (
        "501", 1000, 250, "ddim", True, 503)
    assert (a[15].dataset_name_or_id, a[15].fold) == ("503", "all")
    test_images = os.path.join(env["nnUNet_raw"], "Dataset501_ATLAS", "imagesTs")
    assert [(p.i, p.d, p.f, p.tr) for p in a[16:19]] == [
        (test_images, "501", ["0"], "nnUNetTrainer"), (test_images, "501", ["0"], "nnUNetTrainerSynthTumor"),
        (test_images, "503", ["all"], "nnUNetTrainer")]
    for evaluation, arm in zip(a[19:21], ("onthefly", "offline")):
        assert evaluation.ref == os.path.join(env["nnUNet_raw"], "Dataset501_ATLAS", "labelsTs")
        assert evaluation.pred.endswith(f"pred_{arm}") and evaluation.baseline[0].endswith("pred_baseline")
        assert evaluation.l == ["tumour"]
    assert "expected: ~46 h bound" in result.stdout  # the GPU-time estimates are printed with the steps


def test_pipeline_dry_run_with_a_cpu_stand_in(tmp_path, atlas_release, lld_release, monkeypatch):
    """The overrides a small CPU stand-in uses reach every command, and the commands still parse."""
    env = pipeline_env(tmp_path, atlas_release, lld_release, DRY_RUN="1", ATLAS_ID="601", LLD_ID="602",
                       SYNTH_ID="603", TINY_PLANS="1", DEVICE="cpu", NP="1", TR_BASELINE="nnUNetTrainerTiny",
                       TR_BOX="nnUNetTrainerBBoxChannelTiny", TR_SYNTH="nnUNetTrainerSynthTumorHeuristicTiny",
                       DDPM_PRESET="tiny", DDPM_EPOCHS="2", DDPM_EXTRA="--crop 16 32 32", N_SYNTH="4",
                       DDIM_STEPS="5", GENERATE_EXTRA="--texture heuristic", PREDICT_EXTRA="--disable_tta",
                       ARMS="offline", OVERWRITE="1")
    parsed = check_commands(commands(run_pipeline(env).stdout), monkeypatch)
    programs = [p for p, _ in parsed]
    assert "tumorsynth_tiny_plans" in programs and programs.count("nnUNetv2_predict") == 2
    assert programs.count("tumorsynth_evaluate") == 1  # one arm only
    by_program: dict[str, list[argparse.Namespace]] = {}
    for program, args in parsed:
        by_program.setdefault(program, []).append(args)
    assert by_program["tumorsynth_tiny_plans"][0].o == "tumorsynthTinyPlans"
    assert [t.tr for t in by_program["nnUNetv2_train"]] == ["nnUNetTrainerBBoxChannelTiny", "nnUNetTrainerTiny",
                                                            "nnUNetTrainerTiny"]
    assert all(t.device == "cpu" and t.p == "tumorsynthTinyPlans" for t in by_program["nnUNetv2_train"])
    assert by_program["nnUNetv2_preprocess"][0].np == [1]
    pseudo = by_program["tumorsynth_pseudolabel"][0]
    assert (pseudo.as_dataset, pseudo.device, pseudo.disable_tta, pseudo.overwrite) == (602, "cpu", True, True)
    ddpm = by_program["tumorsynth_pretrain_ddpm"][0]
    assert (ddpm.d, ddpm.preset, ddpm.epochs, ddpm.crop, ddpm.p) == (["601", "602"], "tiny", 2, [16, 32, 32],
                                                                     "tumorsynthTinyPlans")
    generate = by_program["tumorsynth_generate"][0]
    assert (generate.n, generate.steps, generate.texture, generate.as_dataset) == (4, 5, "heuristic", 603)


def test_pipeline_refuses_unknown_steps(tmp_path, atlas_release, lld_release):
    result = run_pipeline(pipeline_env(tmp_path, atlas_release, lld_release, DRY_RUN="1", STEPS="train_everything"),
                          check=False)
    assert result.returncode != 0 and "unknown step 'train_everything'" in result.stderr
    only = run_pipeline(pipeline_env(tmp_path, atlas_release, lld_release, DRY_RUN="1", STEPS="predict evaluate",
                                     ARMS="onthefly"))
    assert [c[0] for c in commands(only.stdout)] == ["nnUNetv2_predict"] * 2 + ["tumorsynth_evaluate"]
