"""Correctness and speed of tumorsynth_evaluate's metrics (``nnunetv2_tumorsynth.evaluation``).

Correctness:
  1. Two spheres of known radii and offset on an anisotropic grid (radii 12 and 10 mm, centres 4 mm apart along
     the 2 mm axis, spacing 2.0 x 0.7 x 0.9 mm): Dice from the lens volume, HD, HD95 and NSD at 5 mm from the
     exact distance distribution between the two sphere surfaces (equal area per step of cos(angle)). The
     voxelised surfaces deviate from the spheres by about a voxel, so these agree to about a voxel, not exactly.
  2. A real-shaped case (512 x 512 x 100 voxels at 0.8 x 0.8 x 2.5 mm, liver and a 5 cm tumour): our values
     against MONAI's compute_dice, compute_hausdorff_distance (percentile None and 95) and compute_surface_dice
     (use_subvoxels=True) called on the whole, uncropped volume: the definitions are the same, so the values
     must agree within 1e-6.

Speed, same case, median of --repeats runs, torch limited to --threads threads (default 1, as each -np worker):
  - ours: ``label_metrics`` of the tumour label (all six metrics; crop to the joint bounding box + 2 voxels),
  - MONAI on the whole volume: compute_dice + compute_hausdorff_distance twice (HD, HD95) + compute_surface_dice,
  - per case as the command does it, files included: ``evaluate_case`` (read both .nii.gz, liver and tumour,
    six metrics each, lesion matching; and the tumour label only, as with ``-l tumour``) against nnU-Net's
    ``compute_metrics`` (read both, liver and tumour, Dice/IoU only), the function behind
    nnUNetv2_evaluate_folder.

Measured (one run, 2 CPU cores shared with other jobs: load average 6-8 during the run, so the absolute
seconds are noisy, e.g. the liver label alone took longer than the whole case with files; the ratios are what
matters):

    correctness, spheres (analytic vs ours): Dice 0.668 vs 0.665; HD 6.00 vs 6.11 mm; HD95 5.70 vs 6.00 mm;
        NSD@5mm 0.871 vs 0.938 (voxelised surfaces, spacing up to 2 mm)
    correctness, 512 x 512 x 100 case, tumour label, ours vs MONAI on the whole volume: Dice, HD, HD95, NSD
        equal, max |difference| 2.7e-09 (Dice: MONAI computes in float32)
    speed, seconds per case (median of 5):
        tumour label, ours (crop + MONAI), 6 metrics                          0.111
        tumour label, MONAI on the whole volume, same 6 metrics               3.354   30.2x slower
        liver label (2.8 l), ours                                             3.135
        liver label, MONAI on the whole volume                                8.407    2.7x slower
        per case with files: ours, liver + tumour, 6 metrics + lesions        2.532
        per case with files: ours, tumour only (-l tumour)                    0.274
        per case with files: nnU-Net compute_metrics, liver + tumour, Dice    0.460
    i.e. about 5.5x the time of nnU-Net's Dice-only evaluation for liver and tumour (the liver's surface
    distances dominate), 0.6x of it for the tumour alone.

Run: ``python benchmarks/bench_evaluate.py [--repeats 5] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

SPACING = (2.5, 0.8, 0.8)  # mm, array axis order z, y, x
SHAPE = (100, 512, 512)


def ellipsoid(shape, spacing, centre_mm, semi_axes_mm) -> np.ndarray:
    """Voxels whose centre lies inside the ellipsoid (all in mm, array axis order)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g * s - c) / a) ** 2 for g, s, c, a in zip(grids, spacing, centre_mm, semi_axes_mm)) <= 1.0


def make_case() -> tuple[np.ndarray, np.ndarray]:
    """Reference and prediction label maps (0 background, 1 liver, 2 tumour) of a liver with a 5 cm tumour."""
    centre = (125.0, 205.0, 215.0)
    reference = ellipsoid(SHAPE, SPACING, centre, (70.0, 90.0, 110.0)).astype(np.uint8)
    prediction = ellipsoid(SHAPE, SPACING, (centre[0] + 2.5, centre[1], centre[2] - 1.6),
                           (68.0, 88.0, 109.0)).astype(np.uint8)
    tumour = (130.0, 180.0, 250.0)
    reference[ellipsoid(SHAPE, SPACING, tumour, (25.0, 25.0, 25.0))] = 2
    prediction[ellipsoid(SHAPE, SPACING, (tumour[0] + 2.5, tumour[1] + 2.4, tumour[2] - 1.6), (23.0, 24.0, 22.0))] = 2
    return reference, prediction


def spheres_check() -> list[tuple[str, float, float]]:
    """(metric, analytic, ours) for two offset spheres on an anisotropic grid."""
    from nnunetv2_tumorsynth.evaluation import label_metrics

    spacing, shape = (2.0, 0.7, 0.9), (28, 64, 56)
    R, r, d = 12.0, 10.0, 4.0
    a = ellipsoid(shape, spacing, (28.0, 22.0, 24.0), (R, R, R))
    b = ellipsoid(shape, spacing, (28.0 + d, 22.0, 24.0), (r, r, r))
    m = label_metrics(a, b, spacing, tolerance_mm=5.0)
    lens = math.pi * (R + r - d) ** 2 * (d * d + 2 * d * r - 3 * r * r + 2 * d * R + 6 * r * R - 3 * R * R) / (12 * d)
    u = np.linspace(-1.0, 1.0, 200001)
    d_ab = np.abs(np.sqrt(R * R + d * d - 2 * R * d * u) - r)
    d_ba = np.abs(np.sqrt(r * r + d * d - 2 * r * d * u) - R)
    nsd = (R * R * (d_ab <= 5).mean() + r * r * (d_ba <= 5).mean()) / (R * R + r * r)
    return [("Dice", 2 * lens / (4 / 3 * math.pi * (R ** 3 + r ** 3)), m.dice),
            ("HD (mm)", max(d_ab.max(), d_ba.max()), m.hd),
            ("HD95 (mm)", max(np.quantile(d_ab, 0.95), np.quantile(d_ba, 0.95)), m.hd95),
            ("NSD@5mm", nsd, m.nsd)]


