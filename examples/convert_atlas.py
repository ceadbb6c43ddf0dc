"""Convert the ATLAS 2023 liver MRI release to an nnU-Net raw dataset (default ``Dataset501_ATLAS``).

    python examples/convert_atlas.py -i /data/ATLAS [-d 501] [--test-input /data/ATLAS_test] [--overwrite]

ATLAS (Quinton et al. 2023, *Data* 8(5):79) is the liver MRI set of Quinton et al. 2026: T1-weighted
contrast-enhanced MRI of patients with hepatocellular carcinoma, one image per patient, labels
0 background, 1 liver, 2 tumour. The release is read as distributed::

    <input>/imagesTr/im<i>.nii.gz    <input>/labelsTr/lb<i>.nii.gz    (60 training images)
    <input>/imagesTs/im<i>.nii.gz    <input>/labelsTs/lb<i>.nii.gz    (test set, optional; or --test-input)

and written in nnU-Net's layout, in the style of nnU-Net's own ``dataset_conversion`` scripts::

    $nnUNet_raw/Dataset501_ATLAS/imagesTr/ATLAS_<iii>_0000.nii.gz   labelsTr/ATLAS_<iii>.nii.gz
                                 imagesTs/ATLAS_test_<iii>_0000.nii.gz   labelsTs/ATLAS_test_<iii>.nii.gz
                                 dataset.json   splits_final.json   atlas_conversion.json

Files are copied byte for byte (nothing is resampled or re-encoded); the source folder is only read.

Checks before anything is written (all problems are listed at once, each naming its file):

- every image has its label and every label its image;
- label values are integers within {0, 1, 2};
- image and label have the same geometry: size (voxels), spacing (mm), origin (mm) and direction cosines,
  all in ITK's (x, y, z) order, equal up to float rounding in the NIfTI header (``GEOMETRY_TOLERANCE``);
- images are 3D and single-channel.

The paper's split. Quinton et al. 2026 (section 2.1) split ATLAS into 48 training, 12 validation and 30
test images; the 48 + 12 are the 60 released training images. ``splits_final.json`` holds nnU-Net's
five folds of those 60 (``generate_crossval_split`` with seed 12345, on the sorted case ids: exactly the
split ``nnUNetv2_train`` would make itself), so every fold is 48 training / 12 validation cases and
**fold 0 is the paper's split** (``-f 0`` everywhere in ``paper_pipeline.sh``). The paper does not list
which 12 images it validated on; to use other ones, edit fold 0 of the file. The 30 test images are
``imagesTs`` (and ``labelsTs`` for ``tumorsynth_evaluate``). nnU-Net's planner (checked with nnU-Net 2.8)
copies ``splits_final.json`` from the raw folder to ``$nnUNet_preprocessed/Dataset501_ATLAS/`` during
``nnUNetv2_plan_and_preprocess``; with a version that does not, copy it there yourself. When that folder already
exists, this script writes the file there too (an existing, different one is replaced only with
``--overwrite``).

An existing dataset with the same id is refused unless ``--overwrite``; the new dataset is built in a
temporary folder and renamed into place when complete (``nnunetv2_tumorsynth.files.new_raw_dataset``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from nnunetv2_tumorsynth.files import existing_datasets, new_raw_dataset, write_dataset_json, write_json_atomic

LABELS = {"background": 0, "liver": 1, "tumour": 2}
CHANNEL_NAMES = {0: "T1_CE_MRI"}  # not "CT": nnU-Net normalises each image by its own z-score
FILE_ENDING = ".nii.gz"
IMAGE_PATTERN = re.compile(r"^im(\d+)\.nii\.gz$")
LABEL_PATTERN = re.compile(r"^lb(\d+)\.nii\.gz$")
# largest accepted difference between image and label headers (NIfTI stores float32): mm for spacing and
# origin, unitless for the direction cosines
GEOMETRY_TOLERANCE = {"spacing": 1e-3, "origin": 1e-3, "direction": 1e-4}
PAPER_SPLIT = (48, 12, 30)  # training, validation, test images (Quinton et al. 2026, section 2.1)
SPLIT_SEED = 12345  # nnU-Net's own (nnUNetTrainer.do_split)
CITATION = ("Quinton F, Popoff R, Presles B, et al. A tumour and liver automatic segmentation (ATLAS) dataset on "
            "contrast-enhanced magnetic resonance imaging for hepatocellular carcinoma. Data 2023;8(5):79.")


class ConversionError(ValueError):
    """The release cannot be converted; the message lists every problem found, each naming its file."""


@dataclass(frozen=True)
class Geometry:
    """Header geometry of an image, in ITK's (x, y, z) order: size in voxels, spacing and origin in mm
    (ITK physical LPS frame), direction cosines row-major (3 x 3), components per voxel."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int

    def __str__(self) -> str:
        def fmt(values):
            return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"

        return (f"size {tuple(self.size)}, spacing {fmt(self.spacing)} mm, origin {fmt(self.origin)} mm, "
                f"direction {fmt(self.direction)}")


