"""Shape statistics of random tumour masks (not a test; prints tables).

    /work/venv/bin/python benchmarks/mask_shape_quality.py [--n 500] [--spacing 3.0 1.5 1.5]

1. Every size preset and deformation with default parameters: rate of single-component masks
   (scipy.ndimage.label with 26-connectivity, and with 6-connectivity for comparison), the volume
   share lost to fragments, and percentiles of the equivalent radius in mm (radius of the sphere
   of equal volume).
2. Elastic against simplex at EQUAL displacement amplitude (RMS displacement per axis, mm) and equal
   spatial scale (simplex lambda = 1 / 54 per mm, the paper-size default; elastic smoothing
   0.17 / lambda = 9.2 mm, which gives the same correlation length): fragmentation rate (share of
   masks with more than one 26-connected component) as the amplitude grows.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from _common import argument_parser
from scipy import ndimage

from nnunetv2_tumorsynth.synthesis import shape as masks

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
CONNECTIVITY_6 = ndimage.generate_binary_structure(3, 1)


def shape_stats(mask_list: list[np.ndarray], spacing: tuple[float, float, float]) -> dict[str, float]:
    single_26, single_6, lost, radii = [], [], [], []
    for mask in mask_list:
        labels, n = ndimage.label(mask, CONNECTIVITY_26)
        single_26.append(n == 1)
        single_6.append(ndimage.label(mask, CONNECTIVITY_6)[1] == 1)
        sizes = np.bincount(labels.ravel())[1:]
        lost.append(1.0 - sizes.max() / sizes.sum())
        radii.append(masks.equivalent_radius_mm(mask, spacing))
    p = np.percentile(radii, [5, 25, 50, 75, 95])
    return {
        "single26": 100.0 * np.mean(single_26),
        "single6": 100.0 * np.mean(single_6),
        "lost": 100.0 * np.mean(lost),
        "r5": p[0],
        "r25": p[1],
        "r50": p[2],
        "r75": p[3],
        "r95": p[4],
    }


def run_setting(size: str, deformation: str | None, n: int, spacing, seed: int, overrides: dict) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return shape_stats(
        [masks.random_tumour_mask(spacing, deformation, size, rng, **overrides) for _ in range(n)], spacing
    )


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--n", type=int, default=500, help="masks per setting")
    parser.add_argument("--spacing", type=float, nargs=3, default=(3.0, 1.5, 1.5), help="mm per axis")
    parser.add_argument("--amplitudes", type=float, nargs="+", default=(2.0, 4.0, 6.0, 8.0, 10.0), help="mm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="worker processes")
    args = parser.parse_args()
    spacing = tuple(args.spacing)
    start = time.perf_counter()

    defaults = [("paper", d) for d in ("simplex", "elastic", None)]
    defaults += [(s, "simplex") for s in ("tiny", "small", "medium", "large", "mix")]
    defaults += [(s, "elastic") for s in ("tiny", "small", "medium", "large")]
    lam = 1.0 / (masks.SIMPLEX_NOISE_UNIT_PER_RADIUS * masks.SIZE_PRESETS["paper"].radius_mm)
    smoothing = masks.ELASTIC_SMOOTHING_X_LAMBDA / lam
    sweep = [(a, d) for a in args.amplitudes for d in ("simplex", "elastic")]

    # one independent random stream per setting, so the result does not depend on --jobs
    seeds = np.random.SeedSequence(args.seed).generate_state(len(defaults) + len(sweep))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        default_runs = [
            pool.submit(run_setting, size, deformation, args.n, spacing, int(seed), {})
            for (size, deformation), seed in zip(defaults, seeds, strict=False)
        ]
        sweep_runs = [
            pool.submit(
                run_setting,
                "paper",
                deformation,
                args.n,
                spacing,
                int(seed),
                {"amplitude_mm": amplitude, "simplex_lambda_per_mm": lam, "elastic_smoothing_mm": smoothing},
            )
            for (amplitude, deformation), seed in zip(sweep, seeds[len(defaults) :], strict=True)
        ]

        print(f"1. defaults, {args.n} masks per row, spacing {spacing} mm")
        print(
            f"{'size':7s} {'deformation':11s} {'1 comp 26-c %':>13s} {'1 comp 6-c %':>12s} {'vol lost %':>10s}"
            f"   equivalent radius mm: {'p5':>5s} {'p25':>5s} {'p50':>5s} {'p75':>5s} {'p95':>5s}"
        )
        for (size, deformation), run in zip(defaults, default_runs, strict=True):
            stats = run.result()
            print(
                f"{size:7s} {str(deformation):11s} {stats['single26']:13.1f} {stats['single6']:12.1f} "
                f"{stats['lost']:10.3f}   {'':22s}"
                f"{stats['r5']:5.1f} {stats['r25']:5.1f} {stats['r50']:5.1f} {stats['r75']:5.1f} {stats['r95']:5.1f}"
            )

        print(
            f"\n2. paper-size ellipsoids, equal amplitude and scale (simplex lambda {lam:.4f} /mm, "
            f"elastic smoothing {smoothing:.1f} mm), {args.n} masks per cell"
        )
        print(f"{'RMS amplitude mm':>16s} {'simplex: >1 comp %':>19s} {'elastic: >1 comp %':>19s}")
        for i, amplitude in enumerate(args.amplitudes):
            simplex, elastic = (100.0 - sweep_runs[2 * i + k].result()["single26"] for k in (0, 1))
            print(f"{amplitude:16.1f} {simplex:19.1f} {elastic:19.1f}")
    print(f"\n({time.perf_counter() - start:.0f} s with {args.jobs} processes)")


if __name__ == "__main__":
    main()
