"""Check an LLD-MMRI release before pseudo-labelling: what ``tumorsynth_pseudolabel`` will read, and the spacing.

    python examples/check_lld_mmri.py -bbox LLD-MMRI/labels/Annotation.json -i LLD-MMRI/images \\
        [--phases C+A C+V C+Delay | all] [--categories 6] [-o lld_mmri_check.json]

Why a check and no conversion. ``tumorsynth_pseudolabel`` reads LLD-MMRI as distributed
(``images/<patient>/<study>/<series>.nii.gz`` and ``labels/Annotation.json``), selects the series with
``--phases`` and ``--categories`` (the paper used the hepatocellular carcinoma patients, category 6, in
the arterial, portal venous and delayed phases C+A, C+V, C+Delay: 3 series x 100 patients, Quinton et
al. 2026, section 2.1), and ``--as-dataset 502`` writes the nnU-Net raw dataset itself (each series one
case ``<patient>_<phase>``, e.g. ``MR1234_CA``). Nothing has to be converted beforehand. What can go
wrong is in the data, and this script shows it before hours of GPU time are spent:

- which series the filters select, through the very reader ``tumorsynth_pseudolabel`` uses
  (``nnunetv2_tumorsynth.boxes.read_box_annotations``, same defaults: the paper's phases, all categories);
  series skipped because their lesions mix categories are counted;
- missing image files (``tumorsynth_pseudolabel`` skips those series);
- boxes reaching outside their image (clipped) or lying wholly outside (skipped);
- **spacing: Annotation.json vs the NIfTI header.** LLD-MMRI's series entries may carry the DICOM
  ``pixel_spacing`` ([row, column] = [y, x], mm) and ``slice_thickness`` (mm). Neither is used: the
  ``3D_box`` corners are voxel indices of the NIfTI image, nnU-Net resamples with the header's spacing,
  and the pseudo-labelling margin (mm) is converted with it. So **the header's spacing is used**. The
  in-plane spacing of JSON and header should agree; a mismatch means the box file and the image file do not
  describe the same grid and the series should be checked by eye. Slice thickness is not slice spacing
  (slices may overlap or leave gaps), so a z difference is reported but expected;
- the slice axis: the image axis whose direction is closest to the patient's head-foot axis. nnU-Net's
  plans of ATLAS transpose every case alike, so pooled datasets need the same slice axis (the last ITK
  axis, z, for axial series).

Only image headers are read (no voxel data), so the whole release is checked in about a minute.
Writes the per-series table as JSON with ``-o``; prints a summary. Exit status 0 when series are selected,
2 for an unreadable annotation file or an empty selection.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections import Counter

import numpy as np
import SimpleITK as sitk

from nnunetv2_tumorsynth.boxes import (
    PAPER_PHASES,
    AnnotationError,
    BoxAnnotationWarning,
    boxes_in_image,
    read_box_annotations,
)
from nnunetv2_tumorsynth.files import write_json_atomic

IN_PLANE_TOLERANCE_MM = 0.01  # JSON pixel_spacing vs header x, y spacing
Z_TOLERANCE_MM = 0.01  # JSON slice_thickness vs header z spacing (a difference is reported, not an error)


def json_spacing(entry: dict) -> tuple[float | None, float | None, float | None]:
    """(x, y, z) spacing in mm as the annotation entry gives it: x, y from DICOM ``pixel_spacing`` [row, column]
    = [y, x], z from ``slice_thickness``; None where absent or unreadable."""
    x = y = z = None
    pixel = entry.get("pixel_spacing")
    if isinstance(pixel, (list, tuple)) and len(pixel) == 2:
        try:
            y, x = float(pixel[0]), float(pixel[1])
        except (TypeError, ValueError):
            pass
    try:
        z = float(entry["slice_thickness"]) if entry.get("slice_thickness") is not None else None
    except (TypeError, ValueError):
        pass
    return x, y, z


def slice_axis(direction: tuple[float, ...]) -> int:
    """Index axis (ITK order: 0 = x, 1 = y, 2 = z) whose direction is closest to the world head-foot axis.
    ``direction`` is ITK's row-major 3 x 3 matrix; its column j is the world direction of index axis j."""
    matrix = np.asarray(direction, float).reshape(3, 3)
    return int(np.argmax(np.abs(matrix[2])))


