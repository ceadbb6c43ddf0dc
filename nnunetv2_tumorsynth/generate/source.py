"""The source of a generation: the fold's preprocessed cases and their raw files, with each case's inverse
normalisation."""

from __future__ import annotations

import json
import os

import numpy as np
import SimpleITK as sitk

from nnunetv2_tumorsynth.files import CorruptFile, check_complete, read_image
from nnunetv2_tumorsynth.generate.normalisation import InverseNormalisation, inverse_normalisation
from nnunetv2_tumorsynth.generate.raw_grid import SourceCase, transposed_and_cropped
from nnunetv2_tumorsynth.generate.settings import SUPPORTED_NORMALISATIONS, GenerateError, GenerateSettings


def corrupt_raw_file(path: str, case: str, error: Exception) -> GenerateError:
    """The error for a truncated or undecodable raw file. Restoring the file is the fix: re-running
    nnUNetv2_plan_and_preprocess on it would bake the damage into the preprocessed data."""
    cause = error.__cause__ or error
    lines = str(cause).strip().splitlines()
    reason = f"{type(cause).__name__}: {lines[-1][:200]}" if lines else type(cause).__name__
    return GenerateError(f"raw file {path} of case {case} is corrupt ({reason}); restore it from the original data, "
                         f"then run tumorsynth_generate again")


def read_raw_file(path: str, case: str) -> sitk.Image:
    """A raw image or label of ``case``, checked to be complete; GenerateError naming it when it is not."""
    try:
        return read_image(path)
    except CorruptFile as e:
        raise corrupt_raw_file(path, case, e) from e


def read_raw_header(path: str, case: str) -> sitk.ImageFileReader:
    """A raw file's header (size, spacing, origin, direction), after checking that the whole file is complete."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        check_complete(path)
        reader.ReadImageInformation()
    except (CorruptFile, RuntimeError) as e:
        raise corrupt_raw_file(path, case, e) from e
    return reader


def check_same_geometry(image_file: str, image: sitk.Image | sitk.ImageFileReader, label_file: str,
                        label: sitk.Image | sitk.ImageFileReader) -> None:
    """Refuse a label whose size, spacing, origin or direction differs from its image's (nnU-Net's tolerance):
    the new dataset would fail ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity``."""
    for what, a, b in (("size", image.GetSize(), label.GetSize()), ("spacing", image.GetSpacing(), label.GetSpacing()),
                       ("origin", image.GetOrigin(), label.GetOrigin()),
                       ("direction", image.GetDirection(), label.GetDirection())):
        if len(a) != len(b) or not np.allclose(a, b):
            raise GenerateError(f"label {label_file} has {what} {tuple(b)} but its image {image_file} has "
                                f"{tuple(a)}; fix the label's geometry (nnU-Net would refuse the dataset)")


class GenerationSource:
    """The source dataset, plans, configuration and fold: where every file is and how it was preprocessed."""

    def __init__(self, settings: GenerateSettings):
        from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

        from nnunetv2_tumorsynth.nnunet import PreprocessedDataset, dataset_name, preprocessed_folder

        try:
            name = dataset_name(settings.dataset)
        except (RuntimeError, ValueError) as e:  # nnU-Net's multi-line "Could not find a dataset with the ID ..."
            raise GenerateError(f"dataset {settings.dataset}: {str(e).split('. ')[0]} in nnUNet_raw={nnUNet_raw!r} "
                                f"or nnUNet_preprocessed={nnUNet_preprocessed!r}; check -d, or plan it first: "
                                f"nnUNetv2_plan_and_preprocess -d {settings.dataset}") from e
        try:
            self.dataset = PreprocessedDataset.open(name, settings.plans, settings.configuration,
                                                    settings.organ_label, settings.tumour_label)
        except (KeyError, ValueError) as e:  # no such configuration; no recognisable organ or tumour label (the
            raise GenerateError(f"{name}: {e.args[0] if e.args else e}") from e  # message says: --organ-label ...
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
        raw_image, raw_label = read_raw_file(image_file, case), read_raw_file(label_file, case)
        check_same_geometry(image_file, raw_image, label_file, raw_label)
        raw_array, raw_label_array = sitk.GetArrayFromImage(raw_image), sitk.GetArrayFromImage(raw_label)
        if raw_array.ndim != 3:
            raise GenerateError(f"case {case}: raw image {image_file} has {raw_array.ndim} dimensions; "
                                f"tumorsynth_generate needs 3D images")
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
