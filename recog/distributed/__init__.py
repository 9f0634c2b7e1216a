"""Data-parallel training and evaluation on ``paddle.distributed``.

``launch``: ``run.py launcher.nproc_per_node=N`` re-runs itself under ``paddle.distributed.launch``.
``parallel``: the process group, reductions for logging, sharded eval with gathered features.
``global_batch``: every rank's rows of a training step, for the loss terms that relate samples.
"""
