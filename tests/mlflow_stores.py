"""New MLflow SQLite stores for the tests without MLflow's schema migrations each time.

MLflow builds a new SQLite store by running its ~60 schema migrations (about 1 s of CPU, 2 s on 2
busy cores); it migrates only an empty database and opens an existing one of its schema version as
it is. ``new_store(root)`` copies one store this test process migrated once (``template()``) to
``root/mlflow.db``, where a run with ``paths.output_root=root`` tracks by default (any other path:
``new_store(path=...)``). For the tests that track runs into fresh folders; the tests about creating
a store let MLflow create it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

_template: Path | None = None


def template() -> Path:
    """A store MLflow created and migrated, once per test process."""
    global _template
    if _template is None:
        from mlflow.tracking import MlflowClient

        path = Path(tempfile.mkdtemp(prefix="recog-mlflow-template-")) / "mlflow.db"
        MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates it
        _template = path
    return _template


def new_store(root=None, path=None) -> str:
    """Copies the template to ``path`` (default ``root/mlflow.db``) unless a store is there already;
    returns its tracking URI."""
    target = Path(path) if path is not None else Path(root) / "mlflow.db"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template(), target)
    return f"sqlite:///{target}"
