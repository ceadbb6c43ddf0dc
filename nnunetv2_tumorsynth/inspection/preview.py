"""PNG montages of synthetic (or real) tumours: per tumour, axial, coronal and sagittal slices through its centre,
before and after, with the mask outline and the intensity window of the organ; one PNG per page of N tumours.

Volumes are reoriented to LPS for display (axis 0 inferior to superior, axis 1 anterior to posterior, axis 2
right to left): axial slices show the patient's anterior at the top and its left on the right (radiological
convention); coronal and sagittal slices show superior at the top, sagittal slices anterior on the left.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from nnunetv2_tumorsynth.figures import new_figure, save_figure
from nnunetv2_tumorsynth.files import atomic_path, write_json_atomic
from nnunetv2_tumorsynth.inspection.items import (
    TumourItem,
    bank_dataset,
    bank_items,
    generated_items,
    input_kind,
    is_bank,
    real_items,
    resolve_raw_dataset,
)

# ------------------------------------------------------------------------------------------------ drawing


def lps_reorientation(direction: Sequence[float] | None) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """(axis permutation, flips) that bring a (z, y, x) array with this direction to LPS display order.

    Output axis 0 runs inferior to superior, 1 anterior to posterior, 2 right to left. Each output axis takes
    the array axis whose direction is closest to it (as ``sitk.DICOMOrient`` does). None: identity.
    """
    if direction is None:
        return (0, 1, 2), (False, False, False)
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)  # [world axis, index axis (x, y, z)]
    used: list[int] = []
    permutation, flips = [], []
    for world in (2, 1, 0):  # S, P, L
        candidates = [c for c in range(3) if c not in used]
        index_axis = max(candidates, key=lambda c: abs(matrix[world, c]))
        used.append(index_axis)
        permutation.append(2 - index_axis)  # index axis x is array axis 2
        flips.append(bool(matrix[world, index_axis] < 0))
    return tuple(permutation), tuple(flips)


def reorient(array: np.ndarray, permutation: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    out = array.transpose(tuple(permutation))
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return out


def organ_window(image: np.ndarray, organ: np.ndarray, widen: float = 0.5) -> tuple[float, float]:
    """Display window: the organ's 1st-99th percentiles, widened by ``widen`` x their range on each side.

    Without organ voxels, the image's own 1st-99th percentiles.
    """
    values = image[organ] if organ.any() else image.ravel()
    low, high = (float(v) for v in np.percentile(values, [1, 99]))
    span = max(high - low, 1e-6)
    return low - widen * span, high + widen * span


@dataclass
class Panel:
    """One slice for display: 2D arrays, imshow extent in mm around the tumour centre, and origin."""

    before: np.ndarray | None
    after: np.ndarray
    mask: np.ndarray
    extent: tuple[float, float, float, float]
    origin: str


def tumour_panels(item: TumourItem, fov_mm: float = 60.0, fov_factor: float = 2.5) -> dict[str, Panel]:
    """Axial, coronal and sagittal slices through the tumour's centre, cropped to a square field of view.

    The field of view (mm) is max(fov_mm, fov_factor x the tumour's largest extent). The centre is the tumour
    voxel nearest the tumour's centre of mass.
    """
    permutation, flips = lps_reorientation(item.direction)
    spacing = tuple(item.spacing[a] for a in permutation)
    after = reorient(item.after, permutation, flips)
    before = None if item.before is None else reorient(item.before, permutation, flips)
    mask = reorient(item.mask, permutation, flips)
    voxels = np.argwhere(mask)
    centre_of_mass = voxels.mean(0)
    centre = voxels[np.argmin(((voxels - centre_of_mass) ** 2 * np.square(spacing)).sum(1))]
    extent_mm = (voxels.max(0) - voxels.min(0) + 1) * np.asarray(spacing)
    fov = max(fov_mm, fov_factor * float(extent_mm.max()))
    lo = [max(0, int(c) - int(math.ceil(fov / 2 / s))) for c, s in zip(centre, spacing)]
    hi = [min(n, int(c) + int(math.ceil(fov / 2 / s)) + 1) for c, n, s in zip(centre, mask.shape, spacing)]

    def edges(axis: int) -> tuple[float, float]:
        return (lo[axis] - centre[axis] - 0.5) * spacing[axis], (hi[axis] - 1 - centre[axis] + 0.5) * spacing[axis]

    def cut(array: np.ndarray | None, view: str) -> np.ndarray | None:
        if array is None:
            return None
        z, y, x = (int(c) for c in centre)
        zs, ys, xs = (slice(a, b) for a, b in zip(lo, hi))
        return {"axial": array[z, ys, xs], "coronal": array[zs, y, xs], "sagittal": array[zs, ys, x]}[view]

    (z0, z1), (y0, y1), (x0, x1) = edges(0), edges(1), edges(2)
    extents = {"axial": ((x0, x1, y1, y0), "upper"), "coronal": ((x0, x1, z0, z1), "lower"),
               "sagittal": ((y0, y1, z0, z1), "lower")}
    return {view: Panel(cut(before, view), cut(after, view), cut(mask, view), extent, origin)
            for view, (extent, origin) in extents.items()}


VIEWS = ("axial", "coronal", "sagittal")


def draw_page(items: Sequence[TumourItem], png_path: str, title: str = "", fov_mm: float = 60.0,
              dpi: int = 100) -> None:
    """One PNG: a row per tumour; columns axial, coronal, sagittal, each before and after (after only when no
    item of the page has a "before"). This tumour's outline in red, the image's other tumours in cyan."""
    stages = ("before", "after") if any(item.before is not None for item in items) else ("after",)
    columns = len(VIEWS) * len(stages)
    fig, axes = new_figure(len(items), columns, figsize=(2.2 * columns + 1.0, 2.45 * len(items) + 0.5))
    for row, item in zip(axes, items):
        reference = item.before if item.before is not None else item.after
        window = organ_window(reference, item.organ & ~item.tumours)
        panels = tumour_panels(item, fov_mm)
        others = _other_tumour_panels(item, fov_mm)
        for v, view in enumerate(VIEWS):
            panel = panels[view]
            for w, when in enumerate(stages):
                ax = row[len(stages) * v + w]
                image = panel.before if when == "before" else panel.after
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{view} {when}", fontsize=8)
                if image is None:
                    ax.text(0.5, 0.5, "(no before)", ha="center", va="center", transform=ax.transAxes, fontsize=8)
                    continue
                ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], extent=panel.extent,
                          origin=panel.origin, interpolation="nearest")
                if others[view].any():
                    ax.contour(others[view].astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.6,
                               extent=panel.extent, origin=panel.origin)
                if panel.mask.any():
                    ax.contour(panel.mask.astype(np.float32), levels=[0.5], colors="red", linewidths=0.9,
                               extent=panel.extent, origin=panel.origin)
                ax.set_aspect("equal")
                if v == 0 and when == "after":
                    _scale_bar(ax, panel)
        source = "" if item.source_case in ("", item.case) else f"\nfrom {item.source_case}"
        row[0].set_ylabel(f"{item.case}{source}\n{item.entry}\n{item.volume_ml:.2f} ml, {item.kind}", fontsize=8,
                          rotation=0, ha="right", va="center", labelpad=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, png_path, dpi=dpi)


def _other_tumour_panels(item: TumourItem, fov_mm: float) -> dict[str, np.ndarray]:
    """The image's other tumours (not this one) cut like :func:`tumour_panels` cuts this one."""
    shifted = TumourItem(item.case, item.entry, item.source_case, None, (item.tumours & ~item.mask).astype(np.uint8),
                         item.mask, item.organ, item.tumours, item.spacing, item.direction)
    return {view: panel.after.astype(bool) for view, panel in tumour_panels(shifted, fov_mm).items()}


def _scale_bar(ax, panel: Panel, length_mm: float = 10.0) -> None:
    """A yellow bar of ``length_mm`` in the bottom left corner of an image panel."""
    left, right = sorted(panel.extent[:2])
    low, high = sorted(panel.extent[2:])
    x = left + 0.06 * (right - left)
    y = low + 0.07 * (high - low) if panel.origin == "lower" else high - 0.07 * (high - low)
    ax.plot([x, x + length_mm], [y, y], color="yellow", linewidth=2)
    ax.text(x, y, f"{length_mm:g} mm", color="yellow", fontsize=6, va="bottom" if panel.origin == "lower" else "top")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def page_file_name(page: int, items: Sequence[TumourItem], limit: int = 200) -> str:
    """``page003__<case>-<entry>__<case>-<entry>.png``; shortened (``__and_N_more``) beyond ``limit`` chars."""
    name = f"page{page:03d}"
    for i, item in enumerate(items):
        part = "__" + _safe(item.name)
        if len(name) + len(part) > limit:
            name += f"__and_{len(items) - i}_more"
            break
        name += part
    return name + ".png"


def write_previews(items: Iterable[TumourItem], out_folder: str, per_page: int = 4, title: str = "",
                   fov_mm: float = 60.0, max_tumours: int | None = None, overwrite: bool = False,
                   progress: bool = True) -> list[str]:
    """Draw ``items`` in pages of ``per_page`` tumours; returns the PNG paths.

    Writes ``preview_index.csv`` (page file, case, entry, source case, volume ml, kind) beside the pages.
    Refuses (FileExistsError) a folder that already holds previews unless ``overwrite`` (then old pages go).
    """
    if per_page < 1:
        raise ValueError("per_page must be at least 1")
    os.makedirs(out_folder, exist_ok=True)
    old = glob.glob(os.path.join(out_folder, "page*.png"))
    if old and not overwrite:
        raise FileExistsError(f"{out_folder} already holds previews ({len(old)} pages); pass --overwrite "
                              f"or choose another output folder")
    for path in old:
        os.remove(path)
    written, rows, page_items = [], [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="tumours drawn", unit="tumour", total=max_tumours)

    def flush() -> None:
        if not page_items:
            return
        path = os.path.join(out_folder, page_file_name(len(written) + 1, page_items))
        page_title = f"{title}  (page {len(written) + 1})" if title else f"page {len(written) + 1}"
        draw_page(page_items, path, page_title, fov_mm)
        written.append(path)
        for item in page_items:
            rows.append({"page": os.path.basename(path), "case": item.case, "entry": item.entry,
                         "source_case": item.source_case, "volume_ml": round(item.volume_ml, 4), "kind": item.kind})
        page_items.clear()

    count = 0
    for item in items:
        if max_tumours is not None and count >= max_tumours:
            break
        page_items.append(item)
        count += 1
        if bar is not None:
            bar.update(1)
        if len(page_items) == per_page:
            flush()
    flush()
    if bar is not None:
        bar.close()
    with atomic_path(os.path.join(out_folder, "preview_index.csv")) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["page", "case", "entry", "source_case", "volume_ml", "kind"])
        writer.writeheader()
        writer.writerows(rows)
    return written


