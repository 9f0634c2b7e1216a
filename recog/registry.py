"""The component registry: what recog builds from config, read from the config tree's yaml files.

A component (backbone, neck, head, loss, dataset, optimizer, scheduler, postprocess) is registered by one yaml,
``conf/<group>/<name>.yaml`` or ``<dir>/<group>/<name>.yaml`` of a ``hydra.searchpath`` entry, that
names its ``_target_``. Nothing is registered in Python: the registry is read from the yaml text,
without importing anything, so that safe loading of a saved config (``recog.config.trusted``) can
check it before any import. Composition checks the same list (``recog.config.components``).

Where a group's component sits in a config tree, and which keys of its node recog reads itself
(wiring) rather than passing them to the constructor, is declared once here in ``GROUPS``.
"""

import importlib.util
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
LOSS_INPUTS = ("logits", "features", "backbone")  # the model outputs a loss term may read


@dataclass(frozen=True)
class Group:
    """How one config group's components are wired.

    ``wiring``: keys of the node recog reads itself, with their types (checked like arguments).
    ``supplied``: constructor arguments recog passes (never set in the config).
    ``filled``: arguments that, left null, recog fills in (training classes, feature width).
    ``terms``: the node maps term names to ``{weight, input, fn: {_target_, ...}}`` (the loss).
    ``steps``: the node maps step names to components ``{_target_, ...}`` (post-processing).
    """

    name: str
    wiring: Mapping[str, Any] = field(default_factory=dict)
    supplied: tuple[str, ...] = ()
    filled: tuple[str, ...] = ()
    terms: bool = False
    steps: bool = False


GROUPS: dict[str, Group] = {
    "backbone": Group("backbone", wiring={"stop_layer": Optional[str], "pretrained": Optional[str]}),  # noqa: UP045
    "neck": Group("neck", supplied=("in_channels",)),
    "head": Group("head", supplied=("embedding_size",), filled=("class_num",)),
    "loss": Group(
        "loss",
        wiring={"weight": float, "input": LOSS_INPUTS},
        filled=("class_num", "num_classes", "feat_dim"),
        terms=True,
    ),
    "dataset": Group("dataset"),
    "optimizer": Group("optimizer", wiring={"lr": float}, supplied=("parameters", "learning_rate", "grad_clip")),
    "scheduler": Group("scheduler", supplied=("base_lr", "epochs", "steps_per_epoch")),
    "postprocess": Group("postprocess", steps=True),
}
TERM_FN = "fn"  # loss.<term>.fn: the loss function's own node


def component_nodes(tree: Mapping) -> Iterator[tuple[str, str, Any]]:
    """``(key, group, node)`` of every component node in a config tree (a dict or DictConfig):
    ``backbone``, ..., ``loss.<term>.fn`` for each loss term and ``postprocess.<step>`` for each
    step. Null nodes (``neck: null``) are skipped, and so are a steps group's non-mapping values (a
    yaml's ``defaults`` list)."""
    for group in GROUPS.values():
        node = tree.get(group.name) if hasattr(tree, "get") else None
        if node is None or not hasattr(node, "get"):
            continue
        if group.terms:
            for term, term_node in node.items():
                fn = term_node.get(TERM_FN) if hasattr(term_node, "get") else None
                if fn is not None:
                    yield f"{group.name}.{term}.{TERM_FN}", group.name, fn
        elif group.steps:
            for step, step_node in node.items():
                if hasattr(step_node, "get"):
                    yield f"{group.name}.{step}", group.name, step_node
        else:
            yield group.name, group.name, node


@dataclass
class Registry:
    """Registered components, from the yaml files of the config search path.

    ``options[group][name]``: the yaml file of option ``group=name``; ``targets[group][target]``:
    the file that registers ``target``; ``nested[target][argument]``: the group whose components
    that argument of ``target`` takes (XBM's ``loss``), from a nested ``_target_`` in its yaml.
    """

    searchpath: tuple[Path, ...]
    options: dict[str, dict[str, Path]]
    targets: dict[str, dict[str, Path]]
    nested: dict[str, dict[str, str]]

    def is_registered(self, group: str, target: str) -> bool:
        return target in self.targets.get(group, {})

    def names(self, group: str) -> list:
        """The registered targets of ``group``, sorted."""
        return sorted(self.targets.get(group, {}))


