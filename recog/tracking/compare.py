"""Side-by-side comparison of MLflow runs: a text table sorted by a metric, and a PNG plot.

A training run logs every eval's metrics (``recall_at_1``, ``mAP``, ...) and at the end the best
eval's again under the same names (``best_epoch``: the epoch of that eval), so a run's latest value
is its best model's; runs of older recog logged them as ``best_<name>``, which is read where present.
A metric without a value yet (NaN: a training run before its first eval) counts as absent.
"""

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from recog.utils import atomic

MAX_PARAM_COLUMNS = 8


@dataclass
class RunSummary:
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]  # best_<name> folded into <name>
    tags: dict[str, str] = field(default_factory=dict)
    start_time: int | None = None  # ms since the epoch
    end_time: int | None = None

    @property
    def duration_s(self) -> float | None:
        if self.start_time is None or self.end_time is None:
            return None
        return (self.end_time - self.start_time) / 1000.0


def summarize(run) -> RunSummary:
    """A ``RunSummary`` of an ``mlflow.entities.Run``."""
    logged = {k: v for k, v in run.data.metrics.items() if not math.isnan(v)}
    metrics = {k: v for k, v in logged.items() if not k.startswith("best_")}
    metrics.update({k[len("best_") :]: v for k, v in logged.items() if k.startswith("best_")})
    return RunSummary(
        run.info.run_id,
        run.info.run_name or run.info.run_id[:8],
        run.info.status,
        dict(run.data.params),
        metrics,
        dict(run.data.tags),
        run.info.start_time,
        run.info.end_time,
    )


