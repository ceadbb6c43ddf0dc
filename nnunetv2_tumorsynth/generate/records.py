"""The generated dataset's records: one CSV row per tumour, and a PNG preview of a few synthetic images."""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import SimpleITK as sitk

from nnunetv2_tumorsynth.figures import new_figure, save_figure
from nnunetv2_tumorsynth.files import atomic_path
from nnunetv2_tumorsynth.generate.settings import PREVIEW_PNG

CSV_COLUMNS = ("image", "index", "mode", "source_case", "tumour", "centre_x_mm", "centre_y_mm", "centre_z_mm",
               "volume_ml", "voxels", "size", "size_requested", "replaced", "deformation", "texture", "polarity",
               "steps", "sampler", "strength", "brightness", "checkpoint", "checkpoint_sha256", "seed")


def write_records_csv(records: list[dict], path: str) -> None:
    """One row per tumour (a real copy without tumours gets one row with empty tumour columns)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        for k, tumour in enumerate(record["tumours"] or [None]):
            row = {key: record.get(key) for key in CSV_COLUMNS}
            if tumour is not None:
                row.update(tumour=k, volume_ml=round(tumour["volume_ml"], 4), voxels=tumour["voxels"],
                           size=tumour["size"], replaced=tumour.get("replaced", True),
                           **{f"centre_{a}_mm": round(v, 3) for a, v in zip("xyz", tumour["centre_mm"])})
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(buffer.getvalue())


def write_preview(folder: str, records: list[dict], file_ending: str, tumour_label: int, max_images: int = 4) -> None:
    """PNG: axial slices (raw array axis 0) through a few synthetic tumours, source and result, mask outline."""
    shown = [r for r in records if r["mode"] != "real"][:max_images]
    if not shown:
        return
    fig, axes = new_figure(len(shown), 2, figsize=(7, 3.3 * len(shown)))
    for row, record in zip(axes, shown):
        name = record["image"]
        after = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "imagesTr",
                                                                   f"{name}_0000{file_ending}")))
        label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "labelsTr", f"{name}{file_ending}")))
        before = sitk.GetArrayFromImage(sitk.ReadImage(record["source_image"]))
        changed = (after != before) | (label == tumour_label)
        z = int(np.argwhere(after != before)[:, 0].mean()) if (after != before).any() else int(
            np.argwhere(changed)[:, 0].mean())
        vmin, vmax = np.percentile(before[z], [1, 99])
        for ax, image, title in ((row[0], before, "source"), (row[1], after, "synthetic")):
            ax.imshow(image[z], cmap="gray", vmin=vmin, vmax=vmax)
            ax.contour(label[z] == tumour_label, levels=[0.5], colors="r", linewidths=0.6)
            ax.set_title(f"{name if title == 'synthetic' else record['source_case']} ({title}), slice {z}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    save_figure(fig, os.path.join(folder, PREVIEW_PNG), dpi=80)