def read_geometry(path: str) -> Geometry:
    """The geometry of ``path`` from its header only (no voxel data is read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return Geometry(tuple(int(s) for s in reader.GetSize()), tuple(float(s) for s in reader.GetSpacing()),
                    tuple(float(o) for o in reader.GetOrigin()), tuple(float(d) for d in reader.GetDirection()),
                    int(reader.GetNumberOfComponents()))


def geometry_differences(image: Geometry, label: Geometry) -> list[str]:
    """Names of the geometry fields in which ``label`` differs from ``image`` (empty: same geometry)."""
    differs = []
    if image.size != label.size:
        differs.append("size")
    for field, tolerance in GEOMETRY_TOLERANCE.items():
        a, b = np.asarray(getattr(image, field)), np.asarray(getattr(label, field))
        if a.shape != b.shape or not np.allclose(a, b, rtol=0.0, atol=tolerance):
            differs.append(field)
    return differs


def find_pairs(images_dir: str, labels_dir: str | None, problems: list[str]) -> dict[int, tuple[str, str | None]]:
    """``{index: (image file, label file or None)}`` for ``im<index>.nii.gz`` / ``lb<index>.nii.gz``.

    With ``labels_dir`` every image must have its label and every label its image; missing partners and
    duplicate indices (``im1`` and ``im01``) are added to ``problems``. Other files are ignored with a note.
    """

    def indexed(folder: str, pattern: re.Pattern) -> dict[int, str]:
        found: dict[int, str] = {}
        ignored = []
        for name in sorted(os.listdir(folder)):
            match = pattern.match(name)
            if match is None:
                if not name.startswith("."):
                    ignored.append(name)
                continue
            index = int(match.group(1))
            if index in found:
                problems.append(f"{os.path.join(folder, name)}: index {index} also used by {found[index]}")
                continue
            found[index] = os.path.join(folder, name)
        if ignored:
            print(f"note: ignored in {folder} (not {pattern.pattern}): {', '.join(ignored[:10])}"
                  + (f" and {len(ignored) - 10} more" if len(ignored) > 10 else ""))
        return found

    images = indexed(images_dir, IMAGE_PATTERN)
    if labels_dir is None:
        return {i: (f, None) for i, f in images.items()}
    labels = indexed(labels_dir, LABEL_PATTERN)
    for i in sorted(set(images) - set(labels)):
        problems.append(f"{images[i]}: no label (expected {os.path.join(labels_dir, f'lb{i}.nii.gz')})")
    for i in sorted(set(labels) - set(images)):
        problems.append(f"{labels[i]}: no image (expected {os.path.join(images_dir, f'im{i}.nii.gz')})")
    return {i: (images[i], labels[i]) for i in sorted(set(images) & set(labels))}


def check_case(image_file: str, label_file: str | None, problems: list[str]) -> dict:
    """Check one image (3D, one channel) and its label (values, geometry); returns label statistics
    (voxel counts per label value) and adds what is wrong to ``problems``."""
    try:
        image = read_geometry(image_file)
    except RuntimeError as e:
        problems.append(f"{image_file}: cannot be read: {str(e).strip()}")
        return {}
    if len(image.size) != 3 or image.components != 1:
        problems.append(f"{image_file}: expected a 3D single-channel image, got {len(image.size)}D with "
                        f"{image.components} component(s)")
    if label_file is None:
        return {}
    try:
        label_image = sitk.ReadImage(label_file)
    except RuntimeError as e:
        problems.append(f"{label_file}: cannot be read: {str(e).strip()}")
        return {}
    label = Geometry(tuple(label_image.GetSize()), tuple(label_image.GetSpacing()), tuple(label_image.GetOrigin()),
                     tuple(label_image.GetDirection()), label_image.GetNumberOfComponentsPerPixel())
    differs = geometry_differences(image, label)
    if differs:
        problems.append(f"{label_file}: geometry differs from its image {image_file} ({', '.join(differs)}): "
                        f"image {image}; label {label}")
    values, counts = np.unique(sitk.GetArrayViewFromImage(label_image), return_counts=True)
    not_integer = values[values != np.round(values)]
    unexpected = sorted(set(np.round(values).astype(int).tolist()) - set(LABELS.values()))
    if len(not_integer) or unexpected:
        problems.append(f"{label_file}: label values {[v.item() for v in values]} are not all within "
                        f"{sorted(LABELS.values())} ({', '.join(f'{k} {v}' for k, v in LABELS.items())})")
    return {str(int(round(float(v)))): int(c) for v, c in zip(values, counts)}


def atlas_splits(case_ids: list[str], n_folds: int = 5, seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """nnU-Net's ``n_folds`` cross-validation folds of ``case_ids`` (sorted first, as ``nnUNetTrainer.do_split``
    sorts them); with the 60 ATLAS training images each fold is 48 training / 12 validation cases."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    if len(case_ids) < 2:
        raise ConversionError(f"a cross-validation split needs at least 2 training cases, got {len(case_ids)}")
    splits = generate_crossval_split(sorted(case_ids), seed=seed, n_splits=min(n_folds, len(case_ids)))
    return [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]} for s in splits]


