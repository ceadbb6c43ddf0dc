"""Mass effect: the growing tumour pushes the tissue around it outward (Hu et al. 2023, eq. 5).

Local scaling warping: inside a ball of radius gamma_max around the tumour's centre, the voxel at
distance gamma (mm) from the centre takes the value found at distance

    gamma' = (1 - (1 - gamma / gamma_max)^2 * I / 100) * gamma          (Hu et al. 2023, eq. 5)

on the same ray, so content moves towards the ball's surface; at gamma >= gamma_max nothing moves.
Image and labels are warped together (image linear, labels nearest), so the organ label bulges with
the parenchyma and vessels bend around the tumour. gamma_max = ``radius_factor`` x the tumour's
equivalent-sphere radius (Hu et al. 2023, Table 1: 1.3 r, I = 30).

Arrays are (z, y, x) crops in one axis order; ``spacing`` is mm per axis in that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from nnunetv2_tumorsynth.geometry import check_spacing
from nnunetv2_tumorsynth.synthesis.shape import equivalent_radius_mm


@dataclass(frozen=True)
class MassEffect:
    """Hu et al. 2023, eq. 5. ``intensity``: I in [0, 100] (0 = no warping); ``radius_factor``: gamma_max / r."""

    intensity: float = 30.0
    radius_factor: float = 1.3

    def __post_init__(self):
        if not 0.0 <= self.intensity <= 100.0:
            raise ValueError(f"mass effect intensity I must be in [0, 100] (Hu et al. 2023, eq. 5), "
                             f"got {self.intensity}")
        if self.radius_factor <= 1.0:
            raise ValueError(f"mass effect radius_factor must be > 1, got {self.radius_factor}")

    def reach_mm(self, tumour: np.ndarray, spacing: Sequence[float]) -> float:
        """gamma_max in mm for this tumour mask."""
        return self.radius_factor * equivalent_radius_mm(tumour, spacing)

    def warp(self, image: np.ndarray, labels: np.ndarray, tumour: np.ndarray,
             spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(warped image, warped labels, region): region is the bool ball where voxels may have changed.

        ``tumour``: bool mask (same shape) whose centre of mass and volume define the ball. Outside the
        region both arrays are returned bit-identical.
        """
        spacing = check_spacing(spacing)
        if not (image.shape == labels.shape == tumour.shape):
            raise ValueError(f"image {image.shape}, labels {labels.shape} and tumour {tumour.shape} "
                             "must have one shape")
        if not tumour.any():
            raise ValueError("the tumour mask is empty")
        centre = np.array(ndimage.center_of_mass(tumour))
        gamma_max = self.reach_mm(tumour, spacing)
        grid = np.indices(image.shape, dtype=np.float32)
        offset_mm = (grid - centre[:, None, None, None].astype(np.float32)) * spacing[:, None, None, None].astype(
            np.float32)
        gamma = np.sqrt((offset_mm**2).sum(axis=0))
        region = gamma < gamma_max
        if self.intensity == 0 or not region.any():
            return image.copy(), labels.copy(), region
        shrink = 1.0 - (1.0 - gamma[region] / gamma_max) ** 2 * (self.intensity / 100.0)  # gamma' / gamma, eq. 5
        source = centre[:, None] + (grid[:, region] - centre[:, None]) * shrink[None]
        warped_image, warped_labels = image.copy(), labels.copy()
        warped_image[region] = ndimage.map_coordinates(image.astype(np.float32), source, order=1, mode="nearest")
        warped_labels[region] = ndimage.map_coordinates(labels, source, order=0, mode="nearest")
        return warped_image, warped_labels, region
