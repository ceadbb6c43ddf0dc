"""Benchmark: how many annotated cases do synthetic tumours save? The label-efficiency curve.

For each number k of annotated training cases (``--annotated``, default 1 2 4 8 of ``--train`` 8), the benefit
benchmark (``bench_benefit.py``, its own workdir ``<workdir>/annotated<k>``) trains plain nnU-Net and one
synthetic arm (``--arm``, default the calibrated heuristic ``heur``) on the Scarce dataset with k annotated
cases, with the same plans and iteration budget, and evaluates both on the shared held-out test set. Runs are
the outer loop (every k gets run 0 before any gets run 1), so a stopped benchmark still covers the whole curve;
a re-run with the same ``--workdir`` continues where it stopped (``bench_benefit.py --reuse``).

Output: ``<workdir>/label_efficiency.json``, a Markdown table (tumour Dice, lesion sensitivity, false-positive
lesions per case: mean ± sd and every run) and ``<workdir>/label_efficiency.png`` (tumour Dice and lesion
sensitivity against k, mean ± sd, both arms), and the sentence "with synthetic tumours, k annotated cases reach
the tumour Dice that plain nnU-Net reaches with m" (the smallest such m among the measured k, from the means).

Run::

    python benchmarks/bench_label_efficiency.py [--workdir /tmp/bench_label_efficiency] [--annotated 1 2 4 8] \\
        [--runs 3] [--epochs 10] [--arm heur|ddpm] [--data phantom|real_mr] [--seed 0]

Measured: docs/benchmarks.md, "The label-efficiency curve".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from _common import argument_parser

HERE = os.path.dirname(os.path.abspath(__file__))
METRICS = {"dice": "tumour Dice", "sensitivity": "lesion sensitivity", "fp_per_case": "FP lesions/case"}


def benefit_command(args, annotated: int, runs: int) -> list[str]:
    """The bench_benefit.py call that brings ``<workdir>/annotated<k>`` to ``runs`` runs of plain and the arm."""
    return [sys.executable, os.path.join(HERE, "bench_benefit.py"), "--workdir",
            os.path.join(args.workdir, f"annotated{annotated}"), "--annotated", str(annotated), "--train",
            str(args.train), "--test", str(args.test), "--runs", str(runs), "--epochs", str(args.epochs), "--arms",
            "plain", args.arm, "--data", args.data, "--seed", str(args.seed), "--reuse"]


def collect(workdir: str, counts: list[int], arm: str) -> dict:
    """{k: {"plain": [run rows], arm: [run rows]}} from each ``annotated<k>/benefit.json``."""
    curve = {}
    for k in counts:
        path = os.path.join(workdir, f"annotated{k}", "benefit.json")
        if os.path.isfile(path):
            with open(path) as f:
                rows = json.load(f)["rows"]
            curve[k] = {name: rows.get(name, []) for name in ("plain", arm)}
    return curve


def summary_table(curve: dict, arm: str) -> str:
    """Markdown: one row per (k, arm), mean ± sd and every run of each metric."""
    lines = ["| annotated cases | arm | runs | " + " | ".join(METRICS.values()) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    for k, arms in sorted(curve.items()):
        for name in ("plain", arm):
            runs = arms[name]
            cells = []
            for key in METRICS:
                values = [r[key] for r in runs if r.get(key) is not None]
                spread = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
                cells.append(f"{np.mean(values):.3f}{spread} ({' / '.join(f'{v:.3f}' for v in values)})"
                             if values else "n/a")
            lines.append(f"| {k} | {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_dice(runs: list[dict]) -> float | None:
    values = [r["dice"] for r in runs if r.get("dice") is not None]
    return float(np.mean(values)) if values else None


def savings(curve: dict, arm: str) -> list[str]:
    """Per k: the smallest measured m whose plain mean tumour Dice the arm reaches with k annotated cases."""
    plain = {k: mean_dice(a["plain"]) for k, a in curve.items()}
    sentences = []
    for k, arms in sorted(curve.items()):
        synthetic = mean_dice(arms[arm])
        if synthetic is None:
            continue
        reached = [m for m, d in sorted(plain.items()) if d is not None and d <= synthetic]
        if reached:
            m = max(reached)
            sentences.append(f"with synthetic tumours ({arm}), {k} annotated case(s) reach the tumour Dice that plain "
                             f"nnU-Net reaches with {m} ({synthetic:.3f} vs {plain[m]:.3f})")
        else:
            sentences.append(f"with synthetic tumours ({arm}), {k} annotated case(s) stay below plain nnU-Net with "
                             f"any measured number of annotated cases ({synthetic:.3f})")
    return sentences


def write_figure(curve: dict, arm: str, path: str) -> None:
    """Tumour Dice and lesion sensitivity against annotated cases, mean ± sd over runs, both arms."""
    from nnunetv2_tumorsynth.figures import new_figure, save_figure

    fig, axes = new_figure(1, 2, figsize=(9, 3.6))
    counts = sorted(curve)
    for panel, key in zip(axes[0], ("dice", "sensitivity")):
        for name, style in (("plain", "o-"), (arm, "s-")):
            values = [[r[key] for r in curve[k][name] if r.get(key) is not None] for k in counts]
            shown = [(k, v) for k, v in zip(counts, values) if v]
            if not shown:
                continue
            panel.errorbar([k for k, _ in shown], [np.mean(v) for _, v in shown],
                           yerr=[np.std(v, ddof=1) if len(v) > 1 else 0.0 for _, v in shown], fmt=style,
                           capsize=3, label="plain nnU-Net" if name == "plain" else f"synthetic tumours ({name})")
        panel.set_xscale("log", base=2)
        panel.set_xticks(counts, [str(k) for k in counts])
        panel.set_xlabel("annotated training cases")
        panel.set_ylabel(METRICS[key])
        panel.set_ylim(0, 1)
        panel.grid(alpha=0.3)
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--workdir", default="/tmp/bench_label_efficiency")
    parser.add_argument("--annotated", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--test", type=int, default=12)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10, choices=(5, 10, 20), help="250 iterations each")
    parser.add_argument("--arm", choices=("heur", "ddpm"), default="heur", help="the synthetic arm")
    parser.add_argument("--data", choices=("phantom", "real_mr"), default="phantom")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="no training: table and figure of what exists")
    args = parser.parse_args()
    bad = [k for k in args.annotated if not 1 <= k <= args.train]
    if bad:
        parser.error(f"--annotated {bad}: each count must be between 1 and --train {args.train}")
    args.annotated = sorted(set(args.annotated))
    args.workdir = os.path.abspath(args.workdir)

    if not args.report_only:
        for run in range(1, args.runs + 1):
            for k in args.annotated:
                command = benefit_command(args, k, run)
                print("$", " ".join(command), flush=True)
                subprocess.run(command, check=True)
    curve = collect(args.workdir, args.annotated, args.arm)
    if not curve:
        parser.error(f"no results under {args.workdir}: run without --report-only first")
    table = summary_table(curve, args.arm)
    sentences = savings(curve, args.arm)
    figure = os.path.join(args.workdir, "label_efficiency.png")
    write_figure(curve, args.arm, figure)
    print(table + "\n\n" + "\n".join(sentences) + f"\nfigure: {figure}")
    with open(os.path.join(args.workdir, "label_efficiency.json"), "w") as f:
        json.dump({"args": vars(args), "curve": {str(k): v for k, v in curve.items()}, "table": table,
                   "sentences": sentences}, f, indent=2)


if __name__ == "__main__":
    main()