def load_runs(
    client, experiment_ids: Sequence[str], parent_run_id: str | None = None, stage: str | None = "train"
) -> list[RunSummary]:
    """The runs of ``experiment_ids`` (of the stage ``stage``; None: any but sweep parents), only
    the children of ``parent_run_id`` when given."""
    filters = []
    if stage:
        filters.append(f"tags.`recog.stage` = '{stage}'")
    if parent_run_id:
        filters.append(f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    runs = []
    token = None
    while True:
        page = client.search_runs(
            list(experiment_ids), filter_string=" and ".join(filters), max_results=1000, page_token=token
        )
        runs.extend(summarize(run) for run in page if run.data.tags.get("recog.stage") != "sweep")
        token = page.token
        if not token:
            return runs


# Status order of the table: finished runs first, then unfinished, stopped and failed ones.
_STATUS_ORDER = {"FINISHED": 0, "RUNNING": 1, "SCHEDULED": 1, "KILLED": 2, "FAILED": 3}


def sort_by_metric(runs: list[RunSummary], metric: str) -> list[RunSummary]:
    """Finished runs first, then running, killed and failed ones (a failed run's metrics are of an
    unfinished training); within each, best first (higher is better), runs without the metric last,
    ties in start order (the Optuna sweeper's best trial is the first to reach the best value)."""
    return sorted(
        runs,
        key=lambda r: (
            _STATUS_ORDER.get(r.status, 1),
            metric not in r.metrics,
            -r.metrics.get(metric, 0.0),
            r.start_time or 0,
        ),
    )


def display_names(runs: list[RunSummary], width: int = 40) -> list[str]:
    """The runs' names cut to ``width``; names that would be the same for different runs end in
    the run id's first 8 characters, so every row can be told apart."""
    names = [_shorten(run.name, width) for run in runs]
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [
        name if counts[name] == 1 else f"{_shorten(run.name, width - 9)} {run.run_id[:8]}"
        for name, run in zip(names, runs)
    ]


def differing_params(runs: list[RunSummary]) -> list[str]:
    """Param keys whose value is not the same in every run (a missing key counts as a value)."""
    keys = sorted({k for run in runs for k in run.params})
    return [k for k in keys if len({run.params.get(k) for run in runs}) > 1]


def recall_ks(runs: list[RunSummary]) -> list[int]:
    ks = {
        int(k.rsplit("_", 1)[1])
        for run in runs
        for k in run.metrics
        if k.startswith("recall_at_") and k.rsplit("_", 1)[1].isdigit()
    }
    return sorted(ks)


def format_table(runs: list[RunSummary], metric: str) -> str:
    """Runs as rows, sorted by ``metric``: differing params, Recall@K, mAP, epochs, duration."""
    runs = sort_by_metric(runs, metric)
    params = differing_params(runs)
    shown = params[:MAX_PARAM_COLUMNS]
    metric_columns = [f"recall_at_{k}" for k in recall_ks(runs)] + ["mAP"]
    if metric not in metric_columns:
        metric_columns.insert(0, metric)
    header = [
        "#",
        "run",
        "status",
        *shown,
        *[_metric_label(m) for m in metric_columns],
        "best_epoch",
        "epochs",
        "duration",
    ]
    rows = [header]
    for rank, (run, name) in enumerate(zip(runs, display_names(runs)), 1):
        epoch = run.metrics.get("epoch")
        rows.append(
            [
                str(rank),
                name,
                run.status,
                *[_param(run.params.get(k, "-")) for k in shown],
                *[_number(run.metrics.get(m)) for m in metric_columns],
                "-" if epoch is None else str(int(epoch)),
                run.params.get("trainer.epochs", "-"),
                _duration(run.duration_s),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    if len(params) > len(shown):
        lines.append(f"(+{len(params) - len(shown)} more differing params: {', '.join(params[len(shown) :])})")
    return "\n".join(lines)


def plot_comparison(runs: list[RunSummary], metric: str, path, top: int = 3, title: str = "") -> Path:
    """PNG: ``metric`` per run (bars, best on top) and the Recall@K curves of the ``top`` best runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run for run in sort_by_metric(runs, metric) if metric in run.metrics][:40]
    ks = recall_ks(runs)
    figure, (bars, curves) = plt.subplots(
        1, 2, figsize=(13, max(3.5, 0.35 * len(runs) + 1.5)), gridspec_kw={"width_ratios": [3, 2]}
    )
    names = display_names(runs, 45)
    labels = [f"{i}. {name}" for i, name in enumerate(names, 1)]
    values = [run.metrics[metric] for run in runs]
    bars.barh(range(len(runs)), values, color="#4878d0")
    bars.set_yticks(range(len(runs)), labels, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlabel(_metric_label(metric))
    bars.set_xlim(0, max([1.0] + values))
    for y, value in enumerate(values):
        bars.text(value, y, f" {value:.4f}", va="center", fontsize=8)
    bars.set_title(title or f"{_metric_label(metric)} per run ({len(runs)} runs)")
    lowest = 1.0
    for i, run in enumerate(runs[:top], 1):
        points = [(k, run.metrics[f"recall_at_{k}"]) for k in ks if f"recall_at_{k}" in run.metrics]
        if points:
            curves.plot([k for k, _ in points], [v for _, v in points], marker="o", label=f"{i}. {names[i - 1]}")
            lowest = min([lowest] + [v for _, v in points])
    curves.set_xlabel("K")
    curves.set_ylabel("Recall@K")
    if ks:
        curves.set_xticks(ks)
    curves.set_ylim(max(0.0, lowest - 0.05), 1.005)  # close runs stay apart
    curves.grid(alpha=0.3)
    curves.set_title(f"Recall@K of the top {min(top, len(runs))}")
    if runs:
        curves.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic.write_bytes(path, buffer.getvalue(), what="comparison picture")
    return path


def _metric_label(name: str) -> str:
    """``recall_at_1`` -> ``Recall@1``; other names as they are."""
    for prefix, label in (("recall_at_", "Recall@"), ("precision_at_", "Precision@")):
        if name.startswith(prefix):
            return label + name[len(prefix) :]
    return name


def _param(value: str) -> str:
    """A param for the table: long floats (an Optuna trial's 0.29696607676729614) to 4 digits."""
    try:
        number = float(value)
    except ValueError:
        return _shorten(value, 40)
    return f"{number:.4g}" if "." in value and len(value) > 8 else value


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
