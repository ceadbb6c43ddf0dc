"""Visual Turing test kit: export shuffled real and synthetic volumes for readers, then score their answers.

Protocol (Quinton et al. 2026, section 2.5): K volumes with real tumours and K volumes of the same cases whose
real tumours were replaced by synthetic ones (``tumorsynth_generate --replace-real``), shown to each reader in
one shuffled order under neutral ids (``turing_001``...); each reader marks every volume real, synthetic or
unsure (Hu et al. 2023 let readers answer unsure; Quinton et al. 2026 and Chen et al. 2024 asked for real or
synthetic only).

Scores, per reader (synthetic is the positive class):

- sensitivity = synthetic volumes answered "synthetic" / synthetic volumes
  (Quinton et al. 2026 Table 2, "synthetic tumours" true positive rate; Hu et al. 2023 Table 2 "sensitivity");
- specificity = real volumes answered "real" / real volumes
  (Quinton et al. 2026 Table 2, "real tumours" true positive rate; Hu et al. 2023 Table 2 "specificity");
- accuracy = correct answers / all volumes.

Chen et al. 2024 (Table 1) name the two rates the other way round (their "sensitivity" is real called real):
compare with their figures accordingly. ``unsure`` is counted as a wrong answer in these three figures (a
reader who is unsure did not tell the volume apart) and reported separately; the figures over the definite
answers only (unsure left out, as Hu et al. 2023 computed theirs: "only the samples with definite results
are counted") are reported too (``*_decided``). Agreement between readers: Fleiss' kappa over the three
categories real / synthetic / unsure (Quinton et al. 2026 report kappa = -0.04 for three readers).
"""

from __future__ import annotations

import csv
import datetime
import math
import os
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from nnunetv2_tumorsynth.files import atomic_path, write_json_atomic
from nnunetv2_tumorsynth.geometry import box_slices

ANSWERS = ("real", "synthetic", "unsure")
KEY_FILE = "turing_key.json"
SHEET_FILE = "reader_sheet.csv"


class TuringError(ValueError):
    """Bad input to the Turing kit; the message names the file and what to fix."""


# ------------------------------------------------------------------------------------------------ export


@dataclass
class TuringCase:
    """One case available to the test: its real image, its image with the real tumours replaced, its label.

    Paths of NIfTI (or any SimpleITK-readable) files; ``label`` is the real case's label map (used to crop
    around the organ).
    """

    case: str
    real_image: str
    synthetic_image: str
    label: str


def cases_from_replace_real(real_dataset: str, replaced_dataset: str) -> list[TuringCase]:
    """Pair each image of a ``--replace-real`` dataset with its source case in the real raw dataset.

    A source case with several replaced images is paired with its first one (record order). Images in which
    some real tumours were kept (``tumorsynth_generate`` keeps a tumour larger than the diffusion model's
    context) are left out with a warning: such a volume is neither real nor synthetic.
    """
    from nnunetv2_tumorsynth.inspection.items import read_dataset_json, read_generation_record, resolve_raw_dataset

    real_dataset = resolve_raw_dataset(real_dataset)
    replaced_dataset = resolve_raw_dataset(replaced_dataset)
    real_ending = read_dataset_json(real_dataset).get("file_ending", ".nii.gz")
    replaced_ending = read_dataset_json(replaced_dataset).get("file_ending", ".nii.gz")
    images = read_generation_record(replaced_dataset)
    if not any(image.replaced_real for image in images):
        raise TuringError(f"{replaced_dataset} was not generated with --replace-real: its record shows no image "
                          f"whose real tumours were replaced; the Turing protocol needs the same cases with "
                          f"their real tumours replaced")
    out: dict[str, TuringCase] = {}
    partial = []
    for image in images:
        if not image.replaced_real or image.real or image.source_case in out:
            continue
        if not all(t.get("replaced", True) for t in image.tumours):
            partial.append(image.case)  # a volume with a real and a synthetic tumour has no single truth
            continue
        real_image = os.path.join(real_dataset, "imagesTr", f"{image.source_case}_0000{real_ending}")
        label = os.path.join(real_dataset, "labelsTr", f"{image.source_case}{real_ending}")
        synthetic = os.path.join(replaced_dataset, "imagesTr", f"{image.case}_0000{replaced_ending}")
        for path in (real_image, label, synthetic):
            if not os.path.isfile(path):
                raise TuringError(f"{path} does not exist (case {image.case}, source {image.source_case})")
        out[image.source_case] = TuringCase(image.source_case, real_image, synthetic, label)
    if partial:
        warnings.warn(f"{len(partial)} image(s) of {replaced_dataset} kept some real tumours (too large for the "
                      f"diffusion model's context) and are left out of the Turing test: {', '.join(partial)}",
                      stacklevel=2)
    return [out[c] for c in sorted(out)]


