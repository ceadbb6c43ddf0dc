"""Correctness figure of ``tumorsynth_pretrain_ddpm``: does the trained model inpaint tumours better than a
model-free fill?

Data: the phantom (``tumorsynth_make_phantom``, planned and preprocessed by nnU-Net), copied to a new
preprocessed dataset (``easy_tumours``) whose tumours are balls of 3-8 mm radius, all brighter than the organ
by the same amount. Phantom tumours are darker or brighter at random; with a random sign no inpainting can
know the sign from the context, so one consistent kind of tumour makes the task learnable.

Training: the real CLI, tiny preset, on the fold's training cases.

Evaluation, on held-out tumours (the components of the fold's nnU-Net validation cases, never seen in
training, plus the components held out for the validation loss), each in a crop of the model's size centred
on it, normalised intensities, mean squared error over the tumour voxels (per crop, then averaged):

- ``inpaint``: inpainting with the trained model (``inpaint``, DDIM 50 steps by default; one seeded sample
  per crop);
- ``context_mean``: the mask filled with the mean of the crop's known (unmasked) voxels;
- ``shell_mean``: the mask filled with the mean of the known voxels within 2 voxels of the mask (a stronger
  model-free fill: the surrounding tissue);
- ``noise``: the mask filled with Gaussian noise of the known voxels' mean and standard deviation.

Voxels outside the mask must come back unchanged (checked: max |difference| reported, must be 0).

Usage (creates its own nnU-Net folders under --workdir unless they are set and hold a preprocessed phantom)::

    python benchmarks/bench_ddpm_quality.py [--workdir /tmp/bench_ddpm_quality] [--epochs 150] [--lr 1e-3]
        [--batch-size 2] [--crop 16 32 32] [--steps 50] [--sampler ddim|ddpm|dpm++2m] [--threads 1] [--source 990]
        [--checkpoint PATH (evaluate only)]

Measured on an idle 2-core machine, 1 thread, 8 phantom cases (``--cases 8``), tiny preset with the default
EMA of the weights (decay 0.999), ``--crop 8 16 16 --batch-size 8 --lr 2e-3``, DDIM 50 steps, 16 held-out
tumours, masked MSE (mean over crops / median):

- ``--epochs 25`` (100 iterations, 63 s): inpaint 2.52 / 1.66, context_mean 4.31 / 4.36, shell_mean 3.99,
  noise 4.48;
- ``--epochs 60`` (240 iterations, 104 s): inpaint 2.42 / 1.26, context_mean 4.31 / 4.36, shell_mean 3.99,
  noise 4.48 (the median crop is inpainted 3.5x better than the best model-free fill; a few crops still get
  a dark sample, which is what keeps the mean up);
- max |change| outside the masks: 0.0 in every run.

Before the x0 clipping of the samplers the same kind of model gave inpaint ~99 (samples blew up); before the
EMA and the single tumour kind (phantom tumours of random sign kept) 25 epochs gave 3.36.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
import zlib

import numpy as np
from _common import TINY_PLANS, phantom_commands, run_cli, set_nnunet_folders
from scipy import ndimage

BRIGHT_ID = 972


# ----------------------------------------------------------------------------------------------- toy data


def derive_dataset(source: str, new_id: int, new_name: str, transform, configuration: str = "3d_fullres") -> str:
    """Copy a preprocessed dataset to ``Dataset<new_id>_<new_name>`` with ``transform(data, seg, case) -> (data, seg)``
    applied to every case (written in nnU-Net's numpy format). Plans, dataset.json and the split are copied,
    so the new dataset has the same folds. Returns the new name."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class, nnUNetDatasetNumpy

    from nnunetv2_tumorsynth.nnunet import configuration_data_folder, load_plans

    name = f"Dataset{new_id:03d}_{new_name}"
    src_dir = os.path.join(nnUNet_preprocessed, source)
    dst_dir = os.path.join(nnUNet_preprocessed, name)
    for old in os.listdir(nnUNet_preprocessed):  # an earlier copy, under any name with this id
        if old.startswith(f"Dataset{new_id:03d}_"):
            shutil.rmtree(os.path.join(nnUNet_preprocessed, old))
    os.makedirs(dst_dir)
    for f in os.listdir(src_dir):
        if f.endswith(".json"):
            content = json.load(open(os.path.join(src_dir, f)))
            if isinstance(content, dict) and "dataset_name" in content:
                content["dataset_name"] = name
            with open(os.path.join(dst_dir, f), "w") as out:
                json.dump(content, out, indent=2)
    folder = configuration_data_folder(source, load_plans(source), configuration)
    new_folder = os.path.join(dst_dir, os.path.basename(folder))
    os.makedirs(new_folder)
    reader = infer_dataset_class(folder)(folder)
    for case in reader.identifiers:
        data, seg, _, properties = reader.load_case(case)
        data, seg = transform(np.array(data), np.array(seg), case)
        nnUNetDatasetNumpy.save_case(data, seg, properties, os.path.join(new_folder, case))
    return name


def easy_tumours(data: np.ndarray, seg: np.ndarray, case: str, spacing=(3.0, 1.5, 1.5), count: int = 6,
                 radius_mm: tuple[float, float] = (3.0, 8.0), contrast: float = 2.0, organ: int = 1,
                 tumour: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One learnable kind of tumour (channel 0, normalised intensities).

    The phantom's own tumours (random size, darker or brighter at random) are painted over with organ
    intensities and relabelled organ; then up to ``count`` ball-shaped tumours (radius uniform in
    ``radius_mm``) are put inside the organ, away from each other, with intensity ``organ_mean + contrast``
    plus a little noise. Training and held-out tumours thus come from one distribution. Seeded by the case
    name. ``spacing`` in mm, (z, y, x).
    """
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    image, label = data[0], seg[0]
    old = label == tumour
    organ_voxels = image[label == organ]
    organ_mean, organ_sd = float(organ_voxels.mean()), float(organ_voxels.std())
    image[old] = organ_mean + 0.5 * organ_sd * rng.standard_normal(int(old.sum()))
    label[old] = organ
    grid = np.indices(label.shape).astype(np.float32)
    for _ in range(count):
        radius = rng.uniform(*radius_mm)
        free = (label == organ) & ~ndimage.binary_dilation(label == tumour, iterations=2)
        room = ndimage.distance_transform_edt(free, sampling=spacing)
        candidates = np.argwhere(room > radius + 1.5)
        if len(candidates) == 0:
            break
        centre = candidates[rng.integers(len(candidates))]
        dist2 = sum(((grid[a] - centre[a]) * spacing[a]) ** 2 for a in range(3))
        ball = dist2 <= radius**2
        image[ball] = organ_mean + contrast + 0.15 * rng.standard_normal(int(ball.sum()))
        label[ball] = tumour
    return data, seg


# ------------------------------------------------------------------------------------------------ metrics


def held_out_crops(checkpoint: str, dataset: str, plans: str, configuration: str, fold: int):
    """(images (B, 1, z, y, x) float32, masks (B, 1, z, y, x) bool, keys) of the tumours the model never
    trained on: the fold's validation cases and the components held out for the validation loss."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from nnunetv2_tumorsynth.ddpm import read_checkpoint
    from nnunetv2_tumorsynth.ddpm.data import TumourCrops, find_components, open_source

    meta = read_checkpoint(checkpoint)["metadata"]
    crop = [int(c) for c in meta["crop_size_vox"]]
    src = open_source(dataset, plans, configuration, fold)
    record = next(d for d in meta["datasets"] if d["name"] == src.name)
    assert not set(record["training_cases"]) & set(src.validation_cases)
    val_src = dataclasses.replace(
        src, training_cases=src.validation_cases,
        reader=infer_dataset_class(src.data_folder)(src.data_folder, list(src.validation_cases)))
    components = [c for c in find_components([src]) if c.key in record["val_components"]]
    try:
        unseen = find_components([val_src])
    except ValueError:  # no tumour in the validation cases
        unseen = []
    images, masks, keys = [], [], []
    for source, comps in ((src, components), (val_src, unseen)):
        crops = TumourCrops([source], comps, crop, augment=False)
        for i, c in enumerate(comps):
            image, mask = crops.get(i)
            images.append(image[None])
            masks.append(mask[None])
            keys.append(c.key)
    return np.stack(images), np.stack(masks), keys


def fill_errors(checkpoint: str, images: np.ndarray, masks: np.ndarray, steps: int = 50, seed: int = 0,
                sampler: str = "ddim") -> dict:
    """Masked MSE of inpainting and of the model-free fills (see the module docstring), and the largest
    change outside the masks."""
    from nnunetv2_tumorsynth.ddpm import inpaint, load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    inpainted = inpaint(model, images, masks, steps=steps, sampler=sampler, seed=seed, batch_size=8, device="cpu")
    rng = np.random.default_rng(seed)
    errors = {"inpaint": [], "context_mean": [], "shell_mean": [], "noise": []}
    outside_change = 0.0
    for b in range(images.shape[0]):
        image, mask = images[b, 0], masks[b, 0]
        truth = image[mask]
        known = image[~mask]
        shell = ndimage.binary_dilation(mask, iterations=2) & ~mask
        errors["inpaint"].append(float(np.mean((inpainted[b, 0][mask] - truth) ** 2)))
        errors["context_mean"].append(float(np.mean((known.mean() - truth) ** 2)))
        errors["shell_mean"].append(float(np.mean((image[shell].mean() - truth) ** 2)))
        noise = rng.normal(known.mean(), known.std(), truth.shape)
        errors["noise"].append(float(np.mean((noise - truth) ** 2)))
        outside_change = max(outside_change, float(np.abs(inpainted[b, 0][~mask] - image[~mask]).max()))
    result = {k: float(np.mean(v)) for k, v in errors.items()}
    result["per_crop"] = errors
    result["max_abs_change_outside_mask"] = outside_change
    result["num_crops"] = int(images.shape[0])
    return result


# -------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/bench_ddpm_quality")
    parser.add_argument("--source", type=int, default=990, help="phantom dataset id (made if missing)")
    parser.add_argument("--cases", type=int, default=16, help="phantom training cases when it is made")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--crop", type=int, nargs=3, default=(16, 32, 32))
    parser.add_argument("--steps", type=int, default=50, help="sampling steps for inpainting")
    parser.add_argument("--sampler", choices=("ddim", "ddpm", "dpm++2m"), default="ddim")
    parser.add_argument("--checkpoint", default=None, help="evaluate this checkpoint of the toy dataset, no training")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (OMP_NUM_THREADS)")
    parser.add_argument("--fold", type=int, default=0)
    args = parser.parse_args()

    set_nnunet_folders(os.environ, args.workdir, keep_set=True)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("nnUNet_def_n_proc", "2")

    import torch

    torch.set_num_threads(args.threads)
    source = f"Dataset{args.source:03d}_Phantom"
    if not os.path.isfile(os.path.join(os.environ["nnUNet_preprocessed"], source, f"{TINY_PLANS}.json")):
        for cmd in phantom_commands(args.source, phantom=["-n", str(args.cases)]):
            run_cli(cmd, echo=True)
    bright = f"Dataset{BRIGHT_ID:03d}_PhantomBright"
    train_seconds, speed, checkpoint = 0.0, [], args.checkpoint
    if checkpoint is None:
        for old in os.listdir(os.environ["nnUNet_results"]):  # results of an earlier run of this benchmark
            if old.startswith(f"Dataset{BRIGHT_ID:03d}_"):
                shutil.rmtree(os.path.join(os.environ["nnUNet_results"], old))
        bright = derive_dataset(source, BRIGHT_ID, "PhantomBright", easy_tumours)
        cmd = ["tumorsynth_pretrain_ddpm", "-d", str(BRIGHT_ID), "-c", "3d_fullres", "-f", str(args.fold),
               "-p", TINY_PLANS, "--preset", "tiny", "--epochs", str(args.epochs), "--batch-size",
               str(args.batch_size), "--crop", *map(str, args.crop), "--lr", str(args.lr), "-device", "cpu",
               "--overwrite"]
        out, train_seconds = run_cli(cmd, echo=True)
        speed = [line for line in out.splitlines() if line.startswith("speed:")]
        folder = [line.split("output: ", 1)[1] for line in out.splitlines() if line.startswith("output: ")][0]
        checkpoint = os.path.join(folder, "checkpoint_latest.pth")
    images, masks, keys = held_out_crops(checkpoint, bright, TINY_PLANS, "3d_fullres", args.fold)
    t1 = time.time()
    result = fill_errors(checkpoint, images, masks, steps=args.steps, sampler=args.sampler)
    print(f"training: {train_seconds:.0f} s wall ({speed[0] if speed else 'n/a'}), threads {args.threads}")
    print(f"held-out tumour crops: {len(keys)} {keys}")
    print(f"inpainting: {time.time() - t1:.0f} s ({args.sampler}, {args.steps} steps)")
    print("masked MSE (normalised intensity units), mean over crops:")
    for k in ("inpaint", "context_mean", "shell_mean", "noise"):
        print(f"  {k:13s} {result[k]:.4f}   per crop {[round(v, 3) for v in result['per_crop'][k]]}")
    print(f"max |change| outside the masks: {result['max_abs_change_outside_mask']}")
    print("command: python benchmarks/bench_ddpm_quality.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
