"""Synthesis in the background: a thread of the trainer's process keeps the synthesis bank topped up.

The synchronous bank makes its entries at the start of every epoch while training waits. Here one
thread of the trainer's process makes them while training runs, so after the first epoch the training
loop never waits for synthesis:

- **Budget.** At the start of each epoch the generator is given that epoch's budget: a number of new
  entries (the same ``entries_per_epoch`` as the synchronous mode) or, with ``seconds_per_epoch``, a
  number of seconds of generator work. It makes entries in batches until the budget is spent, then
  idles until the next epoch. Whatever is left of an epoch's budget when the next epoch starts is
  dropped, not carried over: a generator slower than training simply makes fewer entries per epoch
  (the log says how many), and the bank's entries are reused more often.
- **Batches.** Each ``SynthesisBank.generate`` call plans several entries and fills them in one texture
  call: as many as the DDPM texture samples per network evaluation (its ``batch_size``, see
  ``store.fill_batch_size``), so the network runs on full batches, but never more than the epoch's
  remaining count, so a count budget is met exactly (an entry belongs to the epoch in which its call
  ended). The heuristic texture fills one crop at a time, so it gains nothing from batches and makes
  one entry per call (which keeps ``stop`` and a budget in seconds fine-grained). With a budget in
  seconds the budget is checked before each call, so an epoch can overrun it by one call.
- **Devices.** On CUDA the generator samples on its own ``torch.cuda.Stream`` of the training device, so
  its kernels fill the gaps that training leaves on the GPU. On any device the thread limits its own
  PyTorch intra-op threads (``threads``; with PyTorch's OpenMP backend the count belongs to the calling
  thread, so the training thread keeps its own; threads created later start with the last count set)
  and, on Linux, can lower its own scheduling priority (``nice``; the nice value is per thread there).
  A niced generator leaves the CPU to training, but whenever it is descheduled while holding Python's
  GIL the training thread waits for it; raise ``nice`` only on a CPU-only machine (default 0).
- **Errors.** An exception in the generator ends the thread and is kept; ``check`` (called by the
  training loop at every epoch start and end) raises it in the training thread, chained to the
  original exception so its traceback is printed.
- **Shutdown.** ``stop`` asks the thread to end and joins it. A diffusion sampling in progress is
  cancelled at its next network evaluation (a forward pre-hook on the model), so stopping takes a
  fraction of a second; the entries it was making are never written. Entries are written atomically
  (temporary file, then rename), so no half-written entry can appear even if the process is killed.
- **Determinism.** With a ``seed`` and a count budget on one rank, the entries made (which case, which
  mask, which texture) are always a prefix of the same sequence, in every run on the same device: the
  generator is the only user of the bank's random generator, and its calls have the same sizes in every
  run as long as it finishes each epoch's budget (the batch size decides how the random generator is
  drawn: when a slow generator's epoch is cut short, the sizes of its later calls, and so the random
  draws, depend on where the cut fell; with batches of one entry they never do). What is not
  reproducible is *when* each entry appears relative to training iterations (and how many a slow
  generator finishes per epoch), hence which entries a training sample can draw. The synchronous mode
  makes the same entries in the same epochs in every run. (nnU-Net's own data loading is
  nondeterministic in both modes.) With a budget in seconds the number of entries per epoch depends on
  speed as well.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback

import torch

from nnunetv2_tumorsynth.bank.store import SynthesisBank, SynthesisStats, fill_batch_size

THREAD_NAME = "tumorsynth-generator"


class GenerationCancelled(Exception):
    """Raised inside the generator thread, at a network evaluation, once ``stop`` has been asked."""


class BackgroundGenerator:
    """Makes bank entries in a thread of the trainer's process, within a per-epoch budget.

    Use from the training thread only: ``new_epoch(epoch)`` at every epoch start (the first call
    starts the thread), ``totals()`` and ``check()`` whenever, ``stop()`` at the end (idempotent).

    bank: the ``SynthesisBank`` (its texture backend, random generator and folder are used by the
        thread alone from the first ``new_epoch`` on).
    dataset / cases: nnU-Net's training dataset (``load_case``) and its training case identifiers.
    entries_per_epoch: entries to make per epoch (ignored when ``seconds_per_epoch`` is given).
    seconds_per_epoch: budget of generator work per epoch in wall seconds, instead of a count.
    threads: PyTorch intra-op threads of the generator thread.
    nice: added to the generator thread's nice value on Linux (0 = same priority as training).
    device: where the texture backend runs; on CUDA the thread uses its own stream of that device.
    """

    def __init__(self, bank: SynthesisBank, dataset, cases: list[str], entries_per_epoch: int,
                 seconds_per_epoch: float | None = None, threads: int = 1, nice: int = 0,
                 device: torch.device | str = "cpu"):
        self.bank, self.dataset, self.cases = bank, dataset, list(cases)
        self.entries_per_epoch, self.seconds_per_epoch = int(entries_per_epoch), seconds_per_epoch
        self.threads, self.nice, self.device = int(threads), int(nice), torch.device(device)
        self.error: BaseException | None = None
        self.error_traceback = ""
        self.error_epoch: int | None = None
        self.error_raised = False
        self._condition = threading.Condition()  # guards every attribute below
        self._stopping = False
        self._epoch = 0
        self._totals = SynthesisStats()
        self._busy_since: float | None = None  # start of the call in progress
        self._epoch_start_attempted = 0  # made + rejected before this epoch
        self._epoch_start_busy = 0.0
        self._epoch_exhausted = False  # no usable case is left: nothing more to make this epoch
        self._thread: threading.Thread | None = None
        self._hook = None

    # ---- training thread -------------------------------------------------------------------------

    def new_epoch(self, epoch: int) -> None:
        """Give the generator the budget of ``epoch`` (the rest of the previous one is dropped).

        The first call starts the thread.
        """
        with self._condition:
            self._epoch = epoch
            self._epoch_start_attempted = self._attempted()
            self._epoch_start_busy = self._busy_seconds()
            self._epoch_exhausted = False
            self._condition.notify_all()
        if self._thread is None and not self._stopping:
            model = getattr(self.bank.texture, "model", None)
            if isinstance(model, torch.nn.Module):  # lets stop() cancel a sampling at its next network evaluation
                self._hook = model.register_forward_pre_hook(self._cancel_if_stopping)
            self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread.start()

    def totals(self) -> SynthesisStats:
        """A copy of the cumulative figures, the entry in progress counted in ``busy_seconds``."""
        with self._condition:
            copy = SynthesisStats()
            copy.add(self._totals, self._busy_seconds())
            return copy

    def check(self) -> None:
        """Raise the generator's exception in the calling thread, if it failed (once)."""
        if self.error is not None and not self.error_raised:
            self.error_raised = True
            raise RuntimeError(f"synthetic tumours: the background generator failed in epoch {self.error_epoch}; "
                               f"its traceback:\n{self.error_traceback}") from self.error

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> float:
        """End the thread (a sampling in progress is cancelled) and wait for it; returns the seconds waited."""
        start = time.perf_counter()
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        return time.perf_counter() - start

    # ---- generator thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._lower_own_priority()
            with self._device_context():
                while True:
                    budget = self._wait_for_budget()
                    if budget is None:
                        return
                    self._make_batch(*budget)
        except GenerationCancelled:
            pass
        except BaseException as error:  # kept for check(): the training thread raises it
            self.error, self.error_traceback, self.error_epoch = error, traceback.format_exc(), self._epoch
        finally:
            with self._condition:
                if self._busy_since is not None:
                    self._totals.busy_seconds += time.perf_counter() - self._busy_since
                    self._busy_since = None

    def _make_batch(self, epoch: int, count: int) -> None:
        """One ``SynthesisBank.generate`` call of ``count`` entries (one texture call) for ``epoch``."""
        with self._condition:
            self._busy_since = time.perf_counter()
        stats = self.bank.generate(self.dataset, self.cases, count, epoch)
        with self._condition:
            self._totals.add(stats, time.perf_counter() - self._busy_since)
            self._busy_since = None
            if stats.made + stats.rejected == 0:  # every case is unusable: wait for the next epoch, no spinning
                self._epoch_exhausted = True

    def _wait_for_budget(self) -> tuple[int, int] | None:
        """Block until the current epoch has budget left: (its epoch number, entries for the next call), or None
        when stopping."""
        with self._condition:
            while not self._stopping and not self._has_budget():
                self._condition.wait()
            return None if self._stopping else (self._epoch, self._next_batch())

    def _next_batch(self) -> int:
        """Entries for the next call: the texture's batch, no more than the epoch's remaining count budget."""
        batch = fill_batch_size(self.bank.texture)
        if self.seconds_per_epoch is not None:
            return batch
        return min(batch, self.entries_per_epoch - (self._attempted() - self._epoch_start_attempted))

    def _has_budget(self) -> bool:
        if self._epoch_exhausted:
            return False
        if self.seconds_per_epoch is not None:
            return self._busy_seconds() - self._epoch_start_busy < self.seconds_per_epoch
        return self._attempted() - self._epoch_start_attempted < self.entries_per_epoch

    def _attempted(self) -> int:
        """Entries made or rejected by the quality gate: both spend the epoch's budget."""
        return self._totals.made + self._totals.rejected

    def _busy_seconds(self) -> float:
        running = 0.0 if self._busy_since is None else time.perf_counter() - self._busy_since
        return self._totals.busy_seconds + running

    def _lower_own_priority(self) -> None:
        torch.set_num_threads(self.threads)  # this thread's OpenMP count; the training thread keeps its own
        if self.nice > 0 and sys.platform.startswith("linux"):  # Linux: the nice value of one thread
            tid = threading.get_native_id()
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice))

    def _device_context(self) -> contextlib.ExitStack:
        """On CUDA: the training device and a stream of the generator's own; elsewhere nothing."""
        stack = contextlib.ExitStack()
        if self.device.type == "cuda":
            stack.enter_context(torch.cuda.device(self.device))
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))  # the model's weights are in place
            stack.enter_context(torch.cuda.stream(stream))
        return stack

    def _cancel_if_stopping(self, module, args) -> None:
        if self._stopping and threading.current_thread() is self._thread:
            raise GenerationCancelled()
