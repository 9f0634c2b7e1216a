"""Puts tests/ on sys.path (pytest's default import mode adds a conftest's folder), so that test
modules anywhere below can import the shared helpers here, e.g. ``from image_lists import ...``.

Also turns on ``tests/_site/sitecustomize.py`` for this session and every process it starts: a new
MLflow SQLite store is a copy of one migrated once (xdist workers inherit the controller's setting).
The checkout is on ``PYTHONPATH`` too, as the README's commands have it, and each pytest process that runs
tests starts a warm ``python`` for the commands the tests start (``tests/warm_python``)."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

SITE = Path(__file__).resolve().parent / "_site"
if "RECOG_TEST_MLFLOW_TEMPLATE" not in os.environ:
    os.environ["RECOG_TEST_MLFLOW_TEMPLATE"] = str(Path(tempfile.mkdtemp(prefix="recog-mlflow-")) / "template.db")
ROOT = SITE.parents[1]
for folder in (ROOT, SITE):
    if str(folder) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(SITE))
import mlflow_template  # noqa: E402
import warm_python  # noqa: E402

mlflow_template.install()


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the session's first process: xdist's workers inherit the server
        # First what collecting the tests does anyway: recog's import exports its Paddle settings
        # (GLOG_minloglevel, ...), which the commands the tests start inherit and the server must have too.
        import recog  # noqa: F401

        warm_python.start()


def pytest_unconfigure(config):
    warm_python.stop()


MLFLOW_REQUEST_SETTINGS = {
    name: os.environ.get(name) for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
}


def _reset_mlflow_request_settings():
    for name, value in MLFLOW_REQUEST_SETTINGS.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _mlflow_request_settings_as_the_session_found_them():
    """A stage run in this process (also in a module fixture) exports MLflow's request settings
    (recog.tracking.store): the commands later tests start would take them for the user's (and run
    in a fresh interpreter). Each test starts and ends with the session's own values."""
    _reset_mlflow_request_settings()
    yield
    _reset_mlflow_request_settings()
