"""Optimizers and per-iteration learning-rate schedules, built from config.

The ``optimizer`` config names a factory below and the base rate ``lr`` (which recog reads, not the
factory); the ``scheduler`` config names a schedule factory, built from that rate.
``recog.builders.build_optimizer`` joins them: the schedule is stepped every iteration.
"""

from collections.abc import Sequence

import paddle
from paddle.optimizer import lr as schedules


def warmup_cosine(
    base_lr: float,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 1.0,
    warmup_start_lr: float = 0.0,
    eta_min: float = 0.0,
) -> schedules.LRScheduler:
    """Linear warmup over ``warmup_epochs``, then cosine decay from ``base_lr`` to ``eta_min``."""
    total = max(1, epochs * steps_per_epoch)
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)
    cosine = schedules.CosineAnnealingDecay(base_lr, T_max=max(1, total - warmup), eta_min=eta_min)
    return _with_warmup(cosine, warmup, warmup_start_lr, base_lr)


def multi_step(
    base_lr: float,
    epochs: int,
    steps_per_epoch: int,
    milestones: Sequence[int] = (30, 60, 90),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
    warmup_start_lr: float = 0.0,
) -> schedules.LRScheduler:
    """Multiply the rate by ``gamma`` at each milestone (in epochs)."""
    steps: list[int] = [int(m) * steps_per_epoch for m in milestones]
    warmup = int(round(warmup_epochs * steps_per_epoch))
    decay = schedules.MultiStepDecay(base_lr, milestones=[max(1, s - warmup) for s in steps], gamma=gamma)
    return _with_warmup(decay, warmup, warmup_start_lr, base_lr)


def _with_warmup(schedule, warmup_steps, start_lr, end_lr):
    if warmup_steps <= 0:
        return schedule
    return schedules.LinearWarmup(schedule, warmup_steps=warmup_steps, start_lr=start_lr, end_lr=end_lr)


def momentum(
    parameters, learning_rate, momentum: float = 0.9, weight_decay: float = 5e-4, nesterov: bool = False, grad_clip=None
) -> paddle.optimizer.Optimizer:
    """SGD with momentum and L2 weight decay; ``learning_rate``: the schedule (or a float)."""
    return paddle.optimizer.Momentum(
        learning_rate=learning_rate,
        momentum=momentum,
        parameters=parameters,
        use_nesterov=nesterov,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
    )


def adamw(
    parameters, learning_rate, weight_decay: float = 0.05, beta1: float = 0.9, beta2: float = 0.999, grad_clip=None
) -> paddle.optimizer.Optimizer:
    """AdamW (decoupled weight decay); ``learning_rate``: the schedule (or a float).

    Parameters whose own regularizer is ``L2Decay(0.0)`` (PP-LCNet's BN scale/shift) are not
    decayed: AdamW's decoupled decay ignores per-parameter regularizers otherwise.
    """
    parameters = list(parameters)
    exempt = {p.name for p in parameters if _decay_exempt(p)}
    return paddle.optimizer.AdamW(
        learning_rate=learning_rate,
        beta1=beta1,
        beta2=beta2,
        parameters=parameters,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        apply_decay_param_fun=(lambda name: name not in exempt) if exempt else None,
    )


def _decay_exempt(param) -> bool:
    regularizer = getattr(param, "regularizer", None)
    return isinstance(regularizer, paddle.regularizer.L2Decay) and float(regularizer._coeff) == 0.0
