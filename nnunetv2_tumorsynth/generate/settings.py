"""What ``tumorsynth_generate`` makes: the source, the new dataset, and the tumour settings it shares with training."""

from __future__ import annotations

from dataclasses import dataclass

from nnunetv2_tumorsynth.synthesis.synthesise import TumourSettings

SUPPORTED_NORMALISATIONS = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization",
                            "RGBTo01Normalization")
DEVICES = ("cuda", "cpu")
RECORDS_JSON = "synthesis_records.json"
RECORDS_CSV = "synthesis_records.csv"
SETTINGS_JSON = "tumorsynth_generate.json"
LOG_NAME = "tumorsynth_generate_log.txt"
PREVIEW_PNG = "tumorsynth_preview.png"
# settings that may change between an interrupted run and its resumption
RESUMABLE_CHANGES = ("device", "overwrite", "batch_size")


class GenerateError(RuntimeError):
    """Bad input for offline generation; the message says what to fix."""


@dataclass(kw_only=True)
class GenerateSettings(TumourSettings):
    """What ``generate_dataset`` makes (defaults = Quinton et al. 2026's offline protocol); the tumour is set by
    ``TumourSettings``' fields (Quinton et al. 2026 sample with 250 DDIM steps; image i uses
    ``numpy.random.default_rng([seed, i])``). Mass effect is not applied offline.

    dataset / configuration / plans / fold: the source, as for ``nnUNetv2_train`` (id or name).
    as_dataset: id of the new raw dataset; name: its name after the id (default "<source name>Synth", or
        "<source name>Replaced" with ``replace_real``).
    num_images: synthetic images (default 1000; with ``replace_real`` one per training case with a tumour).
    checkpoint: diffusion checkpoint; None = the one ``tumorsynth_pretrain_ddpm`` wrote for this dataset,
        plans, configuration and fold (or ``$TUMORSYNTH_DDPM_CHECKPOINT``).
    include_real: also copy the fold's real training cases (unchanged) into the new dataset.
    replace_real: replace each real tumour by a synthetic one in the same mask instead of adding one.
    device: "cuda" or "cpu" (diffusion model only).
    batch_size: diffusion crops per network evaluation, and images planned together whose tumours are filled in
        one texture call (``generator``'s "Batches"; the heuristic texture makes one image at a time). The images
        depend on it only through which random numbers fill the tumours, not in distribution; it may change when
        an interrupted run resumes.
    overwrite: replace an existing dataset with this id; restart an unfinished run made with other settings.
    """

    dataset: str | int
    as_dataset: int
    configuration: str = "3d_fullres"
    fold: int | str = 0
    plans: str = "nnUNetPlans"
    num_images: int | None = None
    name: str | None = None
    checkpoint: str | None = None
    include_real: bool = False
    replace_real: bool = False
    device: str = "cuda"
    batch_size: int = 4
    overwrite: bool = False
    ddpm_steps: int = 250  # the paper's offline sampling, DDIM 250 (the trainers: DPM-Solver++(2M), 5 steps)
    ddpm_sampler: str = "ddim"
    seed: int = 0

    def check(self) -> None:
        """Raise GenerateError naming the first setting outside its choices."""
        try:
            super().check()
        except ValueError as e:
            raise GenerateError(str(e)) from e
        if self.device not in DEVICES:
            raise GenerateError(f"device must be one of {list(DEVICES)}, got {self.device!r}")
        if self.mass_effect:
            raise GenerateError("mass_effect is not applied by tumorsynth_generate; leave it at 0")
        if self.batch_size < 1:
            raise GenerateError(f"batch_size must be at least 1, got {self.batch_size!r}")
