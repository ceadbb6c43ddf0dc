"""Box-guided pseudo-labelling (Quinton et al. 2026, section 2.1): pseudo-masks (organ and tumour) from tumour boxes.

From Python, the same as the command ``tumorsynth_pseudolabel`` (which is argparse plus this one call)::

    from nnunetv2_tumorsynth.boxes.pseudolabel import PseudolabelSettings, pseudolabel_folder

    results = pseudolabel_folder(PseudolabelSettings(
        annotations="Annotation.json", images="LLD-MMRI/images", dataset="501", output_folder="pseudo"))

For each case (one LLD-MMRI series, or one case of the generic box format, see
:func:`nnunetv2_tumorsynth.boxes.read_generic`) the boxes are rasterised in the image's own voxel grid,
carried through nnU-Net's preprocessing geometry (transpose, crop, resample) next to the image,
appended as the last input channel, and the box-guided model (``nnUNetTrainerBBoxChannel``) predicts
with nnU-Net's sliding-window predictor. The label map is exported in the original geometry through
nnU-Net's export path. Predicted tumour outside every box (plus ``margin_mm``) is removed: it
becomes organ where it is mostly surrounded by organ, else background. ``as_dataset`` also writes
``$nnUNet_raw/Dataset<ID>_<source>Pseudo`` (imagesTr, labelsTr, dataset.json).

The pieces can be called on their own: :func:`load_predictor` (with :func:`check_box_model`),
:func:`pseudolabel_case` for one case, :func:`write_pseudo_dataset` for the nnU-Net dataset.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
import torch

from nnunetv2_tumorsynth.boxes import (
    PAPER_PHASES,
    BoxCase,
    boxes_in_image,
    margin_in_voxels,
    rasterise,
    read_box_annotations,
    restrict_tumour_to_boxes,
    to_preprocessed_grid,
)
from nnunetv2_tumorsynth.files import (
    atomic_path,
    existing_datasets,
    new_raw_dataset,
    write_dataset_json,
    write_json_atomic,
)
from nnunetv2_tumorsynth.log import Logger
from nnunetv2_tumorsynth.nnunet import dataset_name, ensure_trainers_findable, organ_and_tumour_labels


class PseudolabelError(RuntimeError):
    """Bad input for pseudo-labelling; the message says what to fix."""


class UnreadableImage(PseudolabelError):
    """An image file that SimpleITK / nnU-Net cannot read; that case is skipped."""


@dataclass
class PseudolabelSettings:
    """Everything ``tumorsynth_pseudolabel`` accepts (its flag in brackets).

    annotations [-bbox]: LLD-MMRI ``Annotation.json``, or generic boxes (a JSON per case, a folder of them, a CSV).
    images [-i]: image folder (LLD-MMRI: ``<patient>/<study>/<series>.nii.gz``).
    dataset [-d]: dataset the box-guided model was trained on (id or name).
    output_folder [-o]: folder for the label maps; may be None with ``as_dataset``.
    configuration, fold, trainer, plans, checkpoint [-c, -f, -tr, -p, -chk]: which trained model.
    phases [--phases]: LLD-MMRI phases to use, each its own case (None: every phase).
    categories [--categories]: keep LLD-MMRI series whose lesions all have one of these categories (None: all).
    margin_mm [--margin-mm, --keep-outside]: tumour further than this (mm) from every box is removed;
        None keeps it.
    organ_label, tumour_label [--organ-label, --tumour-label]: names or values (None: from dataset.json).
    as_dataset [--as-dataset]: also write ``$nnUNet_raw/Dataset<ID>_<source>Pseudo``.
    save_boxes [--save-boxes]: also write the box rasters to ``<output_folder>/boxes/``.
    device [-device]: ``cpu``, ``cuda`` or ``mps`` (None: cuda when available, else cpu).
    step_size [-step_size]: sliding-window step (fraction of the patch).
    use_mirroring [--disable_tta]: test-time mirroring.
    overwrite [--overwrite]: replace existing outputs.
    """

    annotations: str
    images: str
    dataset: str | int
    output_folder: str | None = None
    configuration: str = "3d_fullres"
    fold: str = "0"
    trainer: str = "nnUNetTrainerBBoxChannel"
    plans: str = "nnUNetPlans"
    checkpoint: str = "checkpoint_final.pth"
    phases: tuple[str, ...] | None = PAPER_PHASES
    categories: tuple[int, ...] | None = None
    margin_mm: float | None = 5.0
    organ_label: str | None = None
    tumour_label: str | None = None
    as_dataset: int | None = None
    save_boxes: bool = False
    device: str | None = None
    step_size: float = 0.5
    use_mirroring: bool = True
    overwrite: bool = False

    @property
    def phases_given(self) -> list[str]:
        """The phases as the command line gives them (``["all"]`` for every phase)."""
        return ["all"] if self.phases is None else list(self.phases)

    @property
    def categories_given(self) -> list[int] | None:
        return None if self.categories is None else list(self.categories)


# ---------------------------------------------------------------------------------------------------
# The box-guided model
# ---------------------------------------------------------------------------------------------------


def model_folder(name: str, trainer: str, plans: str, configuration: str) -> str:
    """``$nnUNet_results/<Dataset>/<trainer>__<plans>__<configuration>``."""
    from nnunetv2.paths import nnUNet_results

    if not nnUNet_results:
        raise PseudolabelError("nnUNet_results is not set; export nnUNet_results=/path/to/nnUNet_results")
    return os.path.join(nnUNet_results, name, f"{trainer}__{plans}__{configuration}")


def first_conv_in_channels(network_weights: dict) -> int:
    """Input channels of a network from its state dict: the first convolution weight's second axis."""
    for value in network_weights.values():
        if hasattr(value, "ndim") and value.ndim in (4, 5):
            return int(value.shape[1])
    raise PseudolabelError("no convolution weights found in the checkpoint")


