"""Speed of tumour mask generation on one CPU thread (not a test; prints a table).

    /work/venv/bin/python benchmarks/bench_masks.py [--n 50] [--spacing 3.0 1.5 1.5]

For paper-size tumours (semi-axes N(27, 4.5) mm) at the paper's spacing it times, on the same drawn
shapes and the same render boxes:
  * simplex (fast path): snoise3 on coarse nodes, cubic spline to the voxels;
  * simplex (naive): snoise3 called at every voxel of the box (via map(), the fastest way to call a
    scalar C function per voxel from Python);
  * elastic and no deformation, for reference;
and the agreement (Dice) between the fast and the naive simplex masks.
"""

from __future__ import annotations

from _common import argument_parser, single_threaded, timed_call

single_threaded()

import numpy as np  # noqa: E402

from nnunetv2_tumorsynth.synthesis import shape as masks  # noqa: E402


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--n", type=int, default=50, help="masks per setting")
    parser.add_argument("--spacing", type=float, nargs=3, default=(3.0, 1.5, 1.5), help="mm per axis")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    spacing = tuple(args.spacing)

    rng = np.random.default_rng(args.seed)
    masks.random_tumour_mask(spacing, "simplex", rng=rng)  # warm up caches and imports

    rows: dict[str, list[tuple[float, float]]] = {  # (wall s, CPU s) per mask
        "simplex, fast (random_tumour_mask)": [],
        "simplex, naive (snoise3 per voxel)": [],
        "elastic (random_tumour_mask)": [],
        "none (random_tumour_mask)": [],
    }
    dice, box_voxels = [], []
    for _ in range(args.n):
        seed = int(rng.integers(2**31))
        *seconds, _ = timed_call(masks.random_tumour_mask, spacing, "simplex", "paper", seed)
        rows["simplex, fast (random_tumour_mask)"].append(seconds)
        shape = masks.draw_tumour_shape("simplex", "paper", seed)
        fast = masks.render_uncropped(shape, spacing)
        *seconds, naive = timed_call(masks.render_uncropped, shape, spacing, exact_noise=True)
        rows["simplex, naive (snoise3 per voxel)"].append(seconds)
        dice.append(2 * np.count_nonzero(fast & naive) / (fast.sum() + naive.sum()))
        box_voxels.append(fast.size)
        rows["elastic (random_tumour_mask)"].append(
            timed_call(masks.random_tumour_mask, spacing, "elastic", "paper", seed)[:2]
        )
        rows["none (random_tumour_mask)"].append(timed_call(masks.random_tumour_mask, spacing, None, "paper", seed)[:2])

    print(f"paper-size masks, spacing {spacing} mm, {args.n} masks per row, 1 thread")
    print(f"render box: median {int(np.median(box_voxels))} voxels")
    print(f"{'method':38s} {'wall median ms':>15s} {'wall p90 ms':>12s} {'CPU median ms':>14s}")
    for name, times in rows.items():
        wall, cpu = 1e3 * np.array(times).T
        print(f"{name:38s} {np.median(wall):15.2f} {np.percentile(wall, 90):12.2f} {np.median(cpu):14.2f}")
    fast_s = np.median(np.array(rows["simplex, fast (random_tumour_mask)"]), axis=0)
    naive_s = np.median(np.array(rows["simplex, naive (snoise3 per voxel)"]), axis=0)
    print(
        f"speed-up of the fast simplex path over per-voxel snoise3: {naive_s[0] / fast_s[0]:.1f}x wall, "
        f"{naive_s[1] / fast_s[1]:.1f}x CPU"
    )
    print(f"Dice(fast, per-voxel) on the same shapes: min {min(dice):.4f}, median {np.median(dice):.4f}")


if __name__ == "__main__":
    main()
