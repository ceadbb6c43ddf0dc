"""Tumour bounding boxes: annotation files, box geometry, the box input channel, pseudo-mask post-processing.

Box-guided pseudo-labelling (Quinton et al. 2026, section 2.1): a network trained on a fully labelled
dataset gets the tumours' bounding boxes as one extra input channel, and turns box-only annotations
(LLD-MMRI) into pseudo-masks. Modules, by responsibility:

- :mod:`.annotations`: what the readers produce (:class:`BoxAnnotation`, :class:`BoxCase`) and their errors;
- :mod:`.lld_mmri`, :mod:`.generic`: one reader per annotation format; :mod:`.reader_registry`: the one
  entry point :func:`read_box_annotations`, which picks the reader;
- :mod:`.geometry`: :class:`Box`, rasterising, boxes of tumour components, jitter, world-to-voxel mapping;
- :mod:`.channel`: the box input channel for training, validation and inference (nnU-Net glue);
- :mod:`.postprocess`: removing predicted tumour outside the boxes.

The trainer (``trainers/nnUNetTrainerBBoxChannel.py``) and the pseudo-labelling
(:mod:`nnunetv2_tumorsynth.boxes.pseudolabel`) only wire these up.

Conventions used throughout:

- A :class:`Box` is axis-aligned and **half-open** in voxel indices of one array: it covers the voxels
  ``lo[i] <= v < hi[i]`` on axis ``i``, in the array's axis order ((z, y, x) for arrays from
  SimpleITK; nnU-Net's transposed order inside training).
- Annotation files give corners as ``x_min, y_min, z_min, x_max, y_max, z_max`` with **inclusive**
  maxima (LLD-MMRI's convention: ``x_max`` is the index of the last voxel in the box). In voxel
  space, x is the last axis of the SimpleITK array (z, y, x). In world space the corners are in mm,
  in ITK's physical (LPS) frame, and mapped to voxels through the image's origin, spacing and
  direction: a voxel belongs to the box when its centre lies inside.
- A 2D (per-slice) box is a box one slice thick (``z_min == z_max``).
- Sizes and distances (jitter, margins) are in mm and converted per axis with the array's spacing.
"""

from nnunetv2_tumorsynth.boxes.annotations import (
    CORNER_KEYS,
    AnnotationError,
    BoxAnnotation,
    BoxAnnotationWarning,
    BoxCase,
)
from nnunetv2_tumorsynth.boxes.channel import (
    BoxChannelGuard,
    BoxChannelSettings,
    BoxChannelTransform,
    add_box_channel_guard,
    box_channel,
    dataset_class_with_boxes,
    exact_box_channel,
    insert_before_deep_supervision,
    to_preprocessed_grid,
)
from nnunetv2_tumorsynth.boxes.generic import read_generic
from nnunetv2_tumorsynth.boxes.geometry import (
    Box,
    annotation_to_voxel_box,
    box_iou,
    boxes_in_image,
    jitter_box,
    lesion_boxes,
    margin_in_voxels,
    physical_to_continuous_index,
    rasterise,
)
from nnunetv2_tumorsynth.boxes.lld_mmri import (
    LLD_MMRI_CATEGORIES,
    PAPER_PHASES,
    phase_tag,
    read_lld_mmri,
    write_lld_mmri,
)
from nnunetv2_tumorsynth.boxes.postprocess import restrict_tumour_to_boxes
from nnunetv2_tumorsynth.boxes.reader_registry import BOX_READERS, read_box_annotations

__all__ = [
    # annotation files
    "CORNER_KEYS", "PAPER_PHASES", "LLD_MMRI_CATEGORIES", "AnnotationError", "BoxAnnotationWarning", "BoxAnnotation",
    "BoxCase", "phase_tag", "read_lld_mmri", "write_lld_mmri", "read_generic", "read_box_annotations", "BOX_READERS",
    # geometry
    "Box", "rasterise", "margin_in_voxels", "box_iou", "lesion_boxes", "jitter_box", "physical_to_continuous_index",
    "annotation_to_voxel_box", "boxes_in_image",
    # the box input channel
    "BoxChannelSettings", "box_channel", "BoxChannelTransform", "exact_box_channel", "dataset_class_with_boxes",
    "BoxChannelGuard", "add_box_channel_guard", "insert_before_deep_supervision", "to_preprocessed_grid",
    # post-processing
    "restrict_tumour_to_boxes",
]  # fmt: skip
