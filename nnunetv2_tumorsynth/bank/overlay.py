"""The data-loader side of the bank: a case with an entry pasted in, lazily, and nnU-Net's dataset wrapper.

Runs in nnU-Net's data-loader workers: reads the bank folder, never writes entries. Arrays are in nnU-Net's
preprocessed axis order: data (C, z, y, x), seg (1, z, y, x).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from nnunetv2_tumorsynth.bank.store import entry_paths, set_aside
from nnunetv2_tumorsynth.files import atomic_path
from nnunetv2_tumorsynth.synthesis.entry import Entry, UnreadableEntry


class OverlaidArray:
    """A case array (C, z, y, x) with an entry pasted in, read lazily slice by slice.

    nnU-Net's data loader only crops a patch out of the case (``acvl_utils`` ``crop_and_pad_nd``), so
    the synthetic tumour is pasted into the requested slab instead of copying the whole case.
    ``fill`` is the entry's values (float data) or a scalar (the tumour label for seg).
    """

    def __init__(self, base, corner: np.ndarray, mask: np.ndarray, fill):
        self.base, self.corner, self.mask, self.fill = base, np.asarray(corner), mask, fill
        self.shape, self.dtype, self.ndim = tuple(base.shape), base.dtype, len(base.shape)

    def __getitem__(self, key) -> np.ndarray:
        if not (isinstance(key, tuple) and len(key) == self.ndim and all(isinstance(k, slice) for k in key)):
            return np.asarray(self.materialise())[key]
        out = np.array(self.base[key])
        starts = [k.indices(n)[0] for k, n in zip(key[1:], self.shape[1:])]
        stops = [k.indices(n)[1] for k, n in zip(key[1:], self.shape[1:])]
        lo = np.maximum(starts, self.corner)
        hi = np.minimum(stops, self.corner + np.array(self.mask.shape))
        if np.any(hi <= lo):
            return out
        in_out = (slice(None), *(slice(a - s, b - s) for a, b, s in zip(lo, hi, starts)))
        in_entry = tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, self.corner))
        m = self.mask[in_entry]
        region = out[in_out]
        if np.isscalar(self.fill):
            region[:, m] = self.fill
        else:
            region[:, m] = self.fill[(slice(None), *in_entry)][:, m]
        out[in_out] = region
        return out

    def materialise(self) -> np.ndarray:
        return self[tuple(slice(None) for _ in range(self.ndim))]

    def __array__(self, dtype=None, copy=None):
        out = self.materialise()
        return out if dtype is None else out.astype(dtype)


def overlay_entry(data, seg, properties: dict, entry: Entry, tumour_label: int, max_locations: int = 10000):
    """Case with the entry's synthetic tumour: (data, seg, properties) as nnU-Net's ``load_case`` returns.

    Outside the entry's region nothing changes: the region is the tumour mask, or with mass effect the
    ball around it where image and labels were warped together (``entry.region``).

    The tumour's voxels are added to ``properties['class_locations'][tumour_label]`` (rows of
    (channel, z, y, x), nnU-Net's format) so foreground oversampling can choose them.
    """
    corner, mask = entry.corner, entry.mask
    if entry.region is not None:  # mass effect: the whole region moved, image and labels together
        region = entry.region
        data_out = OverlaidArray(data, region.corner, region.mask, region.values[None].astype(data.dtype))
        seg_out = OverlaidArray(seg, region.corner, region.mask, region.labels[None].astype(seg.dtype))
    else:
        data_out = OverlaidArray(data, corner, mask, entry.values[None].astype(data.dtype, copy=False))
        seg_out = OverlaidArray(seg, corner, mask, seg.dtype.type(tumour_label))
    voxels = np.argwhere(mask) + corner
    if len(voxels) > max_locations:
        voxels = voxels[np.random.choice(len(voxels), max_locations, replace=False)]
    locations = np.concatenate([np.zeros((len(voxels), 1), voxels.dtype), voxels], axis=1)
    properties = dict(properties)
    class_locations = dict(properties.get("class_locations", {}))
    existing = class_locations.get(tumour_label)
    class_locations[tumour_label] = locations if existing is None or len(existing) == 0 else np.concatenate(
        [np.asarray(existing), locations.astype(np.asarray(existing).dtype)])
    properties["class_locations"] = class_locations
    return data_out, seg_out, properties


class SyntheticTumourDataset:
    """nnU-Net training dataset whose cases receive a bank entry with probability ``probability``.

    Wraps the dataset object of ``nnUNetTrainer.get_tr_and_val_datasets`` (training split only).
    Runs in the data-loader workers: reads the bank folder, never writes entries. Every sample loaded is appended
    to ``<bank>/usage/<pid>.jsonl`` with the entry pasted into it, if any (counts for the training log).
    """

    def __init__(self, dataset, bank_folder: str, probability: float, tumour_label: int, dump_samples: int = 0):
        self.dataset, self.bank_folder = dataset, bank_folder
        self.probability, self.tumour_label, self.dump_samples = probability, tumour_label, dump_samples
        self.identifiers = dataset.identifiers
        self._dumped = 0

    def __getitem__(self, identifier):
        return self.load_case(identifier)

    def load_case(self, identifier):
        data, seg, seg_prev, properties = self.dataset.load_case(identifier)
        entry, path = self._draw_entry(identifier)
        self._log_load(identifier, path)
        if entry is None:
            return data, seg, seg_prev, properties
        data_out, seg_out, properties = overlay_entry(data, seg, properties, entry, self.tumour_label)
        self._dump(identifier, data, seg, data_out, seg_out, entry)
        return data_out, seg_out, seg_prev, properties

    def _draw_entry(self, identifier) -> tuple[Entry | None, str | None]:
        """With probability ``probability`` one of the case's entries, read (None: the real case stays as it is)."""
        if np.random.uniform() >= self.probability:
            return None, None
        paths = entry_paths(self.bank_folder, identifier)
        if not paths:
            return None, None
        path = paths[np.random.randint(len(paths))]
        try:
            return Entry.load(path), path
        except FileNotFoundError:  # pruned or replaced meanwhile: use the real case
            return None, None
        except UnreadableEntry as e:  # truncated or corrupt: set it aside, say so, use the real case
            set_aside(path, e)
            return None, None

    def _log_load(self, identifier, path: str | None) -> None:
        usage = os.path.join(self.bank_folder, "usage")
        os.makedirs(usage, exist_ok=True)
        with open(os.path.join(usage, f"{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps({"case": identifier, "entry": None if path is None else os.path.basename(path)}) + "\n")

    def _dump(self, identifier, data, seg, data_out, seg_out, entry: Entry) -> None:
        if self._dumped < self.dump_samples:
            self._dumped += 1
            full = (slice(None), *entry.box)
            dumps = os.path.join(self.bank_folder, "dumps")
            os.makedirs(dumps, exist_ok=True)
            name = os.path.join(dumps, f"{identifier}__{os.getpid()}_{self._dumped}.npz")
            with atomic_path(name) as tmp:
                np.savez(tmp, data_before=np.asarray(data[full]), data_after=data_out[full],
                         seg_before=np.asarray(seg[full]), seg_after=seg_out[full], mask=entry.mask,
                         corner=entry.corner)


@dataclass(frozen=True)
class Usage:
    """Samples the data-loader workers loaded so far, and how many of them received an entry."""

    loaded: int = 0
    overlaid: int = 0

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.loaded - other.loaded, self.overlaid - other.overlaid)


def count_uses(bank_folder: str) -> Usage:
    """Samples loaded and samples overlaid by all data-loader workers so far (``usage/*.jsonl``)."""
    usage = os.path.join(bank_folder, "usage")
    if not os.path.isdir(usage):
        return Usage()
    loaded = overlaid = 0
    for name in os.listdir(usage):
        with open(os.path.join(usage, name)) as f:
            for line in f:
                loaded += 1
                overlaid += '"entry": null' not in line
    return Usage(loaded, overlaid)
