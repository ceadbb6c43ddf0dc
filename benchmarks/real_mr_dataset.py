"""A real-anatomy nnU-Net dataset for the benchmarks: one real abdominal MR, augmented, with lesions of its own.

The project's synthetic tumours must also be judged on anatomy and on lesions that the project did not draw.
This script makes such a dataset from the one real scan in ``../shared/data/real_mr`` (``mr_abdomen.nii.gz``
and ``mr_abdomen_seg.nii.gz``: 20 x 91 x 117 voxels, 3 mm isotropic, TotalSegmentator ``total_mr`` labels, liver
= 5; no tumour). Its lesions come from the recipe below, written for this script alone: nothing of the project's
tumour synthesis (``nnunetv2_tumorsynth.synthesis``, masks, textures, phantom) is used. Only the project's
``files.new_raw_dataset`` and ``write_dataset_json`` are (the dataset is built aside and renamed into place).

Units are mm; arrays and every (z, y, x) triple are in numpy/nnU-Net axis order (z, y, x); SimpleITK
coordinates (origin, ``centre_world_xyz``) are (x, y, z).

Anatomy (every case, training and test)
---------------------------------------
Each case is an augmented copy of the one scan:

1. Crop: z keeps 16-20 consecutive slices (uniform; 20 = all), y and x keep 70-90 % of their extent (uniform,
   random offset); a crop is accepted only if it keeps at least 80 % of the scan's liver voxels (up to 200 draws,
   then the whole scan). The field of view cuts the liver in z in the scan itself, so every case shows a cut liver.
2. Left-right flip (x axis) with probability 0.5.
3. Lesions (below), added to the cropped scan's intensities.
4. Multiplicative bias field 1 + b: b is a 3 x 4 x 4 grid of uniform random values upsampled to the image by cubic
   spline (a wavelength of about the field of view), scaled so that max |b| is uniform in 5-10 %.
5. Global intensity jitter: a factor uniform in 0.9-1.1 and an offset uniform in +-5 % of the liver median.
6. Fresh Rician noise: magnitude of (image + n1, n2), n1 and n2 Gaussian with sigma uniform in 0.5-1.0 times the
   scan's own noise (estimated once: robust SD of x-neighbour differences inside the eroded liver / sqrt(2), about
   14 on the scan's scale, so it includes some fine liver texture). Intensities stay >= 0; written as float32.

Spacing stays 3 mm; the origin is the source origin moved to the crop's first voxel, the direction the source's
(a flipped case is mirrored anatomy in the source's frame). Labels: liver -> 1, lesion -> 2, everything else 0.

Lesions (training cases with ``annotated`` lesions, and every test case)
------------------------------------------------------------------------
1-3 lesions per case (uniform), drawn one after the other, each up to 60 tries:

- Size and shape: equivalent radius r (sphere of equal volume) log-uniform in 4-16 mm; an ellipsoid with semi-axes
  r * q, q = exp(uniform(-0.3, 0.3)) per axis normalised to a product of 1, in a uniformly random orientation.
- Boundary: the ellipsoid's normalised radius must stay below 1 + e(u), u the direction from the centre in the
  ellipsoid's frame and e a smooth random radial field: the sum of 8 von Mises-Fisher bumps
  a_k * exp(kappa * (u . v_k - 1)), v_k uniform directions, a_k uniform in +-0.15, kappa uniform in 2-6,
  e clipped to +-0.3.
- Position: centre = a uniformly drawn liver voxel plus a uniform sub-voxel shift (+-1.5 mm). The shape is then
  clipped to the liver (voxels outside the field of view count as outside), and only its largest connected part
  (26-connectivity) is kept. The try is rejected if that part holds < 70 % of the shape's voxels, or if it comes
  within one voxel (26-neighbourhood) of an earlier lesion: lesions are then at least 3 mm apart (one clear 3 mm
  voxel between them) and each one is its own connected component, as the evaluation counts lesions.
- Intensity (additive, so the liver's own texture and noise stay under the lesion): offset
  -c * SD, c uniform in 0.8-2.2, SD the standard deviation of this case's liver (eroded by one voxel) before any
  lesion, so each lesion is c liver SDs darker than the liver around it (hypointense: T2 or portal-venous washout);
  internal heterogeneity: Gaussian noise smoothed with a 3 mm (one voxel) Gaussian, set to mean 0 and SD h * SD
  over the lesion (so the lesion's mean offset is exactly the drawn contrast), h uniform in 0.5-1.0; with
  probability 0.3 a thin brighter rim, drawn only where the lesion keeps an inner core (one-voxel erosion) of at
  least 30 % of its voxels (about r >= 9 mm; smaller lesions get no rim and record rim = false): a rim 1-2 mm
  thick (uniform) at +g * SD above the surrounding liver, g uniform in 0-0.8, fills that fraction of each outer
  voxel (partial volume in 3 mm voxels: outer voxel offset = w * rim + (1 - w) * core, w = thickness / 3 mm).
  The offset map is blurred with a Gaussian of sigma uniform in 1-2 mm (a soft edge) before it is added;
  intensities are clipped at 0.

The recipe's contrast is set before the bias field, the jitter and the fresh noise; ``lesions.json`` records it
(``contrast_sd``) and also the contrast measured in the written image (``measured_contrast_sd``: lesion mean minus
the mean of the liver within 6 mm around it, over the SD of the lesion-free eroded liver of the written image).

Seeds: case i of split s uses ``numpy.random.default_rng([seed, s, i, k])`` with s = 0 (training, ``seed``) or 1
(test, ``test_seed``) and separate streams k for anatomy, lesions and intensities. So the test set depends only on
(``test_seed``, ``n_test``) (byte-identical files whatever the training settings: the Scarce / Full / Free datasets
of ``bench_benefit.py --data real_mr`` share it), and training case i of those datasets is the same augmented
anatomy with or without its lesions. The first ``annotated`` training cases have lesions, the others none.

Every case's augmentation and every lesion (case, centre, radius, contrast, rim...) go to ``lesions.json`` beside
``dataset.json``. All cases are copies of one person's anatomy: the test set holds out lesions, crops, bias fields
and noise, not anatomy.

Run::

    python benchmarks/real_mr_dataset.py --raw DIR --id 970 --train 8 --annotated 2 --test 8 \\
        [--name RealMR] [--seed 0] [--test-seed 1000] [--source ../shared/data/real_mr] [--overwrite] \\
        [--montage /tmp/real_mr_cases.png]
"""