def config_dirs(searchpath: Sequence[str] = ()) -> tuple[Path, ...]:
    """``conf/`` plus the directories of ``hydra.searchpath`` entries (``file://DIR``, ``pkg://PKG`` or a path)."""
    dirs = [CONF_DIR]
    for entry in searchpath:
        entry = str(entry)
        if entry.startswith("pkg://"):
            spec = importlib.util.find_spec(entry[len("pkg://") :].replace("/", "."))
            locations = list(spec.submodule_search_locations or []) if spec else []
            dirs.extend(Path(p) for p in locations)
        else:
            dirs.append(Path(re.sub(r"^file://", "", entry)))
    return tuple(dict.fromkeys(d.resolve() for d in dirs))


def load_registry(searchpath: Sequence[str] = ()) -> Registry:
    """The registry of ``conf/`` and ``searchpath`` (read from the yaml text: nothing is imported).

    Every file counts: a target is registered if any yaml of its group on the path names it.
    """
    dirs = config_dirs(searchpath)
    options: dict[str, dict[str, Path]] = {g: {} for g in GROUPS}
    targets: dict[str, dict[str, Path]] = {g: {} for g in GROUPS}
    nested: dict[str, dict[str, str]] = {}
    for directory in dirs:
        for group in GROUPS:
            for file in sorted((directory / group).glob("*.yaml")):
                options[group].setdefault(file.stem, file)
                for target, arguments in _cached_file_targets(file, group):
                    targets[group].setdefault(target, file)
                    for argument in arguments:
                        nested.setdefault(target, {})[argument] = group
    return Registry(dirs, options, targets, nested)


# Set by recog.config.compose: the hydra.searchpath of the last composition (outside a Hydra run).
_last_searchpath: tuple[str, ...] = ()


def remember_searchpath(searchpath: Sequence[str]) -> None:
    global _last_searchpath
    _last_searchpath = tuple(str(s) for s in searchpath)


def active_searchpath() -> tuple[str, ...]:
    """``hydra.searchpath`` of the running Hydra job, else of the last ``recog.config.compose``."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return tuple(str(s) for s in (HydraConfig.get().searchpath or ()))
    except Exception:  # noqa: BLE001 - no Hydra run: fall back to the last composition
        pass
    return _last_searchpath


# (path, group) -> ((mtime_ns, size), targets): a yaml is parsed again only when it changes on disk.
_parsed: dict[tuple[Path, str], tuple[tuple[int, int], tuple[tuple[str, tuple[str, ...]], ...]]] = {}


def _cached_file_targets(file: Path, group: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``_file_targets`` of one file, parsed once per version of the file (its mtime and size)."""
    stat = file.stat()
    version = (stat.st_mtime_ns, stat.st_size)
    cached = _parsed.get((file, group))
    if cached is None or cached[0] != version:
        cached = (version, tuple((target, tuple(arguments)) for target, arguments in _file_targets(file, group)))
        _parsed[(file, group)] = cached
    return cached[1]


def _file_targets(file: Path, group: str) -> Iterator[tuple[str, list]]:
    """``(target, [arguments holding a nested component])`` of each component in one yaml file."""
    text = file.read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return  # Hydra reports a broken yaml when it is used
    if not isinstance(doc, dict):
        return
    if re.search(r"^#\s*@package\s+_global_\s*$", text, re.MULTILINE):
        doc = doc.get(group)
    if not isinstance(doc, dict):
        return
    tree = {group: doc}
    for _, _, node in component_nodes(tree):
        if isinstance(node, dict) and isinstance(node.get("_target_"), str):
            arguments = [k for k, v in node.items() if isinstance(v, dict) and "_target_" in v]
            yield node["_target_"], arguments  # the nested components must be registered themselves
