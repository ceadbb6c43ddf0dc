"""``tumorsynth_pretrain_ddpm``: crop maths, augmentation, and the real CLI on the phantom (tiny preset, CPU).

The CLI runs get ``OMP_NUM_THREADS=1``: the tiny network's small convolutions run faster on one thread, and
two processes share the two cores in the DDP test.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import _ROOT, cli, log_line, run

from nnunetv2_tumorsynth.ddpm import read_checkpoint
from nnunetv2_tumorsynth.ddpm.data import (
    Augmentation,
    TrainingFold,
    TumourComponent,
    TumourCrops,
    apply_augmentation,
    check_poolable,
    crop_size_from_mm,
    find_components,
    paper_crop_size,
    random_augmentation,
    rotation_planes,
    size_before,
    split_components,
)
from nnunetv2_tumorsynth.ddpm.training import ema_update, is_new_best

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CROP = ["8", "16", "16"]  # voxels (z, y, x) = 24 x 24 x 24 mm at the phantom's 3.0 x 1.5 x 1.5 mm
NO_TUMOUR_ID, BRIGHT_ID, RAW_ONLY_ID = 971, 972, 974


def _bench():
    """benchmarks/bench_ddpm_quality.py as a module (derived toy datasets and the inpainting errors)."""
    benchmarks = os.path.join(REPO, "benchmarks")
    if benchmarks not in sys.path:  # its sibling modules (_common), as when it runs as a script
        sys.path.insert(0, benchmarks)
    spec = importlib.util.spec_from_file_location("bench_ddpm_quality", os.path.join(REPO, "benchmarks",
                                                                                      "bench_ddpm_quality.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(phantom, results: str | None = None) -> dict:
    env = dict(phantom.env, OMP_NUM_THREADS="1")
    if results is not None:
        os.makedirs(results, exist_ok=True)
        env["nnUNet_results"] = results
    return env


def _train_cmd(phantom, dataset=None, *extra: str) -> list[str]:
    return [cli("tumorsynth_pretrain_ddpm"), "-d", str(dataset or phantom.dataset_id), "-c", phantom.configuration,
            "-f", "0", "-p", phantom.plans, "--preset", "tiny", "--crop", *CROP, "-device", "cpu",
            "--batch-size", "1", "--lr", "5e-5", *extra]  # the paper's optimiser (the tiny recipe is tested apart)


def _folder(results: str, name: str, plans: str, fold: int = 0) -> str:
    return os.path.join(results, name, f"tumorsynth_ddpm__{plans}__3d_fullres", f"fold_{fold}")


# ------------------------------------------------------------------------------------------------ unit tests


def test_paper_crop_converted_to_plans_spacing_and_axis_order():
    # the paper's own spacing gives the paper's crop: 64 x 96 x 128 voxels (z, y, x) = 192 x 144 x 192 mm
    assert paper_crop_size([3.0, 1.5, 1.5], [0, 1, 2], 8) == (64, 96, 128)
    # transposed data: preprocessed axes are (x, y, z) of the original array
    assert paper_crop_size([1.5, 1.5, 3.0], [2, 1, 0], 8) == (128, 96, 64)
    # finer spacing: 192 mm / 2.5 = 76.8 -> 80; 144 / 0.8 = 180 -> 184 (22.5 rounds up); 192 / 0.8 = 240
    assert paper_crop_size([2.5, 0.8, 0.8], [0, 1, 2], 8) == (80, 184, 240)
    assert crop_size_from_mm([10, 10, 10], [3.0, 1.5, 1.5], 4) == (4, 8, 8)
    assert crop_size_from_mm([1, 1, 1], [3.0, 1.5, 1.5], 4) == (4, 4, 4), "at least one divisor"


def test_rotation_planes_follow_equal_spacing():
    assert rotation_planes([3.0, 1.5, 1.5]) == [(1, 2)]
    assert rotation_planes([1.0, 1.0, 1.0]) == [(0, 1), (0, 2), (1, 2)]
    assert rotation_planes([3.0, 0.7, 0.8]) == []
    rng = np.random.default_rng(0)
    for _ in range(20):
        aug = random_augmentation(rng, [3.0, 1.5, 1.5])
        assert [plane for plane, _ in aug.rotations] == [(1, 2)]


class _FakeReader:
    """Stands in for nnU-Net's dataset class: one case, data (1, z, y, x) and seg (1, z, y, x)."""

    def __init__(self, data: np.ndarray, seg: np.ndarray) -> None:
        self.identifiers = ["case"]
        self.data, self.seg = data, seg

    def load_case(self, identifier):
        return self.data, self.seg, None, {}


