"""Which dataset ``stage=eval`` evaluates: the model's own, unless the command names another.

A model folder's ``config.yaml`` holds the dataset the model was trained and evaluated on. Eval
uses that section, so ``stage=eval model_path=<a run on your lists>`` (and ``make eval``) measures
the model on its own query and gallery lists, not on the default digits. The command overrides it:

* ``dataset=NAME ...`` (the group): the command's dataset, whole;
* ``dataset.KEY=VALUE`` alone: the saved dataset with those keys changed (e.g. another ``root``
  holding the same lists); a key the saved dataset does not have is an error.

The embedded digits are generated, the same everywhere: a saved digits dataset whose root does not
hold them (a model from another machine) is read under this command's ``paths.output_root``.

Without a command line (the Python API) a dataset key whose value differs from the config composed
without overrides counts as given (as for ``resume=true``, recog/training/resume_config.py).
"""

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from recog.data.digits import LIST_FILES
from recog.data.splits import RetrievalSplits
from recog.errors import ConfigError
from recog.training.resume_config import given_keys

DIGITS = "recog.data.digits.load_digits"  # generated, not read from a user's folder


@dataclass
class EvalDataset:
    cfg: DictConfig  # the eval's config, its ``dataset`` the one to evaluate
    source: str  # where that dataset section came from, for the log and MLflow


def choose_dataset(cfg: DictConfig, trained_cfg: DictConfig, model_path, overrides: list[str] | None) -> EvalDataset:
    """``cfg`` with ``dataset`` replaced by the model's saved one unless ``overrides`` (the command
    line's, or None for the Python API) name the dataset group; ``dataset.KEY`` overrides alone are
    applied to the saved section."""
    saved = trained_cfg.get("dataset") if isinstance(trained_cfg, DictConfig) else None
    group, leaves = _given(cfg, overrides)
    if saved is None or "_target_" not in saved:
        return EvalDataset(cfg, f"the command's: {model_path}/config.yaml names no dataset")
    if group:
        return EvalDataset(cfg, "the command's (dataset=... given)")
    chosen = OmegaConf.create(OmegaConf.to_container(saved, resolve=True))
    moved = ""
    if chosen._target_ == DIGITS and "root" not in leaves and not _holds_digits(chosen.get("root")):
        # Generated data, the same everywhere: read (or write) them under this run's output root,
        # never into a folder a model from elsewhere names.
        chosen.root = str(Path(str(OmegaConf.select(cfg, "paths.output_root"))) / "data" / "digits")
        moved = f", the digits read under paths.output_root (its saved root {saved.get('root')} holds none)"
    for key in leaves:
        if key not in chosen:
            raise ConfigError(
                f"dataset.{key} is not a key of the model's dataset ({chosen._target_}, saved in "
                f"{model_path}/config.yaml); its keys: {', '.join(str(k) for k in chosen if k != '_target_')}. "
                "To evaluate on another kind of dataset name it: dataset=NAME dataset.KEY=..."
            )
        chosen[key] = OmegaConf.select(cfg, f"dataset.{key}")
    out = cfg.copy()
    with open_dict(out):
        out.dataset = chosen
    changed = f", with {', '.join(f'dataset.{k}' for k in leaves)} from the command" if leaves else ""
    return EvalDataset(out, f"the model's (saved in {model_path}/config.yaml){changed}{moved}")


def _holds_digits(root) -> bool:
    return bool(root) and all((Path(str(root)) / name).is_file() for name in LIST_FILES)


def describe(dataset: DictConfig, splits: RetrievalSplits) -> str:
    """``recog.data.lists.load_lists, root /data/logos, query_list=query.txt gallery_list=gallery.txt:
    448 query images, 448 gallery images``: what the eval reads, for the log and MLflow."""
    lists = " ".join(
        f"{key}={dataset[key]}"
        for key in dataset
        if str(key).endswith(("_list", "_file")) and not str(key).startswith("train") and dataset[key]
    )
    where = ", ".join(filter(None, [str(dataset._target_), f"root {dataset.root}" if "root" in dataset else "", lists]))
    counts = f"{len(splits.query)} query images, " + (
        f"{len(splits.gallery)} gallery images" if splits.gallery is not None else "query == gallery"
    )
    return f"{where}: {counts}"


def _given(cfg: DictConfig, overrides: list[str] | None) -> tuple[bool, list[str]]:
    """Whether the dataset group was given, and the ``dataset.KEY`` keys given (sorted)."""
    if overrides is None:
        keys = {k for k in given_keys(cfg, None) if k == "dataset" or k.startswith("dataset.")}
        return "dataset._target_" in keys or "dataset" in keys, sorted(k.split(".", 1)[1] for k in keys if "." in k)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    group, leaves = False, set()
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group.split("@")[0]
        if key == "dataset":
            group = True
        elif key.startswith("dataset."):
            leaves.add(key.split(".", 1)[1].split(".")[0])
    return group or "_target_" in leaves, sorted(leaves)
