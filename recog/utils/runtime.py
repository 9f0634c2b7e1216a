"""Device choice, seeding and random-number-generator state."""

import logging
import os
import random
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import paddle

from recog.errors import ConfigError

log = logging.getLogger(__name__)


def has_gpu() -> bool:
    """This Paddle build has CUDA and sees at least one GPU."""
    return paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def no_gpu_reason() -> str:
    return (
        "this Paddle build has no CUDA support (install paddlepaddle-gpu: see the README)"
        if not paddle.is_compiled_with_cuda()
        else "no GPU is visible (check CUDA_VISIBLE_DEVICES)"
    )


def select_device(name: str, gpu_features: Sequence[str] = ()) -> str:
    """``auto``: the GPU when this Paddle build has CUDA and sees one, else the CPU.

    ``auto`` falls back to the CPU quietly, unless the run asked for ``gpu_features`` (config
    settings that only act on a GPU, e.g. ``trainer.sync_bn=true``): then it warns that they
    have no effect. Under ``paddle.distributed.launch`` each rank takes the GPU the launcher
    assigned it. Returns ``"cpu"`` or ``"gpu"``.
    """
    name = getattr(name, "value", name)
    gpu = has_gpu()
    if name == "gpu" and not gpu:
        raise ConfigError("trainer.device=gpu, but " + no_gpu_reason())
    if name == "auto":
        if not gpu and gpu_features:
            log.warning(
                "trainer.device=auto found no GPU (%s): running on the CPU, where %s has no effect",
                no_gpu_reason(),
                ", ".join(gpu_features),
            )
        name = "gpu" if gpu else "cpu"
    if name not in ("cpu", "gpu"):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu or gpu")
    if name == "gpu" and int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1:
        paddle.set_device(f"gpu:{paddle.distributed.ParallelEnv().device_id}")
    else:
        paddle.set_device(name)
    return name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def get_rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's and Paddle's (current device) global generators, as JSON data."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    paddle_states = []
    for state in paddle.get_rng_state():
        device, seed, offset, engine = state.__getstate__()
        paddle_states.append([device, seed, offset, bytes(engine).decode("ascii")])
    return {
        "python": [version, list(mt), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "paddle": paddle_states,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``get_rng_state`` returned (in this or another process)."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    generator_state = paddle.base.libpaddle.GeneratorState
    restored = []
    for device, seed, offset, engine in state["paddle"]:
        item = generator_state.__new__(generator_state)
        item.__setstate__((device, seed, offset, list(engine.encode("ascii"))))
        restored.append(item)
    paddle.set_rng_state(restored)


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that logs, draws progress bars and saves."""
    try:
        return paddle.distributed.get_rank() == 0
    except Exception:  # pragma: no cover - distributed not initialised
        warnings.warn("could not read the distributed rank; assuming rank 0", stacklevel=2)
        return True


def targets_subclass_of(node, module: str, name: str) -> bool:
    """Whether the config ``node``'s ``_target_`` is the class ``module.name`` or a subclass of it
    (e.g. a Hydra launcher or sweeper plugin); False when that plugin is not installed or the
    target does not import. A real class check, not a look at the target's spelling."""
    import importlib

    target = str(node.get("_target_", "") or "") if node is not None else ""
    if not target:
        return False
    try:
        from hydra.utils import get_class

        return issubclass(get_class(target), getattr(importlib.import_module(module), name))
    except Exception:  # noqa: BLE001 - plugin missing or an unimportable target: not that plugin
        return False


def is_joblib_launcher(launcher_cfg) -> bool:
    """``hydra.launcher`` is Hydra's joblib launcher plugin (or a subclass)."""
    return targets_subclass_of(launcher_cfg, "hydra_plugins.hydra_joblib_launcher.joblib_launcher", "JoblibLauncher")


def divide_threads_among_jobs(config) -> None:
    """With the joblib launcher (a sweep's parallel jobs), each of its ``n_jobs`` worker processes
    gets cores / n_jobs threads (``OMP_NUM_THREADS``, read by Paddle when a worker starts), unless
    the user exported ``OMP_NUM_THREADS``: parallel jobs would otherwise each use every core."""
    from recog import _runtime

    if _runtime.OMP_NUM_THREADS_FROM_USER or not is_joblib_launcher(config.hydra.launcher):
        return
    cores = os.cpu_count() or 1
    n_jobs = int(config.hydra.launcher.get("n_jobs") or -1)
    jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 all cores, -2 all but one
    threads = max(1, cores // jobs)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    log.info("joblib launcher: %d parallel job(s), OMP_NUM_THREADS=%d each", jobs, threads)


def python_command() -> str:
    """How a shell calls this interpreter, for the commands recog prints: ``python`` when that is the
    one ``PATH`` finds (e.g. its virtual environment is active), else its path (``.venv/bin/python``,
    relative to the working directory when below it)."""
    import shutil
    import sys
    from pathlib import Path

    executable = Path(os.path.abspath(sys.executable))  # not resolved: a venv's python is a symlink
    found = shutil.which("python")
    if found and Path(os.path.abspath(found)).parent == executable.parent:
        return "python"
    try:
        return str(executable.relative_to(Path.cwd()))
    except ValueError:
        return str(executable)
