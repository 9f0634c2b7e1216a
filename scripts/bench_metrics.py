"""Speed and memory of the blocked retrieval metrics at SOP scale, against a full argsort and the matrix products.

    python scripts/bench_metrics.py                          # SOP test size: 60502 x 60502, 512-d, query == gallery
    python scripts/bench_metrics.py --n 12000 --argsort-queries 1024          # a quicker look
    python scripts/bench_metrics.py --noise 2.0               # easier features: positives rank higher

It also times what every eval computes on top: the same ranking with each query's top 5 and the
pair scores of the calibrated threshold (``recog.metrics.rank(k=5, pairs=1e-2)``), and checks that
its metrics equal the blocked metric's.

Synthetic clustered features: n // 6 classes of 6 or 7 items (5 positives per query on average,
as in SOP), each item its class centre plus Gaussian noise (--noise, times a log-normal
per-item factor so that some items are hard), L2-normalised float32. Three measurements on the
same features, query set == gallery (each query's own entry removed):

* blocked: ``recog.metrics.retrieval_metrics`` (wall time, and the increase of the process's
  peak RSS over its RSS just before the call);
* floor: the bare similarity products of the same blocks, ``features[a:b] @ features.T``;
* full argsort: the same metrics from a stable argsort of every query's similarity row (stable:
  ties by lower index, the metric's rule), and for reference from numpy's default (quicksort)
  argsort, which is faster but orders ties arbitrarily; same products, same threads as the
  blocked metric. Both are timed on the first
  --argsort-queries queries (against the whole gallery) and extrapolated linearly to all n; the
  stable ranks are checked to equal the blocked ones on those queries.

The figures are printed last. The machine should be otherwise idle: run it a few times.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECALL_AT = (1, 10, 100, 1000)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60502, help="queries = gallery items (default 60502, SOP test)")
    parser.add_argument("--dim", type=int, default=512, help="feature size (default 512)")
    parser.add_argument("--block-size", type=int, default=1024, help="queries per block (default 1024)")
    parser.add_argument(
        "--noise",
        type=float,
        default=2.5,
        help="noise norm relative to the unit class centres (default 2.5: recall@1 0.55 at n=60502)",
    )
    parser.add_argument(
        "--argsort-queries", type=int, default=2048, help="queries the full-argsort baseline is timed on (default 2048)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="timed runs of the blocked metric and of the floor, alternating; the best of each is kept (default 2)",
    )
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    import numpy as np

    import recog  # noqa: F401  first: sets OMP_NUM_THREADS to all cores (unless set)
    from recog.metrics import rank, retrieval_metrics
    from recog.metrics._ranking import positive_ranks
    from recog.metrics.ranks import query_stats as _query_stats

    if args.n < 14 or not 0 < args.argsort_queries <= args.n or args.repeat < 1:
        raise SystemExit("need --n >= 14, 0 < --argsort-queries <= --n and --repeat >= 1")
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count())
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}; numpy {np.__version__}, BLAS threads {threads}", flush=True)

    t0 = time.perf_counter()
    features, labels = clustered_features(args.n, args.dim, args.noise, args.seed)
    print(
        f"features: {args.n} x {args.dim} float32 ({features.nbytes / 2**20:.0f} MiB), "
        f"{labels.max() + 1} classes, made in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )

    # The blocked metric and the floor alternate, the best time of each is kept: the machine's
    # load varies. The first blocked run comes first, so the peak RSS before it is the features'.
    blocked_times, floor_times, peak_increase = [], [], None
    buffer = None
    for _ in range(args.repeat):
        rss_before = current_rss()
        t0 = time.perf_counter()
        metrics = retrieval_metrics(features, labels, recall_at=RECALL_AT, block_size=args.block_size)
        blocked_times.append(time.perf_counter() - t0)
        if peak_increase is None:
            peak_increase = peak_rss() - rss_before
        print(f"blocked retrieval_metrics: {blocked_times[-1]:.1f} s", flush=True)

        # The floor: the same similarity products, nothing else.
        if buffer is None:
            buffer = np.empty((min(args.block_size, args.n), args.n), dtype=np.float32)
        t0 = time.perf_counter()
        for start in range(0, args.n, args.block_size):
            stop = min(start + args.block_size, args.n)
            np.matmul(features[start:stop], features.T, out=buffer[: stop - start])
        floor_times.append(time.perf_counter() - t0)
        print(f"similarity products (floor): {floor_times[-1]:.1f} s", flush=True)
    del buffer
    print("metrics: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))

    # What every eval computes: the same ranking plus each query's top 5 (the pictures) and the
    # pair scores of the calibrated threshold (exact up to FMR 1e-2).
    t0 = time.perf_counter()
    results = rank(features, labels, k=5, pairs=1e-2, block_size=args.block_size)
    eval_time = time.perf_counter() - t0
    eval_metrics = dict(results.metrics(RECALL_AT), **results.pairs.summary(1e-3))
    eval_same = all(eval_metrics[k] == v for k, v in metrics.items())
    held = results.pairs.top_negatives.nbytes + results.pairs.positives.nbytes
    print(f"eval ranking (top 5 + pair scores): {eval_time:.1f} s, metrics equal: {eval_same}", flush=True)
    print("threshold: " + ", ".join(f"{k} {v:.4g}" for k, v in results.pairs.summary(1e-3).items()))
    del results

    # Full argsort on a subset of the queries, checked against the blocked ranks.
    subset = args.argsort_queries
    t0 = time.perf_counter()
    argsort_stats, argsort_ranks = argsort_metrics(features, labels, subset, kind="stable")
    argsort_time = time.perf_counter() - t0
    print(f"full argsort (stable): {argsort_time:.1f} s for {subset} queries", flush=True)
    t0 = time.perf_counter()
    argsort_metrics(features, labels, subset, kind="quicksort")
    quicksort_time = time.perf_counter() - t0
    print(f"full argsort (quicksort): {quicksort_time:.1f} s for {subset} queries", flush=True)
    blocked_ranks = []
    for start, ptr, ranks in positive_ranks(features, labels, block_size=args.block_size):
        blocked_ranks += np.split(ranks, ptr[1:-1])
        if start + len(ptr) - 1 >= subset:
            break
    same = all(np.array_equal(a, b) for a, b in zip(argsort_ranks, blocked_ranks[:subset]))
    ks = list(RECALL_AT)
    subset_stats = _query_stats(*csr(blocked_ranks[:subset]), ks)
    same = same and all(np.array_equal(a, b) for a, b in zip(subset_stats, argsort_stats))
    argsort_all, quicksort_all = argsort_time * args.n / subset, quicksort_time * args.n / subset

    last = np.array([r[-1] + 1 for r in blocked_ranks if len(r)])
    blocked, floor = min(blocked_times), min(floor_times)
    print()
    print(
        f"n = {args.n} queries = gallery, dim {args.dim}, block {args.block_size}, "
        f"{np.mean([len(r) for r in blocked_ranks]):.2f} positives per query; "
        f"1-based rank of the last positive (first {len(blocked_ranks)} queries): "
        f"mean {last.mean():.0f}, median {np.median(last):.0f}"
    )
    print(
        f"blocked metric        {blocked:8.1f} s   peak RSS +{peak_increase / 2**30:.2f} GiB "
        f"(features {features.nbytes / 2**30:.2f} GiB not included)"
    )
    print(f"similarity products   {floor:8.1f} s   blocked / floor   = {blocked / floor:.2f}x (target <= 2)")
    print(
        f"eval ranking          {eval_time:8.1f} s   eval / blocked    = {eval_time / blocked:.2f}x (the same "
        f"ranking + top 5 + pair scores; holds {held / 2**20:.0f} MiB of pair scores)"
    )
    print(
        f"full argsort, stable  {argsort_all:8.1f} s   argsort / blocked = {argsort_all / blocked:.1f}x (target >= 5)"
    )
    print(
        f"full argsort, quick   {quicksort_all:8.1f} s   argsort / blocked = {quicksort_all / blocked:.1f}x "
        f"(numpy's default sort: faster, but ties in an arbitrary order)"
    )
    print(
        f"  both argsorts timed on {subset} of the {args.n} queries (x all gallery items) and extrapolated "
        f"linearly (x{args.n / subset:.1f}); they use the same threads and products as the blocked metric"
    )
    print(f"blocked ranks and per-query stats equal to the argsort's on those {subset} queries: {same}")
    print(f"eval ranking's metrics equal to the blocked metric's: {eval_same}")
    return 0 if same and eval_same else 1


def clustered_features(n: int, dim: int, noise: float, seed: int):
    """[n, dim] float32 unit features and [n] int64 labels of n // 6 classes (6 or 7 items each)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = n // 6
    labels = rng.permutation(np.arange(n) % classes)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scale = (noise / np.sqrt(dim) * np.exp(0.2 * rng.standard_normal(n))).astype(np.float32)
    features = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):  # in chunks: keeps the peak RSS before the measurement low
        rows = slice(start, min(start + 8192, n))
        noise = rng.standard_normal((len(labels[rows]), dim), dtype=np.float32)
        chunk = centres[labels[rows]] + scale[rows, None] * noise
        features[rows] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return features, labels


