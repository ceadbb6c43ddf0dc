"""Synthetic tumours per second against the DDPM batch size: the background generator's calls, tumorsynth_generate.

    python benchmarks/bench_batched_synthesis.py [--batch-sizes 1 2 4 8] [--repeats 3] [--threads 1]
        [--bank-entries 16] [-n 16] [--steps 10] [--sampler dpm++2m] [--ddpm-epochs 2] [--workdir DIR]

Set-up through the real CLIs (``_common.phantom_commands``): a phantom of 8 training cases (32 x 64 x 64 voxels
at 3.0 x 1.5 x 1.5 mm), nnU-Net planning and preprocessing with tiny plans, and a ``tiny`` DDPM pretrained on CPU
for ``--ddpm-epochs`` epochs with a 16 x 32 x 32 crop (sampling speed does not depend on the weights). Then, on
the CPU, for every batch size B (the DDPM texture's ``batch_size``, crops per network evaluation):

(a) bank: ``SynthesisBank.generate`` called as the background generator calls it (``bank.background``): min(B,
    entries left) entries per call, each call one texture call, until ``--bank-entries`` entries are made, in
    this process with ``--threads`` torch threads, size "small", ``--steps`` ``--sampler`` steps. Entries per
    second = entries / wall seconds, after one untimed warm-up call.
(b) ``tumorsynth_generate -n N --batch-size B --steps S --sampler SAMPLER --size small -device cpu`` (the same
    output dataset each time, ``--overwrite``), ``OMP_NUM_THREADS`` = ``--threads``: images per second of its
    generation loop (its log line "made N images in S s") and of the whole command (process start-up, loading,
    mapping back, writing and assembling included).

Each figure is the median of ``--repeats`` repeats, interleaved over the batch sizes. Prints one Markdown table,
then the exact command, the torch thread count and the load averages before and after.

Measured: docs/benchmarks.md (one repeat, quiet 2-core machine). A quick check that the script runs end to end:

    python benchmarks/bench_batched_synthesis.py --repeats 1 --batch-sizes 1 2 --bank-entries 2 -n 2 --steps 2 \\
        --ddpm-epochs 1
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import tempfile
import time

from _common import (
    TINY_PLANS,
    argument_parser,
    command_line,
    load_average,
    machine_line,
    phantom_commands,
    run_cli,
    set_nnunet_folders,
    torch_platform,
)

PHANTOM_ID, OUTPUT_ID = 991, 992
CROP = ("16", "32", "32")  # DDPM context crop, voxels (z, y, x): holds the phantom's "small" tumours


def setup(env: dict[str, str], ddpm_epochs: int) -> None:
    """Phantom, nnU-Net preprocessing, tiny plans and a tiny DDPM (fold 0) in ``env``'s nnU-Net folders; kept when a
    checkpoint is already there (``--workdir`` of an earlier run)."""
    checkpoint = os.path.join(env["nnUNet_results"], f"Dataset{PHANTOM_ID}_Phantom",
                              f"tumorsynth_ddpm__{TINY_PLANS}__3d_fullres", "fold_0", "checkpoint_latest.pth")
    if os.path.isfile(checkpoint):
        return
    for cmd in phantom_commands(PHANTOM_ID, phantom=["-n", "8", "--overwrite"], processes=1):
        run_cli(cmd, env)
    run_cli(["tumorsynth_pretrain_ddpm", "-d", str(PHANTOM_ID), "-c", "3d_fullres", "-f", "0", "-p", TINY_PLANS,
             "--preset", "tiny", "--epochs", str(ddpm_epochs), "--crop", *CROP, "-device", "cpu", "--overwrite"],
            env)


def bank_entries_per_second(batch_size: int, entries: int, steps: int, sampler: str, workdir: str) -> float:
    """Entries per second of ``SynthesisBank.generate`` in calls of min(batch, entries left), after a warm-up call."""
    from nnunetv2_tumorsynth.bank.session import load_texture
    from nnunetv2_tumorsynth.bank.settings import SynthSettings
    from nnunetv2_tumorsynth.bank.store import SynthesisBank, fill_batch_size
    from nnunetv2_tumorsynth.nnunet import PreprocessedDataset

    dataset = PreprocessedDataset.open(PHANTOM_ID, TINY_PLANS, "3d_fullres")
    cases = dataset.fold_cases(0)[0]
    settings = SynthSettings(texture="ddpm", size="small", ddpm_steps=steps, ddpm_sampler=sampler, seed=0)
    texture, _ = load_texture(settings, dataset, 0, "cpu", batch_size=batch_size)
    batch = fill_batch_size(texture)
    assert batch == batch_size, (batch, batch_size)
    folder = tempfile.mkdtemp(prefix=f"bank_b{batch_size}_", dir=workdir)
    bank = SynthesisBank(folder, texture, settings, dataset.spacing, dataset.organ_label, dataset.tumour_label)
    reader = dataset.reader(cases)  # nnU-Net's dataset (load_case), as the trainer hands it to the bank
    bank.generate(reader, cases, batch, epoch=0)  # warm-up: first network evaluations, file system
    made, start = 0, time.perf_counter()
    while made < entries:
        made += bank.generate(reader, cases, min(batch, entries - made), epoch=1).made
    seconds = time.perf_counter() - start
    shutil.rmtree(folder, ignore_errors=True)
    return made / seconds


def generate_images_per_second(batch_size: int, images: int, steps: int, sampler: str,
                               env: dict[str, str]) -> tuple[float, float]:
    """(images per second of tumorsynth_generate's generation loop, of the whole command)."""
    ran = run_cli(["tumorsynth_generate", "-d", str(PHANTOM_ID), "-c", "3d_fullres", "-f", "0", "-p", TINY_PLANS,
                   "--as-dataset", str(OUTPUT_ID), "-n", str(images), "--batch-size", str(batch_size), "--steps",
                   str(steps), "--sampler", sampler, "--texture", "ddpm", "--size", "small", "-device", "cpu",
                   "--seed", "0", "--overwrite", "--no-progress"], env)
    loop = re.search(r"made (\d+) images in ([0-9.]+) s", ran.stdout)
    if loop is None:
        raise SystemExit(f"no 'made N images in S s' line in tumorsynth_generate's output:\n{ran.stdout[-3000:]}")
    return int(loop[1]) / max(float(loop[2]), 1e-9), images / ran.seconds


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3, help="repeats per batch size (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, the background "
                        "generator's default)")
    parser.add_argument("--bank-entries", type=int, default=16, help="(a) timed entries per repeat (default 16)")
    parser.add_argument("-n", "--images", type=int, default=16, help="(b) images per tumorsynth_generate run")
    parser.add_argument("--steps", type=int, default=10, help="diffusion sampling steps (default 10)")
    parser.add_argument("--sampler", default="dpm++2m", help="default dpm++2m")
    parser.add_argument("--ddpm-epochs", type=int, default=2, help="epochs of the tiny DDPM (default 2)")
    parser.add_argument("--workdir", default=None, help="nnU-Net folders (default: a new temporary folder); an "
                        "earlier run's phantom and DDPM there are reused")
    args = parser.parse_args()

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_batched_")
    set_nnunet_folders(os.environ, workdir)  # before nnunetv2 is imported: it reads them once
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    print(f"setting up the phantom and a tiny DDPM in {workdir} ...", flush=True)
    setup(env, args.ddpm_epochs)

    load_before = load_average()
    bank: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    loop: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    whole: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    for repeat in range(args.repeats):
        for b in args.batch_sizes:
            bank[b].append(bank_entries_per_second(b, args.bank_entries, args.steps, args.sampler, workdir))
            per_loop, per_command = generate_images_per_second(b, args.images, args.steps, args.sampler, env)
            loop[b].append(per_loop)
            whole[b].append(per_command)
            print(f"repeat {repeat + 1}/{args.repeats}, batch {b}: bank {bank[b][-1]:.3f} entries/s, "
                  f"tumorsynth_generate {per_loop:.3f} images/s (loop), {per_command:.3f} (command)", flush=True)

    first = args.batch_sizes[0]
    print(f"\ntiny DDPM, crop {' x '.join(CROP)} voxels, {args.steps} {args.sampler} steps, CPU, {args.threads} torch "
          f"thread(s); (a) {args.bank_entries} entries per repeat, (b) -n {args.images}; medians of {args.repeats} "
          f"repeat(s); speed-up against batch size {first}\n")
    print("| batch size | (a) bank entries/s | speed-up | (b) generate images/s, loop | speed-up | "
          "(b) generate images/s, whole command |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b in args.batch_sizes:
        a, g, w = (statistics.median(v[b]) for v in (bank, loop, whole))
        a1, g1 = statistics.median(bank[first]), statistics.median(loop[first])
        print(f"| {b} | {a:.3f} | {a / a1:.2f} | {g:.3f} | {g / g1:.2f} | {w:.3f} |")
    print(f"\ncommand: {command_line(full=True)}")
    print(f"{torch_platform()}; torch threads {torch.get_num_threads()} (this process), OMP_NUM_THREADS "
          f"{env['OMP_NUM_THREADS']} (tumorsynth_generate)")
    print(machine_line(load_before, " the measurements"))
    if os.getloadavg()[0] > args.threads + 0.5:
        print("note: the 1-minute load average exceeds this benchmark's own threads: other jobs share the CPUs")


if __name__ == "__main__":
    main()
