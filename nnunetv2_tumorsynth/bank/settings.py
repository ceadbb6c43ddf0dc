"""Settings of synthetic-tumour training: trainer attributes, overridable by ``$TUMORSYNTH_SETTINGS`` (JSON)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

from nnunetv2_tumorsynth.synthesis.synthesise import TumourSettings

SETTINGS_ENV = "TUMORSYNTH_SETTINGS"


@dataclass(kw_only=True)
class SynthSettings(TumourSettings):
    """How synthetic tumours enter nnU-Net training; the tumour itself is set by ``TumourSettings``' fields.

    probability: chance that a training sample receives one synthetic tumour (the paper adds one).
    reuse: how many training samples one entry serves on average; sets how many entries are made per epoch
        (iterations x batch size x probability / reuse).
    max_entries_per_case: newest entries kept per case; older ones are deleted.
    preview_every: write a PNG preview every this many epochs (0 = never).
    dump_samples: each data-loader worker saves its first N overlays (before/after) for inspection.
    background: make entries in a thread of the trainer's process while training runs (True; see
        ``bank.background``), or at the start of every epoch while training waits (False; fully reproducible
        under ``seed``). None (default): True on a CUDA device, False otherwise (docs/trainers.md). Either way the
        DDPM texture fills up to its batch of crops per network evaluation (``session.load_texture``'s default
        4) in one call (``store.fill_batch_size``).
    background_seconds: with ``background``, a budget of generator work per epoch in wall seconds instead of
        the entry count above (None = the count).
    background_threads: PyTorch intra-op threads of the background generator thread.
    background_nice: added to the background generator thread's nice value on Linux (0 = none).
    min_contrast_sd: quality gate: an entry whose contrast to its parenchyma ring (``statistics.RING_MM``) is
        fainter than this many ring SDs (absolute value) is not written, as an invisible tumour is label noise (a
        cheap form of the gate of Wu et al. 2025, FreeTumor). "data": half the contrast of the faintest of the
        fold's annotated tumours (``statistics.GATE_FRACTION``; off when the fold has fewer than
        ``statistics.MIN_TUMOURS``), since a fixed threshold that suits one dataset rejects most real lesions of
        another. 0 (default) = off; measured in docs/benchmarks.md.
        Rejected entries count against the epoch's budget.
    """

    probability: float = 0.5
    reuse: int = 10
    max_entries_per_case: int = 8
    preview_every: int = 50
    dump_samples: int = 0
    background: bool | None = None
    background_seconds: float | None = None
    background_threads: int = 1
    background_nice: int = 0
    min_contrast_sd: float | str = 0.0

    def check(self) -> None:
        """Raise ValueError naming the first setting outside its choices or range."""
        super().check()
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"setting 'probability' must be between 0 and 1, got {self.probability!r}")
        gate = self.min_contrast_sd
        if gate != "data" and (isinstance(gate, (str, bool)) or not isinstance(gate, (int, float)) or gate < 0):
            raise ValueError(f"setting 'min_contrast_sd' must be 0 (off), a positive number of parenchyma SDs or "
                             f"'data', got {gate!r}")
        for name in ("reuse", "max_entries_per_case"):
            if getattr(self, name) < 1:
                raise ValueError(f"setting {name!r} must be at least 1, got {getattr(self, name)!r}")

    def updated_from_json(self, path: str) -> SynthSettings:
        """A copy with the keys of the JSON file at ``path`` replaced; unknown keys or bad values are an error
        that names the file."""
        try:
            with open(path) as f:
                overrides = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{SETTINGS_ENV}={path}: cannot read the settings file ({e})") from e
        if not isinstance(overrides, dict):
            raise ValueError(f"{SETTINGS_ENV}={path}: expected a JSON object of settings, got "
                             f"{type(overrides).__name__}")
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"{path}: unknown synthetic-tumour settings {unknown}; known: {sorted(known)}")
        settings = SynthSettings(**{**asdict(self), **overrides})
        try:
            settings.check()
        except ValueError as e:
            raise ValueError(f"{SETTINGS_ENV}={path}: {e}") from e
        return settings


def resolve_settings(defaults: SynthSettings) -> SynthSettings:
    """The trainer's settings, updated from the JSON file named by ``$TUMORSYNTH_SETTINGS`` if set."""
    path = os.environ.get(SETTINGS_ENV)
    return defaults.updated_from_json(path) if path else defaults
