"""Training of the diffusion model on the tumours of a fold (seed 000 sections 2.2.2 and 2.3).

``train_ddpm(TrainingSettings(...))`` is what ``tumorsynth_pretrain_ddpm`` runs:

- data: crops around the tumour components of the fold's training cases (``data.py``), a held-out fraction
  of the components for the validation loss;
- loss: masked forward process (eq. 1) and masked noise MSE (eq. 3) with the bundled ``schedule``;
  AdamW, lr 5e-5, weight decay 1e-5 (the paper's); on CUDA the network runs under bf16 autocast;
- an epoch is one pass over the training components in a seeded random order;
- validation: every held-out crop at ``VAL_TIMESTEPS`` fixed timesteps with fixed noise, so the value is
  comparable across epochs (and across runs with the same seed);
- output, in ``ddpm_output_folder`` (rank 0 only): ``checkpoint_latest.pth`` every epoch,
  ``checkpoint_best.pth`` (lowest validation loss) when it improves, ``progress.png`` (loss curves; redrawn
  at most every ``PNG_INTERVAL_S`` and after the last epoch), ``training_log_<timestamp>.txt``; all atomic;
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

import copy
import datetime
import hashlib
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from nnunetv2_tumorsynth.nnunet import ddpm_output_folder

from .checkpoint import check_compatible, cpu_state_dict, make_metadata, read_checkpoint, save_checkpoint
from .data import (
    PAD_VALUE,
    Source,
    TumourComponent,
    TumourCrops,
    check_poolable,
    find_components,
    open_source,
    paper_crop_size,
    rotation_planes,
    split_components,
)
from .network import PRESETS, MaskedDiffusionUNet, build_model
from .schedule import NoiseSchedule, masked_noise_loss, q_sample_masked

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


class Logger:
    """Writes timestamped lines to the log file and the console (rank 0 only; other ranks are silent)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.console = True

    def __call__(self, message: str) -> None:
        if self.path is None:
            return
        line = f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}: {message}"
        with open(self.path, "a") as f:
            f.write(line + "\n")
        if self.console:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stdout)


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


def masked_diffusion_loss(
    model: nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, mask: torch.Tensor, t: torch.Tensor,
    noise: torch.Tensor, autocast: bool,
) -> torch.Tensor:
    """Eq. 1 then eq. 3 for given timesteps ``t`` (B,) and noise (B, 1, z, y, x) (``schedule.training_step``
    draws them itself; here they come from per-crop seeds, see the module docstring)."""
    x_t = q_sample_masked(schedule, x0, mask, t, noise)  # eq. 1
    if autocast:
        with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16):
            eps_pred = model(x_t, t, mask)
    else:
        eps_pred = model(x_t, t, mask)
    return masked_noise_loss(eps_pred, noise, mask)  # eq. 3


