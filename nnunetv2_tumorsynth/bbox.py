"""Tumour bounding boxes: annotation files, rasterising, box geometry and the box input channel.

Box-guided pseudo-labelling (seed 000, section 2.1): a network trained on a fully labelled dataset
gets the tumours' bounding boxes as one extra input channel, and turns box-only annotations
(LLD-MMRI) into pseudo-masks. This module holds everything about boxes; the trainer
(``trainers/nnUNetTrainerBBoxChannel.py``) and the command (``cli/pseudolabel.py``) only wire it up.

Conventions used throughout:

- A :class:`Box` is axis-aligned and **half-open** in voxel indices of one array: it covers the voxels
  ``lo[i] <= v < hi[i]`` on axis ``i``, in the array's axis order ((z, y, x) for arrays from
  SimpleITK; nnU-Net's transposed order inside training).
- Annotation files give corners as ``x_min, y_min, z_min, x_max, y_max, z_max`` with **inclusive**
  maxima (LLD-MMRI's convention: ``x_max`` is the index of the last voxel in the box). In voxel
  space, x is the last axis of the SimpleITK array (z, y, x). In world space the corners are in mm,
  in ITK's physical (LPS) frame, and mapped to voxels through the image's origin, spacing and
  direction: a voxel belongs to the box when its centre lies inside.
- A 2D (per-slice) box is a box one slice thick (``z_min == z_max``).
- Sizes and distances (jitter, margins) are in mm and converted per axis with the array's spacing.
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from scipy import ndimage

CORNER_KEYS = ("x_min", "y_min", "z_min", "x_max", "y_max", "z_max")
PAPER_PHASES = ("C+A", "C+V", "C+Delay")  # arterial, portal venous, delayed (seed 000 2.1)
LLD_MMRI_CATEGORIES = {
    0: "hepatic haemangioma", 1: "intrahepatic cholangiocarcinoma", 2: "hepatic abscess",
    3: "hepatic metastasis", 4: "hepatic cyst", 5: "focal nodular hyperplasia", 6: "hepatocellular carcinoma",
}  # fmt: skip


class AnnotationError(ValueError):
    """A box annotation file that cannot be read; the message names the file, case and entry."""


class BoxAnnotationWarning(UserWarning):
    """A box was clipped to the image or skipped because it lies outside it."""


# ---------------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """Axis-aligned box, half-open in voxel indices: ``lo[i] <= v < hi[i]`` on axis ``i`` (array order)."""

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    category: int | None = None
    source: str = ""  # where it came from, for messages ("patient MR1, series s1, lesion 0")

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.lo, self.hi))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.lo, self.hi))

    def is_empty(self) -> bool:
        return any(b <= a for a, b in zip(self.lo, self.hi))

    def expanded(self, voxels: tuple[int, ...]) -> Box:
        """The box grown by ``voxels[i]`` on both sides of axis ``i`` (not clipped)."""
        return replace(self, lo=tuple(a - v for a, v in zip(self.lo, voxels)),
                       hi=tuple(b + v for b, v in zip(self.hi, voxels)))

    def clipped(self, shape: tuple[int, ...]) -> Box:
        """The part of the box inside an array of ``shape`` (may be empty)."""
        return replace(self, lo=tuple(min(max(a, 0), n) for a, n in zip(self.lo, shape)),
                       hi=tuple(min(max(b, 0), n) for b, n in zip(self.hi, shape)))


def rasterise(boxes: list[Box], shape: tuple[int, ...]) -> np.ndarray:
    """Boolean array of ``shape`` that is True inside any of ``boxes`` (boxes are clipped to the array)."""
    out = np.zeros(shape, dtype=bool)
    for box in boxes:
        out[box.clipped(shape).slices] = True
    return out


def margin_in_voxels(margin_mm: float, spacing: tuple[float, ...]) -> tuple[int, ...]:
    """Whole voxels per axis covering ``margin_mm`` (rounded up); ``spacing`` in mm, array order."""
    return tuple(int(np.ceil(margin_mm / s - 1e-6)) if margin_mm > 0 else 0 for s in spacing)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean arrays (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# ---------------------------------------------------------------------------------------------------
# Annotation files
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoxAnnotation:
    """One box as written in an annotation file.

    ``minimum`` and ``maximum`` are the corners in (x, y, z) order, both inclusive. ``space`` is
    ``"voxel"`` (indices of the image; x is the last axis of the SimpleITK array) or ``"world"``
    (mm in ITK's physical LPS frame).
    """

    minimum: tuple[float, float, float]
    maximum: tuple[float, float, float]
    space: str = "voxel"
    category: int | None = None
    source: str = ""


@dataclass
class BoxCase:
    """One image to pseudo-label: its file(s) (one per input channel) and its box annotations."""

    case_id: str
    image_files: list[str]
    boxes: list[BoxAnnotation] = field(default_factory=list)
    patient: str | None = None
    phase: str | None = None
    source: str = ""  # e.g. "patient MR1, study s, series t"


def _parse_corners(entry, where: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``{"x_min": .., ..., "z_max": ..}`` -> ((x, y, z) min, (x, y, z) max); checks types and order."""
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where}: expected an object with {', '.join(CORNER_KEYS)}, got {entry!r}")
    missing = [k for k in CORNER_KEYS if k not in entry]
    if missing:
        raise AnnotationError(f"{where}: missing {', '.join(missing)} (has {sorted(entry)})")
    values = {}
    for k in CORNER_KEYS:
        v = entry[k]
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise AnnotationError(f"{where}: {k} must be a number, got {v!r}")
        try:
            values[k] = float(v)
        except ValueError:
            raise AnnotationError(f"{where}: {k} must be a number, got {v!r}") from None
        if not np.isfinite(values[k]):
            raise AnnotationError(f"{where}: {k} must be finite, got {v!r}")
    lo = (values["x_min"], values["y_min"], values["z_min"])
    hi = (values["x_max"], values["y_max"], values["z_max"])
    for axis, a, b in zip("xyz", lo, hi):
        if b < a:
            raise AnnotationError(f"{where}: {axis}_max {b:g} < {axis}_min {a:g}")
    return lo, hi


