"""One optimisation step: the model and loss as one layer (``TrainNet``) and ``StepRunner``, which
owns the optimizer and the LR schedule, runs the step (autocast, loss scaling), its finite check
and the cross-rank stop agreement. How the forward runs and how the finite check is computed is
the run's ``StepStrategy`` (recog/training/strategy.py), chosen once.

Host synchronisation: one per step, deliberately (``StepRunner.read_flags``: "non-finite" and
"stop requested" in one small tensor, max-reduced over the ranks). The losses' own label checks
(device read-backs) run on the first step only.
"""

import logging
import math

import paddle

from recog.distributed import parallel
from recog.errors import NonFiniteError
from recog.losses._pairs import label_checks
from recog.training.compile import BATCH_NORMS
from recog.training.strategy import StepStrategy
from recog.utils.interrupt import StopRequest
from recog.utils.precision import Amp, autocast

log = logging.getLogger(__name__)


class TrainNet(paddle.nn.Layer):
    """Model and loss as one layer: what ``paddle.DataParallel`` wraps, so that parameters of the
    loss (e.g. CenterLoss's centres) are synchronised like the model's."""

    def __init__(self, model: paddle.nn.Layer, loss_fn: paddle.nn.Layer):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, images, labels):
        return self.loss_fn(self.model(images, labels), labels)


