"""The diffusion model's training loop, shaped like nnU-Net's trainer: ``run_training`` calls ``on_train_start``,
``train_epoch`` / ``validation`` / ``on_epoch_end`` per epoch, and ``on_train_end``."""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from nnunetv2_tumorsynth.log import Logger, timestamped_log_path

from .checkpoint import cpu_state_dict, save_checkpoint
from .data import (
    PAD_VALUE,
    TumourCrops,
    rotation_planes,
)
from .network import MaskedDiffusionUNet
from .schedule import masked_diffusion_loss
from .training import (
    CHECKPOINT_BEST,
    CHECKPOINT_LATEST,
    PARAMS_DIGEST_ENV,
    PNG_INTERVAL_S,
    VAL_TIMESTEPS,
    TrainingData,
    TrainingSettings,
    check_resume,
    checkpoint_metadata,
    dataset_records,
    ema_update,
    epoch_order,
    is_new_best,
    params_digest,
    training_batch,
    validation_items,
    write_progress_png,
)


class DDPMTrainer:
    """Trains one diffusion model; the shape of nnU-Net's ``nnUNetTrainer.run_training``.

    Args:
        model: the network to train (on the CPU; moved to ``device`` here).
        data: training and validation tumour components and the crop size.
        out: output folder (checkpoints, log, progress.png); written by rank 0 only.
    """

    def __init__(self, settings: TrainingSettings, preset: str, model: MaskedDiffusionUNet, data: TrainingData,
                 out: str,
                 device: torch.device, rank: int = 0, world: int = 1) -> None:
        self.settings, self.preset, self.data, self.out = settings, preset, data, out
        self.device, self.rank, self.world = device, rank, world
        self.model = model
        # with an EMA the checkpoints hold the average, which is what sampling uses and validation measures
        self.ema = copy.deepcopy(model) if settings.ema_decay > 0 else None
        self.model.to(device)
        if self.ema is not None:
            self.ema.to(device).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        self.state: dict[str, Any] = {"epoch": 0, "best_val_loss": None, "train_losses": [], "val_losses": [],
                                      "epoch_seconds": [], "ema_updates": 0}
        self.schedule = model.schedule
        self.autocast = device.type == "cuda"
        self.iterations_per_epoch = math.ceil(len(data.train) / (settings.batch_size * world))
        self.log = Logger(None, enabled=False)
        self.train_seconds, self.iterations = 0.0, 0
        self._png_written = -math.inf

    @property
    def evaluated(self) -> MaskedDiffusionUNet:
        """The weights that are validated and saved: the EMA if there is one."""
        return self.ema if self.ema is not None else self.model

    # ------------------------------------------------------------------------------------------ resume
    def load_checkpoint(self, payload: dict[str, Any], path: str) -> None:
        """Continue from ``checkpoint_latest.pth``: weights, EMA, optimiser, epoch and loss history."""
        check_resume(payload["metadata"], self.data, self.settings, path)  # also: the same EMA decay
        extra = payload["extra_state"] or {}
        # with an EMA, state_dict holds the average and the trained weights are kept beside it
        self.model.load_state_dict(extra.get("trained_state_dict", payload["state_dict"]))
        if self.ema is not None:
            self.ema.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.state.update({k: extra[k] for k in self.state if k in extra})
        self.state["epoch"] = int(payload["metadata"]["training"]["epoch"])
        self.state["best_val_loss"] = payload["metadata"]["training"]["best_val_loss"]

    # ------------------------------------------------------------------------------------------- start
    def on_train_start(self) -> None:
        settings, data = self.settings, self.data
        if self.world > 1:
            self.net: nn.Module = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        else:
            self.net = self.model
        if self.rank == 0:
            os.makedirs(self.out, exist_ok=True)
            self.log = Logger(timestamped_log_path(self.out, "training_log"))
        self.records = dataset_records(data, settings)
        spacing = data.sources[0].spacing
        crop_mm = [c * s for c, s in zip(data.crop_size, spacing)]
        log = self.log
        log(f"tumorsynth_pretrain_ddpm: preset {self.preset!r}, output {self.out}")
        log(f"crop {list(data.crop_size)} voxels (z, y, x preprocessed axes) = {[round(v, 1) for v in crop_mm]} mm "
            f"at spacing {list(spacing)} mm; image padded with {PAD_VALUE}, mask with 0")
        for r in self.records:
            log(f"{r['name']} fold {r['fold']}: {r['num_training_cases']} training cases "
                f"({r['num_cases_with_tumours']} with tumours), {r['num_components']} tumour components "
                f"({r['num_components_larger_than_crop']} larger than the crop: trained on their part inside it), "
                f"normalisation {r['normalisation']}; validation-fold cases not used: "
                f"{r['excluded_validation_cases']}")
            log(f"training cases used: {r['training_cases']}")
            log(f"validation loss on the held-out cases {r['val_cases']} ({len(r['val_components'])} component(s)); "
                f"training on the other cases' {len(r['train_components'])} component(s)")
        log(f"augmentation: quarter turns in planes {rotation_planes(spacing)} (equal spacing), flips on all axes")
        log(f"{len(data.train)} training / {len(data.val)} validation crops; batch {settings.batch_size} x "
            f"{self.world} process(es); {self.iterations_per_epoch} iterations per epoch; AdamW lr {settings.lr} "
            f"wd {settings.weight_decay}; device {self.device}{' (bf16 autocast)' if self.autocast else ''}; "
            f"seed {settings.seed}; "
            f"{f'EMA of the weights, decay {settings.ema_decay}' if self.ema is not None else 'no EMA'}")
        for line in settings.extra_log:
            log(line)
        T = self.schedule.num_train_timesteps
        self.train_crops = TumourCrops(data.sources, data.train, data.crop_size, augment=True)
        self.val_crops = TumourCrops(data.sources, data.val, data.crop_size, augment=False)
        self.val_items = validation_items(self.val_crops, settings.seed, T)[self.rank::self.world]
        start_epoch = self.state["epoch"]
        if start_epoch > 0:
            log(f"resuming after epoch {start_epoch} (best val loss {self.state['best_val_loss']})")
        if start_epoch >= settings.epochs:
            log(f"nothing to do: {start_epoch} epochs done, --epochs {settings.epochs}")

    # ---------------------------------------------------------------------------------------- training
    def train_step(self, epoch: int, order: list[int], iteration: int) -> torch.Tensor:
        """One optimiser step on this rank's slice of the global batch; returns the detached loss."""
        settings = self.settings
        first = iteration * settings.batch_size * self.world + self.rank * settings.batch_size
        x0, mask, t, noise = training_batch(self.train_crops, order, range(first, first + settings.batch_size),
                                            epoch, settings.seed, self.schedule.num_train_timesteps)
        x0, mask, t, noise = x0.to(self.device), mask.to(self.device), t.to(self.device), noise.to(self.device)
        loss = masked_diffusion_loss(self.net, self.schedule, x0, mask, t, noise, self.autocast)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            ema_update(self.ema, self.model, settings.ema_decay, self.state["ema_updates"])
            self.state["ema_updates"] += 1
        return loss.detach()

    def train_epoch(self, epoch: int, bar) -> torch.Tensor:
        """All iterations of one epoch; returns this rank's summed loss."""
        self.net.train()
        order = epoch_order(len(self.data.train), epoch, self.settings.seed, self.settings.batch_size * self.world)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        start = time.perf_counter()
        for iteration in range(self.iterations_per_epoch):
            loss_sum += self.train_step(epoch, order, iteration).double()
            bar.update(1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_seconds += time.perf_counter() - start
        self.iterations += self.iterations_per_epoch
        return loss_sum

    def validation(self) -> torch.Tensor:
        """Summed loss of this rank's held-out items (fixed timesteps and noise) on the weights that get saved."""
        self.net.eval()
        batch_size = self.settings.batch_size
        val_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for start in range(0, len(self.val_items), batch_size):
                chunk = self.val_items[start:start + batch_size]
                crops = [self.val_crops.get(j) for j, _, _ in chunk]
                x0 = torch.stack([torch.from_numpy(c[0])[None] for c in crops]).to(self.device)
                mask = torch.stack([torch.from_numpy(c[1])[None] for c in crops]).to(self.device)
                t = torch.tensor([tt for _, tt, _ in chunk], dtype=torch.long, device=self.device)
                noise = torch.stack([n for _, _, n in chunk]).to(self.device)
                loss = masked_diffusion_loss(self.evaluated, self.schedule, x0, mask, t, noise, self.autocast)
                val_sum += loss.double() * len(chunk)  # the loss averages over the chunk: weight by its size
        return val_sum

    def on_epoch_end(self, epoch: int, loss_sum: torch.Tensor, val_sum: torch.Tensor, seconds: float, bar) -> None:
        """Losses summed over ranks, the best score, checkpoints, progress.png and the log line (rank 0)."""
        sums = torch.stack([loss_sum, val_sum])
        if self.world > 1:
            dist.all_reduce(sums)
        state = self.state
        train_loss = float(sums[0]) / (self.iterations_per_epoch * self.world)
        n_val_items = len(self.data.val) * VAL_TIMESTEPS
        val_loss = float(sums[1]) / n_val_items if n_val_items else None
        state["epoch"] = epoch + 1
        state["train_losses"].append(train_loss)
        state["val_losses"].append(val_loss)
        state["epoch_seconds"].append(seconds)
        improved = is_new_best(val_loss, state["best_val_loss"])
        if improved and val_loss is not None:
            state["best_val_loss"] = val_loss
        if self.rank != 0:
            return
        self.save_checkpoints(improved)
        last = epoch + 1 == self.settings.epochs
        if last or time.monotonic() - self._png_written >= PNG_INTERVAL_S:
            write_progress_png(os.path.join(self.out, "progress.png"), state["train_losses"], state["val_losses"],
                               state["epoch_seconds"])
            self._png_written = time.monotonic()
        val_text = "n/a (no held-out crops)" if val_loss is None else f"{val_loss:.4f}"
        self.log(f"epoch {epoch + 1}/{self.settings.epochs}: train loss {train_loss:.4f}, val loss {val_text}"
                 f"{' (new best)' if improved and val_loss is not None else ''}, {seconds:.1f} s")
        bar.set_postfix(epoch=epoch + 1, train=f"{train_loss:.4f}", val=val_text)

    def save_checkpoints(self, improved: bool) -> None:
        """``checkpoint_best.pth`` when the score improved; ``checkpoint_latest.pth`` (with the trained weights
        beside the EMA, to resume from) always."""
        meta = checkpoint_metadata(self.model, self.data, self.records, self.settings, self.preset, self.state,
                                   self.world)
        extra = {k: self.state[k] for k in ("train_losses", "val_losses", "epoch_seconds", "ema_updates")}
        if improved:
            save_checkpoint(os.path.join(self.out, CHECKPOINT_BEST), self.evaluated, meta, self.optimizer, extra)
        if self.ema is not None:
            extra["trained_state_dict"] = cpu_state_dict(self.model)
        save_checkpoint(os.path.join(self.out, CHECKPOINT_LATEST), self.evaluated, meta, self.optimizer, extra)

    # --------------------------------------------------------------------------------------------- end
    def on_train_end(self) -> dict[str, Any]:
        settings, state = self.settings, self.state
        speed = self.iterations / self.train_seconds if self.train_seconds > 0 else float("nan")
        if self.iterations:
            self.log(f"speed: {speed:.3f} training iterations/s ({self.iterations} iterations of batch "
                     f"{settings.batch_size} per process, {self.world} process(es), crop "
                     f"{list(self.data.crop_size)}, preset {self.preset!r}, device {self.device})")
        self.log(f"done: {state['epoch']} epochs, best val loss {state['best_val_loss']}; checkpoints in {self.out}")
        digest_dir = os.environ.get(PARAMS_DIGEST_ENV)  # tests: DDP ranks must end with the same weights
        if digest_dir:
            os.makedirs(digest_dir, exist_ok=True)
            with open(os.path.join(digest_dir, f"rank{self.rank}.sha256"), "w") as f:
                f.write(params_digest(self.model) + "\n")
        return {
            "output_folder": self.out,
            "rank": self.rank,
            "epochs": state["epoch"],
            "best_val_loss": state["best_val_loss"],
            "iterations": self.iterations,
            "train_seconds": self.train_seconds,
            "iterations_per_second": speed,
            "crop_size_vox": list(self.data.crop_size),
        }

    def run_training(self) -> dict[str, Any]:
        from tqdm import tqdm

        self.on_train_start()
        per_epoch = self.iterations_per_epoch
        bar = tqdm(total=self.settings.epochs * per_epoch, initial=self.state["epoch"] * per_epoch, unit="it",
                   disable=self.rank != 0, file=sys.stderr, dynamic_ncols=True)
        for epoch in range(self.state["epoch"], self.settings.epochs):
            start = time.perf_counter()
            loss_sum = self.train_epoch(epoch, bar)
            val_sum = self.validation()
            self.on_epoch_end(epoch, loss_sum, val_sum, time.perf_counter() - start, bar)
        bar.close()
        return self.on_train_end()
