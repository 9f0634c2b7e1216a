"""Puts tests/ on sys.path (pytest's default import mode adds a conftest's folder), so that test
modules anywhere below can import the shared helpers here, e.g. ``from commands import cli`` or
``from image_lists import ...``. The checkout is on ``PYTHONPATH`` too, as the README's commands
have it, for the processes the tests start (tests/commands.py says which tests start one)."""

import gc
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def pytest_collection_finish(session):
    _freeze_survivors()


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish(nodeid, location):
    _freeze_survivors()


def _freeze_survivors():
    """What is alive after collection and after each test (imported modules, Paddle's and MLflow's
    registries, module fixtures) moves out of the cyclic garbage collector's view (``gc.freeze``).
    A test process holds millions of such objects, and every full collection would traverse them
    all again (in a worker that has run other tests, up to half of a test's CPU time). Objects a test
    creates are collected as usual; frozen ones are still freed by reference counting (a frozen
    reference cycle stays until the process ends)."""
    gc.collect()
    gc.freeze()


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
    (recog.tracking.store): the commands later tests start would take them for the user's. Each
    test starts and ends with the session's own values."""
    _reset_mlflow_request_settings()
    yield
    _reset_mlflow_request_settings()


@pytest.fixture()
def run_cli(capfd):
    """``run_cli(*args)``: ``python run.py ARGS`` in this process (tests/commands.py ``cli``), a
    ``CompletedProcess`` with its exit status and output."""
    from commands import cli

    return lambda *args: cli(*args, capfd=capfd)


@pytest.fixture()
def sigint_default():
    """SIGINT with Python's default handler (``KeyboardInterrupt``), as in a process started from a
    terminal, whatever this process inherited (a ``cmd &`` job of a non-interactive shell inherits it
    ignored); the previous handler is put back afterwards. For tests that send SIGINT to this process."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``(export_dir, model, cfg)``: a random-weight PP-LCNet x0.25, 32 px, FC neck to 24, checked on
    random input; built once per test process and never written to (the predictor and stage=predict
    tests; no dataset, no MLflow)."""
    import numpy as np

    import recog
    from recog.inference.export import export_model

    root = tmp_path_factory.mktemp("export")
    cfg = recog.compose(
        [
            "backbone.scale=0.25",
            "data.image_size=32",
            "neck.embedding_size=24",
            "head.class_num=5",
            f"paths.output_root={root}",
        ]
    )
    model = recog.build_model(cfg)
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    export_model(model, cfg, root / "export", images, cpu_onednn="full")  # no probe: quick
    return root / "export", model, cfg