def check_box_model(checkpoint: dict, trainer_class: type, num_image_channels: int, checkpoint_path: str) -> None:
    """Refuse a model trained without the box channel (by its trainer class and its first convolution)."""
    trainer_name = checkpoint.get("trainer_name", "?")
    in_channels = first_conv_in_channels(checkpoint["network_weights"])
    if not getattr(trainer_class, "uses_box_channel", False) or in_channels != num_image_channels + 1:
        config = checkpoint.get("init_args", {}).get("configuration", "3d_fullres")
        raise PseudolabelError(
            f"{checkpoint_path} was trained by {trainer_name} with {in_channels} input channel(s) for "
            f"{num_image_channels} image channel(s): it has no tumour box channel, so boxes cannot guide it. Train a "
            f"box-guided model first: nnUNetv2_train DATASET {config} FOLD -tr nnUNetTrainerBBoxChannel"
        )


def load_predictor(folder: str, fold: str, checkpoint_name: str, device: torch.device, use_mirroring: bool,
                   step_size: float):
    """nnU-Net's predictor for a trained box-channel model and the model's trainer class, after checking
    that it really has the box channel and reads images with SimpleITK."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    fold = fold if fold == "all" else int(fold)
    checkpoint_path = os.path.join(folder, f"fold_{fold}", checkpoint_name)
    if not os.path.isfile(checkpoint_path):
        raise PseudolabelError(f"{checkpoint_path} does not exist. Train the box-guided model first, e.g. "
                               f"nnUNetv2_train DATASET CONFIGURATION {fold} -tr nnUNetTrainerBBoxChannel")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    ensure_trainers_findable()
    trainer_class = recursive_find_trainer_class_by_name(checkpoint["trainer_name"])
    num_image_channels = len(load_json(os.path.join(folder, "dataset.json"))["channel_names"])
    check_box_model(checkpoint, trainer_class, num_image_channels, checkpoint_path)
    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(folder, (fold,), checkpoint_name)
    if predictor.plans_manager.image_reader_writer_class is not SimpleITKIO:
        raise PseudolabelError(
            f"the plans read images with {predictor.plans_manager.image_reader_writer_class.__name__}; box coordinates "
            f"are voxel indices of SimpleITK arrays, so only SimpleITKIO plans are supported")
    return predictor, trainer_class


class BoxModel(NamedTuple):
    """Where a trained box-guided model is: its dataset's name, its results folder and its dataset.json."""

    dataset_name: str
    folder: str
    dataset_json: dict


