"""No import circle among the tracking modules: each imports only modules "above" it.

Checked two ways: statically (every import statement, also those inside functions, read with
``ast``: the graph of recog.tracking modules must have no cycle), and dynamically (each module
imported first, alone: in a process of its own where no recog module is loaded yet).
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "recog" / "tracking"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def tracking_imports(module: str) -> set:
    """The recog.tracking modules ``module`` imports anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "recog.tracking":
                found.update(alias.name for alias in node.names if alias.name in MODULES)
            elif node.module.startswith("recog.tracking."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("recog.tracking."))
    return found - {module}


def test_the_tracking_import_graph_has_no_cycle():
    graph = {module: tracking_imports(module) for module in MODULES}
    assert graph["sweep_job"] <= {"store"} and "mlflow_tracker" not in graph["sweep_job"]
    assert "sweep_parent" not in graph["mlflow_tracker"] and "sweep" not in graph["mlflow_tracker"]
    done, order = set(), []

    def visit(module, path):
        assert module not in path, f"import circle: {' -> '.join(path + [module])}"
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, path + [module])
        done.add(module)
        order.append(module)

    for module in MODULES:
        visit(module, [])
    assert order.index("store") < order.index("sweep_job") < order.index("mlflow_tracker") < order.index("sweep_parent")


# One fresh interpreter imports Paddle (a second of the ~1.2 s each module took in an interpreter of
# its own) and then forks a child per module; each child checks that no recog module is loaded, imports
# its module and reports "ok" or the traceback. An import circle among recog's modules fails the same
# way with third-party packages already loaded.
_FORK_EACH = r"""
import json, os, sys, traceback
import paddle  # noqa: F401
results = {}
for module in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            loaded = sorted(m for m in sys.modules if m == "recog" or m.startswith("recog."))
            assert not loaded, f"recog modules loaded before the import: {loaded}"
            __import__(f"recog.tracking.{module}")
            message = "ok"
        except BaseException:
            message = traceback.format_exc()
        os.write(write, message.encode()[-4000:])
        os._exit(0)
    os.close(write)
    chunks = []
    while True:
        chunk = os.read(read, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    results[module] = b"".join(chunks).decode() or f"child ended with status {status}"
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def imported_alone():
    """module -> "ok" or why importing it first and alone failed."""
    result = subprocess.run(
        [sys.executable, "-c", _FORK_EACH, *MODULES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.xdist_group("tracking_imports")  # one worker runs the fixture's process once
@pytest.mark.parametrize("module", MODULES)
def test_each_tracking_module_imports_first_and_alone(imported_alone, module):
    assert imported_alone[module] == "ok", imported_alone[module]