def argsort_metrics(features, labels, num_queries: int, kind: str):
    """Per-query stats (as ``_query_stats``) and ranks of the first queries from a full argsort per row.

    kind="stable" orders ties by lower index (the metric's rule); "quicksort" is numpy's default.
    The similarities are the blocked metric's own (same products), and blocks of queries run in
    as many threads as the blocked metric uses, BLAS single-threaded, as there.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from recog.metrics._ranking import _SCORE_CHUNK, _score_rows, _single_threaded_blas, _thread_count
    from recog.metrics.ranks import query_stats as _query_stats

    def block(start: int) -> list:
        stop = min(start + _SCORE_CHUNK, num_queries)
        scores = _score_rows(features, features, start, stop)
        rows = np.arange(stop - start)
        scores[rows, rows + start] = -np.inf  # own entry: ranked last, then dropped
        order = np.argsort(np.negative(scores, out=scores), axis=1, kind=kind)[:, :-1]
        return [np.flatnonzero(p) for p in labels[order] == labels[start:stop, None]]

    with _single_threaded_blas(), ThreadPoolExecutor(_thread_count()) as pool:
        ranks = [r for part in pool.map(block, range(0, num_queries, _SCORE_CHUNK)) for r in part]
    return _query_stats(*csr(ranks), list(RECALL_AT)), ranks


def csr(ranks):
    import numpy as np

    ptr = np.concatenate([[0], np.cumsum([len(r) for r in ranks])]).astype(np.int64)
    return ptr, np.concatenate(ranks).astype(np.int64)


def current_rss() -> int:
    """Resident set size now, bytes (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """Peak resident set size of the process so far, bytes (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
