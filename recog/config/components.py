"""Check component nodes against their constructor: argument names and value types.

A component node is ``{_target_, <wiring keys>, <constructor arguments>}`` (see
``recog.registry.GROUPS``). The valid arguments are those of ``inspect.signature(_target_)``,
less the ones recog supplies itself; their types come from the annotations (or, without one, from
the default's type). Used at composition (``recog.config.compose``) and before building.
"""

import enum
import inspect
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

from hydra.utils import get_object
from omegaconf import OmegaConf

from recog.errors import ConfigError
from recog.registry import GROUPS, TERM_FN, Registry, component_nodes

MISSING = "???"


def check_components(cfg, registry: Registry, trusted: Iterable[str] = ()) -> None:
    """``ConfigError`` for the first component node of ``cfg`` that its constructor would refuse:
    an unregistered ``_target_``, an unknown key (naming the valid ones), a wrongly typed value,
    or a missing required argument. Imports the (registered) targets to read their signatures."""
    tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False) if OmegaConf.is_config(cfg) else cfg
    trusted = set(trusted)
    loss = tree.get("loss")
    if isinstance(loss, dict):
        for term, node in loss.items():
            check_term(f"loss.{term}", node)
    for key, group, node in component_nodes(tree):
        check_node(key, group, node, registry, trusted)


def check_term(key: str, node) -> None:
    """A loss term: ``{weight, input, fn: {_target_, ...}}``."""
    group = GROUPS["loss"]
    valid = list(group.wiring) + [TERM_FN]
    if not isinstance(node, dict):
        raise ConfigError(f"{key} must be a loss term {{weight, input, fn: {{_target_, ...}}}}, got {node!r}")
    for name in node:
        if name not in valid:
            hint = (
                f" (a loss function's own arguments go under fn: {key}.{TERM_FN}.{name})"
                if name in _fn_arguments(node.get(TERM_FN))
                else ""
            )
            raise ConfigError(
                f"Key '{name}' is not a key of the loss term {key}{hint}; valid keys in {key}: {', '.join(valid)}"
            )
    if not isinstance(node.get(TERM_FN), dict) or "_target_" not in node[TERM_FN]:
        raise ConfigError(f"{key}.{TERM_FN} must name the loss function: {{_target_: ..., its arguments}}")
    for name, kind in group.wiring.items():
        if name not in node:
            raise ConfigError(f"{key}.{name} is not set; valid keys in {key}: {', '.join(valid)}")
        check_value(f"{key}.{name}", node[name], kind, "recog")


def _fn_arguments(fn) -> dict[str, inspect.Parameter]:
    try:
        return signature_parameters(get_object(fn["_target_"]))
    except Exception:  # noqa: BLE001 - no hint then; check_node reports the target itself
        return {}


def check_node(key: str, group_name: str, node, registry: Registry, trusted=frozenset()) -> Any:
    """Check one component node; returns its target (imported)."""
    group = GROUPS[group_name]
    wiring = node_wiring(group_name)
    if not isinstance(node, dict):
        raise ConfigError(f"{key} must be a mapping with a _target_, got {node!r}")
    target = node.get("_target_")
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{key} has no _target_ (got {node!r}): choose an option of the {group_name} group")
    if not registry.is_registered(group_name, target) and target not in trusted:
        raise ConfigError(
            f"{key}._target_={target} is not a registered {group_name}: register it with a yaml "
            f"{group_name}/<name>.yaml naming it in conf/ or a hydra.searchpath directory "
            f"(registered: {', '.join(registry.names(group_name))})"
        )
    try:
        obj = get_object(target)
    except Exception as error:  # ImportError, AttributeError, or the module's own failure
        raise ConfigError(f"{key}._target_={target} cannot be imported: {str(error).strip().splitlines()[0]}") from None
    params = signature_parameters(obj)
    valid = valid_keys(group_name, params)
    for name, value in node.items():
        if name == "_target_":
            continue
        if name in wiring:
            check_value(f"{key}.{name}", value, wiring[name], "recog")
            continue
        if name not in params and not accepts_any_keyword(obj):
            raise ConfigError(f"Key '{name}' is not an argument of {target}; valid keys in {key}: {', '.join(valid)}")
        if name in group.supplied:
            raise ConfigError(
                f"{key}.{name} is set by recog, not in the config; valid keys in {key}: {', '.join(valid)}"
            )
        if isinstance(value, dict) and "_target_" in value:
            nested_group = registry.nested.get(target, {}).get(name)
            if nested_group is None:
                raise ConfigError(
                    f"{key}.{name} holds a _target_, but {target}'s yaml declares no component "
                    f"there: only a registered {group_name} component's declared arguments may"
                )
            check_node(f"{key}.{name}", nested_group, value, registry, trusted)
            continue
        if name in params and not (value is None and name in group.filled):
            check_value(f"{key}.{name}", value, params[name], target)
    for name, param in params.items():
        if (
            param.default is inspect.Parameter.empty
            and name not in node
            and name not in group.supplied
            and name not in group.filled
        ):
            raise ConfigError(
                f"{key}.{name} is required by {target} but not set; valid keys in {key}: {', '.join(valid)}"
            )
    return obj


