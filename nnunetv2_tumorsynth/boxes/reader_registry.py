"""One entry point for box annotation files, :func:`read_box_annotations`, choosing the reader by the file.

Like nnU-Net's ``imageio/reader_writer_registry.py``: :data:`BOX_READERS` lists the formats in the order
they are tried; each has a test that recognises its files and a reader with one common signature. The
generic format comes last and takes whatever the others did not recognise (its reader says what is
wrong with a file that is not generic either).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

from nnunetv2_tumorsynth.boxes.annotations import AnnotationError, BoxCase
from nnunetv2_tumorsynth.boxes.generic import read_generic
from nnunetv2_tumorsynth.boxes.lld_mmri import PAPER_PHASES, is_lld_mmri, read_lld_mmri


class BoxReader(NamedTuple):
    """A box annotation format: ``recognises(path)`` and ``read(path, images_dir, phases, categories,
    file_ending, num_channels)``."""

    name: str
    recognises: Callable[[str], bool]
    read: Callable[..., list[BoxCase]]


def _read_lld_mmri(path, images_dir, phases, categories, file_ending, num_channels) -> list[BoxCase]:
    # LLD-MMRI ships .nii.gz images whatever the model's dataset uses; one image (series) per case
    return read_lld_mmri(path, images_dir, phases, categories)


def _read_generic(path, images_dir, phases, categories, file_ending, num_channels) -> list[BoxCase]:
    return read_generic(path, images_dir, file_ending, num_channels)  # no phases or categories in this format


BOX_READERS: tuple[BoxReader, ...] = (
    BoxReader("LLD-MMRI Annotation.json", is_lld_mmri, _read_lld_mmri),
    BoxReader("generic JSON/CSV boxes", lambda path: True, _read_generic),
)


def read_box_annotations(path: str, images_dir: str, phases=PAPER_PHASES, categories=None,
                         file_ending: str = ".nii.gz", num_channels: int = 1) -> list[BoxCase]:
    """Cases from LLD-MMRI's ``Annotation.json`` (recognised by its ``Annotation_info`` key) or the generic
    format (:func:`~nnunetv2_tumorsynth.boxes.generic.read_generic`).

    ``phases`` and ``categories`` filter LLD-MMRI series (see :func:`~.lld_mmri.read_lld_mmri`);
    ``file_ending`` and ``num_channels`` give the generic format's image files (nnU-Net naming).
    """
    if not os.path.exists(path):
        raise AnnotationError(f"box annotation file {path} does not exist")
    reader = next(r for r in BOX_READERS if r.recognises(path))
    return reader.read(path, images_dir, phases, categories, file_ending, num_channels)
