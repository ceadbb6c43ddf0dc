"""``tumorsynth_demo``: the method shown working, on phantoms and a CPU, through the real commands.

The scarce-tumour setting of ``benchmarks/bench_benefit.py`` in a smaller form: a phantom dataset whose
training cases carry only a few annotated tumours, plain nnU-Net and nnU-Net with synthetic tumours trained
with the same budget, both predicted on held-out cases and compared with ``tumorsynth_evaluate`` (plain as
the baseline). Then, shorter: previews of the synthetic tumours, box-guided pseudo-labelling of an
LLD-MMRI-style folder, and a few offline-generated images with their preview.

Every step is a command a user would type; it is printed with the time it took. Everything is written under
the work folder (nnU-Net's three folders included). A re-run resumes after the last finished step; a work
folder made by another version of the demo is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from nnunetv2_tumorsynth.files import write_json_atomic

DEMO_FORMAT = 2  # bump when the steps or their outputs change: older work folders are then refused
SCARCE_ID, SCARCE_NAME = 970, "DemoScarce"
PSEUDO_ID, GENERATED_ID = 971, 972
PLANS = "tumorsynthTinyPlans"
# everything the demo writes in its work folder (--overwrite removes these and nothing else)
DEMO_OUTPUTS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", ".steps", "logs", "predictions", "lld_mmri",
                "report", "previews", "pseudo_masks", "realism", ".matplotlib", "synth_settings.json",
                "tumorsynth_demo.json")


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs. The defaults are what ``tumorsynth_demo`` uses on a 2-core CPU."""

    workdir: str = "demo"
    overwrite: bool = False
    train_cases: int = 8
    annotated_cases: int = 2  # training cases with annotated tumours; the others are tumour-free
    # all phantom tumours darker than the liver, like the hypointense lesions of the real-MR benchmark: with a few
    # tumours of both signs neither arm learnt any tumour in 10 x 250 iterations (docs/demo.md)
    tumour_polarity: str = "darker"
    test_cases: int = 8
    seed: int = 0
    # nnU-Net trainers *_<epochs>epochs, 250 iterations each. At 5 epochs one clean run in three learnt no tumour
    # in either arm; 10 is the benefit benchmark's budget (docs/demo.md#what-it-printed-and-how-robust-that-is)
    epochs: int = 10
    box_epochs: int = 5  # the box-guided network of the pseudo-label step (shown working, not compared)
    synthetic_trainer: str = "nnUNetTrainerSynthTumorHeuristic"
    # the trainers' defaults: sizes, contrast and texture drawn from the fold's annotated tumours (calibrated)
    synth_size: str = "data"
    synth_probability: float = 0.5
    features: tuple[int, int, int] = (8, 16, 32)
    generated_images: int = 4


@dataclass
class Step:
    name: str
    commands: list[list[str]]
    note: str = ""
    prepare: Callable[[], None] | None = None  # Python work before the commands (described in ``note``)


