"""Pseudo-mask post-processing: predicted tumour outside the boxes (plus a margin) is removed."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def restrict_tumour_to_boxes(segmentation: np.ndarray, allowed: np.ndarray, organ_label: int,
                             tumour_label: int) -> tuple[np.ndarray, int]:
    """Remove predicted tumour voxels outside ``allowed`` (the boxes plus margin).

    Each removed piece (connected component) takes the label that surrounds most of it: the organ
    label when the voxels bordering it are mostly organ (or tumour), else background. Returns the new
    label map and the number of voxels changed.
    """
    removed = (segmentation == tumour_label) & ~allowed
    if not removed.any():
        return segmentation, 0
    out = segmentation.copy()
    labelled, n = ndimage.label(removed, structure=np.ones((3,) * removed.ndim, dtype=bool))
    organ_like = (segmentation == organ_label) | ((segmentation == tumour_label) & allowed)
    for index, found in enumerate(ndimage.find_objects(labelled), start=1):
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in found)
        piece = labelled[grown] == index
        ring = ndimage.binary_dilation(piece, structure=np.ones((3,) * piece.ndim, dtype=bool)) & ~piece
        organ_votes = int(organ_like[grown][ring].sum())
        fill = organ_label if organ_votes * 2 > int(ring.sum()) else 0
        out[grown][piece] = fill
    return out, int(removed.sum())