from __future__ import annotations

if __name__ == "__main__":
    from _common import single_threaded

    single_threaded()

import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

DEFAULT_SOURCE = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "real_mr"))
IMAGE_FILE, SEG_FILE = "mr_abdomen.nii.gz", "mr_abdomen_seg.nii.gz"
SOURCE_LIVER = 5
LABELS = {"background": 0, "liver": 1, "tumour": 2}
CASE_PREFIX = "realmr"
TRAIN, TEST = 0, 1  # the split's number in the seed
ANATOMY, LESIONS, INTENSITY = 0, 1, 2  # random streams of one case

# The recipe's ranges, in one place: the docstring says what they mean; lesions.json records them.
RECIPE = {
    "crop_z_slices": (16, 20), "crop_yx_fraction": (0.7, 0.9), "crop_min_liver_kept": 0.8, "flip_x_probability": 0.5,
    "bias_grid": (3, 4, 4), "bias_amplitude": (0.05, 0.10), "scale": (0.9, 1.1), "offset_of_liver_median": 0.05,
    "noise_of_scan_noise": (0.5, 1.0),
    "lesions_per_case": (1, 3), "equivalent_radius_mm": (4.0, 16.0), "axis_log_ratio": 0.3,
    "boundary_bumps": 8, "boundary_bump_amplitude": 0.15, "boundary_kappa": (2.0, 6.0), "boundary_max": 0.3,
    "min_inside_liver": 0.7, "min_gap_voxels": 1, "tries_per_lesion": 60,
    "contrast_sd": (-2.2, -0.8), "heterogeneity_sd": (0.5, 1.0), "heterogeneity_smoothing_mm": 3.0,
    "rim_probability": 0.3, "rim_contrast_sd": (0.0, 0.8), "rim_thickness_mm": (1.0, 2.0), "rim_min_core": 0.3,
    "edge_sigma_mm": (1.0, 2.0),
}
FULL_26 = np.ones((3, 3, 3), bool)


