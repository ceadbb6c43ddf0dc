"""nnU-Net trainer classes of nnunetv2-tumorsynth.

nnU-Net imports the modules of this folder by file name when ``nnUNet_extTrainer`` points here
(``eval "$(tumorsynth_env)"``). Each trainer is a thin class; the work lives in ``nnunetv2_tumorsynth``.
"""
