"""Checkpoints as safetensors (no pickle) plus JSON, written atomically.

A checkpoint is a directory::

    model.safetensors       model.state_dict()
    loss.safetensors        the loss's state (e.g. CenterLoss's centres), when it has one
    optimizer.safetensors   the optimizer's tensors (momentum buffers, ...), when saved
    state.json              everything else: epoch, metrics, LR-schedule state, MLflow run id; the
                            train stage's checkpoints/last adds the step within the epoch, the
                            process count and every process's RNG state (exact resume)
    config.yaml             the resolved config that built the model
    manifest.json           size and SHA-256 of each file above (``recog.utils.manifest``), written last

Every loader below checks the file it reads against ``manifest.json`` first: a missing, truncated
or altered file is an ``IntegrityError`` (a ``RecogError``) naming the file; ``state.json``'s
fields are type-checked. A checkpoint without a manifest (older recog) loads with a warning.

Written atomically as a whole (``recog.utils.atomic.replacing_dir``): every file goes into a
temp directory ``.<name>.tmp-<pid>-<tag>`` beside the checkpoint, is fsync'ed, and the directory
is swapped in (one ``renameat2(RENAME_EXCHANGE)`` on Linux; else ``<name>`` -> ``.<name>.old``,
temp -> ``<name>``); the previous version is removed last. A process killed at any moment leaves a
complete checkpoint: ``<name>``, or ``.<name>.old`` when killed between the two fallback renames,
which the loaders below read (``atomic.readable_dir``) and the next save puts back. A failed write
(disk full, permission denied) raises ``atomic.StorageError`` naming the checkpoint and the OS
reason, and leaves the previous checkpoint byte for byte as it was.
"""

import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import paddle
from omegaconf import DictConfig, OmegaConf
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes

from recog.errors import RecogError
from recog.utils import atomic, manifest
from recog.utils.manifest import IntegrityError

MODEL_FILE, LOSS_FILE, OPTIMIZER_FILE = "model.safetensors", "loss.safetensors", "optimizer.safetensors"
STATE_FILE, CONFIG_FILE = "state.json", "config.yaml"
KIND, WHAT = "checkpoint", "checkpoint"
# state.json: the fields recog reads back and their JSON types (None: null allowed).
STATE_FIELDS = {
    "epoch": int,
    "step": int,
    "step_in_epoch": int,
    "best": (dict, None),
    "mlflow_run_id": (str, None),
    "finished": bool,
    "world_size": int,
    "rng": (list, None),
    "optimizer": dict,
    "grad_scaler": (dict, None),
    "skipped_steps": int,
}
STATE_REQUIRED = ("epoch", "step")


def save_checkpoint(
    path,
    model: paddle.nn.Layer,
    cfg: DictConfig,
    state: dict[str, Any],
    optimizer: paddle.optimizer.Optimizer | None = None,
    loss: paddle.nn.Layer | None = None,
    extra: dict[str, paddle.nn.Layer] | None = None,
) -> Path:
    """Write the checkpoint into a temporary sibling directory, then swap it into place. ``extra``:
    more layers whose weights it holds, ``<name>.safetensors`` each (``load_extra_weights``).

    Raises ``atomic.StorageError`` (a ``RecogError``) when the disk refuses; the previous
    checkpoint at ``path`` is then unchanged.
    """
    path = Path(path)
    state = dict(state)
    with atomic.replacing_dir(path, what="checkpoint") as tmp:
        atomic.write_file(tmp / MODEL_FILE, safetensors_bytes(_to_numpy(model.state_dict())))
        if loss is not None and loss.state_dict():
            atomic.write_file(tmp / LOSS_FILE, safetensors_bytes(_to_numpy(loss.state_dict())))
        for name, layer in (extra or {}).items():
            atomic.write_file(tmp / f"{name}.safetensors", safetensors_bytes(_to_numpy(layer.state_dict())))
        if optimizer is not None:
            tensors, rest = _split_tensors(optimizer.state_dict())
            tensors = _rename_accumulators(tensors, _runtime_to_structured(model, loss))
            atomic.write_file(tmp / OPTIMIZER_FILE, safetensors_bytes(tensors))
            state["optimizer"] = rest
        atomic.write_file(tmp / STATE_FILE, json.dumps(state, indent=2, default=_json_default))
        atomic.write_file(tmp / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
        manifest.write_manifest(tmp, KIND)  # last: lists every file above
    return path


def has_checkpoint(path) -> bool:
    """Whether ``path`` (or the ``.old`` a process killed mid-swap left) holds a complete checkpoint."""
    return (atomic.readable_dir(path) / STATE_FILE).is_file()


def load_model_weights(path, model: paddle.nn.Layer) -> None:
    """Load ``model.safetensors`` from a checkpoint directory; every parameter must match."""
    directory = atomic.readable_dir(path)
    file = directory / MODEL_FILE
    if not file.is_file() and not (directory / manifest.MANIFEST_FILE).is_file():
        raise RecogError(f"no model weights at {file}: expected a best_model/ or checkpoint directory")
    manifest.check_file(directory, MODEL_FILE, KIND, WHAT)
    weights = _load_tensors(file)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [k for k in expected if k in weights and list(weights[k].shape) != list(expected[k].shape)]
    if missing or unexpected or wrong:
        raise RecogError(
            f"weights in {file} do not fit the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatch {wrong[:5]}"
        )
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in weights.items()})