@functools.lru_cache(maxsize=2)
def load_source(source_dir: str = DEFAULT_SOURCE):
    """(image float64 (z, y, x), liver bool, spacing (z, y, x) mm, origin (x, y, z), direction, noise sigma)."""
    import SimpleITK as sitk

    image_file, seg_file = os.path.join(source_dir, IMAGE_FILE), os.path.join(source_dir, SEG_FILE)
    for f in (image_file, seg_file):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{f} not found: pass the folder of {IMAGE_FILE} and {SEG_FILE} (--source)")
    image = sitk.ReadImage(image_file)
    image_array = sitk.GetArrayFromImage(image).astype(np.float64)
    liver = sitk.GetArrayFromImage(sitk.ReadImage(seg_file)) == SOURCE_LIVER
    eroded = ndimage.binary_erosion(liver)
    both = eroded[:, :, 1:] & eroded[:, :, :-1]
    diffs = np.diff(image_array, axis=2)[both]
    noise = 1.4826 * np.median(np.abs(diffs - np.median(diffs))) / np.sqrt(2)
    return (image_array, liver, tuple(image.GetSpacing()[::-1]), tuple(image.GetOrigin()), tuple(image.GetDirection()),
            float(noise))


def case_rng(seed: int, split: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, split, index, stream])


