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
    from nnunetv2_tumorsynth.inspection.preview import read_dataset_json, read_generation_record, resolve_raw_dataset

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
    if not foreground.any():
        return tuple(slice(0, n) for n in label.shape)
    where = np.argwhere(foreground)
    margin = [int(math.ceil(margin_mm / float(s))) for s in spacing]
    lo = np.maximum(where.min(0) - margin, 0)
    hi = np.minimum(where.max(0) + 1 + np.asarray(margin), label.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


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


def export_turing_test(cases: Sequence[TuringCase], out_folder: str, key_folder: str, k: int | None = None,
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


def export_from_replace_real(real_dataset: str, replaced_dataset: str, out_folder: str, key_folder: str,
                             k: int | None = None, seed: int | None = None, crop_margin_mm: float | None = None,
                             crop_labels: Sequence[int] | None = None, pairing: str = "same",
                             overwrite: bool = False) -> dict:
    """:func:`export_turing_test` on the pairs of :func:`cases_from_replace_real` (what ``tumorsynth_turing
    export`` runs). ``crop_labels`` default: the organ and tumour labels of the real dataset's dataset.json."""
    from nnunetv2_tumorsynth.inspection.preview import dataset_labels, resolve_raw_dataset

    cases = cases_from_replace_real(real_dataset, replaced_dataset)
    if crop_labels is None:
        crop_labels = list(dataset_labels(resolve_raw_dataset(real_dataset)))
    return export_turing_test(cases, out_folder, key_folder, k, seed, crop_margin_mm, crop_labels, pairing, overwrite)


def instructions(n: int) -> str:
    return (
        f"Visual Turing test: {n} volumes in volumes/ (NIfTI), named turing_001 ... in random order.\n"
        "Some contain real tumours, the others synthetic tumours. For each volume, write in reader_sheet.csv,\n"
        "column 'answer', one of: real, synthetic, unsure. Keep one copy of the sheet per reader and name\n"
        "it after the reader (e.g. reader_A.csv). Look at the volumes in any viewer, in 3D (scroll through\n"
        "the slices); do not compare file sizes or metadata.\n"
    )


# ------------------------------------------------------------------------------------------------ scoring


def read_key(path: str) -> dict[str, str]:
    """{volume id: "real" | "synthetic"} from a key written by :func:`export_turing_test`."""
    import json

    if os.path.isdir(path):
        path = os.path.join(path, KEY_FILE)
    try:
        with open(path) as f:
            key = json.load(f)
    except FileNotFoundError as error:
        raise TuringError(f"answer key {path} does not exist") from error
    truth = {item["id"]: item["truth"] for item in key["items"]}
    bad = sorted(v for v in truth.values() if v not in ("real", "synthetic"))
    if bad:
        raise TuringError(f"{path}: truth values must be real or synthetic, found {bad}")
    return truth


def read_sheet(path: str, ids: Sequence[str]) -> dict[str, str]:
    """{volume id: answer} from a filled reader sheet (CSV with columns id, answer; case and spaces ignored).

    Every id of the key must be answered with real, synthetic or unsure; the error lists what is wrong.
    """
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError as error:
        raise TuringError(f"reader sheet {path} does not exist") from error
    if rows and not {"id", "answer"} <= {(k or "").strip().lower() for k in rows[0]}:
        raise TuringError(f"{path}: the header must name the columns 'id' and 'answer'")
    answers: dict[str, str] = {}
    problems = []
    for row in rows:
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        volume, answer = row["id"], row["answer"].lower()
        if not volume:
            continue
        if volume in answers:
            problems.append(f"{volume} answered twice")
        if answer not in ANSWERS:
            problems.append(f"{volume}: answer {row['answer']!r} is not one of {', '.join(ANSWERS)}")
        answers[volume] = answer
    missing = sorted(set(ids) - set(answers))
    unknown = sorted(set(answers) - set(ids))
    if missing:
        problems.append(f"no answer for {', '.join(missing)}")
    if unknown:
        problems.append(f"ids not in the key: {', '.join(unknown)}")
    if problems:
        raise TuringError(f"{path}: " + "; ".join(problems))
    return answers


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def reader_scores(answers: dict[str, str], truth: dict[str, str]) -> dict:
    """Counts and rates of one reader (definitions in the module docstring)."""
    counts = {f"{t}_called_{a}": 0 for t in ("real", "synthetic") for a in ANSWERS}
    for volume, true in truth.items():
        counts[f"{true}_called_{answers[volume]}"] += 1
    n_real = sum(counts[f"real_called_{a}"] for a in ANSWERS)
    n_synthetic = sum(counts[f"synthetic_called_{a}"] for a in ANSWERS)
    tp, tn = counts["synthetic_called_synthetic"], counts["real_called_real"]
    fn, fp = counts["synthetic_called_real"], counts["real_called_synthetic"]
    unsure = counts["real_called_unsure"] + counts["synthetic_called_unsure"]
    return {
        **counts,
        "n_real": n_real,
        "n_synthetic": n_synthetic,
        "n_unsure": unsure,
        "sensitivity": _ratio(tp, n_synthetic),
        "specificity": _ratio(tn, n_real),
        "accuracy": _ratio(tp + tn, n_real + n_synthetic),
        "sensitivity_decided": _ratio(tp, tp + fn),
        "specificity_decided": _ratio(tn, tn + fp),
        "accuracy_decided": _ratio(tp + tn, tp + tn + fp + fn),
    }


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of a (subjects, categories) table of how many raters chose each category.

    Every subject must be rated by the same number m >= 2 of raters. P_i = (sum_j n_ij^2 - m) / (m (m - 1)),
    P = mean_i P_i, p_j = sum_i n_ij / (N m), P_e = sum_j p_j^2, kappa = (P - P_e) / (1 - P_e); NaN when
    P_e = 1 (every rater chose one and the same category everywhere).
    """
    counts = np.asarray(counts, dtype=float)
    raters = counts.sum(1)
    if counts.ndim != 2 or counts.shape[0] == 0 or not np.allclose(raters, raters[0]) or raters[0] < 2:
        raise ValueError("fleiss_kappa needs a (subjects, categories) table with the same number (>= 2) of "
                         "ratings for every subject")
    m = raters[0]
    p_j = counts.sum(0) / counts.sum()
    p_i = (np.square(counts).sum(1) - m) / (m * (m - 1))
    p_bar, p_e = float(p_i.mean()), float(np.square(p_j).sum())
    return (p_bar - p_e) / (1 - p_e) if p_e < 1 - 1e-12 else math.nan


def rating_table(sheets: dict[str, dict[str, str]], ids: Sequence[str]) -> np.ndarray:
    """(volumes, 3) counts of the answers real / synthetic / unsure across readers."""
    table = np.zeros((len(ids), len(ANSWERS)), dtype=int)
    for answers in sheets.values():
        for i, volume in enumerate(ids):
            table[i, ANSWERS.index(answers[volume])] += 1
    return table


def score_turing(sheet_paths: Sequence[str], key_path: str, reader_names: Sequence[str] | None = None) -> dict:
    """Per-reader scores, their mean and SD, and Fleiss' kappa across readers (None with one reader)."""
    truth = read_key(key_path)
    ids = sorted(truth)
    names = list(reader_names) if reader_names else [os.path.splitext(os.path.basename(p))[0] for p in sheet_paths]
    if len(names) != len(sheet_paths) or len(set(names)) != len(names):
        raise TuringError(f"reader names {names} must be unique, one per sheet (rename the sheets or pass names)")
    sheets = {name: read_sheet(path, ids) for name, path in zip(names, sheet_paths)}
    readers = {name: reader_scores(answers, truth) for name, answers in sheets.items()}
    summary = {}
    for metric in ("sensitivity", "specificity", "accuracy", "sensitivity_decided", "specificity_decided",
                   "accuracy_decided"):
        values = np.array([r[metric] for r in readers.values()], dtype=float)
        values = values[np.isfinite(values)]
        summary[metric] = {"mean": float(values.mean()) if values.size else math.nan,
                           "sd": float(values.std(ddof=1)) if values.size > 1 else math.nan}
    kappa = fleiss_kappa(rating_table(sheets, ids)) if len(sheets) >= 2 else None
    return {
        "key": os.path.abspath(key_path),
        "n_volumes": len(ids),
        "n_real": sum(v == "real" for v in truth.values()),
        "n_synthetic": sum(v == "synthetic" for v in truth.values()),
        "readers": readers,
        "mean_over_readers": summary,
        "fleiss_kappa": kappa,
        "definitions": DEFINITIONS,
    }


DEFINITIONS = {
    "sensitivity": "synthetic volumes answered synthetic / synthetic volumes (unsure counts as wrong); "
                   "Quinton et al. 2026 Table 2 'synthetic tumours', Hu et al. 2023 Table 2 'sensitivity'",
    "specificity": "real volumes answered real / real volumes (unsure counts as wrong); Quinton et al. 2026 "
                   "Table 2 'real tumours', Hu et al. 2023 Table 2 'specificity' (Chen et al. 2024 Table 1 swap "
                   "the two names)",
    "accuracy": "correct answers / all volumes (unsure counts as wrong)",
    "*_decided": "the same over definite answers only (unsure left out), as Hu et al. 2023 computed theirs",
    "fleiss_kappa": "Fleiss' kappa across readers over the categories real / synthetic / unsure "
                    "(Quinton et al. 2026 report -0.04); null with a single reader",
}


def _percent(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def markdown_scores(result: dict) -> str:
    """The scores as a Markdown report (one table row per reader, then the mean, then kappa and definitions)."""
    lines = [f"# Visual Turing test: {result['n_volumes']} volumes ({result['n_real']} real, "
             f"{result['n_synthetic']} synthetic)", "",
             "| reader | sensitivity % | specificity % | accuracy % | unsure | sensitivity % (decided) | "
             "specificity % (decided) | accuracy % (decided) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in result["readers"].items():
        lines.append(f"| {name} | {_percent(r['sensitivity'])} | {_percent(r['specificity'])} | "
                     f"{_percent(r['accuracy'])} | {r['n_unsure']} | {_percent(r['sensitivity_decided'])} | "
                     f"{_percent(r['specificity_decided'])} | {_percent(r['accuracy_decided'])} |")
    mean = result["mean_over_readers"]

    def cell(metric: str) -> str:
        m, s = mean[metric]["mean"], mean[metric]["sd"]
        return _percent(m) + ("" if isinstance(s, float) and math.isnan(s) else f" ± {100 * s:.1f}")

    lines.append(f"| mean ± SD | {cell('sensitivity')} | {cell('specificity')} | {cell('accuracy')} | | "
                 f"{cell('sensitivity_decided')} | {cell('specificity_decided')} | {cell('accuracy_decided')} |")
    kappa = result["fleiss_kappa"]
    lines += ["", "Fleiss' kappa across readers (real / synthetic / unsure): "
              + ("n/a (one reader)" if kappa is None else "undefined (all answers identical)"
                 if isinstance(kappa, float) and math.isnan(kappa) else f"{kappa:.3f}"), "", "Definitions:", ""]
    lines += [f"- {name}: {text}" for name, text in result["definitions"].items()]
    lines += ["", "Per reader, real / synthetic truth x answer counts:", "",
              "| reader | real→real | real→synthetic | real→unsure | synthetic→synthetic | synthetic→real | "
              "synthetic→unsure |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in result["readers"].items():
        lines.append(f"| {name} | {r['real_called_real']} | {r['real_called_synthetic']} | {r['real_called_unsure']} "
                     f"| {r['synthetic_called_synthetic']} | {r['synthetic_called_real']} | "
                     f"{r['synthetic_called_unsure']} |")
    return "\n".join(lines) + "\n"


def score_and_report(sheet_paths: Sequence[str], key_path: str, reader_names: Sequence[str] | None = None,
                     out_folder: str | None = None) -> tuple[dict, str]:
    """:func:`score_turing`, its Markdown report, and both files in ``out_folder`` when given (what
    ``tumorsynth_turing score`` runs). Returns (result, Markdown)."""
    result = score_turing(sheet_paths, key_path, reader_names)
    if out_folder is not None:
        write_scores(result, out_folder)
    return result, markdown_scores(result)


def write_scores(result: dict, out_folder: str) -> tuple[str, str]:
    """turing_scores.json and turing_scores.md in ``out_folder``; returns their paths."""
    from nnunetv2_tumorsynth.inspection.realism import json_safe

    os.makedirs(out_folder, exist_ok=True)
    json_path = os.path.join(out_folder, "turing_scores.json")
    md_path = os.path.join(out_folder, "turing_scores.md")
    write_json_atomic(json_safe(result), json_path)
    with atomic_path(md_path) as tmp, open(tmp, "w") as f:
        f.write(markdown_scores(result))
    return json_path, md_path
