"""The few helpers that talk to nnU-Net: dataset names, plans, splits, label roles, output folders.

Everything else in the library works on plain arrays; this module is where nnU-Net's folder layout
and file formats are known.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shlex

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

from nnunetv2_tumorsynth.files import write_json_atomic  # noqa: F401  (also re-exported: older imports)

ORGAN_NAMES = ("liver",)
TUMOUR_NAMES = ("tumour", "tumor", "lesion", "cancer", "metastasis")


def dataset_name(dataset: str | int) -> str:
    """``501``, ``"501"`` or ``"Dataset501_ATLAS"`` -> ``"Dataset501_ATLAS"`` (nnU-Net's own lookup)."""
    numeric = not isinstance(dataset, str) or dataset.isdigit()
    return str(maybe_convert_to_dataset_name(int(dataset) if numeric else dataset))


def preprocessed_folder(name: str) -> str:
    folder = os.path.join(nnUNet_preprocessed or "", name)
    if not nnUNet_preprocessed or not os.path.isdir(folder):
        raise FileNotFoundError(
            f"No preprocessed data for {name} in nnUNet_preprocessed={nnUNet_preprocessed!r}. "
            f"Run: nnUNetv2_plan_and_preprocess -d {name} -c 3d_fullres"
        )
    return folder


def load_plans(name: str, plans_identifier: str = "nnUNetPlans") -> dict:
    path = os.path.join(preprocessed_folder(name), plans_identifier + ".json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist. Run: nnUNetv2_plan_and_preprocess -d {name}"
            + ("" if plans_identifier == "nnUNetPlans" else f" (plans {plans_identifier!r})")
        )
    return load_json(path)


def load_dataset_json(name: str) -> dict:
    return load_json(os.path.join(preprocessed_folder(name), "dataset.json"))


def configuration_data_folder(name: str, plans: dict, configuration: str) -> str:
    """Folder with the preprocessed cases of one configuration (checked to exist)."""
    if configuration not in plans["configurations"]:
        raise KeyError(
            f"Configuration {configuration!r} is not in plans {plans['plans_name']!r} of {name}; "
            f"available: {sorted(plans['configurations'])}"
        )
    config = plans["configurations"][configuration]
    data_identifier = config.get("data_identifier")
    if data_identifier is None:  # inherited configuration
        parent = plans["configurations"][config["inherits_from"]]
        data_identifier = parent["data_identifier"]
    folder = os.path.join(preprocessed_folder(name), data_identifier)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{folder} does not exist. Run: nnUNetv2_plan_and_preprocess -d {name} -c {configuration}"
        )
    return folder


def case_slice_spacings_mm(name: str, plans: dict) -> list[float]:
    """Each case's voxel spacing (mm) along the first preprocessed axis (z after the plans' transpose).

    Read from the dataset's ``dataset_fingerprint.json`` (original spacings, transposed with the plans'
    ``transpose_forward``, as nnU-Net's preprocessor does); ``[]`` when there is no fingerprint.
    """
    path = os.path.join(nnUNet_preprocessed or "", name, "dataset_fingerprint.json")
    if not nnUNet_preprocessed or not os.path.isfile(path):
        return []
    axis = int(plans["transpose_forward"][0])
    return [float(s[axis]) for s in load_json(path).get("spacings", [])]


def preprocessed_spacing_mm(name: str, plans: dict, spacing) -> tuple[float, float, float]:
    """Voxel spacing (mm, preprocessed axis order z y x) of a configuration's preprocessed cases.

    ``spacing`` is the configuration's ``spacing`` from the plans. 3d configurations: that spacing, the
    same for every case. 2d configurations: nnU-Net gives only the in-plane (y, x) spacing; its
    preprocessor stores 2d cases as 3D volumes resampled in-plane only, each keeping its own slice spacing
    (``DefaultPreprocessor.run_case_npy``). The z returned is then the median slice spacing of the
    dataset's cases (``case_slice_spacings_mm``; the plans' ``original_median_spacing_after_transp`` without
    a fingerprint): exact for every case only when all cases share one slice spacing.
    """
    spacing = [float(s) for s in spacing]
    if len(spacing) == 3:
        return (spacing[0], spacing[1], spacing[2])
    if len(spacing) != 2:
        raise ValueError(f"a configuration spacing has 2 (2d) or 3 (3d) entries; got {spacing}")
    slices = case_slice_spacings_mm(name, plans)
    z = float(np.median(slices)) if slices else float(plans["original_median_spacing_after_transp"][0])
    return (z, spacing[0], spacing[1])


