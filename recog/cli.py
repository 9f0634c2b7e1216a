"""What ``run.py`` checks before Hydra starts, and recog's ``--help`` text.

``precheck(argv)`` parses the command line with Hydra's own argument parser, then, for a run and
for ``--cfg`` / ``--info`` alike:

* checks every override as ``recog.config.check_overrides`` does (one message naming the
  override and what would be valid);
* refuses ``+key=value`` / ``++key=value`` for a key no schema has (Hydra would add it silently);

and for a run only (nothing is created before these pass):

* checks the stage's preconditions (``stage=eval`` needs ``model_path``, ...);
* checks that the run folder (``hydra.run.dir``, or ``hydra.sweep.dir`` with ``-m``; not empty) and
  ``paths.output_root`` can be created, by creating and removing a probe folder in the nearest
  existing parent, and that their names fit the file system (``recog.utils.paths``);
* for ``stage=train`` into a named run dir: that no live training holds its lock, and with
  ``resume=true`` that it holds a checkpoint (Hydra would otherwise rewrite its ``.hydra/``
  before the stage could refuse);
* that a SQLite ``mlflow.tracking_uri`` can be written (MLflow would retry for minutes).

``--help``, ``--hydra-help``, ``--version``, ``--shell-completion`` and other config files
(``-cn`` / ``-cp`` / ``-cd``) are left to Hydra.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from recog.config.compose import CONF_DIR, check_overrides, compose
from recog.config.schema import RecogConfig
from recog.errors import ConfigError
from recog.utils.paths import check_writable

HELP_RESOLVER = "recog_help"
_LEFT_TO_HYDRA = (
    "help",
    "hydra_help",
    "shell_completion",
    "config_path",
    "config_name",
    "config_dir",
    "experimental_rerun",
)


def precheck(argv: list[str]) -> DictConfig | None:
    """``ConfigError`` for a command line that must not start (module docstring); returns the
    composed config of a run (without swept values), None for what is left to Hydra or only prints."""
    if any(a == "--version" for a in argv):
        return None
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:  # an unknown flag: Hydra prints its usage
        return None
    if any(getattr(args, name) for name in _LEFT_TO_HYDRA):
        return None
    overrides = list(args.overrides)
    cfg = check_overrides(overrides + (["-m"] if args.multirun else []))
    check_added_keys(overrides)
    if args.cfg or args.info:  # prints, runs nothing
        return None
    fixed, swept = _fixed_and_swept(overrides)
    if cfg is None:
        cfg = compose(fixed)
    if not any(key in ("stage", "model_path") or key.startswith(("predict.", "index.")) for key in swept):
        check_stage_ready(cfg)  # a swept stage input is checked by each job
    check_output_dirs(cfg, overrides, multirun=bool(args.multirun))
    if not args.multirun:
        check_named_run_dir(cfg, given_dir(overrides, "hydra.run.dir"))
    if not any(key.startswith("mlflow.") for key in swept):
        from recog.tracking.store import check_local_store

        check_local_store(cfg)
    return cfg


# ---------------------------------------------------------------------- added keys


def top_level_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(RecogConfig)]


def config_groups() -> list[str]:
    """The config groups of ``conf/`` (what ``group=option`` selects)."""
    return sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def check_added_keys(overrides: list[str]) -> None:
    """``+foo=1`` for a key no schema has: refused, with the valid keys."""
    sections = {f.name: f.type for f in dataclasses.fields(RecogConfig) if dataclasses.is_dataclass(f.type)}
    for override in OverridesParser.create().parse_overrides(overrides):
        if not (override.is_add() or override.is_force_add()):
            continue
        key = override.get_key_element().lstrip("+~")
        parts = key.split("@")[0].split(".")
        top = parts[0]
        if top == "hydra" or (len(parts) == 1 and top in config_groups()):
            continue
        if top not in top_level_keys():
            raise ConfigError(
                f"cannot add {override.input_line!r}: no schema has the key {top!r}; valid top-level "
                f"keys: {', '.join(top_level_keys())}; config groups: {', '.join(config_groups())}"
            )
        if top in sections and len(parts) > 1:
            valid = [f.name for f in dataclasses.fields(sections[top])]
            if parts[1] not in valid:
                raise ConfigError(
                    f"cannot add {override.input_line!r}: {top} has no key {parts[1]!r}; "
                    f"valid keys in {top}: {', '.join(valid)}"
                )


def _fixed_and_swept(overrides: list[str]) -> tuple[list[str], list[str]]:
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [
        o.input_line
        for o in parsed
        if not o.is_sweep_override() and not o.get_key_element().lstrip("+~").startswith("hydra")
    ]
    swept = [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]
    return fixed, swept


# ---------------------------------------------------------------------- stage preconditions


def check_stage_ready(cfg: DictConfig) -> None:
    """The checks each stage makes before any work, made before Hydra creates a run folder
    (the stages make them again: they are also called without run.py)."""
    stage = OmegaConf.select(cfg, "stage")
    stage = getattr(stage, "value", stage)  # a Stage enum member
    if stage in ("eval", "export") and not cfg.model_path:
        raise ConfigError(f"stage={stage} needs a trained model: model_path=<run dir>/best_model")
    if stage in ("eval", "export") and not Path(cfg.model_path).is_dir():
        raise ConfigError(
            f"model_path={cfg.model_path} does not exist or is not a directory: point it at a run's best_model/"
        )
    if stage in ("train", "eval"):
        from recog.data.loader import check_num_workers

        check_num_workers(cfg.data.num_workers)
    if stage == "train":
        check_loss_inputs(cfg)
    if stage == "predict":
        from recog.stages.predict import check_ready

        check_ready(cfg)
    if stage == "index":
        from recog.stages.index import check_ready as check_index_ready

        check_index_ready(cfg)


def check_loss_inputs(cfg: DictConfig) -> None:
    """Training: a loss term reading ``logits`` needs a head (else it would fail at the first step).
    Not a compose-time check: a model without a head is fine for eval, export and the Python API."""
    if "head" not in cfg or "loss" not in cfg or OmegaConf.is_missing(cfg, "loss") or cfg.head is not None:
        return
    if not OmegaConf.is_config(cfg._get_node("loss")):
        return
    for name in cfg.loss:
        term = cfg.loss._get_node(name)
        if not OmegaConf.is_config(term) or "input" not in term or OmegaConf.is_missing(term, "input"):
            continue
        key = term["input"]
        if getattr(key, "value", key) == "logits":
            raise ConfigError(
                f"loss term '{name}' reads the head's logits, but head=none: choose a head "
                f"(e.g. head=arcmargin) or a loss on the features (e.g. loss=triplet)"
            )


# ---------------------------------------------------------------------- output folders


def check_output_dirs(cfg: DictConfig, overrides: list[str], multirun: bool) -> None:
    """``ConfigError`` unless ``paths.output_root`` and the run (or sweep) folder can be created."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = given_dir(overrides, key)
    if given is not None and not given.strip():
        raise ConfigError(
            f"{key} is empty: it would make the current folder the run folder; name a folder "
            f"({key}=outputs/{'multirun' if multirun else 'runs'}/my_run), or leave {key} out for a new dated one"
        )
    output_root = str(cfg.paths.output_root)
    run_dir = given if given is not None else os.path.join(output_root, "multirun" if multirun else "runs")
    check_writable(output_root, "paths.output_root")
    check_writable(_literal_prefix(run_dir), key if given is not None else "the run folder")


