"""Background synthesis generator: lifecycle unit tests with a cheap fake texture (no nnU-Net run)."""

from __future__ import annotations

import glob
import os
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import log_line

from nnunetv2_tumorsynth.bank.background import THREAD_NAME, BackgroundGenerator
from nnunetv2_tumorsynth.bank.session import SyntheticTumourTraining
from nnunetv2_tumorsynth.bank.settings import SynthSettings
from nnunetv2_tumorsynth.bank.store import SynthesisBank, entry_paths
from nnunetv2_tumorsynth.phantom import PhantomSettings, make_phantom_case

SPACING = (3.0, 1.5, 1.5)
CASES = ["case0", "case1", "case2"]


class FakeDataset:
    """nnU-Net's preprocessed dataset as the bank uses it: identifiers and load_case."""

    def __init__(self):
        rng = np.random.default_rng(0)
        shape = PhantomSettings(shape=(16, 48, 48))
        self.cases = {}
        for case in CASES:
            image, label = make_phantom_case(rng, shape, with_tumours=False)
            self.cases[case] = (((image - image.mean()) / image.std())[None].astype(np.float32), label[None])
        self.identifiers = list(self.cases)

    def load_case(self, identifier):
        data, seg = self.cases[identifier]
        return data, seg, None, {"class_locations": {2: np.zeros((0, 4), int)}}


class FakeTexture:
    """Stands in for DDPMTexture: ``steps`` evaluations of a tiny torch model per fill, each ``step_seconds``
    long; raises on fill call number ``fail_on_call``; records the thread and torch thread count it ran with and
    the crops of every call. ``batch_size``: crops per network evaluation (None: no such attribute)."""

    crop_size = (16, 32, 32)

    def __init__(self, steps: int = 2, step_seconds: float = 0.0, fail_on_call: int | None = None,
                 batch_size: int | None = None):
        self.model = torch.nn.Identity()
        self.steps, self.step_seconds, self.fail_on_call = steps, step_seconds, fail_on_call
        if batch_size is not None:
            self.batch_size = batch_size
        self.calls = 0
        self.batches: list[int] = []
        self.seen: set[tuple[str, int]] = set()

    def fill(self, images, masks, organs, rng, spacing=None, draws=None):
        self.calls += 1
        self.batches.append(len(images))
        self.seen.add((threading.current_thread().name, torch.get_num_threads()))
        if self.calls == self.fail_on_call:
            raise ValueError("texture exploded")
        x = torch.from_numpy(images)
        for _ in range(self.steps):
            time.sleep(self.step_seconds)
            x = self.model(x)
        out = x.numpy().copy()
        out[masks] += float(rng.uniform(1.0, 2.0))
        return out


@pytest.fixture(scope="module")
def dataset():
    return FakeDataset()


def make_generator(folder, dataset, texture, entries_per_epoch=2, seconds=None):
    settings = SynthSettings(texture="heuristic", size="small", seed=1)
    bank = SynthesisBank(str(folder), texture, settings, SPACING, organ_label=1, tumour_label=2)
    return BackgroundGenerator(bank, dataset, dataset.identifiers, entries_per_epoch, seconds, threads=1, nice=5)


