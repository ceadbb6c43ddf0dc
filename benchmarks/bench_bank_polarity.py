"""Does a SynthTumor-trained network segment the synthetic tumours of its own bank? (training cases only)

    .venv/bin/python benchmarks/bench_bank_polarity.py MODEL_FOLDER [MODEL_FOLDER ...] [--bank FOLDER] \
        [--checkpoint checkpoint_final.pth]

``MODEL_FOLDER`` is a trainer output folder of ``nnUNetv2_train`` (``.../<trainer>__<plans>__<configuration>``,
with ``fold_all`` or ``fold_<n>``) of a SynthTumor trainer; its ``synthesis_bank`` holds the entries made
during training. With ``--bank`` every model is scored on the same bank (e.g. that of the first model).
``nnUNet_preprocessed`` and ``nnUNet_extTrainer`` must be set as for ``nnUNetv2_predict``.

For every entry: the entry is overlaid on its preprocessed training case (``bank.overlay_entry``, as the
data loader does), the network predicts the whole case (``nnUNetPredictor``, sliding window, no mirroring),
and the tumour Dice and detection (any predicted tumour voxel on the entry's mask) are computed. The
entry's contrast is (mean inside the mask after - before) in SDs of the case's organ (organ label, vessels
included). One table per model: Dice and detection by contrast bin, darker and brighter entries apart.
No test case is read: this is a diagnosis of what the network learnt from the synthetic tumours.
Measured: README, "Does it help?" (the heuristic texture's polarity).
"""

from __future__ import annotations

import glob
import os

import numpy as np
import torch
from _common import argument_parser

from nnunetv2_tumorsynth.bank.overlay import overlay_entry
from nnunetv2_tumorsynth.bank.store import bank_cases, entry_paths
from nnunetv2_tumorsynth.nnunet import PreprocessedDataset
from nnunetv2_tumorsynth.synthesis.entry import Entry

BINS = ((-np.inf, -2.5), (-2.5, -1.0), (-1.0, 0.0), (0.0, 1.0), (1.0, 2.5), (2.5, np.inf))


def score_bank(model_folder: str, bank_folder: str, checkpoint: str) -> np.ndarray:
    """Rows (contrast in organ SDs, Dice, detected 0/1) for every entry of ``bank_folder``."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    fold_folder = glob.glob(os.path.join(model_folder, "fold_*"))[0]
    fold = os.path.basename(fold_folder)[len("fold_"):]
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                                verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, (fold,), checkpoint)
    dataset = PreprocessedDataset(predictor.plans_manager.dataset_name, predictor.plans_manager.plans,
                                  os.path.basename(model_folder).split("__")[-1], predictor.dataset_json)
    organ, tumour = dataset.organ_label, dataset.tumour_label
    rows = []
    for case in (c for c in bank_cases(bank_folder) if entry_paths(bank_folder, c)):
        data, seg, properties = dataset.load_case(case)
        organ_sd = float(data[0][seg[0] == organ].std())
        for path in entry_paths(bank_folder, case):
            entry = Entry.load(path)
            mask = entry.mask
            overlaid, overlaid_seg, _ = overlay_entry(data, seg, properties, entry, tumour)
            overlaid, overlaid_seg = np.asarray(overlaid[...]), np.asarray(overlaid_seg[...])
            logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(overlaid).float())
            predicted = logits.argmax(0).numpy() == tumour
            reference = overlaid_seg[0] == tumour
            hit = int((predicted & reference).sum())
            dice = 2 * hit / max(1, int(reference.sum() + predicted.sum()))
            contrast = (entry.values[mask].mean() - entry.before[mask].mean()) / organ_sd
            rows.append((float(contrast), dice, float(hit > 0)))
    return np.array(rows)


def table(rows: np.ndarray) -> str:
    lines = ["| contrast (organ SDs) | entries | tumour Dice | detected |", "|---|---|---|---|"]
    for lo, hi in BINS:
        selected = rows[(rows[:, 0] >= lo) & (rows[:, 0] < hi)]
        if len(selected):
            lines.append(f"| [{lo:g}, {hi:g}) | {len(selected)} | {selected[:, 1].mean():.3f} | "
                         f"{selected[:, 2].mean():.2f} |")
    for name, selected in (("darker", rows[rows[:, 0] < 0]), ("brighter", rows[rows[:, 0] >= 0])):
        if len(selected):
            lines.append(f"| all {name} | {len(selected)} | {selected[:, 1].mean():.3f} | "
                         f"{selected[:, 2].mean():.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("models", nargs="+", help="trainer output folders of nnUNetv2_train")
    parser.add_argument("--bank", default=None, help="score every model on this synthesis_bank folder")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for model in args.models:
        bank = args.bank or glob.glob(os.path.join(model, "fold_*", "synthesis_bank"))[0]
        print(f"{model}\n  bank {bank}")
        print(table(score_bank(model, bank, args.checkpoint)), flush=True)


if __name__ == "__main__":
    main()
