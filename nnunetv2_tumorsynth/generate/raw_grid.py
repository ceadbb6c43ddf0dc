"""From nnU-Net's preprocessed grid back to a case's raw grid (as nnU-Net exports a prediction), and raw-file helpers.

"Raw" arrays are SimpleITK's (z, y, x) arrays of the raw files (before nnU-Net's transpose); preprocessed arrays
are in the plans' transposed order. World coordinates are ITK physical points (LPS, mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from nnunetv2_tumorsynth.generate.normalisation import InverseNormalisation


@dataclass
class SourceCase:
    """One training case: its preprocessed arrays and its raw files.

    data (C, z, y, x) float32 and seg (1, z, y, x) in the preprocessed (transposed) order; properties as
    nnU-Net saved them; raw_image / raw_label SimpleITK images and raw_array / raw_label_array their
    (z, y, x) arrays in the raw files' dtypes; inverse the case's inverse normalisation.
    """

    case: str
    data: np.ndarray
    seg: np.ndarray
    properties: dict
    image_file: str
    label_file: str
    raw_image: sitk.Image
    raw_label: sitk.Image
    raw_array: np.ndarray
    raw_label_array: np.ndarray
    inverse: InverseNormalisation


def transposed_and_cropped(raw_array: np.ndarray, raw_label_array: np.ndarray, transpose_forward: list[int]):
    """nnU-Net's preprocessing up to normalisation: float32, transpose, crop to non-zero (its own functions).

    Returns (image (z, y, x) float32, seg with -1 outside the non-zero region, bbox [[lo, hi], ...]) in the
    preprocessed axis order, before resampling.
    """
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    axes = [0, *[i + 1 for i in transpose_forward]]
    data = raw_array.astype(np.float32)[None].transpose(axes)
    seg = raw_label_array.astype(np.int16)[None].transpose(axes).copy()
    data, seg, bbox = crop_to_nonzero(data, seg)
    return data[0], seg[0], [[int(a), int(b)] for a, b in bbox]


def to_raw_grid(image: np.ndarray, mask: np.ndarray, properties: dict, plans_manager,
                configuration_manager) -> tuple[np.ndarray, np.ndarray]:
    """Map a preprocessed image and mask back to the raw array grid, as nnU-Net exports a prediction.

    image: (z, y, x) float, a whole preprocessed case (plans' axis order and spacing); mask: bool, same shape.
    Resampling to ``shape_after_cropping_and_before_resampling`` (``resampling_fn_data`` for the image; the
    mask as background/tumour probabilities with ``resampling_fn_probabilities``, then argmax), un-cropping
    at ``bbox_used_for_cropping`` and ``transpose_backward``. Returns (values float32, region bool) in the raw
    (z, y, x) array order; outside the non-zero crop values are 0 and region False.
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    spacing_transposed = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    shape_cropped = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
    spacing = list(configuration_manager.spacing)
    current_spacing = spacing if len(spacing) == len(shape_cropped) else [spacing_transposed[0], *spacing]
    values = configuration_manager.resampling_fn_data(np.asarray(image, np.float32)[None], shape_cropped,
                                                      current_spacing, spacing_transposed)[0]
    mask = np.asarray(mask, bool)
    probabilities = np.stack([~mask, mask]).astype(np.float32)
    probabilities = configuration_manager.resampling_fn_probabilities(probabilities, shape_cropped, current_spacing,
                                                                      spacing_transposed)
    region = np.asarray(probabilities[1] > probabilities[0])  # argmax; a tie goes to background
    shape = [int(s) for s in properties["shape_before_cropping"]]
    bbox = properties["bbox_used_for_cropping"]
    full_values = insert_crop_into_image(np.zeros(shape, np.float32), np.asarray(values, np.float32), bbox)
    full_region = insert_crop_into_image(np.zeros(shape, bool), region, bbox)
    backward = plans_manager.transpose_backward
    return np.ascontiguousarray(full_values.transpose(backward)), np.ascontiguousarray(full_region.transpose(backward))


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` in ``dtype``: integers rounded and clipped to the type's range, floats cast."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    if dtype == np.bool_:
        return values > 0.5
    return np.asarray(values).astype(dtype)


def world_centre_mm(region: np.ndarray, image: sitk.Image) -> list[float]:
    """Centre of mass of a (z, y, x) region as an ITK physical point (x, y, z) in mm."""
    index_zyx = np.argwhere(region).mean(axis=0)
    return [float(v) for v in image.TransformContinuousIndexToPhysicalPoint([float(i) for i in index_zyx[::-1]])]


def voxel_volume_ml(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0
