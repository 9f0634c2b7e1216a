"""Data-parallel training and evaluation with 2 CPU processes (gloo), started by paddle.distributed.launch."""

import json
import time
from types import SimpleNamespace

import numpy as np
import paddle
import pytest
from dist_helpers import TINY, WORKER, launch, max_difference, weights, worker_logs
from safetensors.numpy import save_file

import recog
from recog.api import load_splits
from recog.data import build_transform
from recog.data.loader import build_eval_loader
from recog.distributed import parallel
from recog.evaluation import Evaluator, extract_features
from recog.stages import evaluate, train
from recog.training.compile import BATCH_NORMS
from recog.utils import checkpoint
from recog.utils.runtime import seed_everything

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processes")]  # each test starts 2 processes or times a SIGTERM

# Why this config: DataParallel averages the ranks' gradients, and CE is a mean over the batch, so
# with equal per-rank batches one DDP step equals one step on the concatenated batch - as long as
# nothing else depends on the batch split. The terms that relate samples (triplets, SupCon, XBM)
# see the global batch gathered from all ranks. BatchNorm would normalise each rank's half with its
# own batch statistics: trainer.freeze_bn=true keeps BN in eval mode (running statistics). Dropout
# draws per-rank masks: off. Random flips stay on: they are seeded by the sample's place in the
# global batch, not by the process. Momentum: an update linear in the gradient, so rounding
# differences stay rounding-sized (Adam divides by |g| ~ eps).
EQUIVALENT = TINY + [
    "head=fc",
    "optimizer=momentum",
    "backbone.dropout_prob=0.0",
    "trainer.freeze_bn=true",
    "optimizer.lr=3e-4",
    "scheduler.warmup_epochs=0",
    "trainer.epochs=1",
    "trainer.steps_per_epoch=3",
    "trainer.log_every=1",
    "mlflow.enabled=false",
]
LOSSES = ["ce", "triplet_v2", "triplet_angular", "supcon", "xbm"]  # CE per rank; the others on the global batch


def _backbone_with_data_statistics(cfg, path):
    """The initial backbone (seed ``cfg.seed``, as training builds it) with its BatchNorm running
    statistics measured on 64 training images, saved as ``backbone.pretrained`` weights.

    Frozen BatchNorm keeps the running statistics, and those of a fresh PP-LCNet (mean 0, variance
    1) let each hardswish layer shrink the activations about 4-fold: its features are ~1e-9 and the
    gradients of losses that normalise them ~1e9. Measured statistics keep the features O(1)."""
    seed_everything(cfg.seed)
    backbone = recog.build_model(cfg, class_num=5).backbone
    for layer in backbone.sublayers():
        if isinstance(layer, BATCH_NORMS):
            layer._momentum = 0.0  # running statistics := this batch's
    transform = build_transform(cfg.data.image_size, cfg.data.mean, cfg.data.std, train=False, hflip=False)
    images, _ = next(iter(build_eval_loader(load_splits(cfg).train[:64], transform, batch_size=64, num_workers=0)))
    backbone.train()
    with paddle.no_grad():
        backbone(images)
    save_file({name: value.numpy() for name, value in backbone.state_dict().items()}, str(path))
    return path


def _logged_values(monkeypatch) -> list[dict]:
    """What ``parallel.mean_across_ranks`` returns from now on: the values the tracker logs."""
    logged, mean_across_ranks = [], parallel.mean_across_ranks

    def recording(values):
        logged.append(mean_across_ranks(values))
        return logged[-1]

    monkeypatch.setattr(parallel, "mean_across_ranks", recording)
    return logged


@pytest.fixture(scope="module")
def launched(tmp_path_factory, image_lists):
    """One launch of 2 processes for both tests (each launch starts 3 interpreters): first the
    training job, then the evaluation job, in the same ranks."""
    tmp_path = tmp_path_factory.mktemp("data_parallel")
    train_overrides = EQUIVALENT + image_lists + [f"paths.output_root={tmp_path / 'train'}"]
    backbone = _backbone_with_data_statistics(recog.compose(train_overrides), tmp_path / "backbone.safetensors")
    train_overrides.append(f"backbone.pretrained={backbone}")

    # eval_batch_size 8: query 37 = 5 batches -> the ranks get 2 and 3 (16 and 21 images), gallery 53 = 7
    # batches -> 3 and 4 (24 and 29): unequal shards, so the gather pads and trims.
    eval_overrides = (
        TINY
        + image_lists
        + [
            "head=fc",
            "head.class_num=5",
            "data.eval_batch_size=8",
            "mlflow.enabled=false",
            f"paths.output_root={tmp_path / 'eval'}",
        ]
    )
    cfg = recog.compose(eval_overrides)
    seed_everything(3)
    model = recog.build_model(cfg)
    checkpoint.save_checkpoint(tmp_path / "model", model, cfg, {})
    eval_overrides.append(f"model_path={tmp_path / 'model'}")

    train_out, eval_out = tmp_path / "ddp", tmp_path / "eval_out"
    started = time.perf_counter()
    result = launch(
        2,
        [WORKER, "train", train_out, ",".join(LOSSES), *train_overrides, "::", "eval", eval_out, *eval_overrides],
        tmp_path / "launch",
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-3000:] + worker_logs(tmp_path / "launch")
    return SimpleNamespace(
        train_out=train_out,
        train_overrides=train_overrides,
        eval_out=eval_out,
        eval_overrides=eval_overrides,
        eval_cfg=cfg,
        model=model,
        elapsed=elapsed,
    )


