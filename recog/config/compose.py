"""Compose the config tree outside ``run.py`` and turn composition errors into plain messages."""

import dataclasses
import itertools
from collections.abc import Iterable

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException, ValidationError

from recog import registry
from recog.config.components import check_components
from recog.config.schema import RecogConfig, register_schemas
from recog.errors import ConfigError
from recog.metrics.pairs import check_target_fmr
from recog.postprocess import legacy
from recog.postprocess.base import check_postprocess

CONF_DIR = registry.CONF_DIR
MAX_SWEEP_VALUES_CHECKED = 20  # each value is one composition (~0.2 s)


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """The same config tree ``python run.py OVERRIDES`` sees (without the ``hydra`` node).

    Raises ``ConfigError`` naming the bad key or option and the valid choices, an interpolation
    that does not resolve, a value out of range (``check_values``), a component argument its
    constructor would refuse (``recog.config.components``), or post-processing steps that do not
    build or do not fit ``eval.binarize`` (``recog.postprocess.base.check_postprocess``).
    ``hydra.searchpath=[DIR]`` adds DIR's ``<group>/<name>.yaml`` files, as in a run; it is
    remembered for ``recog.utils.checkpoint.load_config``.
    """
    overrides = list(overrides)
    cfg, hydra_cfg = _compose(overrides)
    searchpath = tuple(str(s) for s in (hydra_cfg.searchpath or ()))
    registry.remember_searchpath(searchpath)
    check_present(cfg)
    check_interpolations(cfg)
    check_values(cfg)
    check_components(cfg, registry.load_registry(searchpath), trusted=cfg.trusted_targets)
    check_postprocess(cfg)
    return cfg


def _compose(overrides: list[str]):
    """``(cfg without hydra, the hydra node)``; a misspelt component argument, which Hydra refuses
    without naming the valid ones, is composed again as an addition for check_components to explain."""
    register_schemas()
    if GlobalHydra.instance().is_initialized():  # e.g. called from inside a Hydra app
        GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        try:
            cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as error:
            retry = _as_addition(error, overrides)
            if retry is not None:
                try:
                    cfg = hydra_compose("config", overrides=retry, return_hydra_config=True)
                except Exception:  # noqa: BLE001 - explain the original error instead
                    raise ConfigError(explain_config_error(error)) from None
            else:
                raise ConfigError(explain_config_error(error)) from None
        except Exception as error:  # e.g. Hydra's ValueError for "=1": still the command line's fault
            shown = " ".join(_quoted(o) for o in overrides)
            raise ConfigError(f"cannot apply the overrides {shown}: {one_paragraph(str(error))}") from None
    hydra_cfg = cfg.hydra
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, hydra_cfg


def _as_addition(error: Exception, overrides: list[str]):
    """The overrides with ``KEY=V`` turned into ``+KEY=V`` when Hydra refused KEY as not in a
    component node (``backbone``, ``loss.<term>``, ...); else None."""
    cause = error.__cause__ if error.__cause__ is not None else error
    key = _full_key(cause)
    if not key or "not in struct" not in str(cause) or key.split(".")[0] not in registry.GROUPS:
        return None
    for i, override in enumerate(overrides):
        if override.split("=", 1)[0] == key:
            return overrides[:i] + ["+" + override] + overrides[i + 1 :]
    return None


