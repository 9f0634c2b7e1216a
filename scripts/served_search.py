"""Serve a search model (stage=index) with `mlflow models serve`, post image files, print the answers.

Usage:
    python scripts/served_search.py MODEL_URI IMAGE [IMAGE ...] [--tracking-uri URI]
    python scripts/served_search.py --demo RUN_DIR      what `make demo` ends with: the search model of
                                                        RUN_DIR/index_stage, asked about one query digit

The model is downloaded and verified as `make serve` does (recog.tracking.model_folder), served from
the verified copy on 127.0.0.1 (a free port) with `--env-manager local`, asked once with
``{"inputs": {"image": [<base64 file>, ...]}}``, and stopped. Prints per image the decision (a
gallery label, or "unknown" below the threshold), the best score, the threshold and the top matches.
"""

import argparse
import base64
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
sys.path.insert(0, str(SCRIPTS.parent))

from bench_serve import free_port, start_server, stop_server, wait_ready  # noqa: E402


def ask(model: str, tracking_uri: str, images: list[Path]) -> tuple[list[dict], float]:
    """The served model's answers for ``images`` (files), and the seconds the request took."""
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from recog.tracking.model_folder import download_verified

    body = {"inputs": {"image": [base64.b64encode(path.read_bytes()).decode() for path in images]}}
    with tempfile.TemporaryDirectory(prefix="served-search-") as tmp:
        local = download_verified(model, Path(tmp) / "model")
        port, log_path = free_port(), Path(tmp) / "server.log"
        server = start_server(str(local), tracking_uri, port, log_path)
        try:
            wait_ready(server, port, log_path)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            start = time.perf_counter()
            with urllib.request.urlopen(request, timeout=120) as reply:
                answers = json.loads(reply.read())["predictions"]
            return answers, time.perf_counter() - start
        finally:
            stop_server(server)


def describe(image: Path, answer: dict, label=None) -> str:
    threshold = "none set" if answer["threshold"] is None else f"{answer['threshold']:.4g}"
    score = "-" if answer["score"] is None else f"{answer['score']:.4f}"
    truth = "" if label is None else f" (its label: {label})"
    matches = ", ".join(f"id {m['id']} label {m['label']} {m['score']:.3f}" for m in answer["matches"][:3])
    return (
        f"  {image.name}{truth} -> decision {answer['decision']!r}, best score {score}, threshold {threshold}\n"
        f"            top matches: {matches}"
    )


def demo(run: Path) -> int:
    summary = json.loads((run / "index_stage" / "index_summary.json").read_text())
    model = summary.get("mlflow_model")
    if not model:
        print(f"served search: {run} logged no search model (mlflow.enabled=false?)", file=sys.stderr)
        return 1
    queries = run.parents[1] / "data" / "digits" / "query_list.txt"
    first, label = queries.read_text().split()[:2]
    image = queries.parent / first
    answers, seconds = ask(model, f"sqlite:///{(run.parents[1] / 'mlflow.db').resolve()}", [image])
    print(f"  served    search model {model} (mlflow models serve, one request, {seconds * 1e3:.0f} ms):")
    print(describe(image, answers[0], label))
    print(f"            serve it yourself: make serve MODEL={model}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="the search model's URI, e.g. runs:/<index run id>/model")
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    parser.add_argument("--demo", type=Path, metavar="RUN_DIR")
    args = parser.parse_args()
    if args.demo:
        return demo(args.demo)
    if not args.model or not args.images:
        parser.error("give a model URI and at least one image file")
    uri = args.tracking_uri or f"sqlite:///{(SCRIPTS.parent / 'outputs' / 'mlflow.db').resolve()}"
    answers, seconds = ask(args.model, uri, args.images)
    print(f"{args.model}: {len(answers)} answer(s) in {seconds * 1e3:.0f} ms")
    for image, answer in zip(args.images, answers):
        print(describe(image, answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
