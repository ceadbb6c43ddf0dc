"""Benchmark of offline generation (``tumorsynth_generate``): images per minute, and the FLOP bound for the paper.

Builds the phantom (``tumorsynth_make_phantom``: 32 x 64 x 64 voxels at 3.0 x 1.5 x 1.5 mm), preprocesses it
with nnU-Net and tiny plans, pretrains a ``tiny`` diffusion model for one epoch (16 x 32 x 32 crop; speed does
not depend on the weights), then times ``Generator.make_image`` plus the writing of image and label (what one
image of ``tumorsynth_generate`` costs, without the process start-up) for:

- the heuristic texture (Hu et al. 2023), no model;
- the ``tiny`` DDPM at 250 and 50 DDIM steps;
- with ``--device cuda`` also the ``fast`` preset at 50 steps and the ``paper`` preset at 250 steps
  (Quinton et al. 2026, section 2.6), with untrained checkpoints at the paper's context crop
  (64 x 96 x 128 voxels (z, y, x) at the phantom's 3.0 x 1.5 x 1.5 mm, i.e. 192 x 144 x 192 mm).

Each figure is the median over ``--images`` images after one warm-up image. Always printed: the FLOP-bound
estimate for 1,000 paper-preset images at 250 DDIM steps (one network forward per step, FLOPs counted with
``FlopCounterMode`` on the meta device, as ``bench_ddpm.py`` does) at a GPU's dense bf16 peak. Usage::

    python benchmarks/bench_generate.py                 # CPU: heuristic and tiny DDPM
    python benchmarks/bench_generate.py --device cuda   # + fast and paper presets on the GPU

Measured on the development machine (2 CPU cores shared with other agents' jobs, load average 4-8, so CPU
figures are pessimistic and noisy; torch 1 thread; ``--images 5``): heuristic texture 626 images per minute
(0.10 s per image); ``tiny`` DDPM (16 x 32 x 32 crop) 0.85 images per minute at 250 DDIM steps (70 s per
image) and 5.2 at 50 steps (11.5 s). One image is sampled at a time, and PyTorch runs the batch-1 3D
convolutions of the tiny network on the CPU through a slow kernel (two crops per batch take about as long as
one). FLOP bound: one ``paper`` forward pass at the 64 x 96 x 128 crop is 30.1 TFLOP, so 1,000 paper-preset
images at 250 DDIM steps are 7.5e18 FLOP: 2.1 h (7.6 s per image) at an H100 SXM's 989 TFLOP/s dense bf16
peak. Unmeasured: no GPU was available.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from _common import (
    TINY_PLANS,
    command_line,
    phantom_commands,
    require_cuda,
    run_cli,
    set_nnunet_folders,
    torch_platform,
)

PAPER_CROP = (64, 96, 128)  # (z, y, x) voxels at 3.0 x 1.5 x 1.5 mm: the paper's 128 x 96 x 64 (x, y, z)
PHANTOM_ID = 990


def setup(workdir: str) -> None:
    """Phantom, nnU-Net preprocessing, tiny plans and a tiny DDPM (fold 0) in ``workdir``."""
    if os.path.isfile(os.path.join(os.environ["nnUNet_results"], f"Dataset{PHANTOM_ID}_Phantom",
                                   f"tumorsynth_ddpm__{TINY_PLANS}__3d_fullres", "fold_0", "checkpoint_latest.pth")):
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for cmd in phantom_commands(PHANTOM_ID, phantom=["-n", "8", "--overwrite"], processes=1):
        run_cli(cmd, env)
    run_cli(["tumorsynth_pretrain_ddpm", "-d", str(PHANTOM_ID), "-c", "3d_fullres", "-f", "0", "-p", TINY_PLANS,
             "--preset", "tiny", "--epochs", "1", "--crop", "16", "32", "32", "-device", "cpu", "--overwrite"], env)


def untrained_checkpoint(preset: str, folder: str) -> str:
    """A checkpoint of an untrained ``preset`` at the paper's crop and the phantom's spacing (for timing only)."""
    from nnunetv2_tumorsynth.ddpm import build_model, make_metadata, save_checkpoint

    path = os.path.join(folder, f"untrained_{preset}.pth")
    if not os.path.isfile(path):
        model = build_model(preset)
        save_checkpoint(path, model, make_metadata(model, PAPER_CROP, (3.0, 1.5, 1.5), "ZScoreNormalization"))
    return path


def time_images(texture: str, images: int, steps: int = 250, checkpoint: str | None = None,
                device: str = "cpu") -> list[float]:
    """Seconds per image (synthesis, mapping back, writing), after one warm-up image."""
    import torch

    from nnunetv2_tumorsynth.generate.generator import Generator
    from nnunetv2_tumorsynth.generate.settings import GenerateSettings
    from nnunetv2_tumorsynth.generate.staging import write_case

    settings = GenerateSettings(dataset=PHANTOM_ID, as_dataset=989, plans=TINY_PLANS, texture=texture,
                                size="small", ddpm_steps=steps,
                                checkpoint=checkpoint, device=device, seed=0, num_images=images + 1)
    generator = Generator(settings, log=lambda _: None)
    out = tempfile.mkdtemp(prefix="bench_generate_")
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(out, sub))
    times = []
    for index in range(images + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        name, image, label, source, _ = generator.make_image(index)
        write_case(out, name, image, label, source, ".nii.gz")
        if device == "cuda":
            torch.cuda.synchronize()
        if index > 0:
            times.append(time.perf_counter() - start)
    return times


def report(label: str, times: list[float]) -> None:
    median = statistics.median(times)
    print(f"  {label:38s} median {median:7.2f} s per image (min {min(times):.2f}, max {max(times):.2f}, "
          f"n={len(times)}) -> {60 / median:7.2f} images per minute")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--images", type=int, default=5, help="timed images per configuration (median reported)")
    parser.add_argument("--workdir", default=None, help="nnU-Net folders (default: a new temporary folder)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU dense bf16 peak, TFLOP/s "
                        "(default: the GPU's, else an H100 SXM's 989)")
    parser.add_argument("--gpu-steps", type=int, nargs=2, default=(50, 250), metavar=("FAST", "PAPER"),
                        help="DDIM steps of the fast and paper presets with --device cuda (default 50 250)")
    args = parser.parse_args()

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_generate_")
    set_nnunet_folders(os.environ, workdir)
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    import torch

    torch.set_num_threads(args.threads)
    print("command:", command_line(full=True))
    print(f"{torch_platform()}, {os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), load average "
          f"{os.getloadavg()[0]:.1f}; the CPUs are shared with other jobs, so CPU figures are noisy")
    print(f"setting up the phantom and a tiny DDPM in {workdir} ...")
    setup(workdir)

    print(f"\nimages per minute (phantom 32 x 64 x 64 at 3.0 x 1.5 x 1.5 mm, paper-size tumours falling back to "
          f"smaller ones, {args.device}):")
    report("heuristic texture", time_images("heuristic", args.images))
    for steps in (250, 50):
        report(f"tiny DDPM, {steps} DDIM steps, cpu", time_images("ddpm", args.images, steps=steps))

    import bench_ddpm  # FLOP counting and GPU peaks (this folder is on sys.path)

    forward = bench_ddpm.count_flops("paper", PAPER_CROP, train=False)
    fast_forward = bench_ddpm.count_flops("fast", PAPER_CROP, train=False)
    peak = args.peak_tflops
    if peak is None and args.device == "cuda" and torch.cuda.is_available():
        peak = bench_ddpm.peak_tflops(argparse.Namespace(peak_tflops=None), torch.device("cuda"))
    peak = peak or bench_ddpm.PEAK_BF16_TFLOPS["H100 SXM"]
    paper_hours = 1000 * 250 * forward / (peak * 1e12) / 3600
    print(f"\nFLOP bound (forward pass at the paper's crop {PAPER_CROP}: paper {forward / 1e12:.2f} TFLOP, fast "
          f"{fast_forward / 1e12:.3f} TFLOP; one forward per DDIM step; peak {peak:.0f} TFLOP/s dense bf16):")
    print(f"  1,000 paper-preset images at 250 DDIM steps: {paper_hours:.2f} h at peak "
          f"({3600 * paper_hours / 1000:.2f} s per image)")
    print(f"  1,000 fast-preset images at {args.gpu_steps[0]} DDIM steps: "
          f"{1000 * args.gpu_steps[0] * fast_forward / (peak * 1e12) / 60:.2f} min at peak")

    if args.device != "cuda":
        print("  (unmeasured: run with --device cuda on a GPU to time the fast and paper presets)")
        return
    require_cuda()
    torch.backends.cudnn.benchmark = True
    print(f"\nGPU {torch.cuda.get_device_name()} (untrained checkpoints, context crop {PAPER_CROP}):")
    for preset, steps, flops in (("fast", args.gpu_steps[0], fast_forward), ("paper", args.gpu_steps[1], forward)):
        times = time_images("ddpm", args.images, steps=steps, checkpoint=untrained_checkpoint(preset, workdir),
                            device="cuda")
        report(f"{preset} DDPM, {steps} DDIM steps", times)
        print(f"    FLOP bound {steps * flops / (peak * 1e12):.2f} s per image; achieved "
              f"{steps * flops / statistics.median(times) / 1e12:.0f} TFLOP/s")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
