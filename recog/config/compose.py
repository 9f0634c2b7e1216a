"""Compose the config tree outside ``run.py`` and turn composition errors into plain messages."""

import dataclasses
from pathlib import Path
from typing import Iterable, List

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from recog.config.schema import register_schemas
from recog.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """The same config tree ``python run.py OVERRIDES`` sees (without the ``hydra`` node).

    Raises ``ConfigError`` naming the bad key or option and the valid choices.
    """
    register_schemas()
    overrides = list(overrides)
    if GlobalHydra.instance().is_initialized():  # e.g. called from inside a Hydra app
        GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        try:
            return hydra_compose("config", overrides=overrides)
        except (HydraException, OmegaConfBaseException) as error:
            raise ConfigError(explain_config_error(error)) from None


def check_overrides(args: List[str]) -> None:
    """Compose once per value of every override before Hydra runs, for readable errors.

    Hydra's own message for a misspelt key does not list the valid keys. Sweeps
    (``head.margin=0.1,0.2``) are checked value by value; ``hydra`` settings, and command lines
    with Hydra flags other than ``-m``, are left to Hydra.
    """
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return  # --cfg job, -cn NAME, --info ...: Hydra's own modes, which it validates itself
    plain = [a for a in args if a not in ("-m", "--multirun") and not a.lstrip("+~").startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(plain)
    except HydraException as error:
        raise ConfigError(str(error)) from None
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    compose(fixed)
    for override in parsed:
        if override.is_sweep_override():
            try:
                values = list(override.sweep_string_iterator())
            except Exception:  # interval() and friends have no finite list of values
                continue
            for value in values:
                compose(fixed + [f"{override.get_key_element()}={value}"])


def explain_config_error(error: Exception) -> str:
    """One paragraph: what is wrong, where, and what would be valid."""
    if isinstance(error, MissingConfigException):  # unknown group option: Hydra lists the options
        return str(error).split("\nConfig search path:")[0].strip()
    cause = error.__cause__ if error.__cause__ is not None else error
    message = str(error).split("\n")[0]
    if isinstance(cause, ValidationError):
        return f"{message}: {_first_line(cause)} ({_full_key(cause)})"
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "object_type", None) is not None:
        node = cause.object_type
        valid = [f.name for f in dataclasses.fields(node) if f.name != "_target_"] if dataclasses.is_dataclass(node) else []
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
        raise ConfigError(f"missing required config value(s): {', '.join(missing)}; set them on the command line, e.g. {examples}")
