"""Scoring the visual Turing test: readers' sheets against the key; sensitivity, specificity, accuracy, Fleiss' kappa
(definitions in :mod:`.turing`)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence

import numpy as np

from nnunetv2_tumorsynth.files import atomic_path, write_json_atomic
from nnunetv2_tumorsynth.inspection.turing import ANSWERS, KEY_FILE, TuringError


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
    from nnunetv2_tumorsynth.files import json_safe

    os.makedirs(out_folder, exist_ok=True)
    json_path = os.path.join(out_folder, "turing_scores.json")
    md_path = os.path.join(out_folder, "turing_scores.md")
    write_json_atomic(json_safe(result), json_path)
    with atomic_path(md_path) as tmp, open(tmp, "w") as f:
        f.write(markdown_scores(result))
    return json_path, md_path
