"""Synthetic tumours inside nnU-Net training: settings, the store of entries, the data-loader overlay, the
background generator and the trainer session."""
