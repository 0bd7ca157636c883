"""cifar100/v3-ddp: one process behaves as v2; two CPU processes (gloo, via
torchrun) train and write the same diagnostics files a single process writes."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, load_version
from test_cifar100_data import CLASSES, TEST_PER_CLASS, make_image_folder

V3 = REPO_ROOT / "cifar100" / "v3-ddp"
# 15 validation images (round(160 x 0.094)) and, below, 49 test images: shards that do not divide by
# two processes, so a sampler that pads them (DistributedSampler) counts an image twice and is caught.
QUICK = ["--quick", "--device", "cpu", "--width", "8", "--val_fraction", "0.094"]
NUM_VAL, NUM_TEST = 15, len(CLASSES) * TEST_PER_CLASS - 1
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = make_image_folder(tmp_path_factory.mktemp("cifar_v3"))
    (folder / "test" / CLASSES[0] / "0000.png").unlink()  # 49 test images: an odd number
    return folder


@pytest.fixture(scope="module")
def single(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("v3_single")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DIAGNOSTICS_DIR"):
            mp.delenv(name, raising=False)
        results = load_version("cifar100/v3-ddp", "main").main([*QUICK, "--data-dir", str(images), "--out", str(out)])
    return results, out


# main.py under torchrun, with one spy: every DistributedSampler.set_epoch call is logged per rank
# (without set_epoch every epoch repeats the first epoch's shuffle, and no metric shows it). Its
# outputs/ is moved to $CIFAR100_OUTPUTS, so that the run, without --out, stays out of the repository.
SPY = """
import os, sys
from pathlib import Path
from torch.utils.data.distributed import DistributedSampler
set_epoch = DistributedSampler.set_epoch
def logged(self, epoch):
    with open(os.environ["SET_EPOCH_LOG"] + "." + os.environ["RANK"], "a") as f:
        f.write(f"{epoch}\\n")
    set_epoch(self, epoch)