def write_progress_png(path: str, train_losses: Sequence[float], val_losses: Sequence[float | None],
                       epoch_seconds: Sequence[float]) -> None:
    """Loss curves (train, validation) and epoch duration per epoch, like nnU-Net's progress.png; atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(train_losses) + 1)
    fig, (ax_loss, ax_time) = plt.subplots(2, 1, figsize=(10, 8), gridspec_kw={"height_ratios": [3, 1]})
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
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


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
class _Data:
    sources: list[Source]
    components: list[TumourComponent]
    train: list[TumourComponent]
    val: list[TumourComponent]
    crop_size: tuple[int, int, int]


def _prepare_data(settings: TrainingSettings, preset: str, divisor: int) -> _Data:
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
    return _Data(sources, components, train, val, crop_size)


def _dataset_records(data: _Data, settings: TrainingSettings) -> list[dict[str, Any]]:
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
            "val_components": [c.key for c in data.val if c.source == i],
        })
    return records


def _check_resume(meta: dict[str, Any], data: _Data, settings: TrainingSettings, path: str) -> None:
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
    if float(meta.get("ema_decay", 0.0)) != settings.ema_decay:
        problems.append(f"EMA decay {meta.get('ema_decay', 0.0)} in the checkpoint, {settings.ema_decay} now "
                        f"(--ema-decay)")
    if int(meta.get("seed", settings.seed)) != settings.seed:
        problems.append(f"seed {meta.get('seed')} in the checkpoint, {settings.seed} now")
    if problems:
        raise ValueError(f"Cannot resume from {path}: " + "; ".join(problems))


def train_ddpm(settings: TrainingSettings) -> dict[str, Any]:
    """Train (or resume) the diffusion model; see the module docstring. Returns a summary dict."""
    rank, local_rank, world = _distributed()
    if settings.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {settings.batch_size}")
    if not 0.0 <= settings.ema_decay < 1.0:
        raise ValueError(f"--ema-decay must be in [0, 1), got {settings.ema_decay}")
    if settings.preset is not None and settings.preset not in PRESETS:
        raise ValueError(f"unknown DDPM preset {settings.preset!r}; choose one of {sorted(PRESETS)}")
    device = _pick_device(settings.device, local_rank)

    # where the output goes, and whether we may write there: decided before any heavy work
    first = open_source(settings.datasets[0], settings.plans_identifier, settings.configuration, settings.fold,
                        settings.channel, settings.organ_label, settings.tumour_label)
    out = ddpm_output_folder(first.name, settings.plans_identifier, settings.configuration, settings.fold)
    latest_path, best_path = os.path.join(out, CHECKPOINT_LATEST), os.path.join(out, CHECKPOINT_BEST)
    payload = None
    if settings.resume:
        if not os.path.isfile(latest_path):
            raise FileNotFoundError(
                f"--c: there is no {CHECKPOINT_LATEST} in {out} to continue from; start without --c"
            )
        payload = read_checkpoint(latest_path, map_location="cpu")
        if settings.preset is not None and settings.preset != payload["metadata"]["preset"]:  # before building it
            raise ValueError(f"Cannot resume from {latest_path}: preset {payload['metadata']['preset']!r} in the "
                             f"checkpoint, {settings.preset!r} now (leave out --preset with --c)")
    elif (os.path.exists(latest_path) or os.path.exists(best_path)) and not settings.overwrite:
        raise FileExistsError(
            f"{out} already holds a diffusion model checkpoint. Continue its training with --c, "
            f"or start over with --overwrite (replaces it)."
        )
    preset = settings.preset or (payload["metadata"]["preset"] if payload else "paper")

    torch.manual_seed(settings.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    if payload is not None:
        meta = payload["metadata"]
        model = build_model(preset, mask_channel=bool(meta["mask_channel"]),
                            schedule=NoiseSchedule.from_metadata(meta["schedule"]))
    else:
        model = build_model(preset)
    data = _prepare_data(settings, preset, model.size_divisor)
    if payload is not None:
        _check_resume(payload["metadata"], data, settings, latest_path)  # also: same EMA decay
        # with an EMA, state_dict holds the average and the trained weights are kept beside it
        model.load_state_dict((payload["extra_state"] or {}).get("trained_state_dict", payload["state_dict"]))
    ema = copy.deepcopy(model) if settings.ema_decay > 0 else None
    if ema is not None and payload is not None:
        ema.load_state_dict(payload["state_dict"])
    model.to(device)
    if ema is not None:
        ema.to(device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    state = {"epoch": 0, "best_val_loss": None, "train_losses": [], "val_losses": [], "epoch_seconds": [],
             "ema_updates": 0}
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
        extra = payload["extra_state"] or {}
        state.update({k: extra[k] for k in state if k in extra})
        state["epoch"] = int(payload["metadata"]["training"]["epoch"])
        state["best_val_loss"] = payload["metadata"]["training"]["best_val_loss"]

    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        if device.type == "cuda":
            torch.cuda.set_device(device)
    try:
        return _run(settings, preset, model, ema, optimizer, state, data, out, device, rank, world)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run(settings: TrainingSettings, preset: str, model: MaskedDiffusionUNet, ema: MaskedDiffusionUNet | None,
         optimizer: torch.optim.Optimizer, state: dict[str, Any], data: _Data, out: str, device: torch.device,
         rank: int, world: int) -> dict[str, Any]:
    schedule = model.schedule
    T = schedule.num_train_timesteps
    autocast = device.type == "cuda"
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    log = Logger(None)
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        log = Logger(os.path.join(out, f"training_log_{datetime.datetime.now():%Y_%m_%d_%H_%M_%S}.txt"))
    spacing = data.sources[0].spacing
    crop_mm = [c * s for c, s in zip(data.crop_size, spacing)]
    records = _dataset_records(data, settings)
    log(f"tumorsynth_pretrain_ddpm: preset {preset!r}, output {out}")
    log(f"crop {list(data.crop_size)} voxels (z, y, x preprocessed axes) = {[round(v, 1) for v in crop_mm]} mm "
        f"at spacing {list(spacing)} mm; image padded with {PAD_VALUE}, mask with 0")
    for r in records:
        log(f"{r['name']} fold {r['fold']}: {r['num_training_cases']} training cases "
            f"({r['num_cases_with_tumours']} with tumours), {r['num_components']} tumour components "
            f"({r['num_components_larger_than_crop']} larger than the crop: trained on their part inside it), "
            f"normalisation {r['normalisation']}; validation-fold cases not used: {r['excluded_validation_cases']}")
        log(f"training cases used: {r['training_cases']}")
        log(f"held-out components (validation loss): {r['val_components']}")
    log(f"augmentation: quarter turns in planes {rotation_planes(spacing)} (equal spacing), flips on all axes")
    iters_per_epoch = math.ceil(len(data.train) / (settings.batch_size * world))
    log(f"{len(data.train)} training / {len(data.val)} validation crops; batch {settings.batch_size} x {world} "
        f"process(es); {iters_per_epoch} iterations per epoch; AdamW lr {settings.lr} wd {settings.weight_decay}; "
        f"device {device}{' (bf16 autocast)' if autocast else ''}; seed {settings.seed}; "
        f"{f'EMA of the weights, decay {settings.ema_decay}' if ema is not None else 'no EMA'}")
    for line in settings.extra_log:
        log(line)

    train_crops = TumourCrops(data.sources, data.train, data.crop_size, augment=True)
    val_crops = TumourCrops(data.sources, data.val, data.crop_size, augment=False)
    val_items = validation_items(val_crops, settings.seed, T)[rank::world]
    start_epoch = state["epoch"]
    if start_epoch > 0:
        log(f"resuming after epoch {start_epoch} (best val loss {state['best_val_loss']})")
    if start_epoch >= settings.epochs:
        log(f"nothing to do: {start_epoch} epochs done, --epochs {settings.epochs}")

    from tqdm import tqdm

    bar = tqdm(total=settings.epochs * iters_per_epoch, initial=start_epoch * iters_per_epoch, unit="it",
               disable=rank != 0, file=sys.stderr, dynamic_ncols=True)
    train_seconds, iterations = 0.0, 0
    png_written = -math.inf
    for epoch in range(start_epoch, settings.epochs):
        t_epoch = time.perf_counter()
        net.train()
        order = epoch_order(len(data.train), epoch, settings.seed, settings.batch_size * world)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        t_train = time.perf_counter()
        for it in range(iters_per_epoch):
            first = it * settings.batch_size * world + rank * settings.batch_size
            x0, mask, t, noise = training_batch(train_crops, order, range(first, first + settings.batch_size),
                                                epoch, settings.seed, T)
            x0, mask, t, noise = x0.to(device), mask.to(device), t.to(device), noise.to(device)
            loss = masked_diffusion_loss(net, schedule, x0, mask, t, noise, autocast)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema_update(ema, model, settings.ema_decay, state["ema_updates"])
                state["ema_updates"] += 1
            loss_sum += loss.detach().double()
            bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - t_train
        iterations += iters_per_epoch

        # validation: fixed timesteps and noise per held-out crop, on the weights that get saved
        net.eval()
        evaluated = ema if ema is not None else model
        val_sum = torch.zeros((), dtype=torch.float64, device=device)
        with torch.no_grad():
            for start in range(0, len(val_items), settings.batch_size):
                chunk = val_items[start:start + settings.batch_size]
                crops = [val_crops.get(j) for j, _, _ in chunk]
                x0 = torch.stack([torch.from_numpy(c[0])[None] for c in crops]).to(device)
                mask = torch.stack([torch.from_numpy(c[1])[None] for c in crops]).to(device)
                t = torch.tensor([tt for _, tt, _ in chunk], dtype=torch.long, device=device)
                noise = torch.stack([n for _, _, n in chunk]).to(device)
                # masked_noise_loss averages over the chunk: weight it by the chunk size
                loss = masked_diffusion_loss(evaluated, schedule, x0, mask, t, noise, autocast)
                val_sum += loss.double() * len(chunk)
        sums = torch.stack([loss_sum, val_sum])
        if world > 1:
            dist.all_reduce(sums)
        train_loss = float(sums[0]) / (iters_per_epoch * world)
        n_val_items = len(data.val) * VAL_TIMESTEPS
        val_loss = float(sums[1]) / n_val_items if n_val_items else None

        state["epoch"] = epoch + 1
        state["train_losses"].append(train_loss)
        state["val_losses"].append(val_loss)
        state["epoch_seconds"].append(time.perf_counter() - t_epoch)
        # without held-out crops the training loss selects the best checkpoint
        score = val_loss if val_loss is not None else train_loss
        improved = state["best_val_loss"] is None or score < state["best_val_loss"]
        if improved:
            state["best_val_loss"] = score
        if rank == 0:
            meta = _metadata(model, data, records, settings, preset, state, world)
            extra = {k: state[k] for k in ("train_losses", "val_losses", "epoch_seconds", "ema_updates")}
            if improved:
                save_checkpoint(os.path.join(out, CHECKPOINT_BEST), evaluated, meta, optimizer, extra)
            if ema is not None:  # the trained weights, to resume from
                extra["trained_state_dict"] = cpu_state_dict(model)
            save_checkpoint(os.path.join(out, CHECKPOINT_LATEST), evaluated, meta, optimizer, extra)
            last = epoch + 1 == settings.epochs
            if last or time.monotonic() - png_written >= PNG_INTERVAL_S:
                write_progress_png(os.path.join(out, "progress.png"), state["train_losses"], state["val_losses"],
                                   state["epoch_seconds"])
                png_written = time.monotonic()
            val_text = "n/a (no held-out crops)" if val_loss is None else f"{val_loss:.4f}"
            log(f"epoch {epoch + 1}/{settings.epochs}: train loss {train_loss:.4f}, val loss {val_text}"
                f"{' (new best)' if improved else ''}, {state['epoch_seconds'][-1]:.1f} s")
            bar.set_postfix(epoch=epoch + 1, train=f"{train_loss:.4f}", val=val_text)
    bar.close()

    speed = iterations / train_seconds if train_seconds > 0 else float("nan")
    summary = {
        "output_folder": out,
        "rank": rank,
        "epochs": state["epoch"],
        "best_val_loss": state["best_val_loss"],
        "iterations": iterations,
        "train_seconds": train_seconds,
        "iterations_per_second": speed,
        "crop_size_vox": list(data.crop_size),
    }
    if iterations:
        log(f"speed: {speed:.3f} training iterations/s ({iterations} iterations of batch {settings.batch_size} "
            f"per process, {world} process(es), crop {list(data.crop_size)}, preset {preset!r}, device {device})")
    log(f"done: {state['epoch']} epochs, best val loss {state['best_val_loss']}; checkpoints in {out}")
    digest_dir = os.environ.get(PARAMS_DIGEST_ENV)
    if digest_dir:
        os.makedirs(digest_dir, exist_ok=True)
        with open(os.path.join(digest_dir, f"rank{rank}.sha256"), "w") as f:
            f.write(params_digest(model) + "\n")
    return summary


def _metadata(model: MaskedDiffusionUNet, data: _Data, records: list[dict[str, Any]], settings: TrainingSettings,
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
    )