def draw_crop(rng: np.random.Generator, liver: np.ndarray) -> tuple[tuple[slice, ...], float]:
    """Crop slices (z, y, x) keeping at least RECIPE's share of the liver, and the share kept."""
    shape, total = liver.shape, liver.sum()
    lo, hi = RECIPE["crop_z_slices"]
    for _ in range(200):
        nz = min(int(rng.integers(lo, hi + 1)), shape[0])
        sizes = [nz] + [int(round(n * rng.uniform(*RECIPE["crop_yx_fraction"]))) for n in shape[1:]]
        starts = [int(rng.integers(0, n - s + 1)) for n, s in zip(shape, sizes)]
        crop = tuple(slice(a, a + s) for a, s in zip(starts, sizes))
        kept = liver[crop].sum() / total
        if kept >= RECIPE["crop_min_liver_kept"]:
            return crop, float(kept)
    return tuple(slice(0, n) for n in shape), 1.0


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3 x 3 rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def lesion_shape(rng: np.random.Generator, radius: float, offsets_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean shape at ``offsets_mm`` (..., 3) from the centre, and its semi-axes (mm): perturbed ellipsoid."""
    q = np.exp(rng.uniform(-RECIPE["axis_log_ratio"], RECIPE["axis_log_ratio"], 3))
    semi = radius * q / np.prod(q) ** (1 / 3)
    local = offsets_mm @ random_rotation(rng)  # coordinates in the ellipsoid's frame
    rho = np.sqrt(((local / semi) ** 2).sum(-1))
    length = np.linalg.norm(local, axis=-1, keepdims=True)
    u = local / np.maximum(length, 1e-9)
    k = RECIPE["boundary_bumps"]
    v = rng.standard_normal((k, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    a = rng.uniform(-RECIPE["boundary_bump_amplitude"], RECIPE["boundary_bump_amplitude"], k)
    kappa = rng.uniform(*RECIPE["boundary_kappa"])
    e = (a * np.exp(kappa * (u @ v.T - 1))).sum(-1)
    e = np.clip(e, -RECIPE["boundary_max"], RECIPE["boundary_max"])
    return rho <= 1 + e, semi


def add_lesions(rng: np.random.Generator, image: np.ndarray, liver: np.ndarray, spacing: float) -> tuple:
    """Add 1-3 lesions to ``image`` (in place); return (lesion mask, list of lesion records, liver mean, SD)."""
    eroded = ndimage.binary_erosion(liver)
    liver_sd = float(image[eroded].std())
    margin = int(np.ceil(RECIPE["equivalent_radius_mm"][1] * np.exp(2 * RECIPE["axis_log_ratio"])
                         * (1 + RECIPE["boundary_max"]) / spacing)) + 3
    pad = [(margin, margin)] * 3
    liver_p = np.pad(liver, pad)  # outside the field of view = outside the liver
    lesions_p = np.zeros_like(liver_p)
    offset_p = np.zeros(liver_p.shape)
    candidates = np.argwhere(liver)
    records = []
    n_lesions = int(rng.integers(RECIPE["lesions_per_case"][0], RECIPE["lesions_per_case"][1] + 1))
    for _ in range(n_lesions):
        for _try in range(RECIPE["tries_per_lesion"]):
            radius = float(np.exp(rng.uniform(*np.log(RECIPE["equivalent_radius_mm"]))))
            centre_vox = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, 3)
            centre_p = np.round(centre_vox).astype(int) + margin
            box = tuple(slice(c - margin, c + margin + 1) for c in centre_p)
            grid = np.stack(np.meshgrid(*[np.arange(margin * 2 + 1) - margin] * 3, indexing="ij"), -1)
            offsets_mm = (grid + (np.round(centre_vox) - centre_vox)) * spacing
            shape, semi = lesion_shape(rng, radius, offsets_mm)
            n_shape = int(shape.sum())
            inside = shape & liver_p[box]
            components, n = ndimage.label(inside, structure=FULL_26)
            if n == 0:
                continue
            sizes = np.bincount(components.ravel())[1:]
            mask = components == (1 + int(np.argmax(sizes)))
            if mask.sum() < RECIPE["min_inside_liver"] * n_shape:
                continue
            if (ndimage.binary_dilation(mask, structure=FULL_26, iterations=RECIPE["min_gap_voxels"])
                    & lesions_p[box]).any():
                continue
            contrast = float(rng.uniform(*RECIPE["contrast_sd"]))
            het_level = float(rng.uniform(*RECIPE["heterogeneity_sd"]))
            het = ndimage.gaussian_filter(rng.standard_normal(mask.shape),
                                          RECIPE["heterogeneity_smoothing_mm"] / spacing)
            het = (het - het[mask].mean()) / (het[mask].std() if mask.sum() > 1 else 1.0)
            offset = mask * (contrast + het_level * het) * liver_sd
            rim = bool(rng.random() < RECIPE["rim_probability"])
            rim_contrast = float(rng.uniform(*RECIPE["rim_contrast_sd"]))
            rim_thickness = float(rng.uniform(*RECIPE["rim_thickness_mm"]))
            core = ndimage.binary_erosion(mask)
            rim = rim and core.sum() >= RECIPE["rim_min_core"] * mask.sum()
            if rim:  # the rim fills rim_thickness / spacing of each outer voxel (partial volume)
                w = min(rim_thickness / spacing, 1.0)
                shell = mask & ~core
                offset[shell] = w * rim_contrast * liver_sd + (1 - w) * offset[shell]
            edge = float(rng.uniform(*RECIPE["edge_sigma_mm"]))
            offset_p[box] += ndimage.gaussian_filter(offset, edge / spacing)
            lesions_p[box] |= mask
            n_vox = int(mask.sum())
            centroid = np.argwhere(mask).mean(0) + [b.start - margin for b in box]
            records.append({
                "centre_mm_zyx": [float(c * spacing) for c in centre_vox],
                "centroid_mm_zyx": [float(c * spacing) for c in centroid],
                "equivalent_radius_mm": float((3 * n_vox * spacing ** 3 / (4 * np.pi)) ** (1 / 3)),
                "drawn_radius_mm": radius, "semi_axes_mm": [float(s) for s in semi], "voxels": n_vox,
                "inside_liver_fraction": float(n_vox / n_shape), "contrast_sd": contrast,
                "heterogeneity_sd": het_level, "edge_sigma_mm": edge, "rim": rim,
                "rim_contrast_sd": rim_contrast if rim else None, "rim_thickness_mm": rim_thickness if rim else None,
                "tries": _try + 1,
                "_box": tuple(slice(b.start - margin, b.stop - margin) for b in box), "_mask": mask,
            })
            break
    inner = tuple(slice(margin, margin + n) for n in liver.shape)
    image += offset_p[inner]
    np.clip(image, 0, None, out=image)
    return lesions_p[inner], records, float(image[eroded].mean()), liver_sd


def bias_field(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, float]:
    grid = rng.uniform(-1, 1, RECIPE["bias_grid"])
    b = ndimage.zoom(grid, [n / g for n, g in zip(shape, grid.shape)], order=3, mode="nearest")
    amplitude = float(rng.uniform(*RECIPE["bias_amplitude"]))
    return 1 + amplitude * b / np.abs(b).max(), amplitude


def make_case(seed: int, split: int, index: int, with_lesions: bool, source_dir: str = DEFAULT_SOURCE) -> tuple:
    """(image float32, label uint8, case record, lesion records, origin (x, y, z)) of one case."""
    source, source_liver, spacing, origin, direction, scan_noise = load_source(source_dir)
    if len(set(spacing)) != 1:
        raise ValueError(f"the recipe assumes an isotropic scan, got spacing {spacing} (z, y, x)")
    rng = case_rng(seed, split, index, ANATOMY)
    crop, kept = draw_crop(rng, source_liver)
    image, liver = source[crop].copy(), source_liver[crop].copy()
    flip = bool(rng.random() < RECIPE["flip_x_probability"])
    if flip:
        image, liver = image[:, :, ::-1].copy(), liver[:, :, ::-1].copy()
    liver_median = float(np.median(image[liver]))
    if with_lesions:
        lesions, records, _, liver_sd = add_lesions(case_rng(seed, split, index, LESIONS), image, liver, spacing[0])
    else:
        lesions, records, liver_sd = np.zeros_like(liver), [], float(image[ndimage.binary_erosion(liver)].std())
    rng = case_rng(seed, split, index, INTENSITY)
    field, amplitude = bias_field(rng, image.shape)
    scale = float(rng.uniform(*RECIPE["scale"]))
    shift = float(rng.uniform(-1, 1) * RECIPE["offset_of_liver_median"] * liver_median)
    sigma = float(rng.uniform(*RECIPE["noise_of_scan_noise"]) * scan_noise)
    image = np.clip(image * field * scale + shift, 0, None)
    image = np.hypot(image + rng.normal(0, sigma, image.shape), rng.normal(0, sigma, image.shape))
    label = np.zeros(image.shape, np.uint8)
    label[liver] = 1
    label[lesions] = 2
    # contrast as written: lesion mean vs the liver within 6 mm around it, over the lesion-free eroded liver's SD
    clean_liver = ndimage.binary_erosion(liver) & ~ndimage.binary_dilation(lesions, FULL_26, iterations=2)
    final_sd = float(image[clean_liver].std())
    start_zyx = [s.start for s in crop]
    d = np.asarray(direction).reshape(3, 3)
    new_origin = tuple(float(v) for v in np.asarray(origin) + d @ (np.asarray(start_zyx[::-1]) * spacing[::-1]))
    for r in records:
        box, mask = r.pop("_box"), r.pop("_mask")
        full = np.zeros(image.shape, bool)
        sub = tuple(slice(max(b.start, 0), min(b.stop, n)) for b, n in zip(box, image.shape))
        full[sub] = mask[tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(sub, box))]
        ring = liver & ~lesions & ndimage.binary_dilation(full, FULL_26, iterations=2)
        r["measured_contrast_sd"] = float((image[full].mean() - image[ring].mean()) / final_sd) if ring.any() else None
        r["centre_world_xyz"] = [float(v) for v in np.asarray(new_origin) + d @ np.asarray(r["centre_mm_zyx"][::-1])]
    case = {"crop_zyx": [[s.start, s.stop] for s in crop], "liver_kept_fraction": kept, "flip_x": flip,
            "bias_amplitude": amplitude, "scale": scale, "offset": shift, "noise_sigma": sigma,
            "liver_sd_before_lesions": liver_sd, "liver_sd_written": final_sd, "lesions": len(records)}
    return image.astype(np.float32), label, case, records, new_origin


def _to_sitk(array: np.ndarray, spacing_zyx, origin_xyz, direction):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    img.SetOrigin(origin_xyz)
    img.SetDirection(direction)
    return img


def write_real_mr_dataset(raw_folder: str, dataset_id: int, name: str, n_train: int, n_annotated: int, n_test: int,
                          seed: int = 0, test_seed: int = 1000, overwrite: bool = False,
                          source_dir: str = DEFAULT_SOURCE) -> str:
    """Write ``Dataset<id>_<name>`` (imagesTr/labelsTr, imagesTs/labelsTs, dataset.json, lesions.json).

    The first ``n_annotated`` of the ``n_train`` training cases and every one of the ``n_test`` test cases have
    1-3 lesions (label 2); the other training cases have none. Test cases depend only on (``test_seed``,
    ``n_test``). Built aside and renamed into place (``files.new_raw_dataset``); an existing id is refused
    (FileExistsError) unless ``overwrite``. Returns the dataset folder.
    """
    import SimpleITK as sitk

    from nnunetv2_tumorsynth.files import json_safe, new_raw_dataset, write_dataset_json

    if not 0 <= n_annotated <= n_train:
        raise ValueError(f"n_annotated must be in [0, {n_train}] (the number of training cases), got {n_annotated}")
    if n_train < 1:
        raise ValueError("n_train must be at least 1")
    _, _, spacing, _, direction, scan_noise = load_source(source_dir)
    full_name = f"Dataset{dataset_id:03d}_{name}"
    cases, lesions = [], []
    with new_raw_dataset(raw_folder, dataset_id, name, overwrite) as tmp:
        for split, split_name, n, split_seed in ((TRAIN, "Tr", n_train, seed), (TEST, "Ts", n_test, test_seed)):
            if n == 0:
                continue
            os.makedirs(os.path.join(tmp, f"images{split_name}"), exist_ok=True)
            os.makedirs(os.path.join(tmp, f"labels{split_name}"), exist_ok=True)
            for i in range(n):
                with_lesions = split == TEST or i < n_annotated
                image, label, case, records, origin = make_case(split_seed, split, i, with_lesions, source_dir)
                case_name = f"{CASE_PREFIX}{split_name.lower()}_{i:03d}"
                sitk.WriteImage(_to_sitk(image, spacing, origin, direction),
                                os.path.join(tmp, f"images{split_name}", f"{case_name}_0000.nii.gz"))
                sitk.WriteImage(_to_sitk(label, spacing, origin, direction),
                                os.path.join(tmp, f"labels{split_name}", f"{case_name}.nii.gz"))
                cases.append({"case": case_name, "split": split_name, **case})
                lesions += [{"case": case_name, "split": split_name, "lesion": j + 1, **r}
                            for j, r in enumerate(records)]
        write_dataset_json(tmp, {"0": "MR"}, dict(LABELS), n_train, ".nii.gz", full_name,
                           "one real abdominal MR (TotalSegmentator test data), augmented, with independent "
                           "hypointense liver lesions (benchmarks/real_mr_dataset.py)",
                           license="source: TotalSegmentator test data (Apache-2.0)")
        with open(os.path.join(tmp, "lesions.json"), "w") as f:
            json.dump(json_safe({
                "source": os.path.abspath(source_dir), "scan_noise_sigma": scan_noise, "seed": seed,
                "test_seed": test_seed, "n_train": n_train, "n_annotated": n_annotated, "n_test": n_test,
                "units": "mm; *_zyx in array order (z, y, x) from the case's first voxel; *_xyz SimpleITK world",
                "recipe": RECIPE, "cases": cases, "lesions": lesions}), f, indent=1)
    return os.path.join(raw_folder, full_name)


def summary(folder: str) -> str:
    """One short paragraph on a written dataset (from its lesions.json)."""
    with open(os.path.join(folder, "lesions.json")) as f:
        info = json.load(f)
    lines = [f"{folder}: {info['n_train']} training cases ({info['n_annotated']} with lesions), "
             f"{info['n_test']} test cases"]
    for split in ("Tr", "Ts"):
        ls = [x for x in info["lesions"] if x["split"] == split]
        if ls:
            measured = [x["measured_contrast_sd"] for x in ls if x["measured_contrast_sd"] is not None]
            radii = [x["equivalent_radius_mm"] for x in ls]
            lines.append(
                f"  {split}: {len(ls)} lesions; equivalent radius median {np.median(radii):.1f} mm "
                f"(range {min(radii):.1f}-{max(radii):.1f}); contrast median "
                f"{np.median([x['contrast_sd'] for x in ls]):.2f} liver SD as drawn, "
                f"{np.median(measured) if measured else float('nan'):.2f} as written; rims {sum(x['rim'] for x in ls)}")
    return "\n".join(lines)


def save_montage(folder: str, path: str, n_cases: int = 3, split: str = "Ts") -> None:
    """PNG: ``n_cases`` cases with lesions, two axial slices each, bare and with liver (cyan) / lesion (red) outline."""
    import SimpleITK as sitk
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = sorted(f[: -len(".nii.gz")] for f in os.listdir(os.path.join(folder, f"labels{split}")))
    picked = []
    for name in names:
        label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, f"labels{split}", f"{name}.nii.gz")))
        if (label == 2).any():
            image_file = os.path.join(folder, f"images{split}", f"{name}_0000.nii.gz")
            image = sitk.GetArrayFromImage(sitk.ReadImage(image_file))
            picked.append((name, image, label))
        if len(picked) == n_cases:
            break
    if not picked:
        raise ValueError(f"no case of {folder}/labels{split} has a lesion: nothing to show")
    fig = Figure(figsize=(16, 3.6 * len(picked)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(picked), 4, squeeze=False)
    for row, (name, image, label) in zip(axes, picked):
        components, n = ndimage.label(label == 2, structure=FULL_26)
        order = np.argsort(-np.bincount(components.ravel())[1:]) + 1  # lesions, largest first
        slices = [int(np.argmax((components == c).sum((1, 2)))) for c in order[:2]]
        if len(slices) == 1:  # one lesion: its fullest slice and the next fullest
            per_slice = (components == order[0]).sum((1, 2))
            per_slice[slices[0]] = -1
            slices.append(int(np.argmax(per_slice)))
        liver_median = float(np.median(image[label == 1]))
        for j, z in enumerate(slices):
            for k, outlined in enumerate((False, True)):
                ax = row[2 * j + k]
                ax.imshow(image[z], cmap="gray", vmin=0.2 * liver_median, vmax=2.0 * liver_median,
                          interpolation="nearest")
                if outlined:
                    ax.contour(label[z] >= 1, levels=[0.5], colors="cyan", linewidths=0.8)
                    ax.contour(label[z] == 2, levels=[0.5], colors="red", linewidths=1.0)
                ax.set_title(f"{name} z={z}" + (" outlined" if outlined else ""), fontsize=9)
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    import time

    from _common import argument_parser

    parser = argument_parser(__doc__)
    parser.add_argument("--raw", required=True, help="nnUNet_raw folder to write into")
    parser.add_argument("--id", type=int, required=True, help="dataset id")
    parser.add_argument("--name", default="RealMR")
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--annotated", type=int, default=2, help="training cases with lesions (the first K)")
    parser.add_argument("--test", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-seed", type=int, default=1000)
    parser.add_argument("--source", default=DEFAULT_SOURCE, help=f"folder of {IMAGE_FILE} and {SEG_FILE}")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--montage", metavar="PNG", help="also save axial slices of 3 test cases with outlines")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        folder = write_real_mr_dataset(args.raw, args.id, args.name, args.train, args.annotated, args.test,
                                       args.seed, args.test_seed, args.overwrite, args.source)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from e
    print(summary(folder))
    print(f"written in {time.perf_counter() - start:.1f} s")
    if args.montage:
        save_montage(folder, args.montage, split="Ts" if args.test else "Tr")
        print(f"montage: {args.montage}")


if __name__ == "__main__":
    main()
