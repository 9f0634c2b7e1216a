"""An MLflow Model folder recog wrote, checked before MLflow loads anything from it.

What MLflow itself executes: ``mlflow.pyfunc.load_model(folder)`` reads ``MLmodel`` and imports
the module its ``python_function`` flavor names as ``loader_module`` (a model logged with
``python_model=`` instead has its ``python_model.pkl`` unpickled with cloudpickle; ``code`` paths
are put on ``sys.path``; a models-from-code ``model_code_path`` file is run), all before any
recog code runs. ``mlflow models serve`` without ``--env-manager local`` also installs the
folder's ``requirements.txt`` / ``conda.yaml`` into a new environment. So a folder edited to name
another loader runs that code on load: MLflow's trust model.

recog checks the folder first (``verify``), and loads only a folder that passed:

* ``recog_model.json`` (written last when the model is logged) lists every other file of the
  folder (``MLmodel`` included) with its size and SHA-256: a missing, altered or added file is
  an ``IntegrityError`` naming it (MLflow's own ``registered_model_meta``, written when a
  ``models:/name/version`` URI is downloaded, is the one file allowed beside them);
* ``MLmodel`` itself: one flavor, ``python_function``, whose loader is recog's
  (``recog.tracking.mlflow_model``), with no ``code`` paths, no pickled ``python_model``, no
  model code file, and its data inside the folder; YAML aliases are refused (no "billion laughs").

``load(uri)`` downloads a model (``runs:/``, ``models:/``, a folder), verifies the local copy and
loads that copy; ``make serve`` runs ``python -m recog.tracking.model_folder URI DEST``, which
verifies a downloaded copy in DEST and serves DEST. A folder logged before these manifests
existed is checked for ``MLmodel`` only, with a warning.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from recog.errors import ConfigError
from recog.utils.manifest import IntegrityError, sha256_of

log = logging.getLogger(__name__)

MANIFEST_FILE = "recog_model.json"
FORMAT, FORMAT_VERSION = "recog-mlflow-model", 1
LOADER_MODULE = "recog.tracking.mlflow_model"
DATA_PATHS = ("data/export", "data/search")  # a feature model, a search model
PYFUNC_KEYS = {"loader_module", "data", "env", "python_version", "code", "streamable"}
MLFLOW_EXTRA_FILES = {"registered_model_meta"}  # written by MLflow when it downloads models:/name/version
MAX_MLMODEL_BYTES = 1 << 20


def write_manifest(folder) -> dict:
    """Write ``folder/recog_model.json`` listing every other file (call it last)."""
    folder = Path(folder)
    files = {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": sha256_of(path)}
        for path in sorted(p for p in folder.rglob("*") if p.is_file())
        if path.relative_to(folder).as_posix() != MANIFEST_FILE
    }
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": files}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def verify(folder) -> None:
    """``IntegrityError`` unless ``folder`` is an MLflow Model as recog logged it (module docstring)."""
    folder = Path(folder)
    if not (folder / "MLmodel").is_file():
        raise IntegrityError(f"{folder} holds no MLmodel: not an MLflow Model folder")
    path = folder / MANIFEST_FILE
    if path.is_file():
        _check_files(folder, _read_manifest(path))
    else:
        log.warning(
            "%s has no %s (logged by a recog version without it): only its MLmodel is checked; "
            "log the model again (stage=export) to cover every file",
            folder,
            MANIFEST_FILE,
        )
    check_mlmodel(folder / "MLmodel")


def check_mlmodel(path: Path) -> dict:
    """The parsed ``MLmodel``; ``IntegrityError`` when it would make MLflow run anything but recog's loader."""
    import yaml

    if path.stat().st_size > MAX_MLMODEL_BYTES:
        raise IntegrityError(f"{path} is over {MAX_MLMODEL_BYTES} bytes: not an MLmodel recog wrote")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise IntegrityError(f"{path} uses YAML aliases: not an MLmodel recog wrote")
        content = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise IntegrityError(f"{path} is not valid YAML ({str(error)[:200]})") from None
    flavors = content.get("flavors") if isinstance(content, dict) else None
    if not isinstance(flavors, dict) or set(flavors) != {"python_function"}:
        found = sorted(flavors) if isinstance(flavors, dict) else flavors
        raise IntegrityError(f"{path}: flavors must be python_function alone, got {found}")
    pyfunc = flavors["python_function"]
    if not isinstance(pyfunc, dict) or set(pyfunc) - PYFUNC_KEYS:
        extra = sorted(set(pyfunc) - PYFUNC_KEYS) if isinstance(pyfunc, dict) else pyfunc
        raise IntegrityError(f"{path}: the python_function flavor has entries MLflow would execute or load: {extra}")
    if pyfunc.get("loader_module") != LOADER_MODULE:
        raise IntegrityError(
            f"{path} names the loader {pyfunc.get('loader_module')!r}: mlflow.pyfunc.load_model would import "
            f"it; recog's models are loaded by {LOADER_MODULE} alone"
        )
    if pyfunc.get("code") is not None:
        raise IntegrityError(f"{path} adds code paths {pyfunc['code']!r} to sys.path: refused")
    if pyfunc.get("data") not in DATA_PATHS:
        raise IntegrityError(f"{path}: data must be one of {', '.join(DATA_PATHS)}, got {pyfunc.get('data')!r}")
    return content


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise IntegrityError(f"{path} is not valid JSON ({str(error)[:200]})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (
        manifest.get("format") != FORMAT
        or manifest.get("format_version") != FORMAT_VERSION
        or not isinstance(files, dict)
        or not all(
            isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("sha256"), str)
            for e in files.values()
        )
    ):
        raise IntegrityError(f"{path} is not a recog MLflow Model manifest (format {FORMAT} {FORMAT_VERSION})")
    for name in files:
        if name.startswith("/") or ".." in Path(name).parts:
            raise IntegrityError(f"{path} lists a file outside the folder: {name!r}")
    return manifest


