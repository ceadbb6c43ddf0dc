"""The report folder: summary.json, cases.csv, lesions.csv, report.md and PNG figures, each written atomically.

report.md has, per label, a table laid out like Quinton et al. 2026 Table 3 (one row per prediction folder,
mean ± std of each metric), the paired tests against each baseline, and a detection table by lesion size. The
figures: per-case Dice differences against each baseline (as Quinton et al. 2026 Fig. 9), box plots of every
metric, and lesion sensitivity by size bin. Figures use matplotlib's Agg canvas (no display needed).
"""

from __future__ import annotations

import csv
import os
import re

import numpy as np

from nnunetv2_tumorsynth.evaluation.lesions import size_bin_names
from nnunetv2_tumorsynth.evaluation.metrics import METRICS
from nnunetv2_tumorsynth.figures import save_figure
from nnunetv2_tumorsynth.files import atomic_path, write_json_atomic

#: Column titles; fractions are shown in percent, distances in mm.
TITLES = {"dice": "Dice (%)", "nsd": "NSD@{tol} mm (%)", "precision": "Precision (%)", "recall": "Recall (%)",
          "hd": "HD (mm)", "hd95": "HD95 (mm)"}
PERCENT = {"dice", "nsd", "precision", "recall"}
CASE_COLUMNS = ["folder", "role", "case", "label", "label_name", "dice", "nsd", "precision", "recall", "hd_mm",
                "hd95_mm", "reference_voxels", "prediction_voxels", "reference_volume_ml", "prediction_volume_ml",
                "flag", "lesions", "detected_lesions", "predicted_components", "false_positives"]
LESION_COLUMNS = ["folder", "role", "case", "label", "label_name", "lesion", "voxels", "volume_ml", "radius_mm",
                  "size_bin", "overlap", "detected"]