def phase_tag(phase: str) -> str:
    """``"C+A"`` -> ``"CA"``, ``"C+Delay"`` -> ``"CDelay"``: a phase name usable in file names."""
    return re.sub(r"[^A-Za-z0-9]", "", phase) or "phase"


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "", text) or "case"


def read_lld_mmri(
    annotation_file: str,
    images_dir: str,
    phases: tuple[str, ...] | None = PAPER_PHASES,
    categories: tuple[int, ...] | None = None,
    image_ending: str = ".nii.gz",
) -> list[BoxCase]:
    """Cases (one per series) from an LLD-MMRI ``Annotation.json``.

    The file maps patient ids to a list of series entries, each with ``studyUID``, ``seriesUID``,
    ``phase`` and ``annotation.lesion.<n>.{category, bbox.3D_box}``; the image of an entry is
    ``images_dir/<patient>/<studyUID>/<seriesUID><image_ending>``. Box maxima are inclusive voxel
    indices. Series whose phase is not in ``phases`` are left out (None keeps all phases). With
    ``categories``, a series is kept only when every lesion in it has one of them (a lesion of another
    kind would otherwise end up labelled as organ); series with mixed categories are skipped with a
    warning. The case id is ``<patient>_<phase without symbols>`` (``MR123_CA``), suffixed when the
    same patient has two series of one phase.
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
            lesions = entry["annotation"].get("lesion", {}) if isinstance(entry["annotation"], dict) else None
            if not isinstance(lesions, dict):
                raise AnnotationError(f"{where}: annotation.lesion must be an object of lesions")
            boxes = []
            for key, lesion in lesions.items():
                lwhere = f"{where}, lesion {key}"
                if not isinstance(lesion, dict) or not isinstance(lesion.get("bbox"), dict) \
                        or "3D_box" not in lesion["bbox"]:
                    raise AnnotationError(f"{lwhere}: expected {{\"category\": .., \"bbox\": {{\"3D_box\": ..}}}}")
                category = lesion.get("category")
                if category is not None and (isinstance(category, bool) or not str(category).lstrip("-").isdigit()):
                    raise AnnotationError(f"{lwhere}: category must be an integer, got {category!r}")
                lo, hi = _parse_corners(lesion["bbox"]["3D_box"], f"{lwhere}, bbox.3D_box")
                boxes.append(BoxAnnotation(lo, hi, "voxel", None if category is None else int(category),
                                           f"patient {patient}, series {entry['seriesUID']}, lesion {key}"))
            if phases is not None and phase not in phases:
                continue
            if categories is not None:
                kinds = {b.category for b in boxes}
                if not boxes or not kinds <= set(categories):
                    if kinds & set(categories):
                        warnings.warn(f"{where}: skipped, lesion categories {sorted(kinds, key=str)} are only "
                                      f"partly among {sorted(categories)}", BoxAnnotationWarning, stacklevel=2)
                    continue
            case_id = f"{_safe_id(patient)}_{phase_tag(phase)}"
            n = 2
            while case_id in taken:
                case_id = f"{_safe_id(patient)}_{phase_tag(phase)}_{n}"
                n += 1
            taken.add(case_id)
            image = os.path.join(images_dir, patient, str(entry["studyUID"]), f"{entry['seriesUID']}{image_ending}")
            cases.append(BoxCase(case_id, [image], boxes, patient, phase,
                                 f"patient {patient}, study {entry['studyUID']}, series {entry['seriesUID']}"))
    return cases


def _case_images(case_id: str, images_dir: str, file_ending: str, num_channels: int, explicit=None) -> list[str]:
    """Image files of a generic case: ``explicit`` (relative to ``images_dir``) or nnU-Net's naming
    ``<case>_0000<ending>``, ``<case>_0001<ending>``...; a single-channel ``<case><ending>`` also works."""
    if explicit is not None:
        files = [explicit] if isinstance(explicit, str) else list(explicit)
        return [f if os.path.isabs(f) else os.path.join(images_dir, f) for f in files]
    files = [os.path.join(images_dir, f"{case_id}_{c:04d}{file_ending}") for c in range(num_channels)]
    plain = os.path.join(images_dir, f"{case_id}{file_ending}")
    if num_channels == 1 and not os.path.isfile(files[0]) and os.path.isfile(plain):
        return [plain]
    return files


def _generic_case(case_id: str, content, where: str, images_dir: str, file_ending: str, num_channels: int) -> BoxCase:
    if not isinstance(content, dict) or not isinstance(content.get("boxes"), list):
        raise AnnotationError(f"{where}: expected {{\"space\": \"voxel\"|\"world\", \"boxes\": [...]}}")
    space = content.get("space", "voxel")
    if space not in ("voxel", "world"):
        raise AnnotationError(f"{where}: space must be 'voxel' or 'world', got {space!r}")
    boxes = []
    for i, entry in enumerate(content["boxes"]):
        lo, hi = _parse_corners(entry, f"{where}, box {i}")
        category = entry.get("category")
        if category is not None and (isinstance(category, bool) or not str(category).lstrip("-").isdigit()):
            raise AnnotationError(f"{where}, box {i}: category must be an integer, got {category!r}")
        category = None if category is None else int(category)
        boxes.append(BoxAnnotation(lo, hi, space, category, f"case {case_id}, box {i}"))
    images = _case_images(case_id, images_dir, file_ending, num_channels, content.get("image"))
    return BoxCase(case_id, images, boxes, source=f"case {case_id}")


def read_generic(path: str, images_dir: str, file_ending: str = ".nii.gz", num_channels: int = 1) -> list[BoxCase]:
    """Cases from the generic box format: a JSON file per case, a folder of them, or one CSV.

    JSON (``<case>.json``; the case id is the file name)::

        {"space": "voxel",            # or "world": corners in mm, ITK physical (LPS) coordinates
         "image": "optional/path.nii.gz",   # default: <images_dir>/<case>_0000<ending> (nnU-Net naming)
         "boxes": [{"x_min": 10, "y_min": 20, "z_min": 3, "x_max": 30, "y_max": 41, "z_max": 9}]}

    CSV with header ``case,x_min,y_min,z_min,x_max,y_max,z_max[,space]``, one box per row; a row with
    empty corners declares a case without boxes. Maxima are inclusive; a box with ``z_min == z_max``
    is a 2D box on one slice.
    """
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".json"))
        if not files:
            raise AnnotationError(f"{path}: no .json box files in this folder")
        return [c for f in files for c in read_generic(os.path.join(path, f), images_dir, file_ending, num_channels)]
    if path.lower().endswith(".csv"):
        return _read_generic_csv(path, images_dir, file_ending, num_channels)
    try:
        with open(path) as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path} is not valid JSON: {e}") from None
    case_id = os.path.basename(path)[: -len(".json")]
    return [_generic_case(case_id, content, f"{path}", images_dir, file_ending, num_channels)]


def _read_generic_csv(path: str, images_dir: str, file_ending: str, num_channels: int) -> list[BoxCase]:
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
        for box in content["boxes"]:  # empty cells -> a clear message from _parse_corners
            for k, v in list(box.items()):
                if v == "":
                    del box[k]
        cases.append(_generic_case(case_id, content, f"{path}, case {case_id}", images_dir, file_ending, num_channels))
    return cases


def read_box_annotations(path: str, images_dir: str, phases=PAPER_PHASES, categories=None,
                         file_ending: str = ".nii.gz", num_channels: int = 1) -> list[BoxCase]:
    """LLD-MMRI ``Annotation.json`` (recognised by its ``Annotation_info`` key) or the generic format."""
    if not os.path.exists(path):
        raise AnnotationError(f"box annotation file {path} does not exist")
    if os.path.isfile(path) and path.lower().endswith(".json"):
        try:
            with open(path) as f:
                is_lld = "Annotation_info" in json.load(f)
        except (json.JSONDecodeError, TypeError):
            is_lld = False
        if is_lld:  # LLD-MMRI ships .nii.gz images whatever the model's dataset uses
            return read_lld_mmri(path, images_dir, phases, categories)
    return read_generic(path, images_dir, file_ending, num_channels)


def physical_to_continuous_index(points_mm: np.ndarray, image) -> np.ndarray:
    """ITK physical points (mm, LPS; rows of (x, y, z)) -> continuous (x, y, z) indices of ``image``.

    ``image`` is anything with SimpleITK's ``GetOrigin``/``GetSpacing``/``GetDirection``: an image, or an
    ``sitk.ImageFileReader`` after ``ReadImageInformation()`` (no voxels read). Voxel ``i`` spans
    ``i - 0.5 .. i + 0.5``.
    """
    origin = np.array(image.GetOrigin(), dtype=float)
    spacing = np.array(image.GetSpacing(), dtype=float)
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    return (np.linalg.solve(direction, (np.atleast_2d(points_mm) - origin).T).T) / spacing


def annotation_to_voxel_box(annotation: BoxAnnotation, image) -> Box:
    """The (z, y, x) half-open voxel box of ``annotation`` in ``image``'s grid (not clipped).

    Voxel annotations: inclusive integer corners, so ``hi = max + 1``. World annotations (mm, LPS):
    the eight corners are mapped to continuous indices through the image's origin, spacing and
    direction, and the box covers the voxels whose centres lie inside their axis-aligned hull.
    ``image``: see :func:`physical_to_continuous_index`.
    """
    if annotation.space == "voxel":
        lo = [int(round(v)) for v in annotation.minimum]
        hi = [int(round(v)) + 1 for v in annotation.maximum]
    elif annotation.space == "world":
        corners = physical_to_continuous_index(np.array(_corners(annotation.minimum, annotation.maximum)), image)
        lo = [int(np.ceil(v - 1e-6)) for v in corners.min(axis=0)]
        hi = [int(np.floor(v + 1e-6)) + 1 for v in corners.max(axis=0)]
    else:
        raise ValueError(f"unknown box space {annotation.space!r} ({annotation.source})")
    return Box(tuple(lo[::-1]), tuple(hi[::-1]), annotation.category, annotation.source)


def _corners(lo, hi) -> list[tuple[float, float, float]]:
    return [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]


def boxes_in_image(annotations: list[BoxAnnotation], image) -> list[Box]:
    """Voxel boxes of ``annotations`` clipped to ``image``: partly outside -> clipped with a warning,
    wholly outside -> skipped with a warning (:class:`BoxAnnotationWarning`). ``image``: an
    ``sitk.Image`` or an ``sitk.ImageFileReader`` after ``ReadImageInformation()``."""
    shape = image.GetSize()[::-1]
    boxes = []
    for annotation in annotations:
        box = annotation_to_voxel_box(annotation, image)
        inside = box.clipped(shape)
        if inside.is_empty():
            warnings.warn(f"{box.source}: box (z, y, x) {box.lo}..{box.hi} lies outside the image of shape "
                          f"{shape}; skipped", BoxAnnotationWarning, stacklevel=2)
            continue
        if inside != box:
            warnings.warn(f"{box.source}: box (z, y, x) {box.lo}..{box.hi} reaches outside the image of shape "
                          f"{shape}; clipped to {inside.lo}..{inside.hi}", BoxAnnotationWarning, stacklevel=2)
        boxes.append(inside)
    return boxes


def write_lld_mmri(cases: dict[str, list[dict]], path: str) -> None:
    """Write an LLD-MMRI-style ``Annotation.json``: ``cases`` maps patient -> list of series entries
    ``{"studyUID", "seriesUID", "phase", "boxes": [Box (z, y, x), ...], "categories": [int, ...]}``."""
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
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"Annotation_info": info}, f, indent=1)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------
# Boxes from a label (training), jitter, dropout
# ---------------------------------------------------------------------------------------------------


def _bounds(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Half-open bounding box of the True voxels of a non-empty mask."""
    lo, hi = [], []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo.append(int(hit[0]))
        hi.append(int(hit[-1]) + 1)
    return tuple(lo), tuple(hi)


