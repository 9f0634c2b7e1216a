"""The pieces of data parallelism that need no second process: sampler split, shards, launch command,
configuration checks, RNG state, the stop request."""

import json
import logging
import os
import signal
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

import recog
from recog.data import ImageDataset, PKBatchSampler, Sample, build_transform
from recog.data.loader import KeyedBatches
from recog.distributed import launch, parallel
from recog.errors import ConfigError
from recog.stages import train
from recog.training.step import has_unused_parameters
from recog.utils.interrupt import StopRequest
from recog.utils.precision import amp_settings
from recog.utils.runtime import get_rng_state, select_device, set_rng_state

LABELS = [c for c in range(10) for _ in range(6)] + [10, 10]  # 11 classes, one with 2 samples


def _epoch(sampler, epoch, start=0):
    sampler.set_epoch(epoch, start)
    return list(sampler)


def test_ranks_split_each_global_pk_batch_into_different_classes():
    labels = np.asarray(LABELS)
    ranks = [PKBatchSampler(LABELS, 8, 4, seed=5, rank=r, world_size=2) for r in range(2)]
    single = PKBatchSampler(LABELS, 16, 4, seed=5)
    assert len(ranks[0]) == len(ranks[1]) == len(single) == len(LABELS) // 16
    for epoch in range(4):
        halves = [_epoch(s, epoch) for s in ranks]
        for first, second, together in zip(*halves, _epoch(single, epoch)):
            assert first + second == together  # rank 0's classes, then rank 1's: the single-process batch
            assert not set(labels[first]) & set(labels[second])  # different classes on every rank
            assert len(first) == len(second) == 8
    assert _epoch(ranks[0], 0) != _epoch(ranks[0], 1)  # reshuffled per epoch
    assert _epoch(ranks[0], 0) != _epoch(PKBatchSampler(LABELS, 8, 4, seed=6, rank=0, world_size=2), 0)


def test_start_skips_the_first_batches_of_the_same_epoch():
    sampler = PKBatchSampler(LABELS, 8, 4, seed=1, rank=1, world_size=2)
    assert _epoch(sampler, 2, start=2) == _epoch(sampler, 2)[2:]
    assert len(sampler) == 3  # an epoch's length, not what is left of it
    with pytest.raises(ValueError):
        sampler.set_epoch(0, start=4)


def test_too_few_classes_for_all_ranks_is_a_config_error():
    PKBatchSampler(LABELS, 20, 4, world_size=2)  # 5 classes per rank, 10 of 11
    with pytest.raises(
        ConfigError, match="on each of 3 processes .* needs 15 classes per step but the training set has 11"
    ):
        PKBatchSampler(LABELS, 20, 4, world_size=3)


def test_draw_numbers_are_global_positions_in_the_epoch():
    draws = []
    for rank in range(2):
        keyed = KeyedBatches(PKBatchSampler(LABELS, 8, 4, seed=0, rank=rank, world_size=2))
        keyed.set_epoch(3)
        batches = list(keyed)
        assert all(epoch == 3 for batch in batches for _, epoch, _ in batch)
        assert [[i for i, _, _ in b] for b in batches] == list(keyed.sampler)
        draws.append([d for batch in batches for _, _, d in batch])
        keyed.set_epoch(3, start=1)
        assert list(keyed) == batches[1:]
    assert sorted(draws[0] + draws[1]) == list(range(3 * 16))
    assert draws[0][:8] == list(range(8)) and draws[1][:8] == list(range(8, 16))


