"""``python run.py ... launcher.nproc_per_node=2``: one run dir, one MLflow run, SIGTERM + resume, crashes."""

import json
import os
import signal
import socket
import time

import pytest
from commands import reached, start_py, stop
from dist_helpers import TINY, alive, children, env, max_difference, rank_of, run_py, wait_for, weights
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store

import recog
from recog.stages import train

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processes")]  # each test starts 2 processes or times a SIGTERM

# As in test_data_parallel: a config whose 2-process training equals 1 process on the concatenated batches.
EQUIVALENT = TINY + [
    "loss=ce",
    "head=fc",
    "optimizer=momentum",
    "backbone.dropout_prob=0.0",
    "trainer.freeze_bn=true",
    "optimizer.lr=0.1",
    "scheduler.warmup_epochs=0",
    "trainer.epochs=2",
    "trainer.log_every=3",
    "trainer.eval_every=2",
    "mlflow.experiment_name=ddp",
]


def _start(log_path, *args):
    return start_py(args, log_path, env=env())


def _only_run_dir(root):
    runs = [p for p in (root / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # every rank wrote into the same, single run dir
    return runs[0]


def test_relaunch_shares_one_run_dir_and_mlflow_run_through_sigterm_and_resume(tmp_path, image_lists):
    overrides = EQUIVALENT + image_lists + [f"paths.output_root={tmp_path}"]
    progress, log = tmp_path / "progress.json", tmp_path / "first.log"
    new_store(tmp_path)  # the run's MLflow store, migrated (tests/mlflow_stores.py)
    t0 = time.perf_counter()
    proc = _start(log, "stage=train", "launcher.nproc_per_node=2", *overrides, f"trainer.progress_file={progress}")
    try:
        wait_for(lambda: reached(progress, epoch=1, step_in_epoch=2), 120, "2 training steps", proc, log)  # rank 0's
    except BaseException:
        stop(proc)
        raise
    run_dir = _only_run_dir(tmp_path)
    sent = time.perf_counter()
    t1 = sent - t0
    proc.send_signal(signal.SIGTERM)  # to the launcher (what run.py's process became), as Slurm or Ctrl-C would
    code = proc.wait(timeout=60)
    stop_seconds = time.perf_counter() - sent
    assert code != 0, (tmp_path / "first.log").read_text()[-3000:]

    state = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
    assert state["epoch"] == 0 and 2 <= state["step_in_epoch"] < 12 and state["step"] == state["step_in_epoch"]
    assert state["finished"] is False and state["world_size"] == 2 and len(state["rng"]) == 2
    assert "SIGTERM" in (run_dir / "launch" / "workerlog.1").read_text(errors="replace")  # rank 1 stopped cleanly too
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert run.info.status == "KILLED"

    t2 = time.perf_counter()
    result = run_py("stage=train", "launcher.nproc_per_node=2", *overrides, "resume=true", f"hydra.run.dir={run_dir}")
    t2 = time.perf_counter() - t2
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _only_run_dir(tmp_path) == run_dir
    assert {"workerlog.0", "workerlog.1"} <= {p.name for p in (run_dir / "launch").iterdir()}
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "best_model" / "model.safetensors").is_file()
    run_log = (run_dir / "run.log").read_text()
    assert run_log.count("steps per epoch on each of 2 processes") == 2  # rank 0 of each launch; rank 1 logs elsewhere

    (run,) = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])  # still exactly one run
    assert run.info.status == "FINISHED" and run.info.run_id == state["mlflow_run_id"]
    assert run.data.tags["recog.world_size"] == "2" and "recall_at_1" in run.data.metrics
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert steps == list(range(3, 25, 3))  # every log step once, before and after the interruption

    # The interrupted + resumed 2-process run ends where one uninterrupted process on the
    # concatenated batches (batch 16) does.
    single_cfg = recog.compose(overrides + ["data.batch_size=16", "mlflow.enabled=false"])
    t3 = time.perf_counter()
    train.run(single_cfg, tmp_path / "single")
    t3 = time.perf_counter() - t3
    difference = max_difference(
        weights(run_dir / "checkpoints" / "last"), weights(tmp_path / "single" / "checkpoints" / "last")
    )
    assert difference < 1e-5
    print(
        f"SIGTERM -> launcher exit {code} after {stop_seconds:.1f} s (stopped at step {state['step']}); "
        f"max |resumed DDP - single| = {difference:.3g}; start to SIGTERM {t1:.1f} s, resumed launch {t2:.1f} s, "
        f"single process {t3:.1f} s"
    )


def test_a_crashed_rank_ends_the_whole_launch_within_seconds(tmp_path, image_lists):
    progress, log = tmp_path / "progress.json", tmp_path / "crash.log"
    proc = _start(
        log,
        f"trainer.progress_file={progress}",
        "stage=train",
        "launcher.nproc_per_node=2",
        *TINY,
        *image_lists,
        "trainer.epochs=100",
        "mlflow.enabled=false",
        f"paths.output_root={tmp_path}",
    )
    try:
        # Both ranks are training: every step waits for the other rank's gradients.
        wait_for(lambda: reached(progress, epoch=1, step_in_epoch=2), 120, "2 training steps", proc, log)
        ranks = wait_for(lambda: {r: p for p in children(proc.pid) if (r := rank_of(p)) is not None}, 10, "the ranks")
        assert set(ranks) == {0, 1}
        os.kill(ranks[1], signal.SIGKILL)  # a crash nothing can intercept (OOM killer, segfault)
        killed = time.perf_counter()
        code = proc.wait(timeout=60)
        seconds = time.perf_counter() - killed
    finally:
        stop(proc)
    assert code != 0
    assert seconds < 15, seconds
    assert not alive(ranks[0])  # the surviving rank did not linger
    assert "Container failed" in (tmp_path / "crash.log").read_text(errors="replace")
    print(f"rank 1 killed -> launcher exit {code} after {seconds:.1f} s")


def test_two_nodes_meet_at_the_master(tmp_path, image_lists):
    """launcher.nnodes / master / node_rank reach paddle.distributed.launch: two "nodes" on this host."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    common = [
        "stage=train",
        "launcher.nnodes=2",
        "launcher.nproc_per_node=1",
        f"launcher.master=127.0.0.1:{port}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *TINY,
        *image_lists,
        "trainer.epochs=1",
        "trainer.steps_per_epoch=3",
        "mlflow.enabled=false",
        f"paths.output_root={tmp_path}",
    ]
    nodes = [_start(tmp_path / f"node{n}.log", *common, f"launcher.node_rank={n}") for n in (0, 1)]
    try:
        codes = [node.wait(timeout=180) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert codes == [0, 0], (tmp_path / "node1.log").read_text(errors="replace")[-3000:]
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 3 and state["finished"] is True
    assert (tmp_path / "run" / "launch" / socket.gethostname()).is_dir()  # per-host launcher logs
