"""Tumour crops for training the diffusion model, read from nnU-Net's preprocessed data.

The diffusion model learns tumour texture in exactly the intensities the segmentation network sees, so it
trains on nnU-Net's preprocessed cases (resampled to the plans' spacing, normalised by the configuration's
scheme, axes transposed by ``transpose_forward``), and only on the training cases of one fold: the fold's
validation cases stay unseen.

- A *source* is one (dataset, plans, configuration, fold); several sources can be pooled (ATLAS plus
  pseudo-labelled LLD-MMRI in Quinton et al. 2026) if they share voxel spacing and normalisation.
- A *component* is one connected tumour (26-connectivity) in one training case. An epoch is one pass over
  the training components (Quinton et al. 2026, section 2.3: 5,000 epochs over the tumours of 48 ATLAS images).
  The validation loss holds out whole cases (``split_components``): no case gives components to both sides.
- A *crop* is a box of ``crop_size`` voxels centred on the component's centre of mass (rounded to a voxel).
  Its mask is the voxels of that component inside the crop; other tumours in the crop stay unmasked
  (they are context, as real tumours are when a synthetic one is placed beside them). A component larger
  than the crop keeps only its part inside the crop. Parts of the crop outside the case are padded: image
  0.0 (what nnU-Net's data loader and the synthesis bank pad with, so the model learns the context it will
  be given), mask False.
- Augmentation (training crops only): 90-degree rotations in each plane of two axes whose spacings agree
  (1 % tolerance; e.g. the axial (y, x) plane of a 3.0 x 1.5 x 1.5 mm volume, every plane of an isotropic
  one), then flips along every axis, each with probability 1/2. The same operations are applied to image and
  mask. A quarter turn swaps two axes, so the crop is cut out with those sizes swapped first and comes out
  of the rotation with ``crop_size``.

Everything is in nnU-Net's preprocessed (transposed) axis order, written (z, y, x) here; spacing and sizes
in mm are stated as such, all other sizes are voxels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from scipy import ndimage

# Quinton et al. 2026, section 2.3: 128 x 96 x 64 voxels (x, y, z) at 1.5 x 1.5 x 3.0 mm, i.e. 192 x 144 x 192 mm.
# Written here in the original image's (z, y, x) array order, as SimpleITK reads it.
PAPER_CROP_SIZE_MM_ZYX = (64 * 3.0, 96 * 1.5, 128 * 1.5)
PAD_VALUE = 0.0
SPACING_RTOL = 0.01  # spacings (mm) closer than this are "equal": pooling, rotation planes


def crop_size_from_mm(size_mm: Sequence[float], spacing: Sequence[float], divisor: int) -> tuple[int, int, int]:
    """Crop size in voxels covering ``size_mm`` at ``spacing`` (mm), each a multiple of ``divisor``.

    ``voxels = max(1, round(size_mm / spacing / divisor)) * divisor`` per axis (halves round up), so the crop
    covers the requested extent as closely as the network's size divisor (``2 ** (levels - 1)``) allows.
    """
    sizes = []
    for mm, s in zip(size_mm, spacing, strict=True):
        sizes.append(max(1, math.floor(float(mm) / float(s) / divisor + 0.5)) * divisor)
    return tuple(int(v) for v in sizes)


def paper_crop_size(spacing: Sequence[float], transpose_forward: Sequence[int], divisor: int) -> tuple[int, int, int]:
    """The paper's crop (192 x 144 x 192 mm in x, y, z) in voxels of nnU-Net's preprocessed data.

    Args:
        spacing: the plans' spacing of the configuration (mm), in preprocessed axis order.
        transpose_forward: the plans' ``transpose_forward``; preprocessed axis i is original axis
            ``transpose_forward[i]`` of the (z, y, x) array the image reader returned.
        divisor: the model's ``size_divisor``.
    """
    size_mm = [PAPER_CROP_SIZE_MM_ZYX[a] for a in transpose_forward]
    return crop_size_from_mm(size_mm, spacing, divisor)


# ----------------------------------------------------------------------------------------------- sources


@dataclass
class TrainingFold:
    """One dataset's fold as training data: where the preprocessed cases are and how they were made."""

    name: str  # "Dataset501_ATLAS"
    plans_identifier: str
    configuration: str
    fold: int | str
    data_folder: str
    spacing: tuple[float, float, float]  # mm, preprocessed axis order
    transpose_forward: tuple[int, int, int]
    normalisation: dict[str, Any]  # {"scheme": ...} (+ CT intensity statistics for CTNormalization)
    tumour_label: int
    channel: int
    training_cases: list[str]  # the fold's training cases (nnU-Net's split), sorted
    validation_cases: list[str]  # the fold's validation cases: never read
    reader: Any = field(default=None, repr=False)  # nnU-Net dataset object over training_cases only
    organ_label: int | None = None

    def load_case(self, case: str) -> tuple[Any, Any]:
        """(data (C, z, y, x), seg (1, z, y, x)) of a training case; arrays may be memory-mapped."""
        if case not in self.reader.identifiers:
            raise KeyError(f"{case} is not a training case of fold {self.fold} of {self.name}")
        data, seg, _, _ = self.reader.load_case(case)
        return data, seg


