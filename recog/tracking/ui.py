"""Where ``make ui`` lands in MLflow's UI: the runs of the newest experiment, in the model-training
view, sorted by the monitored metric, with that metric's column beside the (full) run name.

What MLflow 3.17's UI reads, checked in a headless browser (``scripts/check_mlflow_ui.py``):

* the URL parameter ``workflowType=machine_learning`` opens the model-training view; without it the
  UI opens the GenAI overview (traces, token usage) unless this browser last chose "Model training"
  itself. The experiment tag ``mlflow.experimentKind`` does not change that landing;
* the URL parameter ``viewStateShareKey=K`` loads the runs table's view (sort, shown columns, their
  order and widths) from the experiment tag ``mlflow.sharedViewState.K``: the UI's own "share view".
  Without it, metric columns are hidden and run names are cut at about 25 characters.

recog writes that tag (``SHARE_KEY``) with each experiment it creates, and a training run updates it
to its ``trainer.monitor``. ``python -m recog.tracking.ui`` (what ``make ui`` runs) prints the
landing URL and starts ``mlflow ui``.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlencode

SHARE_KEY = "recog"
VIEW_TAG = f"mlflow.sharedViewState.{SHARE_KEY}"
# Run names such as "eval train pplcnet x0.25 arcmargin 14:03" or "#12 head=cosmargin optimizer.lr=0.0003".
RUN_NAME_WIDTH = 400
HEADLINE_METRICS = ("recall_at_1", "mAP")  # shown after the monitored metric


def metric_column(name: str) -> str:
    return f"metrics.`{name}`"


def runs_view(monitor: str) -> dict:
    """The runs table's view state (the JSON of ``VIEW_TAG``): best ``monitor`` first, its column
    right after the run name, then the other headline metrics, the dataset and the logged model."""
    metrics = [metric_column(name) for name in dict.fromkeys([monitor, *HEADLINE_METRICS])]
    dataset, models = "attributes.`Dataset`", "attributes.`Models`"
    return {
        "searchFilter": "",
        "orderByKey": metric_column(monitor),
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": [*metrics, dataset, models],
        "columnOrder": ["attributes.`Run Name`", *metrics, "runDateAndNestInfo", dataset, "duration", models],
        "columnWidths": {"attributes.`Run Name`": RUN_NAME_WIDTH},
    }


def view_tag_value(monitor: str) -> str:
    return json.dumps(runs_view(monitor), separators=(",", ":"))


def runs_url(base_url: str, experiment_id: str) -> str:
    """The UI page of ``experiment_id``'s runs in the model-training view, with recog's view."""
    query = urlencode({"workflowType": "machine_learning", "viewStateShareKey": SHARE_KEY})
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def landing_experiment(client):
    """The experiment of the most recently started run, else the most recently created experiment
    (``None`` in an empty store); deleted experiments and runs do not count."""
    from mlflow.entities import ViewType

    experiments = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, order_by=["creation_time DESC"])
    if not experiments:
        return None
    ids = [e.experiment_id for e in experiments]
    newest = None
    for start in range(0, len(ids), 100):  # search_runs takes at most 100 experiments at a time
        runs = client.search_runs(ids[start : start + 100], max_results=1, order_by=["attributes.start_time DESC"])
        if runs and (newest is None or runs[0].info.start_time > newest.info.start_time):
            newest = runs[0]
    if newest is None:
        return experiments[0]
    return next(e for e in experiments if e.experiment_id == newest.info.experiment_id)


def landing_monitor(client, experiment_id: str) -> str:
    """``trainer.monitor`` of the experiment's newest training run (default ``recall_at_1``)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string="tags.`recog.stage` = 'train'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0].data.params.get("trainer.monitor", "recall_at_1") if runs else "recall_at_1"


def landing_url(client, base_url: str) -> tuple[str, str | None]:
    """``(url, experiment name)`` of the page ``make ui`` opens; the experiment gets recog's view tag
    if it lacks one (an experiment made by another tool or an older recog)."""
    experiment = landing_experiment(client)
    if experiment is None:
        return base_url, None
    if VIEW_TAG not in experiment.tags:
        client.set_experiment_tag(
            experiment.experiment_id, VIEW_TAG, view_tag_value(landing_monitor(client, experiment.experiment_id))
        )
    return runs_url(base_url, experiment.experiment_id), experiment.name


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Print where the MLflow UI opens recog's runs, then start it.")
    parser.add_argument("--output-root", default="outputs", help="recog's paths.output_root (the embedded store)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--dry-run", action="store_true", help="print the URL and the command, start nothing")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    root = Path(args.output_root).resolve()
    store = f"sqlite:///{root / 'mlflow.db'}"
    browse_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    base_url = f"http://{browse_host}:{args.port}"
    if (root / "mlflow.db").is_file():
        from mlflow.tracking import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)  # the store's migrations, step by step
        url, name = landing_url(MlflowClient(store), base_url)
        where = f"the runs of experiment {name!r}" if name else "no experiment yet"
    else:
        url, where = base_url, f"no runs yet ({root / 'mlflow.db'} does not exist)"
    print(f"MLflow UI: {url}\n  ({where}, model-training view; serving {store})", flush=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow), "ui", "--backend-store-uri", store, "--host", args.host, "--port", str(args.port)]
    command += ["--workers", "1"]
    if args.dry_run:
        print(" ".join(command))
        return 0
    os.execv(command[0], command)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
