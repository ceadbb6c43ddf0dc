"""``tumorsynth_pseudolabel``: pseudo-masks (organ and tumour) from tumour bounding boxes.

Usage::

    tumorsynth_pseudolabel -bbox Annotation.json -i LLD-MMRI/images -o pseudo -d 501 -c 3d_fullres -f 0 \\
        [-tr nnUNetTrainerBBoxChannel] [-p nnUNetPlans] [--phases C+A C+V C+Delay] [--categories 6] \\
        [--margin-mm 5] [--as-dataset 502] [-device cpu|cuda] [--overwrite]

For each case (one LLD-MMRI series, or one case of the generic box format, see
:func:`nnunetv2_tumorsynth.bbox.read_generic`) the boxes are rasterised in the image's own voxel grid,
carried through nnU-Net's preprocessing geometry (transpose, crop, resample) next to the image,
appended as the last input channel, and the box-guided model (``nnUNetTrainerBBoxChannel``) predicts
with nnU-Net's sliding-window predictor. The label map is exported in the original geometry through
nnU-Net's export path. Predicted tumour outside every box (plus ``--margin-mm``) is removed: it
becomes organ where it is mostly surrounded by organ, else background. ``--as-dataset`` also writes
``$nnUNet_raw/Dataset<ID>_<source>Pseudo`` (imagesTr, labelsTr, dataset.json).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np
import SimpleITK as sitk
import torch

from nnunetv2_tumorsynth.bbox import (
    PAPER_PHASES,
    AnnotationError,
    BoxCase,
    boxes_in_image,
    margin_in_voxels,
    rasterise,
    read_box_annotations,
    restrict_tumour_to_boxes,
    to_preprocessed_grid,
)
from nnunetv2_tumorsynth.nnunet import dataset_name, organ_and_tumour_labels, write_json_atomic


class PseudolabelError(RuntimeError):
    """Bad input for tumorsynth_pseudolabel; the message says what to fix."""


class UnreadableImage(PseudolabelError):
    """An image file that SimpleITK / nnU-Net cannot read; that case is skipped."""


def model_folder(name: str, trainer: str, plans: str, configuration: str) -> str:
    from nnunetv2.paths import nnUNet_results

    if not nnUNet_results:
        raise PseudolabelError("nnUNet_results is not set; export nnUNet_results=/path/to/nnUNet_results")
    return os.path.join(nnUNet_results, name, f"{trainer}__{plans}__{configuration}")


def _ensure_trainers_findable() -> None:
    """Let nnU-Net find our trainer classes even if ``eval "$(tumorsynth_env)"`` was not run."""
    from nnunetv2_tumorsynth.cli.env import trainers_path

    ours = trainers_path()
    listed = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if ours not in listed:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([ours, *listed])


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
    """nnU-Net's predictor for a trained box-channel model, after checking it really has the box channel."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    fold = fold if fold == "all" else int(fold)
    checkpoint_path = os.path.join(folder, f"fold_{fold}", checkpoint_name)
    if not os.path.isfile(checkpoint_path):
        raise PseudolabelError(f"{checkpoint_path} does not exist. Train the box-guided model first, e.g. "
                               f"nnUNetv2_train DATASET CONFIGURATION {fold} -tr nnUNetTrainerBBoxChannel")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    _ensure_trainers_findable()
    trainer_class = recursive_find_trainer_class_by_name(checkpoint["trainer_name"])
    num_image_channels = len(load_json(os.path.join(folder, "dataset.json"))["channel_names"])
    check_box_model(checkpoint, trainer_class, num_image_channels, checkpoint_path)
    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(folder, (fold,), checkpoint_name)
    return predictor, trainer_class