def check_overrides(args: list[str]) -> DictConfig | None:
    """Compose once per value of every override before Hydra runs, for readable errors; returns the
    config of the overrides that are not swept (None for a command line left to Hydra).

    Hydra's own message for a misspelt key does not list the valid keys. Sweeps
    (``head.margin=0.1,0.2``) are checked value by value (the first ``MAX_SWEEP_VALUES_CHECKED``
    of each); ``hydra`` settings but ``hydra.searchpath`` (which adds components), and command
    lines with Hydra flags other than ``-m``, are left to Hydra.
    """
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return None  # --cfg job, -cn NAME, --info ...: Hydra's own modes, which it validates itself
    plain = [
        a
        for a in args
        if a not in ("-m", "--multirun")
        and (not a.lstrip("+~").startswith("hydra") or a.lstrip("+~").startswith("hydra.searchpath="))
    ]
    parsed = []
    for arg in plain:  # one at a time, so that the message can say which one is wrong
        try:
            parsed.extend(OverridesParser.create().parse_overrides([arg]))
        except Exception as error:  # HydraException, or the parser's evaluation of e.g. range()
            raise ConfigError(f"cannot parse the override {_quoted(arg)}: {one_paragraph(str(error))}") from None
    if not any(a in ("-m", "--multirun") for a in args):
        for override in parsed:
            if override.is_sweep_override():  # Hydra would refuse it only after making a run folder
                raise ConfigError(
                    f"{_quoted(override.input_line)} is a sweep (several values): run it with "
                    "-m (python run.py -m ...), or give one value"
                )
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    cfg = compose(fixed)
    for override in parsed:
        if override.is_sweep_override():
            try:  # the first values only: range(0, 10**9) is a valid sweep, if a long one
                values = list(itertools.islice(override.sweep_string_iterator(), MAX_SWEEP_VALUES_CHECKED))
            except Exception:  # interval() and friends have no finite list of values
                continue
            for value in values:
                compose(fixed + [f"{override.get_key_element()}={value}"])
    return cfg


def check_present(cfg: DictConfig, schema: type = RecogConfig, prefix: str = "") -> None:
    """``ConfigError`` if a key of the schema's fixed sections was deleted (``~data``, ``~trainer.epochs``)."""
    for spec in dataclasses.fields(schema):
        key = f"{prefix}{spec.name}"
        if spec.name not in cfg:
            raise ConfigError(f"{key} was deleted (~{key}), but recog needs it: override its value instead")
        if dataclasses.is_dataclass(spec.type) and OmegaConf.is_config(cfg._get_node(spec.name)):
            check_present(cfg[spec.name], spec.type, f"{key}.")


def check_values(cfg: DictConfig) -> None:
    """``ConfigError`` for a value out of range (unset ``???`` values are skipped): every field of
    recog's own sections with a ``Range`` (recog/config/schema.py), ``launcher.node_rank`` below
    ``launcher.nnodes``, the ``eval`` post-processing values, and any component size
    (``embedding_size``, ``class_num``, ...) that is set."""
    check_ranges(cfg)
    _check_launcher(cfg)
    _check_component_sizes(cfg)
    if "eval" in cfg and not OmegaConf.is_missing(cfg.eval, "target_fmr"):
        check_target_fmr(cfg.eval.target_fmr)


def check_ranges(cfg: DictConfig, schema: type = RecogConfig, prefix: str = "") -> None:
    """``ConfigError`` for the first field of ``schema`` (and its sections) outside its ``Range``."""
    for spec in dataclasses.fields(schema):
        if spec.name not in cfg or OmegaConf.is_missing(cfg, spec.name):
            continue
        key = f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(spec.type):
            if OmegaConf.is_dict(cfg._get_node(spec.name)):
                check_ranges(cfg[spec.name], spec.type, f"{key}.")
            continue
        bounds = spec.metadata.get("range")
        if bounds is None:
            continue
        try:
            value = cfg[spec.name]
        except OmegaConfBaseException:  # an interpolation that needs Hydra (${hydra:...}): left to the run
            continue
        problem = bounds.problem(key, value)
        if problem:
            raise ConfigError(problem)


# Component arguments (any group, any depth) that count things: at least 1 when set. Components have
# no schema of their own (their yaml and constructor are their definition), so their sizes are named here.
_COMPONENT_COUNTS = (
    "embedding_size",
    "class_num",
    "num_classes",
    "feat_dim",
    "fpn_channels",
    "num_levels",
    "memory_size",
)


def _check_launcher(cfg: DictConfig) -> None:
    launcher = cfg.get("launcher")
    if launcher is None or OmegaConf.is_missing(launcher, "nnodes") or OmegaConf.is_missing(launcher, "node_rank"):
        return
    if launcher.node_rank is not None and launcher.node_rank >= launcher.nnodes:
        raise ConfigError(f"launcher.node_rank={launcher.node_rank} must be below launcher.nnodes={launcher.nnodes}")


