"""recog's one entrypoint: ``python run.py stage=train|eval [overrides]`` (``-m`` for sweeps)."""

import logging
import sys

import recog  # noqa: F401  (sets threads and quiets Paddle before anything imports it)
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from recog.config import check_overrides, register_schemas
from recog.errors import RecogError

log = logging.getLogger("recog")
register_schemas()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    from recog.stages import run_stage

    try:
        return run_stage(cfg, HydraConfig.get().runtime.output_dir)
    except RecogError as error:
        log.error("%s", error)
        sys.exit(2)


if __name__ == "__main__":
    try:
        check_overrides(sys.argv[1:])
    except RecogError as error:
        print(f"recog: {error}", file=sys.stderr)
        sys.exit(2)
    main()
