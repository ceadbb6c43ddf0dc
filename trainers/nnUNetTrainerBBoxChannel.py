"""Box-guided nnU-Net (Quinton et al. 2026, section 2.1): the tumours' bounding boxes as one extra input channel.

``nnUNetv2_train 501 3d_fullres 0 -tr nnUNetTrainerBBoxChannel`` trains on an ordinary labelled
dataset. The network gets one input channel more than the dataset has; that channel holds boxes of
the ground-truth tumour components, drawn after augmentation (jittered, sometimes dropped). Predict
with ``tumorsynth_pseudolabel``: ``nnUNetv2_predict`` cannot feed the box channel and says so.
The work lives in ``nnunetv2_tumorsynth.boxes.channel``.
"""

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_tumorsynth.boxes import (
    BoxChannelSettings,
    BoxChannelTransform,
    add_box_channel_guard,
    dataset_class_with_boxes,
    insert_before_deep_supervision,
)
from nnunetv2_tumorsynth.nnunet import ShortSchedule, organ_and_tumour_labels


class nnUNetTrainerBBoxChannel(nnUNetTrainer):
    """nnU-Net with a tumour bounding-box input channel: one 3D box per ground-truth tumour component.

    Settings (class attributes, override in a subclass): ``box_channel`` (:class:`BoxChannelSettings`:
    per-slice boxes, face jitter in mm, lesion and whole-sample dropout); ``organ_label`` and
    ``tumour_label`` (names or values; found from dataset.json when None).
    """

    uses_box_channel = True  # read by tumorsynth_pseudolabel
    box_channel = BoxChannelSettings()
    organ_label = None
    tumour_label = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.tumour_value = organ_and_tumour_labels(dataset_json, self.organ_label, self.tumour_label)[1]
        # axial slices: axis 0 of the images as read, wherever transpose_forward puts it
        self.slice_axis = self.plans_manager.transpose_forward.index(0)
        self.print_to_log_file(
            f"Box channel: {self.box_channel.describe()}; tumour label {self.tumour_value}, spacing "
            f"{self.configuration_manager.spacing} mm, slice axis {self.slice_axis}; validation uses exact boxes.")

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        network = nnUNetTrainer.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels + 1, num_output_channels, enable_deep_supervision)
        return add_box_channel_guard(network, num_input_channels + 1)

    def _box_transform(self, settings: BoxChannelSettings) -> BoxChannelTransform:
        return BoxChannelTransform(self.tumour_value, self.configuration_manager.spacing, settings, self.slice_axis)

    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None):
        transforms = super().get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm, is_cascaded, foreground_labels, regions, ignore_label)
        return insert_before_deep_supervision(transforms, self._box_transform(self.box_channel))

    def get_validation_transforms(self, deep_supervision_scales, is_cascaded=False, foreground_labels=None,
                                  regions=None, ignore_label=None):
        transforms = super().get_validation_transforms(
            deep_supervision_scales, is_cascaded, foreground_labels, regions, ignore_label)
        return insert_before_deep_supervision(transforms, self._box_transform(self.box_channel.exact()))

    def perform_actual_validation(self, save_probabilities: bool = False):
        plain = self.dataset_class
        self.dataset_class = dataset_class_with_boxes(plain, self.tumour_value, self.box_channel.per_slice,
                                                      self.slice_axis)
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self.dataset_class = plain


class nnUNetTrainerBBoxChannelSlices(nnUNetTrainerBBoxChannel):
    """Per-axial-slice 2D boxes (as LLD-MMRI draws them) instead of one 3D box per tumour."""

    box_channel = BoxChannelSettings(per_slice=True)


class nnUNetTrainerBBoxChannel_5epochs(ShortSchedule, nnUNetTrainerBBoxChannel):
    """5 epochs (like nnU-Net's nnUNetTrainer_5epochs): quick experiments and the benchmark."""

    schedule = (5, None, None)


class nnUNetTrainerBBoxChannel_10epochs(ShortSchedule, nnUNetTrainerBBoxChannel):
    """10 epochs (like nnU-Net's nnUNetTrainer_10epochs)."""

    schedule = (10, None, None)


class nnUNetTrainerBBoxChannelTiny(ShortSchedule, nnUNetTrainerBBoxChannel):
    """2 epochs of 3 iterations: CPU tests and the demo (with tumorsynth_tiny_plans)."""

    schedule = (2, 3, 1)
