"""nnunetv2-tumorsynth: synthetic tumours for nnU-Net v2 training.

The library (this package) knows nothing of nnU-Net trainer classes; those live in the top-level
``trainers/`` folder (installed as ``nnunetv2_tumorsynth_trainers``) and are found by nnU-Net through
``nnUNet_extTrainer`` (run ``tumorsynth_env``).
"""

__version__ = "0.1.0"