def find_model(settings: PseudolabelSettings) -> BoxModel:
    """The trained box-guided model that ``settings`` names (checked to exist)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    name = dataset_name(settings.dataset)
    folder = model_folder(name, settings.trainer, settings.plans, settings.configuration)
    if not os.path.isfile(os.path.join(folder, "dataset.json")):
        raise PseudolabelError(f"{folder} holds no trained model. Train it first: nnUNetv2_train {settings.dataset} "
                               f"{settings.configuration} {settings.fold} -tr {settings.trainer} -p {settings.plans}")
    return BoxModel(name, folder, load_json(os.path.join(folder, "dataset.json")))


def _device(name: str | None) -> torch.device:
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    return device


# ---------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------


def read_cases(settings: PseudolabelSettings, source_json: dict) -> list[BoxCase]:
    """The cases of ``settings.annotations`` after the phase and category filters, checked to give one image
    per input channel of the model (``source_json``: the model's dataset.json)."""
    num_channels = len(source_json["channel_names"])
    cases = read_box_annotations(settings.annotations, settings.images, settings.phases, settings.categories,
                                 source_json["file_ending"], num_channels)
    if not cases:
        raise PseudolabelError(f"{settings.annotations}: no cases left after filtering (phases "
                               f"{settings.phases_given}, categories {settings.categories_given})")
    wrong_channels = [c.case_id for c in cases if len(c.image_files) != num_channels]
    if wrong_channels:
        raise PseudolabelError(f"the model takes {num_channels} image channel(s) ({source_json['channel_names']}) "
                               f"but cases {wrong_channels[:5]} give a different number of images")
    return cases


def pseudolabel_case(case: BoxCase, predictor, organ: int, tumour: int, margin_mm: float | None, output_file: str,
                     box_file: str | None = None) -> dict:
    """Predict one case and write its label map (and optionally its box raster) atomically.

    Tumour further than ``margin_mm`` from every box is removed (kept everywhere when None).
    Returns a summary: boxes used (z, y, x half-open voxel indices), warnings, tumour voxels removed.
    """
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    plans_manager, configuration_manager = predictor.plans_manager, predictor.configuration_manager
    start = time.perf_counter()
    rw = plans_manager.image_reader_writer_class()
    reader = sitk.ImageFileReader()
    reader.SetFileName(case.image_files[0])
    try:
        reader.ReadImageInformation()
        data, properties = rw.read_images(case.image_files)
    except (RuntimeError, AssertionError) as e:
        raise UnreadableImage(f"cannot read {case.image_files}: {str(e).strip()}") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        boxes = boxes_in_image(case.boxes, reader)
    shape = data.shape[1:]
    box_mask = rasterise(boxes, shape)

    # the image goes through nnU-Net's own preprocessing, exactly as in nnUNetv2_predict; the boxes follow
    # the same transpose, crop and resampling
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    data_pp, _, properties = preprocessor.run_case_npy(data, None, properties, plans_manager, configuration_manager,
                                                       predictor.dataset_json)
    box_pp = to_preprocessed_grid(box_mask, properties, plans_manager, configuration_manager)
    network_input = torch.from_numpy(np.concatenate((data_pp, box_pp[None].astype(np.float32))))
    logits = predictor.predict_logits_from_preprocessed_data(network_input).cpu()
    segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, plans_manager, configuration_manager, predictor.label_manager, properties)

    spacing = tuple(float(s) for s in properties["spacing"])  # (z, y, x) mm for SimpleITK
    tumour_before = int((segmentation == tumour).sum())
    removed = 0
    if margin_mm is not None:
        allowed = rasterise([b.expanded(margin_in_voxels(margin_mm, spacing)) for b in boxes], shape)
        segmentation, removed = restrict_tumour_to_boxes(segmentation, allowed, organ, tumour)

    with atomic_path(output_file) as tmp:
        rw.write_seg(segmentation, tmp, properties)
    if box_file is not None:
        with atomic_path(box_file) as tmp:
            rw.write_seg(box_mask.astype(np.uint8), tmp, properties)
    return {
        "case": case.case_id, "source": case.source, "images": case.image_files, "phase": case.phase,
        "boxes_zyx": [[list(b.lo), list(b.hi)] for b in boxes], "warnings": [str(w.message) for w in caught],
        "tumour_voxels_predicted": tumour_before, "tumour_voxels_removed_outside_boxes": removed,
        "tumour_voxels": int((segmentation == tumour).sum()), "organ_voxels": int((segmentation == organ).sum()),
        "seconds": round(time.perf_counter() - start, 3),
    }


def cases_with_images(cases: list[BoxCase], log: Logger) -> tuple[list[BoxCase], list[tuple[BoxCase, str]]]:
    """(cases whose image files all exist, (case, file) for each missing file); the missing ones are logged."""
    missing = [(c, f) for c in cases for f in c.image_files if not os.path.isfile(f)]
    if missing:
        log(f"WARNING: {len(missing)} image file(s) missing; these cases are skipped:")
        for c, f in missing:
            log(f"  {c.case_id} ({c.source}): {f}")
    missing_ids = {c.case_id for c, _ in missing}
    todo = [c for c in cases if c.case_id not in missing_ids]
    if not todo:
        raise PseudolabelError("none of the cases has its image file(s); check -i")
    return todo, missing


