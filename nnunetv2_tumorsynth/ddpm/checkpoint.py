"""Checkpoints of the diffusion model: weights plus everything needed to use them safely.

A checkpoint is one ``torch.save`` file holding a dict::

    {"format": "nnunetv2_tumorsynth.ddpm", "format_version": 1,
     "metadata": {...}, "state_dict": {...}, "optimizer": {...} | None, "extra_state": {...} | None}

The metadata (a plain JSON-like dict, see ``make_metadata``) records the network (preset, mask_channel, MONAI
arguments), the noise schedule, the training crop size in voxels and mm, the voxel spacing (mm) and axis
order, the source datasets and their intensity normalisation, and the training state (epoch, best val loss).
Files are written atomically (``files.atomic_path``) and read with
``torch.load(weights_only=True)``, so ``extra_state`` must hold only tensors and plain Python containers.
"""

from __future__ import annotations

import datetime
import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nnunetv2_tumorsynth.files import atomic_path

from .network import MaskedDiffusionUNet
from .schedule import NoiseSchedule

CHECKPOINT_FORMAT = "nnunetv2_tumorsynth.ddpm"
CHECKPOINT_FORMAT_VERSION = 1
# nnU-Net's preprocessed arrays are (z, y, x) after the plans' transpose; spacing follows the same order.
DEFAULT_AXIS_ORDER = "zyx"
REQUIRED_METADATA_KEYS = (
    "preset",
    "mask_channel",
    "network_kwargs",
    "schedule",
    "crop_size_vox",
    "crop_size_mm",
    "spacing_mm",
    "axis_order",
    "normalisation",
    "datasets",
    "training",
)


def make_metadata(
    model: MaskedDiffusionUNet,
    crop_size_vox: Sequence[int],
    spacing_mm: Sequence[float],
    normalisation: dict[str, Any] | str,
    datasets: Sequence[dict[str, Any]] = (),
    axis_order: str = DEFAULT_AXIS_ORDER,
    epoch: int = 0,
    best_val_loss: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build the checkpoint metadata for ``model``.

    Args:
        crop_size_vox: training crop (z, y, x) in voxels, in ``axis_order``.
        spacing_mm: voxel spacing in mm, same axis order (nnU-Net: the plans' spacing of the configuration).
        normalisation: the intensity normalisation of the training data, e.g.
            ``{"scheme": "ZScoreNormalization"}`` or ``{"scheme": "CTNormalization", "mean": ..., "std": ...,
            "percentile_00_5": ..., "percentile_99_5": ...}``; a string is taken as the scheme name.
        datasets: source datasets, e.g. ``[{"name": "Dataset501_ATLAS", "plans": "nnUNetPlans",
            "configuration": "3d_fullres", "fold": 0, "normalisation": {...}}]``.
        epoch, best_val_loss: training state.
        extra: any further JSON-like entries (kept as given).
    """
    crop = [int(c) for c in crop_size_vox]
    spacing = [float(s) for s in spacing_mm]
    if len(crop) != 3 or len(spacing) != 3:
        raise ValueError(f"crop_size_vox and spacing_mm need 3 values (z, y, x); got {crop} and {spacing}")
    meta: dict[str, Any] = {
        **model.describe(),
        "crop_size_vox": crop,
        "crop_size_mm": [c * s for c, s in zip(crop, spacing, strict=True)],
        "spacing_mm": spacing,
        "axis_order": axis_order,
        "normalisation": _as_normalisation(normalisation),
        "datasets": [dict(d) for d in datasets],
        "training": {
            "epoch": int(epoch),
            "best_val_loss": None if best_val_loss is None else float(best_val_loss),
        },
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(extra)
    return meta


def _as_normalisation(normalisation: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(normalisation, str):
        return {"scheme": normalisation}
    if "scheme" not in normalisation:
        raise ValueError(f"normalisation needs a 'scheme' entry (e.g. 'ZScoreNormalization'); got {normalisation}")
    return dict(normalisation)


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights and buffers, detached and on the CPU (what a checkpoint stores)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_checkpoint(
    path: str | os.PathLike,
    model: MaskedDiffusionUNet,
    metadata: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    extra_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and ``metadata`` atomically to ``path``.

    The network entries of the metadata (preset, mask_channel, network_kwargs, schedule) are taken from
    ``model``; if ``metadata`` states different ones a ``ValueError`` is raised (a checkpoint must describe
    its own weights). Missing required keys (``REQUIRED_METADATA_KEYS``) raise a ``ValueError`` naming them.

    Args:
        path: output file (its folder must exist); an existing file is replaced atomically.
        metadata: see ``make_metadata``.
        optimizer: optionally saved (``optimizer.state_dict()``) to resume training.
        extra_state: further state for resuming (tensors and plain containers only), e.g. scheduler, RNG.
    Returns:
        the path written.
    """
    path = Path(path)
    meta = dict(metadata)
    for key, value in model.describe().items():
        if key in meta and meta[key] != value:
            raise ValueError(f"metadata[{key!r}] = {meta[key]!r} but the model has {value!r}")
        meta[key] = value
    missing = [k for k in REQUIRED_METADATA_KEYS if k not in meta]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}; build it with make_metadata(...)")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "metadata": meta,
        "state_dict": cpu_state_dict(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "extra_state": extra_state,
    }
    with atomic_path(str(path)) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict (metadata, state_dict, optimizer, extra_state), e.g. to resume training."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DDPM checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        raise ValueError(f"DDPM checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}); it is truncated "
                         f"or corrupt: train it again (tumorsynth_pretrain_ddpm) or restore it") from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a nnunetv2_tumorsynth DDPM checkpoint")
    if payload.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {payload['format_version']}, newer than this package "
            f"reads ({CHECKPOINT_FORMAT_VERSION}); upgrade nnunetv2-tumorsynth"
        )
    return payload


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[MaskedDiffusionUNet, dict[str, Any]]:
    """Rebuild the model from a checkpoint. Returns ``(model, metadata)``; the model is in eval mode.

    The network is rebuilt from the stored MONAI arguments (not from the current preset table, so a later
    change of a preset cannot silently mismatch old weights), on the meta device first and then filled with
    the stored tensors, so the 862 M-parameter ``paper`` model is never allocated twice.
    """
    payload = read_checkpoint(path, map_location)
    meta = payload["metadata"]
    with torch.device("meta"):
        model = MaskedDiffusionUNet(
            meta["network_kwargs"],
            mask_channel=meta["mask_channel"],
            preset=meta["preset"],
            schedule=NoiseSchedule.from_metadata(meta["schedule"]),
        )
    model.load_state_dict(payload["state_dict"], strict=True, assign=True)
    left_on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"{path}: tensors missing from the checkpoint: {left_on_meta[:5]}")
    model.eval()
    return model, meta


