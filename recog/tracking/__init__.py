"""MLflow tracking. Modules by who runs them, each importing only those above it:

store.py (URI, request settings, errors, experiment) <- local_record.py <- sweep_job.py (inside a
sweep job) <- mlflow_tracker.py (one run per stage) <- sweep_parent.py (the sweep's parent run);
datasets.py, mlflow_model.py and registry.py are used by the tracker and the parent; sweep.py
re-exports the sweep names. tests/tracking/test_imports.py checks that no import circle exists.
"""

from recog.tracking.mlflow_tracker import MlflowTracker, collect_runs, flatten_config
from recog.tracking.store import check_reachable, tracking_uri

__all__ = ["MlflowTracker", "check_reachable", "collect_runs", "flatten_config", "tracking_uri"]