def fold_split(name: str, case_identifiers: list[str], fold: int | str) -> tuple[list[str], list[str]]:
    """(training, validation) case identifiers of ``fold``, exactly as ``nnUNetTrainer.do_split`` makes them.

    If ``splits_final.json`` does not exist yet it is created the way nnU-Net creates it (5 folds,
    seed 12345), so a later ``nnUNetv2_train`` uses the same split.
    """
    if fold == "all":
        return list(case_identifiers), list(case_identifiers)
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    fold = int(fold)
    splits_file = os.path.join(preprocessed_folder(name), "splits_final.json")
    if os.path.isfile(splits_file):
        splits = load_json(splits_file)
    else:
        splits = generate_crossval_split(list(np.sort(case_identifiers)), seed=12345, n_splits=5)
        write_json_atomic(splits, splits_file)
    if fold < len(splits):
        return [str(k) for k in splits[fold]["train"]], [str(k) for k in splits[fold]["val"]]
    # nnU-Net's fallback for folds beyond the split file: a seeded random 80:20 split
    rnd = np.random.RandomState(seed=12345 + fold)
    keys = np.sort(list(case_identifiers))
    idx_tr = rnd.choice(len(keys), int(len(keys) * 0.8), replace=False)
    return [str(keys[i]) for i in idx_tr], [str(keys[i]) for i in range(len(keys)) if i not in idx_tr]


def _label_value(value) -> int:
    if isinstance(value, (list, tuple)):
        raise ValueError("region-based label definitions (lists of labels) are not supported")
    return int(value)


def organ_and_tumour_labels(
    dataset_json: dict, organ: str | int | None = None, tumour: str | int | None = None
) -> tuple[int, int]:
    """Label values of the organ the tumours grow in and of the tumour.

    Found from the label names of ``dataset.json`` (organ: "liver"; tumour: names containing "tumour",
    "tumor", "lesion", ...), or given explicitly by name or value. Raises a ValueError that lists the
    dataset's labels when either cannot be found.
    """
    labels = {name: _label_value(v) for name, v in dataset_json["labels"].items() if name != "ignore"}

    def resolve(given, candidates, role):
        if given is not None:
            if isinstance(given, int) or str(given).isdigit():
                if int(given) in labels.values():
                    return int(given)
            elif given in labels:
                return labels[given]
            raise ValueError(f"{role} label {given!r} is not among the dataset's labels {labels}")
        found = [v for n, v in labels.items() if v != 0 and any(c in n.lower() for c in candidates)]
        if role == "organ":
            found = [v for v in found if v not in [
                lv for n, lv in labels.items() if any(c in n.lower() for c in TUMOUR_NAMES)]]
        if len(found) == 1:
            return found[0]
        raise ValueError(
            f"Cannot tell which label is the {role} from dataset.json labels {labels}. "
            f"Choose it explicitly (--{role}-label NAME_OR_VALUE, or the '{role}_label' setting of the trainer)."
        )

    organ_value = resolve(organ, ORGAN_NAMES, "organ")
    tumour_value = resolve(tumour, TUMOUR_NAMES, "tumour")
    if organ_value == tumour_value:
        raise ValueError(f"organ and tumour resolve to the same label {organ_value}; labels are {labels}")
    return organ_value, tumour_value


def ddpm_output_folder(name: str, plans_identifier: str, configuration: str, fold: int | str) -> str:
    """``$nnUNet_results/<Dataset>/tumorsynth_ddpm__<plans>__<configuration>/fold_<f>``."""
    if not nnUNet_results:
        raise RuntimeError("nnUNet_results is not set; export nnUNet_results=/path/to/nnUNet_results")
    return os.path.join(nnUNet_results, name, f"tumorsynth_ddpm__{plans_identifier}__{configuration}", f"fold_{fold}")


DDPM_CHECKPOINT_ENV = "TUMORSYNTH_DDPM_CHECKPOINT"


def find_ddpm_checkpoint(name: str, plans_identifier: str, configuration: str, fold: int | str) -> str:
    """The diffusion checkpoint for this dataset, plans, configuration and fold.

    ``$TUMORSYNTH_DDPM_CHECKPOINT`` (a file) wins; otherwise ``checkpoint_best.pth`` (else
    ``checkpoint_latest.pth``) in ``ddpm_output_folder``. Raises FileNotFoundError with the
    ``tumorsynth_pretrain_ddpm`` command to run.
    """
    explicit = os.environ.get(DDPM_CHECKPOINT_ENV)
    if explicit:
        if not os.path.isfile(explicit):
            raise FileNotFoundError(f"{DDPM_CHECKPOINT_ENV}={explicit} does not exist")
        return explicit
    folder = ddpm_output_folder(name, plans_identifier, configuration, fold)
    for candidate in ("checkpoint_best.pth", "checkpoint_latest.pth"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"No diffusion model for {name} ({plans_identifier}, {configuration}, fold {fold}) in {folder}. "
        f"Train it first: tumorsynth_pretrain_ddpm -d {name} -c {configuration} -f {fold} -p {plans_identifier} "
        f"(or point {DDPM_CHECKPOINT_ENV} at a checkpoint, or use nnUNetTrainerSynthTumorHeuristic, which needs none)"
    )


