"""Data-parallel jobs through Hydra's submitit launcher (Slurm, or local processes for a try-out).

``python run.py -m hydra/launcher=submitit_slurm hydra.launcher.nodes=2 hydra.launcher.gpus_per_node=4
launcher.nproc_per_node=4 stage=train ...`` submits one Slurm job per sweep setting. Submitit runs the
Hydra task function once per task; with one task per node (``hydra.launcher.tasks_per_node=1``, the
default), that task is the node's launcher: it runs::

    python -m paddle.distributed.launch --nproc_per_node N [--nnodes M --master HOST:PORT --rank R]
        --log_dir <job dir>/launch run.py <the job's overrides> hydra.run.dir=<job dir>

as a child process and waits for it, exactly what ``python run.py launcher.nproc_per_node=N`` does
on one machine (recog/distributed/launch.py). The job dir is the sweep job's directory, the same on
every node (a shared filesystem). ``M`` and ``R`` are Slurm's node count and this node's index;
``HOST`` is the job's first node, ``PORT`` is ``launcher.master``'s port if given, else one derived
from the job id (so that jobs sharing a node do not collide).

Slurm's pre-timeout signal and ``scancel`` reach the child launcher as SIGTERM, so the ranks
checkpoint and stop (see recog/stages/train.py); continue with ``resume=true
hydra.run.dir=<job dir>``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import zlib
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recog.distributed.launch import launch_command, under_launcher
from recog.errors import ConfigError, RecogError

log = logging.getLogger(__name__)


def submitit_environment():
    """The running submitit job's ``JobEnvironment``, or None outside submitit."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return None
    import submitit

    return submitit.JobEnvironment()


def needs_node_launch(cfg: DictConfig) -> bool:
    """This Hydra job runs as a submitit task and its config asks for more than one process."""
    job_env = None if under_launcher() else submitit_environment()
    return job_env is not None and (cfg.launcher.nproc_per_node > 1 or job_env.num_nodes > 1)


def node_launcher_settings(cfg: DictConfig, job_env) -> DictConfig:
    """``cfg.launcher`` completed from the submitit job: node count, node rank and master."""
    if job_env.num_tasks != job_env.num_nodes:
        raise ConfigError(
            f"the submitit job has {job_env.num_tasks} tasks on {job_env.num_nodes} node(s): recog needs one task "
            "per node (hydra.launcher.tasks_per_node=1), which starts launcher.nproc_per_node processes"
        )
    launcher = OmegaConf.create(OmegaConf.to_container(cfg.launcher))
    if cfg.launcher.nnodes > 1 and cfg.launcher.nnodes != job_env.num_nodes:
        raise ConfigError(
            f"launcher.nnodes={cfg.launcher.nnodes} but the job has {job_env.num_nodes} node(s) "
            "(hydra.launcher.nodes): leave launcher.nnodes out, the job's node count is used"
        )
    launcher.nnodes = job_env.num_nodes
    if job_env.num_nodes > 1:
        launcher.node_rank = job_env.node
        port = str(cfg.launcher.master).rsplit(":", 1)[1] if cfg.launcher.master else default_port(job_env.job_id)
        launcher.master = f"{job_env.hostnames[0]}:{port}"
    return launcher


def default_port(job_id: str) -> int:
    """A port in 20000-29999 from the job id: the same on every node of a job."""
    return 20000 + zlib.crc32(str(job_id).encode()) % 10000


def run_node_launcher(
    cfg: DictConfig, run_dir: str, overrides: Sequence[str], script: str, job_num: int | None = None
) -> dict[str, float]:
    """Run this node's ``paddle.distributed.launch`` for the job; returns the run's ``metrics.json``
    (``{}`` if the stage wrote none), or raises ``RecogError`` when a rank failed."""
    from recog.tracking.sweep import JOB_NUM_ENV

    job_env = submitit_environment()
    launcher = node_launcher_settings(cfg, job_env)
    command, env = launch_command(list(overrides), launcher, str(Path(run_dir).absolute()), script)
    if job_num is not None:  # the ranks run in Hydra's run mode: name their MLflow run after the sweep job
        env[JOB_NUM_ENV] = str(job_num)
    log.info(
        "submitit job %s, node %d of %d: %d process(es) under paddle.distributed.launch, run dir %s",
        job_env.job_id,
        job_env.node + 1,
        job_env.num_nodes,
        launcher.nproc_per_node,
        run_dir,
    )
    child = subprocess.Popen(command, env=env)
    previous = {sig: signal.signal(sig, _forward_to(child)) for sig in _forwarded_signals()}
    try:
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status != 0:
        raise RecogError(
            f"paddle.distributed.launch exited with status {status} on node {job_env.node}; "
            f"the ranks' logs are in {Path(run_dir) / 'launch'}"
        )
    metrics = Path(run_dir) / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.is_file() else {}


def _forwarded_signals() -> list[int]:
    """SIGTERM (scancel) and Slurm's pre-timeout signal (submitit's USR2 by default)."""
    return [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2]


def _forward_to(child: subprocess.Popen):
    def handler(signum: int, frame: object | None) -> None:
        log.warning("signal %d: asking the ranks to checkpoint and stop", signum)
        child.send_signal(signal.SIGTERM)

    return handler
