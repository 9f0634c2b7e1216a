"""recog's one entrypoint: ``python run.py stage=train|eval|export|predict|index [overrides]`` (``-m`` for sweeps).

``launcher.nproc_per_node=N`` (and ``launcher.nnodes``/``launcher.master``) re-runs this command
under ``paddle.distributed.launch`` before Hydra starts: see recog/distributed/launch.py. What runs
after start-up is ``recog.app.main`` (callable in a running process too), through
``recog.app.run_script`` (the process's garbage-collector settings).
"""

import sys

import recog  # noqa: F401  (sets threads and quiets Paddle before anything imports it)

# isort: split
from recog.app import run_script

if __name__ == "__main__":
    sys.exit(run_script(sys.argv[1:], script=__file__))
