"""Tumour placement on a real liver cut by the field of view, and vessel avoidance (not a test; one table).

    .venv/bin/python benchmarks/bench_placement_real.py [--data ../shared/data/real_mr] [--n 100] [--seed 0]

Every row makes ``--n`` entries with the synthesis bank's own placement (``TumourSynthesiser.plan``, as
the trainers do: two draws of the requested size preset, then two of each smaller preset, margin 5 mm,
simplex deformation) for one ``min_inside_fraction`` and ``avoid_vessels`` setting. Seeds are fixed: entry
i of every row uses ``numpy.random.default_rng([seed, i])``, so all rows start each entry from the same
first tumour draw.

Cases (arrays in nnU-Net's (z, y, x) order):

- real MR: ``mr_abdomen.nii.gz`` / ``mr_abdomen_seg.nii.gz`` (TotalSegmentator test data: liver label 5;
  vessels 23 aorta, 24 inferior vena cava, 25 portal and splenic vein). Native 3 mm isotropic; by default
  resampled in-plane to (3.0, 1.5, 1.5) mm (image linear, labels nearest), a 3d_fullres-like spacing for
  abdominal MR (``--spacing native`` keeps 3 mm). The field of view cuts the liver at 60 mm in z (all 20
  slices hold liver): a hard case. Where the bank lets a tumour bulge out of the organ it may also cross
  that cut, beyond which counts as outside the organ (clipped away).
- phantom: a liver wholly in view (``phantom.make_phantom_case`` with a 64 x 160 x 160 volume at
  (3.0, 1.5, 1.5) mm, no tumours; liver semi-axes about 70 x 77 x 77 mm, with bright vessel tubes).

Columns: "1st draw" is the share of single draws of the requested preset that ``place_tumour`` placed (the
first call of each entry, a fresh draw); "at preset" the share of entries made at the requested preset
(two draws); "fallbacks" the entries made with a smaller preset; radii are equivalent radii in mm
(sphere of equal volume) as drawn (first draw, requested preset) and as placed after clipping to the
organ (median [interquartile range]). "near vessel" (real MR only) is the share of entries with a tumour
voxel within 3 mm of a labelled vessel (the labels are disjoint from the liver, so a clipped tumour never
overlaps them; 3 mm, one native voxel, means touching); in brackets the same share among the entries
made at the requested preset only (tumours of comparable size in every row). "ml" is the mean tumour
volume within those 3 mm. "ms/entry" is the CPU time of one ``TumourSynthesiser.plan`` (vessel detection included),
"ms/place" of one ``place_tumour`` call (CPU time of this single-threaded process: steadier than wall time on a shared
machine). About 2 CPU minutes at the default ``--n 100``.
"""

from __future__ import annotations

from _common import argument_parser, single_threaded

single_threaded()

import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from nnunetv2_tumorsynth.phantom import PhantomSettings, make_phantom_case  # noqa: E402
from nnunetv2_tumorsynth.synthesis import placement  # noqa: E402
from nnunetv2_tumorsynth.synthesis.shape import equivalent_radius_mm  # noqa: E402
from nnunetv2_tumorsynth.synthesis.synthesise import NoRoom, TumourSettings, TumourSynthesiser  # noqa: E402
from nnunetv2_tumorsynth.synthesis.texture import HeuristicTexture  # noqa: E402
from nnunetv2_tumorsynth.synthesis.vessels import vessel_mask_from_intensity  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "real_mr")
LIVER, VESSELS, NO_TUMOUR = 5, (23, 24, 25), 255
FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
NEAR_VESSEL_MM = 3.0


class OneCase:
    """One case behind nnU-Net's ``load_case``: data (1, z, y, x) float32, seg (1, z, y, x)."""

    def __init__(self, image: np.ndarray, seg: np.ndarray):
        self.data, self.seg = image[None].astype(np.float32), seg[None]

    def load_case(self, identifier: str):
        return self.data, self.seg, None, {}


class CountingPlacement:
    """Wraps ``placement.place_tumour`` (as ``place_random_tumour`` calls it): success and CPU time of every call."""

    def __init__(self, place):
        self.place, self.calls = place, []

    def __call__(self, *args, **kwargs):
        start = time.process_time()
        corner = self.place(*args, **kwargs)
        self.calls.append((corner is not None, time.process_time() - start))
        return corner


