"""What the false-positive lesions of a ``bench_benefit.py`` workdir are: size, place and brightness.

Every predicted tumour component (26-connectivity, as ``tumorsynth_evaluate`` counts them) that touches no test
tumour, per run and arm: how many (and per case), median size in voxels, how many are 3 voxels or smaller and 50
or larger, how many lie mostly inside the organ (reference label >= the organ label), and their median mean
intensity against the organ of the test image, in organ SDs (raw intensities). Reads only; prints one line per run
and arm:

    python benchmarks/false_positive_components.py --workdir /tmp/bb_ph --arms plain ddpm
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunetv2_tumorsynth.evaluation import lesions

ORGAN, TUMOUR = 1, 2  # the benchmark datasets' labels


def false_positive_components(prediction: np.ndarray, reference: np.ndarray, image: np.ndarray) -> list[dict]:
    """One dict per predicted tumour component touching no reference tumour (``evaluation.lesions``' false
    positives): voxels, inside_organ, contrast_sd."""
    organ = reference == ORGAN
    mean, sd = float(image[organ].mean()), float(image[organ].std()) + 1e-6
    components, _, false_positives = lesions.false_positive_components(reference == TUMOUR, prediction == TUMOUR)
    boxes = ndimage.find_objects(components)
    rows = []
    for index in false_positives:
        where = boxes[index - 1]
        component = components[where] == index
        rows.append({"voxels": int(component.sum()),
                     "inside_organ": bool(np.mean(reference[where][component] >= ORGAN) > 0.5),
                     "contrast_sd": (float(image[where][component].mean()) - mean) / sd})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="bench_benefit.py's --workdir")
    parser.add_argument("--arms", nargs="+", default=["plain", "ddpm"])
    args = parser.parse_args()
    labels = glob.glob(os.path.join(args.workdir, "nnUNet_raw", "*_Scarce", "labelsTs"))
    if not labels:
        parser.error(f"no nnUNet_raw/*_Scarce/labelsTs in {args.workdir}: run bench_benefit.py there first")
    images = labels[0][: -len("labelsTs")] + "imagesTs"
    read = lambda path: sitk.GetArrayFromImage(sitk.ReadImage(path))
    for run in sorted(glob.glob(os.path.join(args.workdir, "predictions", "run*"))):
        for arm in args.arms:
            files = sorted(glob.glob(os.path.join(run, arm, "*.nii.gz")))
            rows = []
            for path in files:
                case = os.path.basename(path)[: -len(".nii.gz")]
                rows += false_positive_components(read(path), read(os.path.join(labels[0], case + ".nii.gz")),
                                                  read(os.path.join(images, case + "_0000.nii.gz")).astype(float))
            voxels = np.array([r["voxels"] for r in rows])
            line = f"{os.path.basename(run)} {arm}: {len(rows)} false positives in {len(files)} cases"
            if rows:
                line += (f" ({len(rows) / len(files):.2f} per case), median {np.median(voxels):g} voxels, "
                         f"{int((voxels <= 3).sum())} of <= 3 voxels, {int((voxels >= 50).sum())} of >= 50, "
                         f"{sum(r['inside_organ'] for r in rows)} inside the organ, median contrast "
                         f"{np.median([r['contrast_sd'] for r in rows]):+.2f} organ SDs")
            print(line)


if __name__ == "__main__":
    main()