def preview(input_path: str, out_folder: str, *, per_page: int = 4, source: str | None = None,
            dataset: str | None = None, configuration: str | None = None, plans_identifier: str | None = None,
            cases: Sequence[str] | None = None, max_tumours: int | None = None, fov_mm: float = 60.0,
            overwrite: bool = False, progress: bool = True) -> list[str]:
    """PNG montages of the tumours of a generated dataset, a ``--replace-real`` dataset, a bank or a raw dataset.

    input_path: dataset folder (or id / name under ``$nnUNet_raw``), or a bank folder (or the trainer's fold
    folder that holds ``synthesis_bank``). source: raw dataset of the source cases of a generated dataset
    (default: the one its record names). dataset / configuration / plans_identifier: for a bank outside
    ``$nnUNet_results``. A raw dataset shows its real tumours (no "before"). Returns the PNG paths.
    """
    path = input_path if os.path.exists(input_path) else resolve_raw_dataset(input_path)
    kind = input_kind(path)
    if kind == "bank":
        bank = path if is_bank(path) else os.path.join(path, "synthesis_bank")
        preprocessed = bank_dataset(bank, dataset, configuration, plans_identifier)
        items: Iterable[TumourItem] = bank_items(bank, preprocessed, cases)
        trainer = os.path.basename(os.path.dirname(os.path.dirname(bank)))
        fold = os.path.basename(os.path.dirname(bank))
        title = f"synthesis bank of {trainer} {fold} ({preprocessed.name}; preprocessed space and intensities)"
    elif kind == "generated":
        items = generated_items(path, source, cases)
        title = f"generated dataset {os.path.basename(path)}: before = source raw image, after = generated"
    else:
        items = real_items(path, cases)
        title = f"real tumours of {os.path.basename(path)}"
    pages = write_previews(items, out_folder, per_page, title, fov_mm, max_tumours, overwrite, progress)
    write_json_atomic({"input": os.path.abspath(path), "kind": kind, "pages": [os.path.basename(p) for p in pages]},
                      os.path.join(out_folder, "preview.json"))
    return pages
