"""Send the MLflow calls a run kept locally (the store was unreachable) to MLflow.

Usage: python scripts/replay_mlflow.py <run dir> [--tracking-uri URI]

``<run dir>/mlflow_pending.jsonl`` is written when the tracking store cannot be reached
(mid-run, or at start with ``mlflow.required=false``): params, every metric with its step and
time, tags, artifacts (the files in the run dir) and the final status. The replay goes to the URI
the run used unless ``--tracking-uri`` is given; a run that never reached the store is created.
Interrupted replays continue where they stopped; a finished one renames the record to
``mlflow_pending.replayed-<time>.jsonl``.
"""

import argparse
import sys

import recog  # noqa: F401  (quiets Paddle and friends)
from recog.errors import RecogError


def main(argv=None) -> int:
    from recog.tracking.local_record import replay
    from recog.tracking.mlflow_tracker import short_error, tracking_errors

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="the run directory holding mlflow_pending.jsonl")
    parser.add_argument("--tracking-uri", help="replay into this store instead of the one the run used")
    args = parser.parse_args(argv)
    try:
        run_id = replay(args.run_dir, args.tracking_uri)
    except tracking_errors() as error:
        raise RecogError(
            f"MLflow failed during the replay ({short_error(error)}); what was sent so far is noted "
            f"in {args.run_dir}/mlflow_pending.progress.json: run this again once the store is back"
        ) from None
    print(f"replayed {args.run_dir} into MLflow run {run_id}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RecogError as error:
        print(f"replay_mlflow: {error}", file=sys.stderr)
        sys.exit(2)