def wait_until(condition, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def generator_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def files_in(folder) -> list[str]:
    return [os.path.basename(p) for p in glob.glob(os.path.join(str(folder), "*", "*"))] + \
        [os.path.basename(p) for p in glob.glob(os.path.join(str(folder), "*", ".*"))]


def test_generator_makes_each_epochs_budget_then_idles(dataset, tmp_path):
    texture = FakeTexture()
    generator = make_generator(tmp_path, dataset, texture, entries_per_epoch=2)
    threads_before = torch.get_num_threads()
    try:
        generator.new_epoch(0)
        assert len(generator_threads()) == 1
        wait_until(lambda: generator.totals().made == 2)
        time.sleep(0.3)
        assert generator.totals().made == 2, "idle once the epoch's budget is spent"
        generator.new_epoch(1)
        wait_until(lambda: generator.totals().made == 4)
        generator.check()
    finally:
        waited = generator.stop()
    assert waited < 5 and not generator_threads() and not generator.running
    assert texture.seen == {(THREAD_NAME, 1)}, "sampling runs in the generator thread with its own thread count"
    assert torch.get_num_threads() == threads_before, "the training thread keeps its torch thread count"
    totals = generator.totals()
    assert totals.made == 4 and len(totals.volumes_ml) == 4 and totals.busy_seconds > 0
    assert sum(len(entry_paths(str(tmp_path), c)) for c in CASES) == 4
    assert not [f for f in files_in(tmp_path) if f.startswith(".")], "no temporary file left"
    generator.new_epoch(2)
    assert not generator_threads(), "a stopped generator never starts again"


def test_rejected_entries_spend_the_budget(dataset, tmp_path):
    """A quality gate that rejects every entry makes the generator idle after its budget, not spin."""
    texture = FakeTexture()
    settings = SynthSettings(texture="heuristic", size="small", seed=1, min_contrast_sd=1e6)
    bank = SynthesisBank(str(tmp_path), texture, settings, SPACING, organ_label=1, tumour_label=2)
    generator = BackgroundGenerator(bank, dataset, dataset.identifiers, 3, None, threads=1, nice=5)
    try:
        generator.new_epoch(0)
        wait_until(lambda: generator.totals().rejected == 3)
        time.sleep(0.3)
        assert texture.calls == 3, "idle once the epoch's budget is spent"
        generator.check()
    finally:
        generator.stop()
    assert generator.totals().made == 0 and not entry_paths(str(tmp_path), "case0")


def test_generator_fills_batches_within_each_epochs_budget(dataset, tmp_path):
    texture = FakeTexture(batch_size=2)
    generator = make_generator(tmp_path, dataset, texture, entries_per_epoch=5)
    try:
        generator.new_epoch(0)
        wait_until(lambda: generator.totals().made == 5)
        time.sleep(0.3)
        assert generator.totals().made == 5, "never more than the epoch's budget"
        assert texture.batches == [2, 2, 1], "the texture's batch per call, the last call cut to the budget left"
        generator.new_epoch(1)
        wait_until(lambda: generator.totals().made == 10)
        time.sleep(0.3)
        generator.check()
    finally:
        generator.stop()
    assert generator.totals().made == 10 and texture.batches == [2, 2, 1, 2, 2, 1]
    assert sum(len(entry_paths(str(tmp_path), c)) for c in CASES) == 10


def test_seconds_budget(dataset, tmp_path):
    texture = FakeTexture(steps=2, step_seconds=0.05)  # about 0.1 s per entry
    generator = make_generator(tmp_path, dataset, texture, seconds=0.25)
    try:
        generator.new_epoch(0)
        wait_until(lambda: generator.totals().busy_seconds >= 0.25)
        wait_until(lambda: generator.totals().made >= 1)
        time.sleep(0.4)
        made = generator.totals().made
        time.sleep(0.3)
        assert generator.totals().made == made, "idle once the epoch's seconds are spent"
        assert 1 <= made <= 4
    finally:
        generator.stop()


def test_generator_error_surfaces_in_training_with_its_traceback(dataset, tmp_path):
    generator = make_generator(tmp_path, dataset, FakeTexture(fail_on_call=2), entries_per_epoch=5)
    generator.new_epoch(3)
    wait_until(lambda: not generator.running)
    assert not generator_threads(), "the thread ends on an error"
    with pytest.raises(RuntimeError, match="failed in epoch 3") as info:
        generator.check()
    assert isinstance(info.value.__cause__, ValueError) and "texture exploded" in str(info.value.__cause__)
    assert 'raise ValueError("texture exploded")' in str(info.value), "the generator's traceback is shown"
    assert "in fill" in str(info.value)
    generator.check()  # raised once only
    generator.stop()
    assert generator.totals().made == 1


def test_stop_cancels_a_sampling_in_progress(dataset, tmp_path):
    texture = FakeTexture(steps=1000, step_seconds=0.01)  # 10 s per entry unless cancelled
    generator = make_generator(tmp_path, dataset, texture)
    generator.new_epoch(0)
    wait_until(lambda: generator.totals().busy_seconds > 0.2)
    waited = generator.stop()
    assert waited < 1.0, f"stop took {waited:.2f} s"
    assert not generator_threads() and generator.error is None
    assert generator.totals().made == 0 and files_in(tmp_path) == [], "the cancelled entry is never written"
    assert not texture.model._forward_pre_hooks, "the cancellation hook is removed"


def make_training(folder, **settings) -> tuple[SyntheticTumourTraining, list[str]]:
    lines: list[str] = []
    s = SynthSettings(texture="heuristic", size="small", seed=1, preview_every=1, background_nice=0, **settings)
    dataset = SimpleNamespace(name="Dataset999_Fake", spacing=SPACING, organ_label=1, tumour_label=2, num_channels=1,
                              configuration="3d_fullres", configuration_manager=SimpleNamespace(spacing=SPACING))
    training = SyntheticTumourTraining(s, lines.append, str(folder), dataset, 0, torch.device("cpu"))
    return training, lines


def run_epochs(training: SyntheticTumourTraining, epochs: range) -> None:
    for epoch in epochs:
        target = training.entries_per_epoch + (training.generator.totals().made if training.generator else 0)
        training.before_epoch(epoch)
        if training.generator is not None:  # stands in for the epoch's training iterations
            wait_until(lambda t=target: training.generator.totals().made == t)
        training.after_epoch(epoch)


def test_training_lifecycle_background_then_resume(dataset, tmp_path):
    training, lines = make_training(tmp_path, background=True)
    training.start(dataset, batch_size=2, iterations_per_epoch=10, epoch=0)  # p 0.5, reuse 10: 1 entry/epoch
    assert training.entries_per_epoch == 1
    assert sum(bool(entry_paths(training.bank_folder, c)) for c in CASES) == 3, "initial bank: every case"
    assert not generator_threads(), "the thread starts with the first epoch"
    run_epochs(training, range(2))
    training.stop()
    training.stop()
    assert not generator_threads()
    log = "\n".join(lines)
    assert log_line(log, "initial bank 3 entries") and log_line(log, "background", "1 new entries", "epoch")
    assert log.count("training waited 0.00 s") == 2 and log.count("generator busy") == 2
    assert "background generator stopped" in log
    assert os.path.isfile(os.path.join(str(tmp_path), "synthetic_tumours_epoch0001.png"))

    # --c: an earlier process of this rank was killed mid-write; the bank is kept, its leftover removed
    held = sorted(glob.glob(os.path.join(training.bank_folder, "*", "*.npz")))
    leftover = os.path.join(training.bank_folder, "case0", ".tmp123_e00001_r0_p123_000009.npz")
    open(leftover, "wb").close()
    resumed, lines = make_training(tmp_path, background=True)
    resumed.start(dataset, batch_size=2, iterations_per_epoch=10, epoch=2)
    assert not os.path.exists(leftover)
    assert sorted(glob.glob(os.path.join(training.bank_folder, "*", "*.npz"))) == held
    run_epochs(resumed, range(2, 3))
    resumed.stop()
    log = "\n".join(lines)
    assert log_line(log, "removed 1", "unfinished") and log_line(log, "initial bank 0 entries"), "no wait on resume"
    assert not generator_threads()


def test_training_synchronous_mode_waits_and_reports(dataset, tmp_path):
    training, lines = make_training(tmp_path)  # 'background' unset: synchronous on a CPU device
    assert not training.background and log_line(lines[-1:], "synchronous", "CUDA")
    training.start(dataset, batch_size=2, iterations_per_epoch=10, epoch=0)
    run_epochs(training, range(2))
    training.stop()
    assert training.generator is None and not generator_threads()
    per_epoch = [line for line in lines if "generator busy" in line]
    assert len(per_epoch) == 2
    for line in per_epoch:
        busy = float(line.split("generator busy ")[1].split(" s")[0])
        waited = float(line.split("training waited ")[1].split(" s")[0])
        # synchronous: the training waits exactly as long as the generator works (one heuristic
        # tumour can take under 5 ms on a fast machine, so the logged 0.00 s is allowed)
        assert line.startswith("synthetic tumours: 1 made") and busy == waited >= 0


def test_training_raises_a_generator_error_at_the_epoch_end_and_logs_it(dataset, tmp_path):
    training, lines = make_training(tmp_path, background=True)
    training.start(dataset, batch_size=2, iterations_per_epoch=10, epoch=0)
    training.generator.bank.texture = FakeTexture(fail_on_call=1)
    training.before_epoch(0)
    wait_until(lambda: not training.generator.running)
    with pytest.raises(RuntimeError, match="background generator failed in epoch 0"):
        training.after_epoch(0)
    training.stop()
    assert 'raise ValueError("texture exploded")' in "\n".join(lines), "the training log has the traceback"


def test_trainer_stops_the_generator_when_training_fails(dataset, tmp_path, monkeypatch):
    """Ctrl-C (or any exception) in nnU-Net's run_training: the trainer stops the generator, no thread is left."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2_tumorsynth_trainers.nnUNetTrainerSynthTumor import nnUNetTrainerSynthTumor

    training, _ = make_training(tmp_path, background=True)
    training.start(dataset, batch_size=2, iterations_per_epoch=10, epoch=0)
    training.generator.bank.texture = FakeTexture(steps=1000, step_seconds=0.01)  # slow: busy when interrupted

    def interrupted_training(self):
        self.synthesis.before_epoch(0)
        wait_until(lambda: self.synthesis.generator.totals().busy_seconds > 0.1)
        raise KeyboardInterrupt

    monkeypatch.setattr(nnUNetTrainer, "run_training", interrupted_training)
    trainer = object.__new__(nnUNetTrainerSynthTumor)  # no nnU-Net set-up needed for this path
    trainer.synthesis = training
    with pytest.raises(KeyboardInterrupt):
        trainer.run_training()
    assert not generator_threads()
