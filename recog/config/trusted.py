"""Safe loading of a saved config (a model folder's ``config.yaml``): nothing it names is run.

A saved config comes from elsewhere (a shared folder, a download, the MLflow registry). Before
anything is imported or called, ``load_saved_config`` parses it as plain YAML (``read_plain_yaml``:
at most 1 MiB, nesting at most 64 levels, no anchors or aliases, only strings, numbers, booleans,
null, lists and mappings with string or integer keys: a timestamp, ``!!set``, ``!!binary`` or a
null key is refused) and refuses, with one ``ConfigError`` naming the file, the key and the value:

- any ``_target_`` that is not a registered component of its own group at its own position
  (``backbone``, ``neck``, ``head``, ``loss.<term>.fn``, ``dataset``, ``optimizer``,
  ``scheduler``; a nested one only at an argument that the component's registered yaml declares
  as holding a component, e.g. XBM's ``loss``, and then only a registered one of that group);
- Hydra's and OmegaConf's special keys: ``_args_``, ``_partial_``, ``_call_``, ``_recursive_``,
  ``_convert_`` (any ``_name_`` key but ``_target_``);
- any ``${...}`` (interpolations and resolvers such as ``${oc.env:HOME}``) anywhere;
- a head without its class count (``head.class_num: null``): recog saves the count it trained
  with, and loading never reads a dataset to count classes (which could write the digits there);
- a component size (``embedding_size``, ``class_num``, ...) that is not a whole number in
  1..2^31-1 (Paddle's index range).

The registry is ``recog.registry.load_registry``: the yaml files of ``conf/`` and of the
``hydra.searchpath`` in use, so a component added the documented way loads. The only way around
the check is ``trusted_targets=[pkg.Class,...]`` on the command line (or the API's argument):
the targets named there are accepted too; the saved file's own ``trusted_targets`` is ignored.

Configs saved by older recog (components with per-component schemas: loss terms with their
arguments beside ``weight`` / ``input``, the schedule under ``lr``, post-processing as flat
``eval.*`` keys) are converted when read.
"""

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from recog.config.components import check_components
from recog.errors import ConfigError
from recog.postprocess import legacy as legacy_postprocess
from recog.registry import GROUPS, TERM_FN, Registry, active_searchpath, component_nodes, load_registry

SPECIAL_KEY = re.compile(r"^_\w+_$")  # _target_, _args_, _partial_, _recursive_, _convert_, _call_, ...
TRUST_HINT = (
    "if you trust this model folder's code, name the target on the command line: "
    "trusted_targets=[{target}] (see README, Running stages)"
)


def load_saved_config(file, trusted_targets: Iterable[str] = (), searchpath: Sequence[str] | None = None) -> DictConfig:
    """The checked config of ``file`` (a saved ``config.yaml``), converted to the current layout.

    ``searchpath``: the ``hydra.searchpath`` entries whose yaml files register components (None:
    those of the running Hydra job or the last ``recog.config.compose``). ``backbone.pretrained``
    is cleared: a saved model's weights come from its own safetensors, not from a path it names.
    """
    file = Path(file)
    tree = read_plain_yaml(file)
    if not isinstance(tree, dict):
        raise ConfigError(f"{file} is not a saved recog config: expected a mapping, got {type(tree).__name__}")
    check_plain(tree, file)
    check_saved_sizes(tree, file)
    tree = upgrade_layout(tree)
    registry = load_registry(active_searchpath() if searchpath is None else searchpath)
    check_targets(tree, file, registry, trusted_targets)
    try:  # the arguments too, now that every target is known to be registered or trusted
        check_components(tree, registry, trusted_targets)
    except ConfigError as error:
        raise ConfigError(f"{file}: {error}") from None
    if "trusted_targets" in tree:  # trust is given by this run, never by the saved file
        tree["trusted_targets"] = []
    if isinstance(tree.get("backbone"), dict) and tree["backbone"].get("pretrained"):
        tree["backbone"]["pretrained"] = None
    return OmegaConf.create(tree)


