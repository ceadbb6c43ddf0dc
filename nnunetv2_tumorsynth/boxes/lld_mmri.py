"""Reader and writer of LLD-MMRI's ``Annotation.json`` (per-series lesion boxes in voxel indices).

The file maps patient ids to a list of series entries, each with ``studyUID``, ``seriesUID``,
``phase`` and ``annotation.lesion.<n>.{category, bbox.3D_box}``; the image of an entry is
``<images_dir>/<patient>/<studyUID>/<seriesUID>.nii.gz``. Box maxima are inclusive voxel indices.
"""

from __future__ import annotations

import json
import os
import re
import warnings

from nnunetv2_tumorsynth.boxes.annotations import (
    AnnotationError,
    BoxAnnotation,
    BoxAnnotationWarning,
    BoxCase,
    parse_category,
    parse_corners,
    safe_id,
)
from nnunetv2_tumorsynth.files import write_json_atomic

PAPER_PHASES = ("C+A", "C+V", "C+Delay")  # arterial, portal venous, delayed (Quinton et al. 2026, section 2.1)
LLD_MMRI_CATEGORIES = {
    0: "hepatic haemangioma", 1: "intrahepatic cholangiocarcinoma", 2: "hepatic abscess",
    3: "hepatic metastasis", 4: "hepatic cyst", 5: "focal nodular hyperplasia", 6: "hepatocellular carcinoma",
}  # fmt: skip


def is_lld_mmri(path: str) -> bool:
    """Whether ``path`` is an LLD-MMRI annotation file: a ``.json`` file with an ``Annotation_info`` key."""
    if not (os.path.isfile(path) and path.lower().endswith(".json")):
        return False
    try:
        with open(path) as f:
            return "Annotation_info" in json.load(f)
    except (json.JSONDecodeError, TypeError):
        return False


def phase_tag(phase: str) -> str:
    """``"C+A"`` -> ``"CA"``, ``"C+Delay"`` -> ``"CDelay"``: a phase name usable in file names."""
    return re.sub(r"[^A-Za-z0-9]", "", phase) or "phase"


def read_lld_mmri(
    annotation_file: str,
    images_dir: str,
    phases: tuple[str, ...] | None = PAPER_PHASES,
    categories: tuple[int, ...] | None = None,
    image_ending: str = ".nii.gz",
) -> list[BoxCase]:
    """Cases (one per series) from an LLD-MMRI ``Annotation.json``.

    The image of an entry is ``images_dir/<patient>/<studyUID>/<seriesUID><image_ending>``. Series whose
    phase is not in ``phases`` are left out (None keeps all phases). With ``categories``, a series is
    kept only when every lesion in it has one of them (a lesion of another kind would otherwise end up
    labelled as organ); series with mixed categories are skipped with a warning. The case id is
    ``<patient>_<phase without symbols>`` (``MR123_CA``), suffixed when the same patient has two series
    of one phase.
    """
    try:
        with open(annotation_file) as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{annotation_file} is not valid JSON: {e}") from None
    if not isinstance(content, dict) or not isinstance(content.get("Annotation_info"), dict):
        raise AnnotationError(f"{annotation_file}: expected {{\"Annotation_info\": {{patient: [series, ...]}}}}")
    cases: list[BoxCase] = []
    taken: set[str] = set()
    for patient, entries in content["Annotation_info"].items():
        if not isinstance(entries, list):
            raise AnnotationError(f"{annotation_file}: patient {patient}: expected a list of series, got {entries!r}")
        for i, entry in enumerate(entries):
            where = f"{annotation_file}: patient {patient}, entry {i}"
            if not isinstance(entry, dict):
                raise AnnotationError(f"{where}: expected an object, got {entry!r}")
            missing = [k for k in ("studyUID", "seriesUID", "phase", "annotation") if k not in entry]
            if missing:
                raise AnnotationError(f"{where}: missing {', '.join(missing)}")
            phase = str(entry["phase"])
            where = f"{where} (series {entry['seriesUID']}, phase {phase})"
            boxes = _series_boxes(entry, patient, where)
            if phases is not None and phase not in phases:
                continue
            if categories is not None:
                kinds = {b.category for b in boxes}
                if not boxes or not kinds <= set(categories):
                    if kinds & set(categories):
                        warnings.warn(f"{where}: skipped, lesion categories {sorted(kinds, key=str)} are only "
                                      f"partly among {sorted(categories)}", BoxAnnotationWarning, stacklevel=2)
                    continue
            case_id = f"{safe_id(patient)}_{phase_tag(phase)}"
            n = 2
            while case_id in taken:
                case_id = f"{safe_id(patient)}_{phase_tag(phase)}_{n}"
                n += 1
            taken.add(case_id)
            image = os.path.join(images_dir, patient, str(entry["studyUID"]), f"{entry['seriesUID']}{image_ending}")
            cases.append(BoxCase(case_id, [image], boxes, patient, phase,
                                 f"patient {patient}, study {entry['studyUID']}, series {entry['seriesUID']}"))
    return cases


def _series_boxes(entry: dict, patient: str, where: str) -> list[BoxAnnotation]:
    """The lesion boxes of one series entry (``annotation.lesion.<n>``), checked."""
    lesions = entry["annotation"].get("lesion", {}) if isinstance(entry["annotation"], dict) else None
    if not isinstance(lesions, dict):
        raise AnnotationError(f"{where}: annotation.lesion must be an object of lesions")
    boxes = []
    for key, lesion in lesions.items():
        lwhere = f"{where}, lesion {key}"
        if not isinstance(lesion, dict) or not isinstance(lesion.get("bbox"), dict) or "3D_box" not in lesion["bbox"]:
            raise AnnotationError(f"{lwhere}: expected {{\"category\": .., \"bbox\": {{\"3D_box\": ..}}}}")
        category = parse_category(lesion.get("category"), lwhere)
        lo, hi = parse_corners(lesion["bbox"]["3D_box"], f"{lwhere}, bbox.3D_box")
        boxes.append(BoxAnnotation(lo, hi, "voxel", category,
                                   f"patient {patient}, series {entry['seriesUID']}, lesion {key}"))
    return boxes


def write_lld_mmri(cases: dict[str, list[dict]], path: str) -> None:
    """Write an LLD-MMRI-style ``Annotation.json`` (atomically): ``cases`` maps patient -> list of series entries
    ``{"studyUID", "seriesUID", "phase", "boxes": [Box (z, y, x), ...], "categories": [int, ...]}``
    (categories default to 6, hepatocellular carcinoma)."""
    info = {}
    for patient, entries in cases.items():
        info[patient] = []
        for e in entries:
            lesions = {}
            for k, box in enumerate(e["boxes"]):
                (z0, y0, x0), (z1, y1, x1) = box.lo, box.hi
                lesions[str(k)] = {"category": int(e.get("categories", [6] * len(e["boxes"]))[k]), "bbox": {
                    "3D_box": {"x_min": x0, "y_min": y0, "z_min": z0, "x_max": x1 - 1, "y_max": y1 - 1,
                               "z_max": z1 - 1}}}
            info[patient].append({"studyUID": e["studyUID"], "seriesUID": e["seriesUID"], "phase": e["phase"],
                                  "annotation": {"lesion": lesions}})
    write_json_atomic({"Annotation_info": info}, path)
