from recog.tracking.mlflow_tracker import MlflowTracker, flatten_config, tracking_uri

__all__ = ["MlflowTracker", "flatten_config", "tracking_uri"]
