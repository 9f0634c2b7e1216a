"""Load pretrained weights by parameter name: PaddleClas ``.pdparams`` or ``.safetensors``.

A ``.pdparams`` file is a pickle, and unpickling runs whatever callables the file names. It is
therefore read with a restricted unpickler that resolves only the globals a weight file needs
(see ``_ALLOWED_GLOBALS``); any other global makes loading fail before anything is called.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import paddle
from paddle import nn

from recog.errors import RecogError

__all__ = ["load_pretrained", "read_pdparams"]

log = logging.getLogger(__name__)

# Entries paddle.save adds next to the weights: the structured -> runtime name table, and how
# parameters over 1 GB were split into slices under pickle protocols 2 and 3.
_NAME_TABLE_KEY = "StructuredToParameterName@@"
_BIG_PARAM_KEY = "UnpackBigParamInfor@@"  # sic: Paddle's spelling


def _latin1_encode(text, encoding="utf-8"):
    """``_codecs.encode`` as pickle protocol 2 uses it: bytes are stored as ``encode(str, 'latin1')``.

    Only that encoding is allowed, so the file cannot choose a codec (not even look one up).
    """
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


def _numpy_helpers() -> dict[str, Any]:
    # Taken from what numpy itself pickles, so that neither numpy.core (deprecated in numpy 2)
    # nor numpy._core (absent in numpy 1) has to be imported by name.
    array = np.zeros(2, dtype=np.float32)
    return {
        "_reconstruct": array.__reduce__()[0],  # ndarray pickles, protocols 2-4
        "scalar": np.float32(0).__reduce__()[0],  # numpy scalars (np.float32(1.0), ...)
        "_frombuffer": array.__reduce_ex__(5)[0],  # ndarray pickles, protocol 5
    }


def _allowed_globals() -> dict[tuple, Any]:
    """(module, name) -> object: everything a weight pickle may reference.

    What ``paddle.save(layer.state_dict(), path)`` writes on Paddle 3.3 (checked with
    pickletools): a ``dict`` of name -> ``numpy.ndarray``, each array pickled as
    ``numpy._core.multiarray._reconstruct(numpy.ndarray, ...)`` with a ``numpy.dtype``; under
    pickle protocol 2 the raw bytes go through ``_codecs.encode`` and empty ones through
    ``__builtin__.bytes``. Files from numpy 1.x name ``numpy.core.multiarray`` instead. Paddle 2.1
    and ``paddle.save`` of a non-state-dict store a tensor as ``builtins.tuple((name, array))``.
    Numpy scalars use ``multiarray.scalar``; ``collections.OrderedDict`` appears in state dicts
    saved as such. ``builtins.eval`` (Paddle's pickling of a raw DenseTensor) is not admitted.
    """
    helpers = _numpy_helpers()
    allowed: dict[tuple, Any] = {}
    for builtins_module in ("builtins", "__builtin__"):  # protocol 2 uses the Python 2 name
        for container in (dict, list, tuple, set, frozenset, bytes, bytearray):
            allowed[(builtins_module, container.__name__)] = container
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("_codecs", "encode")] = _latin1_encode
    allowed[("codecs", "encode")] = _latin1_encode
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = helpers["_reconstruct"]
        allowed[(f"{core}.multiarray", "scalar")] = helpers["scalar"]
        allowed[(f"{core}.numeric", "_frombuffer")] = helpers["_frombuffer"]
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class _RefusedGlobal(Exception):
    def __init__(self, qualified_name: str):
        super().__init__(qualified_name)
        self.qualified_name = qualified_name


class _WeightUnpickler(pickle.Unpickler):
    """Resolves only ``_ALLOWED_GLOBALS``; refuses persistent ids (pickle's default)."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


# What PaddleClas 2.6's own model code downloads from (its MODEL_URLS); recog never downloads.
WHERE_PADDLECLAS_PUBLISHES = (
    "PaddleClas publishes its ImageNet weights as <Model>_pretrained.pdparams, e.g. "
    "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/legendary_models/PPLCNet_x2_5_pretrained.pdparams "
    "(also PPLCNet_x0_25 ... PPLCNet_x2_5, PPLCNetV2_base, ResNet50_vd; each model's file is listed in "
    "PaddleClas's ImageNet model zoo docs): download the file yourself and pass its path "
    "(backbone.pretrained=PATH), recog downloads nothing"
)


def load_pretrained(model: nn.Layer, path) -> dict[str, list[str]]:
    """Copy the tensors of a weight file into ``model``'s parameters and buffers, by name.

    Args:
        model: any layer; the file's names must be those of ``model.state_dict()`` (for a
            PaddleClas ``RecModel`` file into a ``RecModel``: ``backbone.*``, ``neck.*``,
            ``head.*``; for an ImageNet backbone file, pass ``model.backbone``).
        path: a ``.pdparams`` file (``paddle.save`` of a state dict, PaddleClas's released
            weights; a ``.pdparams`` that ``paddle.save(..., safetensors=True)`` wrote is
            recognised by its content) or a ``.safetensors`` file.

    Returns:
        ``{"loaded": [...], "missing": [...], "unexpected": [...], "skipped": [...]}``, sorted
        names: loaded tensors; model tensors the file lacks (left as they were); file tensors
        the model lacks; file entries that are not arrays (ignored). A warning lists the missing,
        unexpected and skipped names when there are any.

    Raises:
        RecogError: the path does not exist or has another suffix; the file is unreadable or
            references anything but arrays (a pickle naming another global is refused before
            anything runs); a tensor's shape differs from the model's (nothing is loaded then);
            a tensor is not numeric; or fewer than half the names match (another architecture).
    """
    path = Path(path)
    if not path.is_file():
        hint = ""
        if not path.suffix and path.with_name(path.name + ".pdparams").is_file():
            hint = f" (did you mean {path.name}.pdparams?)"
        raise RecogError(f"pretrained weights not found: {path}{hint}. {WHERE_PADDLECLAS_PUBLISHES}")
    suffix = path.suffix.lower()
    if suffix == ".pdparams":
        weights, skipped = _read_pdparams(path)
    elif suffix == ".safetensors":
        weights, skipped = _read_safetensors(path), []
    else:
        raise RecogError(
            f"cannot load weights from {path}: unknown suffix {path.suffix!r}; "
            "expected .pdparams (PaddleClas / paddle.save) or .safetensors"
        )

    expected = model.state_dict()
    matched = sorted(set(expected) & set(weights))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if weights and not matched:
        raise RecogError(
            f"none of the {len(weights)} tensors in {path} matches a parameter of the model "
            f"(file: {_preview(sorted(weights))}; model: {_preview(sorted(expected))}): "
            "wrong file, or weights for a sub-layer (e.g. the backbone only)?"
        )
    if weights and 2 * len(matched) < min(len(weights), len(expected)):
        raise RecogError(
            f"{path} looks like weights for another architecture: only {len(matched)} of its "
            f"{len(weights)} tensors match the {len(expected)} names of {type(model).__name__} "
            f"(unmatched in the file: {_preview(unexpected)}; in the model: {_preview(missing)})"
        )
    values = {}
    for name in matched:
        target = expected[name]
        value = weights[name]
        if list(value.shape) != list(target.shape):
            raise RecogError(
                f"cannot load {path}: tensor {name!r} has shape {list(value.shape)} in the file "
                f"but {list(target.shape)} in the model"
            )
        values[name] = _to_tensor(value, target, name, path)
    for name in matched:  # all checked first: a failed load changes nothing
        expected[name].set_value(values[name])

    if missing or unexpected or skipped:
        log.warning(
            "loaded %d of %d tensors from %s; missing (kept as initialised): %s; unexpected "
            "(ignored): %s; not tensors (ignored): %s",
            len(matched),
            len(expected),
            path,
            missing or "none",
            unexpected or "none",
            skipped or "none",
        )
    return {"loaded": matched, "missing": missing, "unexpected": unexpected, "skipped": skipped}


def read_pdparams(path) -> dict[str, np.ndarray]:
    """The arrays of a ``.pdparams`` file by name, read with the restricted unpickler."""
    return _read_pdparams(Path(path))[0]


def _read_pdparams(path: Path):
    with open(path, "rb") as f:
        head = f.read(9)
        f.seek(0)
        if _looks_like_safetensors(head, os.fstat(f.fileno()).st_size):
            return _read_safetensors(path), []
        try:
            obj = _WeightUnpickler(f).load()
        except _RefusedGlobal as refused:
            raise RecogError(
                f"refusing to load {path}: the file references {refused.qualified_name}, which a "
                "weight file never needs (it may be malicious); only dicts of numpy arrays are loaded"
            ) from None
        except Exception as error:  # truncated or not a pickle at all
            raise RecogError(f"cannot read {path} as a .pdparams file: {type(error).__name__}: {error}") from None
    if not isinstance(obj, dict):
        raise RecogError(f"{path} holds a {type(obj).__name__}, not a dict of name -> tensor")
    return _collect_arrays(obj, path)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """Safetensors: an 8-byte little-endian header length, then a JSON header starting ``{``.

    A pickle of protocol 2+ starts with 0x80 then the protocol number, never followed by this.
    """
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 8 + int.from_bytes(head[:8], "little") <= size


def _collect_arrays(obj: dict, path: Path):
    obj = dict(obj)
    obj.pop(_NAME_TABLE_KEY, None)
    big = obj.pop(_BIG_PARAM_KEY, None)
    if big:
        for name, info in big.items():
            try:
                parts = [np.asarray(obj.pop(part)).reshape(-1) for part in info["slices"]]
                obj[name] = np.concatenate(parts).reshape(info["OriginShape"])
            except (KeyError, TypeError, ValueError) as error:
                raise RecogError(f"cannot reassemble the split tensor {name!r} in {path}: {error}") from None
    arrays, skipped = {}, []
    for name, value in obj.items():
        if _is_paddle_21_tensor(value):  # (runtime name, array)
            value = value[1]
        if isinstance(value, (np.ndarray, np.generic)) and isinstance(name, str):
            arrays[name] = np.asarray(value)
        else:
            skipped.append(str(name))
    return arrays, sorted(skipped)


def _is_paddle_21_tensor(value) -> bool:
    return (
        isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], np.ndarray)
    )


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as error:
        raise RecogError(f"cannot read {path} as a safetensors file: {type(error).__name__}: {error}") from None


def _to_tensor(value: np.ndarray, target: paddle.Tensor, name: str, path: Path) -> paddle.Tensor:
    if value.dtype.kind not in "biuf":
        raise RecogError(f"cannot load {path}: tensor {name!r} has non-numeric dtype {value.dtype}")
    tensor = paddle.to_tensor(np.ascontiguousarray(value))
    if tensor.dtype != target.dtype:
        if paddle.is_floating_point(tensor) != paddle.is_floating_point(target):
            raise RecogError(
                f"cannot load {path}: tensor {name!r} is {value.dtype} in the file but {target.dtype} in the model"
            )
        tensor = tensor.astype(target.dtype)
    return tensor


def _preview(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
