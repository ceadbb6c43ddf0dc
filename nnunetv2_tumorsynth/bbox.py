"""Kept for compatibility: the box code now lives in the package :mod:`nnunetv2_tumorsynth.boxes`.

``from nnunetv2_tumorsynth.bbox import Box, read_box_annotations, ...`` keeps working for every public
name it had; new code imports from ``nnunetv2_tumorsynth.boxes``.
"""

from nnunetv2_tumorsynth.boxes import *  # noqa: F403
from nnunetv2_tumorsynth.boxes import __all__  # noqa: F401
