"""Small abdomen-like phantom volumes for tests and the demo.

Each case is an MR-like volume: a body, an organ ("liver", label 1) with textured parenchyma and a few
bright vessel-like tubes, and zero to three tumours (label 2) of varied size and contrast, some darker
and some brighter than the parenchyma (or all darker or all brighter: ``PhantomSettings.tumour_polarity``).
Spacing is anisotropic and the direction cosines are not the
identity, so geometry bugs show up in tests.

Arrays are in SimpleITK's (z, y, x) order; spacings given to this module are in that order too, in mm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunetv2_tumorsynth.files import new_raw_dataset, write_dataset_json

LABELS = {"background": 0, "liver": 1, "tumour": 2}


@dataclass(frozen=True)
class PhantomSettings:
    """Geometry and contrast of the phantom cases (sizes in voxels, spacing and radii in mm)."""

    shape: tuple[int, int, int] = (32, 64, 64)
    spacing: tuple[float, float, float] = (3.0, 1.5, 1.5)
    tumour_radius_mm: tuple[float, float] = (4.0, 11.0)
    max_tumours: int = 3
    tumour_free_every: int = 4  # cases with index % n == 1 have no tumour; 0 = every case has tumours
    noise_std: float = 6.0
    # "either": each tumour darker or brighter than the parenchyma at random; "darker" / "brighter": all of them
    # (the random draws are the same, so an "either" phantom is unchanged by this setting's existence)
    tumour_polarity: str = "either"


# A rotation of 10 degrees about z combined with flipped x and y (as in scanner LPS data).
_ANGLE = np.deg2rad(10.0)
DIRECTION = (
    -np.cos(_ANGLE), np.sin(_ANGLE), 0.0,
    -np.sin(_ANGLE), -np.cos(_ANGLE), 0.0,
    0.0, 0.0, 1.0,
)  # fmt: skip


def _grid_mm(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[np.ndarray]:
    """Voxel centre coordinates in mm, centred on the volume, one array per axis (z, y, x)."""
    return [
        (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s
        for n, s in zip(shape, spacing)
    ]


def _ellipsoid(shape, spacing, centre_mm, semi_axes_mm) -> np.ndarray:
    z, y, x = _grid_mm(shape, spacing)
    d = (
        ((z[:, None, None] - centre_mm[0]) / semi_axes_mm[0]) ** 2
        + ((y[None, :, None] - centre_mm[1]) / semi_axes_mm[1]) ** 2
        + ((x[None, None, :] - centre_mm[2]) / semi_axes_mm[2]) ** 2
    )
    return d <= 1.0


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return n / (n.std() + 1e-6)


def make_phantom_case(
    rng: np.random.Generator, settings: PhantomSettings = PhantomSettings(), with_tumours: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom case: (image float32, label uint8), both (z, y, x)."""
    shape, spacing = settings.shape, settings.spacing
    extent = np.array(shape) * np.array(spacing)
    image = np.zeros(shape, np.float32)
    label = np.zeros(shape, np.uint8)

    body = _ellipsoid(shape, spacing, (0, 0, 0), (extent[0], 0.45 * extent[1], 0.47 * extent[2]))
    image[body] = 80.0

    liver_axes = rng.uniform(0.28, 0.36, 3) * extent
    liver_axes[0] = rng.uniform(0.33, 0.4) * extent[0]
    liver_centre = rng.uniform(-0.06, 0.06, 3) * extent
    liver = _ellipsoid(shape, spacing, liver_centre, liver_axes)
    # a lobulated outline: perturb the ellipsoid with smooth noise
    lobes = _smooth_noise(rng, shape, (2, 5, 5))
    liver &= ndimage.distance_transform_edt(liver, sampling=spacing) > 1.5 + 2.0 * np.clip(lobes, 0, None)
    parenchyma = 120.0 + 8.0 * _smooth_noise(rng, shape, (0.7, 1.2, 1.2))
    image[liver] = parenchyma[liver]
    label[liver] = LABELS["liver"]

    # vessels: a few bright tubes crossing the organ along z, kept inside it
    z, y, x = _grid_mm(shape, spacing)
    vessels = np.zeros(shape, bool)
    for _ in range(rng.integers(2, 4)):
        cy, cx = liver_centre[1:] + rng.uniform(-0.6, 0.6, 2) * liver_axes[1:]
        dy, dx = rng.uniform(-0.4, 0.4, 2)
        radius = rng.uniform(1.8, 3.0)
        yy = y[None, :, None] - (cy + dy * z[:, None, None])
        xx = x[None, None, :] - (cx + dx * z[:, None, None])
        vessels |= yy**2 + xx**2 <= radius**2
    vessels &= liver
    image[vessels] = 200.0

    if with_tumours:
        free = liver & ~ndimage.binary_dilation(vessels, iterations=2)
        for _ in range(rng.integers(1, settings.max_tumours + 1)):
            radius = rng.uniform(*settings.tumour_radius_mm)
            inside = ndimage.distance_transform_edt(free, sampling=spacing) > radius * 0.8
            candidates = np.argwhere(inside)
            if len(candidates) == 0:
                continue
            centre_vox = candidates[rng.integers(len(candidates))]
            centre_mm = [c[i] for c, i in zip((z, y, x), centre_vox)]
            tumour = _ellipsoid(shape, spacing, centre_mm, radius * rng.uniform(0.8, 1.2, 3)) & liver
            contrast = rng.choice([-1.0, 1.0]) * rng.uniform(35.0, 60.0)
            if settings.tumour_polarity != "either":
                contrast = abs(contrast) * (-1.0 if settings.tumour_polarity == "darker" else 1.0)
            texture = 120.0 + contrast + 10.0 * _smooth_noise(rng, shape, 1.0)
            weight = ndimage.gaussian_filter(tumour.astype(np.float32), 0.7) * tumour
            image = image * (1 - weight) + texture * weight
            label[tumour] = LABELS["tumour"]
            free &= ~ndimage.binary_dilation(tumour, iterations=2)

    image = ndimage.gaussian_filter(image, 0.5) + rng.normal(0.0, settings.noise_std, shape).astype(np.float32)
    image[~body] = rng.normal(0.0, settings.noise_std, int((~body).sum()))
    return image.astype(np.float32), label