def load_real(folder: str, spacing: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(image, labels, spacing in mm), (z, y, x) order, native or resampled in-plane to 1.5 mm."""
    import nibabel as nib

    image = np.asarray(nib.load(os.path.join(folder, "mr_abdomen.nii.gz")).dataobj).astype(np.float32)
    seg = np.asarray(nib.load(os.path.join(folder, "mr_abdomen_seg.nii.gz")).dataobj).astype(np.uint8)
    image, seg = image.transpose(2, 1, 0), seg.transpose(2, 1, 0)  # NIfTI (x, y, z) -> (z, y, x)
    if spacing == "native":
        return image, seg, (3.0, 3.0, 3.0)
    return ndimage.zoom(image, (1, 2, 2), order=1), ndimage.zoom(seg, (1, 2, 2), order=0), (3.0, 1.5, 1.5)


def run_row(case: OneCase, spacing, organ_label: int, size: str, fraction: float, avoid: bool, n: int,
            seed: int, vessel_distance_mm: np.ndarray | None) -> dict:
    """Make ``n`` entries with one setting; the figures of one table row."""
    settings = TumourSettings(texture="heuristic", size=size, min_inside_fraction=fraction, avoid_vessels=avoid,
                              seed=seed)
    synthesiser = TumourSynthesiser(HeuristicTexture(), settings, spacing, organ_label, NO_TUMOUR, None)
    counter = CountingPlacement(placement.place_tumour)
    placement.place_tumour = counter
    first_placed, at_preset, radii, drawn, near, near_ml, near_at_preset, seconds = [], [], [], [], [], [], [], []
    voxel_ml = float(np.prod(spacing)) / 1000.0
    try:
        for i in range(n):
            synthesiser.rng = np.random.default_rng([seed, i])
            counter_start = len(counter.calls)
            start = time.process_time()
            try:
                job = synthesiser.plan("case", case.data, case.seg)
            except NoRoom:
                job = None
            seconds.append(time.process_time() - start)
            first_placed.append(counter.calls[counter_start][0])
            if job is None:
                continue
            at_preset.append(job.size == job.size_requested)
            radii.append(equivalent_radius_mm(job.mask, spacing))
            drawn.append(job.requested_radius_mm)
            if vessel_distance_mm is not None:
                box = tuple(slice(int(c), int(c) + s) for c, s in zip(job.corner, job.mask.shape))
                close = np.count_nonzero(job.mask & (vessel_distance_mm[box] <= NEAR_VESSEL_MM + 1e-6))
                near.append(close > 0)
                near_ml.append(close * voxel_ml)
                if at_preset[-1]:
                    near_at_preset.append(close > 0)
    finally:
        placement.place_tumour = counter.place
    made = len(radii)
    return {
        "first": np.mean(first_placed), "at_preset": np.sum(at_preset) / n, "fallbacks": made - int(np.sum(at_preset)),
        "failed": n - made, "drawn": np.median(drawn) if drawn else np.nan,
        "placed": np.percentile(radii, [25, 50, 75]) if radii else np.full(3, np.nan),
        "near": np.mean(near) if near else np.nan, "near_ml": np.mean(near_ml) if near_ml else np.nan,
        "near_at_preset": np.mean(near_at_preset) if near_at_preset else np.nan,
        "ms_entry": 1000 * np.mean(seconds), "ms_place": 1000 * np.mean([t for _, t in counter.calls]),
    }


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with mr_abdomen.nii.gz and mr_abdomen_seg.nii.gz")
    parser.add_argument("--n", type=int, default=100, help="entries per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", choices=("fullres", "native"), default="fullres",
                        help="real MR at (3, 1.5, 1.5) mm (default) or its native 3 mm")
    args = parser.parse_args()
    files = [os.path.join(args.data, f) for f in ("mr_abdomen.nii.gz", "mr_abdomen_seg.nii.gz")]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        sys.exit(f"bench_placement_real: {', '.join(missing)} not found; pass --data <folder holding the real MR "
                 f"(../shared/data/real_mr beside the repository)>")

    start, cpu_start = time.perf_counter(), time.process_time()
    image, seg, spacing = load_real(args.data, args.spacing)
    liver = seg == LIVER
    vessels = np.isin(seg, VESSELS)
    extent = [int(np.any(liver, axis=tuple(a for a in range(3) if a != k)).sum()) for k in range(3)]
    print(f"real MR: {image.shape} voxels at {spacing} mm (z, y, x); liver {liver.sum() * np.prod(spacing) / 1000:.0f}"
          f" ml, {extent[0] * spacing[0]:.0f} x {extent[1] * spacing[1]:.0f} x {extent[2] * spacing[2]:.0f} mm "
          f"(z cut by the field of view); labelled vessels {vessels.sum()} voxels")
    real = OneCase(image, seg)
    vessel_distance = ndimage.distance_transform_edt(~vessels, sampling=spacing)
    detected = vessel_mask_from_intensity(image, liver, spacing)
    print(f"real MR: vessel_mask_from_intensity finds {detected.sum()} voxels in the liver, median "
          f"{np.median(vessel_distance[detected]):.0f} mm from a labelled vessel; labelled vessels mean intensity "
          f"{image[vessels].mean():.0f} vs liver {image[liver].mean():.0f} (darker; the detector looks for bright "
          f"ones); {np.count_nonzero(liver & (vessel_distance <= NEAR_VESSEL_MM))} liver voxels within "
          f"{NEAR_VESSEL_MM:g} mm of a labelled vessel")
    phantom_settings = PhantomSettings(shape=(64, 160, 160), spacing=(3.0, 1.5, 1.5))
    p_image, p_label = make_phantom_case(np.random.default_rng(args.seed), phantom_settings, with_tumours=False)
    p_liver = p_label == 1
    assert not (p_liver[[0, -1]].any() or p_liver[:, [0, -1]].any() or p_liver[:, :, [0, -1]].any())
    print(f"phantom: {p_image.shape} voxels at {phantom_settings.spacing} mm; liver "
          f"{p_liver.sum() * np.prod(phantom_settings.spacing) / 1000:.0f} ml, wholly in view")
    phantom = OneCase(p_image, p_label.astype(np.uint8))

    rows = [("real MR", "paper", f, avoid) for avoid in (False, True) for f in FRACTIONS]
    rows += [("real MR", "small", f, avoid) for f in (1.0, TumourSettings().min_inside_fraction)
             for avoid in (False, True)]
    rows += [("phantom", "paper", f, avoid) for f in FRACTIONS for avoid in (False,)]
    rows += [("phantom", "paper", TumourSettings().min_inside_fraction, True)]
    cases = {"real MR": (real, spacing, LIVER, vessel_distance),
             "phantom": (phantom, phantom_settings.spacing, 1, None)}

    print(f"\n{args.n} entries per row, seed {args.seed}, margin 5 mm, simplex; radii: equivalent radius in mm")
    header = (f"{'case':18s} {'size':5s} {'inside':>6s} {'vessels':>7s} {'1st draw':>8s} {'at preset':>9s} "
              f"{'fallbacks':>9s} {'drawn r':>7s} {'placed r median [IQR]':>21s} {'near vessel (at preset)':>23s} "
              f"{'ml':>5s} {'ms/entry':>8s} {'ms/place':>8s}")
    print(header)
    print("-" * len(header))
    for name, size, fraction, avoid in rows:
        case, case_spacing, organ_label, distance = cases[name]
        r = run_row(case, case_spacing, organ_label, size, fraction, avoid, args.n, args.seed, distance)
        lo, mid, hi = r["placed"]
        near = "n/a" if np.isnan(r["near"]) else f"{100 * r['near']:.0f} %"
        if not np.isnan(r["near_at_preset"]):
            near += f" ({100 * r['near_at_preset']:.0f} %)"
        near_ml = "" if np.isnan(r["near_ml"]) else f"{r['near_ml']:.2f}"
        fallbacks = f"{r['fallbacks']}" + (f" +{r['failed']} none" if r["failed"] else "")
        print(f"{name:18s} {size:5s} {fraction:6.1f} {'avoid' if avoid else 'off':>7s} {100 * r['first']:7.0f}% "
              f"{100 * r['at_preset']:8.0f}% {fallbacks:>9s} {r['drawn']:7.1f} {f'{mid:.1f} [{lo:.1f}-{hi:.1f}]':>21s} "
              f"{near:>23s} {near_ml:>5s} {r['ms_entry']:8.1f} {r['ms_place']:8.1f}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s wall, {time.process_time() - cpu_start:.0f} s CPU")


if __name__ == "__main__":
    main()