def entries_by_image(annotation_file: str, images_dir: str) -> tuple[dict[str, dict], int]:
    """``{image path: series entry}`` of the annotation file (the path the reader builds from patient, studyUID
    and seriesUID), and the number of series in the file."""
    with open(annotation_file) as f:
        info = json.load(f)["Annotation_info"]
    out = {}
    for patient, entries in info.items():
        for entry in entries:
            path = os.path.join(images_dir, patient, str(entry.get("studyUID")), f"{entry.get('seriesUID')}.nii.gz")
            out[os.path.normpath(path)] = entry
    return out, sum(len(e) for e in info.values())


def check_series(case, entry: dict) -> dict:
    """One selected series: header spacing vs JSON spacing, slice axis, boxes inside the image."""
    image_file = case.image_files[0]
    row = {"case": case.case_id, "patient": case.patient, "phase": case.phase, "image": image_file,
           "lesions": len(case.boxes), "categories": sorted({b.category for b in case.boxes}, key=str)}
    if not os.path.isfile(image_file):
        row["problem"] = "image missing"
        return row
    reader = sitk.ImageFileReader()
    reader.SetFileName(image_file)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        row["problem"] = f"unreadable: {str(e).strip()}"
        return row
    header = tuple(float(s) for s in reader.GetSpacing())
    given = json_spacing(entry)
    row.update(size_xyz=list(reader.GetSize()), header_spacing_xyz=list(header), json_spacing_xyz=list(given),
               slice_axis="xyz"[slice_axis(reader.GetDirection())])
    if given[0] is not None and given[1] is not None:
        row["in_plane_matches"] = bool(np.allclose(header[:2], given[:2], rtol=0.0, atol=IN_PLANE_TOLERANCE_MM))
    if given[2] is not None:
        row["z_matches"] = bool(abs(header[2] - given[2]) <= Z_TOLERANCE_MM)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BoxAnnotationWarning)
        kept = boxes_in_image(case.boxes, reader)
    messages = [str(w.message) for w in caught if issubclass(w.category, BoxAnnotationWarning)]
    row.update(boxes_kept=len(kept), boxes_clipped=sum("clipped" in m for m in messages),
               boxes_outside=sum("skipped" in m for m in messages), box_warnings=messages)
    return row