def to_sitk(array: np.ndarray, spacing_zyx: tuple[float, float, float]) -> sitk.Image:
    """Wrap a (z, y, x) array as a SimpleITK image with the phantom's spacing, origin and direction."""
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    img.SetDirection(DIRECTION)
    img.SetOrigin((12.5, -30.0, 100.0))
    return img


def write_phantom_dataset(
    raw_folder: str,
    dataset_id: int,
    name: str = "Phantom",
    num_train: int = 8,
    num_test: int = 0,
    seed: int = 0,
    settings: PhantomSettings = PhantomSettings(),
    overwrite: bool = False,
    tumour_cases: int | None = None,
    test_seed: int | None = None,
) -> str:
    """Write ``Dataset<id>_<name>`` (imagesTr, labelsTr, dataset.json; imagesTs/labelsTs if ``num_test``).

    Scarce-tumour setting: with ``tumour_cases`` = K only the first K training cases have (annotated)
    tumours and the others are tumour-free organs (K = 0: no tumour at all, the label-free setting of
    Hu et al. 2023). ``test_seed`` draws the test cases from their own seed, so datasets that differ only
    in their training cases share the same test set. Test cases follow ``settings.tumour_free_every``.

    Written through ``files.new_raw_dataset``: built in a temporary folder beside the target and renamed
    into place, so a crash never leaves half a dataset; an existing id is refused unless ``overwrite``.
    Returns the dataset folder.
    """
    if tumour_cases is not None and not 0 <= tumour_cases <= num_train:
        raise ValueError(f"tumour_cases must be in [0, {num_train}] (the number of training cases), got {tumour_cases}")
    rng = np.random.default_rng(seed)
    test_rng = rng if test_seed is None else np.random.default_rng(test_seed)

    def has_tumours(split: str, i: int) -> bool:
        if split == "Tr" and tumour_cases is not None:
            return i < tumour_cases
        return settings.tumour_free_every <= 0 or i % settings.tumour_free_every != 1

    with new_raw_dataset(raw_folder, dataset_id, name, overwrite) as tmp:
        for split, n, split_rng in (("Tr", num_train, rng), ("Ts", num_test, test_rng)):
            if n == 0:
                continue
            os.makedirs(os.path.join(tmp, f"images{split}"), exist_ok=True)
            os.makedirs(os.path.join(tmp, f"labels{split}"), exist_ok=True)
            for i in range(n):
                image, label = make_phantom_case(split_rng, settings, has_tumours(split, i))
                case = f"phantom{split.lower()}_{i:03d}"
                image_file = os.path.join(tmp, f"images{split}", f"{case}_0000.nii.gz")
                sitk.WriteImage(to_sitk(image, settings.spacing), image_file)
                sitk.WriteImage(to_sitk(label, settings.spacing), os.path.join(tmp, f"labels{split}", f"{case}.nii.gz"))
        write_dataset_json(tmp, {"0": "MRI"}, dict(LABELS), num_train, ".nii.gz", f"Dataset{dataset_id:03d}_{name}",
                           "nnunetv2-tumorsynth phantom: organ with vessels and tumours, MR-like, anisotropic")
    return os.path.join(raw_folder, f"Dataset{dataset_id:03d}_{name}")