def _write_preprocessed_splits(splits: list[dict], full_name: str, preprocessed: str | None, overwrite: bool) -> None:
    """Also write ``splits_final.json`` to ``<preprocessed>/<full_name>/`` when that folder exists."""
    if not preprocessed:
        return
    folder = os.path.join(preprocessed, full_name)
    if not os.path.isdir(folder):
        return
    target = os.path.join(folder, "splits_final.json")
    if os.path.isfile(target) and not overwrite:
        with open(target) as f:
            if json.load(f) != splits:
                print(f"WARNING: {target} exists with another split; kept (pass --overwrite to replace it)")
        return
    write_json_atomic(splits, target)
    print(f"wrote {target}")


def convert_atlas(source: str, dataset_id: int = 501, name: str = "ATLAS", test_source: str | None = None,
                  overwrite: bool = False, raw_folder: str | None = None,
                  preprocessed_folder: str | None = None) -> str:
    """Convert the ATLAS release in ``source`` (``imagesTr``/``labelsTr``, optionally ``imagesTs``/``labelsTs``
    there or in ``test_source``) to ``<raw_folder>/Dataset<id>_<name>`` and return that folder.

    ``raw_folder`` and ``preprocessed_folder`` default to ``$nnUNet_raw`` and ``$nnUNet_preprocessed``.
    Raises :class:`ConversionError` listing every problem (nothing written), FileExistsError for an
    existing dataset id without ``overwrite``.
    """
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    raw_folder = raw_folder or nnUNet_raw
    preprocessed_folder = preprocessed_folder if preprocessed_folder is not None else nnUNet_preprocessed
    if not raw_folder:
        raise ConversionError("nnUNet_raw is not set; export nnUNet_raw=/path/to/nnUNet_raw")
    taken = existing_datasets(raw_folder, dataset_id)
    if taken and not overwrite:  # refused before reading 90 images (new_raw_dataset checks again)
        raise FileExistsError(f"{os.path.join(raw_folder, taken[0])} already exists; choose another dataset id or "
                              f"pass --overwrite")
    train_images, train_labels = os.path.join(source, "imagesTr"), os.path.join(source, "labelsTr")
    for folder in (train_images, train_labels):
        if not os.path.isdir(folder):
            raise ConversionError(f"{folder} does not exist: -i must be the ATLAS folder that holds imagesTr/ and "
                                  f"labelsTr/")
    test_root = test_source or source
    test_images, test_labels = os.path.join(test_root, "imagesTs"), os.path.join(test_root, "labelsTs")
    if test_source is not None and not os.path.isdir(test_images):
        raise ConversionError(f"{test_images} does not exist: --test-input must hold imagesTs/ (and labelsTs/)")

    problems: list[str] = []
    train = find_pairs(train_images, train_labels, problems)
    test = find_pairs(test_images, test_labels if os.path.isdir(test_labels) else None, problems) \
        if os.path.isdir(test_images) else {}
    if not train and not problems:
        problems.append(f"{train_images}: no im<i>.nii.gz files")
    counts = {}
    for prefix, pairs in (("ATLAS", train), ("ATLAS_test", test)):
        for i, (image_file, label_file) in pairs.items():
            counts[f"{prefix}_{i:03d}"] = check_case(image_file, label_file, problems)
    if problems:
        raise ConversionError(f"{len(problems)} problem(s) in {source}" + (f" / {test_source}" if test_source else "")
                              + ", nothing written:\n  " + "\n  ".join(problems))

    train_ids = [f"ATLAS_{i:03d}" for i in train]
    splits = atlas_splits(train_ids)
    if (len(train), len(test)) != (PAPER_SPLIT[0] + PAPER_SPLIT[1], PAPER_SPLIT[2]):
        print(f"note: {len(train)} training and {len(test)} test images; the paper's split is "
              f"{PAPER_SPLIT[0]} / {PAPER_SPLIT[1]} / {PAPER_SPLIT[2]} (training / validation / test)")
    full_name = f"Dataset{dataset_id:03d}_{name}"
    with new_raw_dataset(raw_folder, dataset_id, name, overwrite=overwrite) as folder:
        if test:
            os.makedirs(os.path.join(folder, "imagesTs"))
            if any(label is not None for _, label in test.values()):
                os.makedirs(os.path.join(folder, "labelsTs"))
        sources = {}
        for prefix, pairs, image_sub, label_sub in (("ATLAS", train, "imagesTr", "labelsTr"),
                                                    ("ATLAS_test", test, "imagesTs", "labelsTs")):
            for i, (image_file, label_file) in pairs.items():
                case = f"{prefix}_{i:03d}"
                shutil.copyfile(image_file, os.path.join(folder, image_sub, f"{case}_0000{FILE_ENDING}"))
                if label_file is not None:
                    shutil.copyfile(label_file, os.path.join(folder, label_sub, f"{case}{FILE_ENDING}"))
                sources[case] = {"image": os.path.abspath(image_file),
                                 "label": os.path.abspath(label_file) if label_file else None,
                                 "voxels_per_label": counts[case]}
        write_json_atomic(splits, os.path.join(folder, "splits_final.json"))
        write_json_atomic({"source": os.path.abspath(source), "test_source": os.path.abspath(test_root),
                           "split": "fold 0 of splits_final.json is the paper's training / validation split "
                                    f"({len(splits[0]['train'])} / {len(splits[0]['val'])}); imagesTs is the test set",
                           "cases": sources}, os.path.join(folder, "atlas_conversion.json"))
        # the citation goes into the description: generate_dataset_json (nnU-Net 2.8) writes `release` under
        # "citation"; it also edits the dicts it gets, hence the copies
        write_dataset_json(folder, dict(CHANNEL_NAMES), dict(LABELS), len(train), FILE_ENDING, full_name,
                           description="ATLAS 2023 liver MRI (T1 CE-MRI, hepatocellular carcinoma): liver and "
                                       "tumour labels. Converted by nnunetv2-tumorsynth examples/convert_atlas.py. "
                                       + CITATION,
                           reference="https://doi.org/10.3390/data8050079", license="see the ATLAS release",
                           numTest=len(test))
    target = os.path.join(raw_folder, full_name)
    _write_preprocessed_splits(splits, full_name, preprocessed_folder, overwrite)
    if taken and preprocessed_folder and os.path.isdir(os.path.join(preprocessed_folder, full_name)):
        print(f"WARNING: {os.path.join(preprocessed_folder, full_name)} holds data of the replaced dataset; run "
              f"nnUNetv2_plan_and_preprocess -d {dataset_id} again")
    without_tumour = [c for c in train_ids if counts[c].get(str(LABELS["tumour"]), 0) == 0]
    print(f"wrote {target}: {len(train)} training cases ({len(without_tumour)} without tumour), {len(test)} test "
          f"cases; splits_final.json: {len(splits)} folds, fold 0 = {len(splits[0]['train'])} training / "
          f"{len(splits[0]['val'])} validation cases")
    print(f"next: nnUNetv2_plan_and_preprocess -d {dataset_id} -c 3d_fullres --verify_dataset_integrity")
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Convert the ATLAS 2023 liver MRI release (imagesTr/im<i>.nii.gz, labelsTr/lb<i>.nii.gz; labels "
                    "0 background, 1 liver, 2 tumour) to $nnUNet_raw/Dataset<ID>_ATLAS, with splits_final.json "
                    "whose fold 0 is the 48 / 12 split of Quinton et al. 2026.")
    parser.add_argument("-i", "--input", required=True, help="the ATLAS release folder holding imagesTr/ and labelsTr/ "
                        "(and optionally imagesTs/ and labelsTs/)")
    parser.add_argument("-d", "--dataset_id", type=int, default=501, help="nnU-Net dataset id (default 501)")
    parser.add_argument("--name", default="ATLAS", help="dataset name after the id (default ATLAS)")
    parser.add_argument("--test-input", default=None,
                        help="folder holding the test set's imagesTs/ (and labelsTs/) if not in -i")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset with this id")
    args = parser.parse_args(argv)
    try:
        convert_atlas(args.input, args.dataset_id, args.name, args.test_input, args.overwrite)
    except (ConversionError, FileExistsError) as e:
        sys.exit(f"convert_atlas: error: {e}")


if __name__ == "__main__":
    main()
