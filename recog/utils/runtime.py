"""Device choice and seeding."""

import random
import warnings

import numpy as np
import paddle

from recog.errors import ConfigError


def select_device(name: str) -> str:
    """``auto``: the GPU when this Paddle build has CUDA and sees one, else the CPU."""
    name = getattr(name, "value", name)
    has_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if name == "gpu" and not has_gpu:
        raise ConfigError("trainer.device=gpu, but " + (
            "this Paddle build has no CUDA support (install paddlepaddle-gpu: see the README)"
            if not paddle.is_compiled_with_cuda() else "no GPU is visible (check CUDA_VISIBLE_DEVICES)"))
    if name == "auto":
        name = "gpu" if has_gpu else "cpu"
    if name not in ("cpu", "gpu"):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu or gpu")
    paddle.set_device(name)
    return name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that logs, draws progress bars and saves."""
    try:
        return paddle.distributed.get_rank() == 0
    except Exception:  # pragma: no cover - distributed not initialised
        warnings.warn("could not read the distributed rank; assuming rank 0")
        return True
