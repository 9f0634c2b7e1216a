"""``python run.py ... launcher.nproc_per_node=N``: the same command under ``paddle.distributed.launch``.

``run.py`` calls ``prepare_argv`` before Hydra reads the command line.

Outside the launcher, when the composed config asks for more than one process
(``launcher.nproc_per_node`` or ``launcher.nnodes`` above 1, on the command line or in a config
such as an experiment), the run directory is computed once (Hydra's ``hydra.run.dir``, e.g.
``outputs/runs/<date>_<time>``, or the one given) and this process becomes the launcher: it runs,
in itself (Paddle is imported already, and the process keeps its PID, as an ``exec`` would)::

    python -m paddle.distributed.launch --nproc_per_node N [--nnodes M --master HOST:PORT [--rank R]]
        --log_dir <run dir>/launch run.py <the overrides minus launcher.*> hydra.run.dir=<run dir>

so every rank writes into the same run directory, and signals and the exit status are the
launcher's: a rank that fails makes the launcher stop the others (SIGTERM, SIGKILL after 3 s)
and exit non-zero; SIGTERM / Ctrl-C to the launcher reaches every rank as SIGTERM (see
recog/stages/train.py for the checkpoint that follows). Each rank's output is in
``<run dir>/launch/workerlog.<local rank>`` (``<run dir>/launch/<host>/`` with several nodes);
rank 0's is also printed.

Unless ``OMP_NUM_THREADS`` is exported, each of the N processes of a node gets cores / N threads.

Inside the launcher (each rank runs ``run.py`` again): with more than one process the command
must name the run directory (``hydra.run.dir=...``; the relaunch adds it, a direct
``python -m paddle.distributed.launch ... run.py`` must pass it) - otherwise every rank would pick
its own timestamped directory. Ranks other than 0 log to their stdout only (the launcher's
workerlog) and do not write Hydra's ``.hydra/`` files, so rank 0's ``run.log`` and ``.hydra/`` are
the run's.

A rank does not repeat ``recog.cli.precheck`` when the launcher that started it checked its exact
command line: the launcher passes ``RECOG_PRECHECKED=<launcher PID>:<digest of the rank's
arguments>``, and a rank whose parent or arguments differ (a user's own ``paddle.distributed.launch``
command, a stale exported value) checks as usual.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig

from recog.errors import ConfigError

MULTIRUN = ("-m", "--multirun")
PRECHECKED_ENV = "RECOG_PRECHECKED"


def under_launcher() -> bool:
    """This process is a rank started by ``paddle.distributed.launch``."""
    return "PADDLE_TRAINER_ID" in os.environ and "PADDLE_TRAINERS_NUM" in os.environ


def precheck_marker(args: Sequence[str], launcher_pid: int) -> str:
    """``RECOG_PRECHECKED``'s value for ranks started by process ``launcher_pid`` with arguments ``args``."""
    digest = hashlib.sha256(json.dumps(list(args)).encode()).hexdigest()
    return f"{launcher_pid}:{digest}"


def prechecked_by_launcher(args: Sequence[str]) -> bool:
    """This process is a rank whose launcher (its parent) ran ``recog.cli.precheck`` on its arguments."""
    marker = os.environ.get(PRECHECKED_ENV)
    return bool(marker) and under_launcher() and marker == precheck_marker(args, os.getppid())