def signature_parameters(obj) -> dict[str, inspect.Parameter]:
    """Named parameters of a class's ``__init__`` or a function (not ``*args`` / ``**kwargs``),
    with annotations resolved (string annotations included)."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return {}
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the raw ones
        hints = {}
    params = {}
    for name, param in signature.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        params[name] = param.replace(annotation=hints.get(name, param.annotation))
    return params


def accepts_any_keyword(obj) -> bool:
    try:
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return True


def node_wiring(group_name: str) -> Mapping[str, Any]:
    """The wiring keys that sit beside the constructor's arguments (a loss's sit one level up)."""
    group = GROUPS[group_name]
    return {} if group.terms else group.wiring


def valid_keys(group_name: str, params: Mapping[str, inspect.Parameter]) -> list[str]:
    group = GROUPS[group_name]
    return [n for n in params if n not in group.supplied] + [w for w in node_wiring(group_name) if w not in params]


def check_value(key: str, value, expected, owner: str) -> None:
    """``ConfigError`` if ``value`` does not fit ``expected``: an ``inspect.Parameter`` (its
    annotation, else its default's type), a type / typing hint, or a tuple of allowed strings."""
    if value == MISSING:
        return  # unset; require_complete names it when the stage needs it
    if isinstance(expected, inspect.Parameter):
        hint = expected.annotation
        if hint is inspect.Parameter.empty:
            default = expected.default
            if default is inspect.Parameter.empty or default is None:
                return
            hint = type(default)
            if hint is tuple:
                hint = Sequence
        elif expected.default is None:
            hint = Optional[hint]  # noqa: UP045 - a runtime type, compared as typing.Union
    else:
        hint = expected
    if isinstance(hint, tuple):
        if value not in hint:
            raise ConfigError(f"{key}={value!r} is not valid: choose one of {', '.join(hint)}")
        return
    if not _fits(value, hint):
        raise ConfigError(
            f"{key}={value!r} has the wrong type: {owner} takes {_describe(hint)}, got {type(value).__name__} {value!r}"
        )


def _fits(value, hint) -> bool:
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and type(hint).__name__ == "UnionType"):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if inspect.isclass(hint) and issubclass(hint, enum.Enum):
        return value in [m.value for m in hint] or value in hint.__members__
    container = origin or hint
    if container in (list, tuple, Sequence, typing.Sequence, list) or (
        inspect.isclass(container) and container.__name__ in ("Sequence", "list", "tuple")
    ):
        if not isinstance(value, (list, tuple)):
            return False
        return not args or all(_fits(v, args[0]) for v in value)
    if container in (dict, Mapping, dict) or (inspect.isclass(container) and container.__name__ == "Mapping"):
        return isinstance(value, dict)
    if inspect.isclass(hint):
        return isinstance(value, hint)
    return True  # a hint we do not interpret: left to the constructor


def _describe(hint) -> str:
    if typing.get_origin(hint) is typing.Union or type(hint).__name__ == "UnionType":
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    names = {bool: "a bool", int: "an int", float: "a float", str: "a string"}
    if hint in names:
        return names[hint]
    if inspect.isclass(hint) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in hint)
    return f"a {getattr(hint, '__name__', None) or str(hint)}"
