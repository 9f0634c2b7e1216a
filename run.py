"""recog's one entrypoint: ``python run.py stage=train|eval|export|predict|index [overrides]`` (``-m`` for sweeps).

``launcher.nproc_per_node=N`` (and ``launcher.nnodes``/``launcher.master``) re-runs this command
under ``paddle.distributed.launch`` before Hydra starts: see recog/distributed/launch.py.
"""

import logging
import sys

import recog  # noqa: F401  (sets threads and quiets Paddle before anything imports it)

# isort: split
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from recog.cli import precheck, register_help_resolver, remove_untouched_run_dir
from recog.config import register_schemas
from recog.distributed.launch import prepare_argv
from recog.errors import RecogError, TrainingInterrupted

log = logging.getLogger("recog")
register_schemas()
register_help_resolver()  # run.py --help: recog's own text (hydra.help.template in conf/config.yaml)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    from recog.distributed.submitit_job import needs_node_launch, run_node_launcher
    from recog.stages import run_stage
    from recog.tracking.sweep import SweepJobFailed, in_multirun, objective_value

    hydra_cfg = HydraConfig.get()
    try:
        if needs_node_launch(cfg):  # a submitit task (one per node) starts this node's ranks
            result = run_node_launcher(
                cfg, hydra_cfg.runtime.output_dir, hydra_cfg.overrides.task, __file__, job_num=hydra_cfg.job.get("num")
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


if __name__ == "__main__":
    try:
        precheck(sys.argv[1:])  # overrides, stage preconditions, writable run folder: before Hydra makes one
        sys.argv[1:] = prepare_argv(sys.argv[1:], script=__file__)  # may become the launcher (exec)
    except RecogError as error:
        print(f"recog: {error}", file=sys.stderr)
        sys.exit(2)
    main()