def organ_crop_box(label: np.ndarray, spacing: Sequence[float], margin_mm: float,
                   labels: Sequence[int] | None = None) -> tuple[slice, ...]:
    """Bounding box (z, y, x slices) of the label's foreground (or of ``labels``) grown by ``margin_mm``."""
    foreground = label > 0 if labels is None else np.isin(label, list(labels))
    box = box_slices(foreground, margin=[int(math.ceil(margin_mm / float(s))) for s in spacing])
    return tuple(slice(0, n) for n in label.shape) if box is None else box


def _neutral_image(array: np.ndarray, reference: sitk.Image, pixel_id: int) -> sitk.Image:
    """A fresh image (no metadata carried over) with ``reference``'s geometry and the given pixel type.

    Values are rounded and clipped for integer pixel types, so real and synthetic volumes are stored alike.
    """
    numpy_type = sitk.GetArrayViewFromImage(sitk.Image(1, 1, 1, pixel_id)).dtype
    if np.issubdtype(numpy_type, np.integer):
        info = np.iinfo(numpy_type)
        array = np.clip(np.rint(array), info.min, info.max)
    image = sitk.GetImageFromArray(array.astype(numpy_type))
    image.CopyInformation(reference)
    return image


def _read_pair(case: TuringCase) -> tuple[sitk.Image, sitk.Image]:
    real = sitk.ReadImage(case.real_image)
    synthetic = sitk.ReadImage(case.synthetic_image)
    if real.GetSize() != synthetic.GetSize() or not np.allclose(real.GetSpacing(), synthetic.GetSpacing(),
                                                                rtol=1e-4):
        raise TuringError(f"{case.synthetic_image}: size/spacing {synthetic.GetSize()} {synthetic.GetSpacing()} "
                          f"differ from the real image {case.real_image} {real.GetSize()} {real.GetSpacing()}")
    return real, synthetic


