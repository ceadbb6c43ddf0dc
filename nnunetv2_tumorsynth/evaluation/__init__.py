"""Evaluation of segmentations as the papers report it (``tumorsynth_evaluate``).

Dice, surface Dice (NSD) at a tolerance in mm, precision, recall, HD and HD95 in mm per case and label
(:mod:`.metrics`); tumour-wise detection by lesion size (:mod:`.lesions`); paired tests against baselines
(:mod:`.statistics`); summaries and the report folder (:mod:`.summary`, :mod:`.report`); folders of label maps
in nnU-Net's layout (:mod:`.folders`). Quinton et al. 2026 (section 2.8, Table 3, Fig. 9); Hu et al. 2023 and
Chen et al. 2024 (detection of small tumours)::

    from nnunetv2_tumorsynth.evaluation import evaluate_folders
    summary = evaluate_folders("labelsTs", "pred_synth", baselines=["pred_plain"], output_folder="report")
    summary["folders"]["pred_synth"]["mean"]["2"]["dice"]
"""

from nnunetv2_tumorsynth.evaluation.folders import MissingCasesError, evaluate_folders
from nnunetv2_tumorsynth.evaluation.inputs import UndeclaredLabelValues
from nnunetv2_tumorsynth.evaluation.lesions import DEFAULT_SIZE_BINS_MM, match_lesions
from nnunetv2_tumorsynth.evaluation.metrics import METRICS, LabelMetrics, label_metrics
from nnunetv2_tumorsynth.evaluation.statistics import paired_tests

__all__ = ["DEFAULT_SIZE_BINS_MM", "METRICS", "LabelMetrics", "MissingCasesError", "UndeclaredLabelValues",
           "evaluate_folders", "label_metrics", "match_lesions", "paired_tests"]