class Demo:
    """Runs the demo's steps in order, each once (a marker file records finished steps)."""

    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        self.work = os.path.abspath(settings.workdir)
        self.bin = os.path.dirname(sys.executable)
        self.env = os.environ.copy()
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            self.env[var] = os.path.join(self.work, var)
        self.env.update(nnUNet_n_proc_DA="2", nnUNet_def_n_proc="1", nnUNet_compile="false",
                        MPLCONFIGDIR=os.path.join(self.work, ".matplotlib"),
                        TUMORSYNTH_SETTINGS=os.path.join(self.work, "synth_settings.json"))
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------ paths
    def path(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)

    @property
    def scarce(self) -> str:
        return f"Dataset{SCARCE_ID}_{SCARCE_NAME}"

    def trainer(self, base: str) -> str:
        return f"{base}_{self.settings.epochs}epochs"

    # ------------------------------------------------------------------------------------- work folder
    def prepare_workdir(self) -> None:
        """Create the work folder, or check that an existing one was made by this demo version."""
        stamp = self.path("tumorsynth_demo.json")
        expected = json.loads(json.dumps({"demo_format": DEMO_FORMAT,
                                          "settings": asdict(self.settings) | {"overwrite": False}}))
        if os.path.exists(self.work) and os.listdir(self.work):
            found = None
            if os.path.isfile(stamp):
                with open(stamp) as f:
                    found = json.load(f)
            if found is None:  # not a demo folder: never delete anything in it
                raise FileExistsError(
                    f"{self.work} holds other files ({', '.join(sorted(os.listdir(self.work))[:5])}); the demo needs "
                    f"an "
                    f"empty or new --workdir (--overwrite only replaces an earlier demo's own outputs)")
            if found != expected:
                if not self.settings.overwrite:
                    raise FileExistsError(f"{self.work} holds another version of the demo; choose another --workdir "
                                          f"or pass --overwrite to replace its outputs")
                for name in DEMO_OUTPUTS:  # only what the demo makes; anything else in the folder stays
                    target = self.path(name)
                    if os.path.isdir(target):
                        shutil.rmtree(target)
                    elif os.path.exists(target):
                        os.remove(target)
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.makedirs(self.env[var], exist_ok=True)
        os.makedirs(self.path(".steps"), exist_ok=True)
        write_json_atomic(expected, stamp)
        write_json_atomic({"size": self.settings.synth_size, "probability": self.settings.synth_probability,
                           "preview_every": 0},
                          self.env["TUMORSYNTH_SETTINGS"])
        self.env["nnUNet_extTrainer"] = self.capture(["tumorsynth_env", "--trainers-path"]).strip()

    # ----------------------------------------------------------------------------------------- running
    def capture(self, command: list[str]) -> str:
        result = subprocess.run([os.path.join(self.bin, command[0]), *command[1:]], env=self.env,
                                capture_output=True, text=True, check=True)
        return result.stdout

    def run(self, step: Step) -> None:
        marker = self.path(".steps", step.name)
        if os.path.exists(marker):
            print(f"[{step.name}] done in an earlier run, skipped", flush=True)
            return
        print(f"\n[{step.name}] {step.note}", flush=True)
        start = time.perf_counter()
        if step.prepare is not None:
            step.prepare()
        for command in step.commands:
            print("$ " + " ".join(shlex.quote(c) for c in command), flush=True)
            t0 = time.perf_counter()
            log = self.path("logs", f"{step.name}.log")
            os.makedirs(os.path.dirname(log), exist_ok=True)
            with open(log, "a") as f:
                result = subprocess.run([os.path.join(self.bin, command[0]), *command[1:]], env=self.env,
                                        stdout=f, stderr=subprocess.STDOUT, cwd=self.work)
            if result.returncode != 0:
                with open(log) as f:
                    tail = f.read()[-4000:]
                raise RuntimeError(f"demo step {step.name!r} failed: {' '.join(command)}\n{tail}\n(full log: {log})")
            print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
        self.timings[step.name] = time.perf_counter() - start
        with open(marker, "w") as f:
            f.write(f"{self.timings[step.name]:.1f}\n")

    # ------------------------------------------------------------------------------------------- steps
    def steps(self) -> list[Step]:
        s = self.settings
        raw = os.path.join(self.env["nnUNet_raw"], self.scarce)
        cpu, plans = ["-device", "cpu"], ["-p", PLANS]
        plain, synth = self.trainer("nnUNetTrainer"), self.trainer(s.synthetic_trainer)
        predictions = {t: self.path("predictions", t) for t in (plain, synth)}
        results = os.path.join(self.env["nnUNet_results"], self.scarce)
        bank = os.path.join(results, f"{synth}__{PLANS}__3d_fullres", "fold_all", "synthesis_bank")
        lld = self.path("lld_mmri")
        steps = [
            Step("dataset", [
                ["tumorsynth_make_phantom", "-d", str(SCARCE_ID), "--name", SCARCE_NAME, "-n", str(s.train_cases),
                 "--n-test", str(s.test_cases), "--tumour-cases", str(s.annotated_cases), "--tumour-free-every",
                 "0", "--seed", str(s.seed), "--test-seed", str(s.seed + 1000), "--tumour-polarity",
                 s.tumour_polarity],
                ["nnUNetv2_plan_and_preprocess", "-d", str(SCARCE_ID), "-c", "3d_fullres",
                 "--verify_dataset_integrity", "-np", "2"],
                ["tumorsynth_tiny_plans", "-d", str(SCARCE_ID), "--features", *map(str, s.features)],
            ], f"phantom liver MR: {s.train_cases} training cases, only {s.annotated_cases} with annotated "
               f"tumours; {s.test_cases} held-out cases with tumours (tumours {s.tumour_polarity} than the liver)"),
            Step("train_plain", [["nnUNetv2_train", str(SCARCE_ID), "3d_fullres", "all", *plans, "-tr", plain, *cpu]],
                 f"plain nnU-Net, {s.epochs} x 250 iterations"),
            Step("train_synthetic", [["nnUNetv2_train", str(SCARCE_ID), "3d_fullres", "all", *plans, "-tr", synth,
                                      *cpu]],
                 f"the same budget with synthetic tumours ({s.synthetic_trainer}, size {s.synth_size!r}, "
                 f"probability {s.synth_probability})"),
            Step("predict", [["nnUNetv2_predict", "-d", str(SCARCE_ID), "-c", "3d_fullres", "-f", "all", *plans,
                              "-tr", t, "-i", os.path.join(raw, "imagesTs"), "-o", out, *cpu, "--disable_tta",
                              "-npp", "1", "-nps", "1"] for t, out in predictions.items()],
                 "both networks on the held-out cases"),
            Step("evaluate", [["tumorsynth_evaluate", "-ref", os.path.join(raw, "labelsTs"), "-pred",
                               predictions[synth], "-baseline", predictions[plain], "--tolerance-mm", "2", "-np",
                               "2", "-o", self.path("report"), "--overwrite"]],
                 "the paper's metrics, synthetic vs plain (paired tests)"),
            Step("preview", [["tumorsynth_preview", "-i", bank, "-o", self.path("previews", "synthetic_tumours"),
                              "--max", "8", "--overwrite", "--no-progress"],
                             ["tumorsynth_realism", *self.realism_arguments(bank)]],
                 "what the synthetic tumours look like, and how they compare with the real ones"),
            Step("pseudolabel", [
                ["nnUNetv2_train", str(SCARCE_ID), "3d_fullres", "all", *plans, "-tr",
                 f"nnUNetTrainerBBoxChannel_{s.box_epochs}epochs", *cpu],
                ["tumorsynth_pseudolabel", "-bbox", os.path.join(lld, "Annotation.json"), "-i",
                 os.path.join(lld, "images"), "-o", self.path("pseudo_masks"), "-d", str(SCARCE_ID), "-c",
                 "3d_fullres", "-f", "all", *plans, "-tr", f"nnUNetTrainerBBoxChannel_{s.box_epochs}epochs",
                 "--as-dataset", str(PSEUDO_ID), "--disable_tta", *cpu],
            ], "box-only annotations turned into pseudo-masks by a box-guided nnU-Net: the held-out cases in "
               f"LLD-MMRI's layout ({lld}: images/<patient>/<study>/<series>.nii.gz and Annotation.json with one box "
               "per tumour)", prepare=lambda: make_lld_mmri_folder(raw, lld)),
            Step("generate", [
                ["tumorsynth_generate", "-d", str(SCARCE_ID), "-c", "3d_fullres", "-f", "all", *plans, "-n",
                 str(s.generated_images), "--as-dataset", str(GENERATED_ID), "--texture", "heuristic", "--size",
                 s.synth_size, "--seed", str(s.seed), *cpu],
                ["tumorsynth_preview", "-i", os.path.join(self.env["nnUNet_raw"], f"Dataset{GENERATED_ID}_"
                                                          f"{SCARCE_NAME}Synth"),
                 "-o", self.path("previews", "generated"), "--overwrite", "--no-progress"],
            ], "the paper's offline path: a few synthetic images written as a new nnU-Net dataset"),
        ]
        return steps

    def realism_arguments(self, bank: str) -> list[str]:
        raw = os.path.join(self.env["nnUNet_raw"], self.scarce)
        return ["--real", raw, "--synthetic", bank, "-o", self.path("realism"), "--overwrite", "--no-progress"]


