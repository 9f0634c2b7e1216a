"""A training run's checkpoints (``checkpoints/last``, ``best_model/``): saving, restoring, checking
``state.json`` and the files beside it, and finding the run to resume.

``checkpoints/last/state.json`` (validated on resume, field by field, with a message naming the
file and the field)::

    epoch, step, step_in_epoch   completed epochs, global steps, steps of the unfinished epoch
    best                         the best eval's metrics (and its epoch), or null
    mlflow_run_id                the MLflow run to continue, or null
    finished                     whether the last epoch (and its eval) completed
    eval_pending                 stopped during the eval after epoch ``epoch``: resume runs it first
    world_size, rng              the process count and every process's RNG state (exact resume)
    grad_scaler, skipped_steps   float16 loss scaling; steps skipped by trainer.skip_nonfinite
    optimizer                    the optimizer's non-tensor state (LR-schedule position)

The config a resumed run uses is ``recog.training.resume_config``'s.
"""

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from safetensors import safe_open

from recog.distributed import parallel
from recog.errors import ConfigError, RecogError
from recog.utils import checkpoint
from recog.utils.runtime import get_rng_state, is_main_process, set_rng_state

log = logging.getLogger(__name__)

LAST, BEST = Path("checkpoints") / "last", Path("best_model")


def new_state() -> dict[str, Any]:
    """The state of a run that starts from scratch."""
    return {"epoch": 0, "step": 0, "step_in_epoch": 0, "best": None, "mlflow_run_id": None}


class Checkpoints:
    """The run dir's ``checkpoints/last`` and ``best_model/`` for one training run.

    ``model`` and ``loss_fn`` are saved (and restored) with ``runner``'s optimizer, loss scaler
    and skipped-step count; ``cfg`` is the resolved config saved beside the weights.
    """

    def __init__(self, run_dir: Path, model, loss_fn, cfg: DictConfig, runner, world: int):
        self.run_dir = Path(run_dir)
        self.model, self.loss_fn, self.cfg, self.runner, self.world = model, loss_fn, cfg, runner, world
        self.extra: dict = {}  # name -> a layer checkpoints/last holds too (the EMA's copy: "ema")

    @property
    def last(self) -> Path:
        return self.run_dir / LAST

    @property
    def best(self) -> Path:
        return self.run_dir / BEST

    def save_last(self, state: dict, finished: bool) -> None:
        """``checkpoints/last`` with every rank's RNG state; every rank must call it (a gather)."""
        rng = parallel.gather_objects(get_rng_state())
        if not is_main_process():
            return
        extra = {"finished": finished, "world_size": self.world, "rng": rng}
        if self.runner.scaler is not None:
            extra["grad_scaler"] = self.runner.scaler.state_dict()
        if self.runner.skip_nonfinite:
            extra["skipped_steps"] = self.runner.skipped
        checkpoint.save_checkpoint(
            self.last, self.model, self.cfg, dict(state, **extra), self.runner.optimizer, self.loss_fn, self.extra
        )

    def save_best(self, state: dict, model=None) -> None:
        """``best_model/``: the weights (of ``model``, default the trained one) and config (main process only)."""
        if is_main_process():
            checkpoint.save_checkpoint(self.best, model if model is not None else self.model, self.cfg, state)

    def restore(self, rank: int, steps_per_epoch: int) -> dict:
        """Load ``checkpoints/last`` into the model, loss, optimizer and scaler; returns the state
        to continue from (``eval_pending`` included)."""
        path = self.last
        state = read_state(path)
        if state["step_in_epoch"] >= steps_per_epoch:
            raise ConfigError(
                f"the checkpoint stopped at step {state['step_in_epoch']} of an epoch that now has "
                f"{steps_per_epoch}: resume with the same data and trainer.steps_per_epoch"
            )
        checkpoint.load_model_weights(path, self.model)
        checkpoint.load_loss_state(path, self.loss_fn)
        checkpoint.load_optimizer_state(path, self.runner.optimizer, self.model, self.loss_fn)
        state.pop("optimizer", None)
        if not state.pop("finished", False) and state["epoch"] >= self.cfg.trainer.epochs:
            state["eval_pending"] = True  # trainer.epochs lowered to the epochs done: end the run there
        saved_world = state.pop("world_size", 1)
        rng = state.pop("rng", None)
        scaler_state = state.pop("grad_scaler", None)
        self.runner.skipped = state.pop("skipped_steps", 0)
        if saved_world != self.world:
            if state["step_in_epoch"]:
                raise ConfigError(
                    f"{path} was saved mid-epoch by {saved_world} process(es): resume it with "
                    f"launcher.nproc_per_node={saved_world} (a P x K epoch depends on the process count)"
                )
            log.warning(
                "%s was saved by %d process(es), resuming with %d: the data order and random streams "
                "differ from an uninterrupted run",
                path,
                saved_world,
                self.world,
            )
        elif rng is not None:
            set_rng_state(rng[rank])
        if self.runner.scaler is not None and scaler_state:
            self.runner.scaler.load_state_dict(scaler_state)
        return state


