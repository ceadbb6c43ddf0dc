"""Reader of the generic box format: a JSON file per case, a folder of them, or one CSV.

JSON (``<case>.json``; the case id is the file name)::

    {"space": "voxel",            # or "world": corners in mm, ITK physical (LPS) coordinates
     "image": "optional/path.nii.gz",   # default: <images_dir>/<case>_0000<ending> (nnU-Net naming)
     "boxes": [{"x_min": 10, "y_min": 20, "z_min": 3, "x_max": 30, "y_max": 41, "z_max": 9}]}

CSV with header ``case,x_min,y_min,z_min,x_max,y_max,z_max[,space]``, one box per row; a row with
empty corners declares a case without boxes. Maxima are inclusive; a box with ``z_min == z_max``
is a 2D box on one slice.
"""

from __future__ import annotations

import csv
import json
import os

from nnunetv2_tumorsynth.boxes.annotations import (
    CORNER_KEYS,
    AnnotationError,
    BoxAnnotation,
    BoxCase,
    parse_category,
    parse_corners,
)


def read_generic(path: str, images_dir: str, file_ending: str = ".nii.gz", num_channels: int = 1) -> list[BoxCase]:
    """Cases from the generic box format (see the module docstring): a ``.json`` per case, a folder of
    them, or one ``.csv``. Image files default to nnU-Net's naming ``<case>_0000<ending>``..."""
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".json"))
        if not files:
            raise AnnotationError(f"{path}: no .json box files in this folder")
        return [c for f in files for c in read_generic(os.path.join(path, f), images_dir, file_ending, num_channels)]
    if path.lower().endswith(".csv"):
        return _read_csv(path, images_dir, file_ending, num_channels)
    try:
        with open(path) as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path} is not valid JSON: {e}") from None
    case_id = os.path.basename(path)[: -len(".json")]
    return [_case(case_id, content, f"{path}", images_dir, file_ending, num_channels)]


def _read_csv(path: str, images_dir: str, file_ending: str, num_channels: int) -> list[BoxCase]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "case" not in rows[0]:
        raise AnnotationError(f"{path}: expected a header 'case,{','.join(CORNER_KEYS)}[,space]'")
    by_case: dict[str, dict] = {}
    for i, row in enumerate(rows, start=2):  # line numbers as an editor shows them
        case_id = (row.get("case") or "").strip()
        if not case_id:
            raise AnnotationError(f"{path}, line {i}: empty case")
        content = by_case.setdefault(case_id, {"space": (row.get("space") or "voxel").strip(), "boxes": []})
        if all(not (row.get(k) or "").strip() for k in CORNER_KEYS):
            continue
        if (row.get("space") or "voxel").strip() != content["space"]:
            raise AnnotationError(f"{path}, line {i}: case {case_id} mixes voxel and world boxes")
        content["boxes"].append({k: (row.get(k) or "").strip() for k in CORNER_KEYS})
    cases = []
    for case_id, content in by_case.items():
        for box in content["boxes"]:  # empty cells -> a clear message from parse_corners
            for k, v in list(box.items()):
                if v == "":
                    del box[k]
        cases.append(_case(case_id, content, f"{path}, case {case_id}", images_dir, file_ending, num_channels))
    return cases


def _case(case_id: str, content, where: str, images_dir: str, file_ending: str, num_channels: int) -> BoxCase:
    if not isinstance(content, dict) or not isinstance(content.get("boxes"), list):
        raise AnnotationError(f"{where}: expected {{\"space\": \"voxel\"|\"world\", \"boxes\": [...]}}")
    space = content.get("space", "voxel")
    if space not in ("voxel", "world"):
        raise AnnotationError(f"{where}: space must be 'voxel' or 'world', got {space!r}")
    boxes = []
    for i, entry in enumerate(content["boxes"]):
        lo, hi = parse_corners(entry, f"{where}, box {i}")
        category = parse_category(entry.get("category"), f"{where}, box {i}")
        boxes.append(BoxAnnotation(lo, hi, space, category, f"case {case_id}, box {i}"))
    images = _case_images(case_id, images_dir, file_ending, num_channels, content.get("image"))
    return BoxCase(case_id, images, boxes, source=f"case {case_id}")


def _case_images(case_id: str, images_dir: str, file_ending: str, num_channels: int, explicit=None) -> list[str]:
    """Image files of a case: ``explicit`` (relative to ``images_dir``) or nnU-Net's naming
    ``<case>_0000<ending>``, ``<case>_0001<ending>``...; a single-channel ``<case><ending>`` also works."""
    if explicit is not None:
        files = [explicit] if isinstance(explicit, str) else list(explicit)
        return [f if os.path.isabs(f) else os.path.join(images_dir, f) for f in files]
    files = [os.path.join(images_dir, f"{case_id}_{c:04d}{file_ending}") for c in range(num_channels)]
    plain = os.path.join(images_dir, f"{case_id}{file_ending}")
    if num_channels == 1 and not os.path.isfile(files[0]) and os.path.isfile(plain):
        return [plain]
    return files
