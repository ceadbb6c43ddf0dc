"""``tumorsynth_make_phantom``: write a small phantom nnU-Net raw dataset (tests, demo)."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

from nnunetv2.paths import nnUNet_raw

from nnunetv2_tumorsynth.phantom import PhantomSettings, write_phantom_dataset

# Smallest field of view per axis that holds the phantom's organ with its 4-11 mm tumours (16 x 32 x 32 voxels at
# the default 3.0 x 1.5 x 1.5 mm; 16 x 16 x 16 voxels give an organ too small for any tumour).
MIN_EXTENT_MM = 48.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write Dataset<ID>_<name> into $nnUNet_raw: small abdomen-like MR phantoms with an organ "
        "(liver), vessels and tumours; anisotropic spacing, non-identity direction."
    )
    parser.add_argument("-d", type=int, required=True, help="dataset id, e.g. 990")
    parser.add_argument("-n", type=int, default=8, help="number of training cases (default 8)")
    parser.add_argument("--n-test", type=int, default=0, help="number of test cases in imagesTs/labelsTs")
    parser.add_argument("--name", default="Phantom", help="dataset name after the id (default Phantom)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help="volume size in voxels (default 32 64 64; at least 16 32 32)")
    parser.add_argument("--tumour-cases", type=int, default=None, metavar="K",
                        help="scarce-tumour setting: only the first K training cases have (annotated) tumours, the "
                        "others are tumour-free (0: no tumours at all, label-free training)")
    parser.add_argument("--tumour-free-every", type=int, default=None, metavar="N",
                        help="cases with index %% N == 1 have no tumour (default 4; 0: every case has tumours)")
    parser.add_argument("--test-seed", type=int, default=None,
                        help="seed of the test cases alone, so datasets differing only in training share a test set")
    parser.add_argument("--tumour-polarity", choices=("either", "darker", "brighter"), default="either",
                        help="tumours darker or brighter than the liver at random (default), or all darker or all "
                        "brighter")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset with this id")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"-n {args.n}: the dataset needs at least 1 training case")
    if args.n_test < 0:
        parser.error(f"--n-test {args.n_test}: the number of test cases cannot be negative")
    settings = PhantomSettings(tumour_polarity=args.tumour_polarity)
    if args.shape:
        extent_mm = [n * s for n, s in zip(args.shape, settings.spacing)]
        if min(extent_mm) < MIN_EXTENT_MM:
            smallest = [math.ceil(MIN_EXTENT_MM / s) for s in settings.spacing]
            parser.error(f"--shape {' '.join(map(str, args.shape))} is too small for an organ with tumours: at "
                         f"{' x '.join(f'{s:g}' for s in settings.spacing)} mm per voxel each axis must span "
                         f"{MIN_EXTENT_MM:g} mm (--shape {' '.join(map(str, smallest))} or larger)")
        settings = replace(settings, shape=tuple(args.shape))
    if not nnUNet_raw:
        parser.error("nnUNet_raw is not set; export nnUNet_raw=/path/to/nnUNet_raw")
    if args.tumour_free_every is not None:
        settings = replace(settings, tumour_free_every=args.tumour_free_every)
    try:
        folder = write_phantom_dataset(nnUNet_raw, args.d, args.name, args.n, args.n_test, args.seed, settings,
                                       args.overwrite, args.tumour_cases, args.test_seed)
    except (FileExistsError, ValueError) as e:
        parser.error(str(e))
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
