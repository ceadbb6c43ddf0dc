"""Benchmark of the bundled diffusion model: training iterations and inpainting speed, FLOPs per forward.

Always (on the CPU): the ``tiny`` preset, training iterations per second (forward + backward + AdamW step,
batch 1, crop 32 x 48 x 48) and inpainting crops per second (DDIM, 50 and 250 steps, crop 32 x 32 x 32, one
and two crops per batch: on the CPU PyTorch runs 3D convolutions with batch 1 and few channels through its
slow native kernel, batch >= 2 through oneDNN).
With ``--device cuda`` also: the ``paper`` and ``fast`` presets at the paper's patch (64 x 96 x 128 voxels in
(z, y, x), i.e. 128 x 96 x 64 at 1.5 x 1.5 x 3 mm), training iteration at batch 1 under bf16 autocast, and
inpainting time per tumour with 250 DDIM steps. FLOPs per forward pass are counted with
``torch.utils.flop_counter.FlopCounterMode`` on the meta device (no memory, no device needed) and compared
with the time the measured step would take at the GPU's peak bf16 throughput (``--peak-tflops``).

Every figure is the median over ``--repeats`` repeats (min and max shown). Usage::

    python benchmarks/bench_ddpm.py                    # CPU, tiny preset
    python benchmarks/bench_ddpm.py --device cuda      # + paper and fast presets on the GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from _common import command_line, require_cuda, torch_platform
from torch.utils.flop_counter import FlopCounterMode

from nnunetv2_tumorsynth.ddpm import build_model, inpaint, training_step

CPU_CROP = (32, 48, 48)  # (z, y, x) voxels, training
CPU_INPAINT_CROP = (32, 32, 32)  # (z, y, x) voxels, inpainting
GPU_CROP = (64, 96, 128)  # (z, y, x) voxels: the paper's 128 x 96 x 64 patch (x, y, z)
GPU_SPACING_MM = (3.0, 1.5, 1.5)  # (z, y, x)
# dense bf16 peak (TFLOP/s) of common GPUs, used when --peak-tflops is not given
PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def ellipsoid_mask(crop: tuple[int, int, int], spacing_mm: tuple[float, float, float], radius_mm: float):
    """Boolean ellipsoid (1, z, y, x) of a given radius in mm, centred in the crop."""
    axes = [(np.arange(n) - (n - 1) / 2) * s / radius_mm for n, s in zip(crop, spacing_mm, strict=True)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    return (zz**2 + yy**2 + xx**2 <= 1.0)[None]


def timed(
    fn: Callable[[], object], repeats: int, device: torch.device, warmup: Callable[[], object] | None = None
) -> list[float]:
    """Wall-clock seconds of ``fn`` per repeat after one untimed ``warmup()`` (default: ``fn``), synchronising
    CUDA."""
    (warmup or fn)()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float], per: int = 1) -> str:
    values = [t / per for t in times]
    return (
        f"median {statistics.median(values) * 1e3:9.1f} ms  (min {min(values) * 1e3:.1f}, "
        f"max {max(values) * 1e3:.1f}, n={len(values)})"
    )


def count_flops(preset: str, crop: tuple[int, int, int], train: bool) -> int:
    """FLOPs of one forward pass (``train=False``) or one forward + backward (``train=True``), batch 1."""
    with torch.device("meta"):
        model = build_model(preset)
        x = torch.zeros(1, 1, *crop)
        mask = torch.zeros(1, 1, *crop)
        t = torch.zeros(1, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x, t, mask)
        if train:
            out.sum().backward()
    return int(counter.get_total_flops())


def bench_training(preset: str, crop, device: torch.device, amp: bool, repeats: int, iters: int) -> list[float]:
    """Seconds per training iteration (forward + backward + AdamW step), batch 1, per repeat of ``iters``."""
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(preset, device=device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=1e-5)  # Quinton et al. 2026, section 2.3
    x0 = torch.randn(1, 1, *crop, device=device)
    mask = torch.from_numpy(ellipsoid_mask(crop, (1.0, 1.0, 1.0), min(crop) / 3))[None].to(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def run() -> None:
        for _ in range(iters):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                loss = training_step(model, model.schedule, x0, mask, generator=generator)
            loss.backward()
            optimizer.step()

    times = timed(run, repeats, device)
    if device.type == "cuda":
        print(f"    peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")

    return [t / iters for t in times]


def bench_inpaint(
    preset: str, crop, spacing_mm, steps: int, device: torch.device, repeats: int, batch: int = 1,
    sampler: str = "ddim",
) -> list[float]:
    """Seconds per crop to inpaint ``batch`` crops at once (one tumour of radius a quarter of the crop's
    smallest extent in mm each) with ``sampler`` (default DDIM); warm-up with a 2-step call."""
    torch.manual_seed(0)
    model = build_model(preset, device=device).eval()
    images = np.random.default_rng(0).standard_normal((batch, 1, *crop)).astype(np.float32)
    radius_mm = min(c * s for c, s in zip(crop, spacing_mm, strict=True)) / 4
    masks = np.stack([ellipsoid_mask(crop, spacing_mm, radius_mm)] * batch)

    def run(n_steps: int) -> None:
        inpaint(model, images, masks, steps=n_steps, sampler=sampler, seed=0, batch_size=batch, device=device)

    times = timed(lambda: run(steps), repeats, device, warmup=lambda: run(2))
    return [t / batch for t in times]


def peak_tflops(args: argparse.Namespace, device: torch.device) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key.replace(" ", "").lower() in name.replace(" ", "").lower():
            return value
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5, help="repeats per measurement (median reported)")
    parser.add_argument("--train-iters", type=int, default=5, help="training iterations per repeat")
    parser.add_argument("--inpaint-repeats", type=int, default=3, help="repeats of each inpainting measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU dense bf16 peak, TFLOP/s")
    parser.add_argument("--skip-cpu", action="store_true", help="with --device cuda: only the GPU part")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print("command:", command_line(full=True))
    print(f"{torch_platform()}, {torch.get_num_threads()} CPU threads, load average {os.getloadavg()[0]:.1f}")

    print("\nFLOPs per forward pass (batch 1; FlopCounterMode, meta device):")
    flops = {}
    for preset, crop in [("tiny", CPU_CROP), ("fast", GPU_CROP), ("paper", GPU_CROP)]:
        fwd = count_flops(preset, crop, train=False)
        fwd_bwd = count_flops(preset, crop, train=True)
        flops[preset] = (fwd, fwd_bwd)
        print(
            f"  {preset:5s} crop {crop}: forward {fwd / 1e12:8.3f} TFLOP, forward+backward {fwd_bwd / 1e12:8.3f} TFLOP"
        )

    cpu = torch.device("cpu")
    if not args.skip_cpu:
        print(f"\nCPU, tiny preset, crop {CPU_CROP} (z, y, x), batch 1:")
        t = bench_training("tiny", CPU_CROP, cpu, amp=False, repeats=args.repeats, iters=args.train_iters)
        print(f"  training iteration (fwd+bwd+AdamW)  {summary(t)}  -> {1 / statistics.median(t):.2f} it/s")
        print(f"CPU, tiny preset, inpainting crop {CPU_INPAINT_CROP} (z, y, x), DDIM:")
        for steps, batch in ((50, 1), (50, 2), (250, 2)):
            t = bench_inpaint("tiny", CPU_INPAINT_CROP, (1.0, 1.0, 1.0), steps, cpu, args.inpaint_repeats, batch)
            print(
                f"  inpaint {steps:3d} steps, {batch} crop(s) per batch, per crop  {summary(t)}  "
                f"-> {1 / statistics.median(t):.3f} crops/s"
            )

    if args.device == "cuda":
        require_cuda()
        gpu = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        peak = peak_tflops(args, gpu)
        print(
            f"\nGPU {torch.cuda.get_device_name(gpu)}, crop {GPU_CROP} (z, y, x) at {GPU_SPACING_MM} mm, "
            f"batch 1, bf16 autocast; peak bf16 {peak} TFLOP/s"
        )
        for preset in ("fast", "paper"):
            fwd, fwd_bwd = flops[preset]
            t = bench_training(preset, GPU_CROP, gpu, amp=True, repeats=args.repeats, iters=args.train_iters)
            med = statistics.median(t)
            line = f"  {preset:5s} training iteration  {summary(t)}  -> {1 / med:.2f} it/s"
            if peak:
                line += (
                    f"; at peak {fwd_bwd / (peak * 1e12) * 1e3:.1f} ms ({fwd_bwd / med / 1e12:.0f} TFLOP/s achieved)"
                )
            print(line)
            t = bench_inpaint(preset, GPU_CROP, GPU_SPACING_MM, 250, gpu, args.inpaint_repeats)
            med = statistics.median(t)
            line = f"  {preset:5s} inpaint 250 DDIM steps per tumour  {summary(t)}"
            if peak:
                line += f"; at peak {250 * fwd / (peak * 1e12):.2f} s ({250 * fwd / med / 1e12:.0f} TFLOP/s achieved)"
            print(line)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