class Log:
    """Print and append to a log file."""

    def __init__(self, path: str | None):
        self.path = path

    def __call__(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")


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

    _write_atomic(rw, segmentation, output_file, properties)
    if box_file is not None:
        _write_atomic(rw, box_mask.astype(np.uint8), box_file, properties)
    return {
        "case": case.case_id, "source": case.source, "images": case.image_files, "phase": case.phase,
        "boxes_zyx": [[list(b.lo), list(b.hi)] for b in boxes], "warnings": [str(w.message) for w in caught],
        "tumour_voxels_predicted": tumour_before, "tumour_voxels_removed_outside_boxes": removed,
        "tumour_voxels": int((segmentation == tumour).sum()), "organ_voxels": int((segmentation == organ).sum()),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _write_atomic(rw, segmentation: np.ndarray, path: str, properties: dict) -> None:
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".tmp{os.getpid()}_{name}")  # keeps the file ending for the writer
    rw.write_seg(segmentation, tmp, properties)
    os.replace(tmp, path)


def _existing_dataset(raw: str, dataset_id: int) -> list[str]:
    prefix = f"Dataset{dataset_id:03d}_"
    return sorted(d for d in os.listdir(raw) if d.startswith(prefix)) if os.path.isdir(raw) else []


def write_pseudo_dataset(raw: str, dataset_id: int, source_name: str, source_json: dict, results: list[dict],
                         label_folder: str, settings: dict, overwrite: bool) -> str:
    """``$nnUNet_raw/Dataset<ID>_<source>Pseudo``: the images (copied) and pseudo-masks as imagesTr/labelsTr
    with the source dataset's labels and channel names. Built in a temporary folder and renamed into place."""
    short = source_name.split("_", 1)[1] if "_" in source_name else source_name
    name = f"Dataset{dataset_id:03d}_{short}Pseudo"
    taken = _existing_dataset(raw, dataset_id)
    if taken and not overwrite:
        raise PseudolabelError(f"{os.path.join(raw, taken[0])} already exists; choose another id or pass --overwrite")
    ending = source_json["file_ending"]
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=raw)
    try:
        os.makedirs(os.path.join(tmp, "imagesTr"))
        os.makedirs(os.path.join(tmp, "labelsTr"))
        for r in results:
            for c, image in enumerate(r["images"]):
                target = os.path.join(tmp, "imagesTr", f"{r['case']}_{c:04d}{ending}")
                if image.endswith(ending):
                    shutil.copyfile(image, target)
                else:
                    sitk.WriteImage(sitk.ReadImage(image), target, True)
            shutil.copyfile(os.path.join(label_folder, f"{r['case']}{ending}"),
                            os.path.join(tmp, "labelsTr", f"{r['case']}{ending}"))
        dataset_json = {
            "channel_names": source_json["channel_names"],
            "labels": source_json["labels"],
            "numTraining": len(results),
            "file_ending": ending,
            "name": name,
            "description": f"Pseudo-masks by tumorsynth_pseudolabel from box annotations, model of {source_name}",
            "tumorsynth_pseudolabel": settings,
        }
        write_json_atomic(dataset_json, os.path.join(tmp, "dataset.json"))
        for d in taken:
            shutil.rmtree(os.path.join(raw, d))
        os.replace(tmp, os.path.join(raw, name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.path.join(raw, name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Pseudo-masks (organ and tumour) from tumour bounding boxes with a box-guided nnU-Net "
        "(nnUNetTrainerBBoxChannel). Reads LLD-MMRI's Annotation.json or the generic box format (see README).")
    parser.add_argument("-bbox", required=True, help="LLD-MMRI Annotation.json, or generic boxes: a JSON per case, a "
                        "folder of them, or a CSV")
    parser.add_argument("-i", required=True, help="image folder (LLD-MMRI: <patient>/<study>/<series>.nii.gz)")
    parser.add_argument("-o", default=None, help="output folder for the label maps (optional with --as-dataset)")
    parser.add_argument("-d", required=True, help="dataset the box-guided model was trained on (id or name)")
    parser.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-f", default="0", help="fold (default 0)")
    parser.add_argument("-tr", default="nnUNetTrainerBBoxChannel", help="trainer (default nnUNetTrainerBBoxChannel)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name (default checkpoint_final.pth)")
    parser.add_argument("--phases", nargs="+", default=list(PAPER_PHASES),
                        help="LLD-MMRI phases to use, each its own case (default: C+A C+V C+Delay, as in the paper; "
                        "'all' keeps every phase)")
    parser.add_argument("--categories", nargs="+", type=int, default=None,
                        help="LLD-MMRI lesion categories: keep series whose lesions all have one of them "
                        "(6 = hepatocellular carcinoma; default: all)")
    parser.add_argument("--margin-mm", type=float, default=5.0,
                        help="tumour further than this from every box is removed (mm, default 5)")
    parser.add_argument("--keep-outside", action="store_true",
                        help="keep predicted tumour outside the boxes (default: removed, see --margin-mm)")
    parser.add_argument("--organ-label", default=None, help="organ label name or value (default: from dataset.json)")
    parser.add_argument("--tumour-label", default=None, help="tumour label name or value (default: from dataset.json)")
    parser.add_argument("--as-dataset", type=int, default=None, metavar="ID",
                        help="also write $nnUNet_raw/Dataset<ID>_<source>Pseudo (imagesTr, labelsTr, dataset.json)")
    parser.add_argument("--save-boxes", action="store_true", help="also write the box rasters to <-o>/boxes/")
    parser.add_argument("-device", default=None, choices=["cpu", "cuda", "mps"],
                        help="default: cuda when available, else cpu")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step (fraction of the patch)")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring at test time (faster)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (PseudolabelError, AnnotationError, FileNotFoundError, ValueError) as e:
        print(f"tumorsynth_pseudolabel: error: {e}", file=sys.stderr)
        sys.exit(2)


def run(args: argparse.Namespace) -> list[dict]:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.paths import nnUNet_raw
    from tqdm import tqdm

    if args.o is None and args.as_dataset is None:
        raise PseudolabelError("give an output folder (-o OUT) or --as-dataset ID")
    if args.as_dataset is not None:
        if not nnUNet_raw:
            raise PseudolabelError("--as-dataset needs nnUNet_raw; export nnUNet_raw=/path/to/nnUNet_raw")
        taken = _existing_dataset(str(nnUNet_raw), args.as_dataset)
        if taken and not args.overwrite:
            raise PseudolabelError(f"{os.path.join(str(nnUNet_raw), taken[0])} already exists; choose another id "
                                   f"or pass --overwrite")
    name = dataset_name(args.d)
    folder = model_folder(name, args.tr, args.p, args.c)
    source_json = load_json(os.path.join(folder, "dataset.json")) if os.path.isfile(
        os.path.join(folder, "dataset.json")) else None
    if source_json is None:
        raise PseudolabelError(f"{folder} holds no trained model. Train it first: nnUNetv2_train {args.d} {args.c} "
                               f"{args.f} -tr {args.tr} -p {args.p}")
    ending = source_json["file_ending"]
    phases = None if [p.lower() for p in args.phases] == ["all"] else tuple(args.phases)
    cases = read_box_annotations(args.bbox, args.i, phases, tuple(args.categories) if args.categories else None,
                                 ending, len(source_json["channel_names"]))
    if not cases:
        raise PseudolabelError(f"{args.bbox}: no cases left after filtering (phases {args.phases}, categories "
                               f"{args.categories})")
    wrong_channels = [c.case_id for c in cases if len(c.image_files) != len(source_json["channel_names"])]
    if wrong_channels:
        raise PseudolabelError(f"the model takes {len(source_json['channel_names'])} image channel(s) "
                               f"({source_json['channel_names']}) but cases {wrong_channels[:5]} give a different "
                               f"number of images")

    staging = None
    out = args.o
    if out is None:
        staging = tempfile.mkdtemp(prefix="tumorsynth_pseudolabel.")
        out = staging
    os.makedirs(out, exist_ok=True)
    if args.save_boxes:
        os.makedirs(os.path.join(out, "boxes"), exist_ok=True)
    targets = [os.path.join(out, f"{c.case_id}{ending}") for c in cases]
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not args.overwrite:
        raise PseudolabelError(f"{len(existing)} output file(s) already exist, e.g. {existing[0]}; pass --overwrite "
                               f"to replace them")
    log = Log(os.path.join(out, "pseudolabel_log.txt") if staging is None else None)

    missing = [(c, f) for c in cases for f in c.image_files if not os.path.isfile(f)]
    if missing:
        log(f"WARNING: {len(missing)} image file(s) missing; these cases are skipped:")
        for c, f in missing:
            log(f"  {c.case_id} ({c.source}): {f}")
    missing_ids = {c.case_id for c, _ in missing}
    todo = [c for c in cases if c.case_id not in missing_ids]
    if not todo:
        raise PseudolabelError("none of the cases has its image file(s); check -i")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    predictor, trainer_class = load_predictor(folder, args.f, args.chk, device, not args.disable_tta, args.step_size)
    if predictor.plans_manager.image_reader_writer_class is not SimpleITKIO:
        raise PseudolabelError(
            f"the plans read images with {predictor.plans_manager.image_reader_writer_class.__name__}; box coordinates "
            f"are voxel indices of SimpleITK arrays, so only SimpleITKIO plans are supported")
    organ, tumour = organ_and_tumour_labels(source_json, args.organ_label or trainer_class.organ_label,
                                            args.tumour_label or trainer_class.tumour_label)
    margin_mm = None if args.keep_outside else args.margin_mm
    settings = {"model": folder, "fold": args.f, "checkpoint": args.chk, "trainer": args.tr, "annotations": args.bbox,
                "images": args.i, "phases": args.phases, "categories": args.categories, "margin_mm": margin_mm,
                "organ_label": organ, "tumour_label": tumour, "mirroring": not args.disable_tta,
                "device": str(device)}
    log(f"tumorsynth_pseudolabel: {len(todo)} case(s), model {folder} fold {args.f}, "
        + ("tumour outside the boxes is kept" if args.keep_outside else
           f"tumour outside boxes + {args.margin_mm:g} mm is removed") + f", device {device}")

    results, failed = [], []
    for case in tqdm(todo, desc="pseudo-labelling", disable=None):
        box_file = os.path.join(out, "boxes", f"{case.case_id}{ending}") if args.save_boxes else None
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

    summary = {"settings": settings, "cases": results, "failed": failed,
               "missing_images": [{"case": c.case_id, "source": c.source, "file": f} for c, f in missing]}
    try:
        if args.as_dataset is not None and results:
            target = write_pseudo_dataset(str(nnUNet_raw), args.as_dataset, name, source_json, results, out, settings,
                                          args.overwrite)
            write_json_atomic(summary, os.path.join(target, "pseudolabel_summary.json"))
            log(f"wrote {target} ({len(results)} cases). Next: nnUNetv2_plan_and_preprocess -d {args.as_dataset} "
                f"--verify_dataset_integrity")
        if staging is None:
            write_json_atomic(summary, os.path.join(out, "pseudolabel_summary.json"))
            log(f"wrote {len(results)} label map(s) to {out}")
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    seconds = [r["seconds"] for r in results]
    if seconds:
        log(f"{np.mean(seconds):.2f} s per case on average")
    if failed or missing:
        log(f"{len(failed)} case(s) failed and {len(missing_ids)} had missing images; see pseudolabel_summary.json")
    if not results:
        raise PseudolabelError("no case could be pseudo-labelled")
    return results


if __name__ == "__main__":
    main()
