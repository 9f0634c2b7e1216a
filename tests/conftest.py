"""Puts tests/ on sys.path (pytest's default import mode adds a conftest's folder), so that test
modules anywhere below can import the shared helpers here, e.g. ``from image_lists import ...``.

Also turns on ``tests/_site/sitecustomize.py`` for this session and every process it starts: a new
MLflow SQLite store is a copy of one migrated once (xdist workers inherit the controller's setting)."""

import os
import sys
import tempfile
from pathlib import Path

SITE = Path(__file__).resolve().parent / "_site"
if "RECOG_TEST_MLFLOW_TEMPLATE" not in os.environ:
    os.environ["RECOG_TEST_MLFLOW_TEMPLATE"] = str(Path(tempfile.mkdtemp(prefix="recog-mlflow-")) / "template.db")
if str(SITE) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(SITE))
import mlflow_template  # noqa: E402

mlflow_template.install()