DistributedSampler.set_epoch = logged
sys.path.insert(0, os.getcwd())
import main
main.OUTPUTS = Path(os.environ["CIFAR100_OUTPUTS"])
sys.exit(main.cli(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def two_processes(images, tmp_path_factory):
    """Two processes without --out: rank 0 makes the dated run folder, rank 1 must use the same one."""
    root = tmp_path_factory.mktemp("v3_two")
    spy = root / "spy.py"
    spy.write_text(SPY)
    env = {k: v for k, v in os.environ.items() if k != "DIAGNOSTICS_DIR"}
    env.update(OMP_NUM_THREADS="1", SET_EPOCH_LOG=str(root / "set_epoch"), CIFAR100_OUTPUTS=str(root / "outputs"))
    done = subprocess.run([*TORCHRUN, str(spy), *QUICK, "--data-dir", str(images)],
                          cwd=V3, env=env, capture_output=True, text=True, timeout=300)
    latest = root / "outputs" / "latest"
    return done, latest.resolve() if latest.exists() else latest


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_process_is_v2(single, images, tmp_path):
    """Without torchrun, v3 is v2: the same numbers, bit for bit, on a CPU."""
    v3_results, v3_out = single
    load_version("cifar100/v2-diagnostics", "main").main([*QUICK, "--data-dir", str(images), "--out", str(tmp_path)])
    drop_timing = lambda r: {k: v for k, v in r.items() if k not in ("epoch_time_s", "images_per_second")}  # noqa: E731
    assert [drop_timing(r) for r in read_jsonl(v3_out / "history.jsonl")] == [drop_timing(r) for r in read_jsonl(tmp_path / "history.jsonl")]
    for name in ("train_diagnostics.jsonl", "val_diagnostics.jsonl"):
        assert (v3_out / "diagnostics" / name).read_text() == (tmp_path / "diagnostics" / name).read_text()
    assert v3_results["world_size"] == 1 and v3_results["backend"] is None
    assert v3_results["test_accuracy"] == json.loads((tmp_path / "results.json").read_text())["test_accuracy"]


def test_two_gloo_processes_write_what_one_process_writes(single, two_processes):
    done, two_out = two_processes
    assert done.returncode == 0, done.stderr[-3000:]
    _, one_out = single
    for name in ("train_diagnostics.jsonl", "val_diagnostics.jsonl"):
        one, two = read_jsonl(one_out / "diagnostics" / name), read_jsonl(two_out / "diagnostics" / name)
        # rank 0 alone writes: two processes writing would double the lines
        assert len(two) == len(one) == 2
        assert [list(r) for r in two] == [list(r) for r in one]
        assert [r["epoch"] for r in two] == [1, 2]
        # each process takes 16 of the global 32 images per step: as many steps as one process
        assert [r["num_batches"] for r in two] == [r["num_batches"] for r in one]
        for r in two:
            assert all(math.isfinite(v) for v in r.values())
            assert 0 <= r["accuracy"] <= 100
    train = read_jsonl(two_out / "diagnostics" / "train_diagnostics.jsonl")
    assert all(0.01 < r["mean_grad_norm"] < 100 and 1e-3 < r["weight_update_norm"] < 1 for r in train)
    assert len(read_jsonl(two_out / "history.jsonl")) == 2


def test_two_processes_count_every_image_once(two_processes):
    done, out = two_processes
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["world_size"] == 2 and results["backend"] == "gloo"
    assert results["batch_size_per_process"] == 16 and results["config"]["batch_size"] == 32
    # test metrics summed over both ranks' shards: all 50 images, not rank 0's 25
    assert results["test_images"] == NUM_TEST and results["data"]["val"] == NUM_VAL
    # validation accuracy over 15 images, counted once each: a multiple of 1/15 (padding to 16 breaks it)
    for r in read_jsonl(out / "history.jsonl"):
        assert (r["val_accuracy"] / 100 * NUM_VAL) == pytest.approx(round(r["val_accuracy"] / 100 * NUM_VAL), abs=1e-6)
    assert done.stdout.count("loading CIFAR-100") == 1  # rank-0 logging
    assert (out / "best_model.pth").exists() and (out / "curves.png").exists()


def test_two_processes_share_one_run_folder(two_processes):
    """Rank 0 alone makes the folder and says where it is; each rank making its own would leave one
    dated folder per process (their clocks a second apart), rank 1 loading a checkpoint that is not there."""
    done, out = two_processes
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["latest", out.name])
    assert out.name.endswith("-quick")
    assert done.stdout.count("Run folder:") == 1 and done.stdout.strip().endswith(f"Run folder: {out}")
    assert json.loads((out / "results.json").read_text())["history_file"] == str(out / "history.jsonl")


def test_uneven_batch_and_sync_bn_on_cpu_are_usage_errors(images, tmp_path, monkeypatch, capsys):
    main = load_version("cifar100/v3-ddp", "main")
    assert main.cli([*QUICK, "--data-dir", str(images), "--out", str(tmp_path), "--sync_bn"]) == 2
    assert "SyncBatchNorm" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main.cli([*QUICK, "--data-dir", str(images), "--out", str(tmp_path)]) == 2  # 32 images over 3 processes
    assert "does not split evenly" in capsys.readouterr().err


def test_shard_sampler_covers_every_index_once():
    main = load_version("cifar100/v3-ddp", "main")
    shards = [list(main.ShardSampler(17, rank, 3)) for rank in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(17))
    assert [len(s) for s in shards] == [6, 6, 5]


def test_benchmark_writes_throughput_and_efficiency(tmp_path):
    bench = load_version("cifar100/v3-ddp", "scripts.benchmark_throughput")
    args = ["--device", "cpu", "--batch_size", "8", "--steps", "2", "--warmup", "1", "--width", "8"]
    assert bench.main([*args, "--out", str(tmp_path / "b1.json")]) == 0
    first = json.loads((tmp_path / "b1.json").read_text())
    assert first["images_per_second"] > 0 and first["images"] == 16 and first["world_size"] == 1
    assert bench.main([*args, "--out", str(tmp_path / "b2.json"), "--baseline", str(tmp_path / "b1.json")]) == 0
    second = json.loads((tmp_path / "b2.json").read_text())
    assert second["scaling_efficiency"] == pytest.approx(second["images_per_second"] / first["images_per_second"])


def test_two_processes_report_what_one_process_measures_on_their_weights(two_processes):
    """The values, not only the keys: the test loss and accuracy the two processes wrote must be what one
    process measures on the same checkpoint and the same 49 images. Catches an evaluation sampler that
    pads or drops images, metrics not summed over ranks, and BatchNorm statistics not synced to rank 0's
    (each rank would evaluate its shard with its own running statistics)."""
    done, out = two_processes
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    main = load_version("cifar100/v3-ddp", "main")
    train_utils = load_version("cifar100/v3-ddp", "scripts.train_utils")
    data_module = load_version("cifar100/v3-ddp", "scripts.data")
    data = data_module.subset(data_module.load_cifar100(results["config"]["data_dir"]), main.QUICK_TRAIN, main.QUICK_TEST,
                              seed=results["config"]["seed"])
    _, val_ds, test_ds = train_utils.build_datasets(data, results["config"]["val_fraction"],
                                                    results["config"]["randaugment_magnitude"])
    model = train_utils.ResNet18(num_classes=len(data.classes), width=8)
    model.load_state_dict(torch.load(out / "best_model.pth", weights_only=True))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=results["config"]["label_smoothing"])
    loader = torch.utils.data.DataLoader(test_ds, batch_size=16)
    one = train_utils.evaluate(model, loader, criterion, torch.device("cpu"), use_autocast=False)
    assert one["images"] == results["test_images"] == NUM_TEST
    assert one["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-9)
    assert one["loss"] == pytest.approx(results["test_loss"], rel=1e-5)
    # best_model.pth was saved right after the best epoch's validation: that record is what one process
    # measures on it. Without sync_buffers, rank 1 validates its shard with its own BatchNorm statistics.
    best = read_jsonl(out / "history.jsonl")[results["best_epoch"] - 1]
    val = train_utils.evaluate(model, torch.utils.data.DataLoader(val_ds, batch_size=16), criterion,
                               torch.device("cpu"), use_autocast=False)
    assert val["images"] == NUM_VAL
    assert val["accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-9)
    assert val["loss"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_two_processes_train_like_one(single, two_processes):
    """Training values within tolerance of one process's: each rank sees its own augmentations and half
    the batch, so not bit for bit, but the same loss level, accuracy and gradient scale per epoch."""
    done, two_out = two_processes
    assert done.returncode == 0, done.stderr[-3000:]
    _, one_out = single
    one = read_jsonl(one_out / "diagnostics" / "train_diagnostics.jsonl")
    two = read_jsonl(two_out / "diagnostics" / "train_diagnostics.jsonl")
    for a, b in zip(one, two):
        assert b["learning_rate"] == a["learning_rate"]
        assert b["loss"] == pytest.approx(a["loss"], rel=0.15)
        assert b["mean_grad_norm"] == pytest.approx(a["mean_grad_norm"], rel=0.5)
        assert b["weight_update_norm"] == pytest.approx(a["weight_update_norm"], rel=0.5)


def test_every_rank_reshuffles_every_epoch(two_processes):
    """DistributedSampler.set_epoch(epoch) on every rank before every epoch: its shuffle is seeded with
    seed + epoch, so without the call each epoch sees the same order of the same shard."""
    done, out = two_processes
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        log = out.parents[1] / f"set_epoch.{rank}"
        assert log.read_text().split() == ["1", "2"], f"rank {rank}"