def open_source(
    dataset: str | int,
    plans_identifier: str,
    configuration: str,
    fold: int | str,
    channel: int = 0,
    organ_label: str | int | None = None,
    tumour_label: str | int | None = None,
) -> TrainingFold:
    """Locate one dataset's preprocessed data and the training cases of ``fold`` (nnU-Net's split).

    Raises FileNotFoundError with the nnU-Net command to run when the preprocessed data is missing.
    """
    from nnunetv2_tumorsynth.nnunet import PreprocessedDataset

    dataset = PreprocessedDataset.open(dataset, plans_identifier, configuration, organ_label, tumour_label)
    if not 0 <= channel < len(dataset.configuration_manager.normalization_schemes):
        raise ValueError(f"{dataset.name} has {len(dataset.configuration_manager.normalization_schemes)} input "
                         f"channel(s); channel {channel} does not exist")
    identifiers = dataset.identifiers()
    if not identifiers:
        raise FileNotFoundError(f"{dataset.data_folder} holds no preprocessed cases. Run: nnUNetv2_plan_and_preprocess "
                                f"-d {dataset.name} -c {configuration}")
    train, val = dataset.fold_cases(fold)
    missing = sorted(set(train) - set(identifiers))
    if missing:
        raise FileNotFoundError(
            f"training cases {missing[:5]} of fold {fold} (splits_final.json) are not in {dataset.data_folder}. "
            f"Re-run: nnUNetv2_preprocess -d {dataset.name} -c {configuration} -plans_name {plans_identifier}"
        )
    return TrainingFold(
        name=dataset.name,
        plans_identifier=plans_identifier,
        configuration=configuration,
        fold=fold,
        data_folder=dataset.data_folder,
        spacing=dataset.spacing,  # 2d: 3D volumes, z the median slice spacing
        transpose_forward=dataset.transpose_forward,
        normalisation=dataset.normalisation(channel),
        tumour_label=int(dataset.tumour_label),
        channel=channel,
        training_cases=train,
        validation_cases=val,
        reader=dataset.reader(train),
        organ_label=dataset.organ_label,
    )


def check_poolable(sources: Sequence[TrainingFold]) -> None:
    """Raise ValueError if the sources differ in voxel spacing, axis order or normalisation.

    The diffusion model learns texture at one spacing and one intensity scale; pooled datasets must have
    been preprocessed to the same ones.
    """
    if len(sources) < 2:
        return
    first = sources[0]
    problems = []
    for s in sources[1:]:
        if not all(math.isclose(a, b, rel_tol=SPACING_RTOL) for a, b in zip(s.spacing, first.spacing, strict=True)):
            problems.append(f"spacing: {first.name} {list(first.spacing)} mm, {s.name} {list(s.spacing)} mm")
        if s.transpose_forward != first.transpose_forward:
            problems.append(
                f"axis order (transpose_forward): {first.name} {list(first.transpose_forward)}, "
                f"{s.name} {list(s.transpose_forward)}"
            )
        if s.normalisation != first.normalisation:
            problems.append(f"normalisation: {first.name} {first.normalisation}, {s.name} {s.normalisation}")
    if problems:
        raise ValueError(
            f"Datasets pooled for the diffusion model must share the configuration's ({first.configuration}) "
            f"voxel spacing, axis order and normalisation scheme; they differ in " + "; ".join(problems) + ". "
            "Resample them to one spacing with the same normalisation: give their plans the same 'spacing' and "
            "'normalization_schemes' for this configuration (e.g. nnUNetv2_plan_and_preprocess with "
            "-overwrite_target_spacing, or edited plans under a new -p name) and re-run nnUNetv2_preprocess."
        )


# -------------------------------------------------------------------------------------------- components


@dataclass(eq=False)
class TumourComponent:
    """One connected tumour of one training case (voxel indices in preprocessed axis order)."""

    source: int  # index into the list of sources
    case: str
    index: int  # 1-based label of the component in the case (scipy.ndimage.label, 26-connectivity)
    centre: tuple[int, int, int]  # centre of mass, rounded to the nearest voxel (halves up)
    extent: tuple[int, int, int]  # bounding-box size, voxels
    voxels: np.ndarray  # (n, 3) int64 voxel indices of the component

    @property
    def key(self) -> str:
        """``"<case>#<index>"``: names the component in logs and metadata."""
        return f"{self.case}#{self.index}"

    def larger_than(self, crop_size: Sequence[int]) -> bool:
        return any(e > c for e, c in zip(self.extent, crop_size, strict=True))


