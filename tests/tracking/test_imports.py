"""No import circle among the tracking modules: each imports only modules "above" it.

Checked two ways: statically (every import statement, also those inside functions, read with
``ast``: the graph of recog.tracking modules must have no cycle), and dynamically (each module
imported first, alone, in a fresh interpreter).
"""

import ast
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


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_each_tracking_module_imports_first_and_alone(module):
    result = subprocess.run([sys.executable, "-c", f"import recog.tracking.{module}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                                         "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
