"""The source of a generation: the fold's preprocessed cases and their raw files, with each case's inverse
normalisation."""

from __future__ import annotations

import json
import os

import SimpleITK as sitk

from nnunetv2_tumorsynth.generate.normalisation import InverseNormalisation, inverse_normalisation
from nnunetv2_tumorsynth.generate.raw_grid import SourceCase, transposed_and_cropped
from nnunetv2_tumorsynth.generate.settings import SUPPORTED_NORMALISATIONS, GenerateError, GenerateSettings


class GenerationSource:
    """The source dataset, plans, configuration and fold: where every file is and how it was preprocessed."""

    def __init__(self, settings: GenerateSettings):
        from nnunetv2.paths import nnUNet_raw

        from nnunetv2_tumorsynth.nnunet import PreprocessedDataset, preprocessed_folder

        self.dataset = PreprocessedDataset.open(settings.dataset, settings.plans, settings.configuration,
                                                settings.organ_label, settings.tumour_label)
        self.name = self.dataset.name
        self.plans_manager, self.configuration_manager = self.dataset.plans_manager, self.dataset.configuration_manager
        self.dataset_json = self.dataset.dataset_json
        self.data_folder = self.dataset.data_folder
        if not nnUNet_raw:
            raise GenerateError("nnUNet_raw is not set; export nnUNet_raw=/path/to/nnUNet_raw")
        self.raw_root = nnUNet_raw
        self.raw_folder = os.path.join(nnUNet_raw, self.name)
        if not os.path.isdir(self.raw_folder):
            raise GenerateError(f"{self.raw_folder} does not exist: the raw images are needed to write the new "
                                f"dataset in their original geometry")
        self.file_ending = self.dataset_json["file_ending"]
        if self.dataset.num_channels != 1:
            raise GenerateError(f"{self.name} has {self.dataset.num_channels} channels "
                                f"{self.dataset_json['channel_names']}; synthetic tumours support single-channel "
                                f"datasets")
        reader = self.plans_manager.image_reader_writer_class.__name__
        if reader != "SimpleITKIO":
            raise GenerateError(f"plans {settings.plans} of {self.name} read images with {reader}; tumorsynth_generate "
                                f"needs SimpleITKIO (it writes the raw geometry with SimpleITK)")
        self.organ_label, self.tumour_label = self.dataset.organ_label, self.dataset.tumour_label
        self.scheme = self.configuration_manager.normalization_schemes[0]
        if self.scheme not in SUPPORTED_NORMALISATIONS:
            raise GenerateError(
                f"configuration {settings.configuration} of {self.name} normalises with {self.scheme!r}, which "
                f"tumorsynth_generate cannot invert; supported: {', '.join(SUPPORTED_NORMALISATIONS)}")
        self.use_mask_for_norm = bool(self.configuration_manager.use_mask_for_norm[0])
        self.intensity_properties = self.plans_manager.foreground_intensity_properties_per_channel.get("0", {})
        self.fold = settings.fold if settings.fold == "all" else int(settings.fold)
        self.dataset.fold_cases(0)  # makes nnU-Net's splits_final.json if it does not exist yet
        self.training_cases, _ = self.dataset.fold_cases(self.fold)
        with open(os.path.join(preprocessed_folder(self.name), "splits_final.json")) as f:
            self.splits = json.load(f)
        self.spacing = self.dataset.spacing
        self._inverse_cache: dict[str, InverseNormalisation] = {}

    def files(self, case: str) -> tuple[str, str]:
        """(image file, label file) of a raw training case."""
        entries = self.dataset_json.get("dataset")
        if entries is not None:
            entry = entries[case]
            image, label = os.path.expandvars(entry["images"][0]), os.path.expandvars(entry["label"])
            return (image if os.path.isabs(image) else os.path.join(self.raw_folder, image),
                    label if os.path.isabs(label) else os.path.join(self.raw_folder, label))
        return (os.path.join(self.raw_folder, "imagesTr", f"{case}_0000{self.file_ending}"),
                os.path.join(self.raw_folder, "labelsTr", f"{case}{self.file_ending}"))

    def load(self, case: str) -> SourceCase:
        """Preprocessed arrays, raw files and inverse normalisation of one training case."""
        data, seg, properties = self.dataset.load_case(case)
        image_file, label_file = self.files(case)
        for path in (image_file, label_file):
            if not os.path.isfile(path):
                raise GenerateError(f"raw file {path} of case {case} is missing")
        raw_image, raw_label = sitk.ReadImage(image_file), sitk.ReadImage(label_file)
        raw_array, raw_label_array = sitk.GetArrayFromImage(raw_image), sitk.GetArrayFromImage(raw_label)
        if raw_array.ndim != 3 or raw_array.shape != raw_label_array.shape:
            raise GenerateError(f"case {case}: image {raw_array.shape} and label {raw_label_array.shape} must be 3D "
                                f"arrays of one shape")
        expected = [int(properties["shape_before_cropping"][i]) for i in self.plans_manager.transpose_backward]
        if list(raw_array.shape) != expected:
            raise GenerateError(f"case {case}: raw image {image_file} has shape {raw_array.shape} but was "
                                f"preprocessed with {tuple(expected)}; re-run nnUNetv2_plan_and_preprocess")
        inverse = self._inverse_cache.get(case)
        if inverse is None:
            image, seg_cropped, bbox = transposed_and_cropped(raw_array, raw_label_array,
                                                              self.plans_manager.transpose_forward)
            if bbox != [[int(a), int(b)] for a, b in properties["bbox_used_for_cropping"]]:
                raise GenerateError(f"case {case}: the raw image's non-zero box {bbox} differs from the preprocessed "
                                    f"one {properties['bbox_used_for_cropping']}; re-run nnUNetv2_plan_and_preprocess")
            inverse = inverse_normalisation(image, seg_cropped, self.scheme, self.use_mask_for_norm,
                                            self.intensity_properties)
            self._inverse_cache[case] = inverse
        return SourceCase(case, data, seg, properties, image_file, label_file, raw_image, raw_label, raw_array,
                          raw_label_array, inverse)

    def cases_with(self, label: int) -> list[str]:
        """Training cases whose preprocessed label contains ``label``."""
        found = []
        for case in self.training_cases:
            _, seg, _ = self.dataset.load_case(case)
            if (seg == label).any():
                found.append(case)
        return found