def _check_component_sizes(cfg: DictConfig) -> None:
    """Every ``embedding_size`` / ``class_num`` / ... set anywhere under the component groups is >= 1."""

    def walk(node, path: str) -> None:
        for key in node:
            if OmegaConf.is_missing(node, key):
                continue
            child = node._get_node(key)
            if OmegaConf.is_config(child):
                if OmegaConf.is_dict(child):  # lists (e.g. backbone.stop_layer=[...]) hold no sizes
                    walk(node[key], f"{path}.{key}")
                continue
            if key not in _COMPONENT_COUNTS:
                continue
            try:
                value = node[key]
            except OmegaConfBaseException:
                continue
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{path}.{key} must be an integer of at least 1, got {value!r}")

    for group in registry.GROUPS:
        if group in cfg and not OmegaConf.is_missing(cfg, group) and OmegaConf.is_config(cfg._get_node(group)):
            walk(cfg[group], group)


def check_interpolations(cfg: DictConfig) -> None:
    """``ConfigError`` naming the first ``${...}`` that does not resolve (or resolves to a wrongly typed
    value), section by section. ``${hydra:...}`` can only resolve inside a Hydra run: a section
    using it is left to that run."""
    for key in cfg:
        if key == "hydra" or OmegaConf.is_missing(cfg, key):
            continue
        try:
            node = cfg[key]  # resolves a top-level interpolation
            if OmegaConf.is_config(node):
                OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
        except Exception as error:  # resolver errors come wrapped or raw, by resolver
            if "HydraConfig was not set" in str(error):
                continue
            where = _full_key(error) or key
            raise ConfigError(f"cannot resolve {where}: {_first_line(error)}") from None


def explain_config_error(error: Exception) -> str:
    """One paragraph: what is wrong, where, and what would be valid."""
    return one_paragraph(_explain(error))


def one_paragraph(text: str) -> str:
    """A multi-line message (Hydra's) as one line: a list under a line ending in ':' becomes comma
    separated, and lines of carets (which point into the line above) are dropped."""
    parts, listing = [], False
    for raw in text.strip().splitlines():
        line = raw.strip()
        if not line or set(line) <= {"^"}:
            continue
        indented = raw[:1] in (" ", "\t")
        if not parts:
            parts.append(line)
        elif listing and indented and not parts[-1].endswith(":"):
            parts.append(", " + line)
        else:
            parts.append((" " if parts[-1][-1] in ".:;!?" else "; ") + line)
        listing = line.endswith(":") or (listing and indented)
    return "".join(parts)


def _quoted(text: str, limit: int = 200) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _explain(error: Exception) -> str:
    if isinstance(error, MissingConfigException):  # unknown group option: Hydra lists the options
        return str(error).split("\nConfig search path:")[0].strip()
    cause = error.__cause__ if error.__cause__ is not None else error
    message = str(error).split("\n")[0]
    if isinstance(cause, ValidationError):
        return f"{message}: {_first_line(cause)} ({_full_key(cause)})"
    moved = legacy.hint(_full_key(cause))
    if moved:
        return f"{message} {moved}"
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "object_type", None) is not None:
        node = cause.object_type
        valid = (
            [f.name for f in dataclasses.fields(node) if f.name != "_target_"] if dataclasses.is_dataclass(node) else []
        )
        key = _full_key(cause)
        parent = key.rsplit(".", 1)[0] if "." in key else "the top level"
        hint = f"; valid keys in {parent}: {', '.join(valid)}" if valid else ""
        return f"{message} {_first_line(cause)}{hint}"
    return str(error).strip()


def _first_line(error: Exception) -> str:
    return str(error).strip().split("\n")[0]


def _full_key(error: Exception) -> str:
    return str(getattr(error, "full_key", "") or "")


def require_complete(cfg: DictConfig, *sections: str) -> None:
    """Fail with a clear message when a mandatory value (``???``) in these sections is unset."""
    missing = [k for k in OmegaConf.missing_keys(cfg) if not sections or k.split(".")[0] in sections]
    if missing:
        examples = " ".join(f"{k}=..." for k in missing)
        raise ConfigError(
            f"missing required config value(s): {', '.join(missing)}; set them on the command line, e.g. {examples}"
        )