def _fake_source(data: np.ndarray, seg: np.ndarray, spacing=(3.0, 1.5, 1.5)) -> TrainingFold:
    return TrainingFold(name="Dataset999_Fake", plans_identifier="p", configuration="3d_fullres", fold=0,
                        data_folder="",
                  spacing=spacing, transpose_forward=(0, 1, 2), normalisation={"scheme": "ZScoreNormalization"},
                  tumour_label=2, channel=0, training_cases=["case"], validation_cases=[],
                  reader=_FakeReader(data, seg))


def test_augmented_crops_keep_image_and_mask_aligned():
    rng = np.random.default_rng(1)
    shape = (20, 40, 44)
    seg = np.zeros((1, *shape), np.int8)
    seg[0, 5:11, 10:17, 12:30] = 2  # an elongated tumour, so rotations and flips change it visibly
    seg[0, 14:17, 30:34, 2:6] = 2  # a second one, near the border (its crop needs padding)
    seg[0, 0, :, :] = -1  # nnU-Net's "outside the nonzero crop": background
    image = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    image[seg[0] == 2] += 5.0  # tumour voxels and only they are > 1.5
    source = _fake_source(image[None], seg)
    components = find_components([source])
    assert [c.key for c in components] == ["case#1", "case#2"]
    assert components[0].extent == (6, 7, 18) and components[0].centre == (8, 13, 21)

    crop = (8, 12, 12)
    crops = TumourCrops([source], components, crop, augment=True)
    seen = set()
    for seed in range(40):
        for i in range(len(components)):
            img, mask = crops.get(i, np.random.default_rng(seed))
            assert img.shape == mask.shape == crop
            np.testing.assert_array_equal(mask, img > 1.5)  # the mask moved exactly with the image
            seen.add((i, img.tobytes()))
    assert len(seen) > 20, "augmentation should produce many different crops"
    # the large tumour is longer (18 voxels in x) than the crop: only its part inside the crop is masked
    assert components[0].larger_than(crop)
    plain = TumourCrops([source], components, crop, augment=False)
    img, mask = plain.get(0)
    np.testing.assert_array_equal(mask, img > 1.5)
    assert mask.sum() == 6 * 7 * 12
    # the small tumour at x = 2..5 is centred at x = 4 (3.5 rounds up): its crop starts at x = -2, padded with 0
    img, mask = plain.get(1)
    assert np.all(img[:, :, :2] == 0.0) and not mask[:, :, :2].any() and np.all(img[:, :, 2] != 0.0)
    assert mask.sum() == 3 * 4 * 4


def test_ema_update_warms_up_then_uses_the_decay():
    ema, model = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        ema.weight.fill_(0.0)
        model.weight.fill_(1.0)
    ema_update(ema, model, decay=0.999, num_updates=0)  # warm-up: d = 1 / 10
    assert ema.weight.item() == pytest.approx(0.9)
    ema_update(ema, model, decay=0.5, num_updates=1000)  # d = min(0.5, 1001 / 1010) = 0.5
    assert ema.weight.item() == pytest.approx(0.95)
    assert model.weight.item() == 1.0


def test_best_checkpoint_follows_the_validation_loss_or_else_the_latest_epoch():
    assert is_new_best(0.5, None) and is_new_best(0.4, 0.5)
    assert not is_new_best(0.6, 0.5) and not is_new_best(0.5, 0.5)
    assert is_new_best(None, None) and is_new_best(None, 0.1), "no held-out crops: every epoch, not the train loss"


def test_size_before_rotation_gives_the_crop_size():
    volume = np.arange(10 * 16 * 16).reshape(10, 16, 16)
    aug = Augmentation(rotations=(((1, 2), 1),), flips=(True, False, True))
    cut = size_before((10, 12, 14), aug)
    assert cut == (10, 14, 12)
    out = apply_augmentation(volume[:, :14, :12], aug)
    assert out.shape == (10, 12, 14)
    np.testing.assert_array_equal(out, np.flip(np.rot90(volume[:, :14, :12], 1, (1, 2)), (0, 2)))