def run_demo(settings: DemoSettings) -> dict:
    """Run (or resume) the demo; returns the comparison figures it printed."""
    demo = Demo(settings)
    demo.prepare_workdir()
    print(f"tumorsynth_demo: everything goes under {demo.work}; the commands below run with\n"
          + "\n".join(f"  export {v}={demo.env[v]}" for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results",
                                                              "nnUNet_extTrainer", "TUMORSYNTH_SETTINGS")),
          flush=True)
    start = time.perf_counter()
    for step in demo.steps():
        demo.run(step)
    return report(demo, time.perf_counter() - start)


def report(demo: Demo, seconds: float) -> dict:
    """Print the comparison table and where the report and the pictures are."""
    with open(demo.path("report", "summary.json")) as f:
        summary = json.load(f)
    rows = {}
    for name, folder in summary["folders"].items():
        lesions = folder["lesions"]["2"]
        rows[name] = {"dice": folder["mean"]["2"]["dice"], "nsd": folder["mean"]["2"]["nsd"],
                      "sensitivity": lesions["sensitivity"], "fp_per_case": lesions["false_positives_per_case"]}
    tests = summary["comparisons"][0]["tests"]["2"]["dice"]
    print("\ntumour segmentation on the held-out phantoms (mean over cases):")
    print(f"{'':44s} {'Dice':>6s} {'NSD@2mm':>8s} {'lesion sens.':>13s} {'FP/case':>8s}")
    for name, r in rows.items():
        cells = [("n/a" if r[k] is None else f"{r[k]:.3f}") for k in ("dice", "nsd", "sensitivity", "fp_per_case")]
        print(f"{name:44s} {cells[0]:>6s} {cells[1]:>8s} {cells[2]:>13s} {cells[3]:>8s}")
    p = tests["t_p_value"]
    print(f"one-tailed paired t-test on Dice (synthetic > plain): p = {'n/a' if p is None else f'{p:.3g}'}")
    print(f"report: {demo.path('report', 'report.md')}")
    pictures = [os.path.join(root, f) for sub in ("report", "previews", "realism")
                for root, _, files in os.walk(demo.path(sub)) for f in sorted(files) if f.endswith(".png")]
    print("pictures:\n" + "\n".join(f"  {p}" for p in pictures))
    print(f"demo finished in {seconds / 60:.1f} min (this run); these are phantoms on a CPU budget, not the paper's "
          f"numbers")
    plain, synthetic = (rows[name]["dice"] for name in (demo.trainer("nnUNetTrainer"),
                                                        demo.trainer(demo.settings.synthetic_trainer)))
    outcome = verdict(plain, synthetic, p)
    print(outcome)
    return {"rows": rows, "dice_t_p_value": p, "seconds": seconds, "pictures": pictures, "verdict": outcome}