def _literal_prefix(path: str) -> str:
    """The part of ``path`` before its first interpolation (``outputs/runs/${now:...}`` -> ``outputs/runs``)."""
    cut = path.find("${")
    return path if cut < 0 else os.path.dirname(path[:cut]) if not path[:cut].endswith("/") else path[:cut]


def given_dir(overrides: list[str], key: str) -> str | None:
    """The value the command line gives ``key`` (``hydra.run.dir`` / ``hydra.sweep.dir``), None if none."""
    given = None
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.get_key_element().lstrip("+~") == key and not override.is_sweep_override():
            value = override.value()
            given = "" if value is None else str(value)
    return given


def check_named_run_dir(cfg: DictConfig, run_dir: str | None) -> None:
    """``stage=train`` into a run dir the command names: ``ConfigError`` if a live training holds
    it, or with ``resume=true`` if it holds no checkpoint (checked again by the stage). Not in a
    rank ``paddle.distributed.launch`` started: the command that started it checked, and rank 0
    may already hold the lock."""
    from recog.distributed.launch import under_launcher

    stage = OmegaConf.select(cfg, "stage")
    if getattr(stage, "value", stage) != "train" or not run_dir or "${" in run_dir or under_launcher():
        return
    from recog.training.resume import LAST, no_checkpoint_message
    from recog.training.run_lock import RunLock
    from recog.utils import checkpoint

    RunLock(run_dir).check_free()
    if cfg.resume and not checkpoint.has_checkpoint(Path(run_dir) / LAST):
        raise ConfigError(no_checkpoint_message(run_dir))