def _component(source: int, case: str, index: int = 1) -> TumourComponent:
    """A component for split tests: only its source and case matter."""
    return TumourComponent(source=source, case=case, index=index, centre=(0, 0, 0), extent=(1, 1, 1),
                           voxels=np.zeros((0, 3), np.int64))


def test_validation_split_holds_out_at_least_one_case():
    comps = [_component(0, f"case_{k}") for k in range(5)]  # one component per case
    train, val = split_components(comps, 0.1, seed=0)
    assert len(val) == 1 and len(train) == 4 and set(map(id, train + val)) == set(map(id, comps))
    assert split_components(comps[:1], 0.1, seed=0) == (comps[:1], [])
    assert len(split_components([_component(0, f"case_{k}") for k in range(20)], 0.1, seed=0)[1]) == 2
    assert split_components(comps, 0.1, seed=0)[1] == split_components(comps, 0.1, seed=0)[1], "seeded"
    assert split_components(comps, 0.0, seed=0) == (comps, []), "--val-fraction 0: no validation"


def test_validation_split_holds_out_whole_cases():
    """No case gives components to both sides, and a held-out case gives all of its components to validation.
    Two pooled datasets share case identifiers: a case is (dataset, identifier)."""
    # 5 cases per dataset; case_0 has 4 components, case_1 3, the others 1 or 2: 10 cases, 30 components
    counts = {0: 4, 1: 3, 2: 1, 3: 2, 4: 1}
    comps = [_component(s, f"case_{k}", i) for s in (0, 1) for k, n in counts.items() for i in range(1, n + 1)]
    held_out_seen: set[tuple[int, str]] = set()
    split_identifier = False  # some seed holds out (0, case_k) but trains on (1, case_k)
    for seed in range(20):
        train, val = split_components(comps, 0.2, seed)
        assert sorted(map(id, train + val)) == sorted(map(id, comps))
        train_cases = {(c.source, c.case) for c in train}
        val_cases = {(c.source, c.case) for c in val}
        assert len(val_cases) == 2, "round(0.2 * 10 cases with tumours)"
        assert not train_cases & val_cases, "a case on both sides"
        assert [c for c in comps if (c.source, c.case) in val_cases] == val, "all components of held-out cases"
        assert split_components(comps, 0.2, seed) == (train, val), "seeded"
        held_out_seen |= val_cases
        split_identifier |= any((0, case) in val_cases and (1, case) in train_cases for _, case in val_cases)
    assert (0, "case_0") in held_out_seen, "the 4-component case is held out for some seed"
    assert split_identifier


def test_pooled_datasets_must_share_spacing_and_normalisation():
    data, seg = np.zeros((1, 4, 4, 4), np.float32), np.zeros((1, 4, 4, 4), np.int8)
    a = _fake_source(data, seg)
    b = _fake_source(data, seg)
    check_poolable([a, b])
    b.spacing = (2.0, 1.5, 1.5)
    b.normalisation = {"scheme": "CTNormalization"}
    with pytest.raises(ValueError, match=r"spacing.*normalisation.*Resample them to one spacing"):
        check_poolable([a, b])


# ------------------------------------------------------------------------------------------ the real CLI


@pytest.fixture(scope="module")
def trained(phantom_dataset):
    """Two epochs of the tiny preset on the phantom's fold 0 (batch 2), in the session's nnUNet_results."""
    result = run(_train_cmd(phantom_dataset, None, "--epochs", "2", "--batch-size", "2"), env=_env(phantom_dataset))
    folder = _folder(phantom_dataset.env["nnUNet_results"], phantom_dataset.name, phantom_dataset.plans)
    return folder, result