def find_components(sources: Sequence[TrainingFold]) -> list[TumourComponent]:
    """Every connected tumour component of every source's training cases, in a fixed order.

    Voxels outside nnU-Net's nonzero crop are labelled -1 in preprocessed segmentations; they count as
    background. Raises ValueError naming the dataset, fold, label and cases if a source has no tumour voxel.
    """
    structure = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity
    components: list[TumourComponent] = []
    for s_idx, source in enumerate(sources):
        found = 0
        for case in source.training_cases:
            _, seg = source.load_case(case)
            tumour = np.asarray(seg[0]) == source.tumour_label
            labels, n = ndimage.label(tumour, structure=structure)
            if n == 0:
                continue
            boxes = ndimage.find_objects(labels)
            centres = ndimage.center_of_mass(tumour, labels, range(1, n + 1))
            for i in range(1, n + 1):
                box = boxes[i - 1]
                local = np.argwhere(labels[box] == i)
                offset = np.array([sl.start for sl in box])
                components.append(
                    TumourComponent(
                        source=s_idx,
                        case=case,
                        index=i,
                        centre=tuple(int(math.floor(c + 0.5)) for c in centres[i - 1]),
                        extent=tuple(int(sl.stop - sl.start) for sl in box),
                        voxels=(local + offset).astype(np.int64),
                    )
                )
                found += 1
        if found == 0:
            raise ValueError(
                f"No tumour voxels (label {source.tumour_label}) in the {len(source.training_cases)} training "
                f"cases of fold {source.fold} of {source.name} ({source.configuration}, {source.plans_identifier}): "
                f"the diffusion model has no tumour to learn from. Check the labels in nnUNet_raw/{source.name}/"
                f"labelsTr and dataset.json (or pass --tumour-label), or choose another fold."
            )
    return components


def split_components(
    components: Sequence[TumourComponent], val_fraction: float, seed: int
) -> tuple[list[TumourComponent], list[TumourComponent]]:
    """Hold out ``val_fraction`` of the cases with tumours (seeded), with all their components, for the
    validation loss.

    A case is (source, case identifier), so pooled datasets may share identifiers. Of the n cases that have
    components, ``round(val_fraction * n)`` are held out, at least one when there are two or more and
    ``val_fraction > 0``, and always leaving at least one for training. Every component of a held-out case
    goes to validation, none to training. Returns (training, validation), each in the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    cases = list(dict.fromkeys((c.source, c.case) for c in components))  # in the components' (fixed) order
    n = len(cases)
    n_val = 0
    if n >= 2 and val_fraction > 0:
        n_val = min(n - 1, max(1, round(val_fraction * n)))
    rng = np.random.default_rng([seed, 7])  # 7: a fixed tag so this draw differs from other seeded draws
    val_cases = {cases[i] for i in rng.permutation(n)[:n_val].tolist()}
    train = [c for c in components if (c.source, c.case) not in val_cases]
    val = [c for c in components if (c.source, c.case) in val_cases]
    return train, val


# ------------------------------------------------------------------------------------------ augmentation


@dataclass(frozen=True)
class Augmentation:
    """Rotations (plane (a, b), quarter turns k from axis a towards axis b), then flips per axis."""

    rotations: tuple[tuple[tuple[int, int], int], ...] = ()
    flips: tuple[bool, bool, bool] = (False, False, False)


def rotation_planes(spacing: Sequence[float]) -> list[tuple[int, int]]:
    """Planes (a, b), a < b, whose two axes have the same spacing (1 %): quarter turns keep geometry."""
    planes = []
    for a in range(3):
        for b in range(a + 1, 3):
            if math.isclose(spacing[a], spacing[b], rel_tol=SPACING_RTOL):
                planes.append((a, b))
    return planes


def random_augmentation(rng: np.random.Generator, spacing: Sequence[float]) -> Augmentation:
    """Draw rotations (k uniform in 0..3 per isotropic plane) and flips (probability 1/2 per axis)."""
    rotations = tuple((plane, int(rng.integers(4))) for plane in rotation_planes(spacing))
    flips = tuple(bool(f) for f in rng.random(3) < 0.5)
    return Augmentation(rotations=rotations, flips=flips)


def size_before(crop_size: Sequence[int], aug: Augmentation) -> tuple[int, int, int]:
    """The size to cut out so that ``apply_augmentation`` returns ``crop_size`` (odd quarter turns swap axes)."""
    size = list(crop_size)
    for (a, b), k in reversed(aug.rotations):
        if k % 2:
            size[a], size[b] = size[b], size[a]
    return tuple(size)


def apply_augmentation(array: np.ndarray, aug: Augmentation) -> np.ndarray:
    """Rotate then flip a (z, y, x) array; use the same ``aug`` for an image and its mask."""
    out = array
    for (a, b), k in aug.rotations:
        out = np.rot90(out, k=k, axes=(a, b))
    for axis, flip in enumerate(aug.flips):
        if flip:
            out = np.flip(out, axis=axis)
    return np.ascontiguousarray(out)


# ------------------------------------------------------------------------------------------------- crops


def cut_crop(
    data: Any, channel: int, component: TumourComponent, size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Image (z, y, x) float32 and mask (z, y, x) bool of ``size`` voxels centred on the component.

    The box starts at ``centre - size // 2``; outside the case the image is ``PAD_VALUE`` and the mask False.
    """
    start = np.array(component.centre) - np.array(size) // 2
    box = [[channel, channel + 1]] + [[int(s0), int(s0 + s)] for s0, s in zip(start, size)]
    image = crop_and_pad_nd(data, box, PAD_VALUE)[0].astype(np.float32, copy=False)
    mask = np.zeros(tuple(size), dtype=bool)
    local = component.voxels - start
    inside = np.all((local >= 0) & (local < np.array(size)), axis=1)
    mask[tuple(local[inside].T)] = True
    return np.ascontiguousarray(image), mask


