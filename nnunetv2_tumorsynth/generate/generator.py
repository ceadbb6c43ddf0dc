"""Offline synthetic datasets: new nnU-Net raw datasets whose images carry synthetic tumours.

Quinton et al. 2026 (section 2.6) generated 1,000 synthetic images offline (250 DDIM steps, one new
tumour per image, several images per source image) and trained on real plus synthetic images. This
module does the same through the synthesis bank's own code (``SynthesisBank.make_entry``: mask from
``masks``, position from ``placement``, texture from ``texture``), so offline and on-the-fly training
make the same tumours, and writes every result as a raw nnU-Net case in its source case's ORIGINAL
geometry and intensity scale.

How one synthetic image is made (image ``i`` of ``n``, with its own generator ``default_rng([seed, i])``):

1. Source: the training cases of the fold, round-robin (image ``i`` starts at case ``i mod #cases``; a
   case whose organ has no room this time hands over to the next one). Validation cases are never read.
2. In the case's nnU-Net *preprocessed* arrays (transposed, cropped to the non-zero region, normalised,
   resampled to the plans' spacing; axes (z, y, x) of the plans), the bank draws a tumour mask (sizes in
   mm), places it inside the organ and fills it with the texture backend (DDPM inpainting or the
   heuristic texture of Hu et al. 2023).
3. Back to the raw grid the way nnU-Net exports a prediction: the preprocessed image with the synthetic
   values pasted in is resampled to the cropped original shape with the configuration's
   ``resampling_fn_data``; the tumour mask as a two-class probability map with
   ``resampling_fn_probabilities`` and argmax; both are put back into the uncropped array at
   ``bbox_used_for_cropping`` and un-transposed (``transpose_backward``).
4. The region is the mapped-back mask restricted to the raw organ label. Outside it the raw source image
   is copied bit-identical; inside, the mapped-back values are un-normalised (the exact inverse of the
   configuration's normalisation for this case, see :func:`inverse_normalisation`) and cast to the raw
   image's dtype. The label is the raw label with the region set to the tumour label.

``replace_real``: the visual Turing test and realism statistics of Quinton et al. 2026 (section 2.5,
Appendix B) need real tumours replaced by synthetic ones in the *same* mask: every connected tumour
component of the preprocessed label is inpainted (no placement), and every raw tumour component it
covers receives the mapped-back values; the label is unchanged.

Files. The dataset is built in a staging folder ``$nnUNet_raw/.Dataset<ID>_<name>.partial/`` that
survives interruptions: every file is written atomically (temporary name, then rename) and image ``i``
counts as done once its record ``records/<case>.json`` exists, which is written after its image and
label. A re-run with the same settings finishes the remaining images (after ``kill -9`` too); other
settings are refused unless ``overwrite``. When all images exist, the dataset is assembled with the
shared raw-dataset writer (``files.new_raw_dataset``: temporary folder, renamed into place), so
``$nnUNet_raw/Dataset<ID>_<name>`` appears complete or not at all; the staging folder is then removed.

The dataset holds imagesTr/labelsTr/dataset.json plus ``splits_final.json`` (each synthetic image in the
cross-validation fold of its source case; nnUNetv2_plan_and_preprocess copies it from the raw folder to
the preprocessed one), ``synthesis_records.json`` and ``.csv`` (one record per image),
``tumorsynth_generate.json`` (settings, source, checkpoint and its sha256), the log and a PNG preview.

Array conventions: "raw" arrays are SimpleITK's (z, y, x) arrays of the raw files (nnU-Net's
``SimpleITKIO`` order, before its transpose); preprocessed arrays are in the plans' transposed order.
World coordinates are ITK physical points (LPS, mm). Volumes are in ml.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunetv2_tumorsynth.bank.store import SynthesisBank, SynthSettings
from nnunetv2_tumorsynth.files import (
    atomic_path,
    existing_datasets,
    new_raw_dataset,
    write_dataset_json,
    write_json_atomic,
)
from nnunetv2_tumorsynth.synthesis.texture import POLARITIES

SUPPORTED_NORMALISATIONS = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization",
                            "RGBTo01Normalization")
TEXTURES = ("ddpm", "heuristic")
SIZES = ("paper", "tiny", "small", "medium", "large", "mix")
RECORDS_JSON = "synthesis_records.json"
RECORDS_CSV = "synthesis_records.csv"
SETTINGS_JSON = "tumorsynth_generate.json"
LOG_NAME = "tumorsynth_generate_log.txt"
PREVIEW_PNG = "tumorsynth_preview.png"
# settings that may change between an interrupted run and its resumption
_RESUMABLE_CHANGES = ("device", "overwrite", "batch_size", "progress")


class GenerateError(RuntimeError):
    """Bad input for offline generation; the message says what to fix."""


@dataclass
class GenerateSettings:
    """What ``generate_dataset`` makes (defaults = Quinton et al. 2026's offline protocol).

    dataset / configuration / plans / fold: the source, as for ``nnUNetv2_train`` (id or name).
    as_dataset: id of the new raw dataset; name: its name after the id (default "<source name>Synth",
        or "<source name>Replaced" with ``replace_real``).
    num_images: synthetic images (default 1000; with ``replace_real`` default one per training case
        that has a tumour).
    texture: "ddpm" (the diffusion model of ``tumorsynth_pretrain_ddpm``) or "heuristic" (Hu et al. 2023).
    heuristic_polarity: heuristic texture only, as in ``bank.SynthSettings``: "darker", "brighter", "either".
    steps / sampler: diffusion sampling (the paper: 250 DDIM steps).
    checkpoint: diffusion checkpoint; None = the one ``tumorsynth_pretrain_ddpm`` wrote for this
        dataset, plans, configuration and fold (or ``$TUMORSYNTH_DDPM_CHECKPOINT``).
    deformation / size: mask shape (``masks.random_tumour_mask``); with "mix" each image draws one of
        tiny/small/medium/large, and the record says which.
    include_real: also copy the fold's real training cases (unchanged) into the new dataset.
    replace_real: replace each real tumour by a synthetic one in the same mask instead of adding one.
    margin_mm / avoid_vessels / organ_label / tumour_label: placement, as in ``bank.SynthSettings``.
    seed: image i uses ``numpy.random.default_rng([seed, i])``.
    device: "cuda" or "cpu" (diffusion model only); batch_size: crops per network evaluation.
    overwrite: replace an existing dataset with this id; restart an unfinished run made with other settings.
    """

    dataset: str | int
    as_dataset: int
    configuration: str = "3d_fullres"
    fold: int | str = 0
    plans: str = "nnUNetPlans"
    num_images: int | None = None
    name: str | None = None
    texture: str = "ddpm"
    heuristic_polarity: str = "either"
    steps: int = 250
    sampler: str = "ddim"
    checkpoint: str | None = None
    deformation: str | None = "simplex"
    size: str = "paper"
    include_real: bool = False
    replace_real: bool = False
    margin_mm: float = 5.0
    avoid_vessels: bool = False
    organ_label: str | int | None = None
    tumour_label: str | int | None = None
    seed: int = 0
    device: str = "cuda"
    batch_size: int = 4
    overwrite: bool = False


# ----------------------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class InverseNormalisation:
    """raw = clip(normalised * scale + offset, *clip): the inverse of one case's nnU-Net normalisation."""

    scheme: str
    scale: float
    offset: float
    clip: tuple[float, float] | None = None

    def __call__(self, values: np.ndarray) -> np.ndarray:
        raw = np.asarray(values, np.float64) * self.scale + self.offset
        return raw if self.clip is None else np.clip(raw, *self.clip)

    def forward(self, raw: np.ndarray) -> np.ndarray:
        """The normalisation itself (for checks): (clip(raw) - offset) / scale."""
        raw = np.asarray(raw, np.float64)
        if self.clip is not None:
            raw = np.clip(raw, *self.clip)
        return (raw - self.offset) / self.scale


def inverse_normalisation(image: np.ndarray, seg: np.ndarray, scheme: str, use_mask_for_norm: bool,
                          intensity_properties: dict, check: bool = True) -> InverseNormalisation:
    """Invert nnU-Net's normalisation of one channel of one case.

    image: the channel as nnU-Net normalises it: float32, transposed and cropped to the non-zero region
        (preprocessed axis order, before resampling). seg: the cropped label with -1 outside the
        non-zero region (``crop_to_nonzero``'s output); used by ZScore with ``use_mask_for_norm``.
    scheme: the configuration's normalisation class name. ZScore uses this case's own mean and standard
        deviation (inside ``seg >= 0`` with ``use_mask_for_norm``); CT uses the plans' foreground
        properties (``intensity_properties``: mean, std, percentile_00_5, percentile_99_5), and its clip
        to the percentiles is kept in the inverse, so un-normalised values stay in the range the network
        saw; RescaleTo01 the case's min and max; RGBTo01 255. Other schemes are refused (GenerateError).
    check: normalise ``image`` with nnU-Net's own class and verify that this inverse's ``forward``
        reproduces it (relative 1e-4), so a change in nnU-Net cannot silently break the inverse.
    """
    eps = 1e-8
    image = np.asarray(image, np.float32)
    if scheme == "ZScoreNormalization":
        values = image[seg >= 0] if use_mask_for_norm else image
        inverse = InverseNormalisation(scheme, float(max(values.std(), eps)), float(values.mean()))
    elif scheme == "CTNormalization":
        p = intensity_properties
        inverse = InverseNormalisation(scheme, float(max(p["std"], eps)), float(p["mean"]),
                                       (float(p["percentile_00_5"]), float(p["percentile_99_5"])))
    elif scheme == "NoNormalization":
        inverse = InverseNormalisation(scheme, 1.0, 0.0)
    elif scheme == "RescaleTo01Normalization":
        low = float(image.min())
        inverse = InverseNormalisation(scheme, float(max((image - np.float32(low)).max(), eps)), low)
    elif scheme == "RGBTo01Normalization":
        inverse = InverseNormalisation(scheme, 255.0, 0.0, (0.0, 255.0))
    else:
        raise GenerateError(
            f"normalisation scheme {scheme!r} cannot be inverted: synthetic values cannot be mapped back to the raw "
            f"intensity scale. Supported: {', '.join(SUPPORTED_NORMALISATIONS)}")
    if check:
        _check_inverse(inverse, image, seg, use_mask_for_norm, intensity_properties)
    return inverse


def _check_inverse(inverse: InverseNormalisation, image: np.ndarray, seg: np.ndarray, use_mask_for_norm: bool,
                   intensity_properties: dict) -> None:
    import nnunetv2.preprocessing.normalization.default_normalization_schemes as schemes

    normaliser = getattr(schemes, inverse.scheme)(use_mask_for_norm=use_mask_for_norm,
                                                  intensityproperties=intensity_properties)
    expected = normaliser.run(image.copy(), seg)
    region = seg >= 0 if (use_mask_for_norm and inverse.scheme == "ZScoreNormalization") else np.ones(image.shape, bool)
    ours = inverse.forward(image[region])
    if not np.allclose(ours, expected[region], rtol=1e-4, atol=1e-4):
        worst = float(np.max(np.abs(ours - expected[region])))
        raise GenerateError(f"the inverse of {inverse.scheme} does not reproduce nnU-Net's normalisation of this "
                            f"case (largest difference {worst:.3g}); this nnU-Net version normalises differently")


# ------------------------------------------------------------------------------------------ raw geometry


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


# ------------------------------------------------------------------------------------------------ source


class Source:
    """The source dataset, plans, configuration and fold: where every file is and how it was preprocessed."""

    def __init__(self, settings: GenerateSettings):
        from nnunetv2.paths import nnUNet_raw
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from nnunetv2_tumorsynth.nnunet import (
            configuration_data_folder,
            dataset_name,
            fold_split,
            load_dataset_json,
            load_plans,
            organ_and_tumour_labels,
            preprocessed_folder,
        )

        self.name = dataset_name(settings.dataset)
        self.plans_manager = PlansManager(load_plans(self.name, settings.plans))
        self.configuration_manager = self.plans_manager.get_configuration(settings.configuration)
        self.dataset_json = load_dataset_json(self.name)
        self.data_folder = configuration_data_folder(self.name, self.plans_manager.plans, settings.configuration)
        if not nnUNet_raw:
            raise GenerateError("nnUNet_raw is not set; export nnUNet_raw=/path/to/nnUNet_raw")
        self.raw_root = nnUNet_raw
        self.raw_folder = os.path.join(nnUNet_raw, self.name)
        if not os.path.isdir(self.raw_folder):
            raise GenerateError(f"{self.raw_folder} does not exist: the raw images are needed to write the new "
                                f"dataset in their original geometry")
        self.file_ending = self.dataset_json["file_ending"]
        channels = self.dataset_json["channel_names"]
        if len(channels) != 1:
            raise GenerateError(f"{self.name} has {len(channels)} channels {channels}; synthetic tumours support "
                                f"single-channel datasets")
        reader = self.plans_manager.image_reader_writer_class.__name__
        if reader != "SimpleITKIO":
            raise GenerateError(f"plans {settings.plans} of {self.name} read images with {reader}; tumorsynth_generate "
                                f"needs SimpleITKIO (it writes the raw geometry with SimpleITK)")
        self.organ_label, self.tumour_label = organ_and_tumour_labels(self.dataset_json, settings.organ_label,
                                                                      settings.tumour_label)
        self.scheme = self.configuration_manager.normalization_schemes[0]
        if self.scheme not in SUPPORTED_NORMALISATIONS:
            raise GenerateError(
                f"configuration {settings.configuration} of {self.name} normalises with {self.scheme!r}, which "
                f"tumorsynth_generate cannot invert; supported: {', '.join(SUPPORTED_NORMALISATIONS)}")
        self.use_mask_for_norm = bool(self.configuration_manager.use_mask_for_norm[0])
        self.intensity_properties = self.plans_manager.foreground_intensity_properties_per_channel.get("0", {})
        self.dataset_class = infer_dataset_class(self.data_folder)
        identifiers = sorted(self.dataset_class.get_identifiers(self.data_folder))
        self.fold = settings.fold if settings.fold == "all" else int(settings.fold)
        fold_split(self.name, identifiers, 0)  # makes nnU-Net's splits_final.json if it does not exist yet
        train, _ = fold_split(self.name, identifiers, self.fold)
        self.training_cases = sorted(train)
        splits_file = os.path.join(preprocessed_folder(self.name), "splits_final.json")
        with open(splits_file) as f:
            self.splits = json.load(f)
        spacing = list(self.configuration_manager.spacing)
        if len(spacing) == 2:  # 2d configuration: the out-of-plane spacing is the plans' median one
            spacing = [self.plans_manager.original_median_spacing_after_transp[0], *spacing]
        self.spacing = tuple(float(s) for s in spacing)
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

    def load_preprocessed(self, case: str) -> tuple[np.ndarray, np.ndarray, dict]:
        data, seg, _, properties = self.dataset_class(self.data_folder, [case]).load_case(case)
        return np.asarray(data[:], np.float32), np.asarray(seg[:]), properties

    def load(self, case: str) -> SourceCase:
        """Preprocessed arrays, raw files and inverse normalisation of one training case."""
        data, seg, properties = self.load_preprocessed(case)
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
            _, seg, _ = self.load_preprocessed(case)
            if (seg == label).any():
                found.append(case)
        return found


# ----------------------------------------------------------------------------------------------- texture


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_texture(settings: GenerateSettings, source: Source):
    """(texture backend, checkpoint path or None): the diffusion model checked against the configuration."""
    from nnunetv2_tumorsynth.synthesis.texture import DDPMTexture, HeuristicTexture

    if settings.texture == "heuristic":
        return HeuristicTexture(polarity=settings.heuristic_polarity), None
    import torch

    from nnunetv2_tumorsynth.ddpm import check_compatible
    from nnunetv2_tumorsynth.nnunet import find_ddpm_checkpoint

    path = settings.checkpoint or find_ddpm_checkpoint(source.name, settings.plans, settings.configuration,
                                                       settings.fold)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"diffusion checkpoint {path} does not exist; train one with tumorsynth_pretrain_ddpm")
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise GenerateError("CUDA is not available; pass -device cpu (slow for the paper's model)")
    texture = DDPMTexture(path, steps=settings.steps, sampler=settings.sampler, device=settings.device,
                          batch_size=settings.batch_size)
    try:
        check_compatible(texture.metadata, source.spacing, {"scheme": source.scheme})
    except ValueError as e:
        raise GenerateError(f"diffusion model {path} does not fit {source.name} {settings.configuration}: {e}") from e
    return texture, path


