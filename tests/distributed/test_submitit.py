"""Hydra's submitit launcher: each job (one task per node) starts its node's ranks through
``paddle.distributed.launch``. ``submitit_local`` runs the same code path as Slurm, on this machine."""

from types import SimpleNamespace

import pytest
from dist_helpers import TINY, weights
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store
from omegaconf import OmegaConf

from recog.distributed import launch, submitit_job
from recog.errors import ConfigError


def _cfg(**launcher):
    return OmegaConf.create(
        {"launcher": {"nproc_per_node": 4, "nnodes": 1, "master": None, "node_rank": None, **launcher}}
    )


def _job(nodes=2, tasks=2, node=1, job_id="4242"):
    return SimpleNamespace(num_nodes=nodes, num_tasks=tasks, node=node, job_id=job_id, hostnames=["gpu7", "gpu9"])


def test_a_slurm_node_joins_the_first_node_with_its_own_rank():
    settings = submitit_job.node_launcher_settings(_cfg(), _job())
    assert settings.nnodes == 2 and settings.node_rank == 1 and settings.nproc_per_node == 4
    host, port = settings.master.split(":")
    assert host == "gpu7" and 20000 <= int(port) < 30000
    # every node of the job derives the same port; another job most likely another one
    assert submitit_job.node_launcher_settings(_cfg(), _job(node=0)).master == settings.master
    assert submitit_job.default_port("4243") != submitit_job.default_port("4242")
    command, _ = launch.launch_command(["stage=train", "launcher.nproc_per_node=4"], settings, "/shared/run", "run.py")
    joined = " ".join(command)
    assert "--nnodes 2 --master gpu7:" in joined and "--rank 1" in joined and "--nproc_per_node 4" in joined
    assert "launcher.nproc_per_node" not in joined and command[-1] == "hydra.run.dir=/shared/run"


def test_the_port_of_launcher_master_is_kept():
    assert submitit_job.node_launcher_settings(_cfg(master="ignored:8123"), _job()).master == "gpu7:8123"


def test_a_single_node_job_needs_no_master():
    settings = submitit_job.node_launcher_settings(_cfg(), _job(nodes=1, tasks=1, node=0))
    assert settings.nnodes == 1 and settings.master is None and settings.node_rank is None


@pytest.mark.parametrize(
    "cfg, job, message",
    [
        (_cfg(), _job(tasks=8), "one task per node"),
        (_cfg(nnodes=3), _job(), "launcher.nnodes=3"),
    ],
)
def test_mismatched_job_shapes_are_refused(cfg, job, message):
    with pytest.raises(ConfigError, match=message):
        submitit_job.node_launcher_settings(cfg, job)


def test_a_sweep_with_the_submitit_launcher_may_ask_for_several_processes():
    args = ["-m", "hydra/launcher=submitit_local", "launcher.nproc_per_node=2", "head.margin=0.1,0.2"]
    assert launch.prepare_argv(args, "run.py") == args


@pytest.mark.xdist_group("processes")
@pytest.mark.slow
def test_submitit_local_job_trains_with_two_processes_in_its_job_dir(tmp_path, image_lists, run_cli, monkeypatch):
    sweep = tmp_path / "sweep"
    new_store(tmp_path)  # a migrated MLflow store (tests/mlflow_stores.py)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job's processes inherit this process's environment
    # python run.py -m ..., in this process: the sweep submits the job, which submitit starts as a
    # process of its own; the job launches the 2 ranks
    result = run_cli(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep}",
        "stage=train",
        "launcher.nproc_per_node=2",
        *TINY,
        *image_lists,
        "trainer.epochs=1",
        "trainer.steps_per_epoch=2",
        "mlflow.experiment_name=submitit",
        f"paths.output_root={tmp_path}",
    )
    job_dir = sweep / "0"
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(sweep.glob(".submitit/*/*.*")))
    assert result.returncode == 0, result.stderr[-3000:] + logs
    assert sorted(p.name for p in (job_dir / "launch").glob("workerlog.*")) == ["workerlog.0", "workerlog.1"]
    assert weights(job_dir / "best_model")  # rank 0 wrote the best model into the job dir
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("submitit").experiment_id])
    (run,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]  # rank 0's, under the sweep's parent run
    assert run.info.status == "FINISHED" and run.data.tags["recog.world_size"] == "2"
    assert run.info.run_name.startswith("#0") and "recall_at_1" in run.data.metrics
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and len(runs) == 2


def test_an_empty_cuda_visible_devices_is_dropped_on_a_cpu_build():
    settings = submitit_job.node_launcher_settings(_cfg(), _job(nodes=1, tasks=1, node=0))
    _, env = launch.launch_command([], settings, "/run", "run.py", environ={"CUDA_VISIBLE_DEVICES": ""})
    assert "CUDA_VISIBLE_DEVICES" not in env  # submitit sets it empty without GPUs; the launcher would fail