class TumourCrops:
    """Crops around tumour components, optionally augmented; case arrays are opened once and kept open."""

    def __init__(
        self,
        sources: Sequence[TrainingFold],
        components: Sequence[TumourComponent],
        crop_size: Sequence[int],
        augment: bool,
    ) -> None:
        self.sources = list(sources)
        self.components = list(components)
        self.crop_size = tuple(int(c) for c in crop_size)
        self.augment = augment
        self._cases: dict[tuple[int, str], Any] = {}

    def __len__(self) -> int:
        return len(self.components)

    def _data(self, component: TumourComponent) -> Any:
        key = (component.source, component.case)
        if key not in self._cases:
            self._cases[key] = self.sources[component.source].load_case(component.case)[0]
        return self._cases[key]

    def get(self, index: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Crop ``index``: (image (z, y, x) float32, mask (z, y, x) bool), augmented with ``rng`` if enabled."""
        component = self.components[index]
        channel = self.sources[component.source].channel
        if not self.augment:
            return cut_crop(self._data(component), channel, component, self.crop_size)
        if rng is None:
            raise ValueError("augmented crops need a numpy Generator")
        aug = random_augmentation(rng, self.sources[component.source].spacing)
        image, mask = cut_crop(self._data(component), channel, component, size_before(self.crop_size, aug))
        return apply_augmentation(image, aug), apply_augmentation(mask, aug)


RANGE_PERCENTILES = (0.5, 99.5)  # of the tumours' and their parenchyma's intensities; docs/ddpm.md#brightness


def tumour_intensities(sources: Sequence[TrainingFold]) -> tuple[dict[str, list[float]], list]:
    """The training tumours' intensities and what they look like, read from the training cases only.

    Returns ({"tumour": [q0.5, q99.5], "parenchyma": [q0.5, q99.5], "clamp": [lo, hi]}, the tumours'
    ``synthesis.statistics.TumourStatistics``). The parenchyma is the organ within ``RING_MM`` of a tumour; the
    clamp spans both, in the normalised intensities the model learns: samplers keep the predicted clean image in
    it (a crop that holds fat or air must not let fills go darker than any tumour or parenchyma). The
    percentiles are ``RANGE_PERCENTILES``: 0.1 and 99.9 % let the phantom's fills reach darker values and the
    networks trained on them fired on more dark specks (docs/benchmarks.md, "Spread before contrast").
    """
    from nnunetv2_tumorsynth.synthesis.features import parenchyma_ring
    from nnunetv2_tumorsynth.synthesis.statistics import RING_MM, measure_tumours

    tumour_values, ring_values, statistics = [], [], []
    for source in sources:
        for case in source.training_cases:
            data, seg = source.load_case(case)
            image, labels = np.asarray(data[source.channel], np.float32), np.asarray(seg[0])
            tumour = labels == source.tumour_label
            if not tumour.any():
                continue
            tumour_values.append(image[tumour])
            if source.organ_label is None:
                continue
            ring_values.append(image[parenchyma_ring(tumour, labels == source.organ_label, source.spacing, RING_MM)])
            statistics += measure_tumours(image, labels, source.organ_label, source.tumour_label, source.spacing, case)
    ranges: dict[str, list[float]] = {}
    for name, values in (("tumour", tumour_values), ("parenchyma", ring_values)):
        values = np.concatenate(values) if values else np.zeros(0, np.float32)
        if values.size:
            ranges[name] = [float(np.percentile(values, q)) for q in RANGE_PERCENTILES]
    if ranges:
        ranges["clamp"] = [min(r[0] for r in ranges.values()), max(r[1] for r in ranges.values())]
    return ranges, statistics