def test_training_writes_checkpoints_log_and_progress(trained, phantom_dataset):
    folder, result = trained
    assert "speed:" in result.stdout and "training iterations/s" in result.stdout
    for name in ("checkpoint_best.pth", "checkpoint_latest.pth", "progress.png"):
        assert os.path.isfile(os.path.join(folder, name)), name
    with open(os.path.join(folder, "progress.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    logs = glob.glob(os.path.join(folder, "training_log_*.txt"))
    assert len(logs) == 1
    log = open(logs[0]).read()
    assert "epoch 2/2" in log and "training iterations/s" in log and "larger than the crop" in log
    assert not [f for f in os.listdir(folder) if ".tmp" in f], "no temporary files left"

    meta = read_checkpoint(os.path.join(folder, "checkpoint_latest.pth"))["metadata"]
    plans = json.load(open(os.path.join(phantom_dataset.preprocessed, f"{phantom_dataset.plans}.json")))
    spacing = plans["configurations"]["3d_fullres"]["spacing"]
    assert meta["preset"] == "tiny" and meta["schedule"]["num_train_timesteps"] == 1000
    assert meta["crop_size_vox"] == [8, 16, 16]
    assert meta["crop_size_mm"] == pytest.approx([8 * spacing[0], 16 * spacing[1], 16 * spacing[2]])
    assert meta["spacing_mm"] == pytest.approx(spacing) and meta["axis_order"] == "zyx"
    assert meta["normalisation"] == {"scheme": "ZScoreNormalization"}
    assert meta["training"]["epoch"] == 2 and meta["training"]["best_val_loss"] > 0
    (ds,) = meta["datasets"]
    assert ds["name"] == phantom_dataset.name and ds["plans"] == phantom_dataset.plans
    assert ds["configuration"] == "3d_fullres" and ds["fold"] == 0
    assert ds["normalisation"] == {"scheme": "ZScoreNormalization"}
    assert ds["num_components"] == len(ds["train_components"]) + len(ds["val_components"]) >= 2
    assert len(ds["val_components"]) >= 1

    # only the fold's training cases were read: nnU-Net's split, validation cases excluded
    split = json.load(open(os.path.join(phantom_dataset.preprocessed, "splits_final.json")))[0]
    assert ds["training_cases"] == sorted(split["train"]) and ds["num_training_cases"] == len(split["train"])
    assert not set(ds["training_cases"]) & set(split["val"])
    assert ds["excluded_validation_cases"] == sorted(split["val"])
    used = {key.split("#")[0] for key in ds["train_components"] + ds["val_components"]}
    assert used <= set(split["train"])
    # validation holds out whole training cases: all their components, none of them trained on
    assert ds["val_cases"] and set(ds["val_cases"]) <= set(split["train"])
    assert {key.split("#")[0] for key in ds["val_components"]} == set(ds["val_cases"])
    assert not {key.split("#")[0] for key in ds["train_components"]} & set(ds["val_cases"])
    assert log_line(log, "validation", str(ds["val_cases"]), f"{len(ds['val_components'])} component",
                    f"{len(ds['train_components'])} component"), "held-out cases and component counts are logged"
    assert log_line(log, "not used", str(sorted(split["val"]))), "the excluded validation-fold cases are logged"


@pytest.mark.e2e  # runs the CLI itself
def test_existing_checkpoint_is_refused_and_resume_continues_exactly(trained, phantom_dataset):
    folder, _ = trained
    refused = run(_train_cmd(phantom_dataset, None, "--epochs", "3", "--batch-size", "2"), env=_env(phantom_dataset),
                  check=False)
    assert refused.returncode == 2 and "--c" in refused.stderr and "--overwrite" in refused.stderr

    # resume a copy of the 2-epoch run to 3 epochs; compare with 3 uninterrupted epochs
    resumed_root = os.path.join(_ROOT, "results_resumed")
    resumed = _folder(resumed_root, phantom_dataset.name, phantom_dataset.plans)
    shutil.copytree(folder, resumed)
    result = run(_train_cmd(phantom_dataset, None, "--epochs", "3", "--batch-size", "2", "--c"),
                 env=_env(phantom_dataset, resumed_root))
    log = open(sorted(glob.glob(os.path.join(resumed, "training_log_*.txt")))[-1]).read()
    assert "resuming after epoch 2" in log and "epoch 3/3" in log and "epoch 2/3" not in log, result.stdout
    straight_root = os.path.join(_ROOT, "results_straight")
    run(_train_cmd(phantom_dataset, None, "--epochs", "3", "--batch-size", "2"),
        env=_env(phantom_dataset, straight_root))
    a = read_checkpoint(os.path.join(resumed, "checkpoint_latest.pth"))
    b = read_checkpoint(os.path.join(_folder(straight_root, phantom_dataset.name, phantom_dataset.plans),
                                     "checkpoint_latest.pth"))
    assert a["metadata"]["training"]["epoch"] == b["metadata"]["training"]["epoch"] == 3
    for key, value in a["state_dict"].items():  # the EMA weights
        torch.testing.assert_close(value, b["state_dict"][key], rtol=0, atol=0, msg=key)
    for key, value in a["extra_state"]["trained_state_dict"].items():
        torch.testing.assert_close(value, b["extra_state"]["trained_state_dict"][key], rtol=0, atol=0, msg=key)
    assert a["extra_state"]["train_losses"] == b["extra_state"]["train_losses"]
    assert a["extra_state"]["ema_updates"] == b["extra_state"]["ema_updates"] > 0

    # another --val-fraction would hold out other cases: refused
    bad = run(_train_cmd(phantom_dataset, None, "--epochs", "4", "--batch-size", "2", "--c", "--val-fraction", "0"),
              env=_env(phantom_dataset, resumed_root), check=False)
    assert bad.returncode == 2 and "held-out validation cases" in bad.stderr and "--val-fraction" in bad.stderr

    # a checkpoint whose metadata says another spacing cannot be resumed on this data
    payload = torch.load(os.path.join(resumed, "checkpoint_latest.pth"), weights_only=True)
    payload["metadata"]["spacing_mm"] = [2.0, 1.0, 1.0]
    torch.save(payload, os.path.join(resumed, "checkpoint_latest.pth"))
    bad = run(_train_cmd(phantom_dataset, None, "--epochs", "4", "--batch-size", "2", "--c"),
              env=_env(phantom_dataset, resumed_root), check=False)
    assert bad.returncode == 2 and "spacing mismatch" in bad.stderr and "[2.0, 1.0, 1.0]" in bad.stderr


@pytest.mark.e2e  # runs the CLI itself
def test_clear_errors(phantom_dataset):
    env = _env(phantom_dataset)
    # --c without a checkpoint (fold 1 was never trained)
    cmd = _train_cmd(phantom_dataset, None, "--epochs", "1", "--c")
    cmd[cmd.index("-f") + 1] = "1"
    result = run(cmd, env=env, check=False)
    assert result.returncode == 2 and "no checkpoint_latest.pth" in result.stderr and "without --c" in result.stderr
    # a dataset that was never preprocessed
    os.makedirs(os.path.join(env["nnUNet_raw"], f"Dataset{RAW_ONLY_ID}_RawOnly"), exist_ok=True)
    result = run(_train_cmd(phantom_dataset, RAW_ONLY_ID, "--epochs", "1"), env=env, check=False)
    assert result.returncode == 2
    assert f"nnUNetv2_plan_and_preprocess -d Dataset{RAW_ONLY_ID}_RawOnly" in result.stderr
    # an unknown preset
    cmd = _train_cmd(phantom_dataset, None, "--epochs", "1")
    cmd[cmd.index("--preset") + 1] = "huge"
    result = run(cmd, env=env, check=False)
    assert result.returncode == 2 and "invalid choice: 'huge'" in result.stderr and "paper" in result.stderr


@pytest.mark.e2e  # runs the CLI itself
def test_fold_without_tumours_is_an_error(phantom_dataset):
    def no_tumours(data, seg, case):
        seg[seg == 2] = 1
        return data, seg

    name = _bench().derive_dataset(phantom_dataset.name, NO_TUMOUR_ID, "NoTumour", no_tumours)
    result = run(_train_cmd(phantom_dataset, NO_TUMOUR_ID, "--epochs", "1"), env=_env(phantom_dataset), check=False)
    assert result.returncode == 2
    assert log_line(result.stderr, "label 2", "6 training cases", "fold 0", name), result.stderr
    assert "--tumour-label" in result.stderr


@pytest.mark.e2e  # runs the CLI itself
def test_two_gloo_processes_end_with_identical_weights(trained, phantom_dataset, tmp_path):
    """torchrun, 2 CPU processes x batch 1 = the single-process batch-2 run of ``trained``."""
    root = str(tmp_path / "results_ddp")
    env = _env(phantom_dataset, root)
    env["TUMORSYNTH_DDPM_PARAMS_DIGEST_DIR"] = str(tmp_path / "digests")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
           "-m", "nnunetv2_tumorsynth.cli.pretrain_ddpm", *_train_cmd(phantom_dataset, None, "--epochs", "2",
                                                                      "--batch-size", "1")[1:]]
    run(cmd, env=env)
    digests = [open(tmp_path / "digests" / f"rank{r}.sha256").read() for r in (0, 1)]
    assert digests[0] == digests[1]
    ddp = read_checkpoint(os.path.join(_folder(root, phantom_dataset.name, phantom_dataset.plans),
                                       "checkpoint_latest.pth"))
    single = read_checkpoint(os.path.join(trained[0], "checkpoint_latest.pth"))
    assert single["metadata"]["training"]["epoch"] == 2
    assert ddp["metadata"]["world_size"] == 2
    np.testing.assert_allclose(ddp["extra_state"]["train_losses"], single["extra_state"]["train_losses"], rtol=1e-5)
    for key, value in ddp["state_dict"].items():
        # Adam normalises tiny gradients to steps of ~lr: float summation order can move a weight by 2 lr
        torch.testing.assert_close(value, single["state_dict"][key], rtol=0, atol=1e-3, msg=key)


@pytest.mark.e2e  # runs the CLI itself
def test_trained_model_inpaints_held_out_tumours_better_than_model_free_fills(phantom_dataset):
    """Tiny preset, trained for 240 iterations (about 2 min on one core) on one learnable kind of tumour
    (``easy_tumours``: bright balls), inpaints held-out tumours with a markedly lower masked MSE than filling
    the mask with the context's mean, the surrounding shell's mean or noise; outside the mask nothing changes.
    Measured when written: inpaint 2.42 (median 1.26), context mean 4.31 (median 4.36), shell 3.99, noise 4.48."""
    bench = _bench()
    name = bench.derive_dataset(phantom_dataset.name, BRIGHT_ID, "PhantomBright", bench.easy_tumours)
    root = os.path.join(_ROOT, "results_quality")
    run(_train_cmd(phantom_dataset, BRIGHT_ID, "--epochs", "60", "--batch-size", "8", "--lr", "2e-3"),
        env=_env(phantom_dataset, root))
    checkpoint = os.path.join(_folder(root, name, phantom_dataset.plans), "checkpoint_latest.pth")
    images, masks, keys = bench.held_out_crops(checkpoint, name, phantom_dataset.plans, "3d_fullres", 0)
    assert len(keys) >= 8
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        errors = bench.fill_errors(checkpoint, images, masks, steps=50, sampler="ddim")
    finally:
        torch.set_num_threads(threads)
    assert errors["max_abs_change_outside_mask"] == 0.0
    best_fill = min(errors["context_mean"], errors["shell_mean"], errors["noise"])
    assert errors["inpaint"] < 0.7 * best_fill, errors
    per_crop = errors["per_crop"]
    assert np.median(per_crop["inpaint"]) < 0.4 * np.median(per_crop["context_mean"]), errors


def test_min_iterations_adds_epochs_for_few_tumours():
    from nnunetv2_tumorsynth.ddpm.training import TrainingSettings, epochs_for

    few = TrainingSettings(datasets=[1], epochs=300, batch_size=4, min_iterations=3000)
    assert epochs_for(few, train_crops=5) == 1500  # 2 iterations per epoch
    assert epochs_for(few, train_crops=40) == 300  # 10 per epoch: 300 epochs are 3000 iterations already
    assert epochs_for(few, train_crops=5, world=2) == 3000  # 1 iteration per epoch and process
    assert epochs_for(TrainingSettings(datasets=[1], epochs=7), train_crops=1) == 7  # no minimum by default


def test_tiny_preset_gets_the_cpu_recipe_as_defaults(monkeypatch):
    import nnunetv2_tumorsynth.ddpm.training as training
    from nnunetv2_tumorsynth.cli import pretrain_ddpm

    seen = {}
    monkeypatch.setattr(training, "train_ddpm", lambda settings: seen.setdefault("s", settings) and
                        {"rank": 1})
    pretrain_ddpm.main(["-d", "1", "-f", "0", "--preset", "tiny"])
    tiny = seen.pop("s")
    assert (tiny.lr, tiny.batch_size, tiny.epochs, tiny.min_iterations) == (2e-3, 4, 300, 3000)
    pretrain_ddpm.main(["-d", "1", "-f", "0", "--preset", "tiny", "--lr", "1e-3", "--min-iterations", "0"])
    assert (seen["s"].lr, seen["s"].min_iterations) == (1e-3, 0)
    seen.clear()
    pretrain_ddpm.main(["-d", "1", "-f", "0", "--preset", "tiny", "--epochs", "2"])  # explicit epochs: as given
    assert (seen["s"].epochs, seen["s"].min_iterations) == (2, 0)
    seen.clear()
    pretrain_ddpm.main(["-d", "1", "-f", "0"])
    assert (seen["s"].lr, seen["s"].batch_size, seen["s"].epochs) == (5e-5, 1, 5000)
