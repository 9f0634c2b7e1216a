"""Instantiate config nodes with errors a user can act on."""

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recog.config.components import node_wiring
from recog.errors import ConfigError, RecogError


def build_component(group: str, node, key: str = None, **supplied):
    """Build a component of ``group`` (``recog.registry.GROUPS``) from its config node.

    The group's wiring keys (``stop_layer``, ``weight``, ``lr``, ...) are left out: recog reads
    them itself. ``supplied`` are the arguments recog passes (``in_channels``, ``parameters``, ...).
    Raises ``ConfigError`` for a bad node or a value the constructor refuses.
    """
    params = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    for name in node_wiring(group):
        if name not in supplied:
            params.pop(name, None)
    return build(key or group, params, **supplied)


def build(what: str, node, **kwargs):
    """``instantiate(node, **kwargs)`` with a one-paragraph ``ConfigError`` for bad values."""
    target = node.get("_target_") if hasattr(node, "get") else None
    if not target:
        raise ConfigError(
            f"{what} has no _target_ (got {OmegaConf.to_container(node) if OmegaConf.is_config(node) else node}): "
            f"choose an option of the {what.split('.')[0]} group"
        )
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, RecogError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError, AssertionError)):  # Paddle validates with assert
            raise ConfigError(f"{what} ({target}): {cause}") from None
        if isinstance(cause, MemoryError):  # e.g. embedding_size=1000000000: Paddle cannot allocate the weights
            reason = str(cause).strip().splitlines()[0] if str(cause).strip() else "out of memory"
            raise ConfigError(
                f"{what} ({target}) needs more memory than this machine can give ({reason}): check its sizes "
                f"({', '.join(f'{k}={v}' for k, v in node.items() if isinstance(v, int) and not isinstance(v, bool))})"
            ) from None
        raise
