"""Throughput of an exported model (Paddle Inference predictor) vs the dygraph model in eval mode.

    python scripts/bench_predict.py               # random-weight PP-LCNet x1.0 at 64 px, exported to a temp dir
    python scripts/bench_predict.py --model-path outputs/runs/<run>/best_model    # export a trained model first
    python scripts/bench_predict.py --model-dir outputs/runs/<run>/export         # an existing export (its model_path
                                                                                  # must still hold the weights)
    python scripts/bench_predict.py --override backbone.scale=0.5 --override data.image_size=128

Both run on the same random images, batch 1 and batch 32, with the same number of CPU threads
(OMP_NUM_THREADS, default: all cores; --threads to change). Prints images/s of each, the feature
difference between them and, last, the predictor / dygraph ratio per batch size.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_OVERRIDES = ["backbone=pplcnet", "backbone.scale=1.0", "data.image_size=64", "head.class_num=5"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-dir", help="an export directory (stage=export output)")
    source.add_argument("--model-path", help="a trained best_model/ directory, exported to a temporary directory")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="config override for the random-weight model (repeatable), on top of " + " ".join(DEFAULT_OVERRIDES),
    )
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated (default 1,32)")
    parser.add_argument("--images", type=int, default=64, help="distinct random images cycled through (default 64)")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per engine and batch size")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both engines (default: all cores)")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "gpu"])
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import paddle

    import recog  # first: sets OMP_NUM_THREADS to all cores (unless set) before Paddle is imported
    from recog.errors import RecogError
    from recog.inference import ExportedModel
    from recog.inference.export import dygraph_features, eval_settings, export_model
    from recog.utils import checkpoint
    from recog.utils.runtime import select_device

    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    device = select_device(args.device)
    with tempfile.TemporaryDirectory(prefix="recog-bench-") as tmp:
        try:
            if args.model_dir:
                export_dir = Path(args.model_dir)
                preprocess = ExportedModel(export_dir, device=device, threads=threads).preprocess
                model_path = preprocess.get("model_path")
                if not model_path or not (Path(model_path) / checkpoint.MODEL_FILE).is_file():
                    raise RecogError(
                        f"{export_dir} was exported from {model_path}, which no longer holds the weights: "
                        f"the dygraph side needs them (use --model-path instead)"
                    )
                cfg = checkpoint.load_config(model_path)
                model = recog.build_model(cfg)
                checkpoint.load_model_weights(model_path, model)
                what = f"export {export_dir} of {model_path}"
            else:
                if args.model_path:
                    cfg = checkpoint.load_config(args.model_path)
                    model = recog.build_model(cfg)
                    checkpoint.load_model_weights(args.model_path, model)
                    what = f"trained model {args.model_path}"
                else:
                    overrides = DEFAULT_OVERRIDES + args.override
                    cfg = recog.compose(overrides)
                    model = recog.build_model(cfg)
                    what = "random-weight model " + " ".join(overrides)
                size = int(cfg.data.image_size)
                check = np.random.default_rng(1).standard_normal((4, 3, size, size)).astype(np.float32)
                export_dir = Path(tmp) / "export"
                started = time.perf_counter()
                export_model(model, cfg, export_dir, check, model_path=args.model_path, device=device)
                what += f" (exported in {time.perf_counter() - started:.1f} s)"
        except RecogError as error:
            print(f"bench_predict: {error}", file=sys.stderr)
            return 2
        model.eval()
        exported = ExportedModel(export_dir, device=device, threads=threads)
        normalize = eval_settings(cfg)["normalize"]
        size = exported.image_size
        images = np.random.default_rng(0).standard_normal((args.images, 3, size, size)).astype(np.float32)

        def predictor(batch):
            return exported.predict(batch, binarize=False)

        def dygraph(batch):
            return dygraph_features(model, batch, normalize)

        diff = float(np.abs(predictor(images[:8]) - dygraph(images[:8])).max())
        print(
            f"{what}\n{type(model.backbone).__name__} at {size} px -> {exported.feature_dim}-d features; "
            f"{threads} CPU threads, device {device}, Paddle {paddle.__version__}; "
            f"max |predictor - dygraph| = {diff:.2e}"
        )
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
        results = {}
        print(f"{'engine':<22}{'batch':>6}{'images/s':>12}{'ms/batch':>11}")
        for batch_size in batch_sizes:
            for name, run in (("paddle inference", predictor), ("dygraph (eval)", dygraph)):
                rate = throughput(run, images, batch_size, args.seconds)
                results[name, batch_size] = rate
                print(f"{name:<22}{batch_size:>6}{rate:>12.1f}{1000 * batch_size / rate:>11.2f}")
        ratios = ", ".join(
            f"batch {b}: {results['paddle inference', b] / results['dygraph (eval)', b]:.1f}x" for b in batch_sizes
        )
        print(f"predictor / dygraph images/s: {ratios}")
    return 0


def throughput(run, images, batch_size: int, seconds: float) -> float:
    """Images per second of ``run`` over batches cycled from ``images`` (after 3 warm-up batches)."""
    import numpy as np

    count = len(images)
    starts = list(range(0, count, batch_size))

    def batch(i):
        start = starts[i % len(starts)]
        chunk = images[start : start + batch_size]
        if len(chunk) < batch_size:  # wrap around: every batch has batch_size images
            chunk = np.concatenate([chunk, images[: batch_size - len(chunk)]])
        return chunk

    for i in range(3):
        run(batch(i))
    done, i = 0, 0
    begin = time.perf_counter()
    while True:
        chunk = batch(i)
        run(chunk)
        done += len(chunk)
        i += 1
        elapsed = time.perf_counter() - begin
        if elapsed >= seconds and i >= 3:
            return done / elapsed


if __name__ == "__main__":
    sys.exit(main())