def verdict(plain_dice: float | None, synthetic_dice: float | None, p_value: float | None) -> str:
    """The demo's last line: what this run shows, in words, so a table of zeros is not read as a result."""
    plain, synthetic = plain_dice or 0.0, synthetic_dice or 0.0
    if plain == 0.0 and synthetic == 0.0:
        return ("RESULT: no conclusion from this run: neither network segmented any tumour voxel (too short a "
                "training for this run's random start). Run again with another --seed; docs/demo.md lists every "
                "measured run.")
    gain = 100.0 * (synthetic - plain)
    significance = "n/a" if p_value is None else f"{p_value:.3g}"
    if gain > 0:
        return (f"RESULT: synthetic tumours helped in this run: tumour Dice {synthetic:.3f} vs {plain:.3f} for plain "
                f"nnU-Net (+{gain:.1f} points, one-tailed paired t-test p = {significance}).")
    return (f"RESULT: no gain in this run: tumour Dice {synthetic:.3f} with synthetic tumours vs {plain:.3f} for plain "
            f"nnU-Net ({gain:+.1f} points).")


def make_lld_mmri_folder(raw: str, folder: str) -> str:
    """Box-only annotations in LLD-MMRI's layout from a dataset's test cases (one 3D box per true tumour)."""
    import SimpleITK as sitk

    from nnunetv2_tumorsynth.boxes import lesion_boxes, write_lld_mmri

    if os.path.exists(folder):
        shutil.rmtree(folder)
    cases = {}
    for i, case in enumerate(sorted(f[: -len(".nii.gz")] for f in os.listdir(os.path.join(raw, "labelsTs")))):
        label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(raw, "labelsTs", f"{case}.nii.gz")))
        series = os.path.join(folder, "images", f"patient{i}", "study0")
        os.makedirs(series)
        shutil.copyfile(os.path.join(raw, "imagesTs", f"{case}_0000.nii.gz"), os.path.join(series, "series0.nii.gz"))
        boxes = [b for lesion in lesion_boxes(label == 2) for b in lesion]
        cases[f"patient{i}"] = [{"studyUID": "study0", "seriesUID": "series0", "phase": "C+A", "boxes": boxes}]
    write_lld_mmri(cases, os.path.join(folder, "Annotation.json"))
    return folder