class ShortSchedule:
    """Mixin for nnU-Net trainer variants with a shorter schedule (tests, demos, benchmarks).

    Put it before the trainer class and set ``schedule = (epochs, iterations per epoch, validation
    iterations per epoch)``; ``None`` keeps the trainer's value. Applied at the start of ``initialize``,
    before nnU-Net builds the learning-rate schedule and logs its hyperparameters, so that variants need
    no ``__init__`` of their own (nnU-Net derives its init arguments from the ``__init__`` signature).
    """

    schedule: tuple[int | None, int | None, int | None] = (None, None, None)

    def initialize(self) -> None:
        epochs, iterations, val_iterations = self.schedule
        self.num_epochs = epochs if epochs is not None else self.num_epochs
        self.num_iterations_per_epoch = iterations if iterations is not None else self.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = (val_iterations if val_iterations is not None
                                             else self.num_val_iterations_per_epoch)
        super().initialize()


TINY_PLANS = "tumorsynthTinyPlans"


def make_tiny_plans(
    plans: dict,
    configuration: str = "3d_fullres",
    plans_name: str = TINY_PLANS,
    features: tuple[int, ...] = (4, 8, 16),
    patch_size: tuple[int, int, int] = (16, 32, 32),
    batch_size: int = 2,
) -> dict:
    """A copy of ``plans`` holding only ``configuration``, with a 3-stage U-Net of ``features``.

    3d: strides are (1,1,1), (1,2,2), (2,2,2) for (z, y, x), so ``patch_size`` (voxels, z y x) must be
    divisible by (2, 4, 4). 2d (a configuration with 2 spacing entries): strides (1,1), (2,2), (2,2); the
    patch is (y, x), and a 3-entry ``patch_size`` gives its last two, so each must be divisible by 4.
    """
    if len(features) != 3:
        raise ValueError("tiny plans use exactly 3 stages: give 3 feature counts")
    if configuration not in plans["configurations"]:
        raise KeyError(f"configuration {configuration!r} is not in the plans; available: "
                       f"{sorted(plans['configurations'])}")
    config = copy.deepcopy(plans["configurations"][configuration])
    if "architecture" not in config:
        raise ValueError(f"configuration {configuration!r} inherits from {config.get('inherits_from')!r}; tiny plans "
                         f"need a configuration with its own architecture (2d, 3d_fullres or 3d_lowres)")
    if len(config.get("spacing", config.get("patch_size", ()))) == 2:
        patch_size = tuple(patch_size[-2:])
        if patch_size[0] % 4 or patch_size[1] % 4:
            raise ValueError(f"2d patch size {patch_size} (y, x) must be divisible by (4, 4)")
        kernels, strides = [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]]
    else:
        if patch_size[0] % 2 or patch_size[1] % 4 or patch_size[2] % 4:
            raise ValueError(f"patch size {patch_size} must be divisible by (2, 4, 4)")
        kernels, strides = [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    arch = config["architecture"]["arch_kwargs"]
    arch.update(
        n_stages=3,
        features_per_stage=list(features),
        kernel_sizes=kernels,
        strides=strides,
        n_conv_per_stage=[1, 1, 1],
        n_conv_per_stage_decoder=[1, 1],
    )
    config["patch_size"] = list(patch_size)
    config["batch_size"] = batch_size
    tiny = copy.deepcopy(plans)
    tiny["plans_name"] = plans_name
    tiny["configurations"] = {configuration: config}
    return tiny


def write_tiny_plans(dataset: str | int, configuration: str = "3d_fullres", source_plans: str = "nnUNetPlans",
                     plans_name: str = TINY_PLANS, features: tuple[int, ...] = (4, 8, 16),
                     patch_size: tuple[int, int, int] = (16, 32, 32), batch_size: int = 2,
                     overwrite: bool = False) -> str:
    """Write ``<plans_name>.json`` beside the dataset's ``<source_plans>.json`` (see ``make_tiny_plans``);
    refuses to replace an existing file unless ``overwrite``. Returns its path."""
    name = dataset_name(dataset)
    out = os.path.join(preprocessed_folder(name), plans_name + ".json")
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    tiny = make_tiny_plans(load_plans(name, source_plans), configuration, plans_name, features, patch_size, batch_size)
    write_json_atomic(tiny, out)
    return out



def trainers_path() -> str:
    """Folder holding the installed trainer modules (works for regular and editable installs)."""
    spec = importlib.util.find_spec("nnunetv2_tumorsynth_trainers")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "nnunetv2_tumorsynth_trainers is not installed. Reinstall the package: pip install nnunetv2-tumorsynth"
        )
    return os.path.abspath(list(spec.submodule_search_locations)[0])


def trainers_export_line() -> str:
    """``export nnUNet_extTrainer=...``, keeping any folders the user already listed there."""
    ours = trainers_path()
    existing = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p and p != ours]
    return "export nnUNet_extTrainer=" + shlex.quote(os.pathsep.join([ours, *existing]))


def ensure_trainers_findable() -> None:
    """Let nnU-Net find our trainer classes in this process even if ``eval "$(tumorsynth_env)"`` was not run."""
    ours = trainers_path()
    listed = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if ours not in listed:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([ours, *listed])