def pseudolabel_cases(cases: list[BoxCase], predictor, organ: int, tumour: int, margin_mm: float | None, out: str,
                      ending: str, save_boxes: bool, log: Logger) -> tuple[list[dict], list[dict]]:
    """:func:`pseudolabel_case` for each case, into ``<out>/<case><ending>`` (box rasters into ``<out>/boxes/``
    with ``save_boxes``). Returns (summaries, failures); an unreadable image is logged and skipped."""
    from tqdm import tqdm

    results, failed = [], []
    for case in tqdm(cases, desc="pseudo-labelling", disable=None):
        box_file = os.path.join(out, "boxes", f"{case.case_id}{ending}") if save_boxes else None
        try:
            result = pseudolabel_case(case, predictor, organ, tumour, margin_mm,
                                      os.path.join(out, f"{case.case_id}{ending}"), box_file)
        except UnreadableImage as e:  # report, go on with the others
            failed.append({"case": case.case_id, "source": case.source, "error": str(e).strip()})
            log(f"ERROR {case.case_id} ({case.source}): {str(e).strip()}")
            continue
        results.append(result)
        for w in result["warnings"]:
            log(f"WARNING {case.case_id}: {w}")
        log(f"{case.case_id}: {len(result['boxes_zyx'])} box(es), {result['tumour_voxels']} tumour voxels "
            f"({result['tumour_voxels_removed_outside_boxes']} removed outside boxes), {result['seconds']:.1f} s")
    return results, failed


# ---------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------


def check_outputs(settings: PseudolabelSettings) -> str | None:
    """Refuse, before any work, a run without outputs or one that would replace a dataset without
    ``overwrite``; returns ``$nnUNet_raw`` when ``as_dataset`` is set."""
    from nnunetv2.paths import nnUNet_raw

    if settings.output_folder is None and settings.as_dataset is None:
        raise PseudolabelError("give an output folder (-o OUT) or --as-dataset ID")
    if settings.as_dataset is None:
        return None
    if not nnUNet_raw:
        raise PseudolabelError("--as-dataset needs nnUNet_raw; export nnUNet_raw=/path/to/nnUNet_raw")
    taken = existing_datasets(str(nnUNet_raw), settings.as_dataset)
    if taken and not settings.overwrite:
        raise PseudolabelError(f"{os.path.join(str(nnUNet_raw), taken[0])} already exists; choose another id "
                               f"or pass --overwrite")
    return str(nnUNet_raw)


def _prepare_output_folder(out: str, cases: list[BoxCase], ending: str, settings: PseudolabelSettings) -> None:
    os.makedirs(out, exist_ok=True)
    if settings.save_boxes:
        os.makedirs(os.path.join(out, "boxes"), exist_ok=True)
    existing = [t for t in (os.path.join(out, f"{c.case_id}{ending}") for c in cases) if os.path.exists(t)]
    if existing and not settings.overwrite:
        raise PseudolabelError(f"{len(existing)} output file(s) already exist, e.g. {existing[0]}; pass --overwrite "
                               f"to replace them")


def write_pseudo_dataset(raw: str, dataset_id: int, source_name: str, source_json: dict, results: list[dict],
                         label_folder: str, settings: dict, overwrite: bool) -> str:
    """``$nnUNet_raw/Dataset<ID>_<source>Pseudo``: the images (copied) and pseudo-masks as imagesTr/labelsTr
    with the source dataset's labels and channel names; ``settings`` is recorded in dataset.json under
    ``tumorsynth_pseudolabel``. Built aside and renamed into place (:func:`nnunetv2_tumorsynth.files.new_raw_dataset`:
    refuses an existing id without ``overwrite``)."""
    short = source_name.split("_", 1)[1] if "_" in source_name else source_name
    name = f"Dataset{dataset_id:03d}_{short}Pseudo"
    ending = source_json["file_ending"]
    with new_raw_dataset(raw, dataset_id, f"{short}Pseudo", overwrite) as folder:
        for r in results:
            for c, image in enumerate(r["images"]):
                target = os.path.join(folder, "imagesTr", f"{r['case']}_{c:04d}{ending}")
                if image.endswith(ending):
                    shutil.copyfile(image, target)
                else:
                    sitk.WriteImage(sitk.ReadImage(image), target, True)
            shutil.copyfile(os.path.join(label_folder, f"{r['case']}{ending}"),
                            os.path.join(folder, "labelsTr", f"{r['case']}{ending}"))
        regions = {"regions_class_order": source_json["regions_class_order"]} \
            if "regions_class_order" in source_json else {}
        write_dataset_json(folder, dict(source_json["channel_names"]), dict(source_json["labels"]), len(results),
                           ending, name, f"Pseudo-masks by tumorsynth_pseudolabel from box annotations, model of "
                           f"{source_name}", tumorsynth_pseudolabel=settings, **regions)
    return os.path.join(raw, name)