class StepRunner:
    """One optimisation step (autocast, loss scaling), its finite check and the cross-rank stop agreement.

    Owns the optimizer and the LR schedule (``optimizer``, ``schedule``; ``scaler`` with float16
    loss scaling). Each step reads back one small flag tensor (``read_flags``): whether the loss
    or a gradient is NaN / Inf on any rank, and whether any rank was asked to stop
    (``stop_agreed``). A non-finite step raises ``NonFiniteError`` before the optimizer applies
    it, or with ``skip_nonfinite`` is dropped (no update; the LR schedule still advances) and
    counted in ``skipped``.

    The losses check their labels (P x K structure, label range: device read-backs) on the first
    step only: the P x K sampler gives every later batch the same structure.

    ``strategy``: how the forward runs and the finite check is computed (default: the plain dygraph
    step; ``recog.training.strategy.configure_step`` chooses it from the config).
    """

    def __init__(
        self,
        net: paddle.nn.Layer,
        optimizer,
        schedule,
        amp: Amp | None = None,
        stop: StopRequest | None = None,
        skip_nonfinite: bool = False,
        strategy: StepStrategy | None = None,
    ):
        self.net = net
        self.optimizer = optimizer
        self.schedule = schedule
        self.amp = amp
        self.scaler = paddle.amp.GradScaler() if amp is not None and amp.needs_loss_scaling else None
        self.stop = stop
        self.skip_nonfinite = bool(skip_nonfinite)
        self.skipped = 0
        self.stop_agreed = False
        self.labels_checked = False
        self.parameters = [p for p in net.parameters() if not p.stop_gradient]
        self.strategy = strategy if strategy is not None else StepStrategy(net)

    def __call__(self, images, labels, step: int = 0, epoch: int = 0) -> dict[str, paddle.Tensor]:
        """Run global step ``step`` (from 1; for messages) of epoch ``epoch`` (from 0)."""
        optimizer = self.optimizer
        with self.strategy.kernels():
            with label_checks(not self.labels_checked), autocast(self.amp):
                losses = self.strategy.forward(images, labels)
            self.labels_checked = True
            if self.scaler is not None:
                self.scaler.scale(losses["loss"]).backward()
            else:
                losses["loss"].backward()
        nonfinite, self.stop_agreed = self.read_flags(losses["loss"])
        if nonfinite:
            message, terms = self.describe_nonfinite(losses, step, epoch)
            optimizer.clear_grad()
            if not self.skip_nonfinite:
                raise NonFiniteError(
                    f"{message}. Stopped before applying the step: checkpoints/last and best_model/ are as they "
                    "were. Lower optimizer.lr, set trainer.grad_clip, check the data, or skip such steps with "
                    "trainer.skip_nonfinite=true",
                    step,
                    terms,
                )
            self.skipped += 1
            log.warning("%s: step skipped (%d so far)", message, self.skipped)
        else:
            if self.scaler is not None:
                self.scaler.step(optimizer)
                self.scaler.update()
            else:
                optimizer.step()
            optimizer.clear_grad()
        self.schedule.step()
        return losses

    def read_flags(self, loss: paddle.Tensor) -> tuple[bool, bool]:
        """``(non-finite loss or gradient on any rank, stop requested on any rank)``: the step's one
        deliberate host sync (and its one all_reduce in a data-parallel run).

        The loss is the sum of the terms, so it is non-finite iff a term is. Gradients are checked
        after backward, where ``DataParallel`` has averaged them: a NaN on one rank is on all. With
        float16 loss scaling, overflowing gradients are the scaler's to skip: the loss alone is checked.
        """
        grads = [p.grad for p in self.parameters if p.grad is not None] if self.scaler is None else []
        finite = self.strategy.all_finite(loss, grads)
        stop = self.stop is not None and self.stop.requested
        flags = paddle.stack([(~finite).astype("int32"), paddle.full([], int(stop), dtype="int32")])
        nonfinite, stop_agreed = parallel.max_across_ranks(flags).tolist()
        return bool(nonfinite), bool(stop_agreed)

    def describe_nonfinite(
        self, losses: dict[str, paddle.Tensor], step: int, epoch: int
    ) -> tuple[str, dict[str, float]]:
        """What was not finite, read only once it was detected: the loss terms (averaged over the
        ranks, a collective every rank reaches), else the first parameters with NaN / Inf gradients."""
        values = parallel.mean_across_ranks(losses)
        terms = {name: value for name, value in values.items() if name != "loss"}
        shown = ", ".join(f"{name} = {value:.4g}" for name, value in terms.items())
        bad = [name for name, value in terms.items() if not math.isfinite(value)]
        where = f"step {step} (epoch {epoch + 1})"
        if bad:
            return f"non-finite loss at {where}: loss term {' and '.join(repr(n) for n in bad)} ({shown})", values
        if not math.isfinite(values["loss"]):  # finite terms whose sum overflows
            return f"non-finite loss at {where}: the sum of the loss terms ({shown})", values
        names = [
            name
            for name, p in self._named_parameters()
            if p.grad is not None and not bool(paddle.isfinite(p.grad).all())
        ]
        listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return f"non-finite gradient at {where}: {listed or 'a parameter'} (loss terms finite: {shown})", values

    def _named_parameters(self):
        for name, param in self.net.named_parameters():
            yield name.replace("_layers.", "", 1) if name.startswith("_layers.") else name, param

    def should_stop(self) -> bool:
        """Whether any rank received SIGTERM / SIGINT; a collective for the points between steps
        (after an epoch's eval and checkpoint), reached by every rank. Within an epoch each step's
        ``read_flags`` carries the agreement (``stop_agreed``)."""
        return self.stop is not None and parallel.any_rank(self.stop.requested)


def has_unused_parameters(model, loss_fn) -> bool:
    """Whether some trainable parameters get no gradient (``DataParallel(find_unused_parameters=)``):
    a head or neck whose output no loss term reads, or a multi-scale neck that skips the
    backbone's last layers."""
    read = set(loss_fn.inputs.values())
    if model.head is not None and "logits" not in read:
        return True
    if model.neck is not None and not read & {"logits", "features"}:
        return True
    return bool(getattr(model.neck, "multi_scale", False))


def freeze_batch_norm(model: paddle.nn.Layer) -> None:
    """Put every BatchNorm layer in eval mode: normalise with the running statistics, leave them
    unchanged (scale and shift still train)."""
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, BATCH_NORMS):
            layer.eval()