def median_seconds(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in each -np worker)")
    args = parser.parse_args()

    import SimpleITK as sitk
    import torch
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunetv2_tumorsynth.evaluation import label_metrics
    from nnunetv2_tumorsynth.evaluation.folders import evaluate_case
    from nnunetv2_tumorsynth.evaluation.inputs import CaseJob
    from nnunetv2_tumorsynth.evaluation.metrics import monai_whole_volume

    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; torch threads {args.threads}; "
          f"{args.repeats} repeats")

    print("\nCorrectness, two spheres (radii 12 and 10 mm, 4 mm apart, spacing 2.0 x 0.7 x 0.9 mm):")
    print(f"{'metric':<12}{'analytic':>10}{'ours':>10}")
    for name, analytic, ours in spheres_check():
        print(f"{name:<12}{analytic:>10.3f}{ours:>10.3f}")

    reference, prediction = make_case()
    ref_t, pred_t = reference == 2, prediction == 2
    print(f"\nCase {SHAPE} voxels at {SPACING} mm: tumour {ref_t.sum() * np.prod(SPACING) / 1000:.1f} ml, "
          f"liver {(reference == 1).sum() * np.prod(SPACING) / 1000:.0f} ml")
    label_metrics(ref_t, pred_t, SPACING)  # imports and warm-up
    monai_whole_volume(ref_t[:8], pred_t[:8], SPACING)

    ours_s, ours = median_seconds(lambda: label_metrics(ref_t, pred_t, SPACING, 5.0), args.repeats)
    monai_s, monai = median_seconds(lambda: monai_whole_volume(ref_t, pred_t, SPACING, 5.0), args.repeats)
    worst = max(abs(getattr(ours, k) - v) for k, v in monai.items())
    print("Correctness, tumour label, ours vs MONAI on the whole volume: "
          + ", ".join(f"{k} {getattr(ours, k):.6f} vs {v:.6f}" for k, v in monai.items())
          + f"; max |difference| {worst:.1e}")
    liver_s, _ = median_seconds(lambda: label_metrics(reference == 1, prediction == 1, SPACING, 5.0), args.repeats)
    monai_liver_s, _ = median_seconds(lambda: monai_whole_volume(reference == 1, prediction == 1, SPACING, 5.0),
                                      args.repeats)

    folder = tempfile.mkdtemp(prefix="bench_evaluate_")
    try:
        files = {}
        for name, array in (("ref", reference), ("pred", prediction)):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(SPACING[::-1])
            files[name] = os.path.join(folder, f"{name}.nii.gz")
            sitk.WriteImage(image, files[name])
        job = CaseJob("case", files["ref"], {"pred": files["pred"]}, SimpleITKIO, {1: "liver", 2: "tumour"}, (2,),
                      5.0, 0.0, (5.0, 10.0, 20.0))
        case_s, _ = median_seconds(lambda: evaluate_case(job), args.repeats)
        tumour_job = CaseJob("case", files["ref"], {"pred": files["pred"]}, SimpleITKIO, {2: "tumour"}, (2,), 5.0,
                             0.0, (5.0, 10.0, 20.0))
        tumour_case_s, _ = median_seconds(lambda: evaluate_case(tumour_job), args.repeats)
        nnunet_s, _ = median_seconds(lambda: compute_metrics(files["ref"], files["pred"], SimpleITKIO(), [1, 2]),
                                     args.repeats)
    finally:
        shutil.rmtree(folder)

    print("\nSpeed, seconds per case (median):")
    rows = [("tumour label, ours (crop + MONAI), 6 metrics", ours_s, None),
            ("tumour label, MONAI on the whole volume, same 6 metrics", monai_s, monai_s / ours_s),
            ("liver label, ours, 6 metrics", liver_s, None),
            ("liver label, MONAI on the whole volume", monai_liver_s, monai_liver_s / liver_s),
            ("per case with files: ours, liver + tumour, 6 metrics + lesions", case_s, None),
            ("per case with files: ours, tumour only (-l tumour)", tumour_case_s, None),
            ("per case with files: nnU-Net compute_metrics, liver + tumour, Dice only", nnunet_s, None)]
    print(f"{'':<74}{'s':>8}{'ratio':>10}")
    for name, seconds, ratio in rows:
        print(f"{name:<74}{seconds:>8.3f}" + (f"{ratio:>9.2f}x" if ratio is not None else ""))
    print("(ratio = MONAI's time / ours; > 1: ours is faster)")
    print(f"nnU-Net's Dice-only evaluation / ours: {nnunet_s / case_s:.2f} (liver + tumour), "
          f"{nnunet_s / tumour_case_s:.2f} (tumour only)")


if __name__ == "__main__":
    main()
