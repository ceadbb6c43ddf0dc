"""nnU-Net's preprocessed datasets: names, plans, configurations, splits, label roles, spacing."""

from __future__ import annotations

import os

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

from nnunetv2_tumorsynth.files import write_json_atomic

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
            f"Choose it explicitly: --{role}-label NAME_OR_VALUE for the tumorsynth_* commands, or for the trainers "
            f'"{role}_label" in the JSON file named by $TUMORSYNTH_SETTINGS.'
        )

    organ_value = resolve(organ, ORGAN_NAMES, "organ")
    tumour_value = resolve(tumour, TUMOUR_NAMES, "tumour")
    if organ_value == tumour_value:
        raise ValueError(f"organ and tumour resolve to the same label {organ_value}; labels are {labels}")
    return organ_value, tumour_value


class PreprocessedDataset:
    """One dataset's preprocessed cases for one plans and configuration: the one reader of nnU-Net's layout.

    name -> plans -> configuration -> data folder -> labels -> spacing. ``spacing`` (mm, preprocessed axis order
    z, y, x) has three values for every configuration, by one rule (``preprocessed_spacing_mm``: a 2d
    configuration's cases are 3D volumes with the dataset's median slice spacing along z). Organ and tumour
    labels are resolved from dataset.json (or given); None where the dataset has no such label and
    ``require_labels`` is False.
    """

    def __init__(self, name: str, plans: dict, configuration: str, dataset_json: dict,
                 organ_label: str | int | None = None, tumour_label: str | int | None = None,
                 require_labels: bool = True):
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.name, self.configuration, self.dataset_json = name, configuration, dataset_json
        self.plans_manager = PlansManager(plans)
        self.plans_identifier = self.plans_manager.plans_name
        self.configuration_manager = self.plans_manager.get_configuration(configuration)
        self.spacing = preprocessed_spacing_mm(name, plans, self.configuration_manager.spacing)
        try:
            self.organ_label, self.tumour_label = organ_and_tumour_labels(dataset_json, organ_label, tumour_label)
        except ValueError:
            if require_labels:
                raise
            self.organ_label = self.tumour_label = None
        self._data_folder: str | None = None

    @classmethod
    def open(cls, dataset: str | int, plans_identifier: str = "nnUNetPlans", configuration: str = "3d_fullres",
             organ_label: str | int | None = None, tumour_label: str | int | None = None,
             require_labels: bool = True) -> PreprocessedDataset:
        """Open ``$nnUNet_preprocessed/<dataset>``; errors name the nnU-Net command to run."""
        try:
            name = dataset_name(dataset)
        except (RuntimeError, ValueError) as e:  # nnU-Net's "Could not find a dataset with the ID ..." (several lines)
            raise FileNotFoundError(f"no dataset {dataset!r} in nnUNet_raw, nnUNet_preprocessed or nnUNet_results; "
                                    f"check the id and the three nnUNet_* variables") from e
        plans = load_plans(name, plans_identifier)
        if configuration not in plans["configurations"]:
            raise KeyError(f"Configuration {configuration!r} is not in plans {plans_identifier!r} of {name}; "
                           f"available: {sorted(plans['configurations'])}")
        return cls(name, plans, configuration, load_dataset_json(name), organ_label, tumour_label, require_labels)

    @property
    def plans(self) -> dict:
        return self.plans_manager.plans

    @property
    def data_folder(self) -> str:
        """Folder of the configuration's preprocessed cases (checked to exist on first use)."""
        if self._data_folder is None:
            self._data_folder = configuration_data_folder(self.name, self.plans, self.configuration)
        return self._data_folder

    @property
    def transpose_forward(self) -> tuple[int, ...]:
        return tuple(int(a) for a in self.plans_manager.transpose_forward)

    @property
    def transpose_backward(self) -> tuple[int, ...]:
        return tuple(int(a) for a in self.plans_manager.transpose_backward)

    @property
    def num_channels(self) -> int:
        return len(self.dataset_json["channel_names"])

    def normalisation(self, channel: int = 0) -> dict:
        """``{"scheme": ...}`` of a channel (+ the fixed intensity statistics of CTNormalization)."""
        scheme = self.configuration_manager.normalization_schemes[channel]
        normalisation: dict = {"scheme": scheme}
        if scheme == "CTNormalization":  # fixed clipping and statistics: part of what the intensities mean
            props = self.plans["foreground_intensity_properties_per_channel"][str(channel)]
            for key in ("mean", "std", "percentile_00_5", "percentile_99_5"):
                normalisation[key] = float(props[key])
        return normalisation

    def identifiers(self) -> list[str]:
        """Every preprocessed case, sorted."""
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        return sorted(str(c) for c in infer_dataset_class(self.data_folder).get_identifiers(self.data_folder))

    def fold_cases(self, fold: int | str) -> tuple[list[str], list[str]]:
        """(training, validation) cases of ``fold``, sorted, as ``nnUNetTrainer.do_split`` makes them."""
        train, val = fold_split(self.name, self.identifiers(), fold)
        return sorted(str(c) for c in train), sorted(str(c) for c in val)

    def reader(self, cases: list[str]):
        """nnU-Net's dataset object (``load_case``) over ``cases``."""
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        return infer_dataset_class(self.data_folder)(self.data_folder, list(cases))

    def load_case(self, case: str) -> tuple[np.ndarray, np.ndarray, dict]:
        """(data (C, z, y, x) float32, seg (1, z, y, x), properties) of one case, read into memory."""
        data, seg, _, properties = self.reader([case]).load_case(case)
        return np.asarray(data[:], np.float32), np.asarray(seg[:]), properties
