"""Mixed precision (``trainer.amp``): settings checked at start, and the autocast context."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import paddle

from recog.errors import ConfigError
from recog.utils.runtime import has_gpu, no_gpu_reason


@dataclass(frozen=True)
class Amp:
    level: str  # "O1" or "O2"
    dtype: str  # "float16" or "bfloat16"

    @property
    def needs_loss_scaling(self) -> bool:
        return self.dtype == "float16"

    def autocast(self):
        return paddle.amp.auto_cast(enable=True, level=self.level, dtype=self.dtype)


def amp_settings(trainer_cfg) -> Amp | None:
    """``None`` for float32; raises ``ConfigError`` when mixed precision cannot run here (no CUDA
    GPU, or ``trainer.device=cpu``): Paddle's AMP is a GPU feature."""
    level = getattr(trainer_cfg.amp, "value", trainer_cfg.amp)
    if level is None:
        return None
    dtype = str(getattr(trainer_cfg.amp_dtype, "value", trainer_cfg.amp_dtype))
    device = getattr(trainer_cfg.device, "value", trainer_cfg.device)
    if device == "cpu":
        raise ConfigError(
            f"trainer.amp={level} runs on a GPU only, but trainer.device=cpu: "
            "set trainer.amp=null, or trainer.device=gpu|auto on a GPU machine"
        )
    if not has_gpu():
        raise ConfigError(
            f"trainer.amp={level} needs a CUDA GPU, but {no_gpu_reason()}; set trainer.amp=null to train in float32"
        )
    return Amp(str(level), dtype)


def autocast(amp: Amp | None):
    """``paddle.amp.auto_cast`` for ``amp``, or a no-op context for float32."""
    return amp.autocast() if amp is not None else contextlib.nullcontext()