def load_state(path, required=STATE_REQUIRED) -> dict[str, Any]:
    """``state.json``, verified against the manifest and type-checked (``IntegrityError`` otherwise);
    ``required``: the fields the caller needs (default: those resuming needs)."""
    directory = atomic.readable_dir(path)
    manifest.check_file(directory, STATE_FILE, KIND, WHAT)
    file = directory / STATE_FILE
    state = manifest.read_json(file, WHAT)
    manifest.check_fields(file, state, STATE_FIELDS, required=required)
    return state


def load_config(path, trusted_targets: Iterable[str] = (), searchpath: Sequence[str] | None = None) -> DictConfig:
    """The checked config a checkpoint was saved with: nothing it names is imported or run.

    Every ``_target_`` must be a registered component of its group (``recog.config.trusted``);
    ``trusted_targets``: the documented opt-in (``trusted_targets=[...]`` on the command line),
    ``searchpath``: the ``hydra.searchpath`` whose yaml files register components (None: the
    running job's). Raises ``ConfigError`` naming the file, the key and the value.
    """
    from recog.config.trusted import load_saved_config  # lazily: it pulls in the registry

    directory = atomic.readable_dir(path)
    manifest.check_file(directory, CONFIG_FILE, KIND, WHAT)
    return load_saved_config(directory / CONFIG_FILE, trusted_targets, searchpath)


def load_extra_weights(path, name: str, layer: paddle.nn.Layer) -> bool:
    """Load ``<name>.safetensors`` (``save_checkpoint(extra=...)``) into ``layer``, every tensor matching
    by name and shape; False when the checkpoint has no such file."""
    directory = atomic.readable_dir(path)
    file = f"{name}.safetensors"
    if not manifest.check_file(directory, file, KIND, WHAT, required=False):
        return False
    weights = _load_tensors(directory / file)
    expected = layer.state_dict()
    if set(weights) != set(expected) or any(list(weights[k].shape) != list(expected[k].shape) for k in expected):
        raise RecogError(f"{directory / file} does not fit the model it was saved for (other names or shapes)")
    layer.set_state_dict({k: paddle.to_tensor(v) for k, v in weights.items()})
    return True


def load_loss_state(path, loss: paddle.nn.Layer) -> None:
    """Restore a loss's own state (if it has one and the checkpoint saved it)."""
    directory = atomic.readable_dir(path)
    if loss.state_dict() and manifest.check_file(directory, LOSS_FILE, KIND, WHAT, required=False):
        loss.set_state_dict({k: paddle.to_tensor(v) for k, v in _load_tensors(directory / LOSS_FILE).items()})


def load_optimizer_state(
    path, optimizer: paddle.optimizer.Optimizer, model: paddle.nn.Layer, loss: paddle.nn.Layer | None = None
) -> None:
    """Restore momentum buffers etc. saved by ``save_checkpoint`` for the same architecture."""
    structured_to_runtime = {v: k for k, v in _runtime_to_structured(model, loss).items()}
    directory = atomic.readable_dir(path)
    manifest.check_file(directory, OPTIMIZER_FILE, KIND, WHAT)
    tensors = _rename_accumulators(_load_tensors(directory / OPTIMIZER_FILE), structured_to_runtime)
    with warnings.catch_warnings():
        # LinearWarmup stores its inner schedule under an extra key, which Paddle's base class
        # reports as unused before LinearWarmup restores it: a false alarm.
        warnings.filterwarnings("ignore", message="There are some unused values in state_dict")
        try:
            optimizer.set_state_dict(
                {
                    **load_state(path, required=("optimizer",))["optimizer"],
                    **{k: paddle.to_tensor(v) for k, v in tensors.items()},
                }
            )
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as error:  # a hand-edited state
            raise IntegrityError(
                f"{directory / STATE_FILE}: its optimizer state does not fit this run's optimizer "
                f"({type(error).__name__}: {error}); the checkpoint is damaged or was edited; "
                "resume another run or start a new one"
            ) from None


def _load_tensors(file: Path) -> dict[str, np.ndarray]:
    """A safetensors file; a damaged one (in a folder without a manifest) is an ``IntegrityError``."""
    try:
        return load_file(str(file))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for bad headers
        raise IntegrityError(
            f"{file} is not a readable safetensors file ({type(error).__name__}: {error}): the "
            "checkpoint is damaged; copy it again from where it came from, or use another "
            "checkpoint"
        ) from None


def _runtime_to_structured(model: paddle.nn.Layer, loss: paddle.nn.Layer | None = None) -> dict[str, str]:
    """Paddle's process-wide parameter names (``linear_3.w_0``) -> ``fc.weight``-style names."""
    names = {param.name: name for name, param in model.named_parameters()}
    if loss is not None:
        names.update({param.name: f"loss.{name}" for name, param in loss.named_parameters()})
    return names


def _rename_accumulators(tensors: dict[str, np.ndarray], names: dict[str, str]) -> dict[str, np.ndarray]:
    """Optimizer keys are ``<parameter name>_<accumulator>``: swap the parameter-name prefix.

    Runtime names depend on how many layers the process built before, so checkpoints store the
    structured names, which only depend on the architecture.
    """
    by_length = sorted(names, key=len, reverse=True)
    renamed = {}
    for key, value in tensors.items():
        prefix = next((p for p in by_length if key.startswith(p + "_")), None)
        renamed[names[prefix] + key[len(prefix) :] if prefix else key] = value
    return renamed


def _to_numpy(state_dict) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v.numpy()) for k, v in state_dict.items()}


def _split_tensors(state: dict[str, Any]):
    tensors, rest = {}, {}
    for key, value in state.items():
        if isinstance(value, paddle.Tensor):
            tensors[key] = np.ascontiguousarray(value.numpy())
        else:
            rest[key] = value
    return tensors, rest


def _json_default(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
