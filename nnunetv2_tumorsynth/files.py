"""One way to write files: atomic single files, and new nnU-Net raw datasets built aside then renamed.

Every output of the project goes through these helpers, so a crash (or ``kill -9``) never leaves a
half-written file or half a dataset where a user or nnU-Net would read it, and nothing the user
already has is replaced without an explicit ``overwrite``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    The temporary name keeps ``path``'s file ending (``.nii.gz``, ``.npz``, ``.png``...), so writers
    that choose the format from the ending (SimpleITK, numpy, matplotlib) write the right format::

        with atomic_path("out/case.nii.gz") as tmp:
            sitk.WriteImage(image, tmp)
    """
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp{os.getpid()}_{name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


class CorruptFile(ValueError):
    """A file that is truncated or cannot be decoded; the message names it."""


def check_complete(path: str) -> None:
    """Raise ``CorruptFile`` if a gzip file (``.nii.gz``, ``.gz``) ends before its trailer or does not decode.

    SimpleITK decodes a truncated ``.nii.gz`` without an error and fills the missing voxels with zeros (a killed
    ``nnUNetv2_predict`` leaves such files), so every image the tools read is decompressed once here first.
    """
    if not path.endswith(".gz"):
        return
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except (EOFError, OSError, zlib.error) as e:
        raise CorruptFile(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); write or copy it again") from e


def read_image(path: str):
    """``SimpleITK.ReadImage`` after ``check_complete``; an unreadable file is a ``CorruptFile`` naming it."""
    import SimpleITK as sitk

    check_complete(path)
    try:
        return sitk.ReadImage(path)
    except RuntimeError as e:
        raise CorruptFile(f"{path} cannot be read as an image ({str(e).strip().splitlines()[-1][:200]})") from e


def json_safe(obj):
    """Copy of ``obj`` for strict JSON: numpy scalars made Python numbers, NaN and inf made None, tuples lists."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def sha256_of(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(obj, path: str) -> None:
    """``json.dump(obj)`` to ``path`` atomically (indent 2)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)


def existing_datasets(raw_folder: str, dataset_id: int) -> list[str]:
    """Names of the folders ``Dataset<id>_*`` in ``raw_folder`` (normally zero or one)."""
    prefix = f"Dataset{dataset_id:03d}_"
    return sorted(d for d in os.listdir(raw_folder) if d.startswith(prefix)) if os.path.isdir(raw_folder) else []


@contextlib.contextmanager
def new_raw_dataset(raw_folder: str, dataset_id: int, name: str, overwrite: bool = False) -> Iterator[str]:
    """Build ``$nnUNet_raw/Dataset<id>_<name>`` in a temporary folder; rename it into place on success.

    Refuses (FileExistsError, before anything is written) when a dataset with the same id exists,
    unless ``overwrite``; then the old one is removed only after the new one is complete. The caller
    writes imagesTr/labelsTr (created here) and calls :func:`write_dataset_json` inside the block::

        with new_raw_dataset(nnUNet_raw, 502, "LLDPseudo") as folder:
            ...write folder/imagesTr/..., folder/labelsTr/...
            write_dataset_json(folder, channel_names, labels, num_training, ".nii.gz", "Dataset502_LLDPseudo")
    """
    full_name = f"Dataset{dataset_id:03d}_{name}"
    taken = existing_datasets(raw_folder, dataset_id)
    if taken and not overwrite:
        raise FileExistsError(
            f"{os.path.join(raw_folder, taken[0])} already exists; choose another dataset id or pass --overwrite"
        )
    os.makedirs(raw_folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{full_name}.", dir=raw_folder)
    try:
        os.makedirs(os.path.join(tmp, "imagesTr"))
        os.makedirs(os.path.join(tmp, "labelsTr"))
        yield tmp
        for d in taken:
            shutil.rmtree(os.path.join(raw_folder, d))
        os.replace(tmp, os.path.join(raw_folder, full_name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_dataset_json(folder: str, channel_names: dict, labels: dict, num_training: int, file_ending: str,
                       dataset_name: str, description: str | None = None, **extra) -> None:
    """``dataset.json`` through nnU-Net's own ``generate_dataset_json`` (extra keys are kept)."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    extra.setdefault("license", "as the source dataset")
    extra.setdefault("converted_by", "nnunetv2-tumorsynth")
    generate_dataset_json(folder, channel_names, labels, num_training, file_ending, dataset_name=dataset_name,
                          description=description, **extra)