def prepare_argv(args: Sequence[str], script: str, composed: DictConfig | None = None) -> list[str]:
    """The command-line arguments Hydra should parse in this process.

    Does not return when the command asks for several processes and this process is not one of
    them: it becomes ``python -m paddle.distributed.launch ... script ...`` instead. ``composed``:
    the config of the command's non-swept overrides when the caller has it (``recog.cli.precheck``'s):
    a single-process command is then not composed again. Called after ``recog.cli.precheck`` passed
    ``args`` in this process (``recog.app.main``): the ranks are told not to check them again.
    """
    args = list(args)
    if composed is not None and not under_launcher() and _single_process(composed.launcher):
        if not any(a in MULTIRUN for a in args) or not any(_is_launcher_override(a) for a in args):
            return args
    if under_launcher():
        return rank_argv(args, int(os.environ["PADDLE_TRAINER_ID"]), int(os.environ["PADDLE_TRAINERS_NUM"]))
    if any(a.startswith("-") and a not in MULTIRUN for a in args):
        return args  # --cfg job, --help, ...: Hydra's own modes, nothing is run
    if any(a in MULTIRUN for a in args):
        if not any(a.startswith("hydra/launcher=submitit") for a in args):
            _refuse_distributed_sweep(args)  # submitit jobs launch their ranks: recog/distributed/submitit_job.py
        return args
    launcher, run_dir = launch_settings(args)
    if launcher.nproc_per_node <= 1 and launcher.nnodes <= 1:
        return args
    command, env = launch_command(args, launcher, run_dir, script)
    env[PRECHECKED_ENV] = precheck_marker(rank_command_args(args, run_dir), os.getpid())
    print(
        f"recog: {launcher.nproc_per_node * launcher.nnodes} processes "
        f"({launcher.nproc_per_node} on this node) under paddle.distributed.launch, run dir {run_dir}; "
        f"rank logs in {log_dir(run_dir, launcher)}",
        file=sys.stderr,
        flush=True,
    )
    become_launcher(command, env)


def become_launcher(command: list[str], env: dict[str, str]) -> NoReturn:
    """Run ``command`` (``python -m paddle.distributed.launch ARGS``) in this process and exit with
    its status: what an ``exec`` of it would do, without a second interpreter importing Paddle."""
    from paddle.distributed.launch.main import launch

    assert command[1:3] == ["-m", "paddle.distributed.launch"], command
    os.environ.clear()
    os.environ.update(env)  # the launcher passes its environment on to the ranks
    sys.argv = [command[2], *command[3:]]
    launch()  # exits with the ranks' status (sys.exit) once they end
    sys.exit(0)


def _single_process(launcher: DictConfig) -> bool:
    return launcher.nproc_per_node == 1 and launcher.nnodes == 1


def _refuse_distributed_sweep(args: list[str]) -> None:
    """Hydra's basic and joblib launchers run the jobs in this process or its workers: no
    data-parallel launch for them (the submitit launcher's jobs launch their own ranks)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides([a for a in args if a not in MULTIRUN])
    swept = [o.input_line for o in overrides if o.is_sweep_override() and _is_launcher_override(o.input_line)]
    launcher, _ = launch_settings([o.input_line for o in overrides if not o.is_sweep_override()])
    if swept or launcher.nproc_per_node > 1 or launcher.nnodes > 1:
        raise ConfigError(
            "a sweep (-m) cannot run with launcher.nproc_per_node/nnodes above 1 on this machine's "
            "launchers: start one data-parallel run per setting, or submit the sweep's jobs with "
            "hydra/launcher=submitit_slurm (or submitit_local)"
        )


def rank_argv(args: list[str], rank: int, world_size: int) -> list[str]:
    """A rank's arguments: the run dir must be fixed; ranks above 0 leave logs and .hydra to rank 0."""
    if world_size > 1 and run_dir_override(args) is None:
        raise ConfigError(
            f"started by paddle.distributed.launch with {world_size} processes but without hydra.run.dir: "
            "each process would write into its own timestamped run dir. Pass hydra.run.dir=<dir> (the same "
            "for every process), or let run.py start the launcher: python run.py launcher.nproc_per_node=N ..."
        )
    if rank > 0:
        keys = {a.lstrip("+~").split("=", 1)[0] for a in args}
        extra = {"hydra.output_subdir": "null", "hydra/job_logging": "stdout"}
        return args + [f"{key}={value}" for key, value in extra.items() if key not in keys]
    return args


def run_dir_override(args: Sequence[str]) -> str | None:
    for arg in args:
        if arg.lstrip("+").startswith("hydra.run.dir="):
            return arg.split("=", 1)[1]
    return None