# ---------------------------------------------------------------------------------------------------
# A folder of cases: what tumorsynth_pseudolabel does
# ---------------------------------------------------------------------------------------------------


def pseudolabel_folder(settings: PseudolabelSettings) -> list[dict]:
    """Pseudo-label every case of ``settings.annotations``; returns one summary per case (see
    :func:`pseudolabel_case`).

    Writes ``<output_folder>/<case><ending>`` (the model's file ending), ``pseudolabel_summary.json`` and
    ``pseudolabel_log.txt`` there, and with ``as_dataset`` the nnU-Net dataset (with its own
    ``pseudolabel_summary.json``). Cases whose images are missing or unreadable are reported and skipped;
    :class:`PseudolabelError` when no case is left or an input is wrong.
    """
    raw = check_outputs(settings)
    model = find_model(settings)
    cases = read_cases(settings, model.dataset_json)
    if settings.output_folder is not None:
        return _pseudolabel_into(settings.output_folder, False, settings, model, cases, raw)
    with tempfile.TemporaryDirectory(prefix="tumorsynth_pseudolabel.") as staging:  # only the dataset is kept
        return _pseudolabel_into(staging, True, settings, model, cases, raw)


def _pseudolabel_into(out: str, staged: bool, settings: PseudolabelSettings, model: BoxModel, cases: list[BoxCase],
                      raw: str | None) -> list[dict]:
    folder, ending = model.folder, model.dataset_json["file_ending"]
    _prepare_output_folder(out, cases, ending, settings)
    log = Logger(None if staged else os.path.join(out, "pseudolabel_log.txt"))

    todo, missing = cases_with_images(cases, log)
    missing_ids = {c.case_id for c, _ in missing}

    device = _device(settings.device)
    predictor, trainer_class = load_predictor(folder, settings.fold, settings.checkpoint, device,
                                              settings.use_mirroring, settings.step_size)
    organ, tumour = organ_and_tumour_labels(model.dataset_json, settings.organ_label or trainer_class.organ_label,
                                            settings.tumour_label or trainer_class.tumour_label)
    record = {"model": folder, "fold": settings.fold, "checkpoint": settings.checkpoint, "trainer": settings.trainer,
              "annotations": settings.annotations, "images": settings.images, "phases": settings.phases_given,
              "categories": settings.categories_given, "margin_mm": settings.margin_mm, "organ_label": organ,
              "tumour_label": tumour, "mirroring": settings.use_mirroring, "device": str(device)}
    log(f"tumorsynth_pseudolabel: {len(todo)} case(s), model {folder} fold {settings.fold}, "
        + ("tumour outside the boxes is kept" if settings.margin_mm is None else
           f"tumour outside boxes + {settings.margin_mm:g} mm is removed") + f", device {device}")

    results, failed = pseudolabel_cases(todo, predictor, organ, tumour, settings.margin_mm, out, ending,
                                        settings.save_boxes, log)

    summary = {"settings": record, "cases": results, "failed": failed,
               "missing_images": [{"case": c.case_id, "source": c.source, "file": f} for c, f in missing]}
    if settings.as_dataset is not None and results:
        target = write_pseudo_dataset(raw, settings.as_dataset, model.dataset_name, model.dataset_json, results, out,
                                      record, settings.overwrite)
        write_json_atomic(summary, os.path.join(target, "pseudolabel_summary.json"))
        log(f"wrote {target} ({len(results)} cases). Next: nnUNetv2_plan_and_preprocess -d {settings.as_dataset} "
            f"--verify_dataset_integrity")
    if not staged:
        write_json_atomic(summary, os.path.join(out, "pseudolabel_summary.json"))
        log(f"wrote {len(results)} label map(s) to {out}")
    seconds = [r["seconds"] for r in results]
    if seconds:
        log(f"{np.mean(seconds):.2f} s per case on average")
    if failed or missing:
        log(f"{len(failed)} case(s) failed and {len(missing_ids)} had missing images; see pseudolabel_summary.json")
    if not results:
        raise PseudolabelError("no case could be pseudo-labelled")
    return results
