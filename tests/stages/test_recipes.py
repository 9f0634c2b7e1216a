"""Every recipe in conf/experiment/ trains one tiny epoch (small images, the 5 digit classes).

Each runs as a user would: ``experiment=NAME dataset.root=PATH``, PATH holding the digits in both
the SOP layout and as image lists (``train_list.txt``, ``query_list.txt``, ``gallery_list.txt``).
"""

import json
import os
from pathlib import Path

import pytest

import recog
from recog.stages import train
from recog.utils import checkpoint

RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "experiment").glob("*.yaml"))
TINY = [
    "data.image_size=16",
    "data.batch_size=10",
    "data.samples_per_class=2",
    "data.num_workers=0",
    "trainer.epochs=1",
    "trainer.steps_per_epoch=2",
    "mlflow.enabled=false",
    "export.after_train=false",
]


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    splits = recog.data.load_digits(str(root))

    def write(name, samples):
        lines = [f"{os.path.relpath(s.path, root)} {s.label}" for s in samples]
        (root / name).write_text("\n".join(lines) + "\n")

    write("train_list.txt", splits.train)
    # The eval only has to run: 56 + 56 images for the list recipes, and the SOP recipes' test
    # split (query = gallery) cut to every 8th of its 896 rows, 112 images (all 5 classes).
    write("query_list.txt", splits.query[::16])
    write("gallery_list.txt", splits.query[1::16])
    sop_test = (root / "Ebay_test.txt").read_text().splitlines()
    (root / "Ebay_test.txt").write_text("\n".join(sop_test[:1] + sop_test[1::8]) + "\n")
    return root


def shrink(cfg) -> list:
    """Overrides that make the recipe's model small, keeping its structure."""
    out = []
    if cfg.backbone._target_.endswith(".PPLCNetV2"):
        out.append("backbone.size=small")
    elif "PPLCNet" in cfg.backbone._target_:
        out.append("backbone.scale=0.25")
    if cfg.backbone._target_.endswith(".ViT"):
        out.append("backbone.size=tiny")
    if "ResNetVd" in cfg.backbone._target_:
        out.append("backbone.depth=18")
    if cfg.head is not None and cfg.head.class_num is not None:
        out.append("head.class_num=null")  # follow the dataset: 5 classes instead of 185341
    if cfg.neck is not None and "FCNeck" in cfg.neck._target_:
        out.append("neck.embedding_size=32")
    return out


def test_the_recipes_are_there():
    assert {"general_pplcnet_x2_5", "sop_resnet50_vd", "deephash_dshsd", "deephash_dch", "deephash_lcdsh"} <= set(
        RECIPES
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_one_tiny_epoch(name, tmp_path, digits_root):
    overrides = [f"experiment={name}", f"dataset.root={digits_root}", f"paths.output_root={tmp_path}"] + TINY
    cfg = recog.compose(overrides + shrink(recog.compose(overrides)))
    best = train.run(cfg, tmp_path / "run")
    assert 0.0 <= best["recall_at_1"] <= 1.0 and best["epoch"] == 1
    assert len(recog.api.load_splits(cfg).query) in (56, 112)  # the cut eval split above
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] == 2 and state["finished"] is True
    saved = checkpoint.load_config(tmp_path / "run" / "best_model")
    assert saved.backbone._target_ == cfg.backbone._target_ and dict(saved.loss).keys() == dict(cfg.loss).keys()
    if name.startswith("deephash"):
        assert cfg.neck.embedding_size == 48 and cfg.eval.binarize.value == "sign"
