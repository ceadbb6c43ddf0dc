"""What the fold's annotated tumours look like, and synthetic tumours drawn to look like them.

Quinton et al. 2026 learn the texture from the annotated tumours; the size of a synthetic tumour and, for the
heuristic texture of Hu et al. 2023, its contrast, grain and edge are drawn from them here too, so that with
a handful of annotations the synthetic tumours stay within what the user's tumours show (docs/trainers.md).

Per tumour (a connected component, 26-connectivity, of the tumour label), in the case's preprocessed space
(axes z, y, x; spacing in mm in that order):

- ``radius_mm``: equivalent radius (the sphere of the same volume).
- ``axis_ratios``: middle / major and minor / major principal axis of the voxel coordinates in mm.
- ``contrast_sd``: (tumour mean - ring mean) / ring SD; the ring is the organ (parenchyma: organ label, no
  tumour) within ``RING_MM`` of the tumour. Signed: negative for tumours darker than their parenchyma.
- ``internal_sd``: SD inside the tumour / ring SD.
- ``border_gradient_sd``: mean gradient magnitude on both sides of the border, in ring SDs per mm.
- ``depth_mm``: distance from the tumour's centre to the outside of the organ (organ and tumour labels).
- ``smooth_sd``: SD over the tumour of its large-scale brightness (``large_scale_component``: the intensities
  smoothed at half the tumour's equivalent radius) / ring SD. A uniform tumour with voxel speckle reads near 0, a
  tumour dark on one side and parenchyma-grey on the other, or mottled in blotches, reads high.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from nnunetv2_tumorsynth.geometry import box_slices
from nnunetv2_tumorsynth.synthesis.features import tumour_components, tumour_features
from nnunetv2_tumorsynth.synthesis.shape import SIZE_PRESETS, equivalent_radius_mm

RING_MM = 5.0  # the parenchyma a tumour is compared with: organ voxels within this distance
MIN_TUMOURS = 3  # fewer annotated tumours than this: too few to draw from, Hu et al. 2023's priors are used
SIZE_JITTER = 0.15  # log-normal jitter of a resampled radius (15 %)
AXIS_RATIO_JITTER = 0.1
CONTRAST_JITTER_SD = 0.25  # added to a resampled contrast, parenchyma SDs
INTERNAL_SD_JITTER = 0.15  # log-normal
AMPLITUDE_PER_RADIUS = (0.11, 0.22)  # shape deformation amplitude / radius, as the size presets of masks use
# the quality gate "data" drops synthetic tumours fainter than this fraction of the faintest annotated one: a
# calibrated tumour's measured contrast falls below its drawn one (edge blur, partial volume), so the faintest real
# contrast itself would reject half of the calibrated heuristic tumours (measured on training banks, docs/benchmarks.md)
GATE_FRACTION = 0.5
FEATURES = ("radius_mm", "contrast_sd", "internal_sd", "border_gradient_sd", "depth_mm")  # every tumour has them
SUMMARY_FEATURES = (*FEATURES, "smooth_sd")  # smooth_sd: NaN in statistics written before it was measured


@dataclass
class TumourStatistics:
    """The measurements of one tumour (see the module docstring for each field's definition and unit)."""

    case: str
    radius_mm: float
    axis_ratios: tuple[float, float]
    contrast_sd: float
    internal_sd: float
    border_gradient_sd: float
    depth_mm: float
    smooth_sd: float = math.nan  # NaN in statistics written before it was measured


def large_scale_component(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The intensities inside ``mask`` smoothed by a Gaussian of half the mask's equivalent radius (sigma, mm),
    normalised by the smoothed mask so that only mask voxels count, minus their mean: one value per mask voxel, in
    the order of ``image[mask]``. What is left (``image[mask]`` minus it) is the grain."""
    spacing = np.asarray(spacing, float)
    sigma = 0.5 * equivalent_radius_mm(mask, spacing) / spacing
    weight = ndimage.gaussian_filter(mask.astype(np.float64), sigma)
    smooth = ndimage.gaussian_filter(np.where(mask, image, 0.0).astype(np.float64), sigma)[mask]
    smooth = smooth / np.maximum(weight[mask], 1e-9)
    return smooth - smooth.mean()


def principal_axis_ratios(mask: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """(middle / major, minor / major) of the principal axes of the mask's voxel coordinates in mm."""
    coords = np.argwhere(mask) * np.asarray(spacing, float)
    if len(coords) < 4:
        return 1.0, 1.0
    eigen = np.sort(np.linalg.eigvalsh(np.cov(coords.T)))[::-1]
    eigen = np.maximum(eigen, (min(spacing) / 2) ** 2 / 3)  # a one-voxel-thin tumour still has a thickness
    return float(np.sqrt(eigen[1] / eigen[0])), float(np.sqrt(eigen[2] / eigen[0]))


def measure_tumours(image: np.ndarray, labels: np.ndarray, organ_label: int, tumour_label: int,
                    spacing: Sequence[float], case: str = "") -> list[TumourStatistics]:
    """The statistics of every tumour of one case (``image`` and ``labels`` (z, y, x), spacing mm)."""
    spacing = tuple(float(s) for s in spacing)
    box = box_slices((labels == organ_label) | (labels == tumour_label), margin=2)
    if box is None or not (labels[box] == tumour_label).any():
        return []
    image, labels = image[box], labels[box]
    every = labels == tumour_label
    parenchyma = (labels == organ_label) & ~every
    inside_organ = ndimage.distance_transform_edt(parenchyma | every, sampling=spacing)
    rows = []
    for mask in tumour_components(every):
        features = tumour_features(image, mask, parenchyma, spacing, other_tumours=every & ~mask, shell_mm=RING_MM)
        centre = tuple(int(round(c)) for c in np.argwhere(mask).mean(axis=0))
        ring_sd = features["organ_sd"]
        smooth = float(large_scale_component(image, mask, spacing).std()) / ring_sd if ring_sd > 0 else math.nan
        rows.append(TumourStatistics(
            case=case, radius_mm=equivalent_radius_mm(mask, spacing), axis_ratios=principal_axis_ratios(mask, spacing),
            contrast_sd=features["contrast_sd"], internal_sd=features["heterogeneity_sd"],
            border_gradient_sd=features["boundary_gradient_sd"], depth_mm=float(inside_organ[centre]),
            smooth_sd=smooth))
    return rows


def measure_cases(dataset, cases: Sequence[str], organ_label: int, tumour_label: int,
                  spacing: Sequence[float]) -> list[TumourStatistics]:
    """``measure_tumours`` over ``cases`` of a dataset with nnU-Net's ``load_case`` (data (C, z, y, x), seg)."""
    rows = []
    for case in cases:
        data, seg = dataset.load_case(case)[:2]
        rows += measure_tumours(np.asarray(data[0]), np.asarray(seg[0]), organ_label, tumour_label, spacing, case)
    return rows


@dataclass
class TumourDraw:
    """One synthetic tumour's calibrated parameters: semi-axes (mm, z y x), deformation amplitude (mm), the
    nearest size preset (sets the shape's noise scale), contrast and internal SD (parenchyma SDs), edge blur (mm),
    and the largest large-scale brightness variation inside the tumour (``smooth_sd``, parenchyma SDs; NaN: no
    limit)."""

    semi_axes_mm: tuple[float, float, float]
    amplitude_mm: float
    preset: str
    contrast_sd: float
    internal_sd: float
    edge_blur_mm: float
    smooth_sd: float = math.nan


class FoldStatistics:
    """The annotated tumours of a fold's training cases; ``draw`` resamples one of them with jitter."""

    def __init__(self, tumours: Iterable[TumourStatistics]):
        self.tumours = [t for t in tumours if all(math.isfinite(getattr(t, f)) for f in FEATURES)]

    def faintest_contrast_sd(self) -> float:
        """The smallest absolute contrast to the parenchyma ring among the tumours (ring SDs); half of it is the
        quality gate's threshold with ``min_contrast_sd: "data"`` (``GATE_FRACTION``)."""
        return min(abs(t.contrast_sd) for t in self.tumours)

    @property
    def calibrated(self) -> bool:
        """Enough tumours to draw from (``MIN_TUMOURS``)."""
        return len(self.tumours) >= MIN_TUMOURS

    def draw(self, rng: np.random.Generator) -> TumourDraw:
        """One real tumour chosen at random, its size, shape, contrast, grain and edge jittered.

        The contrast keeps the real tumour's sign; the edge blur is the Gaussian sigma (mm) whose blurred step of
        the drawn contrast has the real tumour's border gradient: sigma = |contrast| / (gradient sqrt(2 pi)); the
        large-scale variation is the real tumour's, not jittered (a limit for diffusion fills, ``texture.DDPMTexture``).
        """
        real = self.tumours[int(rng.integers(len(self.tumours)))]
        radius = real.radius_mm * float(np.exp(rng.normal(0.0, SIZE_JITTER)))
        ratios = np.clip(np.array(real.axis_ratios) + rng.normal(0.0, AXIS_RATIO_JITTER, 2), 0.3, 1.0)
        shape = np.array([1.0, *ratios]) / np.prod([1.0, *ratios]) ** (1 / 3)  # product 1: same volume
        semi_axes = radius * shape[rng.permutation(3)]
        contrast = real.contrast_sd + rng.normal(0.0, CONTRAST_JITTER_SD)
        if np.sign(contrast) != np.sign(real.contrast_sd):
            contrast = 0.0
        internal = real.internal_sd * float(np.exp(rng.normal(0.0, INTERNAL_SD_JITTER)))
        edge = abs(contrast) / max(real.border_gradient_sd * math.sqrt(2 * math.pi), 1e-6)
        preset = min(SIZE_PRESETS, key=lambda name: abs(math.log(SIZE_PRESETS[name].radius_mm / radius)))
        return TumourDraw(tuple(float(a) for a in semi_axes), float(radius * rng.uniform(*AMPLITUDE_PER_RADIUS)),
                          preset, float(contrast), float(internal), float(np.clip(edge, 0.3, 3.0)),
                          float(real.smooth_sd))

    def summary(self) -> dict[str, dict[str, float]]:
        """Median and 10th / 90th percentiles of every feature."""
        out = {}
        for feature in SUMMARY_FEATURES:
            values = np.array([getattr(t, feature) for t in self.tumours], float)
            values = values[np.isfinite(values)]
            out[feature] = ({"median": float(np.median(values)), "p10": float(np.percentile(values, 10)),
                             "p90": float(np.percentile(values, 90))} if len(values) else {})
        return out

    def table(self) -> str:
        """A few lines for a log: the number of tumours and each feature's median [10-90 %]."""
        lines = [f"{len(self.tumours)} annotated tumours" + ("" if self.calibrated else
                                                              f" (fewer than {MIN_TUMOURS}: not used)")]
        for feature, s in self.summary().items():
            if s:
                lines.append(f"  {feature:20s} {s['median']:8.2f} [{s['p10']:.2f}, {s['p90']:.2f}]")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"ring_mm": RING_MM, "min_tumours": MIN_TUMOURS, "summary": self.summary(),
                "tumours": [asdict(t) for t in self.tumours]}

    @classmethod
    def from_json(cls, payload: dict) -> FoldStatistics:
        return cls(TumourStatistics(**{**t, "axis_ratios": tuple(t["axis_ratios"])}) for t in payload["tumours"])


FIDELITY_FEATURES = ("radius_mm", "contrast_sd", "internal_sd", "border_gradient_sd", "smooth_sd")
MAX_CONTRAST_GAP_SD = 1.0  # fidelity warning: synthetic median contrast this far from the real one
MAX_CLAMP_SHARE = 0.01  # fidelity warning: this share of DDPM fill voxels at the clamp bounds


def voxels_at_bounds(values: np.ndarray, bounds: tuple[float, float]) -> int:
    """How many of the values sit at or beyond the sampler's clamp bounds (within 0.1 % of their range)."""
    tolerance = 1e-3 * (bounds[1] - bounds[0])
    return int(np.sum((values <= bounds[0] + tolerance) | (values >= bounds[1] - tolerance)))


@dataclass
class FidelityCheck:
    """Synthetic tumours against the fold's real ones: medians and the two-sample KS statistic per feature, the
    share of fill voxels at the sampler's clamp bounds (DDPM), and what is off (``warnings``)."""

    rows: list[dict]
    clamp_share: float | None
    warnings: list[str]

    def table(self) -> str:
        lines = [f"  {'feature':20s} {'real':>8s} {'synthetic':>10s} {'KS':>6s}"]
        lines += [f"  {r['feature']:20s} {r['real']:8.2f} {r['synthetic']:10.2f} {r['ks']:6.2f}" for r in self.rows]
        if self.clamp_share is not None:
            lines.append(f"  DDPM fill voxels at the clamp bounds: {100 * self.clamp_share:.2f} %")
        return "\n".join(lines)


def fidelity_check(real: FoldStatistics, synthetic: Sequence[TumourStatistics],
                   clamp_share: float | None = None) -> FidelityCheck:
    """Compare synthetic tumours (measured as the real ones are) with the fold's annotated tumours."""
    from scipy import stats

    rows = []
    for feature in FIDELITY_FEATURES:
        a = np.array([getattr(t, feature) for t in real.tumours], float)
        b = np.array([getattr(t, feature) for t in synthetic], float)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if a.size and b.size:
            rows.append({"feature": feature, "real": float(np.median(a)), "synthetic": float(np.median(b)),
                         "ks": float(stats.ks_2samp(a, b).statistic)})
    warnings = []
    signs = np.sign([t.contrast_sd for t in real.tumours])
    darker, brighter = int(np.sum(signs < 0)), int(np.sum(signs > 0))
    contrast = next((r for r in rows if r["feature"] == "contrast_sd"), None)
    if darker and brighter:  # the median of a two-signed set says nothing; the mix itself is the risk
        warnings.append(f"the annotated tumours are both darker ({darker}) and brighter ({brighter}) than their "
                        f"parenchyma: on a short budget a small network tends to learn one kind or none "
                        f"(docs/benchmarks.md, bench_bank_polarity.py); train longer or annotate more tumours; "
                        f"with the DDPM texture keep ddpm_brightness 'data', which gives each fill the sign of the "
                        f"tumour it was drawn from (a model's own fills at new places come out near the tumours' "
                        f"average)")
    elif contrast is not None and abs(contrast["synthetic"] - contrast["real"]) > MAX_CONTRAST_GAP_SD:
        warnings.append(f"the synthetic tumours' median contrast ({contrast['synthetic']:+.2f} parenchyma SDs) is "
                        f"more than {MAX_CONTRAST_GAP_SD:g} SD from the real ones' ({contrast['real']:+.2f}): check "
                        f"that size is 'data' (calibration) and, for the DDPM texture, ddpm_brightness 'data' "
                        f"(fills shifted to the drawn contrast; docs/ddpm.md, 'Brightness'), train the diffusion "
                        f"model longer, or use another texture")
    if clamp_share is not None and clamp_share > MAX_CLAMP_SHARE:
        warnings.append(f"{100 * clamp_share:.1f} % of the diffusion fills' voxels sit at the clamp bounds (more than "
                        f"{100 * MAX_CLAMP_SHARE:g} %): the model overshoots the training tumours' intensities; train "
                        f"it longer (tumorsynth_pretrain_ddpm with the same arguments plus --c and a larger --epochs; "
                        f"docs/benchmarks.md, 'Which checkpoint')")
    return FidelityCheck(rows, clamp_share, warnings)
