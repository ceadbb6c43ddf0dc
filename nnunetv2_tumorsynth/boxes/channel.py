"""The box input channel, for training, validation and inference (Quinton et al. 2026, section 2.1).

- Training: :class:`BoxChannelTransform` (after nnU-Net's augmentation, placed by
  :func:`insert_before_deep_supervision`) appends :func:`box_channel`: boxes of the augmented
  ground-truth tumours, jittered and sometimes dropped (:class:`BoxChannelSettings`).
- Validation: :func:`exact_box_channel` (tight boxes, no jitter or dropout), appended to whole cases by
  :func:`dataset_class_with_boxes` for nnU-Net's final validation.
- Inference: annotation boxes rasterised on the original image are carried into the preprocessed grid
  by :func:`to_preprocessed_grid`; :class:`BoxChannelGuard` refuses inputs without the channel
  (``nnUNetv2_predict``) with a message naming ``tumorsynth_pseudolabel``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform, ImageOnlyTransform

from nnunetv2_tumorsynth.boxes.geometry import Box, jitter_box, lesion_boxes, rasterise

# ---------------------------------------------------------------------------------------------------
# Training: boxes of the augmented ground truth, jittered and dropped
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoxChannelSettings:
    """How the training box channel is drawn from the ground-truth tumours.

    per_slice: one 2D box per axial slice of each lesion (LLD-MMRI draws boxes per slice) instead of
        one 3D box per lesion.
    jitter_mm: each box face moves outward by U(jitter_mm) mm (negative: inward), independently per face;
        per-slice boxes keep their slice.
    p_drop_lesion: probability that a lesion gets no box (the network still segments it).
    p_drop_all: probability that a whole sample gets no boxes, so the organ and tumour-free cases do not
        depend on boxes.
    """

    per_slice: bool = False
    jitter_mm: tuple[float, float] = (-2.0, 4.0)
    p_drop_lesion: float = 0.1
    p_drop_all: float = 0.2

    def exact(self) -> BoxChannelSettings:
        """The same boxes without jitter or dropout (validation, tests)."""
        return replace(self, jitter_mm=(0.0, 0.0), p_drop_lesion=0.0, p_drop_all=0.0)

    def describe(self) -> str:
        return (f"{'per-slice 2D' if self.per_slice else '3D'} boxes of the ground-truth tumour components, faces "
                f"jittered outward by U({self.jitter_mm[0]:g}, {self.jitter_mm[1]:g}) mm, lesion dropout "
                f"{self.p_drop_lesion:g}, whole-sample dropout {self.p_drop_all:g}")


def draw_boxes(tumour: np.ndarray, spacing: tuple[float, ...], settings: BoxChannelSettings,
               rng: np.random.Generator, slice_axis: int = 0) -> list[Box]:
    """The random boxes of one sample: each lesion's box (or per-slice boxes) jittered, some dropped.

    ``tumour`` is the tumour mask of the (augmented) sample, ``spacing`` its voxel size in mm in the
    same axis order, ``slice_axis`` the axis across axial slices (used when ``settings.per_slice``
    and the sample is 3D).
    """
    if not tumour.any() or rng.random() < settings.p_drop_all:
        return []
    per_slice_axis = slice_axis if settings.per_slice and tumour.ndim == 3 else None
    boxes = []
    for lesion in lesion_boxes(tumour, per_slice_axis):
        if rng.random() < settings.p_drop_lesion:
            continue
        fixed = () if per_slice_axis is None else (per_slice_axis,)
        boxes += [jitter_box(b, tumour.shape, spacing, settings.jitter_mm, rng, fixed) for b in lesion]
    return boxes


def box_channel(tumour: np.ndarray, spacing: tuple[float, ...], settings: BoxChannelSettings,
                rng: np.random.Generator, slice_axis: int = 0) -> np.ndarray:
    """Binary box channel (bool, same shape as ``tumour``) for one sample: ``draw_boxes`` rasterised."""
    return rasterise(draw_boxes(tumour, spacing, settings, rng, slice_axis), tumour.shape)


class BoxChannelTransform(ImageOnlyTransform):
    """Append the tumour box channel to ``image``, drawn from the tumour label in ``segmentation``.

    Place it after nnU-Net's spatial and intensity augmentation (so the boxes follow the augmented
    label and the channel stays exactly 0/1) and before deep-supervision downsampling. ``spacing`` is
    the configuration's spacing in mm, in the patch's axis order. ``rng`` is for tests: without it each
    draw is seeded from numpy's global state, which nnU-Net seeds differently in every worker.
    """

    def __init__(self, tumour_label: int, spacing: tuple[float, ...], settings: BoxChannelSettings,
                 slice_axis: int = 0, rng: np.random.Generator | None = None):
        super().__init__()
        self.tumour_label = int(tumour_label)
        self.spacing = tuple(float(s) for s in spacing)
        self.settings = settings
        self.slice_axis = slice_axis
        self.rng = rng

    def get_parameters(self, **data_dict) -> dict:
        segmentation = data_dict["segmentation"]
        tumour = np.asarray(segmentation[0]) == self.tumour_label
        rng = self.rng if self.rng is not None else np.random.default_rng(np.random.randint(0, 2**31))
        return {"boxes": draw_boxes(tumour, self.spacing, self.settings, rng, self.slice_axis), "shape": tumour.shape}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        box = torch.from_numpy(rasterise(params["boxes"], params["shape"])).to(img.dtype)[None]
        return torch.cat((img, box), dim=0)


def insert_before_deep_supervision(transforms, new_transform: BasicTransform):
    """Insert ``new_transform`` into nnU-Net's ``ComposeTransforms`` just before the label is turned into
    regions or downsampled for deep supervision (at the end if neither is there)."""
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform

    position = len(transforms.transforms)
    for i, t in enumerate(transforms.transforms):
        if isinstance(t, (ConvertSegmentationToRegionsTransform, DownsampleSegForDSTransform)):
            position = i
            break
    transforms.transforms.insert(position, new_transform)
    return transforms


# ---------------------------------------------------------------------------------------------------
# Validation: exact boxes of the ground truth, appended to whole cases
# ---------------------------------------------------------------------------------------------------


def exact_box_channel(tumour: np.ndarray, per_slice: bool, slice_axis: int = 0) -> np.ndarray:
    """Tight boxes of every tumour component, no jitter or dropout (validation)."""
    lesions = lesion_boxes(tumour, slice_axis if per_slice and tumour.ndim == 3 else None)
    return rasterise([b for lesion in lesions for b in lesion], tumour.shape)


def dataset_class_with_boxes(dataset_class: type, tumour_label: int, per_slice: bool, slice_axis: int) -> type:
    """A subclass of an nnU-Net dataset class whose ``load_case`` appends the exact box channel of the
    case's ground-truth tumours to the image: used for the trainer's final validation, which feeds
    whole preprocessed cases to the sliding-window predictor."""

    class WithBoxChannel(dataset_class):
        def load_case(self, identifier):
            data, seg, seg_prev, properties = super().load_case(identifier)
            data = np.asarray(data[:])
            box = exact_box_channel(np.asarray(seg[0]) == tumour_label, per_slice, slice_axis)
            return np.concatenate((data, box[None].astype(data.dtype))), seg, seg_prev, properties

    WithBoxChannel.__name__ = f"{dataset_class.__name__}WithBoxChannel"
    return WithBoxChannel


# ---------------------------------------------------------------------------------------------------
# Inference: annotation boxes in nnU-Net's preprocessed grid; refusing inputs without them
# ---------------------------------------------------------------------------------------------------


def to_preprocessed_grid(mask: np.ndarray, properties: dict, plans_manager, configuration_manager) -> np.ndarray:
    """Carry a mask from the original image grid ((z, y, x) as read) into nnU-Net's preprocessed grid.

    Applies exactly what ``DefaultPreprocessor.run_case_npy`` does to a segmentation: transpose by
    ``plans['transpose_forward']``, crop to ``properties['bbox_used_for_cropping']`` (set when the image
    was preprocessed), resample with the configuration's segmentation resampling to its spacing.
    Returns a bool array shaped like the preprocessed image (without the channel axis).
    """
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    transpose = plans_manager.transpose_forward
    m = mask.astype(np.int8)[None].transpose([0, *[i + 1 for i in transpose]])
    m = m[(slice(None), *[slice(a, b) for a, b in properties["bbox_used_for_cropping"]])]
    original_spacing = [properties["spacing"][i] for i in transpose]
    target_spacing = list(configuration_manager.spacing)
    if len(target_spacing) < m.ndim - 1:  # 2d configurations keep the spacing between slices
        target_spacing = [original_spacing[0], *target_spacing]
    new_shape = compute_new_shape(m.shape[1:], original_spacing, target_spacing)
    m = configuration_manager.resampling_fn_seg(m, new_shape, original_spacing, target_spacing)
    return np.asarray(m[0]) > 0


class BoxChannelGuard:
    """Forward pre-hook: refuse inputs without the box channel with a message that says what to run.

    ``nnUNetv2_predict`` feeds only the image channels; the box channel has to come from
    ``tumorsynth_pseudolabel``.
    """

    def __init__(self, num_input_channels: int):
        self.num_input_channels = num_input_channels

    def __call__(self, module, args):
        x = args[0]
        if x.shape[1] == self.num_input_channels:
            return None
        if x.shape[1] == self.num_input_channels - 1:
            raise RuntimeError(
                f"This network was trained with a tumour bounding-box input channel (nnUNetTrainerBBoxChannel): it "
                f"expects {self.num_input_channels} channels (the image channels plus the boxes) but got "
                f"{x.shape[1]}, which is what nnUNetv2_predict feeds. Predict with tumorsynth_pseudolabel instead, "
                f"which rasterises the boxes and appends them, e.g. tumorsynth_pseudolabel -bbox Annotation.json "
                f"-i IMAGES -o OUT -d DATASET -c CONFIGURATION -f FOLD -tr TRAINER"
            )
        raise RuntimeError(
            f"This box-channel network expects {self.num_input_channels} input channels (image channels plus the "
            f"tumour box channel) but got {x.shape[1]}. Predict with tumorsynth_pseudolabel."
        )


def add_box_channel_guard(network: torch.nn.Module, num_input_channels: int) -> torch.nn.Module:
    """Register :class:`BoxChannelGuard` on ``network`` (which takes ``num_input_channels``, boxes included)."""
    network.register_forward_pre_hook(BoxChannelGuard(num_input_channels))
    return network
