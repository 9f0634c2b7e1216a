"""Instantiate config nodes with errors a user can act on."""

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recog.errors import ConfigError, RecogError


def build(what: str, node, **kwargs):
    """``instantiate(node, **kwargs)`` with a one-paragraph ``ConfigError`` for bad values."""
    target = node.get("_target_") if hasattr(node, "get") else None
    if not target:
        raise ConfigError(f"{what} has no _target_ (got {OmegaConf.to_container(node) if OmegaConf.is_config(node) else node}): "
                          f"choose an option of the {what.split('.')[0]} group")
    if not str(target).startswith("recog."):  # e.g. a saved config from elsewhere: never import or call it
        raise ConfigError(f"{what}: _target_ {str(target)[:200]!r} is not a recog component; refused")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, RecogError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError, AssertionError)):  # Paddle validates with assert
            raise ConfigError(f"{what} ({target}): {cause}") from None
        raise
