"""How much a background synthesis generator slows CPU training, and how fast it makes entries, per setting.

    python benchmarks/bench_background_threads.py [--seconds 20] [--rounds 2] [--steps 20] [--crop 16 32 32]

One process, as in nnU-Net training on a CPU: the main thread trains a small 3D U-Net (nnU-Net's
``PlainConvUNet``, features 8-16-32, batch 2 of 32 x 64 x 64 voxels, SGD) with PyTorch's default thread
count, while a ``BackgroundGenerator`` makes bank entries without pause (unlimited budget) with an
untrained ``tiny`` DDPM (DDIM, ``--steps`` steps, ``--crop`` context) on phantom cases. Configurations,
interleaved over ``--rounds`` rounds of ``--seconds`` each: no generator, then the generator with each
(intra-op threads, nice increment) of ``--configs`` (default (1, 10), the trainer's default, (1, 0) and
(2, 0)). Prints training iterations/s relative to no generator and generator entries per minute.
``--workers N`` adds N busy single-threaded processes that stand in for nnU-Net's augmentation workers.
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time

import numpy as np
import torch
from _common import argument_parser, command_line, load_average, machine_line
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunetv2_tumorsynth.bank.background import BackgroundGenerator
from nnunetv2_tumorsynth.bank.settings import SynthSettings
from nnunetv2_tumorsynth.bank.store import SynthesisBank
from nnunetv2_tumorsynth.ddpm import build_model, inpaint
from nnunetv2_tumorsynth.phantom import PhantomSettings, make_phantom_case

SPACING = (3.0, 1.5, 1.5)


class PhantomCases:
    """Preprocessed-like cases for the bank: identifiers and load_case."""

    def __init__(self, n: int = 4):
        rng = np.random.default_rng(0)
        self.cases = {}
        for i in range(n):
            image, label = make_phantom_case(rng, PhantomSettings(), with_tumours=False)
            self.cases[f"case{i}"] = (((image - image.mean()) / image.std())[None].astype(np.float32), label[None])
        self.identifiers = list(self.cases)

    def load_case(self, identifier):
        data, seg = self.cases[identifier]
        return data, seg, None, {}


class UntrainedDDPMTexture:
    """``DDPMTexture`` without a checkpoint: same sampling cost, random weights."""

    def __init__(self, crop: tuple[int, int, int], steps: int):
        self.model, self.crop_size, self.steps = build_model("tiny"), tuple(crop), steps

    def fill(self, images, masks, organs, rng, spacing=None):
        return inpaint(self.model, images, masks, steps=self.steps, seed=int(rng.integers(2**31)), device="cpu")


def busy_worker(stop) -> None:
    """Stands in for one of nnU-Net's augmentation worker processes: CPU-bound numpy work, one thread."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    while not stop.is_set():
        x = rng.normal(size=(32, 64, 64)).astype(np.float32)
        np.fft.ifftn(np.fft.fftn(x))


def training_iterations_per_second(net, optimizer, seconds: float) -> float:
    x = torch.randn(2, 1, 32, 64, 64)
    y = torch.randint(0, 3, (2, 32, 64, 64))
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per configuration")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--crop", type=int, nargs=3, default=(16, 32, 32))
    parser.add_argument("--configs", nargs="+", default=["1,10", "1,0", "2,0"],
                        help="generator settings to compare, each 'threads,nice'")
    parser.add_argument("--workers", type=int, default=0,
                        help="busy processes standing in for nnU-Net's augmentation workers (nnUNet_n_proc_DA)")
    args = parser.parse_args()

    torch.manual_seed(0)
    net = PlainConvUNet(1, 3, (8, 16, 32), torch.nn.Conv3d, 3, (1, 2, 2), 2, 3, 2, True, torch.nn.InstanceNorm3d,
                        {"eps": 1e-5, "affine": True}, None, None, torch.nn.LeakyReLU, {"inplace": True})
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99)
    cases = PhantomCases()
    texture = UntrainedDDPMTexture(args.crop, args.steps)
    training_threads = torch.get_num_threads()
    configs = [None, *(tuple(int(v) for v in c.split(",")) for c in args.configs)]
    speed = {c: [] for c in configs}
    entries_per_min = {c: [] for c in configs}
    training_iterations_per_second(net, optimizer, 2.0)  # warm-up
    load_before = load_average()
    stop_workers = multiprocessing.Event()
    workers = [multiprocessing.Process(target=busy_worker, args=(stop_workers,), daemon=True)
               for _ in range(args.workers)]
    for w in workers:
        w.start()
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for config in configs:
                generator = None
                if config is not None:
                    settings = SynthSettings(size="small", seed=0)
                    bank = SynthesisBank(folder, texture, settings, SPACING, organ_label=1, tumour_label=2)
                    generator = BackgroundGenerator(bank, cases, cases.identifiers, 10**6, None, *config)
                    generator.new_epoch(0)
                    time.sleep(1.0)  # let the generator get going
                    made_before = generator.totals().made
                speed[config].append(training_iterations_per_second(net, optimizer, args.seconds))
                if generator is not None:
                    entries_per_min[config].append(60 * (generator.totals().made - made_before) / args.seconds)
                    generator.stop()
                    generator.check()
                assert torch.get_num_threads() == training_threads, "the training thread's count never changes"
    stop_workers.set()
    for w in workers:
        w.join()
    base = statistics.median(speed[None])
    print(f"training: PlainConvUNet 8-16-32, batch 2 x 32 x 64 x 64, {training_threads} torch threads; generator: "
          f"untrained tiny DDPM, crop {' '.join(map(str, args.crop))}, {args.steps} DDIM steps; "
          f"{args.rounds} rounds x {args.seconds:g} s; {args.workers} busy worker processes; medians")
    print(f"{'generator (threads, nice)':28s} {'training it/s':>14s} {'relative':>9s} {'entries/min':>12s}")
    for config in configs:
        name = "none" if config is None else f"threads {config[0]}, nice +{config[1]}"
        median = statistics.median(speed[config])
        made = f"{statistics.median(entries_per_min[config]):.1f}" if entries_per_min[config] else "-"
        print(f"{name:28s} {median:14.2f} {median / base:9.2f} {made:>12s}")
    print(machine_line(load_before))
    print("command:", command_line())


if __name__ == "__main__":
    main()
