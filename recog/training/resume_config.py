"""The config of a resumed run: the one saved in the run's checkpoint (``resume=true
hydra.run.dir=RUN``, or the newest unfinished run), so nothing of the original command needs
repeating. Overrides given with it may change only what can change on resume (``RESUMABLE``);
another one whose value differs from the saved run's is one ``ConfigError`` listing them all.
"""

import dataclasses
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from recog.config.schema import RecogConfig
from recog.errors import ConfigError
from recog.training.resume import LAST
from recog.utils import checkpoint

# What a resumed run may change: dotted keys, or prefixes ending in "." (whole sections).
RESUMABLE = (
    "trainer.epochs",
    "trainer.device",
    "trainer.progress_file",
    "data.num_workers",
    "launcher.",
    "mlflow.",
    "paths.",
    "resume",
    "stage",
    "model_path",
    "trusted_targets",  # what this command trusts to load the saved config (never taken from it)
)
# Filled in by the run when null (head.class_num follows the dataset): null on resume means the saved value.
FILLED_BY_THE_RUN = ("head.class_num",)


def command_line_overrides() -> list[str] | None:
    """The overrides of the ``run.py`` command line (Hydra's), or None outside a Hydra run."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ValueError, ImportError):  # HydraConfig not set: the Python API
        return None


def given_keys(cfg: DictConfig, overrides: list[str] | None) -> set[str]:
    """The dotted keys of ``cfg`` this command set: those under an override's key or group (``overrides``,
    the command line), or without a command line (the Python API) the keys whose value differs from
    the config composed without overrides (compared before resolution, so that a value following
    ``paths.output_root`` is not an override of its own)."""
    typed = _flat(cfg, resolve=False)
    if overrides is not None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        roots = [o.key_or_group.split("@")[0] for o in OverridesParser.create().parse_overrides(overrides)]
        roots = [r for r in roots if r.split(".")[0] != "hydra"]
        return {k for k in typed if any(k == r or k.startswith(r + ".") for r in roots)} | set(roots)
    from recog.config import compose

    default = _flat(compose(), resolve=False)
    missing = object()
    return {k for k in typed.keys() | default.keys() if typed.get(k, missing) != default.get(k, missing)}


def resume_config(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> DictConfig:
    """The config of the resumed run: the one saved in ``run_dir``'s checkpoint, with the values of
    ``RESUMABLE`` keys this command set (``given_keys``). A set key of another kind whose value differs
    from the saved run's is a ``ConfigError`` listing them all."""
    saved = checkpoint.load_config(run_dir / LAST, trusted_targets=list(cfg.get("trusted_targets") or ()))
    current, before = _flat(cfg), _flat(saved)
    given = given_keys(cfg, overrides)
    missing = object()
    refused = sorted(
        k
        for k in given
        if not _resumable(k)
        and current.get(k, missing) != before.get(k, missing)
        and not (k in FILLED_BY_THE_RUN and current.get(k) is None)
    )
    if refused:
        shown = ", ".join(f"{k} (saved {_value(before, k)}, now {_value(current, k)})" for k in refused[:12])
        more = f" and {len(refused) - 12} more" if len(refused) > 12 else ""
        raise ConfigError(
            f"resume=true continues {run_dir} with the config saved in it; these overrides change it: {shown}{more}. "
            f"On resume only {', '.join(k.rstrip('.') + ('.*' if k.endswith('.') else '') for k in RESUMABLE[:6])} "
            "may change: drop the others (the saved values are used), or start a new run without resume=true"
        )
    resumed = cfg.copy()
    with open_dict(resumed):
        for key in saved:
            if key == "hydra" or _resumable(key):
                continue
            if key not in resumed or not _is_structured(resumed, key):
                resumed[key] = saved[key]  # a component group (backbone, loss, ...) or a top-level value: whole
                continue
            for leaf, value in before.items():  # recog's own sections (data, trainer, ...): leaf by leaf
                if leaf.startswith(key + ".") and not (_resumable(leaf) and leaf in given):
                    if OmegaConf.select(resumed, leaf, default=missing) is not missing:
                        OmegaConf.update(resumed, leaf, list(value) if isinstance(value, tuple) else value)
    return resumed


def _is_structured(cfg: DictConfig, key: str) -> bool:
    """Whether ``key`` is one of recog's own sections (a dataclass of ``RecogConfig``: data, trainer,
    ...), as opposed to a component group (backbone, loss, dataset, ...) or a top-level value."""
    return key in _SECTIONS


_SECTIONS = {f.name for f in dataclasses.fields(RecogConfig) if dataclasses.is_dataclass(f.type)}


def _resumable(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE)


def _value(flat: dict, key: str) -> str:
    return repr(flat[key]) if key in flat else "absent"


def _flat(cfg: DictConfig, resolve: bool = True) -> dict[str, Any]:
    """Dotted key -> leaf value (lists as tuples), without the ``hydra`` node."""
    container = OmegaConf.to_container(cfg, resolve=resolve, throw_on_missing=False, enum_to_str=True)
    out: dict[str, Any] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            if not node and prefix:
                out[prefix[:-1]] = {}
            for k, v in node.items():
                if prefix == "" and k == "hydra":
                    continue
                walk(v, f"{prefix}{k}.")
        else:
            value = tuple(node) if isinstance(node, list) else node
            if isinstance(value, float) and math.isnan(value):
                value = "nan"
            out[prefix[:-1]] = value

    walk(container, "")
    return out