def test_two_processes_equal_one_process_on_the_concatenated_batches(launched, tmp_path, monkeypatch):
    out, overrides = launched.train_out, launched.train_overrides

    # global_batch.gather with 3 rows on rank 0 and 5 on rank 1: padded, gathered, trimmed; gradient only
    # into the own rows, times 2
    for rank in (0, 1):
        gathered = np.load(out / f"gather_rank{rank}.npz")
        np.testing.assert_array_equal(
            gathered["rows"], np.concatenate([np.arange(12.0).reshape(3, 4), np.arange(20.0).reshape(5, 4) + 100])
        )
        np.testing.assert_array_equal(gathered["labels"], [[10]] * 3 + [[11]] * 5)
        own = slice(0, 3) if rank == 0 else slice(3, 8)
        np.testing.assert_array_equal(gathered["grad"], 2 * np.arange(32.0).reshape(8, 4)[own])

    # One process, batch 16: PKBatchSampler draws the same 4 classes x 4 images per step that the
    # two ranks split between them (rank 0 the first 2 classes, rank 1 the next 2).
    seed_everything(0)  # the initial weights: training must have moved them far beyond the tolerance
    initial = {k: v.numpy() for k, v in recog.build_model(recog.compose(overrides), class_num=5).state_dict().items()}
    report = []
    for loss in LOSSES:
        rank0 = weights(out / loss / "rank0" / "checkpoints" / "last")
        assert max_difference(rank0, weights(out / loss / "rank1" / "checkpoints" / "last")) == 0.0  # no drift
        logged = _logged_values(monkeypatch)
        train.run(recog.compose([*overrides, f"loss={loss}", "data.batch_size=16"]), tmp_path / "single" / loss)
        single = weights(tmp_path / "single" / loss / "checkpoints" / "last")
        difference, moved = max_difference(rank0, single), max_difference(initial, single)
        assert difference < 1e-5, loss
        assert moved > 5e-3, loss
        # the loss values logged by the 2-process run are the single process's, step by step
        ddp_logged = json.loads((out / loss / "rank0" / "logged.json").read_text())
        assert len(ddp_logged) == len(logged) == 3
        for ours, theirs in zip(ddp_logged, logged):
            assert {k: ours[k] for k in theirs if k != "images_per_sec"} == pytest.approx(
                {k: v for k, v in theirs.items() if k != "images_per_sec"}, rel=1e-5
            ), loss
        assert logged[0][loss] > 1e-2, loss  # a term that trains (a vanishing one would equal trivially)
        report.append(f"{loss} {difference:.2g} (moved {moved:.2g})")
    state = checkpoint.load_state(out / "ce" / "rank0" / "checkpoints" / "last")
    assert state["step"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["rng"][0]["paddle"] != state["rng"][1]["paddle"]  # ranks draw their own dropout masks
    print(f"\nmax |DDP - single|: {', '.join(report)}; launch (training + eval) {launched.elapsed:.1f} s")


def test_distributed_eval_equals_single_process(launched, tmp_path, single_thread):
    out, overrides, cfg, model = launched.eval_out, launched.eval_overrides, launched.eval_cfg, launched.model

    single = evaluate.run(recog.compose(overrides), tmp_path / "single")  # one process, one thread
    evaluator = Evaluator(load_splits(cfg), cfg.data, cfg.eval)
    query, query_labels = extract_features(model, evaluator.query, normalize=True)
    gallery, gallery_labels = extract_features(model, evaluator.gallery, normalize=True)
    assert query.shape == (37, 32) and gallery.shape == (53, 32)

    assert json.loads((out / "eval" / "metrics.json").read_text()) == single  # written by rank 0
    for rank, shard in ((0, {"query": 16, "gallery": 24}), (1, {"query": 21, "gallery": 29})):
        report = json.loads((out / f"rank{rank}.json").read_text())
        assert report["shard"] == shard
        assert report["metrics"] == single  # exactly, on every rank
        gathered = np.load(out / f"rank{rank}.npz")
        # every sample once, in the original order, bit for bit
        np.testing.assert_array_equal(gathered["query_labels"], query_labels)
        np.testing.assert_array_equal(gathered["gallery_labels"], gallery_labels)
        np.testing.assert_array_equal(gathered["query"], query)
        np.testing.assert_array_equal(gathered["gallery"], gallery)
    print(
        f"\ndistributed eval == single process: recall_at_1 {single['recall_at_1']:.4f}, mAP {single['mAP']:.4f}; "
        f"launch of 2 processes (training + eval) {launched.elapsed:.1f} s"
    )
