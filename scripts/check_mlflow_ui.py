"""Check in a real headless browser where `make ui` lands, and save screenshots (a developer check:
it needs Chromium, so it is not part of `make test`).

Usage:
    python scripts/check_mlflow_ui.py [--output-root outputs | --fresh] [--shots DIR] [--port 5123]

Starts the UI exactly as `make ui` does (`python -m recog.tracking.ui`, which prints the URL), opens
that URL in headless Chromium (Debian's `chromium` and `chromium-driver`, driven by selenium; a fresh
profile, as a first visit) and checks:

1. the page is the runs table of the newest experiment in the model-training view, not the GenAI
   overview (the plain experiment URL, without recog's parameters, is shot too, for comparison);
2. the monitored metric's column is in view, beside run names that are not cut;
3. the table shows each training run's best model's value of the metric (not its last epoch's);
4. a training run's page lists the monitored metric first, with the best model's value;
5. selecting runs (the training runs first, at least two) and pressing Compare opens a
   parallel-coordinates plot of the monitored metric (MLflow plots the first metric the runs share).

`--fresh` first trains two tiny runs (and evaluates one) into a temporary output root. Screenshots
go to `--shots` (default `<output root>/ui_check/`). Prints one line per check; exit 1 if any failed.
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync --window-size=1440,900"
).split()
TINY = [
    "backbone.scale=0.25",
    "data.image_size=32",
    "neck.embedding_size=32",
    "data.num_workers=0",
    "trainer.epochs=2",
    "trainer.steps_per_epoch=3",
    "eval.engine=dygraph",
    "mlflow.experiment_name=ui_check",
]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-root", default="outputs", help="the store to look at (default: outputs)")
    parser.add_argument("--fresh", action="store_true", help="train two tiny runs into a temporary output root")
    parser.add_argument("--shots", help="folder for the screenshots (default: <output root>/ui_check)")
    parser.add_argument("--port", type=int, default=5123)
    parser.add_argument("--wait", type=float, default=60.0, help="seconds a page may take to render")
    return parser.parse_args(argv)


def train_tiny_runs(root: Path) -> None:
    """Two tiny training runs on the digits (two margins) and an eval of the first one."""
    import recog
    from recog.stages import evaluate, train

    for margin in ("0.2", "0.3"):
        cfg = recog.compose([*TINY, f"head.margin={margin}", f"paths.output_root={root}"])
        train.run(cfg, root / "runs" / f"margin{margin}")
    cfg = recog.compose(
        [*TINY, "stage=eval", f"model_path={root}/runs/margin0.2/best_model", f"paths.output_root={root}"]
    )
    evaluate.run(cfg, root / "runs" / "margin0.2" / "eval")


def start_ui(root: Path, port: int) -> tuple[subprocess.Popen, str]:
    """`make ui`'s command on ``port``; returns the process and the URL it printed, once it answers."""
    command = [sys.executable, "-m", "recog.tracking.ui", "--output-root", str(root), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = server.stdout.readline().strip()
    if not first.startswith("MLflow UI: "):
        server.kill()
        raise SystemExit(f"`{' '.join(command)}` printed {first!r}, not the UI's URL")
    url = first.removeprefix("MLflow UI: ")
    deadline = time.monotonic() + 180  # a minute or more on a busy 2-core machine
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server, url
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"`{' '.join(command)}` exited with {server.returncode}") from None
            time.sleep(0.5)
    server.kill()
    raise SystemExit(f"the MLflow UI on port {port} did not answer within 180 s")


def browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def visit(driver, url: str, shot: Path, wait: float, ready: str) -> str:
    """Load ``url``, wait (at most ``wait`` s) until it is ``ready`` (see ``settle``), save ``shot``;
    returns the page's text."""
    driver.get("about:blank")  # a hash-only change would not reload the app
    driver.get(url)
    settle(driver, wait, ready)
    shot.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(shot))
    return driver.find_element("tag name", "body").text


def settle(driver, wait: float, ready: str) -> None:
    """Wait until the page shows ``ready``: ``css:<selector>`` matches, or its text holds ``ready``."""

    def shown() -> bool:
        if ready.startswith("css:"):
            return bool(driver.find_elements("css selector", ready[4:]))
        return ready in driver.find_element("tag name", "body").text

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not shown():
        time.sleep(0.5)
    time.sleep(2)  # the rest of the page (cells, charts) after the first of it