def lesion_boxes(tumour: np.ndarray, slice_axis: int | None = None) -> list[list[Box]]:
    """Boxes of each connected tumour component (full connectivity), one list per lesion.

    ``slice_axis=None``: one box per lesion (3D). Otherwise one box per slice along ``slice_axis``
    that holds the lesion: the lesion's 2D box in that slice, one slice thick (LLD-MMRI-style
    per-slice boxes).
    """
    labelled, _ = ndimage.label(tumour, structure=np.ones((3,) * tumour.ndim, dtype=bool))
    lesions = []
    for index, found in enumerate(ndimage.find_objects(labelled), start=1):
        if found is None:
            continue
        if slice_axis is None:
            lesions.append([Box(tuple(s.start for s in found), tuple(s.stop for s in found))])
            continue
        component = labelled[found] == index
        offset = [s.start for s in found]
        boxes = []
        for k in range(component.shape[slice_axis]):
            plane = np.take(component, k, axis=slice_axis)
            if not plane.any():
                continue
            lo, hi = _bounds(plane)
            lo, hi = list(lo), list(hi)
            lo.insert(slice_axis, k)
            hi.insert(slice_axis, k + 1)
            boxes.append(Box(tuple(a + o for a, o in zip(lo, offset)), tuple(b + o for b, o in zip(hi, offset))))
        lesions.append(boxes)
    return lesions


