"""The check recog makes on an MLflow Model folder before MLflow reads it: every file by its SHA-256,
and an MLmodel that names recog's loader and nothing MLflow would execute."""

import logging
import subprocess

import pytest
from serving import make_serve

from recog.tracking import model_folder
from recog.utils.manifest import IntegrityError

MLMODEL = """\
artifact_path: file:///store/models/m-1/artifacts
flavors:
  python_function:
    code: null
    data: data/export
    env:
      conda: conda.yaml
      virtualenv: python_env.yaml
    loader_module: recog.tracking.mlflow_model
    python_version: 3.11.7
    streamable: false
is_signature_from_type_hint: true
mlflow_version: 3.17.2
model_id: m-1
"""
LOADER, CODE = "recog.tracking.mlflow_model", "    code: null"


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "model"
    (root / "data" / "export").mkdir(parents=True)
    (root / "MLmodel").write_text(MLMODEL)
    (root / "requirements.txt").write_text("numpy==2.0\n")
    (root / "data" / "export" / "inference.pdiparams").write_bytes(b"weights")
    model_folder.write_manifest(root)
    return root


def test_a_folder_as_logged_passes_and_mlflows_registry_note_is_allowed(folder):
    model_folder.verify(folder)
    (folder / "registered_model_meta").write_text("model_name: shop\nmodel_version: '1'\n")
    model_folder.verify(folder)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda f: (f / "MLmodel").write_text(MLMODEL.replace("recog.tracking.mlflow_model", "os")),
            "MLmodel was altered",
        ),
        (
            lambda f: (f / "data" / "export" / "inference.pdiparams").write_bytes(b"other"),
            "inference.pdiparams was altered",
        ),
        (lambda f: (f / "data" / "export" / "extra.py").write_text("x"), "extra.py is not listed"),
        (lambda f: (f / "requirements.txt").unlink(), "requirements.txt is missing"),
        (lambda f: (f / "recog_model.json").write_text("{"), "recog_model.json is not valid JSON"),
        (lambda f: (f / "recog_model.json").write_text('{"format": "x"}'), "not a recog MLflow Model manifest"),
    ],
)
def test_a_changed_added_or_missing_file_is_refused(folder, edit, message):
    edit(folder)
    with pytest.raises(IntegrityError, match=message):
        model_folder.verify(folder)


@pytest.mark.parametrize(
    "mlmodel, message",
    [
        (MLMODEL.replace(LOADER, "evil_module"), "names the loader 'evil_module'"),
        (MLMODEL.replace(CODE, "    code: code"), r"adds code paths 'code' to sys.path"),
        (
            MLMODEL.replace("    code: null", "    code: null\n    python_model: python_model.pkl"),
            r"would execute or load: \['python_model'\]",
        ),
        (MLMODEL.replace("    code: null", "    code: null\n    model_code_path: model.py"), "model_code_path"),
        (
            MLMODEL.replace("flavors:", "flavors:\n  sklearn:\n    pickled_model: model.pkl"),
            r"python_function alone, got \['python_function', 'sklearn'\]",
        ),
        (MLMODEL.replace("data/export", "../../etc"), "data must be one of"),
        ("a: &x [1, 2]\nb: *x\n", "uses YAML aliases"),
        ("flavors: [unclosed\n", "not valid YAML"),
    ],
)
def test_an_mlmodel_that_would_run_anything_but_recogs_loader_is_refused(folder, mlmodel, message):
    (folder / "MLmodel").write_text(mlmodel)
    model_folder.write_manifest(folder)  # consistent manifest: the MLmodel check itself refuses
    with pytest.raises(IntegrityError, match=message):
        model_folder.verify(folder)


def test_a_folder_without_a_manifest_gets_its_mlmodel_checked_and_a_warning(folder, caplog):
    (folder / "recog_model.json").unlink()
    with caplog.at_level(logging.WARNING):
        model_folder.verify(folder)
    assert "only its MLmodel is checked" in caplog.text
    (folder / "MLmodel").write_text(MLMODEL.replace("recog.tracking.mlflow_model", "evil_module"))
    with pytest.raises(IntegrityError, match="evil_module"):
        model_folder.verify(folder)


def test_the_command_make_serve_runs_reports_a_refused_folder_with_exit_code_2(folder, tmp_path, capsys):
    (folder / "MLmodel").write_text(MLMODEL.replace("recog.tracking.mlflow_model", "evil_module"))
    assert model_folder.main([str(folder), str(tmp_path / "copy")]) == 2
    assert "recog: " in capsys.readouterr().err
    assert model_folder.main([str(tmp_path / "nowhere"), str(tmp_path / "copy2")]) == 2
    assert "cannot download the MLflow Model" in capsys.readouterr().err


@pytest.mark.slow  # make and a Python process
def test_make_serve_refuses_a_tampered_model_before_serving_it(folder, tmp_path):
    (folder / "MLmodel").write_text(MLMODEL.replace(LOADER, "evil_module"))
    result = subprocess.run(make_serve(str(folder), tmp_path, 5999), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "MLmodel was altered after the model was logged" in result.stderr
    assert "serving" not in result.stdout