def number(text: str) -> float | None:
    found = re.search(r"-?\d+(\.\d+)?(e-?\d+)?", text or "")
    return float(found.group(0)) if found else None


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append('selenium (.venv/bin/pip install -e ".[ui-check]")')
    if missing:  # before any training: the check cannot run without them
        raise SystemExit(f"the browser check needs {', '.join(map(str, missing))}")
    root = Path(tempfile.mkdtemp(prefix="recog-ui-check-")) if args.fresh else Path(args.output_root).resolve()
    if args.fresh:
        print(f"training two tiny runs into {root} ...", flush=True)
        train_tiny_runs(root)
    if not (root / "mlflow.db").is_file():
        raise SystemExit(f"no MLflow store at {root / 'mlflow.db'}: run `make demo` first, or pass --fresh")
    shots = Path(args.shots or root / "ui_check")
    from mlflow.tracking import MlflowClient

    from recog.tracking.ui import landing_experiment, landing_monitor, metric_column

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = landing_experiment(client)
    monitor = landing_monitor(client, experiment.experiment_id)
    trained = client.search_runs([experiment.experiment_id], "tags.`recog.stage` = 'train'", max_results=50)
    best = {}  # the best eval of each training run (higher is better), from its per-epoch history
    for run in trained:
        history = [m.value for m in client.get_metric_history(run.info.run_id, monitor) if not math.isnan(m.value)]
        best[run.info.run_id] = max(history) if history else None
    results: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        results.append((name, bool(ok), detail))
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)

    server, url = start_ui(root, args.port)
    base = url.split("/#/")[0]
    try:
        profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))  # a first visit: nothing remembered
        driver = browser(profile)
        try:
            plain = f"{base}/#/experiments/{experiment.experiment_id}"
            visit(driver, plain, shots / "0-plain-url.png", args.wait, ready="Traces")
            print(f"info  without recog's URL the UI opens {driver.current_url.split('#')[1]}", flush=True)
            text = visit(driver, url, shots / "1-make-ui-landing.png", args.wait, ready="css:.ag-row [col-id] a")
            where = driver.current_url.split("#")[1]
            check(
                "model-training runs view",
                f"/experiments/{experiment.experiment_id}/runs" in where
                and "Token Usage" not in text
                and "Model training" in text,
                f"{url} shows {where.split('?')[0]} of {experiment.name!r}",
            )
            column = metric_column(monitor)
            table = driver.execute_script(
                """const grid = document.querySelector('.ag-root-wrapper').getBoundingClientRect();
                const head = document.querySelector(`.ag-header-cell[col-id="${arguments[0]}"]`);
                const rows = {};
                for (const cell of document.querySelectorAll('.ag-row [col-id]')) {
                  const id = cell.closest('.ag-row').getAttribute('row-id');
                  const link = cell.querySelector('a');
                  rows[id] = rows[id] || {};
                  if (cell.getAttribute('col-id') === 'attributes.`Run Name`' && link)
                    rows[id].name = [link.innerText, link.scrollWidth > link.clientWidth + 1];
                  if (cell.getAttribute('col-id') === arguments[0]) rows[id].value = cell.innerText;
                }
                return {visible: !!head && head.getBoundingClientRect().right <= grid.right + 1, rows: rows};""",
                column,
            )
            rows = {row_id: row for row_id, row in table["rows"].items() if "name" in row}
            check(f"{monitor} column in view", table["visible"], "its header is inside the table, beside Run Name")
            cut = [row["name"][0] for row in rows.values() if row["name"][1]]
            check("run names shown whole", rows and not cut, f"{len(rows)} names, cut: {cut or 'none'}")
            shown = {run_id: number(rows.get(run_id, {}).get("value")) for run_id in best}
            right = [k for k, v in best.items() if v is not None and shown[k] is not None and abs(shown[k] - v) < 1e-4]
            check(
                f"{monitor} shows the best model's value",
                len(right) == len(best),
                f"table {json.dumps(shown)}; best models {json.dumps(best)}",
            )
            run = max(trained, key=lambda r: r.info.start_time)
            history = [m.value for m in client.get_metric_history(run.info.run_id, monitor) if not math.isnan(m.value)]
            driver.find_element("css selector", f'.ag-row[row-id="{run.info.run_id}"] a').click()  # as a user would
            settle(driver, args.wait, "Metrics (")
            driver.execute_script(
                "const m = Array.from(document.querySelectorAll('h1,h2,h3,h4,span,div'))"
                ".find(e => /^Metrics \\(\\d+\\)$/.test(e.innerText)); if (m) m.scrollIntoView();"
            )
            time.sleep(1)
            driver.save_screenshot(str(shots / "2-run-page.png"))
            text = driver.find_element("tag name", "body").text
            after = re.split(r"\nMetrics \(\d+\)\n", text, maxsplit=1)[-1].split("\n")
            first = [line for line in after if line not in ("Metric", "Value", "Models")][:2]
            check(
                "run page headline",
                len(first) == 2 and first[0] == monitor and abs(number(first[1]) - best[run.info.run_id]) < 1e-4,
                f"first metric {first}; best model {best[run.info.run_id]}; per-epoch history {history}",
            )
            visit(driver, url, shots / "1-make-ui-landing.png", args.wait, ready="css:.ag-row [col-id] a")
            # Select runs (the training runs first; Compare needs two), then press Compare, as a user would.
            chosen_runs = [r.info.run_id for r in trained] + [k for k in rows if k not in best]
            chosen_runs = chosen_runs[:4]
            for run_id in chosen_runs:
                box = f'.ag-row[row-id="{run_id}"] .ag-checkbox-input'
                driver.execute_script("arguments[0].click()", driver.find_element("css selector", box))
                time.sleep(0.5)
            (button,) = [b for b in driver.find_elements("css selector", "button") if b.text.strip() == "Compare"]
            driver.execute_script("arguments[0].click()", button)
            settle(driver, args.wait, "Clear All")
            driver.save_screenshot(str(shots / "3-compare-runs.png"))
            text = driver.find_element("tag name", "body").text
            chosen = text.split("Metrics:", 1)[-1].split("Clear All", 1)[0].split()
            check(
                "compare view plots the monitored metric",
                "/compare-runs" in driver.current_url and chosen[:1] == [monitor],
                f"Compare of {len(chosen_runs)} runs: its parallel plot's Metrics box holds {chosen[:8]}",
            )
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    failed = [name for name, ok, _ in results if not ok]
    print(f"screenshots in {shots}; {len(results) - len(failed)} of {len(results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for a driver online
    sys.exit(main())
