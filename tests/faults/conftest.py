"""Fixtures: a real ``mlflow server`` (see mlflow_server.py), always stopped afterwards."""

import signal

import pytest
from mlflow_server import MlflowServer, free_port


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One server for the module's tests."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"), free_port())
    try:
        yield server.start()
    finally:
        server.kill(signal.SIGTERM)