def test_augmentation_follows_the_draw_not_the_process(tmp_path):
    import cv2

    image = np.zeros((6, 6, 3), np.uint8)
    image[:, 0] = 255  # a flip is visible
    cv2.imwrite(str(tmp_path / "a.png"), image)
    transform = build_transform(6, (0.5,) * 3, (0.25,) * 3, train=True, hflip=True)

    def flipped(dataset, key):
        return bool(dataset[key][0][0, 0, 0] < 0)

    a, b = (ImageDataset([Sample(str(tmp_path / "a.png"), 0)], transform, seed=0) for _ in range(2))
    b[0], b[0]  # another process's stream position does not matter
    flips = [flipped(a, (0, 1, d)) for d in range(40)]
    assert flips == [flipped(b, (0, 1, d)) for d in range(40)]
    assert True in flips and False in flips
    assert flips != [flipped(a, (0, 2, d)) for d in range(40)]  # and differs per epoch


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_eval_shards_are_contiguous_whole_batches_covering_every_sample_once(world):
    for batch in (1, 3, 8):
        for n in range(0, 40):
            ranges = [parallel.shard_range(n, batch, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, in rank order
            assert all(start % batch == 0 for start, _ in ranges)  # the single process's batches
            sizes = [stop - start for start, stop in ranges]
            assert max(sizes) - min(sizes) <= batch


def test_single_process_helpers_are_identities():
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert parallel.gather_rows(rows) is rows
    assert parallel.gather_objects({"a": 1}) == [{"a": 1}]
    assert parallel.any_rank(True) and not parallel.any_rank(False)
    assert parallel.mean_across_ranks({"loss": paddle.to_tensor(1.5), "ce": paddle.to_tensor([0.25])}) == {
        "loss": 1.5,
        "ce": 0.25,
    }
    assert parallel.init_distributed() == (0, 1)


class _Launcher:
    def __init__(self, nproc_per_node=2, nnodes=1, master=None, node_rank=None):
        self.nproc_per_node, self.nnodes, self.master, self.node_rank = nproc_per_node, nnodes, master, node_rank


def test_launch_command_passes_overrides_through_and_fixes_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(recog._runtime, "OMP_NUM_THREADS_FROM_USER", False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    args = ["stage=train", "launcher.nproc_per_node=4", "+launcher.master=x:1", "data.batch_size=32", "head.margin=0.3"]
    command, env = launch.launch_command(args, _Launcher(4), "/runs/a b", "run.py", environ={"OMP_NUM_THREADS": "8"})
    assert command[:3] == [sys.executable, "-m", "paddle.distributed.launch"]
    assert command[3:7] == ["--nproc_per_node", "4", "--log_dir", "/runs/a b/launch"]
    assert command[7] == str(Path("run.py").absolute())
    assert command[8:] == ["stage=train", "data.batch_size=32", "head.margin=0.3", "hydra.run.dir='/runs/a b'"]
    assert env["OMP_NUM_THREADS"] == "2"  # 8 cores / 4 processes

    monkeypatch.setattr(recog._runtime, "OMP_NUM_THREADS_FROM_USER", True)  # the user's value is kept
    given = ["hydra.run.dir=/shared/run"]
    command, env = launch.launch_command(
        given,
        _Launcher(8, nnodes=2, master="10.0.0.1:8090", node_rank=1),
        "/shared/run",
        "run.py",
        environ={"OMP_NUM_THREADS": "3"},
    )
    assert env["OMP_NUM_THREADS"] == "3"
    assert command[3:13] == [
        "--nproc_per_node",
        "8",
        "--log_dir",
        str(launch.log_dir("/shared/run", _Launcher(nnodes=2))),
        "--nnodes",
        "2",
        "--master",
        "10.0.0.1:8090",
        "--rank",
        "1",
    ]
    assert command[-1] == "hydra.run.dir=/shared/run"  # given once, not added again


def test_launch_settings_compute_one_run_dir_and_check_multi_node(tmp_path):
    launcher, run_dir = launch.launch_settings(["launcher.nproc_per_node=2", f"paths.output_root={tmp_path}"])
    assert launcher.nproc_per_node == 2 and launcher.nnodes == 1
    assert Path(run_dir).parent == tmp_path / "runs" and Path(run_dir).is_absolute()
    _, given = launch.launch_settings(["launcher.nproc_per_node=2", f"hydra.run.dir={tmp_path}/mine"])
    assert given == str(tmp_path / "mine")
    with pytest.raises(ConfigError, match="launcher.master=HOST:PORT"):
        launch.launch_settings(["launcher.nnodes=2", f"hydra.run.dir={tmp_path}"])
    with pytest.raises(ConfigError, match="hydra.run.dir=<dir on a shared filesystem>"):
        launch.launch_settings(["launcher.nnodes=2", "launcher.master=10.0.0.1:8090"])
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        launch.launch_settings(["launcher.master=10.0.0.1"])
    with pytest.raises(ConfigError, match="at least 1"):
        launch.launch_settings(["launcher.nproc_per_node=0"])


def test_prepare_argv_leaves_single_process_commands_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("PADDLE_TRAINER_ID", raising=False)
    args = ["stage=train", f"paths.output_root={tmp_path}"]
    assert launch.prepare_argv(args, "run.py") == args
    assert launch.prepare_argv(["--cfg", "job", "launcher.nproc_per_node=2"], "run.py") == [
        "--cfg",
        "job",
        "launcher.nproc_per_node=2",
    ]
    sweep = ["-m", "head.margin=0.1,0.2", f"paths.output_root={tmp_path}"]
    assert launch.prepare_argv(sweep, "run.py") == sweep
    for distributed in ("launcher.nproc_per_node=2", "launcher.nproc_per_node=1,2"):
        with pytest.raises(ConfigError, match="sweep"):
            launch.prepare_argv(sweep + [distributed], "run.py")


def test_ranks_need_the_run_dir_and_only_rank_0_writes_logs(monkeypatch):
    with pytest.raises(ConfigError, match="without hydra.run.dir"):
        launch.rank_argv(["stage=train"], 0, 2)
    assert launch.rank_argv(["hydra.run.dir=/r"], 0, 2) == ["hydra.run.dir=/r"]
    assert launch.rank_argv(["hydra.run.dir=/r"], 1, 2) == [
        "hydra.run.dir=/r",
        "hydra.output_subdir=null",
        "hydra/job_logging=stdout",
    ]
    assert launch.rank_argv(["stage=train"], 0, 1) == ["stage=train"]  # a launcher with one process
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    assert (
        launch.prepare_argv(["hydra.run.dir=/r", "launcher.nproc_per_node=2"], "run.py")[-1]
        == "hydra/job_logging=stdout"
    )  # under the launcher: never launches again


@pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="checks the CPU build's errors")
def test_mixed_precision_without_cuda_fails_at_start(tmp_path):
    with pytest.raises(ConfigError, match="trainer.amp=O1 needs a CUDA GPU, but this Paddle build has no CUDA"):
        amp_settings(recog.compose(["trainer.amp=O1"]).trainer)
    with pytest.raises(ConfigError, match="trainer.amp=O2 runs on a GPU only, but trainer.device=cpu"):
        amp_settings(recog.compose(["trainer.amp=O2", "trainer.amp_dtype=bfloat16", "trainer.device=cpu"]).trainer)
    assert amp_settings(recog.compose([]).trainer) is None
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):  # the train stage checks before any work
        train.run(recog.compose(["trainer.amp=O1", f"paths.output_root={tmp_path}"]), tmp_path / "run")
    assert not (tmp_path / "data").exists()
    with pytest.raises(ConfigError, match="Invalid value 'O3'"):
        recog.compose(["trainer.amp=O3"])


@pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="checks the CPU fallback")
def test_auto_device_warns_only_when_gpu_features_were_asked_for(caplog, tmp_path, monkeypatch):
    with caplog.at_level(logging.WARNING):
        assert select_device("auto") == "cpu"
    assert not caplog.records  # quiet by default
    with caplog.at_level(logging.WARNING):
        assert select_device("auto", ["trainer.sync_bn=true"]) == "cpu"
    assert "trainer.sync_bn=true has no effect" in caplog.text
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")  # as if launched with 2 processes: fails before joining them
    caplog.clear()
    with pytest.raises(ConfigError, match="SyncBatchNorm"):
        train.run(recog.compose(["trainer.sync_bn=true", f"paths.output_root={tmp_path}"]), tmp_path / "run")
    assert not caplog.records  # an error, not a warning first


def test_rng_state_round_trips_through_json():
    import random

    paddle.seed(1), np.random.seed(2), random.seed(3)
    state = json.loads(json.dumps(get_rng_state()))
    first = (paddle.rand([3]).numpy(), np.random.rand(3), random.random())
    set_rng_state(state)
    again = (paddle.rand([3]).numpy(), np.random.rand(3), random.random())
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert first[2] == again[2]


def test_sigterm_and_sigint_become_a_stop_request(sigint_default):
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher repeats it: still a request, no exception
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after a request: stop now
    assert signal.getsignal(signal.SIGTERM) is before


def test_unused_parameters_are_detected_for_data_parallel():
    cfg = recog.compose(["backbone.scale=0.25", "data.image_size=16", "neck.embedding_size=8", "head.class_num=5"])
    model = recog.build_model(cfg)
    assert not has_unused_parameters(model, recog.build_loss(recog.compose(["loss=ce_triplet", "head.class_num=5"])))
    assert has_unused_parameters(model, recog.build_loss(recog.compose(["loss=triplet"])))  # the head is unread
