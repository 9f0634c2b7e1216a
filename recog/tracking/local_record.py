"""MLflow calls that did not reach the tracking store, kept in the run dir, and their replay.

``<run dir>/mlflow_pending.jsonl`` holds one JSON object per line, in call order::

    {"op": "start", "tracking_uri": "http://...", "run_id": "abc..." | null, "error": "..."}
    {"op": "create_run", "experiment_name": ..., "run_name": ..., "tags": {...}, "start_time": ms,
     "artifact_location": null | "file:///...", "monitor": "recall_at_1"}  (only when the run could not be created)
    {"op": "log_batch", "params": {k: v}, "metrics": [[key, value, timestamp ms, step], ...]}
    {"op": "set_tag", "key": ..., "value": ...}
    {"op": "log_artifact", "path": "/abs/file/or/dir", "artifact_path": null | "best_model"}
    {"op": "update_run", "status": "RUNNING"}      (a resumed run reopened)
    {"op": "set_terminated", "status": "FINISHED" | "FAILED" | "KILLED", "end_time": ms}
    {"op": "log_inputs", "dataset": {"name": ..., "digest": ..., "source": ..., "context": ...}}
    {"op": "log_model", "path": "/abs/export/dir"}  (the export as the run's MLflow Model)
    {"op": "register_model", "name": ..., "alias": null | "champion"}

``replay`` sends them to MLflow in order. Its progress (lines done, the run id created for a
``create_run``) is kept in ``mlflow_pending.progress.json``, so a replay that fails half-way
(server down again) continues where it stopped; a complete replay renames the record to
``mlflow_pending.replayed-<time>.jsonl``.
"""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recog.errors import ConfigError
from recog.utils import atomic

RECORD_FILE = "mlflow_pending.jsonl"
PROGRESS_FILE = "mlflow_pending.progress.json"


class LocalRecord:
    """Appends MLflow calls to ``path`` (a JSONL file): one line per call, written through to the
    OS at once, so that a crash loses at most the line being written."""

    def __init__(self, path: Path, tracking_uri: str, run_id: str | None, error: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.calls = 0
        self.append("start", tracking_uri=tracking_uri, run_id=run_id, error=error, time=_now_ms())

    def append(self, op: str, **fields: Any) -> None:
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps({"op": op, **fields}) + "\n")
        self.calls += op != "start"


def record_path(run_dir) -> Path:
    return Path(run_dir) / RECORD_FILE


def read_record(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, call)`` for every line; a torn last line (a crash mid-write) is skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                raise ConfigError(f"{path}, line {number}: not a JSON record ({line[:80]!r})") from None


def replay(run_dir, tracking_uri: str | None = None) -> str | None:
    """Send ``<run dir>/mlflow_pending.jsonl`` to MLflow; returns the run id it went into.

    ``tracking_uri`` defaults to the URI the run was logging to. Raises ``ConfigError`` when there
    is nothing to replay; MLflow errors pass through (progress so far is kept).
    """
    from mlflow.tracking import MlflowClient

    path = record_path(run_dir)
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist: nothing to replay (the run reached MLflow, or this is not a run dir)"
        )
    progress_path = path.parent / PROGRESS_FILE
    progress = json.loads(progress_path.read_text()) if progress_path.is_file() else {"lines": 0, "runs": {}}
    client = None
    run_id: str | None = None
    section = 0  # the line of the current section's "start": each tracker that went offline opens one
    for number, call in read_record(path):
        op = call["op"]
        if op == "start":
            section = number
            client = MlflowClient(tracking_uri or call["tracking_uri"])
            run_id = call.get("run_id") or progress["runs"].get(str(section))
            if number <= progress["lines"]:
                continue
        elif number <= progress["lines"]:
            continue
        elif op == "create_run":
            run_id = _create_run(client, call)
            progress["runs"][str(section)] = run_id
        elif run_id is None:
            raise ConfigError(f"{path}, line {number}: a {op} call before the run was created")
        else:
            _apply(client, run_id, call)
        progress["lines"] = number
        atomic.write_text(progress_path, json.dumps(progress), "replay progress")
    path.rename(path.with_name(f"mlflow_pending.replayed-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"))
    progress_path.unlink(missing_ok=True)
    return run_id


def _create_run(client, call: dict[str, Any]) -> str:
    experiment = client.get_experiment_by_name(call["experiment_name"])
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        from recog.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
        from recog.tracking.ui import VIEW_TAG, view_tag_value

        tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, VIEW_TAG: view_tag_value(call.get("monitor") or "recall_at_1")}
        experiment_id = client.create_experiment(
            call["experiment_name"], artifact_location=call.get("artifact_location"), tags=tags
        )
    run = client.create_run(
        experiment_id, start_time=call.get("start_time"), tags=call.get("tags") or {}, run_name=call.get("run_name")
    )
    return run.info.run_id


def _apply(client, run_id: str, call: dict[str, Any]) -> None:
    from mlflow.entities import Metric, Param

    op = call["op"]
    if op == "log_batch":
        params = [Param(k, v) for k, v in (call.get("params") or {}).items()]
        metrics = [Metric(k, float(v), int(t), int(s)) for k, v, t, s in call.get("metrics") or []]
        for start in range(0, max(len(params), len(metrics)), 100):
            client.log_batch(run_id, params=params[start : start + 100], metrics=metrics[start : start + 100])
    elif op == "set_tag":
        client.set_tag(run_id, call["key"], call["value"])
    elif op == "log_artifact":
        source = Path(call["path"])
        if not source.exists():
            raise ConfigError(
                f"artifact {source} was recorded for MLflow but is gone: restore it or remove the line "
                f"from {RECORD_FILE}"
            )
        if source.is_dir():
            client.log_artifacts(run_id, str(source), call.get("artifact_path") or source.name)
        else:
            client.log_artifact(run_id, str(source), call.get("artifact_path"))
    elif op == "set_terminated":
        client.set_terminated(run_id, status=call["status"], end_time=call.get("end_time"))
    elif op == "update_run":
        client.update_run(run_id, status=call["status"])
    elif op == "log_inputs":
        from recog.tracking.datasets import dataset_input

        client.log_inputs(run_id, datasets=[dataset_input(call["dataset"])])
    elif op == "log_model":
        from recog.tracking.mlflow_model import log_model

        log_model(client.tracking_uri, run_id, call["path"])
    elif op == "register_model":
        from recog.tracking.registry import register_run_model

        register_run_model(client, run_id, call["name"], call.get("alias"))
    else:
        raise ConfigError(f"unknown MLflow call {op!r} in {RECORD_FILE}")


def _now_ms() -> int:
    return int(time.time() * 1000)
