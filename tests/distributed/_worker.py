"""Test driver started by ``python -m paddle.distributed.launch --nproc_per_node N _worker.py MODE OUT OVERRIDES...``
(several jobs, run in order in the same launch: ``MODE OUT OVERRIDES... :: MODE OUT OVERRIDES...``).

It drives the real stages through the Python API and writes what each rank holds, which the
stages themselves only write from rank 0:

- ``train`` (``train OUT LOSS1,LOSS2,... OVERRIDES``): one ``train.run`` per loss config
  (``loss=<name>``) in the same launch, every rank saving its own checkpoints to
  ``OUT/<name>/rank<r>/`` (the training modules' ``is_main_process`` is patched to True here, and
  only here), so the test can compare the parameters of the ranks, and recording the values the
  tracker is given in ``OUT/<name>/rank<r>/logged.json``; first, ``global_batch.gather`` on
  rows of unequal count per rank (rank r has 3 + 2r), written to ``OUT/gather_rank<r>.npz``;
- ``eval``: ``evaluate.run`` (run dir ``OUT/eval``); every rank also writes the features and
  labels its ``Evaluator`` gathered, the size of its own shard and the metrics to
  ``OUT/rank<r>.npz`` / ``OUT/rank<r>.json``.
"""

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import paddle
import paddle.distributed as dist

import recog
from recog import evaluation
from recog.distributed import global_batch, parallel
from recog.stages import evaluate, train
from recog.training import resume
from recog.training.callbacks import checkpoints


def main(mode: str, out: Path, overrides):
    if mode == "train":
        losses, overrides = overrides[0].split(","), overrides[1:]
        _unequal_gather(out)
        saved = {module: module.is_main_process for module in (resume, checkpoints)}
        for module in saved:
            module.is_main_process = lambda: True
        for loss in losses:
            run_dir = out / loss / f"rank{dist.get_rank()}"
            with recording_logged_values(run_dir / "logged.json"):
                train.run(recog.compose([*overrides, f"loss={loss}"]), run_dir)
        for module, is_main_process in saved.items():
            module.is_main_process = is_main_process
        return
    cfg = recog.compose(overrides)
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


def _unequal_gather(out: Path) -> None:
    parallel.init_distributed()
    out.mkdir(parents=True, exist_ok=True)
    rank = dist.get_rank()
    rows = paddle.to_tensor(np.arange(4 * (3 + 2 * rank), dtype=np.float32).reshape(-1, 4) + 100 * rank)
    rows.stop_gradient = False
    labels = paddle.full([rows.shape[0], 1], 10 + rank, dtype="int64")
    gathered, gathered_labels = global_batch.gather(rows, labels)
    weights = paddle.arange(gathered.shape[0] * 4, dtype="float32").reshape([-1, 4])
    (gathered * weights).sum().backward()
    arrays = {"rows": gathered.numpy(), "labels": gathered_labels.numpy(), "grad": rows.grad.numpy()}
    np.savez(out / f"gather_rank{rank}.npz", **arrays)


@contextlib.contextmanager
def recording_logged_values(path: Path):
    """Record what ``parallel.mean_across_ranks`` returns (the loss values the tracker logs) in ``path``."""
    logged, mean_across_ranks = [], parallel.mean_across_ranks

    def recording(values):
        result = mean_across_ranks(values)
        logged.append(result)
        return result

    parallel.mean_across_ranks = recording
    try:
        yield
    finally:
        parallel.mean_across_ranks = mean_across_ranks
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(logged))


if __name__ == "__main__":
    jobs = [[]]
    for arg in sys.argv[1:]:
        if arg == "::":
            jobs.append([])
        else:
            jobs[-1].append(arg)
    for mode, out, *overrides in jobs:
        main(mode, Path(out), overrides)
