"""Training of the diffusion model on the tumours of a fold (Quinton et al. 2026, sections 2.2.2 and 2.3).

``train_ddpm(TrainingSettings(...))`` is what ``tumorsynth_pretrain_ddpm`` runs. It builds (or restores) the
model and hands it to a ``DDPMTrainer``, shaped like nnU-Net's trainer: ``run_training`` calls
``on_train_start``, then per epoch ``train_epoch`` (``train_step`` per batch), ``validation`` and
``on_epoch_end`` (checkpoints, log, progress.png), then ``on_train_end``; resuming is ``load_checkpoint``.

- data: crops around the tumour components of the fold's training cases (``data.py``); a held-out fraction
  of those cases (all their components) for the validation loss;
- loss: masked forward process (eq. 1) and masked noise MSE (eq. 3) with the bundled ``schedule``;
  AdamW, lr 5e-5, weight decay 1e-5 (the paper's); on CUDA the network runs under bf16 autocast;
- an epoch is one pass over the training components in a seeded random order;
- validation: every held-out crop at ``VAL_TIMESTEPS`` fixed timesteps with fixed noise, so the value is
  comparable across epochs (and across runs with the same seed);
- output, in ``ddpm_output_folder`` (rank 0 only): ``checkpoint_latest.pth`` every epoch,
  ``checkpoint_best.pth`` (lowest validation loss; without held-out crops, every epoch), ``progress.png``
  (loss curves; redrawn at most every ``PNG_INTERVAL_S`` and after the last epoch),
  ``training_log_<timestamp>.txt``; all atomic;
- weights: the checkpoints' ``state_dict`` holds an exponential moving average (EMA) of the trained weights
  (``ema_decay``, with the usual warm-up ``min(decay, (1 + n) / (10 + n))`` after n updates), which is what
  sampling uses and what the validation loss measures; ``ema_decay = 0`` stores the trained weights instead.
  The paper does not mention an EMA; we measured that it is needed for usable samples after short training
  (see benchmarks/bench_ddpm_quality.py). ``checkpoint_latest.pth`` also keeps the trained weights for resuming;
- resume (``resume=True``): model, EMA, optimiser, epoch, loss history and best loss from
  ``checkpoint_latest.pth``.

Reproducibility: every random draw of epoch e is derived from (seed, e, position in the epoch): the order of
the crops, their augmentation, their timestep and noise. A resumed run therefore continues exactly as an
uninterrupted one would, and the result does not depend on how a global batch is split over processes.

Multi-GPU: under ``torchrun`` (env WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (nccl on
CUDA, gloo on CPU). Each global batch is ``batch_size * world_size`` consecutive crops of the epoch's order;
rank r takes the r-th slice of ``batch_size``. The epoch's order is padded by repeating its start so that
every rank runs the same number of iterations. Validation crops are sharded the same way and the losses
summed over ranks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from nnunetv2_tumorsynth.figures import new_figure, save_figure
from nnunetv2_tumorsynth.files import json_safe
from nnunetv2_tumorsynth.nnunet import ddpm_output_folder
from nnunetv2_tumorsynth.synthesis.statistics import FoldStatistics

from .checkpoint import check_compatible, make_metadata, read_checkpoint
from .data import (
    PAD_VALUE,
    TrainingFold,
    TumourComponent,
    TumourCrops,
    check_poolable,
    find_components,
    open_source,
    paper_crop_size,
    rotation_planes,
    split_components,
    tumour_intensities,
)
from .network import PRESETS, MaskedDiffusionUNet, build_model
from .schedule import NoiseSchedule

VAL_TIMESTEPS = 4  # validation timesteps per crop: the centres of 4 equal bins of [0, T)
PARAMS_DIGEST_ENV = "TUMORSYNTH_DDPM_PARAMS_DIGEST_DIR"  # testing: each rank writes a hash of its weights here
# progress.png is redrawn after an epoch if this many seconds passed since the last drawing, and after the last
# epoch (drawing takes ~0.5 s on a CPU, longer than a tiny preset's epoch)
PNG_INTERVAL_S = 30.0
CHECKPOINT_LATEST = "checkpoint_latest.pth"
CHECKPOINT_BEST = "checkpoint_best.pth"
# tags that keep the seeded streams apart: SeedSequence([seed, TAG, ...])
_ORDER, _CROP, _VAL = 1, 2, 3


@dataclass
class TrainingSettings:
    """Everything ``tumorsynth_pretrain_ddpm`` accepts. Sizes in voxels, (z, y, x) preprocessed axis order."""

    datasets: Sequence[str | int]  # pooled; the output goes under the first one's results folder
    configuration: str = "3d_fullres"
    fold: int | str = 0
    plans_identifier: str = "nnUNetPlans"
    preset: str | None = None  # None: "paper" for a new run, the checkpoint's when resuming
    epochs: int = 5000  # total, counting epochs done before a resume
    min_iterations: int = 0  # at least this many iterations: more epochs when the fold has few tumours
    batch_size: int = 1  # per process
    crop_size: Sequence[int] | None = None  # None: the paper's 192 x 144 x 192 mm at the plans' spacing
    device: str = "cuda"
    resume: bool = False
    overwrite: bool = False
    seed: int = 0
    val_fraction: float = 0.1
    lr: float = 5e-5
    weight_decay: float = 1e-5
    ema_decay: float = 0.999  # 0: no moving average, checkpoints hold the trained weights
    channel: int = 0
    organ_label: str | int | None = None
    tumour_label: str | int | None = None
    extra_log: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- utilities


# The defaults of ``tumorsynth_pretrain_ddpm`` per preset: the paper's recipe (Quinton et al. 2026, Appendix A)
# for "paper" and "fast", and for "tiny" the CPU recipe measured in docs/benchmarks.md (bench_fidelity.py).
PRESET_DEFAULTS: dict[str, dict[str, float | int]] = {
    "paper": {"epochs": 5000, "batch_size": 1, "lr": 5e-5, "min_iterations": 0},
    "fast": {"epochs": 5000, "batch_size": 1, "lr": 5e-5, "min_iterations": 0},
    "tiny": {"epochs": 300, "batch_size": 4, "lr": 2e-3, "min_iterations": 3000},
}


def epochs_for(settings: TrainingSettings, train_crops: int, world: int = 1) -> int:
    """``settings.epochs``, raised so that training runs at least ``settings.min_iterations`` iterations.

    An epoch is one pass over the fold's training tumours, so with a handful of annotated tumours it is one or
    two iterations: 300 epochs of 5 tumours made noisy fills where 3,000 iterations did not (docs/benchmarks.md,
    bench_fidelity.py)."""
    per_epoch = math.ceil(train_crops / (settings.batch_size * world))
    return max(settings.epochs, math.ceil(settings.min_iterations / max(per_epoch, 1)))


def is_new_best(val_loss: float | None, best_val_loss: float | None) -> bool:
    """Whether this epoch's weights become ``checkpoint_best.pth``: a lower validation loss, or, without held-out
    crops, every epoch (best = latest). One epoch's training loss (a few crops at random timesteps) is too noisy to
    select on: on the real-MR fold it picked epoch 1032 of 1500, whose fills overshot the tumours' range 5x as
    often as the last epoch's (docs/benchmarks.md, "Which checkpoint")."""
    return val_loss is None or best_val_loss is None or val_loss < best_val_loss


