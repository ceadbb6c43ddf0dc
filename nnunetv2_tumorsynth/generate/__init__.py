"""Offline synthetic datasets (``tumorsynth_generate``): new nnU-Net raw datasets in the source's raw geometry."""