# ------------------------------------------------------------------------------------------------ writing


def _write_case(folder: str, case: str, image: np.ndarray, label: np.ndarray, source: SourceCase,
                file_ending: str) -> None:
    """imagesTr/<case>_0000 and labelsTr/<case>, each atomically, in the source's geometry."""
    for array, reference, path in (
            (image, source.raw_image, os.path.join(folder, "imagesTr", f"{case}_0000{file_ending}")),
            (label, source.raw_label, os.path.join(folder, "labelsTr", f"{case}{file_ending}"))):
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(reference)
        with atomic_path(path) as tmp:
            sitk.WriteImage(out, tmp, True)


def _copy_real_case(folder: str, source: Source, case: str) -> None:
    image_file, label_file = source.files(case)
    for src, dst in ((image_file, os.path.join(folder, "imagesTr", f"{case}_0000{source.file_ending}")),
                     (label_file, os.path.join(folder, "labelsTr", f"{case}{source.file_ending}"))):
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class _Staging:
    """The persistent staging folder ``$nnUNet_raw/.Dataset<ID>_<name>.partial`` and its lock."""

    def __init__(self, raw_root: str, full_name: str):
        self.folder = os.path.join(raw_root, f".{full_name}.partial")
        self.lock = os.path.join(self.folder, ".lock")

    def path(self, *parts: str) -> str:
        return os.path.join(self.folder, *parts)

    def open(self, identity: dict, restart: bool) -> bool:
        """Create or resume; returns True when resuming. Refuses other settings unless ``restart``."""
        settings_file = self.path(SETTINGS_JSON)
        resuming = os.path.isfile(settings_file)
        if resuming:
            self._take_lock()
            with open(settings_file) as f:
                before = json.load(f)["identity"]
            differs = sorted(k for k in set(before) | set(identity) if before.get(k) != identity.get(k))
            if differs and not restart:
                self._release_lock()
                raise GenerateError(
                    f"{self.folder} holds an unfinished generation with other settings ("
                    + "; ".join(f"{k}: {before.get(k)!r} then, {identity.get(k)!r} now" for k in differs)
                    + "). Re-run with the same settings to finish it, or pass --overwrite to start again")
            if differs:
                self._release_lock()
                shutil.rmtree(self.folder)
                resuming = False
        if not resuming:
            os.makedirs(self.folder, exist_ok=True)
            self._take_lock()
        for sub in ("imagesTr", "labelsTr", "records"):
            os.makedirs(self.path(sub), exist_ok=True)
            for name in os.listdir(self.path(sub)):  # temporary files of a killed run (never renamed into place)
                if name.startswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.path(sub, name))
        if not resuming:
            write_json_atomic({"identity": identity}, settings_file)
        return resuming

    def _take_lock(self) -> None:
        host = socket.gethostname()
        if os.path.isfile(self.lock):
            with contextlib.suppress(ValueError, OSError):
                with open(self.lock) as f:
                    owner = json.load(f)
                if owner.get("host") == host and owner.get("pid") != os.getpid() and _alive(int(owner["pid"])):
                    raise GenerateError(f"another tumorsynth_generate (pid {owner['pid']}) is writing {self.folder}")
        write_json_atomic({"pid": os.getpid(), "host": host}, self.lock)

    def _release_lock(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.lock)

    def records(self) -> dict[str, dict]:
        out = {}
        for name in sorted(os.listdir(self.path("records"))):
            if name.endswith(".json") and not name.startswith("."):
                with open(self.path("records", name)) as f:
                    record = json.load(f)
                out[record["image"]] = record
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------- generator