def check_compatible(
    metadata: dict[str, Any],
    spacing: Sequence[float],
    normalisation: dict[str, Any] | str,
    spacing_rtol: float = 0.01,
) -> None:
    """Raise ``ValueError`` if data with this spacing/normalisation should not be inpainted with the model.

    Args:
        metadata: a checkpoint's metadata.
        spacing: the target data's voxel spacing in mm, in the checkpoint's axis order (z, y, x).
        normalisation: the target data's normalisation ({"scheme": ..., ...} or the scheme name). The schemes
            must be equal; other entries present on both sides (e.g. CT mean/std/percentiles) must agree to a
            relative 1e-6.
        spacing_rtol: allowed relative difference per axis.
    """
    problems = []
    model_spacing = [float(s) for s in metadata["spacing_mm"]]
    target_spacing = [float(s) for s in spacing]
    if len(target_spacing) != len(model_spacing) or any(
        not math.isclose(a, b, rel_tol=spacing_rtol) for a, b in zip(model_spacing, target_spacing, strict=True)
    ):
        problems.append(
            f"spacing mismatch: the model was trained at {model_spacing} mm, "
            f"the data has {target_spacing} mm "
            f"(axis order {metadata.get('axis_order', DEFAULT_AXIS_ORDER)}, tolerance {spacing_rtol:.0%})"
        )
    model_norm = _as_normalisation(metadata["normalisation"])
    target_norm = _as_normalisation(normalisation)
    if model_norm["scheme"] != target_norm["scheme"]:
        problems.append(
            f"normalisation scheme mismatch: the model was trained on {model_norm['scheme']!r}, "
            f"the data uses {target_norm['scheme']!r}"
        )
    else:
        for key in sorted(set(model_norm) & set(target_norm) - {"scheme"}):
            a, b = model_norm[key], target_norm[key]
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                same = math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
            else:
                same = a == b
            if not same:
                problems.append(f"normalisation parameter {key!r} differs: model {a!r}, data {b!r}")
    if problems:
        raise ValueError("DDPM checkpoint is not compatible with this data: " + "; ".join(problems))
