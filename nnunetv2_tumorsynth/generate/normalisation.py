"""The exact inverse of nnU-Net's normalisation of one case, so synthetic values return to the raw intensity scale."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnunetv2_tumorsynth.generate.settings import SUPPORTED_NORMALISATIONS, GenerateError


@dataclass(frozen=True)
class InverseNormalisation:
    """raw = clip(normalised * scale + offset, *clip): the inverse of one case's nnU-Net normalisation."""

    scheme: str
    scale: float
    offset: float
    clip: tuple[float, float] | None = None

    def __call__(self, values: np.ndarray) -> np.ndarray:
        raw = np.asarray(values, np.float64) * self.scale + self.offset
        return raw if self.clip is None else np.clip(raw, *self.clip)

    def forward(self, raw: np.ndarray) -> np.ndarray:
        """The normalisation itself (for checks): (clip(raw) - offset) / scale."""
        raw = np.asarray(raw, np.float64)
        if self.clip is not None:
            raw = np.clip(raw, *self.clip)
        return (raw - self.offset) / self.scale


def inverse_normalisation(image: np.ndarray, seg: np.ndarray, scheme: str, use_mask_for_norm: bool,
                          intensity_properties: dict, check: bool = True) -> InverseNormalisation:
    """Invert nnU-Net's normalisation of one channel of one case.

    image: the channel as nnU-Net normalises it: float32, transposed and cropped to the non-zero region
        (preprocessed axis order, before resampling). seg: the cropped label with -1 outside the
        non-zero region (``crop_to_nonzero``'s output); used by ZScore with ``use_mask_for_norm``.
    scheme: the configuration's normalisation class name. ZScore uses this case's own mean and standard
        deviation (inside ``seg >= 0`` with ``use_mask_for_norm``); CT uses the plans' foreground
        properties (``intensity_properties``: mean, std, percentile_00_5, percentile_99_5), and its clip
        to the percentiles is kept in the inverse, so un-normalised values stay in the range the network
        saw; RescaleTo01 the case's min and max; RGBTo01 255. Other schemes are refused (GenerateError).
    check: normalise ``image`` with nnU-Net's own class and verify that this inverse's ``forward``
        reproduces it (relative 1e-4), so a change in nnU-Net cannot silently break the inverse.
    """
    eps = 1e-8
    image = np.asarray(image, np.float32)
    if scheme == "ZScoreNormalization":
        values = image[seg >= 0] if use_mask_for_norm else image
        inverse = InverseNormalisation(scheme, float(max(values.std(), eps)), float(values.mean()))
    elif scheme == "CTNormalization":
        p = intensity_properties
        inverse = InverseNormalisation(scheme, float(max(p["std"], eps)), float(p["mean"]),
                                       (float(p["percentile_00_5"]), float(p["percentile_99_5"])))
    elif scheme == "NoNormalization":
        inverse = InverseNormalisation(scheme, 1.0, 0.0)
    elif scheme == "RescaleTo01Normalization":
        low = float(image.min())
        inverse = InverseNormalisation(scheme, float(max((image - np.float32(low)).max(), eps)), low)
    elif scheme == "RGBTo01Normalization":
        inverse = InverseNormalisation(scheme, 255.0, 0.0, (0.0, 255.0))
    else:
        raise GenerateError(
            f"normalisation scheme {scheme!r} cannot be inverted: synthetic values cannot be mapped back to the raw "
            f"intensity scale. Supported: {', '.join(SUPPORTED_NORMALISATIONS)}")
    if check:
        _check_inverse(inverse, image, seg, use_mask_for_norm, intensity_properties)
    return inverse


def _check_inverse(inverse: InverseNormalisation, image: np.ndarray, seg: np.ndarray, use_mask_for_norm: bool,
                   intensity_properties: dict) -> None:
    import nnunetv2.preprocessing.normalization.default_normalization_schemes as schemes

    normaliser = getattr(schemes, inverse.scheme)(use_mask_for_norm=use_mask_for_norm,
                                                  intensityproperties=intensity_properties)
    expected = normaliser.run(image.copy(), seg)
    region = seg >= 0 if (use_mask_for_norm and inverse.scheme == "ZScoreNormalization") else np.ones(image.shape, bool)
    ours = inverse.forward(image[region])
    if not np.allclose(ours, expected[region], rtol=1e-4, atol=1e-4):
        worst = float(np.max(np.abs(ours - expected[region])))
        raise GenerateError(f"the inverse of {inverse.scheme} does not reproduce nnU-Net's normalisation of this "
                            f"case (largest difference {worst:.3g}); this nnU-Net version normalises differently")
