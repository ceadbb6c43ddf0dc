"""From per-case results to the summary: means per folder and label, lesion detection by size, comparisons.

The summary is what summary.json holds and what :func:`nnunetv2_tumorsynth.evaluation.evaluate_folders`
returns: plain JSON types, undefined values as None (never NaN or inf).
"""

from __future__ import annotations

import numpy as np

from nnunetv2_tumorsynth.evaluation.lesions import LESION_MATCHING, size_bin_names
from nnunetv2_tumorsynth.evaluation.metrics import (
    EMPTY_MASK_CONVENTION,
    HD95_DEFINITION,
    HIGHER_IS_BETTER,
    METRICS,
    NSD_DEFINITION,
)
from nnunetv2_tumorsynth.evaluation.statistics import paired_tests
from nnunetv2_tumorsynth.files import json_safe

FLAGS = ("both_empty", "reference_empty", "prediction_empty")
STATISTICS = (
    "Means and sample standard deviations (ddof = 1) over the cases where a value is defined; undefined values "
    "are counted, never averaged. Comparisons with a baseline pair cases by file name and leave out pairs with an "
    "undefined value; one-tailed paired t-test (scipy.stats.ttest_rel, the test of Quinton et al. 2026) and "
    "Wilcoxon signed-rank test (scipy.stats.wilcoxon), alternative: the prediction is better than the baseline "
    "(larger Dice, NSD, precision, recall; smaller HD, HD95)."
)


def conventions(settings: dict) -> dict[str, str]:
    """The definitions and conventions behind every number, written into summary.json and report.md."""
    return {"empty_masks": EMPTY_MASK_CONVENTION, "hd95": HD95_DEFINITION,
            "nsd": NSD_DEFINITION.replace("t mm", f"{settings['tolerance_mm']:g} mm"),
            "lesions": LESION_MATCHING + f" Minimum overlap: {settings['min_overlap']:g}; size bins (radius, mm): "
            + ", ".join(size_bin_names(settings["size_bins_mm"])) + ".",
            "statistics": STATISTICS,
            "spacing": "Each case uses its reference image's spacing from the image header (anisotropic); both "
                       "masks are cropped to their joint bounding box plus "
                       f"{settings['crop_margin_voxels']} voxels before any distance computation."}


def _defined(values: list) -> np.ndarray:
    array = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return array[np.isfinite(array)]


def aggregate_metrics(cases: list[dict], label: str) -> dict:
    """Mean, std, median and counts of each metric of one label over cases (undefined values counted apart)."""
    out = {"mean": {}, "std": {}, "median": {}, "n_defined": {}, "n_undefined": {}}
    for metric in METRICS:
        values = [c["metrics"][label][metric] for c in cases]
        defined = _defined(values)
        out["mean"][metric] = float(defined.mean()) if defined.size else None
        out["std"][metric] = float(defined.std(ddof=1)) if defined.size > 1 else None
        out["median"][metric] = float(np.median(defined)) if defined.size else None
        out["n_defined"][metric] = int(defined.size)
        out["n_undefined"][metric] = len(values) - int(defined.size)
    out["flags"] = {flag: sum(c["metrics"][label]["flag"] == flag for c in cases) for flag in FLAGS}
    return out


def aggregate_lesions(cases: list[dict], label: str, size_bins_mm: list[float]) -> dict:
    """Lesion-wise sensitivity and precision, false positives per case and sensitivity per size bin."""
    lesions = [lesion for c in cases for lesion in c["lesions"][label]["lesions"]]
    n_predicted = sum(c["lesions"][label]["predicted_components"] for c in cases)
    n_fp = sum(c["lesions"][label]["false_positives"] for c in cases)
    n_detected = sum(lesion["detected"] for lesion in lesions)
    by_size = []
    for name in size_bin_names(size_bins_mm):
        in_bin = [lesion for lesion in lesions if lesion["size_bin"] == name]
        hits = sum(lesion["detected"] for lesion in in_bin)
        by_size.append({"bin": name, "n_lesions": len(in_bin), "n_detected": hits,
                        "sensitivity": hits / len(in_bin) if in_bin else None})
    return {"n_cases": len(cases), "n_lesions": len(lesions), "n_detected": n_detected,
            "sensitivity": n_detected / len(lesions) if lesions else None,
            "n_predicted_components": n_predicted, "n_false_positives": n_fp,
            "precision": (n_predicted - n_fp) / n_predicted if n_predicted else None,
            "false_positives_per_case": n_fp / len(cases) if cases else None, "by_size": by_size}


def compare(prediction: dict, baseline: dict, labels: list[str]) -> dict:
    """Paired tests of every metric and the per-case Dice differences, over the cases both folders have."""
    pred_cases = {c["case"]: c for c in prediction["metric_per_case"]}
    base_cases = {c["case"]: c for c in baseline["metric_per_case"]}
    cases = [case for case in pred_cases if case in base_cases]
    value = lambda c, label, metric: np.nan if c["metrics"][label][metric] is None else c["metrics"][label][metric]
    tests, differences = {}, {}
    for label in labels:
        tests[label] = {metric: paired_tests([value(pred_cases[c], label, metric) for c in cases],
                                             [value(base_cases[c], label, metric) for c in cases],
                                             HIGHER_IS_BETTER[metric]) for metric in METRICS}
        differences[label] = [{"case": c, "difference": value(pred_cases[c], label, "dice")
                               - value(base_cases[c], label, "dice")} for c in cases]
    return {"cases": cases, "tests": tests, "dice_differences": differences}


def build_summary(settings: dict, folders: list, per_case: list[dict], missing: dict[str, list[str]],
                  extra: dict[str, list[str]]) -> dict:
    """The whole summary. ``folders``: the prediction folder first, then the baselines (objects with ``name``,
    ``path``, ``role``); ``per_case``: results of :func:`nnunetv2_tumorsynth.evaluation.folders.evaluate_case`."""
    labels = list(settings["labels"])
    summary = {"tool": "tumorsynth_evaluate", "settings": settings, "conventions": conventions(settings),
               "folders": {}, "comparisons": []}
    for folder in folders:
        cases = [{"case": r["case"], "reference_file": r["reference_file"], "spacing": r["spacing"],
                  **json_safe(r["folders"][folder.name])} for r in per_case if folder.name in r["folders"]]
        entry = {"path": folder.path, "role": folder.role, "n_cases": len(cases),
                 "missing_cases": missing[folder.name], "extra_files": extra[folder.name], "metric_per_case": cases}
        per_label = {label: aggregate_metrics(cases, label) for label in labels}
        for key in ("mean", "std", "median", "n_defined", "n_undefined", "flags"):
            entry[key] = {label: per_label[label][key] for label in labels}
        entry["lesions"] = {label: aggregate_lesions(cases, label, settings["size_bins_mm"])
                            for label in settings["lesion_labels"]}
        summary["folders"][folder.name] = entry
    prediction = folders[0].name
    for baseline in folders[1:]:
        result = compare(summary["folders"][prediction], summary["folders"][baseline.name], labels)
        summary["comparisons"].append({"prediction": prediction, "baseline": baseline.name, **result})
    return json_safe(summary)
