"""Round-trip latency of a served recog model: images -> JSON -> `mlflow models serve` -> features,
for uint8 pixel arrays and for PNG files, and the time of an edit-then-search on a saved gallery index.

Usage:
    python scripts/bench_serve.py [--model URI] [--tracking-uri URI] [--batches 1 32] [--size 64] [--repeat 20]
    python scripts/bench_serve.py --edits [--gallery 10000]      the gallery-index edit round trip only

Without ``--model``, a small model is made first (PP-LCNet x0.25, 64 px, random weights: the
latency does not depend on the weights), exported, logged as an MLflow Model in a temporary store,
and served from there. The server is `mlflow models serve --env-manager local` on 127.0.0.1 (a free
port), started and stopped by this script. Each batch of random RGB images is posted twice:
``arrays`` as ``{"inputs": <uint8 [B, H, W, 3] nested lists>}`` and ``pngs`` as
``{"inputs": {"image": [<base64 PNG>, ...]}}`` (each image encoded losslessly; random pixels, the
largest PNGs). The figures are per request, client side (JSON encoding, HTTP, decoding,
preprocessing, the Paddle Inference predictor, the reply), after ``--warmup`` untimed requests.
For comparison, ``in-process`` is ``mlflow.pyfunc.load_model(...).predict(x)`` in this process on
the same arrays and the same PNG bytes (no JSON, no HTTP): the ratio is the serving overhead.

``--edits``: a flat and an HNSW ``GalleryIndex`` of ``--gallery`` random 128-d features saved to
disk; timed: load it, remove one entry by id, add one, save it (atomically), load it again and
search one query, the median of ``--repeat`` rounds.
"""

import argparse
import base64
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


def stop_server(server: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the server's process group (it has its own session), SIGKILL it if it outlives ``timeout``."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def post(port: int, body: bytes) -> np.ndarray:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as reply:
        return np.asarray(json.loads(reply.read())["predictions"], dtype=np.float32)


def pngs(images: np.ndarray) -> list:
    import cv2

    return [cv2.imencode(".png", image[:, :, ::-1])[1].tobytes() for image in images]


def bodies(images: np.ndarray) -> dict:
    """The two request bodies of a batch: pixel arrays and base64 PNG files."""
    files = [base64.b64encode(data).decode() for data in pngs(images)]
    return {
        "arrays": json.dumps({"inputs": images.tolist()}).encode(),
        "pngs": json.dumps({"inputs": {"image": files}}).encode(),
    }


def timed(call, repeat: int, warmup: int) -> list:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def in_process(model: str, tracking_uri: str, batches, repeat: int, warmup: int) -> dict:
    """``{(batch, form): median seconds}`` of ``pyfunc.load_model(model).predict`` on arrays and PNG bytes."""
    sys.path.insert(0, str(ROOT))
    import mlflow

    import recog  # noqa: F401
    from recog.tracking.mlflow_model import tracking_uri as using

    with using(tracking_uri):
        loaded = mlflow.pyfunc.load_model(model)
    medians = {}
    for batch, images in batches:
        for form, value in (("arrays", images), ("pngs", pngs(images))):
            times = timed(lambda value=value: loaded.predict(value), repeat, warmup)
            medians[batch, form] = statistics.median(times)
    return medians


def edit_round_trip(count: int, repeat: int) -> None:
    """The ``--edits`` figures (module docstring)."""
    sys.path.insert(0, str(ROOT))
    from recog.search import GalleryIndex

    rng = np.random.default_rng(0)
    features = rng.standard_normal((count + repeat, 128)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = rng.integers(0, 100, count + repeat)
    paths = [f"gallery/{i}.jpg" for i in range(count + repeat)]
    print(f"edit -> search round trip on a saved gallery index of {count} x 128-d features (median of {repeat})")
    for kind in ("flat", "hnsw"):
        with tempfile.TemporaryDirectory(prefix="bench-edits-") as tmp:
            folder = Path(tmp) / "index"
            GalleryIndex.build(features[:count], labels[:count], paths[:count], kind=kind).save(folder)
            times, steps = [], {"load": [], "remove + add": [], "save": [], "load + search": []}
            for round_ in range(repeat):
                start = time.perf_counter()
                index = GalleryIndex.load(folder)
                loaded = time.perf_counter()
                index.remove([int(index.ids[0])])
                index.add(
                    features[count + round_ : count + round_ + 1],
                    labels[count + round_ : count + round_ + 1],
                    paths[count + round_ : count + round_ + 1],
                )
                edited = time.perf_counter()
                index.save(folder)
                saved = time.perf_counter()
                GalleryIndex.load(folder).search(features[count + round_ : count + round_ + 1], 5)
                end = time.perf_counter()
                times.append(end - start)
                for name, seconds in zip(steps, (loaded - start, edited - loaded, saved - edited, end - saved)):
                    steps[name].append(seconds)
            detail = ", ".join(f"{name} {statistics.median(v) * 1e3:.1f}" for name, v in steps.items())
            print(f"  {kind:<5} {statistics.median(times) * 1e3:7.1f} ms  ({detail} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an MLflow model URI (default: a tiny model made here)")
    parser.add_argument("--tracking-uri", help="the store of --model (default: MLFLOW_TRACKING_URI or outputs/)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--size", type=int, default=64, help="height = width of the posted images (default 64)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--edits", action="store_true", help="only the gallery-index edit round trip")
    parser.add_argument("--gallery", type=int, default=10000, help="gallery size for --edits (default 10000)")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.edits:
        edit_round_trip(args.gallery, args.repeat)
        return
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
            model, tracking_uri = make_model(workdir, args.size)
        port = free_port()
        log_path = workdir / "server.log"
        server = start_server(model, tracking_uri, port, log_path)
        try:
            wait_ready(server, port, log_path)
            rng = np.random.default_rng(0)
            batches = [
                (batch, rng.integers(0, 256, (batch, args.size, args.size, 3), dtype=np.uint8))
                for batch in args.batches
            ]
            print(
                f"{model} served by `mlflow models serve --env-manager local` on 127.0.0.1:{port}; "
                f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} cores, "
                f"load average {os.getloadavg()[0]:.1f}"
            )
            served = {}
            for batch, images in batches:
                for form, body in bodies(images).items():
                    served[batch, form] = (
                        timed(lambda body=body: post(port, body), args.repeat, args.warmup),
                        len(body),
                    )
            stop_server(server)
            local = in_process(model, tracking_uri, batches, args.repeat, args.warmup)
            print(
                f"{'batch':>5}  {'form':<6}  {'body KB':>8}  {'served ms':>9}  {'p90 ms':>7}  {'ms/image':>8}  "
                f"{'in-process ms':>13}  {'served / in-process':>19}"
            )
            for (batch, form), (times, size) in served.items():
                median = statistics.median(times)
                p90 = sorted(times)[min(len(times) - 1, int(0.9 * len(times)))]
                print(
                    f"{batch:>5}  {form:<6}  {size / 1024:>8.1f}  {median * 1e3:>9.1f}  {p90 * 1e3:>7.1f}  "
                    f"{median * 1e3 / batch:>8.2f}  {local[batch, form] * 1e3:>13.1f}  "
                    f"{median / local[batch, form]:>18.2f}x"
                )
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
