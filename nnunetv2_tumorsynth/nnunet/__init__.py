"""What talks to nnU-Net: preprocessed datasets (``dataset``), tiny plans (``plans``), trainer helpers (``trainers``),
postprocessing of predictions (``postprocess``).

Everything else in the library works on plain arrays; this package is where nnU-Net's folder layout and file
formats are known.
"""

from nnunetv2_tumorsynth.nnunet.dataset import (
    ORGAN_NAMES,
    TUMOUR_NAMES,
    PreprocessedDataset,
    case_slice_spacings_mm,
    configuration_data_folder,
    dataset_name,
    fold_split,
    load_dataset_json,
    load_plans,
    organ_and_tumour_labels,
    preprocessed_folder,
    preprocessed_spacing_mm,
)
from nnunetv2_tumorsynth.nnunet.plans import TINY_PLANS, make_tiny_plans, write_tiny_plans
from nnunetv2_tumorsynth.nnunet.trainers import (
    DDPM_CHECKPOINT_ENV,
    ShortSchedule,
    ddpm_output_folder,
    ensure_trainers_findable,
    find_ddpm_checkpoint,
    trainers_export_line,
    trainers_path,
)

__all__ = ["DDPM_CHECKPOINT_ENV", "ORGAN_NAMES", "PreprocessedDataset", "TINY_PLANS", "TUMOUR_NAMES", "ShortSchedule",
           "case_slice_spacings_mm", "configuration_data_folder", "dataset_name", "ddpm_output_folder",
           "ensure_trainers_findable", "find_ddpm_checkpoint", "fold_split", "load_dataset_json", "load_plans",
           "make_tiny_plans", "organ_and_tumour_labels", "preprocessed_folder", "preprocessed_spacing_mm",
           "trainers_export_line", "trainers_path", "write_tiny_plans"]
