"""Speed of tumour placement in a CT-sized volume on one CPU thread (not a test; prints a table).

    /work/venv/bin/python benchmarks/bench_placement.py [--n 20]

The organ is a large ellipsoid (semi-axes 170 x 150 x 170 mm) in a 200 x 512 x 512 volume at
(2.5, 0.8, 0.8) mm, with 4 existing tumours and 3 vessel-like tubes as forbidden voxels. Each placed
tumour is checked (inside the organ, farther than the margin from forbidden voxels).
"""

from __future__ import annotations

from _common import argument_parser, single_threaded, timed_call

single_threaded()

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from nnunetv2_tumorsynth.synthesis.placement import place_tumour  # noqa: E402
from nnunetv2_tumorsynth.synthesis.shape import random_tumour_mask  # noqa: E402
from nnunetv2_tumorsynth.synthesis.vessels import vessel_mask_from_intensity  # noqa: E402

SHAPE = (200, 512, 512)
SPACING = np.array((2.5, 0.8, 0.8))


def make_volume(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(organ, forbidden, image): organ ellipsoid, existing tumours + tubes, and an intensity image."""
    z, y, x = np.meshgrid(
        *[((np.arange(n) - (n - 1) / 2) * s).astype(np.float32) for n, s in zip(SHAPE, SPACING, strict=True)],
        indexing="ij",
        sparse=True,
    )
    organ = (z / 170.0) ** 2 + (y / 150.0) ** 2 + (x / 170.0) ** 2 <= 1.0
    forbidden = np.zeros(SHAPE, bool)
    for _ in range(4):
        centre = rng.uniform(-0.5, 0.5, 3) * np.array((170.0, 150.0, 170.0))
        radius = rng.uniform(10.0, 25.0)
        forbidden |= (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2
    for _ in range(3):
        cy, cx = rng.uniform(-80.0, 80.0, 2)
        forbidden |= ((y - cy - 0.2 * z) ** 2 + (x - cx) ** 2 <= 5.0**2) & organ
    image = np.where(organ, 100.0, 0.0).astype(np.float32) + 60.0 * forbidden
    image += rng.normal(0.0, 8.0, SHAPE).astype(np.float32)
    return organ, forbidden, image


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--n", type=int, default=20, help="placements per row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    organ, forbidden, image = make_volume(rng)
    distance_to_forbidden = ndimage.distance_transform_edt(~forbidden, sampling=SPACING)
    print(f"volume {SHAPE} at {SPACING.tolist()} mm; organ {organ.sum()} voxels; forbidden {forbidden.sum()} voxels")

    rows = [
        ("paper simplex, inside, margin 5 mm", "paper", {"min_inside_fraction": 1.0}),
        ("large simplex, inside, margin 5 mm", "large", {"min_inside_fraction": 1.0}),
        ("tiny simplex, inside, margin 5 mm", "tiny", {"min_inside_fraction": 1.0}),
        ("paper simplex, 80 % inside", "paper", {"min_inside_fraction": 0.8}),
    ]
    print("times per call: wall clock, and CPU time of this process (less affected by other loads)")
    print(f"{'setting':36s} {'wall median s':>13s} {'wall max s':>10s} {'CPU median s':>12s} {'placed':>7s}")
    for name, size, options in rows:
        times, cpu_times, placed = [], [], 0
        for _ in range(args.n):
            tumour = random_tumour_mask(SPACING, "simplex", size, rng)
            wall, cpu, corner = timed_call(place_tumour, organ, tumour, forbidden, rng, spacing=SPACING, **options)
            times.append(wall)
            cpu_times.append(cpu)
            if corner is None:
                continue
            placed += 1
            box = tuple(slice(c, c + n) for c, n in zip(corner, tumour.shape, strict=True))
            fraction = np.count_nonzero(organ[box] & tumour) / tumour.sum()
            assert fraction >= options.get("min_inside_fraction", 1.0)
            assert distance_to_forbidden[box][tumour].min() > 5.0
        print(
            f"{name:36s} {np.median(times):13.3f} {max(times):10.3f} {np.median(cpu_times):12.3f} {placed:4d}/{args.n}"
        )

    elapsed, cpu, vessels = timed_call(vessel_mask_from_intensity, image, organ, SPACING)
    recall = np.count_nonzero(vessels & forbidden) / np.count_nonzero(forbidden & organ)
    print(f"vessel_mask_from_intensity, same volume: {elapsed:.2f} s wall, {cpu:.2f} s CPU (recall {recall:.2f})")


if __name__ == "__main__":
    main()