def check_epochs(run_dir: Path, epochs: int) -> None:
    """``ConfigError`` when ``trainer.epochs`` ends before the epochs ``run_dir``'s checkpoint has
    trained (a resumed run continues; it cannot go back). Equal and complete: the run ends there
    (the last of those epochs is evaluated if it was not, then the run's final steps)."""
    state = read_state(run_dir / LAST)
    begun = state["epoch"] + (1 if state["step_in_epoch"] else 0)
    if epochs < begun:
        trained = f"{state['epoch']} epoch(s)" + (
            f" and {state['step_in_epoch']} step(s) of the next" if state["step_in_epoch"] else ""
        )
        raise ConfigError(
            f"resume=true: {run_dir} has trained {trained}, and trainer.epochs={epochs} ends before that: "
            f"give trainer.epochs={begun} or more, or leave trainer.epochs out to train the epochs the run "
            "was started with"
        )


def read_state(path: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint, every field checked; ``RecogError`` naming the file and field."""
    file = path / checkpoint.STATE_FILE
    try:
        state = checkpoint.load_state(path)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise RecogError(
            f"{file} cannot be read ({type(error).__name__}: {error}): the checkpoint is damaged; "
            "resume another run (hydra.run.dir=<run dir>) or start a new one"
        ) from None
    if not isinstance(state, dict):
        raise RecogError(f"{file} holds a JSON {type(state).__name__}, not an object: the checkpoint is damaged")
    problems = _state_problems(state)
    if problems:
        raise RecogError(
            f"{file} is not a valid training state: {'; '.join(problems)}. The checkpoint is damaged "
            "or was edited; resume another run (hydra.run.dir=<run dir>) or start a new one"
        )
    return state


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _state_problems(state: dict) -> list[str]:
    problems = []
    for key in ("epoch", "step", "step_in_epoch"):
        if key not in state:
            problems.append(f"'{key}' is missing")
        elif not _is_int(state[key]) or state[key] < 0:
            problems.append(f"'{key}' must be a whole number >= 0, got {state[key]!r}")
    if not problems and state["step"] < state["step_in_epoch"]:
        problems.append(f"'step' ({state['step']}) is below 'step_in_epoch' ({state['step_in_epoch']})")
    best = state.get("best")
    if best is not None and not (
        isinstance(best, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in best.values())
    ):
        problems.append(f"'best' must be null or an object of metric values, got {_short(best)}")
    for key in ("mlflow_run_id",):
        if state.get(key) is not None and not isinstance(state[key], str):
            problems.append(f"'{key}' must be a string or null, got {_short(state[key])}")
    for key in ("finished", "eval_pending"):
        if key in state and not isinstance(state[key], bool):
            problems.append(f"'{key}' must be true or false, got {_short(state[key])}")
    if "world_size" in state and (not _is_int(state["world_size"]) or state["world_size"] < 1):
        problems.append(f"'world_size' must be a whole number >= 1, got {_short(state['world_size'])}")
    if "skipped_steps" in state and (not _is_int(state["skipped_steps"]) or state["skipped_steps"] < 0):
        problems.append(f"'skipped_steps' must be a whole number >= 0, got {_short(state['skipped_steps'])}")
    rng = state.get("rng")
    if rng is not None and not (
        isinstance(rng, list) and len(rng) == state.get("world_size", 1) and all(isinstance(r, dict) for r in rng)
    ):
        problems.append("'rng' must hold one RNG state per process ('world_size')")
    for key in ("grad_scaler", "optimizer"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            problems.append(f"'{key}' must be an object, got {_short(state[key])}")
    if isinstance(state.get("optimizer"), dict) and "LR_Scheduler" in state["optimizer"]:
        problems += _schedule_problems(state["optimizer"]["LR_Scheduler"], "optimizer.LR_Scheduler")
    return problems


def _schedule_problems(node, key: str) -> list[str]:
    """The learning-rate schedule's state (Paddle's ``LRScheduler.state_dict``, nested for a warm-up):
    an object of numbers and such objects, ``last_epoch`` a whole number, ``last_lr`` a number."""
    if not isinstance(node, dict):
        return [f"'{key}' must be an object, got {_short(node)}"]
    problems = []
    for name, value in node.items():
        where = f"{key}.{name}"
        if isinstance(value, dict):
            problems += _schedule_problems(value, where)
        elif name == "last_epoch" and not _is_int(value):
            problems.append(f"'{where}' must be a whole number, got {_short(value)}")
        elif not _is_number(value) and not (
            name != "last_lr" and (value is None or (isinstance(value, list) and all(map(_is_number, value))))
        ):
            problems.append(f"'{where}' must be a number, got {_short(value)}")
    return problems


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def checkpoint_problem(path: Path, trusted_targets: Iterable[str] = ()) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed (damaged state.json, config.yaml or weights), or None
    (``trusted_targets``: as for ``checkpoint.load_config``).

    Cheap: reads state.json and config.yaml, and the safetensors header of the weights (whose
    offsets must fit in the file: a truncated file fails).
    """
    path = checkpoint.atomic.readable_dir(path)
    try:
        read_state(path)
    except RecogError as error:
        return str(error)
    try:
        checkpoint.load_config(path, trusted_targets)  # the checked reader: a hostile config is a problem too
    except RecogError as error:
        return str(error)
    except Exception as error:  # OSError, a YAML error of any kind
        return f"{path / checkpoint.CONFIG_FILE} cannot be read ({type(error).__name__})"
    for name in (checkpoint.MODEL_FILE, checkpoint.OPTIMIZER_FILE):
        file = path / name
        if name == checkpoint.MODEL_FILE or file.exists():
            problem = _safetensors_problem(file)
            if problem:
                return problem
    return None