def remove_untouched_run_dir(run_dir) -> bool:
    """Remove the run folder Hydra made for a stage that refused before doing anything: it holds
    only ``.hydra/`` and an empty ``run.log`` (a stage logs as soon as it starts work). Not in a
    data-parallel process (the launcher's run dir is shared). Returns whether it was removed."""
    run_dir = Path(run_dir)
    if os.environ.get("PADDLE_TRAINER_ID") is not None or not run_dir.is_dir():
        return False
    if not {p.name for p in run_dir.iterdir()} <= {".hydra", "run.log"}:
        return False
    log_file = run_dir / "run.log"
    if log_file.is_file() and log_file.read_text(errors="replace").strip():
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


# ---------------------------------------------------------------------- --help


def help_text() -> str:
    """recog's ``run.py --help`` (``hydra.help.template`` resolves to this): stages, the config
    groups of ``conf/`` with their options, common overrides, where to read more."""
    lines = [
        "recog: deep metric learning on PaddlePaddle (Hydra config, MLflow tracking).",
        "",
        "Usage: python run.py [stage=train|eval|export|predict|index] [group=option ...] [key=value ...]",
        "       python run.py -m key=a,b ...      a sweep: one job per combination",
        "       python run.py --cfg job ...       print the composed config, run nothing",
        "",
        "Stages:",
        "  stage=train     train a model (default); writes <run dir>/best_model and checkpoints/last",
        "  stage=eval      evaluate model_path=<run dir>/best_model",
        "  stage=export    export model_path=<best_model> as a Paddle inference model (and ONNX)",
        "  stage=predict   features of predict.input=<folder|list> with predict.model_dir=<export>,",
        "                  searched in predict.gallery=<folder|list> when given",
        "  stage=index     a gallery index.gallery=<list|folder> indexed with index.model_dir=<export>, edited",
        "                  (index.add=<list|folder>, index.remove=[ids]) and logged as a search model",
        "",
        "Config groups (group=option):",
    ]
    for group in config_groups():
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        lines.append(f"  {group:<15} {', '.join(options)}")
    lines += [
        "",
        "Common overrides:",
        "  backbone.scale=0.5  neck.embedding_size=128  head.margin=0.2  loss=ce_triplet",
        "  data.image_size=64  data.batch_size=64 data.samples_per_class=4  optimizer.lr=0.001",
        "  trainer.epochs=4  trainer.steps_per_epoch=N  trainer.device=auto|cpu|gpu  seed=0",
        "  dataset=image_list dataset.root=DIR  resume=true  launcher.nproc_per_node=N",
        "  paths.output_root=outputs  mlflow.tracking_uri=http://HOST:5000  mlflow.experiment_name=NAME",
        "",
        "Every key and its default: python run.py --cfg job. More: README.md (commands, overrides,",
        "failure behaviour) and the option files in conf/<group>/. Hydra's own flags: --hydra-help.",
    ]
    return "\n".join(lines).replace("$", "$$")  # the template goes through string.Template


def register_help_resolver() -> None:
    if not OmegaConf.has_resolver(HELP_RESOLVER):
        OmegaConf.register_new_resolver(HELP_RESOLVER, help_text)
