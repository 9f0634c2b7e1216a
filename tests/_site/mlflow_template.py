"""Test-only speed-up for the test session and every process it starts (through ``sitecustomize.py``).

MLflow builds a new SQLite store by running its ~60 schema migrations: 1.7 s on this machine, paid
by every test that tracks into a fresh ``tmp_path``. With ``RECOG_TEST_MLFLOW_TEMPLATE`` set (by
``tests/conftest.py``), the first store of the session is migrated for real into that file and every
later new store is a SQLite backup of it; MLflow's own schema check then runs on the copy as usual.
"""

import fcntl
import importlib.abc
import importlib.machinery
import os
import sqlite3
import sys

_MODULE = "mlflow.store.db.utils"


def _patch(utils) -> None:
    create_tables = utils._initialize_tables

    def initialize_tables(engine):
        template = os.environ.get("RECOG_TEST_MLFLOW_TEMPLATE")
        if not template or engine.url.get_backend_name() != "sqlite":
            return create_tables(engine)
        _ensure_template(utils, create_tables, template)
        raw = engine.raw_connection()
        try:
            with sqlite3.connect(template) as source:
                source.backup(raw.driver_connection)
        finally:
            raw.close()

    initialize_tables.from_template = True
    utils._initialize_tables = initialize_tables


def _ensure_template(utils, create_tables, template: str) -> None:
    if os.path.exists(template):
        return
    with open(template + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(template):
            return
        import sqlalchemy

        partial = f"{template}.{os.getpid()}.tmp"
        engine = sqlalchemy.create_engine(f"sqlite:///{partial}")
        create_tables(engine)
        engine.dispose()
        os.replace(partial, template)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if _MODULE in sys.modules:
        if not getattr(sys.modules[_MODULE]._initialize_tables, "from_template", False):
            _patch(sys.modules[_MODULE])
    elif not any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
