"""Box annotations, rasterising, box geometry through nnU-Net's preprocessing, the box-channel transform.

Unit tests: no training, no CLI; all data is made here (phantom geometry: anisotropic spacing, rotated
and flipped direction cosines).
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunetv2_tumorsynth.boxes import (
    AnnotationError,
    Box,
    BoxAnnotation,
    BoxAnnotationWarning,
    BoxChannelGuard,
    BoxChannelSettings,
    BoxChannelTransform,
    annotation_to_voxel_box,
    box_channel,
    box_iou,
    boxes_in_image,
    exact_box_channel,
    insert_before_deep_supervision,
    jitter_box,
    lesion_boxes,
    margin_in_voxels,
    rasterise,
    read_box_annotations,
    read_generic,
    read_lld_mmri,
    restrict_tumour_to_boxes,
    to_preprocessed_grid,
    write_lld_mmri,
)
from nnunetv2_tumorsynth.phantom import PhantomSettings, make_phantom_case, to_sitk

SPACING = PhantomSettings().spacing  # (z, y, x) mm: 3.0, 1.5, 1.5


def lld_entry(series, phase, lesions):
    return {"studyUID": "st1", "seriesUID": series, "phase": phase, "annotation": {"lesion": {
        str(k): {"category": cat, "bbox": {"3D_box": dict(zip(
            ("x_min", "y_min", "z_min", "x_max", "y_max", "z_max"), corners))}}
        for k, (cat, corners) in enumerate(lesions)}}}


def write_json(path, content):
    with open(path, "w") as f:
        json.dump(content, f)
    return str(path)


# --------------------------------------------------------------------------------------------------- parsing


def test_lld_mmri_cases_phases_inclusive_max(tmp_path):
    path = write_json(tmp_path / "Annotation.json", {"Annotation_info": {
        "MR-1": [lld_entry("s0", "C+A", [(6, (10, 20, 3, 14, 29, 5))]),
                 lld_entry("s1", "C+V", [(6, (11, 20, 3, 15, 29, 5))]),
                 lld_entry("s2", "T2WI", [(6, (10, 20, 3, 14, 29, 5))]),
                 lld_entry("s3", "C+Delay", [])],
        "MR-2": [lld_entry("s4", "C+A", [(3, (0, 0, 0, 1, 1, 1))])]}})
    cases = read_lld_mmri(path, "IMG")
    assert [c.case_id for c in cases] == ["MR-1_CA", "MR-1_CV", "MR-1_CDelay", "MR-2_CA"]
    assert cases[0].image_files == [os.path.join("IMG", "MR-1", "st1", "s0.nii.gz")]
    assert cases[2].boxes == [] and cases[0].phase == "C+A"
    image = sitk.Image(40, 40, 8, sitk.sitkUInt8)
    box = annotation_to_voxel_box(cases[0].boxes[0], image)
    # x_max etc. are inclusive: x 10..14 is 5 voxels; the Box is (z, y, x) half-open
    assert (box.lo, box.hi) == ((3, 20, 10), (6, 30, 15))
    assert rasterise([box], (8, 40, 40)).sum() == 3 * 10 * 5
    assert len(read_lld_mmri(path, "IMG", phases=None)) == 5


def test_lld_mmri_categories_skip_mixed_series(tmp_path):
    path = write_json(tmp_path / "Annotation.json", {"Annotation_info": {
        "MR-1": [lld_entry("s0", "C+A", [(6, (1, 1, 1, 2, 2, 2)), (4, (5, 5, 1, 6, 6, 2))])],
        "MR-2": [lld_entry("s1", "C+A", [(6, (1, 1, 1, 2, 2, 2))])],
        "MR-3": [lld_entry("s2", "C+A", [(0, (1, 1, 1, 2, 2, 2))])]}})
    with pytest.warns(BoxAnnotationWarning, match="MR-1.*only partly"):
        cases = read_lld_mmri(path, "IMG", categories=(6,))
    assert [c.case_id for c in cases] == ["MR-2_CA"]


@pytest.mark.parametrize("entry, message", [
    ({"studyUID": "a", "seriesUID": "b", "phase": "C+A"}, "patient MR-7, entry 0: missing annotation"),
    (lld_entry("b", "C+A", [(6, (1, 1, 1, 2, 2, 2))]) | {"annotation": {"lesion": {"0": {"category": 6}}}},
     "patient MR-7, entry 0.*lesion 0.*3D_box"),
    (lld_entry("b", "C+A", [(6, (5, 1, 1, 2, 2, 2))]), "patient MR-7, entry 0.*lesion 0.*x_max 2 < x_min 5"),
    (lld_entry("b", "C+A", [(6, (1, "a", 1, 2, 2, 2))]), "patient MR-7, entry 0.*y_min must be a number"),
    (lld_entry("b", "C+A", [("HCC", (1, 1, 1, 2, 2, 2))]), "lesion 0: category must be an integer"),
])
def test_lld_mmri_malformed_entries_name_patient_and_entry(tmp_path, entry, message):
    path = write_json(tmp_path / "Annotation.json", {"Annotation_info": {"MR-7": [entry]}})
    with pytest.raises(AnnotationError, match=message):
        read_lld_mmri(path, "IMG")


def test_lld_mmri_missing_corner_and_bad_json(tmp_path):
    entry = lld_entry("b", "C+A", [(6, (1, 1, 1, 2, 2, 2))])
    del entry["annotation"]["lesion"]["0"]["bbox"]["3D_box"]["z_max"]
    path = write_json(tmp_path / "Annotation.json", {"Annotation_info": {"MR-7": [entry]}})
    with pytest.raises(AnnotationError, match="MR-7, entry 0 .*missing z_max"):
        read_lld_mmri(path, "IMG")
    (tmp_path / "broken.json").write_text('{"Annotation_info": {"MR-7": [')
    with pytest.raises(AnnotationError, match="broken.json is not valid JSON"):
        read_box_annotations(str(tmp_path / "broken.json"), "IMG")
    with pytest.raises(AnnotationError, match="does not exist"):
        read_box_annotations(str(tmp_path / "nope.json"), "IMG")


def test_generic_json_folder_and_csv(tmp_path):
    folder = tmp_path / "boxes"
    folder.mkdir()
    write_json(folder / "caseA.json", {"boxes": [{"x_min": 1, "y_min": 2, "z_min": 3, "x_max": 4, "y_max": 5,
                                                  "z_max": 3}]})
    write_json(folder / "caseB.json", {"space": "world", "image": "other/b.nii.gz", "boxes": []})
    cases = read_box_annotations(str(folder), "IMG", num_channels=2)
    assert [c.case_id for c in cases] == ["caseA", "caseB"]
    assert cases[0].image_files == [os.path.join("IMG", "caseA_0000.nii.gz"), os.path.join("IMG", "caseA_0001.nii.gz")]
    assert cases[1].image_files == [os.path.join("IMG", "other", "b.nii.gz")]
    box = annotation_to_voxel_box(cases[0].boxes[0], sitk.Image(10, 10, 10, sitk.sitkUInt8))
    assert (box.lo, box.hi) == ((3, 2, 1), (4, 6, 5)), "z_min == z_max is a one-slice (2D) box"

    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text("case,x_min,y_min,z_min,x_max,y_max,z_max\nc1,1,2,3,4,5,6\nc1,7,7,7,8,8,8\nc2,,,,,,\n")
    cases = read_generic(str(csv_path), "IMG")
    assert [(c.case_id, len(c.boxes)) for c in cases] == [("c1", 2), ("c2", 0)]
    csv_path.write_text("case,x_min,y_min,z_min,x_max,y_max,z_max\nc1,1,2,3,4,,6\n")
    with pytest.raises(AnnotationError, match="case c1, box 0: missing y_max"):
        read_generic(str(csv_path), "IMG")
    write_json(folder / "caseC.json", {"space": "pixels", "boxes": []})
    with pytest.raises(AnnotationError, match="caseC.json: space must be 'voxel' or 'world'"):
        read_generic(str(folder / "caseC.json"), "IMG")


def test_world_boxes_follow_direction_and_spacing():
    image = to_sitk(np.zeros((20, 40, 40), np.float32), SPACING)
    assert not np.allclose(np.array(image.GetDirection()).reshape(3, 3), np.eye(3))
    lo_idx, hi_idx = (5, 8, 3), (17, 30, 11)  # (x, y, z) inclusive
    corners = [image.TransformIndexToPhysicalPoint((x, y, z)) for x in (lo_idx[0], hi_idx[0])
               for y in (lo_idx[1], hi_idx[1]) for z in (lo_idx[2], hi_idx[2])]
    world = BoxAnnotation(tuple(np.min(corners, 0)), tuple(np.max(corners, 0)), "world")
    box = annotation_to_voxel_box(world, image)
    # the world box is the axis-aligned hull of a rotated voxel box: it contains the voxel box
    assert all(a <= b for a, b in zip(box.lo, (3, 8, 5))) and all(a >= b for a, b in zip(box.hi, (12, 31, 18)))
    voxel = annotation_to_voxel_box(BoxAnnotation(lo_idx, hi_idx, "voxel"), image)
    assert (voxel.lo, voxel.hi) == ((3, 8, 5), (12, 31, 18))
    # an ImageFileReader (header only) gives the same answer as the image
    reader_like = type("Header", (), {"GetOrigin": image.GetOrigin, "GetSpacing": image.GetSpacing,
                                      "GetDirection": image.GetDirection, "GetSize": image.GetSize})()
    assert annotation_to_voxel_box(world, reader_like) == box


def test_boxes_partly_outside_are_clipped_wholly_outside_skipped():
    image = sitk.Image(30, 20, 10, sitk.sitkUInt8)  # (x, y, z) size -> array (10, 20, 30)
    inside = BoxAnnotation((2, 2, 2), (5, 5, 5), source="lesion 0")
    partly = BoxAnnotation((25, 2, 2), (40, 5, 5), source="lesion 1")
    outside = BoxAnnotation((2, 2, 12), (5, 5, 15), source="lesion 2")
    with pytest.warns(BoxAnnotationWarning) as record:
        boxes = boxes_in_image([inside, partly, outside], image)
    messages = [str(r.message) for r in record]
    assert any("lesion 1" in m and "clipped" in m for m in messages)
    assert any("lesion 2" in m and "skipped" in m for m in messages)
    assert [b.source for b in boxes] == ["lesion 0", "lesion 1"]
    assert boxes[1].hi == (6, 6, 30)


def test_write_lld_mmri_round_trip(tmp_path):
    boxes = [Box((1, 2, 3), (4, 6, 9)), Box((0, 0, 0), (1, 1, 1))]
    write_lld_mmri({"P1": [{"studyUID": "s", "seriesUID": "t", "phase": "C+V", "boxes": boxes}]},
                   str(tmp_path / "a.json"))
    case = read_lld_mmri(str(tmp_path / "a.json"), "IMG")[0]
    image = sitk.Image(20, 20, 20, sitk.sitkUInt8)
    assert [(b.lo, b.hi) for b in boxes_in_image(case.boxes, image)] == [(b.lo, b.hi) for b in boxes]


# --------------------------------------------------------------------------------------------------- training boxes


def test_lesion_boxes_3d_and_per_slice():
    tumour = np.zeros((6, 12, 12), bool)
    tumour[1:4, 2:5, 3:6] = True  # a block
    tumour[2, 2, 6] = True        # widens slice 2 only
    tumour[4, 9, 9] = True        # a second lesion (not touching the first)
    lesions = lesion_boxes(tumour)
    assert [(b.lo, b.hi) for lesion in lesions for b in lesion] == [((1, 2, 3), (4, 5, 7)), ((4, 9, 9), (5, 10, 10))]
    slices = lesion_boxes(tumour, slice_axis=0)
    assert [[(b.lo, b.hi) for b in lesion] for lesion in slices] == [
        [((1, 2, 3), (2, 5, 6)), ((2, 2, 3), (3, 5, 7)), ((3, 2, 3), (4, 5, 6))], [((4, 9, 9), (5, 10, 10))]]
    assert rasterise([b for lesion in slices for b in lesion], tumour.shape).sum() < rasterise(
        [b for lesion in lesions for b in lesion], tumour.shape).sum()
    assert (exact_box_channel(tumour, per_slice=True) >= tumour).all()


def test_jitter_is_in_mm_per_axis():
    box = Box((10, 20, 20), (14, 30, 30))
    shape = (32, 64, 64)
    fixed = jitter_box(box, shape, SPACING, (3.0, 3.0), np.random.default_rng(0))
    # 3 mm outward: 1 voxel along z (3 mm), 2 voxels along y and x (1.5 mm)
    assert (fixed.lo, fixed.hi) == ((9, 18, 18), (15, 32, 32))
    inward = jitter_box(box, shape, SPACING, (-3.0, -3.0), np.random.default_rng(0), fixed_axes=(0,))
    assert (inward.lo, inward.hi) == ((10, 22, 22), (14, 28, 28))
    tiny = jitter_box(Box((5, 5, 5), (6, 6, 6)), shape, SPACING, (-9.0, -9.0), np.random.default_rng(0))
    assert tiny.shape == (1, 1, 1), "a box never vanishes"
    edge = jitter_box(Box((0, 0, 0), (2, 2, 2)), shape, SPACING, (6.0, 6.0), np.random.default_rng(0))
    assert edge.lo == (0, 0, 0), "clipped to the patch"
    rng = np.random.default_rng(1)
    sizes = [jitter_box(box, shape, SPACING, (-2.0, 4.0), rng).shape[1] for _ in range(300)]
    assert min(sizes) >= 10 - 2 * 1 and max(sizes) <= 10 + 2 * 3 and len(set(sizes)) > 3
    assert margin_in_voxels(5.0, SPACING) == (2, 4, 4)


def test_box_dropout_per_lesion_and_per_sample():
    tumour = np.zeros((8, 32, 32), bool)
    tumour[2:5, 2:6, 2:6] = True
    tumour[2:5, 20:26, 20:26] = True
    rng = np.random.default_rng(0)
    none = BoxChannelSettings(p_drop_all=1.0)
    assert not box_channel(tumour, SPACING, none, rng).any()
    assert not box_channel(tumour, SPACING, BoxChannelSettings(p_drop_lesion=1.0, p_drop_all=0.0), rng).any()
    exact = BoxChannelSettings().exact()
    assert (box_channel(tumour, SPACING, exact, rng) == tumour).all(), "blocks are their own boxes"
    half = BoxChannelSettings(jitter_mm=(0, 0), p_drop_lesion=0.5, p_drop_all=0.2)
    counts = {0: 0, 1: 0, 2: 0}
    for _ in range(400):
        channel = box_channel(tumour, SPACING, half, rng)
        counts[int(channel[:, :16, :16].any()) + int(channel[:, 16:, 16:].any())] += 1
    # P(no boxes) = 0.2 + 0.8 * 0.25 = 0.4, P(one) = 0.8 * 0.5 = 0.4, P(both) = 0.8 * 0.25 = 0.2
    assert abs(counts[0] / 400 - 0.4) < 0.08 and abs(counts[1] / 400 - 0.4) < 0.08 and abs(counts[2] / 400 - 0.2) < 0.08
    assert not box_channel(np.zeros_like(tumour), SPACING, exact, rng).any()


def test_transform_inside_nnunet_pipeline_keeps_channel_binary():
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    patch = (16, 32, 32)
    transforms = nnUNetTrainer.get_training_transforms(
        patch, (-0.5, 0.5), [[1, 1, 1], [1, 0.5, 0.5]], (0, 1, 2), False, foreground_labels=[1, 2])
    box_transform = BoxChannelTransform(2, SPACING, BoxChannelSettings(p_drop_all=0.0), 0, np.random.default_rng(0))
    insert_before_deep_supervision(transforms, box_transform)
    names = [type(t).__name__ for t in transforms.transforms]
    assert names.index("BoxChannelTransform") == names.index(DownsampleSegForDSTransform.__name__) - 1
    rng = np.random.default_rng(3)
    image, label = make_phantom_case(rng, PhantomSettings(shape=(16, 32, 32), tumour_radius_mm=(5, 7)))
    n_tumour_boxes = 0
    for _ in range(6):
        out = transforms(image=torch.from_numpy(image[None].copy()), segmentation=torch.from_numpy(label[None].copy()))
        assert out["image"].shape == (2, *patch)
        channel = out["image"][1].numpy()
        assert set(np.unique(channel)) <= {0.0, 1.0}, "the box channel stays exactly binary"
        tumour = out["segmentation"][0][0].numpy() == 2
        if tumour.any() and channel.any():
            n_tumour_boxes += 1
            assert (channel.astype(bool) | ~tumour).mean() > 0.99, "boxes cover the augmented tumour"
    assert n_tumour_boxes > 0


def test_guard_names_tumorsynth_pseudolabel():
    conv = torch.nn.Conv3d(2, 1, 1)
    conv.register_forward_pre_hook(BoxChannelGuard(2))
    assert conv(torch.zeros(1, 2, 2, 2, 2)).shape == (1, 1, 2, 2, 2)
    with pytest.raises(RuntimeError, match="nnUNetv2_predict feeds.*tumorsynth_pseudolabel"):
        conv(torch.zeros(1, 1, 2, 2, 2))


def test_restrict_tumour_to_boxes():
    seg = np.zeros((4, 20, 20), np.uint8)
    seg[:, 2:14, 2:14] = 1
    seg[1:3, 3:6, 3:6] = 2     # inside the box
    seg[1:3, 9:12, 9:12] = 2   # in the organ, outside the box -> organ
    seg[1:3, 16:19, 16:19] = 2  # outside the organ and the box -> background
    allowed = rasterise([Box((0, 2, 2), (4, 7, 7))], seg.shape)
    out, removed = restrict_tumour_to_boxes(seg, allowed, organ_label=1, tumour_label=2)
    assert removed == 2 * 9 * 2
    assert (out[1:3, 3:6, 3:6] == 2).all() and (out[1:3, 9:12, 9:12] == 1).all() and (out[1:3, 16:19, 16:19] == 0).all()


# --------------------------------------------------------------------------------------------------- geometry


def make_plans(transpose=(0, 2, 1), spacing=(2.4, 1.2, 1.0)) -> dict:
    """Hand-made nnU-Net plans with a non-trivial transpose and resampling (spacing in transposed order)."""
    config = {
        "data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [16, 32, 32], "median_image_size_in_voxels": [32, 64, 64], "spacing": list(spacing),
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": {}, "_kw_requires_import": []},
        "batch_dice": False,
    }
    backward = [int(i) for i in np.argsort(transpose)]
    return {"dataset_name": "Dataset999_Test", "plans_name": "test", "image_reader_writer": "SimpleITKIO",
            "transpose_forward": list(transpose), "transpose_backward": backward, "label_manager": "LabelManager",
            "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": [32, 64, 64],
            "experiment_planner_used": "ExperimentPlanner",
            "foreground_intensity_properties_per_channel": {"0": {"mean": 120.0, "std": 15.0, "percentile_00_5": 90.0,
                                                                  "percentile_99_5": 190.0}},
            "configurations": {"3d_fullres": config}}


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    """A phantom case on disk with zero padding (so nnU-Net crops) and its tumour boxes in LLD-MMRI form."""
    folder = tmp_path_factory.mktemp("geometry")
    image, label = make_phantom_case(np.random.default_rng(7), PhantomSettings(tumour_radius_mm=(7.0, 11.0)))
    image[:3] = 0
    image[:, :, -6:] = 0
    label[:3] = 0
    label[:, :, -6:] = 0
    assert (label == 2).any()
    sitk.WriteImage(to_sitk(image, SPACING), str(folder / "case_0000.nii.gz"))
    sitk.WriteImage(to_sitk(label, SPACING), str(folder / "case.nii.gz"))
    boxes = [b for lesion in lesion_boxes(label == 2) for b in lesion]
    write_lld_mmri({"P": [{"studyUID": "s", "seriesUID": "t", "phase": "C+A", "boxes": boxes}]},
                   str(folder / "Annotation.json"))
    return folder


@pytest.mark.parametrize("transpose, spacing", [((0, 1, 2), (3.0, 1.5, 1.5)), ((0, 2, 1), (2.4, 1.2, 1.0))])
def test_boxes_through_preprocessing_match_ground_truth_boxes(phantom_files, transpose, spacing):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(make_plans(transpose, spacing))
    config = plans_manager.get_configuration("3d_fullres")
    dataset_json = {"labels": {"background": 0, "liver": 1, "tumour": 2}, "channel_names": {"0": "MRI"}}
    rw = SimpleITKIO()
    data, properties = rw.read_images([str(phantom_files / "case_0000.nii.gz")])
    label, _ = rw.read_seg(str(phantom_files / "case.nii.gz"))
    case = read_lld_mmri(str(phantom_files / "Annotation.json"), str(phantom_files))[0]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(phantom_files / "case_0000.nii.gz"))
    reader.ReadImageInformation()
    boxes = boxes_in_image(case.boxes, reader)
    box_original = rasterise(boxes, data.shape[1:])
    assert (box_original >= (label[0] == 2)).all(), "the annotation covers the tumour in the original grid"

    preprocessor = DefaultPreprocessor(verbose=False)
    data_pp, seg_pp, props = preprocessor.run_case_npy(data.copy(), label.copy(), copy.deepcopy(properties),
                                                       plans_manager, config, dataset_json)
    assert props["bbox_used_for_cropping"] != [[0, n] for n in data.shape[1:]], "nnU-Net cropped"
    box_pp = to_preprocessed_grid(box_original, props, plans_manager, config)
    assert box_pp.shape == data_pp.shape[1:]
    # the boxes of the preprocessed ground truth (what the trainer sees) vs the carried annotation
    truth_pp = exact_box_channel(seg_pp[0] == 2, per_slice=False)
    iou = box_iou(box_pp, truth_pp)
    print(f"IoU of boxes in preprocessed space: {iou:.4f}, transpose {transpose}, spacing {spacing}")
    assert iou >= 0.95, iou
    # same as giving the raster to nnU-Net's preprocessor as the segmentation
    _, box_as_seg, _ = preprocessor.run_case_npy(data.copy(), box_original[None].astype(np.int8),
                                                 copy.deepcopy(properties), plans_manager, config, dataset_json)
    assert (box_pp == (box_as_seg[0] == 1)).all()
    # nnU-Net's export path brings preprocessed-space labels back onto the original grid
    logits = torch.from_numpy(np.stack([(seg_pp[0] == k) for k in range(3)]).astype(np.float32))
    back = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, plans_manager, config, plans_manager.get_label_manager(dataset_json), props)
    assert back.shape == label.shape[1:]
    tumour = label[0] == 2
    dice = 2 * (tumour & (back == 2)).sum() / (tumour.sum() + (back == 2).sum())
    assert dice > 0.9, dice


def test_models_without_box_channel_are_refused():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_tumorsynth.boxes.box_model import check_box_model
    from nnunetv2_tumorsynth.boxes.pseudolabel_settings import PseudolabelError

    class BoxTrainer(nnUNetTrainer):
        uses_box_channel = True

    two = {"trainer_name": "BoxTrainer", "network_weights": {"encoder.conv.weight": torch.zeros(4, 2, 3, 3, 3)}}
    check_box_model(two, BoxTrainer, 1, "ck.pth")
    with pytest.raises(PseudolabelError, match="ck.pth was trained by nnUNetTrainer .*no tumour box channel"):
        check_box_model(dict(two, trainer_name="nnUNetTrainer"), nnUNetTrainer, 1, "ck.pth")
    one = {"trainer_name": "BoxTrainer", "network_weights": {"encoder.conv.weight": torch.zeros(4, 1, 3, 3, 3)}}
    with pytest.raises(PseudolabelError, match="1 input channel.*nnUNetv2_train DATASET"):
        check_box_model(one, BoxTrainer, 1, "ck.pth")
