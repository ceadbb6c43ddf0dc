"""What every box annotation reader produces: :class:`BoxAnnotation`, :class:`BoxCase`, and their errors.

The readers (:mod:`.lld_mmri`, :mod:`.generic`) share the corner parsing here, so both formats accept
the same corner values and refuse bad ones with the same messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

CORNER_KEYS = ("x_min", "y_min", "z_min", "x_max", "y_max", "z_max")


class AnnotationError(ValueError):
    """A box annotation file that cannot be read; the message names the file, case and entry."""


class BoxAnnotationWarning(UserWarning):
    """A box was clipped to the image or skipped because it lies outside it."""


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


def parse_corners(entry, where: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
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


def parse_category(category, where: str) -> int | None:
    """A lesion category as written (integer, integer string or absent) -> int or None."""
    if category is None:
        return None
    if isinstance(category, bool) or not str(category).lstrip("-").isdigit():
        raise AnnotationError(f"{where}: category must be an integer, got {category!r}")
    return int(category)


def safe_id(text: str) -> str:
    """``text`` reduced to characters nnU-Net accepts in a case identifier."""
    return re.sub(r"[^A-Za-z0-9_-]", "", text) or "case"
