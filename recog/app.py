"""``python run.py ARGS`` after start-up: ``main(argv) -> exit status``, callable in a running process.

``run.py`` imports recog (threads, Paddle's settings) and calls ``main``. In order:

1. ``recog.cli.precheck``: overrides, stage preconditions, a writable run folder, before Hydra
   makes one (refused: one line ``recog: ...``, status 2); skipped in a rank whose launcher
   (step 2) checked the same command line;
2. ``recog.distributed.launch.prepare_argv``: in a command asking for several processes, this
   process becomes ``paddle.distributed.launch`` (it does not return);
3. the Hydra application (``conf/config.yaml``): the stage (``recog.stages.run_stage``), or a
   submitit job's node launcher. Status 0; 2 for ``RecogError`` (one message, and the run folder
   removed when the stage refused before any work); 128 + the signal for ``TrainingInterrupted``
   (130 Ctrl-C, 143 SIGTERM); 1 for anything else (Hydra prints the traceback).

In a sweep (``-m``) a job's ``RecogError`` fails that job (``SweepJobFailed``) and the sweep goes on.
"""

from __future__ import annotations

import atexit
import functools
import gc
import logging
import multiprocessing
import os
import sys
from collections.abc import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from recog.cli import precheck, register_help_resolver, remove_untouched_run_dir
from recog.config import register_schemas
from recog.config.compose import CONF_DIR
from recog.errors import RecogError, TrainingInterrupted

log = logging.getLogger("recog")
SCRIPT = str(CONF_DIR.parent / "run.py")  # what a relaunch (the launcher, a submitit node) runs


def main(argv: Sequence[str] | None = None, script: str = SCRIPT) -> int:
    """The exit status of ``python run.py ARGV`` (``sys.argv[1:]`` when None); ``script``: the file
    the launcher starts on each rank. Prints what the command prints."""
    from recog.distributed.launch import prechecked_by_launcher, prepare_argv

    argv = sys.argv[1:] if argv is None else list(argv)
    register_schemas()
    register_help_resolver()  # run.py --help: recog's own text (hydra.help.template in conf/config.yaml)
    try:
        # a rank of recog's own launcher, which checked this very command line, does not check it again
        composed = None if prechecked_by_launcher(argv) else precheck(argv)
        argv = prepare_argv(argv, script=script, composed=composed)  # may become the launcher (does not return)
    except RecogError as error:
        print(f"recog: {error}", file=sys.stderr)
        return 2
    app = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_task(script))
    saved, sys.argv = sys.argv, [script, *argv]  # Hydra reads its command line from sys.argv
    try:
        app()
    except SystemExit as stop:
        return _status(stop.code)
    finally:
        sys.argv = saved
        from recog.tracking.sweep_parent import finish_stopped_sweeps

        finish_stopped_sweeps()  # what the exit of run.py's process would do
    return 0


def run_script(argv: Sequence[str], script: str) -> int:
    """``main`` as the whole life of ``python run.py``'s process (the launcher and each rank too),
    its heap frozen until it exits (``freeze_heap_until_exit``)."""
    freeze_heap_until_exit()
    return main(argv, script=script)


def freeze_heap_until_exit() -> None:
    """Move everything existing now and, at exit, everything at all out of the garbage collector's
    view (``gc.freeze``): the process keeps it until it exits, so the collections during its work
    need not walk it again (Paddle, Hydra, recog: most of the heap), and the interpreter's last
    collections at exit (over a heap that holds Paddle and MLflow: up to a second of CPU) are
    skipped. Objects are still freed by reference counting; only reference cycles left over at
    exit are not finalized, as a killed process would leave them. The atexit freeze also covers a
    process that became the launcher (it leaves through SystemExit)."""
    gc.freeze()
    atexit.register(gc.freeze)  # atexit handlers run before the interpreter's last collections


def _task(script: str):
    def run(cfg: DictConfig):
        from recog.distributed.submitit_job import needs_node_launch, run_node_launcher
        from recog.stages import run_stage
        from recog.tracking.sweep import SweepJobFailed, in_multirun, objective_value

        hydra_cfg = HydraConfig.get()
        freeze_heap_in_job_processes()
        try:
            if needs_node_launch(cfg):  # a submitit task (one per node) starts this node's ranks
                result = run_node_launcher(
                    cfg,
                    hydra_cfg.runtime.output_dir,
                    hydra_cfg.overrides.task,
                    script,
                    job_num=hydra_cfg.job.get("num"),
                )
            else:
                result = run_stage(cfg, hydra_cfg.runtime.output_dir)
            # A sweep job returns sweep.objective (a float, what the Optuna sweeper maximises).
            return objective_value(cfg, result) if in_multirun() else result
        except TrainingInterrupted as stop:  # SIGTERM / SIGINT: checkpoint saved, exit 128 + signal
            log.warning("%s", stop)
            sys.exit(stop.exit_code)  # in a sweep too: stops the whole sweep
        except RecogError as error:
            if not in_multirun():
                remove_untouched_run_dir(hydra_cfg.runtime.output_dir)  # the stage refused before any work
            log.error("%s", error)
            if in_multirun():  # Hydra records the job as failed and the sweep goes on
                raise SweepJobFailed(str(error)) from error
            sys.exit(2)

    return run


@functools.cache
def freeze_heap_in_job_processes() -> None:
    """In a process a launcher started to run jobs (joblib's loky workers, a submitit job), freeze
    the heap before its first job and at exit (``freeze_heap_until_exit``), as ``run_script`` does
    for run.py's process. Such a process (a child of multiprocessing, or a submitit job) lives only
    for its jobs; a forked multiprocessing child skips the whole interpreter shutdown anyway
    (``os._exit``). The sweep's own process and in-process callers of ``main`` keep their settings."""
    if multiprocessing.parent_process() is not None or "SUBMITIT_EXECUTOR" in os.environ:
        freeze_heap_until_exit()


def _status(code) -> int:
    """``sys.exit``'s argument as the interpreter turns it into an exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
