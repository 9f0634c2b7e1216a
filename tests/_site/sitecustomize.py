"""On ``PYTHONPATH`` in the test session (see tests/conftest.py): every Python process the tests start
copies new MLflow stores from a template (``mlflow_template.py``)."""

import os

if os.environ.get("RECOG_TEST_MLFLOW_TEMPLATE"):
    import mlflow_template

    mlflow_template.install()