def export_turing_test(cases: Sequence[TuringCase], out_folder: str, key_folder: str, *, k: int | None = None,
                       seed: int | None = None, crop_margin_mm: float | None = None,
                       crop_labels: Sequence[int] | None = None, pairing: str = "same",
                       overwrite: bool = False) -> dict:
    """Write the readers' folder (volumes + reader sheet + instructions) and, elsewhere, the answer key.

    cases: what is available (:func:`cases_from_replace_real`). k: volumes of each kind (default: as many as
    possible). seed: selection and shuffling (None: drawn at random and written into the key).
    crop_margin_mm: crop every volume to its case's organ box (``crop_labels``, default all foreground
    labels) grown by this margin; real and synthetic volumes of a case get the same box. pairing: "same"
    (the paper's protocol: the K synthetic volumes are the K real cases with their tumours replaced) or
    "disjoint" (real and synthetic volumes from different cases, 2K cases needed, so a reader cannot compare
    two versions of one case). Volumes are written with the real image's pixel type (synthetic values
    rounded for integer types) and no metadata beyond the geometry. Returns the key.
    """
    out_folder, key_folder = os.path.abspath(out_folder), os.path.abspath(key_folder)
    if key_folder == out_folder or key_folder.startswith(out_folder + os.sep):
        raise TuringError(f"the answer key folder {key_folder} must not be the readers' folder {out_folder} or "
                          f"inside it: readers would receive the answers")
    if pairing not in ("same", "disjoint"):
        raise TuringError(f"pairing must be 'same' or 'disjoint', got {pairing!r}")
    available = len(cases) if pairing == "same" else len(cases) // 2
    if available == 0:
        raise TuringError("no case available for the Turing test" + (" (disjoint pairing needs at least 2)"
                                                                      if pairing == "disjoint" else ""))
    k = available if k is None else k
    if not 1 <= k <= available:
        raise TuringError(f"k = {k} volumes of each kind requested, but only {available} are available "
                          f"({len(cases)} cases, pairing {pairing!r})")
    key_path = os.path.join(key_folder, KEY_FILE)
    volumes = os.path.join(out_folder, "volumes")
    existing = [p for p in (key_path, os.path.join(out_folder, SHEET_FILE)) if os.path.exists(p)]
    if os.path.isdir(volumes):
        existing += [os.path.join(volumes, f) for f in sorted(os.listdir(volumes)) if f.startswith("turing_")]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass --overwrite or choose other folders")

    seed = secrets.randbits(31) if seed is None else int(seed)
    rng = np.random.default_rng(seed)
    chosen = [cases[i] for i in rng.permutation(len(cases))]
    if pairing == "same":
        plan = [(c, "real") for c in chosen[:k]] + [(c, "synthetic") for c in chosen[:k]]
    else:
        plan = [(c, "real") for c in chosen[:k]] + [(c, "synthetic") for c in chosen[k:2 * k]]
    order = rng.permutation(len(plan))
    width = max(3, len(str(len(plan))))

    os.makedirs(volumes, exist_ok=True)
    os.makedirs(key_folder, exist_ok=True)
    for old in os.listdir(volumes):
        if old.startswith("turing_"):
            os.remove(os.path.join(volumes, old))
    items = []
    for position, index in enumerate(order, start=1):
        case, truth = plan[index]
        volume_id = f"turing_{position:0{width}d}"
        real, synthetic = _read_pair(case)
        image = real if truth == "real" else synthetic
        array = sitk.GetArrayFromImage(image)
        box = None
        if crop_margin_mm is not None:
            label = sitk.GetArrayFromImage(sitk.ReadImage(case.label))
            box = organ_crop_box(label, real.GetSpacing()[::-1], crop_margin_mm, crop_labels)
        neutral = _neutral_image(array, real, real.GetPixelID())
        if box is not None:  # SimpleITK slicing is (x, y, z) and keeps the physical position
            neutral = neutral[box[2], box[1], box[0]]
        with atomic_path(os.path.join(volumes, f"{volume_id}.nii.gz")) as tmp:
            sitk.WriteImage(neutral, tmp, True)
        items.append({"id": volume_id, "truth": truth, "case": case.case,
                      "image": case.real_image if truth == "real" else case.synthetic_image,
                      "crop_zyx": None if box is None else [[s.start, s.stop] for s in box]})

    with atomic_path(os.path.join(out_folder, SHEET_FILE)) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "answer"])
        for item in items:
            writer.writerow([item["id"], ""])
    with atomic_path(os.path.join(out_folder, "INSTRUCTIONS.txt")) as tmp, open(tmp, "w") as f:
        f.write(instructions(len(items)))
    key = {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "protocol": "Quinton et al. 2026 section 2.5" if pairing == "same" else "disjoint cases",
        "pairing": pairing,
        "k": k,
        "seed": seed,
        "crop_margin_mm": crop_margin_mm,
        "readers_folder": out_folder,
        "items": items,
    }
    write_json_atomic(key, key_path)
    return key


def export_from_replace_real(real_dataset: str, replaced_dataset: str, out_folder: str, key_folder: str, *,
                             k: int | None = None, seed: int | None = None, crop_margin_mm: float | None = None,
                             crop_labels: Sequence[int] | None = None, pairing: str = "same",
                             overwrite: bool = False) -> dict:
    """:func:`export_turing_test` on the pairs of :func:`cases_from_replace_real` (what ``tumorsynth_turing
    export`` runs). ``crop_labels`` default: the organ and tumour labels of the real dataset's dataset.json."""
    from nnunetv2_tumorsynth.inspection.items import dataset_labels, resolve_raw_dataset

    cases = cases_from_replace_real(real_dataset, replaced_dataset)
    if crop_labels is None:
        crop_labels = list(dataset_labels(resolve_raw_dataset(real_dataset)))
    return export_turing_test(cases, out_folder, key_folder, k=k, seed=seed, crop_margin_mm=crop_margin_mm,
                              crop_labels=crop_labels, pairing=pairing, overwrite=overwrite)


def instructions(n: int) -> str:
    return (
        f"Visual Turing test: {n} volumes in volumes/ (NIfTI), named turing_001 ... in random order.\n"
        "Some contain real tumours, the others synthetic tumours. For each volume, write in reader_sheet.csv,\n"
        "column 'answer', one of: real, synthetic, unsure. Keep one copy of the sheet per reader and name\n"
        "it after the reader (e.g. reader_A.csv). Look at the volumes in any viewer, in 3D (scroll through\n"
        "the slices); do not compare file sizes or metadata.\n"
    )