def launch_settings(overrides: list[str]) -> tuple[DictConfig, str]:
    """``(cfg.launcher, run dir)`` of the command line, composed as Hydra will compose it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from recog.config.compose import CONF_DIR, explain_config_error
    from recog.config.schema import register_schemas

    register_schemas()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
            run_dir = str(Path(str(cfg.hydra.run.dir)).absolute())
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(explain_config_error(error)) from None
    finally:
        GlobalHydra.instance().clear()
    launcher = cfg.launcher
    if launcher.nproc_per_node < 1 or launcher.nnodes < 1:
        raise ConfigError(
            f"launcher.nproc_per_node ({launcher.nproc_per_node}) and launcher.nnodes "
            f"({launcher.nnodes}) must be at least 1"
        )
    if launcher.nnodes > 1:
        if not launcher.master:
            raise ConfigError(
                f"launcher.nnodes={launcher.nnodes} needs launcher.master=HOST:PORT, the same on "
                "every node (a free port on the first node)"
            )
        if run_dir_override(overrides) is None:
            raise ConfigError(
                f"launcher.nnodes={launcher.nnodes} needs hydra.run.dir=<dir on a shared filesystem>, "
                "the same on every node: each node would otherwise pick its own timestamped run dir"
            )
    if launcher.master and not re.fullmatch(r"[^\s:]+:\d+", str(launcher.master)):
        raise ConfigError(f"launcher.master={launcher.master}: expected HOST:PORT, e.g. 10.0.0.1:8090")
    return launcher, run_dir


def launch_command(
    args: Sequence[str], launcher, run_dir: str, script: str, environ: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """``(argv, environment)`` of the ``paddle.distributed.launch`` command for ``args``."""
    env = dict(os.environ if environ is None else environ)
    env.pop(PRECHECKED_ENV, None)  # only the process that checked the ranks' command line sets it
    from recog import _runtime

    if not _runtime.OMP_NUM_THREADS_FROM_USER or "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // launcher.nproc_per_node))
    if env.get("CUDA_VISIBLE_DEVICES") == "" and not _compiled_with_cuda():
        # An empty list (e.g. set by submitit without GPUs) makes the launcher look for GPU "" and fail.
        del env["CUDA_VISIBLE_DEVICES"]
    command = [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        str(launcher.nproc_per_node),
        "--log_dir",
        str(log_dir(run_dir, launcher)),
    ]
    if launcher.nnodes > 1:
        command += ["--nnodes", str(launcher.nnodes)]
    if launcher.master:
        command += ["--master", str(launcher.master)]
    if launcher.node_rank is not None:
        command += ["--rank", str(launcher.node_rank)]
    return command + [str(Path(script).absolute()), *rank_command_args(args, run_dir)], env


def rank_command_args(args: Sequence[str], run_dir: str) -> list[str]:
    """What the launcher passes each rank's ``run.py``: ``args`` minus ``launcher.*``, with the run dir."""
    passed = [a for a in args if not _is_launcher_override(a)]
    if run_dir_override(passed) is None:
        passed.append(f"hydra.run.dir={_quote(run_dir)}")
    return passed


def _compiled_with_cuda() -> bool:
    import paddle

    return paddle.is_compiled_with_cuda()


def log_dir(run_dir: str, launcher) -> Path:
    """Where the launcher writes ``workerlog.<local rank>``: ``<run dir>/launch``, one folder per
    host when there are several nodes (their local ranks would collide)."""
    path = Path(run_dir) / "launch"
    return path / socket.gethostname() if launcher.nnodes > 1 else path


def _is_launcher_override(arg: str) -> bool:
    key = arg.lstrip("+~").split("=", 1)[0]
    return key == "launcher" or key.startswith("launcher.")


def _quote(value: str) -> str:
    """A Hydra override value: as is when plain, else single-quoted."""
    if re.fullmatch(r"[\w./:+-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