def safe_name(text: str) -> str:
    """``text`` with every character other than letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def figure_names(summary: dict) -> dict[str, list[str]]:
    """File names of the figures per label: box plots, sensitivity by size, Dice differences per baseline."""
    names: dict[str, list[str]] = {}
    for label in summary["settings"]["labels"]:
        names[label] = [f"boxplots_label{label}.png"]
        if label in summary["settings"]["lesion_labels"]:
            names[label].append(f"sensitivity_by_size_label{label}.png")
        for comparison in summary["comparisons"]:
            names[label].append(dice_difference_name(comparison, label))
    return names


def dice_difference_name(comparison: dict, label: str) -> str:
    return (f"dice_difference_{safe_name(comparison['prediction'])}_vs_{safe_name(comparison['baseline'])}"
            f"_label{label}.png")


def _fmt(value: float | None, percent: bool, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.{digits}f}" if percent else f"{value:.2f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _mean_std(folder: dict, label: str, metric: str) -> str:
    mean, std = folder["mean"][label][metric], folder["std"][label][metric]
    text = _fmt(mean, metric in PERCENT)
    return text if std is None or mean is None else f"{text} ± {_fmt(std, metric in PERCENT)}"


def _p(value: float | None) -> str:
    return "n/a" if value is None else (f"{value:.3g}" if value >= 1e-4 else f"{value:.1e}")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


def label_tables(summary: dict, label: str) -> list[str]:
    """Markdown lines for one label: metrics table, undefined counts, paired tests, detection by size."""
    settings = summary["settings"]
    tol = f"{settings['tolerance_mm']:g}"
    lines = [f"## Label {label} ({settings['labels'][label]})", ""]
    header = ["Folder", "Cases"] + [TITLES[m].format(tol=tol) for m in METRICS]
    rows = [[name, str(f["n_cases"])] + [_mean_std(f, label, m) for m in METRICS]
            for name, f in summary["folders"].items()]
    lines += _table(header, rows) + [""]
    notes = []
    for name, f in summary["folders"].items():
        undefined = {m: n for m, n in f["n_undefined"][label].items() if n}
        flags = {k: n for k, n in f["flags"][label].items() if n}
        if undefined or flags:
            notes.append(f"- {name}: undefined (excluded from means): "
                         + (", ".join(f"{m} {n}" for m, n in undefined.items()) or "none")
                         + "; empty-mask cases: " + (", ".join(f"{k} {n}" for k, n in flags.items()) or "none"))
    if notes:
        lines += notes + [""]
    if summary["comparisons"]:
        lines += ["Paired one-tailed tests, prediction better than baseline (difference = prediction - baseline):",
                  ""]
        rows = []
        for comparison in summary["comparisons"]:
            for metric in METRICS:
                t = comparison["tests"][label][metric]
                diff = t["mean_difference"]
                rows.append([f"{comparison['prediction']} vs {comparison['baseline']}", TITLES[metric].format(tol=tol),
                             str(t["n_pairs"]), _fmt(diff, metric in PERCENT, 2), t["alternative"],
                             _p(t["t_p_value"]), _p(t["wilcoxon_p_value"])])
        lines += _table(["Comparison", "Metric", "Pairs", "Mean difference", "H1", "t-test p", "Wilcoxon p"], rows)
        lines += [""]
    if label in settings["lesion_labels"]:
        bins = size_bin_names(settings["size_bins_mm"])
        lines += ["Lesion detection by size (equivalent-sphere radius in mm; detected / lesions, sensitivity):", ""]
        rows = []
        for name, f in summary["folders"].items():
            lesions = f["lesions"][label]
            cells = [f"{b['n_detected']}/{b['n_lesions']} ({_percent(b['sensitivity'])})" for b in lesions["by_size"]]
            rows.append([name] + cells + [
                f"{lesions['n_detected']}/{lesions['n_lesions']} ({_percent(lesions['sensitivity'])})",
                _percent(lesions["precision"]), str(lesions["n_false_positives"]),
                _fmt(lesions["false_positives_per_case"], False)])
        lines += _table(["Folder"] + [f"{b} mm" for b in bins]
                        + ["All lesions", "Lesion precision", "False positives", "FP per case"], rows) + [""]
    return lines


def format_tables(summary: dict) -> str:
    """The tables of report.md (what the command prints), as markdown."""
    lines = []
    for label in summary["settings"]["labels"]:
        lines += label_tables(summary, label)
    return "\n".join(lines)


def report_markdown(summary: dict) -> str:
    """The whole report.md: inputs, tables, conventions and figures."""
    settings = summary["settings"]
    lines = ["# Segmentation evaluation (tumorsynth_evaluate)", "",
             f"Reference: `{settings['reference_folder']}`; dataset.json: `{settings['dataset_json']}`", ""]
    for name, f in summary["folders"].items():
        line = f"- {name} ({f['role']}): `{f['path']}`, {f['n_cases']} cases"
        if f["missing_cases"]:
            line += f"; missing (not evaluated): {', '.join(f['missing_cases'])}"
        if f["extra_files"]:
            line += f"; without a reference (ignored): {', '.join(f['extra_files'])}"
        lines.append(line)
    lines += ["", "Dice, NSD, precision and recall in percent: mean ± sample standard deviation over cases. "
              "Table layout as Quinton et al. 2026, Table 3.", "", format_tables(summary), "## Conventions", ""]
    lines += [f"- **{key}**: {text}" for key, text in summary["conventions"].items()]
    lines += ["", "## Figures", ""]
    for names in figure_names(summary).values():
        lines += [f"![{name}]({name})" for name in names]
    return "\n".join(lines) + "\n"


def write_csvs(summary: dict, output_folder: str) -> None:
    """cases.csv (one row per folder, case and label) and lesions.csv (one row per reference lesion)."""
    names = summary["settings"]["labels"]
    blank = lambda v: "" if v is None else v
    case_rows, lesion_rows = [], []
    for folder, f in summary["folders"].items():
        for c in f["metric_per_case"]:
            for label, m in c["metrics"].items():
                row = {"folder": folder, "role": f["role"], "case": c["case"], "label": label,
                       "label_name": names[label], "hd_mm": blank(m["hd"]), "hd95_mm": blank(m["hd95"])}
                row.update({k: blank(m[k]) for k in ("dice", "nsd", "precision", "recall", "reference_voxels",
                                                     "prediction_voxels", "reference_volume_ml",
                                                     "prediction_volume_ml", "flag")})
                lesions = c["lesions"].get(label)
                if lesions is not None:
                    row.update(lesions=len(lesions["lesions"]),
                               detected_lesions=sum(x["detected"] for x in lesions["lesions"]),
                               predicted_components=lesions["predicted_components"],
                               false_positives=lesions["false_positives"])
                    for x in lesions["lesions"]:
                        lesion_rows.append({"folder": folder, "role": f["role"], "case": c["case"], "label": label,
                                            "label_name": names[label], **x})
                case_rows.append(row)
    for filename, columns, rows in (("cases.csv", CASE_COLUMNS, case_rows),
                                    ("lesions.csv", LESION_COLUMNS, lesion_rows)):
        with atomic_path(os.path.join(output_folder, filename)) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)


def plot_boxplots(summary: dict, label: str, path: str) -> None:
    """One panel per metric, one box per folder (defined values only, each case shown as a dot)."""
    from matplotlib.figure import Figure

    names = list(summary["folders"])
    fig = Figure(figsize=(4 + 1.2 * len(names) * 3, 7), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    tol = f"{summary['settings']['tolerance_mm']:g}"
    for ax, metric in zip(axes, METRICS):
        scale = 100.0 if metric in PERCENT else 1.0
        data = [[scale * c["metrics"][label][metric] for c in f["metric_per_case"]
                 if c["metrics"][label][metric] is not None] for f in summary["folders"].values()]
        positions = list(range(1, len(names) + 1))
        ax.boxplot([d if d else [np.nan] for d in data], positions=positions, widths=0.5, showfliers=False)
        for x, values in zip(positions, data):
            ax.plot(np.full(len(values), x) + np.linspace(-0.08, 0.08, len(values)), values, "o", ms=3, alpha=0.6)
        ax.set_xticks(positions, names, rotation=20, fontsize=8)
        ax.set_title(TITLES[metric].format(tol=tol))
    fig.suptitle(f"Label {label} ({summary['settings']['labels'][label]}): per-case metrics")
    save_figure(fig, path)


def plot_sensitivity_by_size(summary: dict, label: str, path: str) -> None:
    """Grouped bars: lesion sensitivity per size bin and folder, with the number of lesions per bin."""
    from matplotlib.figure import Figure

    bins = size_bin_names(summary["settings"]["size_bins_mm"])
    names = list(summary["folders"])
    fig = Figure(figsize=(2 + 1.5 * len(bins), 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(names)
    for i, (name, f) in enumerate(summary["folders"].items()):
        sens = [100.0 * (b["sensitivity"] or 0.0) for b in f["lesions"][label]["by_size"]]
        ax.bar(np.arange(len(bins)) + (i - (len(names) - 1) / 2) * width, sens, width, label=name)
    counts = [b["n_lesions"] for b in next(iter(summary["folders"].values()))["lesions"][label]["by_size"]]
    ax.set_xticks(np.arange(len(bins)), [f"{b} mm\n(n={n})" for b, n in zip(bins, counts)])
    ax.set_ylim(0, 105)
    ax.set_ylabel("Lesion sensitivity (%)")
    ax.set_xlabel("Equivalent-sphere radius")
    ax.legend(fontsize=8)
    ax.set_title(f"Label {label} ({summary['settings']['labels'][label]}): detection by size")
    save_figure(fig, path)


def plot_dice_differences(summary: dict, comparison: dict, label: str, path: str) -> None:
    """Histogram of per-case Dice differences (prediction - baseline), as Quinton et al. 2026 Fig. 9."""
    from matplotlib.figure import Figure

    values = [100.0 * d["difference"] for d in comparison["dice_differences"][label] if d["difference"] is not None]
    test = comparison["tests"][label]["dice"]
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    if values:
        ax.hist(values, bins=max(5, min(30, len(values))), color="tab:blue", alpha=0.8)
        ax.axvline(float(np.mean(values)), color="tab:red", label=f"mean {np.mean(values):+.1f}")
    ax.axvline(0.0, color="black", linestyle="--", linewidth=1)
    # one line per model: nnU-Net trainer names are long enough to run off a 6-inch figure
    ax.set_xlabel(f"Dice difference (points)\n{comparison['prediction']}\nminus {comparison['baseline']}", fontsize=8)
    ax.set_ylabel("Cases")
    ax.set_title(f"Label {label} ({summary['settings']['labels'][label]}): n = {len(values)}, one-tailed t-test "
                 f"p = {_p(test['t_p_value'])}, Wilcoxon p = {_p(test['wilcoxon_p_value'])}", fontsize=9)
    if values:
        ax.legend(fontsize=8)
    save_figure(fig, path)


def write_report(summary: dict, output_folder: str) -> list[str]:
    """Write every report file into ``output_folder`` (created if needed); returns their paths."""
    os.makedirs(output_folder, exist_ok=True)
    write_json_atomic(summary, os.path.join(output_folder, "summary.json"))
    write_csvs(summary, output_folder)
    with atomic_path(os.path.join(output_folder, "report.md")) as tmp, open(tmp, "w") as handle:
        handle.write(report_markdown(summary))
    written = [os.path.join(output_folder, n) for n in ("summary.json", "cases.csv", "lesions.csv", "report.md")]
    for label in summary["settings"]["labels"]:
        path = os.path.join(output_folder, f"boxplots_label{label}.png")
        plot_boxplots(summary, label, path)
        written.append(path)
        if label in summary["settings"]["lesion_labels"]:
            path = os.path.join(output_folder, f"sensitivity_by_size_label{label}.png")
            plot_sensitivity_by_size(summary, label, path)
            written.append(path)
        for comparison in summary["comparisons"]:
            path = os.path.join(output_folder, dice_difference_name(comparison, label))
            plot_dice_differences(summary, comparison, label, path)
            written.append(path)
    return written
