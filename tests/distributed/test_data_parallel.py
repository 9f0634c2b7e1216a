"""Data-parallel training and evaluation with 2 CPU processes (gloo), started by paddle.distributed.launch."""

import json
import time

import numpy as np
import pytest
from dist_helpers import TINY, WORKER, launch, max_difference, weights, worker_logs

import recog
from recog.api import load_splits
from recog.evaluation import Evaluator, extract_features
from recog.stages import evaluate, train
from recog.utils import checkpoint
from recog.utils.runtime import seed_everything

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processes")]  # each test starts 2 processes or times a SIGTERM

# Why this config: DataParallel averages the ranks' gradients, and CE is a mean over the batch, so
# with equal per-rank batches one DDP step equals one step on the concatenated batch - as long as
# nothing else depends on the batch split. BatchNorm would normalise each rank's half with its own
# batch statistics: trainer.freeze_bn=true keeps BN in eval mode (running statistics). Dropout
# draws per-rank masks: off. Triplet losses mine within a batch: CE only. Random flips stay on:
# they are seeded by the sample's place in the global batch, not by the process. Momentum: an update
# linear in the gradient, so rounding differences stay rounding-sized (Adam divides by |g| ~ eps).
EQUIVALENT = TINY + [
    "loss=ce",
    "head=fc",
    "optimizer=momentum",
    "backbone.dropout_prob=0.0",
    "trainer.freeze_bn=true",
    "optimizer.lr=0.1",
    "scheduler.warmup_epochs=0",
    "trainer.epochs=1",
    "trainer.steps_per_epoch=3",
    "trainer.log_every=1",
    "mlflow.enabled=false",
]


def test_two_processes_equal_one_process_on_the_concatenated_batches(tmp_path, image_lists):
    out = tmp_path / "ddp"
    overrides = EQUIVALENT + image_lists + [f"paths.output_root={tmp_path}"]
    started = time.perf_counter()
    result = launch(2, [WORKER, "train", out, *overrides], tmp_path / "launch")
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-3000:] + worker_logs(tmp_path / "launch")
    rank0, rank1 = weights(out / "rank0" / "checkpoints" / "last"), weights(out / "rank1" / "checkpoints" / "last")
    assert max_difference(rank0, rank1) == 0.0  # the replicas never drift apart

    # One process, batch 16: PKBatchSampler draws the same 4 classes x 4 images per step that the
    # two ranks split between them (rank 0 the first 2 classes, rank 1 the next 2).
    single_cfg = recog.compose(overrides + ["data.batch_size=16"])
    train.run(single_cfg, tmp_path / "single")
    single = weights(tmp_path / "single" / "checkpoints" / "last")
    difference = max_difference(rank0, single)
    assert difference < 1e-5

    seed_everything(0)  # the initial weights: training must have moved them far beyond the tolerance
    initial = {k: v.numpy() for k, v in recog.build_model(single_cfg, class_num=5).state_dict().items()}
    assert max_difference(initial, single) > 1e-2
    state = checkpoint.load_state(out / "rank0" / "checkpoints" / "last")
    assert state["step"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["rng"][0]["paddle"] != state["rng"][1]["paddle"]  # ranks draw their own dropout masks
    print(
        f"\nmax |DDP - single| = {difference:.3g} (max |trained - initial| {max_difference(initial, single):.3g}); "
        f"launch of 2 processes {elapsed:.1f} s"
    )


def test_distributed_eval_equals_single_process(tmp_path, image_lists, single_thread):
    # eval_batch_size 8: query 37 = 5 batches -> the ranks get 2 and 3 (16 and 21 images), gallery 53 = 7
    # batches -> 3 and 4 (24 and 29): unequal shards, so the gather pads and trims.
    overrides = (
        TINY
        + image_lists
        + [
            "head=fc",
            "head.class_num=5",
            "data.eval_batch_size=8",
            "mlflow.enabled=false",
            f"paths.output_root={tmp_path}",
        ]
    )
    cfg = recog.compose(overrides)
    seed_everything(3)
    model = recog.build_model(cfg)
    checkpoint.save_checkpoint(tmp_path / "model", model, cfg, {})
    overrides.append(f"model_path={tmp_path / 'model'}")

    started = time.perf_counter()
    result = launch(2, [WORKER, "eval", tmp_path / "out", *overrides], tmp_path / "launch")
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-3000:] + worker_logs(tmp_path / "launch")

    single = evaluate.run(recog.compose(overrides), tmp_path / "single")  # one process, one thread
    evaluator = Evaluator(load_splits(cfg), cfg.data, cfg.eval)
    query, query_labels = extract_features(model, evaluator.query, normalize=True)
    gallery, gallery_labels = extract_features(model, evaluator.gallery, normalize=True)
    assert query.shape == (37, 32) and gallery.shape == (53, 32)

    assert json.loads((tmp_path / "out" / "eval" / "metrics.json").read_text()) == single  # written by rank 0
    for rank, shard in ((0, {"query": 16, "gallery": 24}), (1, {"query": 21, "gallery": 29})):
        report = json.loads((tmp_path / "out" / f"rank{rank}.json").read_text())
        assert report["shard"] == shard
        assert report["metrics"] == single  # exactly, on every rank
        gathered = np.load(tmp_path / "out" / f"rank{rank}.npz")
        # every sample once, in the original order, bit for bit
        np.testing.assert_array_equal(gathered["query_labels"], query_labels)
        np.testing.assert_array_equal(gathered["gallery_labels"], gallery_labels)
        np.testing.assert_array_equal(gathered["query"], query)
        np.testing.assert_array_equal(gathered["gallery"], gallery)
    print(
        f"\ndistributed eval == single process: recall_at_1 {single['recall_at_1']:.4f}, mAP {single['mAP']:.4f}; "
        f"launch of 2 processes {elapsed:.1f} s"
    )