class Generator:
    """Makes the images of one ``GenerateSettings``; ``run`` writes the whole dataset."""

    def __init__(self, settings: GenerateSettings, log: Callable[[str], None] | None = None):
        self.settings = settings
        self._check_settings()
        self.source = Source(settings)
        if int(settings.as_dataset) == int(self.source.name.split("_")[0][len("Dataset"):]):
            raise GenerateError(f"--as-dataset {settings.as_dataset} is the source dataset {self.source.name}")
        suffix = "Replaced" if settings.replace_real else "Synth"
        self.name = settings.name or f"{self.source.name.split('_', 1)[1]}{suffix}"
        self.full_name = f"Dataset{int(settings.as_dataset):03d}_{self.name}"
        taken = existing_datasets(self.source.raw_root, int(settings.as_dataset))
        if taken and not settings.overwrite:
            raise FileExistsError(f"{os.path.join(self.source.raw_root, taken[0])} already exists; choose another "
                                  f"dataset id or pass --overwrite")
        self.log = log or print
        self.texture, self.checkpoint = make_texture(settings, self.source)
        self.checkpoint_sha256 = sha256_of(self.checkpoint) if self.checkpoint else None
        self.synth_settings = SynthSettings(
            deformation=settings.deformation, size=settings.size, texture=settings.texture,
            heuristic_polarity=settings.heuristic_polarity, ddpm_steps=settings.steps, ddpm_sampler=settings.sampler,
            margin_mm=settings.margin_mm, avoid_vessels=settings.avoid_vessels, seed=settings.seed)
        self.staging = _Staging(self.source.raw_root, self.full_name)
        self._bank: SynthesisBank | None = None
        if settings.replace_real:
            self.cases = self.source.cases_with(self.source.tumour_label)
            if not self.cases:
                raise GenerateError(f"no training case of fold {settings.fold} of {self.source.name} has tumour "
                                    f"label {self.source.tumour_label}: nothing to replace")
        else:
            self.cases = self.source.cases_with(self.source.organ_label)
            if not self.cases:
                raise GenerateError(f"no training case of fold {settings.fold} of {self.source.name} has organ "
                                    f"label {self.source.organ_label}")
        n = settings.num_images
        self.num_images = int(n) if n is not None else (len(self.cases) if settings.replace_real else 1000)
        if self.num_images < 1:
            raise GenerateError("the number of images must be at least 1")
        self.width = max(4, len(str(self.num_images - 1)))

    @property
    def bank(self):
        """The synthesis bank (made on first use; its folder is the staging folder, it writes no entries)."""
        if self._bank is None:
            self._bank = SynthesisBank(self.staging.folder, self.texture, self.synth_settings, self.source.spacing,
                                       self.source.organ_label, self.source.tumour_label)
        return self._bank

    def _check_settings(self) -> None:
        s = self.settings
        if s.texture not in TEXTURES:
            raise GenerateError(f"texture must be one of {TEXTURES}, got {s.texture!r}")
        if s.heuristic_polarity not in POLARITIES:
            raise GenerateError(f"heuristic_polarity must be one of {list(POLARITIES)}, got {s.heuristic_polarity!r}")
        if s.size not in SIZES:
            raise GenerateError(f"size must be one of {SIZES}, got {s.size!r}")
        if s.deformation not in ("simplex", "elastic", None):
            raise GenerateError(f"deformation must be 'simplex', 'elastic' or None, got {s.deformation!r}")
        if s.sampler not in ("ddim", "ddpm"):
            raise GenerateError(f"sampler must be 'ddim' or 'ddpm', got {s.sampler!r}")
        if s.device not in ("cuda", "cpu"):
            raise GenerateError(f"device must be 'cuda' or 'cpu', got {s.device!r}")

    def image_name(self, index: int, case: str) -> str:
        """``<source case>_synth<index>`` (``_replaced<index>`` with ``replace_real``)."""
        kind = "replaced" if self.settings.replace_real else "synth"
        return f"{case}_{kind}{index:0{self.width}d}"

    def record_path(self, index: int) -> str:
        """Image ``index`` is finished when this file exists (written after its image and label)."""
        return self.staging.path("records", f"{index:0{self.width}d}.json")

    def identity(self) -> dict:
        """Everything that decides the dataset's content (compared when resuming)."""
        s = dataclasses.asdict(self.settings)
        for key in _RESUMABLE_CHANGES:
            s.pop(key, None)
        s.update(dataset=self.source.name, num_images=self.num_images, name=self.name,
                 checkpoint=self.checkpoint, checkpoint_sha256=self.checkpoint_sha256, fold=str(self.settings.fold))
        return s

    # -------------------------------------------------------------------------------------- one image

    def make_image(self, index: int) -> tuple[str, np.ndarray, np.ndarray, SourceCase, dict] | None:
        """Synthesise image ``index``: (case name, image, label, source case, record), or None if no case fits."""
        rng = np.random.default_rng([self.settings.seed, index])
        self.bank.rng = rng
        size = self.settings.size
        if size == "mix":
            from nnunetv2_tumorsynth.synthesis.shape import MIX_SIZES

            size = MIX_SIZES[int(rng.integers(len(MIX_SIZES)))]
        self.bank.settings = dataclasses.replace(self.synth_settings, size=size)
        for attempt in range(len(self.cases)):
            case = self.cases[(index + attempt) % len(self.cases)]
            source = self.source.load(case)
            made = self._replace_tumours(source) if self.settings.replace_real else self._add_tumour(source)
            if made is None:
                continue
            image, label, tumours = made
            record = {
                "image": self.image_name(index, case), "index": index, "mode": "replaced" if self.settings.replace_real
                else "synthetic", "source_case": case, "source_image": source.image_file, "tumours": tumours,
                "deformation": self.settings.deformation, "size_requested": self.settings.size,
                "texture": self.settings.texture,
                "polarity": self.settings.heuristic_polarity if self.settings.texture == "heuristic" else None,
                "steps": self.settings.steps if self.checkpoint else None,
                "sampler": self.settings.sampler if self.checkpoint else None, "checkpoint": self.checkpoint,
                "checkpoint_sha256": self.checkpoint_sha256, "seed": self.settings.seed,
                "rng": f"numpy.random.default_rng([{self.settings.seed}, {index}])",
            }
            return record["image"], image, label, source, record
        return None

    def _add_tumour(self, source: SourceCase):
        entry = self.bank.make_entry(source.case, source.data, source.seg)
        if entry is None:
            return None
        image_pp, mask_pp = self._paste([entry], source.data[0])
        values, region = to_raw_grid(image_pp, mask_pp, source.properties, self.source.plans_manager,
                                     self.source.configuration_manager)
        region &= source.raw_label_array == self.source.organ_label
        if not region.any():
            return None
        image = source.raw_array.copy()
        image[region] = cast_like(source.inverse(values[region]), image.dtype)
        label = source.raw_label_array.copy()
        label[region] = self.source.tumour_label
        tumour = {"centre_mm": world_centre_mm(region, source.raw_image),
                  "volume_ml": float(region.sum()) * voxel_volume_ml(source.raw_image), "size": entry["size"],
                  "voxels": int(region.sum())}
        return image, label, [tumour]

    def _replace_tumours(self, source: SourceCase):
        seg = np.asarray(source.seg[0])
        components, count = ndimage.label(seg == self.source.tumour_label, np.ones((3, 3, 3), bool))
        boxes, skipped = [], 0
        crop = self.texture.crop_size
        for k, box in enumerate(ndimage.find_objects(components), start=1):
            mask = components[box] == k
            if crop is not None and any(s > c for s, c in zip(mask.shape, crop)):
                skipped += 1  # larger than the model's context: left real (reported in the record)
                continue
            boxes.append((np.array([b.start for b in box]), mask))
        if not boxes:
            return None
        entries = self.bank.fill_masks(source.case, source.data, source.seg, boxes)
        image_pp, mask_pp = self._paste(entries, source.data[0])
        values, region = to_raw_grid(image_pp, mask_pp, source.properties, self.source.plans_manager,
                                     self.source.configuration_manager)
        raw_tumour = source.raw_label_array == self.source.tumour_label
        raw_components, raw_count = ndimage.label(raw_tumour, np.ones((3, 3, 3), bool))
        replaced = np.zeros(raw_tumour.shape, bool)
        tumours = []
        for k in range(1, raw_count + 1):
            component = raw_components == k
            hit = bool((component & region).any())
            if hit:
                replaced |= component
            tumours.append({"centre_mm": world_centre_mm(component, source.raw_image),
                            "volume_ml": float(component.sum()) * voxel_volume_ml(source.raw_image),
                            "size": "real mask", "voxels": int(component.sum()), "replaced": hit})
        if not replaced.any():
            return None
        image = source.raw_array.copy()
        image[replaced] = cast_like(source.inverse(values[replaced]), image.dtype)
        if skipped:
            self.log(f"{source.case}: {skipped} tumour component(s) larger than the diffusion model's context crop "
                     f"{tuple(crop)} kept real")
        return image, source.raw_label_array.copy(), tumours

    @staticmethod
    def _paste(entries: list[dict], image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The preprocessed image with the entries' values pasted in, and the union of their masks."""
        image = np.array(image, np.float32)
        mask = np.zeros(image.shape, bool)
        for entry in entries:
            box = tuple(slice(int(c), int(c) + s) for c, s in zip(entry["corner"], entry["mask"].shape))
            m = entry["mask"]
            image[box][m] = entry["values"][m]
            mask[box] |= m
        return image, mask

    # ------------------------------------------------------------------------------------------ the run

    def run(self, progress: bool = True) -> str:
        """Generate (or finish) every image, then assemble ``$nnUNet_raw/Dataset<ID>_<name>``; returns it."""
        from tqdm import tqdm

        resuming = self.staging.open(self.identity(), restart=self.settings.overwrite)
        log_file = self.staging.path(LOG_NAME)
        outer_log = self.log

        def log(message: str) -> None:
            with open(log_file, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {message}\n")
            outer_log(message)

        self.log = log
        try:
            log(f"{'resuming' if resuming else 'starting'} {self.full_name} in {self.staging.folder}: "
                f"{self.num_images} images from {len(self.cases)} training cases of {self.source.name} fold "
                f"{self.settings.fold} ({self.settings.configuration}, {self.settings.plans}); texture "
                f"{self.settings.texture}" + (f" ({self.checkpoint}, sha256 {self.checkpoint_sha256}, "
                                              f"{self.settings.steps} {self.settings.sampler.upper()} steps)"
                                              if self.checkpoint else ""))
            if self.settings.include_real:
                self._copy_real()
            todo = [i for i in range(self.num_images) if not os.path.isfile(self.record_path(i))]
            start = time.perf_counter()
            with tqdm(total=self.num_images, initial=self.num_images - len(todo), desc="tumorsynth_generate",
                      disable=not progress, unit="image") as bar:
                for index in todo:
                    made = self.make_image(index)
                    if made is None:
                        raise GenerateError(f"image {index}: no training case had room for a tumour (organ label "
                                            f"{self.source.organ_label} too small in every case)")
                    name, image, label, source, record = made
                    _write_case(self.staging.folder, name, image, label, source, self.source.file_ending)
                    write_json_atomic(record, self.record_path(index))
                    bar.update(1)
            if todo:
                seconds = time.perf_counter() - start
                log(f"made {len(todo)} images in {seconds:.1f} s ({60 * len(todo) / max(seconds, 1e-9):.2f} "
                    f"images per minute)")
            return self._assemble()
        finally:
            self.staging._release_lock()
            self.log = outer_log

    def _copy_real(self) -> None:
        for case in self.source.training_cases:
            record_file = self.staging.path("records", f"real_{case}.json")
            if os.path.isfile(record_file):
                continue
            _copy_real_case(self.staging.folder, self.source, case)
            write_json_atomic({"image": case, "index": None, "mode": "real", "source_case": case,
                               "source_image": self.source.files(case)[0], "tumours": []}, record_file)
        self.log(f"real training cases copied: {len(self.source.training_cases)}")

    def splits(self, records: dict[str, dict]) -> list[dict]:
        """Cross-validation folds of the new dataset: every case validates with its source case's fold.

        One fold per fold of the source's ``splits_final.json`` whose validation cases are sources here
        (for a fold-f generation: the source's other folds, in order). Each entry also says which source
        fold it is (``source_fold``; nnU-Net reads only ``train`` and ``val``).
        """
        out = []
        for k, split in enumerate(self.source.splits):
            val_sources = set(split["val"])
            val = sorted(n for n, r in records.items() if r["source_case"] in val_sources)
            train = sorted(n for n, r in records.items() if r["source_case"] not in val_sources)
            if val and train:
                out.append({"train": train, "val": val, "source_fold": k})
        return out

    def _assemble(self) -> str:
        records = self.staging.records()
        splits = self.splits(records)
        ordered = sorted(records.values(), key=lambda r: (r["index"] is not None, r["index"] or 0, r["image"]))
        with new_raw_dataset(self.source.raw_root, int(self.settings.as_dataset), self.name,
                             overwrite=self.settings.overwrite) as folder:
            for record in ordered:
                name = record["image"]
                for sub, file in (("imagesTr", f"{name}_0000{self.source.file_ending}"),
                                  ("labelsTr", f"{name}{self.source.file_ending}")):
                    _link_or_copy(self.staging.path(sub, file), os.path.join(folder, sub, file))
            write_json_atomic(ordered, os.path.join(folder, RECORDS_JSON))
            _write_records_csv(ordered, os.path.join(folder, RECORDS_CSV))
            if splits:
                write_json_atomic([{"train": s["train"], "val": s["val"]} for s in splits],
                                  os.path.join(folder, "splits_final.json"))
            write_json_atomic({"settings": self.identity(), "splits_source_folds": [s["source_fold"] for s in splits],
                               "source_raw": self.source.raw_folder}, os.path.join(folder, SETTINGS_JSON))
            description = (f"{len(records)} cases from {self.source.name} fold {self.settings.fold}: "
                           f"{sum(r['mode'] != 'real' for r in records.values())} with synthetic tumours "
                           f"(tumorsynth_generate, Quinton et al. 2026 section 2.6)")
            write_dataset_json(folder, self.source.dataset_json["channel_names"], self.source.dataset_json["labels"],
                               len(records), self.source.file_ending, self.full_name, description=description,
                               tumorsynth_source=self.source.name)
            _write_preview(folder, ordered, self.source, self.source.tumour_label)
            log_file = self.staging.path(LOG_NAME)
            self.log(f"{self.full_name}: {len(records)} cases; splits_final.json with {len(splits)} folds "
                     f"(source folds {[s['source_fold'] for s in splits]})")
            shutil.copyfile(log_file, os.path.join(folder, LOG_NAME))
        shutil.rmtree(self.staging.folder, ignore_errors=True)
        target = os.path.join(self.source.raw_root, self.full_name)
        from nnunetv2.paths import nnUNet_preprocessed

        old = os.path.join(nnUNet_preprocessed or "", self.full_name)
        if nnUNet_preprocessed and os.path.isdir(old):
            self.log(f"WARNING: {old} exists from an earlier dataset with this id; delete it before "
                     f"nnUNetv2_plan_and_preprocess (nnU-Net would keep its splits_final.json and its cases)")
        return target


CSV_COLUMNS = ("image", "index", "mode", "source_case", "tumour", "centre_x_mm", "centre_y_mm", "centre_z_mm",
               "volume_ml", "voxels", "size", "size_requested", "replaced", "deformation", "texture", "polarity",
               "steps", "sampler", "checkpoint", "checkpoint_sha256", "seed")


def _write_records_csv(records: list[dict], path: str) -> None:
    """One row per tumour (a real copy without tumours gets one row with empty tumour columns)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        for k, tumour in enumerate(record["tumours"] or [None]):
            row = {key: record.get(key) for key in CSV_COLUMNS}
            if tumour is not None:
                row.update(tumour=k, volume_ml=round(tumour["volume_ml"], 4), voxels=tumour["voxels"],
                           size=tumour["size"], replaced=tumour.get("replaced", True),
                           **{f"centre_{a}_mm": round(v, 3) for a, v in zip("xyz", tumour["centre_mm"])})
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(buffer.getvalue())


def _write_preview(folder: str, records: list[dict], source: Source, tumour_label: int, max_images: int = 4) -> None:
    """PNG: axial slices (raw array axis 0) through a few synthetic tumours, source and result, mask outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in records if r["mode"] != "real"][:max_images]
    if not shown:
        return
    fig, axes = plt.subplots(len(shown), 2, figsize=(7, 3.3 * len(shown)), squeeze=False)
    for row, record in zip(axes, shown):
        name = record["image"]
        after = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "imagesTr",
                                                                   f"{name}_0000{source.file_ending}")))
        label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "labelsTr", f"{name}{source.file_ending}")))
        before = sitk.GetArrayFromImage(sitk.ReadImage(record["source_image"]))
        changed = (after != before) | (label == tumour_label)
        z = int(np.argwhere(after != before)[:, 0].mean()) if (after != before).any() else int(
            np.argwhere(changed)[:, 0].mean())
        vmin, vmax = np.percentile(before[z], [1, 99])
        for ax, image, title in ((row[0], before, "source"), (row[1], after, "synthetic")):
            ax.imshow(image[z], cmap="gray", vmin=vmin, vmax=vmax)
            ax.contour(label[z] == tumour_label, levels=[0.5], colors="r", linewidths=0.6)
            ax.set_title(f"{name if title == 'synthetic' else record['source_case']} ({title}), slice {z}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(os.path.join(folder, PREVIEW_PNG)) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def generate_dataset(settings: GenerateSettings, progress: bool = True,
                     log: Callable[[str], None] | None = None) -> str:
    """Write the synthetic dataset ``$nnUNet_raw/Dataset<as_dataset>_<name>``; returns its folder.

    Resumes an interrupted run with the same settings. Raises FileExistsError if the id is taken (without
    ``overwrite``), FileNotFoundError without a diffusion model (the message names tumorsynth_pretrain_ddpm),
    GenerateError for other bad input.
    """
    return Generator(settings, log=log).run(progress=progress)
