"""Round-trip latency of a served recog model: uint8 images -> JSON -> `mlflow models serve` -> features.

Usage:
    python scripts/bench_serve.py [--model URI] [--tracking-uri URI] [--batches 1 32] [--size 64] [--repeat 20]

Without ``--model``, a small model is made first (PP-LCNet x0.25, 64 px, random weights: the
latency does not depend on the weights), exported, logged as an MLflow Model in a temporary store,
and served from there. The server is `mlflow models serve --env-manager local` on 127.0.0.1 (a free
port), started and stopped by this script. Each request posts ``{"inputs": <uint8 [B, H, W, 3]>}``
to ``/invocations``; the figures are per request, client side (JSON encoding, HTTP, decoding,
preprocessing, the Paddle Inference predictor, the reply), after ``--warmup`` untimed requests.
For comparison, ``in-process`` is ``mlflow.pyfunc.load_model(...).predict(images)`` in this
process (no JSON, no HTTP): the difference is the serving overhead, mostly MLflow's JSON parsing
of the nested pixel lists.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_model(workdir: Path, image_size: int) -> tuple:
    """``(model uri, tracking uri)`` of a freshly exported and logged tiny model."""
    sys.path.insert(0, str(ROOT))
    import recog
    from recog.inference.export import export_model
    from recog.tracking import MlflowTracker

    cfg = recog.compose(
        [
            "backbone.scale=0.25",
            f"data.image_size={image_size}",
            "neck.embedding_size=128",
            "head.class_num=10",
            f"paths.output_root={workdir}",
            "mlflow.experiment_name=bench_serve",
        ]
    )
    model = recog.build_model(cfg)
    images = np.random.default_rng(0).standard_normal((2, 3, image_size, image_size)).astype(np.float32)
    export_model(model, cfg, workdir / "export", images, cpu_onednn="full")
    tracker = MlflowTracker(cfg, stage="export", run_dir=workdir)
    tracker.log_model(workdir / "export")
    tracker.finish()
    return f"runs:/{tracker.run_id}/model", tracker.uri


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, tracking_uri: str, port: int, log_path: Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=tracking_uri,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    log = open(log_path, "wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "--env-manager",
            "local",
            "-m",
            model,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_ready(server: subprocess.Popen, port: int, log_path: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"mlflow models serve exited ({server.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    sys.exit(f"mlflow models serve did not answer within {timeout:.0f} s; log: {log_path}")


def post(port: int, images: np.ndarray) -> np.ndarray:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps({"inputs": images.tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as reply:
        return np.asarray(json.loads(reply.read())["predictions"], dtype=np.float32)


def compare_in_process(model: str, tracking_uri: str, batches, repeat: int) -> None:
    sys.path.insert(0, str(ROOT))
    import mlflow

    import recog  # noqa: F401
    from recog.tracking.mlflow_model import tracking_uri as using

    with using(tracking_uri):
        loaded = mlflow.pyfunc.load_model(model)
    for batch, images in batches:
        loaded.predict(images)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            loaded.predict(images)
            times.append(time.perf_counter() - start)
        print(f"in-process pyfunc predict, batch {batch}: median {statistics.median(times) * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an MLflow model URI (default: a tiny model made here)")
    parser.add_argument("--tracking-uri", help="the store of --model (default: MLFLOW_TRACKING_URI or outputs/)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--size", type=int, default=64, help="height = width of the posted images (default 64)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        workdir = Path(tmp)
        if args.model:
            model = args.model
            tracking_uri = (
                args.tracking_uri
                or os.environ.get("MLFLOW_TRACKING_URI")
                or f"sqlite:///{(ROOT / 'outputs' / 'mlflow.db').resolve()}"
            )
        else:
            model, tracking_uri = make_model(workdir, 64)
        port = free_port()
        log_path = workdir / "server.log"
        server = start_server(model, tracking_uri, port, log_path)
        try:
            wait_ready(server, port, log_path)
            rng = np.random.default_rng(0)
            print(
                f"{model} served by `mlflow models serve --env-manager local` on 127.0.0.1:{port}; "
                f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} cores"
            )
            in_process = []
            print(f"{'batch':>5}  {'images':>14}  {'median ms':>9}  {'p90 ms':>7}  {'ms/image':>8}  {'images/s':>8}")
            for batch in args.batches:
                images = rng.integers(0, 256, (batch, args.size, args.size, 3), dtype=np.uint8)
                for _ in range(args.warmup):
                    features = post(port, images)
                times = []
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    features = post(port, images)
                    times.append(time.perf_counter() - start)
                median = statistics.median(times)
                p90 = sorted(times)[min(len(times) - 1, int(0.9 * len(times)))]
                print(
                    f"{batch:>5}  {f'{args.size}x{args.size}x3':>14}  {median * 1e3:>9.1f}  {p90 * 1e3:>7.1f}  "
                    f"{median * 1e3 / batch:>8.2f}  {batch / median:>8.1f}   -> features {list(features.shape)}"
                )
                in_process.append((batch, images))
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
            compare_in_process(model, tracking_uri, in_process, args.repeat)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


if __name__ == "__main__":
    main()
