"""What a run logs as its MLflow dataset input (the UI's Dataset column): name, digest, source.

The digest is the SHA-256 (first 12 hex digits) of the dataset's list files (their names and
contents): two runs on the same lists show the same digest, a changed list a new one. A dataset
whose lists cannot be found (not written yet, or a folder of images) is digested by what
identifies it: the dataset config, or the folder's file names and sizes.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONTEXT_TAG = "mlflow.data.context"  # the tag MLflow's UI shows beside the dataset (train / eval / ...)
_MAX_FOLDER_FILES = 100_000


def dataset_record(cfg: DictConfig, stage: str) -> dict[str, Any] | None:
    """``{"name", "digest", "source", "context"}`` of the data ``stage`` reads; None if it reads none
    recog can name (e.g. a predict run without ``predict.input``)."""
    if stage in ("predict", "index"):
        spec = OmegaConf.select(cfg, "predict.input") if stage == "predict" else _index_source(cfg)
        if not spec:
            return None
        path = Path(str(spec))
        digest = _digest_files([path]) if path.is_file() else _digest_folder(path)
        return {
            "name": path.stem or path.name or str(path),
            "digest": digest,
            "source": str(path.resolve()),
            "context": stage if stage == "predict" else "gallery",
        }
    node = OmegaConf.select(cfg, "dataset")
    if node is None or "_target_" not in node:
        return None
    kind = str(node._target_).rsplit(".", 1)[-1].replace("load_", "")
    root = Path(str(node.root)) if node.get("root") and not OmegaConf.is_missing(node, "root") else None
    lists = _list_files(node, root)
    if lists:
        digest = _digest_files(lists, root)
    else:
        plain = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
        digest = hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:12]
    name = kind if root is None or root.name in (kind, "") else f"{kind}:{root.name}"
    return {
        "name": name,
        "digest": digest,
        "source": str(root.resolve()) if root else kind,
        "context": {"train": "train", "eval": "eval", "export": "export check"}.get(stage, stage),
    }


def dataset_input(record: dict[str, Any]):
    """The ``mlflow.entities.DatasetInput`` of a ``dataset_record``."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source = json.dumps({"uri": record["source"]})
    dataset = Dataset(name=record["name"], digest=record["digest"], source_type="local", source=source)
    return DatasetInput(dataset=dataset, tags=[InputTag(key=CONTEXT_TAG, value=record["context"])])


def _list_files(node: DictConfig, root: Path | None) -> list[Path]:
    """The dataset's list files: ``*_list`` / ``*_file`` options (relative to ``root``), else the
    ``*.txt`` lists directly in ``root`` (the embedded digits write theirs there)."""
    files = []
    for key in node:
        if str(key).endswith(("_list", "_file")) and not OmegaConf.is_missing(node, key) and node[key]:
            path = Path(str(node[key]))
            files.append(path if path.is_absolute() or root is None else root / path)
    if not files and root is not None and root.is_dir():
        files = sorted(root.glob("*.txt"))
    return [path for path in files if path.is_file()]


def _digest_files(paths: list[Path], root: Path | None = None) -> str:
    digest = hashlib.sha256()
    for path in paths:
        name = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else path.name
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def _digest_folder(folder: Path) -> str:
    digest = hashlib.sha256()
    if folder.is_dir():
        for count, path in enumerate(sorted(p for p in folder.rglob("*") if p.is_file())):
            if count >= _MAX_FOLDER_FILES:
                break
            digest.update(f"{path.relative_to(folder)}\0{path.stat().st_size}\n".encode())
    else:
        digest.update(str(folder).encode())
    return digest.hexdigest()[:12]


def _index_source(cfg: DictConfig) -> str | None:
    """The images a ``stage=index`` run reads: ``index.gallery``, else ``index.add``."""
    return OmegaConf.select(cfg, "index.gallery") or OmegaConf.select(cfg, "index.add")
