"""Compare MLflow runs: a table sorted by a metric, and a PNG plot.

Usage:
    python scripts/compare_runs.py [--experiment NAME] [--sweep PARENT_RUN_ID] [--metric recall_at_1]
        [--tracking-uri URI] [--output PNG] [--top 3] [--stage train]

Rows are the experiment's training runs (``--sweep``: the child runs of that sweep's parent run),
best first: the params whose values differ between the runs, Recall@K, mAP, the best epoch, the
epochs trained and the duration. The PNG shows the metric per run and the Recall@K curves of the
``--top`` runs; with ``--sweep`` it is also logged to the parent run (``comparison/``). The store
defaults to ``$MLFLOW_TRACKING_URI``, else ``outputs/mlflow.db`` (``make ui`` shows the same runs).
"""

import argparse
import os
import sys
from pathlib import Path

import recog  # noqa: F401  (quiets Paddle and friends)
from recog.errors import RecogError


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="recog", help="experiment name (default: recog)")
    parser.add_argument("--sweep", metavar="RUN_ID", help="only the child runs of this sweep's parent run")
    parser.add_argument(
        "--metric", default="recall_at_1", help="sort by this metric, best first (default: recall_at_1)"
    )
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<--output-root>/mlflow.db)",
    )
    parser.add_argument("--output-root", default="outputs", help="recog's paths.output_root (default: outputs)")
    parser.add_argument("--output", help="PNG to write (default: <--output-root>/comparison[_<sweep>].png)")
    parser.add_argument("--top", type=int, default=3, help="Recall@K curves of this many best runs (default: 3)")
    parser.add_argument("--stage", default="train", help="runs of this recog stage (default: train)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from recog.tracking.compare import format_table, load_runs, plot_comparison

    args = parse_args(argv)
    uri = args.tracking_uri
    if not uri:
        database = Path(args.output_root).resolve() / "mlflow.db"
        if not database.is_file():
            raise RecogError(f"no MLflow store at {database}: train something first, or pass --tracking-uri")
        uri = f"sqlite:///{database}"
    client = MlflowClient(uri)
    try:
        if args.sweep:
            parent = client.get_run(args.sweep)
            experiment_ids, title = [parent.info.experiment_id], f"sweep '{parent.info.run_name}'"
        else:
            experiment = client.get_experiment_by_name(args.experiment)
            if experiment is None:
                names = ", ".join(e.name for e in client.search_experiments())
                raise RecogError(f"no experiment {args.experiment!r} in {uri}; experiments: {names or 'none'}")
            experiment_ids, title = [experiment.experiment_id], f"experiment '{args.experiment}'"
    except MlflowException as error:
        raise RecogError(f"{uri}: {str(error).splitlines()[0]}") from None
    runs = load_runs(client, experiment_ids, parent_run_id=args.sweep, stage=args.stage or None)
    if not runs:
        raise RecogError(f"no {args.stage} runs in {title} ({uri})")
    print(f"{len(runs)} {args.stage} run(s) of {title}, by {args.metric}:")
    print(format_table(runs, args.metric))
    suffix = f"_{args.sweep[:8]}" if args.sweep else ""
    output = Path(args.output or Path(args.output_root) / f"comparison{suffix}.png")
    plot_comparison(runs, args.metric, output, top=args.top, title=f"{title}: {len(runs)} runs")
    print(f"plot: {output}")
    if args.sweep:
        client.log_artifact(args.sweep, str(output), "comparison")
        print(f"logged to the parent run {args.sweep} (artifacts/comparison/{output.name})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RecogError as error:
        print(f"compare_runs: {error}", file=sys.stderr)
        sys.exit(2)
