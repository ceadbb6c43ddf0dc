"""``tumorsynth_make_phantom``: write a small phantom nnU-Net raw dataset (tests, demo)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from nnunetv2.paths import nnUNet_raw

from nnunetv2_tumorsynth.phantom import PhantomSettings, write_phantom_dataset


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
                        help="volume size in voxels (default 32 64 64)")
    parser.add_argument("--tumour-cases", type=int, default=None, metavar="K",
                        help="scarce-tumour setting: only the first K training cases have (annotated) tumours, the "
                        "others are tumour-free (0: no tumours at all, label-free training)")
    parser.add_argument("--tumour-free-every", type=int, default=None, metavar="N",
                        help="cases with index %% N == 1 have no tumour (default 4; 0: every case has tumours)")
    parser.add_argument("--test-seed", type=int, default=None,
                        help="seed of the test cases alone, so datasets differing only in training share a test set")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset with this id")
    args = parser.parse_args(argv)
    if not nnUNet_raw:
        parser.error("nnUNet_raw is not set; export nnUNet_raw=/path/to/nnUNet_raw")
    settings = PhantomSettings()
    if args.shape:
        settings = replace(settings, shape=tuple(args.shape))
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
