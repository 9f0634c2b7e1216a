"""Time and peak memory of k-reciprocal re-ranking and query expansion at SOP scale, against the
blocked retrieval metric on the same features.

    python scripts/bench_rerank.py                    # 60502 queries == gallery, 512-d (SOP test)
    python scripts/bench_rerank.py --n 12000          # a quicker look

Synthetic clustered features (``scripts/bench_metrics.py``'s: n // 6 classes of 6 or 7 items, unit
class centres plus noise, L2-normalised float32), query set == gallery. Measured in this order, in
one process: k-reciprocal re-ranking of every query's top --top-k (``recog.postprocess``), alpha
query expansion (k 5, alpha 3), then ``recog.metrics.retrieval_metrics`` (the blocked metric). For
each, the wall time and the increase of the process's peak RSS over its RSS just before the call
(re-ranking runs first, so its peak is not hidden by an earlier one). Recall@1 before and after
re-ranking is printed as a sanity check (features this noisy are not where re-ranking shines).
The machine should be otherwise idle.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60502, help="queries = gallery items (default 60502, SOP test)")
    parser.add_argument("--dim", type=int, default=512, help="feature size (default 512)")
    parser.add_argument(
        "--noise", type=float, default=2.5, help="noise norm relative to the class centres (default 2.5)"
    )
    parser.add_argument("--k1", type=int, default=20)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--lambda-value", type=float, default=0.3)
    parser.add_argument("--top-k", type=int, default=100, help="candidates re-ranked per query (default 100)")
    parser.add_argument("--threads", type=int, default=None, help="BLAS / faiss threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(label: str, fn):
    before = current_rss()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    increase = max(0, peak_rss() - before)
    print(
        f"{label}: {seconds:.1f} s, peak RSS +{increase / 2**20:.0f} MiB (process peak {peak_rss() / 2**30:.2f} GiB)",
        flush=True,
    )
    return result, seconds, increase


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    import numpy as np
    from bench_metrics import clustered_features

    import recog  # noqa: F401  first: sets OMP_NUM_THREADS to all cores (unless set)
    from recog.metrics import retrieval_metrics
    from recog.postprocess import k_reciprocal_rerank, query_expansion

    if args.n < 14:
        raise SystemExit("need --n >= 14")
    threads = os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count())
    print(f"machine: {os.cpu_count()} cores; numpy {np.__version__}, threads {threads}", flush=True)
    features, labels = clustered_features(args.n, args.dim, args.noise, args.seed)
    print(
        f"features: {args.n} x {args.dim} float32 ({features.nbytes / 2**20:.0f} MiB), {labels.max() + 1} classes",
        flush=True,
    )

    (indices, _), rerank_s, rerank_mem = measure(
        f"k-reciprocal re-ranking (k1 {args.k1}, k2 {args.k2}, lambda {args.lambda_value}, top {args.top_k})",
        lambda: k_reciprocal_rerank(
            features, None, k1=args.k1, k2=args.k2, lambda_value=args.lambda_value, top_k=args.top_k
        ),
    )
    _, qe_s, qe_mem = measure(
        "alpha query expansion (k 5, alpha 3)", lambda: query_expansion(features, None, k=5, alpha=3.0)
    )
    metrics, metric_s, metric_mem = measure(
        "blocked retrieval_metrics", lambda: retrieval_metrics(features, labels, recall_at=(1,))
    )

    reranked_r1 = float(np.mean(labels[indices[:, 0]] == labels))
    print()
    print(f"n = {args.n}, dim = {args.dim} (query == gallery)")
    print(
        f"blocked metric       : {metric_s:7.1f} s   peak +{metric_mem / 2**20:6.0f} MiB   "
        f"recall@1 {metrics['recall_at_1']:.4f}  mAP {metrics['mAP']:.4f}"
    )
    print(
        f"k-reciprocal re-rank : {rerank_s:7.1f} s   peak +{rerank_mem / 2**20:6.0f} MiB   "
        f"recall@1 {reranked_r1:.4f}   time {rerank_s / metric_s:.2f}x the metric's "
        f"(bound 3x), peak {'under' if rerank_mem < 2 * 2**30 else 'OVER'} 2 GiB"
    )
    print(f"query expansion      : {qe_s:7.1f} s   peak +{qe_mem / 2**20:6.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
