"""Box-guided pseudo-labelling (Quinton et al. 2026, section 2.1): pseudo-masks (organ and tumour) from tumour boxes.

From Python, the same as the command ``tumorsynth_pseudolabel`` (which is argparse plus this one call)::

    from nnunetv2_tumorsynth.boxes.pseudolabel import pseudolabel_folder
    from nnunetv2_tumorsynth.boxes.pseudolabel_settings import PseudolabelSettings

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

import os
import shutil
import tempfile
import time
import warnings

import numpy as np
import SimpleITK as sitk
import torch

from nnunetv2_tumorsynth.boxes import (
    BoxCase,
    boxes_in_image,
    margin_in_voxels,
    rasterise,
    read_box_annotations,
    restrict_tumour_to_boxes,
    to_preprocessed_grid,
)
from nnunetv2_tumorsynth.boxes.box_model import BoxModel, find_model, load_predictor, pick_device
from nnunetv2_tumorsynth.boxes.pseudolabel_settings import PseudolabelError, PseudolabelSettings, UnreadableImage
from nnunetv2_tumorsynth.files import (
    CorruptFile,
    atomic_path,
    check_complete,
    existing_datasets,
    new_raw_dataset,
    write_dataset_json,
    write_json_atomic,
)
from nnunetv2_tumorsynth.log import Logger
from nnunetv2_tumorsynth.nnunet import organ_and_tumour_labels

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


def cases_with_images(cases: list[BoxCase], log: Logger) -> tuple[list[BoxCase], list[tuple[BoxCase, str]],
                                                                    list[dict]]:
    """(cases whose image files all exist and are complete, (case, file) for each missing file, a failure record
    for each case with a truncated or corrupt image). Missing and corrupt ones are logged and skipped: SimpleITK would
    read a truncated .nii.gz with zeros past the cut, and --as-dataset would copy it."""
    missing = [(c, f) for c in cases for f in c.image_files if not os.path.isfile(f)]
    if missing:
        log(f"WARNING: {len(missing)} image file(s) missing; these cases are skipped:")
        for c, f in missing:
            log(f"  {c.case_id} ({c.source}): {f}")
    missing_ids = {c.case_id for c, _ in missing}
    todo, corrupt = [], []
    for case in cases:
        if case.case_id in missing_ids:
            continue
        try:
            for path in case.image_files:
                check_complete(path)
        except CorruptFile as e:
            corrupt.append({"case": case.case_id, "source": case.source, "error": str(e)})
            log(f"ERROR {case.case_id} ({case.source}): {e}; this case is skipped")
            continue
        todo.append(case)
    if not todo:
        first = corrupt[0]["error"] if corrupt else f"{missing[0][1]} does not exist"
        raise PseudolabelError(f"none of the {len(cases)} case(s) has complete image file(s), e.g. {first}; check -i")
    return todo, missing, corrupt


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

    todo, missing, corrupt = cases_with_images(cases, log)
    missing_ids = {c.case_id for c, _ in missing}

    device = pick_device(settings.device)
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
    failed = corrupt + failed

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
