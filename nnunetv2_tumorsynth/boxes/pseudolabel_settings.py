"""What ``tumorsynth_pseudolabel`` accepts, and its errors."""

from __future__ import annotations

from dataclasses import dataclass

from nnunetv2_tumorsynth.boxes import (
    PAPER_PHASES,
)


class PseudolabelError(RuntimeError):
    """Bad input for pseudo-labelling; the message says what to fix."""


class UnreadableImage(PseudolabelError):
    """An image file that SimpleITK / nnU-Net cannot read; that case is skipped."""


@dataclass
class PseudolabelSettings:
    """Everything ``tumorsynth_pseudolabel`` accepts (its flag in brackets).

    annotations [-bbox]: LLD-MMRI ``Annotation.json``, or generic boxes (a JSON per case, a folder of them, a CSV).
    images [-i]: image folder (LLD-MMRI: ``<patient>/<study>/<series>.nii.gz``).
    dataset [-d]: dataset the box-guided model was trained on (id or name).
    output_folder [-o]: folder for the label maps; may be None with ``as_dataset``.
    configuration, fold, trainer, plans, checkpoint [-c, -f, -tr, -p, -chk]: which trained model.
    phases [--phases]: LLD-MMRI phases to use, each its own case (None: every phase).
    categories [--categories]: keep LLD-MMRI series whose lesions all have one of these categories (None: all).
    margin_mm [--margin-mm, --keep-outside]: tumour further than this (mm) from every box is removed;
        None keeps it.
    organ_label, tumour_label [--organ-label, --tumour-label]: names or values (None: from dataset.json).
    as_dataset [--as-dataset]: also write ``$nnUNet_raw/Dataset<ID>_<source>Pseudo``.
    save_boxes [--save-boxes]: also write the box rasters to ``<output_folder>/boxes/``.
    device [-device]: ``cpu``, ``cuda`` or ``mps`` (None: cuda when available, else cpu).
    step_size [-step_size]: sliding-window step (fraction of the patch).
    use_mirroring [--disable_tta]: test-time mirroring.
    overwrite [--overwrite]: replace existing outputs.
    """

    annotations: str
    images: str
    dataset: str | int
    output_folder: str | None = None
    configuration: str = "3d_fullres"
    fold: str = "0"
    trainer: str = "nnUNetTrainerBBoxChannel"
    plans: str = "nnUNetPlans"
    checkpoint: str = "checkpoint_final.pth"
    phases: tuple[str, ...] | None = PAPER_PHASES
    categories: tuple[int, ...] | None = None
    margin_mm: float | None = 5.0
    organ_label: str | None = None
    tumour_label: str | None = None
    as_dataset: int | None = None
    save_boxes: bool = False
    device: str | None = None
    step_size: float = 0.5
    use_mirroring: bool = True
    overwrite: bool = False

    @property
    def phases_given(self) -> list[str]:
        """The phases as the command line gives them (``["all"]`` for every phase)."""
        return ["all"] if self.phases is None else list(self.phases)

    @property
    def categories_given(self) -> list[int] | None:
        return None if self.categories is None else list(self.categories)
