"""Config schema and composition."""

from recog.config.compose import check_overrides, compose, explain_config_error, require_complete
from recog.config.schema import RecogConfig, Stage, register_schemas

__all__ = [
    "check_overrides",
    "compose",
    "explain_config_error",
    "require_complete",
    "RecogConfig",
    "Stage",
    "register_schemas",
]
