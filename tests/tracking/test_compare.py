"""The comparison table and plot of recog/tracking/compare.py on hand-made runs."""

import cv2
import pytest

from recog.tracking.compare import RunSummary, differing_params, format_table, plot_comparison, sort_by_metric


def run(name, recall1, margin, start, status="FINISHED", **metrics):
    values = (
        {}
        if recall1 is None
        else {"recall_at_1": recall1, "recall_at_5": min(1.0, recall1 + 0.2), "mAP": 0.5, "epoch": 2.0, **metrics}
    )
    return RunSummary(
        run_id=name * 4,
        name=name,
        status=status,
        params={"head.margin": margin, "seed": "0", "trainer.epochs": "3"},
        metrics=values,
        start_time=start,
        end_time=start + 90_000,
    )


RUNS = [
    run("a", 0.5, "0.1", 1),
    run("b", 0.75, "0.2", 2),
    run("c", None, "0.3", 3, status="FAILED"),
    run("d", 0.75, "0.29696607676729614", 4),
]


def test_sorted_best_first_ties_by_start_failed_last():
    assert [r.name for r in sort_by_metric(RUNS, "recall_at_1")] == ["b", "d", "a", "c"]


def test_table_shows_only_differing_params_and_the_metrics():
    assert differing_params(RUNS) == ["head.margin"]
    lines = format_table(RUNS, "recall_at_1").splitlines()
    header = lines[0].split()
    assert header[:4] == ["#", "run", "status", "head.margin"] and "seed" not in header
    assert {"Recall@1", "Recall@5", "mAP", "epochs", "duration"} <= set(header)
    rows = [line.split() for line in lines[2:]]
    assert [row[1] for row in rows] == ["b", "d", "a", "c"]
    assert rows[1][3] == "0.297"  # an Optuna trial's long float, shortened
    assert rows[0][header.index("Recall@1")] == "0.7500" and rows[0][header.index("duration")] == "1m30s"
    assert rows[3][header.index("Recall@1")] == "-"


@pytest.mark.slow
def test_plot_writes_a_png(tmp_path):
    path = plot_comparison(RUNS, "recall_at_1", tmp_path / "sub" / "plot.png", top=2)
    picture = cv2.imread(str(path))
    assert picture is not None and picture.shape[1] > picture.shape[0] > 100


def test_failed_runs_go_last_even_with_better_metrics():
    runs = RUNS + [
        run("e", 0.99, "0.4", 5, status="FAILED"),
        run("f", 0.98, "0.5", 6, status="KILLED"),
        run("g", 0.97, "0.6", 7, status="RUNNING"),
    ]
    assert [r.name for r in sort_by_metric(runs, "recall_at_1")] == ["b", "d", "a", "g", "f", "e", "c"]
    rows = [line.split() for line in format_table(runs, "recall_at_1").splitlines()[2:]]
    assert [row[2] for row in rows][-2:] == ["FAILED", "FAILED"]


def test_runs_with_the_same_name_are_told_apart():
    same = [
        RunSummary(
            run_id=f"{i}f3a9c0d2e1b",
            name="pplcnet/fc/arcmargin/ce",
            status="FINISHED",
            params={"head.margin": str(i)},
            metrics={"recall_at_1": 0.5 + i / 10},
            start_time=i,
            end_time=i + 1,
        )
        for i in range(2)
    ]
    for i in range(2):  # names that differ only past the column's width
        same.append(
            RunSummary(
                run_id=f"{i}a{i}b{i}c{i}d",
                name="x" * 50 + str(i),
                status="FINISHED",
                params={"head.margin": str(i)},
                metrics={"recall_at_1": 0.1},
                start_time=9,
                end_time=10,
            )
        )
    lines = format_table(same, "recall_at_1").splitlines()
    start, stop = lines[0].index("run"), lines[0].index("status")
    names = [line[start:stop].strip() for line in lines[2:]]
    assert len(set(names)) == 4, names
    assert "1f3a9c0d" in format_table(same, "recall_at_1") and "0f3a9c0d" in format_table(same, "recall_at_1")