def check_lld_mmri(annotation_file: str, images_dir: str, phases: tuple[str, ...] | None = PAPER_PHASES,
                   categories: tuple[int, ...] | None = None, report: str | None = None) -> dict:
    """Check the series of ``annotation_file`` that ``tumorsynth_pseudolabel`` would select with these filters.

    Returns ``{"summary": {...}, "series": [one row per selected series]}`` (written to ``report`` as JSON
    when given). Raises :class:`~nnunetv2_tumorsynth.boxes.AnnotationError` for a malformed file or an
    empty selection.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BoxAnnotationWarning)
        cases = read_box_annotations(annotation_file, images_dir, phases, categories)
    mixed = [str(w.message) for w in caught if issubclass(w.category, BoxAnnotationWarning)]
    if not cases:
        raise AnnotationError(f"{annotation_file}: no series left after filtering (phases "
                              f"{list(phases) if phases else 'all'}, categories {list(categories or []) or 'all'})")
    entries, n_series = entries_by_image(annotation_file, images_dir)
    rows = [check_series(case, entries.get(os.path.normpath(case.image_files[0]), {})) for case in cases]

    def count(key, value=True):
        return sum(1 for r in rows if r.get(key) == value)

    summary = {
        "annotation_file": os.path.abspath(annotation_file), "images": os.path.abspath(images_dir),
        "phases": list(phases) if phases else "all", "categories": list(categories) if categories else "all",
        "series_in_file": n_series, "series_selected": len(rows),
        "patients_selected": len({r["patient"] for r in rows}),
        "series_per_phase": dict(sorted(Counter(r["phase"] for r in rows).items())),
        "lesions_per_category": dict(sorted(Counter(str(c) for case in cases for c in
                                                    (b.category for b in case.boxes)).items())),
        "series_skipped_mixed_categories": len(mixed),
        "images_missing": [r["image"] for r in rows if r.get("problem") == "image missing"],
        "images_unreadable": [r["image"] for r in rows if str(r.get("problem", "")).startswith("unreadable")],
        "in_plane_spacing_mismatch": [r["case"] for r in rows if r.get("in_plane_matches") is False],
        "slice_thickness_differs_from_z_spacing": count("z_matches", False),
        "json_spacing_missing": sum(1 for r in rows if "header_spacing_xyz" in r and None in r["json_spacing_xyz"]),
        "slice_axis": dict(sorted(Counter(r["slice_axis"] for r in rows if "slice_axis" in r).items())),
        "boxes_clipped": sum(r.get("boxes_clipped", 0) for r in rows),
        "boxes_outside": sum(r.get("boxes_outside", 0) for r in rows),
        "spacing_used": "NIfTI header (box corners are voxel indices of the image; nnU-Net resamples with the "
                        "header's spacing)",
    }
    result = {"summary": summary, "series": rows, "skipped_series_warnings": mixed}
    if report:
        os.makedirs(os.path.dirname(os.path.abspath(report)), exist_ok=True)
        write_json_atomic(result, report)
    return result


def print_summary(summary: dict, report: str | None) -> None:
    s = summary
    print(f"{s['series_selected']} of {s['series_in_file']} series selected ({s['patients_selected']} patients; "
          f"phases {s['phases']}, categories {s['categories']}): {s['series_per_phase']}")
    print(f"lesions per category: {s['lesions_per_category']}; series skipped for mixed categories: "
          f"{s['series_skipped_mixed_categories']}")
    print(f"missing images: {len(s['images_missing'])}, unreadable: {len(s['images_unreadable'])}"
          + (f" (e.g. {s['images_missing'][0]})" if s["images_missing"] else ""))
    print(f"boxes clipped to their image: {s['boxes_clipped']}, wholly outside (skipped): {s['boxes_outside']}")
    print(f"spacing: in-plane JSON vs header mismatches {len(s['in_plane_spacing_mismatch'])}"
          + (f" ({', '.join(s['in_plane_spacing_mismatch'][:5])})" if s["in_plane_spacing_mismatch"] else "")
          + f"; slice thickness != z spacing in {s['slice_thickness_differs_from_z_spacing']} series (expected: "
          f"thickness is not spacing); no JSON spacing in {s['json_spacing_missing']}")
    print(f"slice axis (ITK index axis closest to head-foot): {s['slice_axis']}")
    print(f"spacing used by tumorsynth_pseudolabel and nnU-Net: {s['spacing_used']}")
    if report:
        print(f"per-series table: {report}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Check the LLD-MMRI series that tumorsynth_pseudolabel would read: selection by phase and "
                    "category, missing images, boxes outside their image, Annotation.json spacing vs NIfTI header "
                    "(the header's is used), slice axis.")
    parser.add_argument("-bbox", required=True, help="LLD-MMRI labels/Annotation.json")
    parser.add_argument("-i", required=True, help="LLD-MMRI images folder (<patient>/<study>/<series>.nii.gz)")
    parser.add_argument("--phases", nargs="+", default=list(PAPER_PHASES),
                        help="phases (default: C+A C+V C+Delay, as tumorsynth_pseudolabel; 'all' keeps every phase)")
    parser.add_argument("--categories", nargs="+", type=int, default=None,
                        help="keep series whose lesions all have one of these categories (6 = hepatocellular "
                             "carcinoma; default: all)")
    parser.add_argument("-o", default=None, help="write the per-series table as JSON here")
    args = parser.parse_args(argv)
    phases = None if [p.lower() for p in args.phases] == ["all"] else tuple(args.phases)
    try:
        result = check_lld_mmri(args.bbox, args.i, phases, tuple(args.categories) if args.categories else None,
                                args.o)
    except (AnnotationError, FileNotFoundError, json.JSONDecodeError) as e:
        print(f"check_lld_mmri: error: {e}", file=sys.stderr)
        sys.exit(2)
    print_summary(result["summary"], args.o)


if __name__ == "__main__":
    main()
