"""Offline synthetic datasets: new nnU-Net raw datasets whose images carry synthetic tumours.

Quinton et al. 2026 (section 2.6) generated 1,000 synthetic images offline (250 DDIM steps, one new
tumour per image, several images per source image) and trained on real plus synthetic images. This
module does the same through the synthesis bank's own code (``synthesis.synthesise.TumourSynthesiser``: mask from
``shape``, position from ``placement``, texture from ``texture``), so offline and on-the-fly training
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

Batches. Images are made in batches of ``batch_size`` consecutive indices (batch k holds images kB to
kB + B - 1; B is 1 for the heuristic texture, which fills one tumour at a time and gains nothing from
batches, see ``bank.store.fill_batch_size``). Every image of a batch is planned (source case, size, mask,
placement, calibrated draws: steps 1-2 without the texture) with its own generator ``default_rng([seed, i])``;
then the tumours of the whole batch are filled in one texture call (the DDPM texture samples ``batch_size``
crops per network evaluation), whose random draws come from the generator of the batch's first image, after
its planning; then each image is mapped back (steps 3-4) and written. For a given seed the dataset therefore
depends on the batch size only through which random numbers fill the tumours (the diffusion noise of each
crop, the heuristic texture's draws), not in distribution: every image is planned the same way and every
tumour is filled by the same texture; with batch size 1 each image draws from its own generator alone. An
image whose tumour vanishes when mapped back (step 4) moves on to the next case, and such images are filled
together in a further texture call (generator: the first of them).

Files. The dataset is built in a staging folder ``$nnUNet_raw/.Dataset<ID>_<name>.partial/`` that
survives interruptions: every file is written atomically (temporary name, then rename) and image ``i``
counts as done once its record ``records/<case>.json`` exists, which is written after its image and
label. A re-run with the same settings finishes the remaining images (after ``kill -9`` too): a batch with
any image left to do is made whole again and its finished images are not rewritten, so a resumed run writes
the same images as an uninterrupted one (the batch size may change between runs: the images made after the
change then draw other random numbers); other settings are refused unless ``overwrite``. When all images
exist, the dataset is assembled with the shared raw-dataset writer (``files.new_raw_dataset``: temporary
folder, renamed into place), so ``$nnUNet_raw/Dataset<ID>_<name>`` appears complete or not at all; the
staging folder is then removed.

The dataset holds imagesTr/labelsTr/dataset.json plus ``splits_final.json`` (each synthetic image in the
cross-validation fold of its source case; nnUNetv2_plan_and_preprocess copies it from the raw folder to
the preprocessed one), ``synthesis_records.json`` and ``.csv`` (one record per image),
``tumorsynth_generate.json`` (settings, source, checkpoint and its sha256), the log and a PNG preview.

Array conventions: "raw" arrays are SimpleITK's (z, y, x) arrays of the raw files (nnU-Net's
``SimpleITKIO`` order, before its transpose); preprocessed arrays are in the plans' transposed order.
World coordinates are ITK physical points (LPS, mm). Volumes are in ml.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from nnunetv2_tumorsynth.bank.session import load_texture
from nnunetv2_tumorsynth.bank.store import fill_batch_size
from nnunetv2_tumorsynth.files import (
    existing_datasets,
    new_raw_dataset,
    sha256_of,
    write_dataset_json,
    write_json_atomic,
)
from nnunetv2_tumorsynth.generate.raw_grid import SourceCase, cast_like, to_raw_grid, voxel_volume_ml, world_centre_mm
from nnunetv2_tumorsynth.generate.records import write_preview, write_records_csv
from nnunetv2_tumorsynth.generate.settings import (
    LOG_NAME,
    RECORDS_CSV,
    RECORDS_JSON,
    RESUMABLE_CHANGES,
    SETTINGS_JSON,
    GenerateError,
    GenerateSettings,
)
from nnunetv2_tumorsynth.generate.source import GenerationSource
from nnunetv2_tumorsynth.generate.staging import Staging, copy_real_case, link_or_copy, write_case
from nnunetv2_tumorsynth.log import Logger
from nnunetv2_tumorsynth.synthesis.entry import Entry
from nnunetv2_tumorsynth.synthesis.shape import MIX_SIZES, SIZE_PRESETS, TumourShape
from nnunetv2_tumorsynth.synthesis.statistics import FoldStatistics, measure_cases
from nnunetv2_tumorsynth.synthesis.synthesise import NoRoom, PlannedTumour, TumourSynthesiser

PAPER_MAX_SEMI_AXIS_MM = 40.5  # the "paper" size draw's upper clip (shape.draw_tumour_shape's semi_axis_range_mm)
Made = tuple[str, np.ndarray, np.ndarray, SourceCase, dict]  # one image: case name, image, label, source, record


def largest_tumour_box(size: str, deformation: str | None, spacing: tuple[float, ...]) -> tuple[int, ...]:
    """Voxels per axis of the largest tumour box the size preset can draw (``"mix"``: its largest preset; ``"data"``
    without fold statistics as ``"mix"``, which the synthesiser then draws).

    Per axis the deformed tumour reaches at most (largest semi-axis + largest displacement) mm from its centre
    voxel (``shape.render_uncropped``), so its box holds at most 2 floor(reach / spacing) + 1 voxels.
    """
    presets = MIX_SIZES if size in ("mix", "data") else (size,)
    reach_mm = 0.0
    for name in presets:
        preset = SIZE_PRESETS[name]
        semi_axis = PAPER_MAX_SEMI_AXIS_MM if name == "paper" else 1.25 * preset.radius_mm
        widest = TumourShape(semi_axes_mm=(semi_axis,) * 3, deformation=deformation,
                             amplitude_mm=preset.amplitude_range_mm[1],
                             simplex_lambda_per_mm=1.0, simplex_offsets=(), elastic_smoothing_mm=1.0, elastic_seed=0)
        reach_mm = max(reach_mm, semi_axis + widest.max_displacement_mm())
    return tuple(2 * int(reach_mm / s) + 1 for s in spacing)


@dataclass
class _Planned:
    """One image of a batch between planning and filling."""

    index: int
    rng: np.random.Generator  # default_rng([seed, index]): plans the image (and fills its batch if it comes first)
    size: str  # the size preset to place ("mix": one drawn per image)
    attempt: int = 0  # the source case tried: cases[(index + attempt) % number of cases]
    source: SourceCase | None = None
    jobs: list[PlannedTumour] = field(default_factory=list)  # its planned tumours, filled with the batch
    skipped: int = 0  # replace_real: tumour components larger than the model's context crop, left real


class Generator:
    """Makes the images of one ``GenerateSettings``; ``run`` writes the whole dataset."""

    def __init__(self, settings: GenerateSettings, log: Callable[[str], None] | None = None):
        self.settings = settings
        settings.check()
        self.source = GenerationSource(settings)
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
        if settings.texture == "ddpm" and settings.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise GenerateError("CUDA is not available; pass -device cpu (slow for the paper's model)")
        try:
            self.texture, self.checkpoint = load_texture(settings, self.source.dataset, settings.fold, settings.device,
                                                         settings.checkpoint, settings.batch_size)
        except ValueError as e:
            raise GenerateError(str(e)) from e
        self.statistics = FoldStatistics(measure_cases(self.source.dataset, self.source.training_cases,
                                                       self.source.organ_label, self.source.tumour_label,
                                                       self.source.spacing))
        self._check_tumours_fit_crop()
        self.checkpoint_sha256 = sha256_of(self.checkpoint) if self.checkpoint else None
        self.staging = Staging(self.source.raw_root, self.full_name)
        self.synthesiser = TumourSynthesiser(self.texture, settings, self.source.spacing, self.source.organ_label,
                                             self.source.tumour_label, np.random.default_rng(settings.seed),
                                             self.statistics)
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

    def _check_tumours_fit_crop(self) -> None:
        """Refuse, before anything is written, a size preset whose tumours can outgrow the diffusion model's crop
        (``--replace-real`` keeps real tumours larger than the crop real instead). Size "data" is refused only when
        most calibrated draws outgrow it: the synthesiser draws an oversized one again (``TumourSynthesiser.plan``),
        as the trainers' bank does with the same fold and checkpoint."""
        crop = self.texture.crop_size
        if crop is None or self.settings.replace_real:
            return
        if self.settings.size == "data" and self.statistics.calibrated:
            boxes = self._calibrated_boxes()
            if np.mean([all(b <= c for b, c in zip(box, crop)) for box in boxes]) >= 0.5:
                return
            box = tuple(int(v) for v in np.max(boxes, axis=0))
        else:
            box = largest_tumour_box(self.settings.size, self.settings.deformation, self.source.spacing)
        if any(b > c for b, c in zip(box, crop)):
            raise GenerateError(
                f"--size {self.settings.size} draws tumours of up to {box} voxels at {self.source.name}'s spacing "
                f"{tuple(self.source.spacing)} mm, larger than the diffusion model's context crop {tuple(crop)} voxels "
                f"({self.checkpoint}); pass a smaller --size, or train a model with a larger crop: "
                f"tumorsynth_pretrain_ddpm --crop Z Y X")

    def _calibrated_boxes(self, draws: int = 1000) -> list[tuple[int, ...]]:
        """Voxels per axis (z, y, x) of the box around each of ``draws`` calibrated tumours (a fixed generator):
        the largest semi-axis plus the deformation's largest displacement, in every direction."""
        rng = np.random.default_rng(0)
        boxes = []
        for _ in range(draws):
            draw = self.statistics.draw(rng)
            shape = TumourShape(semi_axes_mm=draw.semi_axes_mm, deformation=self.settings.deformation,
                                amplitude_mm=draw.amplitude_mm, simplex_lambda_per_mm=1.0, simplex_offsets=(),
                                elastic_smoothing_mm=1.0, elastic_seed=0)
            reach_mm = max(draw.semi_axes_mm) + shape.max_displacement_mm()
            boxes.append(tuple(2 * int(reach_mm / s) + 1 for s in self.source.spacing))
        return boxes

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
        for key in RESUMABLE_CHANGES:
            s.pop(key, None)
        s.update(dataset=self.source.name, num_images=self.num_images, name=self.name,
                 checkpoint=self.checkpoint, checkpoint_sha256=self.checkpoint_sha256, fold=str(self.settings.fold))
        return s

    # -------------------------------------------------------------------------------------- one image

    def batches(self, todo: list[int]) -> list[list[int]]:
        """The batches that make images ``todo``: blocks of ``batch_size`` consecutive indices (block k holds
        images kB to kB + B - 1), whole wherever any of their images is to do, so that a resumed run fills every
        tumour with the same random draws as an uninterrupted one."""
        size = fill_batch_size(self.texture)
        return [list(range(k * size, min((k + 1) * size, self.num_images))) for k in sorted({i // size for i in todo})]

    def make_image(self, index: int) -> Made | None:
        """Synthesise image ``index`` alone (a batch of one): (case name, image, label, source case, record), or
        None if no case fits."""
        return next(self.make_images([index]))[1]

    def make_images(self, indices: list[int]) -> Iterator[tuple[int, Made | None]]:
        """Synthesise images ``indices`` (one batch): each planned with its own generator, then all their tumours
        filled in one texture call. Yields (index, (case name, image, label, source case, record)) per image as
        soon as it is mapped back, so that the caller writes it before the next one is mapped back (an interrupted
        batch leaves its first images finished), and (index, None) for an image that no case has room for."""
        pending = [self._start(index) for index in indices]
        while pending:
            planned = []
            for image in pending:
                if self._plan(image):
                    planned.append(image)
                else:
                    yield image.index, None
            if not planned:
                return
            self.synthesiser.rng = planned[0].rng  # the fill's random draws: the batch's first image's generator
            entries = iter(self.synthesiser.fill([job for image in planned for job in image.jobs]))
            pending = []
            for image in planned:
                made = self._finish(image, [next(entries) for _ in image.jobs], indices, planned[0].index)
                if made is None:  # the tumour vanished when mapped back to the raw grid: try the next case
                    image.attempt += 1
                    pending.append(image)
                else:
                    yield image.index, made

    def _start(self, index: int) -> _Planned:
        """Image ``index`` before planning: its generator, and its size preset (``"mix"``: one drawn from it)."""
        rng = np.random.default_rng([self.settings.seed, index])
        size = self.settings.size
        if size == "mix":
            size = MIX_SIZES[int(rng.integers(len(MIX_SIZES)))]
        return _Planned(index, rng, size)

    def _plan(self, image: _Planned) -> bool:
        """Plan the image's tumours in its first source case with room, from its current attempt on (its own
        generator draws); False when no case is left."""
        self.synthesiser.rng = image.rng
        self.synthesiser.settings = dataclasses.replace(self.settings, size=image.size)
        while image.attempt < len(self.cases):
            source = self.source.load(self.cases[(image.index + image.attempt) % len(self.cases)])
            jobs, skipped = self._plan_replacements(source) if self.settings.replace_real else \
                self._plan_tumour(source)
            if jobs:
                image.source, image.jobs, image.skipped = source, jobs, skipped
                return True
            image.attempt += 1
        return False

    def _plan_tumour(self, source: SourceCase) -> tuple[list[PlannedTumour], int]:
        """One new tumour placed in the case's organ, not filled; none when the organ has no room."""
        try:
            job = self.synthesiser.plan(source.case, source.data, source.seg)
        except NoRoom:
            return [], 0
        return [job], 0

    def _plan_replacements(self, source: SourceCase) -> tuple[list[PlannedTumour], int]:
        """Every real tumour component of the preprocessed label as a job, not filled, and how many components
        are larger than the diffusion model's context crop (left real)."""
        seg = np.asarray(source.seg[0])
        components, _ = ndimage.label(seg == self.source.tumour_label, np.ones((3, 3, 3), bool))
        boxes, skipped = [], 0
        crop = self.texture.crop_size
        for k, box in enumerate(ndimage.find_objects(components), start=1):
            mask = components[box] == k
            if crop is not None and any(s > c for s, c in zip(mask.shape, crop)):
                skipped += 1  # larger than the model's context: left real (reported in the record)
                continue
            boxes.append((np.array([b.start for b in box]), mask))
        if not boxes:
            return [], skipped
        return self.synthesiser.plan_masks(source.case, source.data, source.seg, boxes), skipped

    def _finish(self, image: _Planned, entries: list[Entry], batch: list[int], fill_index: int) -> Made | None:
        """The filled image mapped back to the raw grid with its record (``batch``: the images planned with it;
        ``fill_index``: the image whose generator filled its tumours); None if its tumours vanished there."""
        source = image.source
        made = self._replace_tumours(source, entries, image.skipped) if self.settings.replace_real else \
            self._add_tumour(source, entries[0])
        if made is None:
            return None
        pixels, label, tumours = made
        seed = self.settings.seed
        record = {
            "image": self.image_name(image.index, source.case), "index": image.index,
            "mode": "replaced" if self.settings.replace_real else "synthetic", "source_case": source.case,
            "source_image": source.image_file, "tumours": tumours,
            "deformation": self.settings.deformation, "size_requested": self.settings.size,
            "texture": self.settings.texture,
            "polarity": self.settings.heuristic_polarity if self.settings.texture == "heuristic" else None,
            "steps": self.settings.ddpm_steps if self.checkpoint else None,
            "sampler": self.settings.ddpm_sampler if self.checkpoint else None, "checkpoint": self.checkpoint,
            "strength": self.settings.ddpm_strength if self.checkpoint else None,
            "brightness": self.settings.ddpm_brightness if self.checkpoint else None,
            "checkpoint_sha256": self.checkpoint_sha256, "seed": seed,
            "rng": f"numpy.random.default_rng([{seed}, {image.index}])",
            "batch": batch, "fill_rng": f"numpy.random.default_rng([{seed}, {fill_index}])",
        }
        return record["image"], pixels, label, source, record

    def _add_tumour(self, source: SourceCase, entry: Entry) -> tuple[np.ndarray, np.ndarray, list[dict]] | None:
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
                  "volume_ml": float(region.sum()) * voxel_volume_ml(source.raw_image), "size": entry.size,
                  "voxels": int(region.sum())}
        return image, label, [tumour]

    def _replace_tumours(self, source: SourceCase, entries: list[Entry],
                         skipped: int) -> tuple[np.ndarray, np.ndarray, list[dict]] | None:
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
                     f"{tuple(self.texture.crop_size)} kept real")
        return image, source.raw_label_array.copy(), tumours

    @staticmethod
    def _paste(entries: list[Entry], image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The preprocessed image with the entries' values pasted in, and the union of their masks."""
        image = np.array(image, np.float32)
        mask = np.zeros(image.shape, bool)
        for entry in entries:
            entry.paste_into(image)
            mask[entry.box] |= entry.mask
        return image, mask

    # ------------------------------------------------------------------------------------------ the run

    def run(self, progress: bool = True) -> str:
        """Generate (or finish) every image, then assemble ``$nnUNet_raw/Dataset<ID>_<name>``; returns it."""
        from tqdm import tqdm

        resuming = self.staging.open(self.identity(), restart=self.settings.overwrite)
        outer_log = self.log
        self.log = log = Logger(self.staging.path(LOG_NAME), echo=outer_log)
        try:
            log(f"{'resuming' if resuming else 'starting'} {self.full_name} in {self.staging.folder}: "
                f"{self.num_images} images from {len(self.cases)} training cases of {self.source.name} fold "
                f"{self.settings.fold} ({self.settings.configuration}, {self.settings.plans}); texture "
                f"{self.settings.texture}" + (f" ({self.checkpoint}, sha256 {self.checkpoint_sha256}, "
                                              f"{self.settings.ddpm_steps} {self.settings.ddpm_sampler.upper()} steps)"
                                              if self.checkpoint else ""))
            log("the fold's annotated training tumours (median [10-90 %]):\n" + self.statistics.table())
            if self.settings.size == "data":
                log("size 'data': " + ("tumours drawn from these" if self.statistics.calibrated else
                                       "too few annotated tumours, Hu et al. 2023's priors (sizes tiny to large)"))
            if self.settings.include_real:
                self._copy_real()
            todo = [i for i in range(self.num_images) if not os.path.isfile(self.record_path(i))]
            batches = self.batches(todo)
            remade = sum(len(b) for b in batches) - len(todo)
            if remade:
                log(f"{remade} finished image(s) share a batch with unfinished ones: made again for their random "
                    f"draws, not rewritten")
            todo_set = set(todo)
            start = time.perf_counter()
            with tqdm(total=self.num_images, initial=self.num_images - len(todo), desc="tumorsynth_generate",
                      disable=not progress, unit="image") as bar:
                for batch in batches:
                    for index, made in self.make_images(batch):
                        if index not in todo_set:
                            continue
                        if made is None:
                            raise GenerateError(f"image {index}: no training case had room for a tumour (organ "
                                                f"label {self.source.organ_label} too small in every case)")
                        name, image, label, source, record = made
                        write_case(self.staging.folder, name, image, label, source, self.source.file_ending)
                        write_json_atomic(record, self.record_path(index))
                        bar.update(1)
            if todo:
                seconds = time.perf_counter() - start
                log(f"made {len(todo)} images in {seconds:.1f} s ({60 * len(todo) / max(seconds, 1e-9):.2f} "
                    f"images per minute; batches of up to {fill_batch_size(self.texture)} images)")
            return self._assemble()
        finally:
            self.staging.release_lock()
            self.log = outer_log

    def _copy_real(self) -> None:
        for case in self.source.training_cases:
            record_file = self.staging.path("records", f"real_{case}.json")
            if os.path.isfile(record_file):
                continue
            copy_real_case(self.staging.folder, self.source, case)
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
                    link_or_copy(self.staging.path(sub, file), os.path.join(folder, sub, file))
            write_json_atomic(ordered, os.path.join(folder, RECORDS_JSON))
            write_records_csv(ordered, os.path.join(folder, RECORDS_CSV))
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
            write_preview(folder, ordered, self.source.file_ending, self.source.tumour_label)
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


def generate_dataset(settings: GenerateSettings, progress: bool = True,
                     log: Callable[[str], None] | None = None) -> str:
    """Write the synthetic dataset ``$nnUNet_raw/Dataset<as_dataset>_<name>``; returns its folder.

    Resumes an interrupted run with the same settings. Raises FileExistsError if the id is taken (without
    ``overwrite``), FileNotFoundError without a diffusion model (the message names tumorsynth_pretrain_ddpm),
    GenerateError for other bad input.
    """
    return Generator(settings, log=log).run(progress=progress)
