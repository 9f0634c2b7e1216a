"""Depthwise convolution on the CPU: Paddle's kernel against two re-formulations, forward + backward.

    python scripts/bench_depthwise.py [--batch 64] [--repeat 5]

PP-LCNet's training step spends most of its time in depthwise convolutions. This checks whether
writing them differently in dygraph would train faster on this CPU, for the layer shapes of
PP-LCNet x1.0 at 64 px (channels, size, kernel, stride):

- ``conv2d``: Paddle's own kernel (``groups=C``), what PaddleClas runs;
- ``matmul``: ``recog.training.depthwise.depthwise_matmul``, what recog's training step runs on maps
  of up to ``MAX_CELLS`` cells (``trainer.depthwise_matmul``);
- ``shifted``: the sum over the k x k taps of a strided slice of the padded input times that tap's
  weights (elementwise kernels only);
- ``unfold``: im2col (``F.unfold``) then a weighted sum over the taps.

Each is timed on ``y = f(x, w); (y * y).sum().backward()`` (best of ``--repeat``) and checked
against ``conv2d``'s output. Printed: milliseconds per step and the ratio to ``conv2d``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = [(16, 32, 3, 1), (32, 32, 3, 2), (64, 16, 3, 1), (128, 8, 3, 1), (256, 4, 5, 1), (512, 2, 5, 1)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    import paddle
    import paddle.nn.functional as F

    import recog  # noqa: F401  (threads: every core unless OMP_NUM_THREADS is set)
    from recog.training.depthwise import depthwise_matmul

    def conv2d(x, w, stride, pad):
        return F.conv2d(x, w, stride=stride, padding=pad, groups=x.shape[1])

    def shifted(x, w, stride, pad):
        k, (_, c, h, _) = w.shape[-1], x.shape
        padded = F.pad(x, [pad, pad, pad, pad])
        out_size = (h + 2 * pad - k) // stride + 1
        span = stride * (out_size - 1) + 1
        out = None
        for i in range(k):
            for j in range(k):
                term = padded[:, :, i : i + span : stride, j : j + span : stride] * w[:, :, i, j].reshape([1, c, 1, 1])
                out = term if out is None else out + term
        return out

    def unfolded(x, w, stride, pad):
        k, (n, c, h, _) = w.shape[-1], x.shape
        out_size = (h + 2 * pad - k) // stride + 1
        cols = F.unfold(x, [k, k], strides=stride, paddings=pad).reshape([n, c, k * k, out_size * out_size])
        return (cols * w.reshape([1, c, k * k, 1])).sum(axis=2).reshape([n, c, out_size, out_size])

    def step_ms(fn, x, w, stride, pad) -> float:
        best = float("inf")
        for i in range(args.repeat + 1):
            started = time.perf_counter()
            y = fn(x, w, stride, pad)
            (y * y).sum().backward()
            x.clear_gradient()
            w.clear_gradient()
            if i:  # the first call warms up
                best = min(best, time.perf_counter() - started)
        return 1e3 * best

    paddle.seed(0)
    print(f"batch {args.batch}, {os.environ.get('OMP_NUM_THREADS', '?')} threads, Paddle {paddle.__version__}")
    contenders = {
        "conv2d": conv2d,
        "matmul": lambda x, w, stride, pad: depthwise_matmul(x, w, None, stride, pad),
        "shifted": shifted,
        "unfold": unfolded,
    }
    print(
        f"{'C x H x W, k, stride':<24}" + "".join(f"{name + ' ms':>18}" for name in contenders) + f"{'max |diff|':>12}"
    )
    for channels, size, k, stride in SHAPES:
        x = paddle.randn([args.batch, channels, size, size])
        w = paddle.randn([channels, 1, k, k])
        x.stop_gradient = w.stop_gradient = False
        pad = k // 2
        reference = conv2d(x, w, stride, pad)
        diff = max(float((fn(x, w, stride, pad) - reference).abs().max()) for fn in contenders.values())
        times = [step_ms(fn, x, w, stride, pad) for fn in contenders.values()]
        cells = "".join(f"{t:>10.1f} ({t / times[0]:.2f}x)" for t in times)
        print(f"{f'{channels} x {size} x {size}, {k}, {stride}':<24}{cells}{diff:>12.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