def jitter_box(box: Box, shape: tuple[int, ...], spacing: tuple[float, ...], jitter_mm: tuple[float, float],
               rng: np.random.Generator, fixed_axes: tuple[int, ...] = ()) -> Box:
    """Move each face of ``box`` outward by a distance drawn uniformly from ``jitter_mm`` (mm; negative
    moves it inward), rounded to whole voxels with ``spacing`` (mm, array order). Faces on
    ``fixed_axes`` stay. The result is clipped to ``shape`` and keeps at least one voxel per axis."""
    lo, hi = list(box.lo), list(box.hi)
    for axis, s in enumerate(spacing):
        if axis in fixed_axes:
            continue
        out_lo, out_hi = rng.uniform(jitter_mm[0], jitter_mm[1], 2) / s
        a = min(max(box.lo[axis] - int(round(out_lo)), 0), shape[axis] - 1)
        b = min(max(box.hi[axis] + int(round(out_hi)), 0), shape[axis])
        if b <= a:  # shrunk to nothing: keep the middle voxel of the original extent
            a = min(max((box.lo[axis] + box.hi[axis] - 1) // 2, 0), shape[axis] - 1)
            b = a + 1
        lo[axis], hi[axis] = a, b
    return replace(box, lo=tuple(lo), hi=tuple(hi))


@dataclass(frozen=True)
class BoxChannelSettings:
    """How the training box channel is drawn from the ground-truth tumours.

    per_slice: one 2D box per axial slice of each lesion (LLD-MMRI draws boxes per slice) instead of
        one 3D box per lesion.
    jitter_mm: each box face moves outward by U(jitter_mm) mm (negative: inward), independently per face;
        per-slice boxes keep their slice.
    p_drop_lesion: probability that a lesion gets no box (the network still segments it).
    p_drop_all: probability that a whole sample gets no boxes, so the organ and tumour-free cases do not
        depend on boxes.
    """

    per_slice: bool = False
    jitter_mm: tuple[float, float] = (-2.0, 4.0)
    p_drop_lesion: float = 0.1
    p_drop_all: float = 0.2

    def exact(self) -> BoxChannelSettings:
        """The same boxes without jitter or dropout (validation, tests)."""
        return replace(self, jitter_mm=(0.0, 0.0), p_drop_lesion=0.0, p_drop_all=0.0)

    def describe(self) -> str:
        return (f"{'per-slice 2D' if self.per_slice else '3D'} boxes of the ground-truth tumour components, faces "
                f"jittered outward by U({self.jitter_mm[0]:g}, {self.jitter_mm[1]:g}) mm, lesion dropout "
                f"{self.p_drop_lesion:g}, whole-sample dropout {self.p_drop_all:g}")


def box_channel(tumour: np.ndarray, spacing: tuple[float, ...], settings: BoxChannelSettings,
                rng: np.random.Generator, slice_axis: int = 0) -> np.ndarray:
    """Binary box channel (bool, same shape as ``tumour``) for one sample.

    ``tumour`` is the tumour mask of the (augmented) sample, ``spacing`` its voxel size in mm in the
    same axis order, ``slice_axis`` the axis across axial slices (used when ``settings.per_slice``
    and the sample is 3D).
    """
    if not tumour.any() or rng.random() < settings.p_drop_all:
        return np.zeros(tumour.shape, dtype=bool)
    per_slice_axis = slice_axis if settings.per_slice and tumour.ndim == 3 else None
    boxes = []
    for lesion in lesion_boxes(tumour, per_slice_axis):
        if rng.random() < settings.p_drop_lesion:
            continue
        fixed = () if per_slice_axis is None else (per_slice_axis,)
        boxes += [jitter_box(b, tumour.shape, spacing, settings.jitter_mm, rng, fixed) for b in lesion]
    return rasterise(boxes, tumour.shape)


class BoxChannelTransform(BasicTransform):
    """Append the tumour box channel to ``image``, drawn from the tumour label in ``segmentation``.

    Place it after nnU-Net's spatial and intensity augmentation (so the boxes follow the augmented
    label and the channel stays exactly 0/1) and before deep-supervision downsampling. ``spacing`` is
    the configuration's spacing in mm, in the patch's axis order. ``rng`` is for tests: without it each
    draw is seeded from numpy's global state, which nnU-Net seeds differently in every worker.
    """

    def __init__(self, tumour_label: int, spacing: tuple[float, ...], settings: BoxChannelSettings,
                 slice_axis: int = 0, rng: np.random.Generator | None = None):
        super().__init__()
        self.tumour_label = int(tumour_label)
        self.spacing = tuple(float(s) for s in spacing)
        self.settings = settings
        self.slice_axis = slice_axis
        self.rng = rng

    def get_parameters(self, **data_dict) -> dict:
        segmentation = data_dict["segmentation"]
        tumour = np.asarray(segmentation[0]) == self.tumour_label
        rng = self.rng if self.rng is not None else np.random.default_rng(np.random.randint(0, 2**31))
        return {"box": box_channel(tumour, self.spacing, self.settings, rng, self.slice_axis)}

    def apply(self, data_dict: dict, **params) -> dict:
        image = data_dict["image"]
        box = torch.from_numpy(params["box"]).to(image.dtype)[None]
        data_dict["image"] = torch.cat((image, box), dim=0)
        return data_dict


# ---------------------------------------------------------------------------------------------------
# Pseudo-mask post-processing
# ---------------------------------------------------------------------------------------------------


def restrict_tumour_to_boxes(segmentation: np.ndarray, allowed: np.ndarray, organ_label: int,
                             tumour_label: int) -> tuple[np.ndarray, int]:
    """Remove predicted tumour voxels outside ``allowed`` (the boxes plus margin).

    Each removed piece (connected component) takes the label that surrounds most of it: the organ
    label when the voxels bordering it are mostly organ (or tumour), else background. Returns the new
    label map and the number of voxels changed.
    """
    removed = (segmentation == tumour_label) & ~allowed
    if not removed.any():
        return segmentation, 0
    out = segmentation.copy()
    labelled, n = ndimage.label(removed, structure=np.ones((3,) * removed.ndim, dtype=bool))
    organ_like = (segmentation == organ_label) | ((segmentation == tumour_label) & allowed)
    for index, found in enumerate(ndimage.find_objects(labelled), start=1):
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in found)
        piece = labelled[grown] == index
        ring = ndimage.binary_dilation(piece, structure=np.ones((3,) * piece.ndim, dtype=bool)) & ~piece
        organ_votes = int(organ_like[grown][ring].sum())
        fill = organ_label if organ_votes * 2 > int(ring.sum()) else 0
        out[grown][piece] = fill
    return out, int(removed.sum())


# ---------------------------------------------------------------------------------------------------
# nnU-Net glue: network guard, transform placement, validation data, preprocessing geometry
# ---------------------------------------------------------------------------------------------------


class BoxChannelGuard:
    """Forward pre-hook: refuse inputs without the box channel with a message that says what to run.

    ``nnUNetv2_predict`` feeds only the image channels; the box channel has to come from
    ``tumorsynth_pseudolabel``.
    """

    def __init__(self, num_input_channels: int):
        self.num_input_channels = num_input_channels

    def __call__(self, module, args):
        x = args[0]
        if x.shape[1] == self.num_input_channels:
            return None
        if x.shape[1] == self.num_input_channels - 1:
            raise RuntimeError(
                f"This network was trained with a tumour bounding-box input channel (nnUNetTrainerBBoxChannel): it "
                f"expects {self.num_input_channels} channels (the image channels plus the boxes) but got "
                f"{x.shape[1]}, which is what nnUNetv2_predict feeds. Predict with tumorsynth_pseudolabel instead, "
                f"which rasterises the boxes and appends them, e.g. tumorsynth_pseudolabel -bbox Annotation.json "
                f"-i IMAGES -o OUT -d DATASET -c CONFIGURATION -f FOLD -tr TRAINER"
            )
        raise RuntimeError(
            f"This box-channel network expects {self.num_input_channels} input channels (image channels plus the "
            f"tumour box channel) but got {x.shape[1]}. Predict with tumorsynth_pseudolabel."
        )


def add_box_channel_guard(network: torch.nn.Module, num_input_channels: int) -> torch.nn.Module:
    network.register_forward_pre_hook(BoxChannelGuard(num_input_channels))
    return network


def insert_before_deep_supervision(transforms, new_transform: BasicTransform):
    """Insert ``new_transform`` into nnU-Net's ``ComposeTransforms`` just before the label is turned into
    regions or downsampled for deep supervision (at the end if neither is there)."""
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform

    position = len(transforms.transforms)
    for i, t in enumerate(transforms.transforms):
        if isinstance(t, (ConvertSegmentationToRegionsTransform, DownsampleSegForDSTransform)):
            position = i
            break
    transforms.transforms.insert(position, new_transform)
    return transforms


def exact_box_channel(tumour: np.ndarray, per_slice: bool, slice_axis: int = 0) -> np.ndarray:
    """Tight boxes of every tumour component, no jitter or dropout (validation)."""
    lesions = lesion_boxes(tumour, slice_axis if per_slice and tumour.ndim == 3 else None)
    return rasterise([b for lesion in lesions for b in lesion], tumour.shape)


def dataset_class_with_boxes(dataset_class: type, tumour_label: int, per_slice: bool, slice_axis: int) -> type:
    """A subclass of an nnU-Net dataset class whose ``load_case`` appends the exact box channel of the
    case's ground-truth tumours to the image: used for the trainer's final validation, which feeds
    whole preprocessed cases to the sliding-window predictor."""

    class WithBoxChannel(dataset_class):
        def load_case(self, identifier):
            data, seg, seg_prev, properties = super().load_case(identifier)
            data = np.asarray(data[:])
            box = exact_box_channel(np.asarray(seg[0]) == tumour_label, per_slice, slice_axis)
            return np.concatenate((data, box[None].astype(data.dtype))), seg, seg_prev, properties

    WithBoxChannel.__name__ = f"{dataset_class.__name__}WithBoxChannel"
    return WithBoxChannel


def to_preprocessed_grid(mask: np.ndarray, properties: dict, plans_manager, configuration_manager) -> np.ndarray:
    """Carry a mask from the original image grid ((z, y, x) as read) into nnU-Net's preprocessed grid.

    Applies exactly what ``DefaultPreprocessor.run_case_npy`` does to a segmentation: transpose by
    ``plans['transpose_forward']``, crop to ``properties['bbox_used_for_cropping']`` (set when the image
    was preprocessed), resample with the configuration's segmentation resampling to its spacing.
    Returns a bool array shaped like the preprocessed image (without the channel axis).
    """
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    transpose = plans_manager.transpose_forward
    m = mask.astype(np.int8)[None].transpose([0, *[i + 1 for i in transpose]])
    m = m[(slice(None), *[slice(a, b) for a, b in properties["bbox_used_for_cropping"]])]
    original_spacing = [properties["spacing"][i] for i in transpose]
    target_spacing = list(configuration_manager.spacing)
    if len(target_spacing) < m.ndim - 1:  # 2d configurations keep the spacing between slices
        target_spacing = [original_spacing[0], *target_spacing]
    new_shape = compute_new_shape(m.shape[1:], original_spacing, target_spacing)
    m = configuration_manager.resampling_fn_seg(m, new_shape, original_spacing, target_spacing)
    return np.asarray(m[0]) > 0