MAX_CONFIG_BYTES = 1 << 20  # a saved config is a few KB
MAX_DEPTH = 64  # recog's configs nest about 5 levels
MAX_SIZE = 2**31 - 1  # Paddle's int32 shapes
SIZE_KEYS = ("embedding_size", "class_num", "num_classes", "feat_dim", "fpn_channels", "num_levels", "memory_size")


class _PlainLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases (a "billion laughs" file expands
    exponentially; recog never writes them) and with a nesting limit (deep nesting exhausts the
    recursive composer)."""

    depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(
                f"line {event.start_mark.line + 1} uses a YAML anchor or alias (&, *), which a saved "
                "config may not (recog never writes them; they can expand a small file without bound)"
            )
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Refused(f"line {event.start_mark.line + 1} nests deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Refused(Exception):
    """A saved config's YAML is outside what ``read_plain_yaml`` takes."""


def read_plain_yaml(file) -> Any:
    """The plain data of a YAML file from elsewhere (module docstring): ``ConfigError`` naming the
    file and why otherwise, never anything bigger than the file suggests."""
    file = Path(file)
    try:
        with open(file, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the saved config {file}: {error}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{file} is over {MAX_CONFIG_BYTES // 1024} KiB: not a saved recog config (a few KB)")
    try:
        tree = yaml.load(text, Loader=_PlainLoader)  # noqa: S506 - a SafeLoader: a python/* tag is a YAMLError
    except _Refused as refused:
        raise ConfigError(f"{file} is refused: {refused}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{file} is not a valid saved config: {str(error).splitlines()[0]}") from None
    _check_plain_types(tree, file, "")
    return tree


def _check_plain_types(node: Any, file, key: str) -> None:
    if isinstance(node, dict):
        for name, value in node.items():
            if isinstance(name, bool) or not isinstance(name, (str, int)):
                raise ConfigError(
                    f"{file}: the key {_shown(name)}{f' under {key}' if key else ''} is refused: a saved config's "
                    "keys are strings (or whole numbers)"
                )
            _check_plain_types(value, file, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_plain_types(value, file, f"{key}[{i}]")
    elif node is not None and not isinstance(node, (str, int, float, bool)):
        raise ConfigError(
            f"{file}: {key or 'the document'}={_shown(node)} is refused: a saved config holds only strings, "
            f"numbers, booleans, null, lists and mappings (YAML made a {type(node).__name__} of it; quote it if "
            "it is text)"
        )


def check_saved_sizes(tree: dict, file) -> None:
    """``ConfigError`` for a head whose ``class_num`` is null (loading never counts a dataset's
    classes) or a component size outside 1..``MAX_SIZE``."""
    head = tree.get("head")
    if isinstance(head, dict) and "class_num" in head and head["class_num"] is None:
        raise ConfigError(
            f"{file}: head.class_num is null; recog saves the class count the head was trained with, so "
            "this file was edited. Loading never reads the dataset to count classes: set head.class_num to "
            "the count the weights were trained with"
        )

    def walk(node, key):
        if isinstance(node, dict):
            for name, value in node.items():
                where = f"{key}.{name}"
                if name in SIZE_KEYS and value is not None and not isinstance(value, (dict, list)):
                    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
                        raise ConfigError(
                            f"{file}: {where}={_shown(value)} is refused: a size must be a whole number in "
                            f"1..{MAX_SIZE}"
                        )
                walk(value, where)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{key}[{i}]")

    for group in ("backbone", "neck", "head", "loss"):
        walk(tree.get(group), group)


def check_plain(tree: Any, file, key: str = "") -> None:
    """``ConfigError`` for a special key (other than ``_target_``) or a ``${...}`` anywhere."""
    if isinstance(tree, dict):
        for name, value in tree.items():
            where = f"{key}.{name}" if key else str(name)
            if "${" in str(name):
                raise ConfigError(
                    f"{file}: the key {where!r} holds an interpolation; a saved config may not "
                    f"(nothing in it is resolved)"
                )
            if isinstance(name, str) and SPECIAL_KEY.match(name) and name != "_target_":
                raise ConfigError(
                    f"{file}: {where}={_shown(value)} is refused: a saved config may not use "
                    f"{name} (it makes Hydra call or build something)"
                )
            check_plain(value, file, where)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            check_plain(value, file, f"{key}[{i}]")
    elif isinstance(tree, str) and "${" in tree:
        raise ConfigError(
            f"{file}: {key}={tree!r} is refused: a saved config may not hold interpolations or "
            f"resolvers (${{...}}); it is read as plain data"
        )


def check_targets(tree: dict, file, registry: Registry, trusted_targets: Iterable[str] = ()) -> None:
    """``ConfigError`` for any ``_target_`` not registered in its own group at its own position."""
    trusted = set(trusted_targets)
    allowed = {}  # id(node) -> (group, key) of the nodes whose _target_ may be a component
    for key, group, node in component_nodes(tree):
        if isinstance(node, dict):
            allowed[id(node)] = (group, key)
    _walk(tree, file, registry, trusted, allowed, "")


def _walk(node, file, registry, trusted, allowed, key):
    if isinstance(node, list):
        for i, value in enumerate(node):
            _walk(value, file, registry, trusted, allowed, f"{key}[{i}]")
        return
    if not isinstance(node, dict):
        return
    if "_target_" in node:
        target = node["_target_"]
        where = f"{key}._target_" if key else "_target_"
        if id(node) not in allowed:
            raise ConfigError(
                f"{file}: {where}={_shown(target)} is refused: a _target_ is only allowed where a "
                f"component sits (backbone, neck, head, loss.<term>.fn, dataset, optimizer, "
                f"scheduler, or an argument its yaml declares as one)"
            )
        group, _ = allowed[id(node)]
        if not isinstance(target, str) or not (registry.is_registered(group, target) or target in trusted):
            raise ConfigError(
                f"{file}: {where}={_shown(target)} is refused: not a registered {group} "
                f"(registered: {', '.join(registry.names(group))}); components are registered by a "
                f"yaml in conf/{group}/ or {group}/ of a hydra.searchpath directory; "
                + TRUST_HINT.format(target=target)
            )
        for argument, nested_group in registry.nested.get(target, {}).items():
            value = node.get(argument)
            if isinstance(value, dict):
                allowed[id(value)] = (nested_group, f"{key}.{argument}")
    for name, value in node.items():
        if name != "_target_":
            _walk(value, file, registry, trusted, allowed, f"{key}.{name}" if key else str(name))


def upgrade_layout(tree: dict) -> dict:
    """A config saved by older recog, in the current layout (a current one is returned as it is).

    Old: ``lr: {_target_: schedule}``, ``loss.<term>: {_target_, weight, input, <arguments>}``,
    ``eval.flip`` / ``query_expansion`` / ``rerank`` ... (``recog.postprocess.legacy``).
    New: ``scheduler: {...}``, ``loss.<term>: {weight, input, fn: {_target_, <arguments>}}``,
    ``postprocess: {<step>: {_target_, <arguments>}}``.
    """
    tree = legacy_postprocess.upgrade(dict(tree))  # eval.flip / query_expansion / rerank -> postprocess
    if "scheduler" not in tree and isinstance(tree.get("lr"), dict):
        tree["scheduler"] = tree.pop("lr")
    loss = tree.get("loss")
    if isinstance(loss, dict):
        upgraded = {}
        for term, node in loss.items():
            if isinstance(node, dict) and TERM_FN not in node and "_target_" in node:
                node = dict(node)
                wiring = {name: node.pop(name) for name in GROUPS["loss"].wiring if name in node}
                node = {**wiring, TERM_FN: node}
            upgraded[term] = node
        tree["loss"] = upgraded
    return tree


def _shown(value, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