def _seeded(*entropy: int) -> np.random.Generator:
    return np.random.default_rng([int(e) for e in entropy])


def _torch_generator(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(rng.integers(0, 2**62)))


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("-device cuda was asked for but CUDA is not available; use -device cpu")
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"-device must be cuda or cpu, got {name!r}")


def params_digest(model: nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers (names and bytes, in state-dict order)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def ema_update(ema: nn.Module, model: nn.Module, decay: float, num_updates: int) -> None:
    """One EMA step after ``num_updates`` earlier ones: ema = d * ema + (1 - d) * model, with the warm-up
    d = min(decay, (1 + n) / (10 + n)) so that early averages are not dominated by the initial weights.
    Buffers are copied."""
    d = min(decay, (1.0 + num_updates) / (10.0 + num_updates))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


def write_progress_png(path: str, train_losses: Sequence[float], val_losses: Sequence[float | None],
                       epoch_seconds: Sequence[float]) -> None:
    """Loss curves (train, validation) and epoch duration per epoch, like nnU-Net's progress.png; atomic."""
    epochs = np.arange(1, len(train_losses) + 1)
    fig, axes = new_figure(2, 1, figsize=(10, 8), gridspec_kw={"height_ratios": [3, 1]})
    ax_loss, ax_time = axes[:, 0]
    ax_loss.plot(epochs, train_losses, color="b", label="train loss")
    val = np.array([np.nan if v is None else v for v in val_losses], dtype=float)
    if np.isfinite(val).any():
        ax_loss.plot(epochs, val, color="r", label="val loss (fixed t and noise)")
    ax_loss.set_ylabel("masked noise MSE (eq. 3)")
    ax_loss.legend(loc="upper right")
    ax_loss.grid(alpha=0.3)
    ax_time.plot(epochs, epoch_seconds, color="k")
    ax_time.set_xlabel("epoch")
    ax_time.set_ylabel("epoch time (s)")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


# ----------------------------------------------------------------------------------------------- batches


def epoch_order(n: int, epoch: int, seed: int, global_batch: int) -> list[int]:
    """Seeded permutation of the ``n`` training crops for ``epoch``, padded (repeating its start) to a
    multiple of ``global_batch``."""
    order = _seeded(seed, _ORDER, epoch).permutation(n).tolist()
    padded = order + order * (global_batch // max(n, 1) + 1)
    return padded[: math.ceil(n / global_batch) * global_batch]


def training_batch(
    crops: TumourCrops, order: Sequence[int], positions: Sequence[int], epoch: int, seed: int,
    num_train_timesteps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0, mask, t, noise) for the crops at ``positions`` of the epoch's ``order``, on the CPU.

    Crop ``p`` of epoch ``e`` is augmented, timed and noised from SeedSequence([seed, CROP, e, p]) alone.
    """
    images, masks, ts, noises = [], [], [], []
    for p in positions:
        rng = _seeded(seed, _CROP, epoch, p)
        image, mask = crops.get(order[p], rng)
        g = _torch_generator(rng)
        ts.append(int(torch.randint(0, num_train_timesteps, (1,), generator=g)))
        noises.append(torch.randn((1, *image.shape), generator=g))
        images.append(torch.from_numpy(image)[None])
        masks.append(torch.from_numpy(mask)[None])
    return torch.stack(images), torch.stack(masks), torch.tensor(ts, dtype=torch.long), torch.stack(noises)


def validation_items(crops: TumourCrops, seed: int, num_train_timesteps: int) -> list[tuple]:
    """Fixed (crop index, t, noise) triples: each held-out crop at ``VAL_TIMESTEPS`` timesteps."""
    items = []
    for j in range(len(crops)):
        g = _torch_generator(_seeded(seed, _VAL, j))
        for k in range(VAL_TIMESTEPS):
            t = int((k + 0.5) * num_train_timesteps / VAL_TIMESTEPS)
            items.append((j, t, torch.randn((1, *crops.crop_size), generator=g)))
    return items


# ------------------------------------------------------------------------------------------------ training


@dataclass
class TrainingData:
    sources: list[TrainingFold]
    components: list[TumourComponent]
    train: list[TumourComponent]
    val: list[TumourComponent]
    crop_size: tuple[int, int, int]
    intensity_range: dict[str, list[float]]  # see ``data.tumour_intensities``
    tumour_statistics: dict[str, Any]  # ``synthesis.statistics.FoldStatistics.to_json()``


def _prepare_data(settings: TrainingSettings, preset: str, divisor: int) -> TrainingData:
    sources = [
        open_source(d, settings.plans_identifier, settings.configuration, settings.fold, settings.channel,
                    settings.organ_label, settings.tumour_label)
        for d in settings.datasets
    ]
    check_poolable(sources)
    if settings.crop_size is None:
        crop_size = paper_crop_size(sources[0].spacing, sources[0].transpose_forward, divisor)
    else:
        crop_size = tuple(int(c) for c in settings.crop_size)
        if len(crop_size) != 3 or any(c <= 0 or c % divisor for c in crop_size):
            raise ValueError(
                f"--crop {list(crop_size)} must be 3 positive multiples of {divisor} "
                f"(the {preset!r} network halves the size {int(math.log2(divisor))} times)"
            )
    components = find_components(sources)
    train, val = split_components(components, settings.val_fraction, settings.seed)
    intensity_range, statistics = tumour_intensities(sources)
    return TrainingData(sources, components, train, val, crop_size, intensity_range,
                        json_safe(FoldStatistics(statistics).to_json()))


def _held_out_cases(data: TrainingData, source: int) -> list[str]:
    """The training cases of source ``source`` whose components are held out for the validation loss, sorted."""
    return sorted({c.case for c in data.val if c.source == source})


def dataset_records(data: TrainingData, settings: TrainingSettings) -> list[dict[str, Any]]:
    records = []
    for i, s in enumerate(data.sources):
        comps = [c for c in data.components if c.source == i]
        records.append({
            "name": s.name,
            "plans": s.plans_identifier,
            "configuration": s.configuration,
            "fold": s.fold,
            "channel": s.channel,
            "tumour_label": s.tumour_label,
            "normalisation": dict(s.normalisation),
            "spacing_mm": list(s.spacing),
            "num_training_cases": len(s.training_cases),
            "num_cases_with_tumours": len({c.case for c in comps}),
            "num_components": len(comps),
            "num_components_larger_than_crop": sum(c.larger_than(data.crop_size) for c in comps),
            "training_cases": list(s.training_cases),
            "excluded_validation_cases": list(s.validation_cases),
            "train_components": [c.key for c in data.train if c.source == i],
            "val_cases": _held_out_cases(data, i),
            "val_components": [c.key for c in data.val if c.source == i],
        })
    return records


def check_resume(meta: dict[str, Any], data: TrainingData, settings: TrainingSettings, path: str) -> None:
    """The checkpoint must describe the same data and set-up as this run; say what differs."""
    s0 = data.sources[0]
    check_compatible(meta, s0.spacing, s0.normalisation)
    problems = []
    if [int(c) for c in meta["crop_size_vox"]] != list(data.crop_size):
        problems.append(f"crop {meta['crop_size_vox']} in the checkpoint, {list(data.crop_size)} now")
    if settings.preset is not None and settings.preset != meta["preset"]:
        problems.append(f"preset {meta['preset']!r} in the checkpoint, {settings.preset!r} now")
    old = [d["name"] for d in meta["datasets"]]
    new = [s.name for s in data.sources]
    if old != new:
        problems.append(f"datasets {old} in the checkpoint, {new} now")
    else:
        for i, d in enumerate(meta["datasets"]):
            held_out = _held_out_cases(data, i)
            if d.get("val_cases") != held_out:  # absent: a checkpoint that held out components, not cases
                problems.append(f"held-out validation cases of {d['name']} {d.get('val_cases')} in the checkpoint, "
                                f"{held_out} now (--val-fraction)")
    if float(meta.get("ema_decay", 0.0)) != settings.ema_decay:
        problems.append(f"EMA decay {meta.get('ema_decay', 0.0)} in the checkpoint, {settings.ema_decay} now "
                        f"(--ema-decay)")
    if int(meta.get("seed", settings.seed)) != settings.seed:
        problems.append(f"seed {meta.get('seed')} in the checkpoint, {settings.seed} now")
    if problems:
        raise ValueError(f"Cannot resume from {path}: " + "; ".join(problems))


def _check_settings(settings: TrainingSettings) -> None:
    if settings.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {settings.batch_size}")
    if not 0.0 <= settings.ema_decay < 1.0:
        raise ValueError(f"--ema-decay must be in [0, 1), got {settings.ema_decay}")
    if settings.preset is not None and settings.preset not in PRESETS:
        raise ValueError(f"unknown DDPM preset {settings.preset!r}; choose one of {sorted(PRESETS)}")


def _checkpoint_to_resume(settings: TrainingSettings, out: str) -> dict[str, Any] | None:
    """``checkpoint_latest.pth`` read for ``--c``; None for a new run. Refuses to replace an existing model
    without ``--overwrite``, and a different ``--preset`` on resume (checked before the model is built)."""
    latest_path, best_path = os.path.join(out, CHECKPOINT_LATEST), os.path.join(out, CHECKPOINT_BEST)
    if not settings.resume:
        if (os.path.exists(latest_path) or os.path.exists(best_path)) and not settings.overwrite:
            raise FileExistsError(
                f"{out} already holds a diffusion model checkpoint. Continue its training with --c, "
                f"or start over with --overwrite (replaces it)."
            )
        return None
    if not os.path.isfile(latest_path):
        raise FileNotFoundError(f"--c: there is no {CHECKPOINT_LATEST} in {out} to continue from; start without --c")
    payload = read_checkpoint(latest_path, map_location="cpu")
    if settings.preset is not None and settings.preset != payload["metadata"]["preset"]:
        raise ValueError(f"Cannot resume from {latest_path}: preset {payload['metadata']['preset']!r} in the "
                         f"checkpoint, {settings.preset!r} now (leave out --preset with --c)")
    return payload


def train_ddpm(settings: TrainingSettings) -> dict[str, Any]:
    """Train (or resume) the diffusion model; see the module docstring. Returns a summary dict."""
    rank, local_rank, world = _distributed()
    _check_settings(settings)
    device = _pick_device(settings.device, local_rank)

    # where the output goes, and whether we may write there: decided before any heavy work
    first = open_source(settings.datasets[0], settings.plans_identifier, settings.configuration, settings.fold,
                        settings.channel, settings.organ_label, settings.tumour_label)
    out = ddpm_output_folder(first.name, settings.plans_identifier, settings.configuration, settings.fold)
    payload = _checkpoint_to_resume(settings, out)
    preset = settings.preset or (payload["metadata"]["preset"] if payload else "paper")

    torch.manual_seed(settings.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    if payload is None:
        model = build_model(preset)
    else:  # the checkpoint's architecture and schedule
        meta = payload["metadata"]
        model = build_model(preset, mask_channel=bool(meta["mask_channel"]),
                            schedule=NoiseSchedule.from_metadata(meta["schedule"]))
    data = _prepare_data(settings, preset, model.size_divisor)
    epochs = epochs_for(settings, len(data.train), world)
    if epochs != settings.epochs:
        note = (f"--min-iterations {settings.min_iterations}: {epochs} epochs instead of --epochs {settings.epochs} "
                f"({len(data.train)} training tumour crops)")
        settings = dataclasses.replace(settings, epochs=epochs, extra_log=[*settings.extra_log, note])
    from .trainer import DDPMTrainer

    trainer = DDPMTrainer(settings, preset, model, data, out, device, rank, world)
    if payload is not None:
        trainer.load_checkpoint(payload, os.path.join(out, CHECKPOINT_LATEST))

    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        if device.type == "cuda":
            torch.cuda.set_device(device)
    try:
        return trainer.run_training()
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def checkpoint_metadata(model: MaskedDiffusionUNet, data: TrainingData, records: list[dict[str, Any]],
                        settings: TrainingSettings,
              preset: str, state: dict[str, Any], world: int) -> dict[str, Any]:
    s0 = data.sources[0]
    return make_metadata(
        model,
        crop_size_vox=data.crop_size,
        spacing_mm=s0.spacing,
        normalisation=s0.normalisation,
        datasets=records,
        axis_order="zyx",
        epoch=state["epoch"],
        best_val_loss=state["best_val_loss"],
        seed=settings.seed,
        transpose_forward=list(s0.transpose_forward),
        crop_centring="centre of mass of each tumour component; mask = that component's voxels inside the crop",
        pad_value=PAD_VALUE,
        augmentation={"rotation_planes": [list(p) for p in rotation_planes(s0.spacing)], "flips": [0, 1, 2]},
        optimizer={"name": "AdamW", "lr": settings.lr, "weight_decay": settings.weight_decay},
        ema_decay=settings.ema_decay,
        batch_size=settings.batch_size,
        world_size=world,
        epochs_planned=settings.epochs,
        val_fraction=settings.val_fraction,
        val_timesteps=[int((k + 0.5) * model.schedule.num_train_timesteps / VAL_TIMESTEPS)
                       for k in range(VAL_TIMESTEPS)],
        intensity_range=data.intensity_range,
        tumour_statistics=data.tumour_statistics,
    )
