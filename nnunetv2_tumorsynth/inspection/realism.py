"""Realism statistics: synthetic tumours compared with the real tumours of the same dataset, feature by feature.

No reader is needed: each tumour is reduced to a few numbers (:mod:`.features`), the real and the synthetic
distributions of each number are drawn side by side as histograms, and a two-sample Kolmogorov-Smirnov statistic
(``scipy.stats.ks_2samp``) says how far apart they are (0: the same empirical distribution, 1: no overlap).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from nnunetv2_tumorsynth.figures import new_figure, save_figure
from nnunetv2_tumorsynth.files import atomic_path, json_safe, write_json_atomic
from nnunetv2_tumorsynth.synthesis.features import (
    FEATURES,
    TEXTURE_FEATURES,
    sphericity_method,
    tumour_features,
)


@dataclass
class FeatureComparison:
    """One feature: sample sizes, medians, quartiles and the two-sample KS test (NaN values dropped)."""

    feature: str
    n_real: int
    n_synthetic: int
    median_real: float
    median_synthetic: float
    iqr_real: tuple[float, float]
    iqr_synthetic: tuple[float, float]
    ks_statistic: float
    ks_pvalue: float


def _finite(rows: list[dict], feature: str) -> np.ndarray:
    values = np.array([r.get(feature, math.nan) for r in rows], dtype=float)
    return values[np.isfinite(values)]


def compare(real: list[dict], synthetic: list[dict],
            features: Sequence[str] = tuple(FEATURES)) -> list[FeatureComparison]:
    """Per feature, the real and synthetic samples summarised and compared with ``scipy.stats.ks_2samp``."""
    out = []
    for feature in features:
        a, b = _finite(real, feature), _finite(synthetic, feature)
        if len(a) and len(b):
            test = stats.ks_2samp(a, b)
            statistic, pvalue = float(test.statistic), float(test.pvalue)
        else:
            statistic = pvalue = math.nan

        def quartiles(v):
            return (float(np.percentile(v, 25)), float(np.percentile(v, 75))) if len(v) else (math.nan, math.nan)

        out.append(FeatureComparison(feature, len(a), len(b), float(np.median(a)) if len(a) else math.nan,
                                     float(np.median(b)) if len(b) else math.nan, quartiles(a), quartiles(b),
                                     statistic, pvalue))
    return out


def mean_ks(comparisons: list[FeatureComparison], features: Sequence[str] | None = None) -> float:
    """Mean KS statistic over ``features`` (default all; NaNs left out): one number, lower = closer."""
    values = [c.ks_statistic for c in comparisons
              if (features is None or c.feature in features) and not math.isnan(c.ks_statistic)]
    return float(np.mean(values)) if values else math.nan


def write_histograms(real: list[dict], synthetic: list[dict], png_path: str, title: str = "",
                     features: Sequence[str] = tuple(FEATURES), comparisons: list[FeatureComparison] | None = None,
                     labels: tuple[str, str] = ("real", "synthetic")) -> None:
    """One panel per feature: the real and synthetic histograms on shared bins, densities, KS in the title."""
    by_feature = {c.feature: c for c in (comparisons or compare(real, synthetic, features))}
    columns = 3
    rows = int(math.ceil(len(features) / columns))
    fig, axes = new_figure(rows, columns, figsize=(4.2 * columns, 3.2 * rows))
    for ax, feature in zip(axes.ravel(), features):
        a, b = _finite(real, feature), _finite(synthetic, feature)
        both = np.concatenate([a, b])
        if both.size == 0:
            ax.set_visible(False)
            continue
        lo, hi = float(both.min()), float(both.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 16)
        width = (bins[1] - bins[0]) * 0.42
        centres = (bins[:-1] + bins[1:]) / 2
        for values, offset, colour, name in ((a, -width / 2, "tab:blue", labels[0]),
                                             (b, width / 2, "tab:orange", labels[1])):
            if values.size:
                counts, _ = np.histogram(values, bins)
                ax.bar(centres + offset, counts / values.size, width=width, color=colour,
                       label=f"{name} (n={values.size})")
        comparison = by_feature.get(feature)
        ks = "" if comparison is None or math.isnan(comparison.ks_statistic) else \
            f"\nKS D = {comparison.ks_statistic:.2f}, p = {comparison.ks_pvalue:.2g}"
        ax.set_title(f"{FEATURES.get(feature, feature)}{ks}", fontsize=9)
        ax.set_ylabel("fraction of tumours", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(features):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, png_path, dpi=90)


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def markdown_report(comparisons: list[FeatureComparison], real_name: str, synthetic_name: str,
                    notes: Sequence[str] = ()) -> str:
    """Markdown table of :func:`compare`'s result with the definitions of the features."""
    lines = [f"# Realism statistics: {synthetic_name} vs {real_name}", "",
             "| feature | n real | n synthetic | median real [IQR] | median synthetic [IQR] | KS D | p |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in comparisons:
        lines.append(
            f"| {FEATURES.get(c.feature, c.feature)} | {c.n_real} | {c.n_synthetic} | {_fmt(c.median_real)} "
            f"[{_fmt(c.iqr_real[0])}, {_fmt(c.iqr_real[1])}] | {_fmt(c.median_synthetic)} "
            f"[{_fmt(c.iqr_synthetic[0])}, {_fmt(c.iqr_synthetic[1])}] | {_fmt(c.ks_statistic, 2)} | "
            f"{_fmt(c.ks_pvalue, 2)} |")
    lines += ["", f"Mean KS D over the features: {_fmt(mean_ks(comparisons), 3)}; over the texture features "
              f"({', '.join(TEXTURE_FEATURES)}): {_fmt(mean_ks(comparisons, TEXTURE_FEATURES), 3)} "
              "(0 = same distributions; lower = closer to the real tumours).", ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "Definitions: see `nnunetv2_tumorsynth.synthesis.features` (docs/inspection.md).", ""]
    return "\n".join(lines)


def write_rows_csv(rows: list[dict], path: str) -> None:
    """Per-tumour features as CSV (one row per tumour; columns: the union of the keys, in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def write_report(real: list[dict], synthetic: list[dict], out_folder: str, real_name: str, synthetic_name: str,
                 notes: Sequence[str] = (), extra: dict | None = None) -> dict:
    """realism.json, realism.md, realism_features.csv and realism_histograms.png in ``out_folder``.

    ``real`` / ``synthetic``: per-tumour feature dicts (with identifying keys such as ``case``). Returns the
    JSON content.
    """
    os.makedirs(out_folder, exist_ok=True)
    comparisons = compare(real, synthetic)
    method = sphericity_method()
    notes = [*notes, f"sphericity surface: {method}"]
    report = {
        "real": real_name,
        "synthetic": synthetic_name,
        "n_real": len(real),
        "n_synthetic": len(synthetic),
        "sphericity_method": method,
        "features": {k: v for k, v in FEATURES.items()},
        "comparison": [c.__dict__ for c in comparisons],
        "mean_ks_statistic": mean_ks(comparisons),
        "mean_ks_statistic_texture": mean_ks(comparisons, TEXTURE_FEATURES),
        "notes": list(notes),
        **(extra or {}),
    }
    write_json_atomic(json_safe(report), os.path.join(out_folder, "realism.json"))
    markdown = markdown_report(comparisons, real_name, synthetic_name, notes)
    with atomic_path(os.path.join(out_folder, "realism.md")) as tmp, open(tmp, "w") as f:
        f.write(markdown)
    write_rows_csv([{"kind": "real", **r} for r in real] + [{"kind": "synthetic", **r} for r in synthetic],
                   os.path.join(out_folder, "realism_features.csv"))
    write_histograms(real, synthetic, os.path.join(out_folder, "realism_histograms.png"),
                     title=f"{synthetic_name} vs {real_name}", comparisons=comparisons)
    return report


# ------------------------------------------------------------------------------------------------ datasets


def items_features(items: Iterable, shell_mm: float | None = None, progress: bool = False,
                   description: str = "tumours") -> list[dict]:
    """Features of :class:`nnunetv2_tumorsynth.preview.TumourItem` objects, one dict per tumour.

    Each dict holds ``case``, ``entry``, ``source_case`` and the features. The organ reference of an image
    (organ label minus all its tumours) is computed once per image.
    """
    rows = []
    current = None  # (image array of the last item, its organ (mean, SD)); items of one image come together
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=description, unit="tumour")
    for item in items:
        if current is None or current[0] is not item.after:
            values = item.after[item.organ & ~item.tumours].astype(np.float64)
            current = (item.after, (float(values.mean()), float(values.std())) if values.size else (math.nan, math.nan))
        features = tumour_features(item.after, item.mask, item.organ, item.spacing,
                                   other_tumours=item.tumours & ~item.mask, shell_mm=shell_mm, organ_stats=current[1])
        rows.append({"case": item.case, "entry": item.entry, "source_case": item.source_case, **features})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def realism(synthetic: str, out_folder: str, *, real: str | None = None, source: str | None = None,
            shell_mm: float | None = None, dataset: str | None = None, configuration: str | None = None,
            plans_identifier: str | None = None, organ_label: str | int | None = None,
            tumour_label: str | int | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Realism statistics of the synthetic tumours in ``synthetic`` against real tumours; writes the report.

    synthetic: a dataset written by ``tumorsynth_generate`` (folder, id or name; its synthetic tumours are
    found through its record, see ``preview.synthetic_components``), or a synthesis bank folder (or the
    trainer's fold folder holding it). real: the raw dataset of the real tumours (default: the generated
    dataset's source dataset). For a bank the real tumours are those of the preprocessed training cases
    of the bank's fold (same intensity scale as the entries; ``real`` is not used; validation cases are never
    read). source: the raw dataset of the source images if the record's paths moved. shell_mm: organ reference
    restricted to a shell around each tumour. Writes realism.json / .md / _features.csv / _histograms.png into
    ``out_folder`` (refused when realism.json exists there, unless ``overwrite``) and returns the JSON content.
    """
    from nnunetv2_tumorsynth.inspection import items as readers

    if os.path.isfile(os.path.join(out_folder, "realism.json")) and not overwrite:
        raise FileExistsError(f"{os.path.join(out_folder, 'realism.json')} exists; pass --overwrite or choose another "
                              f"output folder")
    path = synthetic if os.path.exists(synthetic) else readers.resolve_raw_dataset(synthetic)
    kind = readers.input_kind(path)
    notes = []
    if kind == "bank":
        bank = path if readers.is_bank(path) else os.path.join(path, "synthesis_bank")
        preprocessed = readers.bank_dataset(bank, dataset, configuration, plans_identifier, organ_label, tumour_label)
        synthetic_rows = items_features(readers.bank_items(bank, preprocessed), shell_mm, progress,
                                        "synthetic tumours")
        fold = os.path.basename(os.path.dirname(os.path.abspath(bank)))
        cases = preprocessed.fold_cases(fold[len("fold_"):])[0] if fold.startswith("fold_") else None
        real_rows = items_features(readers.preprocessed_real_items(preprocessed, cases), shell_mm, progress,
                                   "real tumours")
        real_name = (f"{preprocessed.name} preprocessed ({preprocessed.configuration}, {preprocessed.plans_identifier}"
                     f"{f', training cases of {fold}' if cases is not None else ''})")
        synthetic_name = f"bank {bank}"
        notes.append("intensities are nnU-Net's normalised ones (bank entries live in the preprocessed space)")
    elif kind == "generated":
        images = readers.read_generation_record(path)
        if real is None:
            real = source or next((i.source_dataset for i in images if i.source_dataset), None)
            if real is None:
                raise readers.PreviewInputError(f"{path}: the record does not name the source dataset; pass --real")
        real = readers.resolve_raw_dataset(real)
        synthetic_rows = items_features(readers.generated_items(path, source, None, organ_label, tumour_label),
                                        shell_mm, progress, "synthetic tumours")
        real_rows = items_features(readers.real_items(real, None, organ_label, tumour_label), shell_mm, progress,
                                   "real tumours")
        modes = sorted({i.mode for i in images if not i.real})
        real_name, synthetic_name = os.path.basename(real), os.path.basename(path)
        if "replaced" in modes:
            notes.append("--replace-real: synthetic tumours fill the real tumours' own masks, so volume and "
                         "sphericity match the real ones of the replaced cases by construction; compare contrast, "
                         "heterogeneity and border gradient")
        textures = sorted({str(i.record.get("texture")) for i in images if not i.real})
        notes.append(f"texture backend(s) of the synthetic tumours: {', '.join(textures)}")
    else:
        raise readers.PreviewInputError(f"{path} is a raw dataset without a generation record; give a dataset written "
                                        f"by tumorsynth_generate or a synthesis bank as the synthetic input")
    if not real_rows:
        raise readers.PreviewInputError(f"no real tumour found in {real_name}")
    if not synthetic_rows:
        raise readers.PreviewInputError(f"no synthetic tumour found in {synthetic_name}")
    notes.insert(0, "organ reference: " + ("whole organ minus tumours" if shell_mm is None else
                                           f"organ within {shell_mm:g} mm of the tumour, minus tumours"))
    return write_report(real_rows, synthetic_rows, out_folder, real_name, synthetic_name, notes,
                        extra={"input_kind": kind, "shell_mm": shell_mm})
