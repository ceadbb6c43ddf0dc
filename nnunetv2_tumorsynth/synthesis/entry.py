"""The one file format of a synthetic tumour: an ``Entry`` and its ``.npz`` file.

An entry is a region of one training case with its new image values and labels: the tumour mask's box,
or, with mass effect, the ball around the tumour where image and labels were warped together. Outside
the region nothing changes. Arrays are in nnU-Net's preprocessed axis order (z, y, x); ``corner`` is the
voxel index of a box's first corner in the case.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from nnunetv2_tumorsynth.files import atomic_path

PREVIEW_VIEWS = ("axial", "coronal")


class UnreadableEntry(OSError):
    """An entry file that cannot be read (truncated, empty, or not an entry); the message names the file."""


@dataclass
class MassEffectRegion:
    """The voxels that moved around a tumour (Hu et al. 2023, eq. 5): box corner, region mask, new values and labels."""

    corner: np.ndarray
    mask: np.ndarray
    values: np.ndarray
    labels: np.ndarray


@dataclass
class Entry:
    """One synthetic tumour in one case.

    corner / mask: the tumour's bool box and its first corner (voxels). values / before: the box's image values
    after and before filling (float32). size / size_requested: the size preset placed and the one asked for
    (they differ after a fallback to a smaller preset); radius_mm: equivalent radius of the placed mask (mm);
    requested_radius_mm: of the first tumour drawn at the requested preset. volume_ml: tumour volume.
    preview: axial and coronal slices of the context crop before and after, and the mask (PNG previews).
    """

    case: str
    corner: np.ndarray
    mask: np.ndarray
    values: np.ndarray
    before: np.ndarray
    volume_ml: float = 0.0
    epoch: int = 0
    size: str | None = None
    size_requested: str | None = None
    radius_mm: float | None = None
    requested_radius_mm: float | None = None
    region: MassEffectRegion | None = None
    preview: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def box(self) -> tuple[slice, ...]:
        """The tumour box as slices of the case's (z, y, x) array."""
        return tuple(slice(int(c), int(c) + s) for c, s in zip(self.corner, self.mask.shape))

    def save(self, path: str) -> None:
        """Write the entry atomically (hidden temporary name, then rename)."""
        optional = {key: value for key, value in (("size", self.size), ("size_requested", self.size_requested),
                                                  ("radius_mm", self.radius_mm),
                                                  ("requested_radius_mm", self.requested_radius_mm))
                    if value is not None}
        region = {} if self.region is None else {
            "region_corner": self.region.corner, "region_mask": self.region.mask,
            "region_values": self.region.values, "region_labels": self.region.labels}
        with atomic_path(path) as tmp:
            np.savez(tmp, case=self.case, corner=self.corner, mask=self.mask, values=self.values, before=self.before,
                     volume_ml=self.volume_ml, epoch=self.epoch, **optional, **region,
                     **{f"preview_{k}": v for k, v in self.preview.items()})

    @classmethod
    def load(cls, path: str) -> Entry:
        """Read an entry file; raises ``UnreadableEntry`` naming the file if it is truncated or not an entry."""
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in f.files}
        except FileNotFoundError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise UnreadableEntry(f"bank entry {path} cannot be read ({type(e).__name__}: {e})") from e
        missing = [k for k in ("corner", "mask", "values", "before") if k not in arrays]
        if missing:
            raise UnreadableEntry(f"bank entry {path} lacks {missing}: not an entry file")
        values = arrays["values"]
        region = None
        if "region_corner" in arrays:
            region = MassEffectRegion(arrays["region_corner"].astype(int), arrays["region_mask"].astype(bool),
                                      arrays["region_values"], arrays["region_labels"])
        scalar = {k: arrays[k].item() for k in ("size", "size_requested", "radius_mm", "requested_radius_mm")
                  if k in arrays}
        return cls(
            case=str(arrays["case"]) if "case" in arrays else os.path.basename(os.path.dirname(path)),
            corner=arrays["corner"].astype(int), mask=arrays["mask"].astype(bool),
            values=values[0] if values.ndim == 4 else values, before=arrays["before"],
            volume_ml=float(arrays.get("volume_ml", 0.0)), epoch=int(arrays.get("epoch", 0)),
            region=region, preview={k[len("preview_"):]: v for k, v in arrays.items() if k.startswith("preview_")},
            **scalar)

    def paste_into(self, image: np.ndarray) -> None:
        """Write the entry's tumour values into ``image`` (z, y, x) in place."""
        image[self.box][self.mask] = self.values[self.mask]