def _safetensors_problem(file: Path) -> str | None:
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            if header_size <= 0 or 8 + header_size > size:
                return f"{file} is truncated or not a safetensors file"
            header = json.loads(handle.read(header_size))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_size + end > size:
            return f"{file} is truncated ({size} bytes, {8 + header_size + end} expected)"
        with safe_open(str(file), framework="numpy"):
            pass
    except (OSError, ValueError, KeyError, TypeError, IndexError, Exception) as error:  # safetensors' own errors too
        return f"{file} cannot be read ({type(error).__name__}: {error})"
    return None


def find_run_to_resume(cfg: DictConfig, run_dir: Path, named: bool | None = None) -> Path:
    """The run dir whose ``checkpoints/last`` to continue.

    A run dir the command names (``hydra.run.dir=<run>``: ``named``, by default read from the
    Hydra job's overrides) is that run: its checkpoint, or a ``ConfigError`` saying it has none (a
    damaged one is an error too). Otherwise this run dir if it holds a checkpoint, else the newest
    unfinished run under ``paths.output_root/runs`` whose checkpoint is intact (damaged ones are
    skipped with a warning). ``cfg.trusted_targets`` are trusted in the saved configs, as when the
    run was trained."""
    trusted = list(cfg.get("trusted_targets") or ())
    if named is None:
        named = run_dir_named()
    if checkpoint.has_checkpoint(run_dir / LAST):
        problem = checkpoint_problem(run_dir / LAST, trusted)
        if problem:
            raise RecogError(f"cannot resume {run_dir}: {problem}")
        return run_dir
    if named:
        raise ConfigError(no_checkpoint_message(run_dir))
    root = Path(cfg.paths.output_root) / "runs"
    candidates = {p.parents[2] for p in root.glob(f"*/{LAST}/{checkpoint.STATE_FILE}")}
    candidates |= {p.parents[2] for p in root.glob(f"*/checkpoints/.last.old/{checkpoint.STATE_FILE}")}
    for candidate in sorted(candidates, reverse=True):
        problem = checkpoint_problem(candidate / LAST, trusted)
        if problem:
            log.warning("resume: skipping %s, its checkpoint is damaged: %s", candidate, problem)
            continue
        if not checkpoint.load_state(candidate / LAST).get("finished", False):
            return candidate
    raise ConfigError(
        f"resume=true but no unfinished run with a {LAST} checkpoint was found under "
        f"{root}; pass hydra.run.dir=<run dir> to pick one"
    )


def no_checkpoint_message(run_dir) -> str:
    return (
        f"resume=true hydra.run.dir={run_dir}: that run dir holds no checkpoint to resume ({Path(run_dir) / LAST} "
        "is missing). Name the run dir of the run to continue, drop hydra.run.dir to continue the newest "
        "unfinished run under paths.output_root/runs, or drop resume=true to start a new run there"
    )


def run_dir_named() -> bool:
    """Whether the running Hydra job's command line sets ``hydra.run.dir`` (False outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.hydra
    except (ValueError, ImportError):  # not a Hydra job: the Python API
        return False
    return any(str(o).split("=", 1)[0].lstrip("+~") == "hydra.run.dir" for o in overrides)
