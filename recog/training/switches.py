"""The ``auto | true | false`` switches of the training step (``trainer.compile``, ``trainer.depthwise_matmul``)."""

from recog.errors import ConfigError

SWITCH_VALUES = ("auto", "true", "false")


def parse_switch(value, name: str) -> str:
    """``auto`` / ``true`` / ``false`` from a config value (Hydra turns ``x=true`` into a bool)."""
    text = str(getattr(value, "value", value)).strip().lower()
    if text not in SWITCH_VALUES:
        raise ConfigError(f"{name}={value!r}: use one of {', '.join(SWITCH_VALUES)}")
    return text
