"""Training throughput: the training step, the data pipeline alone, and both together.

    python scripts/bench_train.py backbone=pplcnet backbone.scale=1.0 data.image_size=64 data.batch_size=64
    python scripts/bench_train.py experiment=digits_demo data.num_workers=0 --steps 5

Arguments are Hydra overrides, composed as ``python run.py stage=train`` composes them (the digits by
default). Prints images/s of

- the data pipeline alone: the training loader (decode + augment + batch, ``data.num_workers``
  worker processes) iterated without a model;
- the training step alone: forward, loss, backward, finite check and optimizer update on batches
  already in memory;
- the training loop: both, as ``stage=train`` runs them (the loader's workers prepare the next
  batches while the main process computes).

and, last, which of the first two bounds training. Nothing is written: no MLflow run, no checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. backbone.scale=1.0 data.batch_size=64")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps, alone and in the loop (default 8)")
    parser.add_argument("--data-batches", type=int, default=30, help="timed batches of the data pipeline (default 30)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps / batches first (default 2)")
    return parser.parse_args(argv)


def fitting_samples_per_class(batch_size: int, samples_per_class: int, classes: int) -> int:
    """``samples_per_class``, or the smallest divisor of ``batch_size`` above it whose P x K batch
    needs no more than ``classes`` classes (a small dataset, e.g. the digits' 5)."""
    for k in range(samples_per_class, batch_size + 1):
        if batch_size % k == 0 and batch_size // k <= classes:
            return k
    return samples_per_class  # the loader then says what is wrong


def main(argv=None) -> int:
    args = parse_args(argv)
    import recog  # first: sets OMP_NUM_THREADS to all cores (unless set) before Paddle is imported

    import paddle

    from recog.api import build_loss, build_model, load_splits
    from recog.data import build_train_loader, build_transform, set_loader_epoch
    from recog.data.loader import to_device
    from recog.errors import RecogError
    from recog.optim import build_optimizer
    from recog.training.step import StepRunner, TrainNet
    from recog.utils.runtime import seed_everything, select_device

    try:
        cfg = recog.compose(list(args.overrides) + ["mlflow.enabled=false"])
        device = select_device(cfg.trainer.device)
        seed_everything(cfg.seed)
        splits = load_splits(cfg)
        labels = splits.train_labels_contiguous()
        model = build_model(cfg, class_num=splits.num_train_classes)
        loss_fn = build_loss(cfg, class_num=splits.num_train_classes, embedding_size=model.embedding_size)
        data = cfg.data
        transform = build_transform(data.image_size, data.mean, data.std, train=True, hflip=splits.mirror_invariant)
        per_class = fitting_samples_per_class(data.batch_size, data.samples_per_class, splits.num_train_classes)
        if per_class != data.samples_per_class:
            print(f"note: batch {data.batch_size} of {data.samples_per_class} per class needs more than the "
                  f"{splits.num_train_classes} training classes: measuring with data.samples_per_class={per_class} "
                  "(the throughput does not depend on it)")
        loader = build_train_loader(splits.train, labels, transform, data.batch_size, per_class,
                                    data.num_workers, cfg.seed)
    except RecogError as error:
        print(f"bench_train: {error}", file=sys.stderr)
        return 2
    optimizer, schedule = build_optimizer(cfg, model.parameters() + loss_fn.parameters(), len(loader))
    runner = StepRunner(TrainNet(model, loss_fn), optimizer, schedule, skip_nonfinite=True)  # a NaN must not end it
    model.train()
    batch = int(data.batch_size)
    threads = os.environ.get("OMP_NUM_THREADS", "?")
    print(f"{' '.join(args.overrides) or '(defaults)'}\n{type(model.backbone).__name__} at {data.image_size} px, "
          f"batch {batch} ({per_class} per class), {len(splits.train)} training images "
          f"({len(loader)} batches per epoch); device {device}, {threads} CPU threads, "
          f"{data.num_workers} loader worker(s), Paddle {paddle.__version__}", flush=True)

    epoch = [0]

    def batches():
        """The loader's batches, epoch after epoch, checked on the host as the train loop does."""
        while True:
            set_loader_epoch(loader, epoch[0])
            for images, batch_labels in loader:
                loader.dataset.check_batch(batch_labels.numpy(), training=True)
                yield images, batch_labels
            epoch[0] += 1

    def timed(count, step):
        for _ in range(args.warmup):
            step()
        started = time.perf_counter()
        for _ in range(count):
            step()
        return count * batch / (time.perf_counter() - started)

    stream = batches()
    data_rate = timed(args.data_batches, lambda: next(stream))
    print(f"data pipeline measured ({args.data_batches} batches)", flush=True)

    in_memory = [next(stream) for _ in range(min(args.steps, 4))]
    position = [0]

    def step_alone():
        images, batch_labels = in_memory[position[0] % len(in_memory)]
        position[0] += 1
        runner(to_device(images), to_device(batch_labels))

    step_rate = timed(args.steps, step_alone)
    print(f"training step measured ({args.steps} steps)", flush=True)

    def step_in_loop():
        images, batch_labels = next(stream)
        runner(to_device(images), to_device(batch_labels))

    loop_rate = timed(args.steps, step_in_loop)
    if runner.skipped:
        print(f"note: {runner.skipped} step(s) had a non-finite loss or gradient (skipped)")

    print(f"\n{'':<62}{'images/s':>10}")
    print(f"{'data pipeline alone (decode + augment + batch)':<62}{data_rate:>10.1f}")
    print(f"{'training step alone (model + loss + optimizer)':<62}{step_rate:>10.1f}")
    print(f"{'training loop (both, as stage=train runs them)':<62}{loop_rate:>10.1f}")
    bound, other, ratio = (("the training step", "data pipeline", data_rate / step_rate) if step_rate <= data_rate
                           else ("the data pipeline", "training step", step_rate / data_rate))
    print(f"bound by {bound}: the {other} is {ratio:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
