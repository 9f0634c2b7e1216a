"""Test driver started by ``python -m paddle.distributed.launch --nproc_per_node N _worker.py MODE OUT OVERRIDES...``.

It drives the real stages through the Python API and writes what each rank holds, which the
stages themselves only write from rank 0:

- ``train``: ``train.run`` with every rank saving its own checkpoints to ``OUT/rank<r>/`` (the
  training modules' ``is_main_process`` is patched to True here, and only here), so the test can compare
  the parameters of the ranks;
- ``eval``: ``evaluate.run`` (run dir ``OUT/eval``); every rank also writes the features and
  labels its ``Evaluator`` gathered, the size of its own shard and the metrics to
  ``OUT/rank<r>.npz`` / ``OUT/rank<r>.json``.
"""

import json
import sys
from pathlib import Path

import numpy as np
import paddle.distributed as dist

import recog
from recog import evaluation
from recog.stages import evaluate, train
from recog.training import resume
from recog.training.callbacks import checkpoints


def main(mode: str, out: Path, overrides):
    cfg = recog.compose(overrides)
    if mode == "train":
        for module in (resume, checkpoints):
            module.is_main_process = lambda: True
        train.run(cfg, out / f"rank{dist.get_rank()}")
        return
    evaluators = []

    class Recording(evaluation.Evaluator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            evaluators.append(self)

    evaluate.Evaluator = Recording
    metrics = evaluate.run(cfg, out / "eval")
    (evaluator,) = evaluators
    query, query_labels, gallery, gallery_labels = evaluator.last
    rank = dist.get_rank()
    np.savez(
        out / f"rank{rank}.npz", query=query, query_labels=query_labels, gallery=gallery, gallery_labels=gallery_labels
    )
    shard = {"query": len(evaluator.query.dataset), "gallery": len(evaluator.gallery.dataset)}
    (out / f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "shard": shard}))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