def _check_files(folder: Path, manifest: dict) -> None:
    listed = manifest["files"]
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}
    added = sorted(present - set(listed) - {MANIFEST_FILE} - MLFLOW_EXTRA_FILES)
    if added:
        raise IntegrityError(
            f"{folder / added[0]} is not listed in {folder / MANIFEST_FILE}: it was added after the model was "
            "logged; log the model again, or download it again from where it came from"
        )
    for name, entry in listed.items():
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise IntegrityError(f"{path} is missing (or not a regular file): the MLflow Model {folder} is incomplete")
        if path.stat().st_size != entry["size"] or sha256_of(path) != entry["sha256"]:
            raise IntegrityError(
                f"{path} was altered after the model was logged (size or SHA-256 differ from {MANIFEST_FILE}): "
                "log the model again, or download it again from where it came from"
            )


def download_verified(uri: str, destination) -> Path:
    """Download the MLflow Model ``uri`` (``runs:/``, ``models:/``, a folder) into ``destination``
    (an empty or new folder) and verify the copy; returns the copy's folder."""
    import mlflow

    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    if any(destination.iterdir()):
        raise ConfigError(f"{destination} is not empty: give a new or empty folder to download the model into")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination)))
    verify(local)
    return local


def load(uri: str, destination=None):
    """``mlflow.pyfunc.load_model`` of a verified local copy of ``uri`` (in ``destination``, or a
    temporary folder kept for the model's lifetime)."""
    import tempfile

    import mlflow

    if destination is None:
        destination = tempfile.mkdtemp(prefix="recog-model-")
    local = download_verified(uri, destination)
    return mlflow.pyfunc.load_model(str(local))


def main(argv: list[str]) -> int:
    """``python -m recog.tracking.model_folder URI DEST``: download, verify, print the local folder."""
    import recog  # noqa: F401  (quiets Paddle before MLflow imports anything)

    if len(argv) != 2:
        print("usage: python -m recog.tracking.model_folder <model URI> <empty folder>", file=sys.stderr)
        return 2
    try:
        local = download_verified(argv[0], argv[1])
    except (IntegrityError, ConfigError) as error:
        print(f"recog: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - MLflow's errors for an unknown run, model or store
        print(f"recog: cannot download the MLflow Model {argv[0]}: {str(error).splitlines()[0][:300]}", file=sys.stderr)
        return 2
    print(local)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
