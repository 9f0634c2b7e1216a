from recog.tracking.mlflow_tracker import MlflowTracker, check_reachable, flatten_config, tracking_uri

__all__ = ["MlflowTracker", "check_reachable", "flatten_config", "tracking_uri"]
