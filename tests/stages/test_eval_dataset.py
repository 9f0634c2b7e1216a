"""stage=eval evaluates a model on the dataset saved with it, unless the command names another,
and says which lists it evaluated (log and MLflow)."""

import logging

import pytest
from image_lists import write_image_lists
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store
from omegaconf import OmegaConf

import recog
from recog.errors import ConfigError
from recog.stages import evaluate
from recog.stages.eval_dataset import choose_dataset, describe
from recog.utils import checkpoint

LISTS = {
    "_target_": "recog.data.lists.load_lists",
    "root": "/data/logos",
    "train_list": "train.txt",
    "query_list": "query.txt",
    "gallery_list": "gallery.txt",
    "mirror_invariant": True,
}


def saved(dataset=LISTS):
    """A model folder's config as ``checkpoint.load_config`` returns it (only what matters here)."""
    return OmegaConf.create({"dataset": dataset} if dataset is not None else {"seed": 0})


def test_without_a_dataset_on_the_command_the_models_own_is_evaluated():
    cfg = recog.compose(["stage=eval", "model_path=/m"])  # the default dataset: the digits
    chosen = choose_dataset(cfg, saved(), "/m", overrides=["stage=eval", "model_path=/m"])
    assert OmegaConf.to_container(chosen.cfg.dataset) == LISTS
    assert chosen.source == "the model's (saved in /m/config.yaml)"
    assert cfg.dataset._target_ == "recog.data.digits.load_digits"  # the given config is left as it was


def test_a_dataset_named_on_the_command_is_evaluated_whole():
    overrides = ["stage=eval", "model_path=/m", "dataset=sop", "dataset.root=/data/sop"]
    chosen = choose_dataset(recog.compose(overrides), saved(), "/m", overrides=overrides)
    assert chosen.cfg.dataset._target_ == "recog.data.sop.load_sop" and chosen.cfg.dataset.root == "/data/sop"
    assert chosen.source == "the command's (dataset=... given)"


def test_dataset_keys_alone_change_the_saved_dataset():
    overrides = ["stage=eval", "model_path=/m", "dataset.root=/mnt/logos"]
    chosen = choose_dataset(recog.compose(overrides), saved(), "/m", overrides=overrides)
    assert OmegaConf.to_container(chosen.cfg.dataset) == dict(LISTS, root="/mnt/logos")
    assert chosen.source == "the model's (saved in /m/config.yaml), with dataset.root from the command"


def test_a_key_the_saved_dataset_lacks_is_an_error_naming_its_keys():
    overrides = ["stage=eval", "model_path=/m", "dataset.mirror_invariant=false"]
    without = {k: v for k, v in LISTS.items() if k != "mirror_invariant"}
    with pytest.raises(
        ConfigError,
        match=r"dataset\.mirror_invariant is not a key of the model's dataset .*"
        r"its keys: root, train_list, query_list, gallery_list\. .*dataset=NAME",
    ):
        choose_dataset(recog.compose(overrides), saved(without), "/m", overrides=overrides)


@pytest.mark.slow  # composes the defaults once per call
def test_the_python_api_counts_values_that_differ_from_the_defaults_as_given():
    cfg = recog.compose(["dataset.root=/mnt/logos"])
    assert choose_dataset(cfg, saved(), "/m", overrides=None).cfg.dataset.root == "/mnt/logos"
    assert choose_dataset(cfg, saved(), "/m", overrides=None).cfg.dataset.query_list == "query.txt"
    cfg = recog.compose(["dataset=sop", "dataset.root=/data/sop"])
    assert choose_dataset(cfg, saved(), "/m", overrides=None).cfg.dataset._target_ == "recog.data.sop.load_sop"
    cfg = recog.compose([])
    assert choose_dataset(cfg, saved(), "/m", overrides=None).cfg.dataset._target_ == LISTS["_target_"]


def test_a_model_folder_without_a_dataset_is_evaluated_on_the_commands():
    cfg = recog.compose([])
    chosen = choose_dataset(cfg, saved(None), "/m", overrides=[])
    assert chosen.cfg.dataset == cfg.dataset and "/m/config.yaml names no dataset" in chosen.source


@pytest.mark.slow
def test_eval_of_a_model_trained_on_lists_reads_those_lists_and_says_so(tmp_path, caplog):
    new_store(tmp_path / "out")  # a migrated MLflow store (tests/mlflow_stores.py)
    overrides = write_image_lists(tmp_path / "lists") + [
        "backbone.scale=0.25",
        "data.image_size=16",
        "neck.embedding_size=16",
        "head.class_num=5",
        "data.num_workers=0",
        "eval.engine=dygraph",
        f"paths.output_root={tmp_path / 'out'}",
    ]
    cfg = recog.compose(overrides)
    model = checkpoint.save_checkpoint(tmp_path / "run" / "best_model", recog.build_model(cfg), cfg, {"epoch": 1})
    plain = [f"paths.output_root={tmp_path / 'out'}", "stage=eval", f"model_path={model}"]  # as make eval runs it
    with caplog.at_level(logging.INFO, logger="recog.stages.evaluate"):
        metrics = evaluate.run(recog.compose(plain), tmp_path / "eval")
    assert metrics["num_queries"] == 37  # the saved query list, not the digits' 896
    assert not (tmp_path / "out" / "data" / "digits").exists()
    said = f"recog.data.lists.load_lists, root {tmp_path / 'lists'}, query_list=query.txt gallery_list=gallery.txt"
    said += f": 37 query images, 53 gallery images; the dataset is the model's (saved in {model}/config.yaml)"
    assert f"on {said}" in caplog.text
    client = MlflowClient(f"sqlite:///{tmp_path / 'out'}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("recog").experiment_id])
    assert run.data.tags["recog.eval_dataset"] == said
    assert run.data.params["dataset.query_list"] == "query.txt"
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "lists" and dataset.dataset.source.endswith(f'{tmp_path / "lists"}"}}')


def test_describe_says_query_equals_gallery():
    from recog.data.splits import RetrievalSplits, Sample

    splits = RetrievalSplits(train=[], query=[Sample("/a", 0), Sample("/b", 1)])
    node = OmegaConf.create(
        {"_target_": "recog.data.sop.load_sop", "root": "/sop", "train_file": "t", "test_file": "e"}
    )
    assert describe(node, splits) == "recog.data.sop.load_sop, root /sop, test_file=e: 2 query images, query == gallery"


def test_saved_digits_elsewhere_are_read_under_this_output_root(tmp_path):
    """The digits are generated: a model from another machine names a digits folder that is not here,
    and eval must not write them there."""
    digits = {"_target_": "recog.data.digits.load_digits", "root": "/home/someone/outputs/data/digits"}
    cfg = recog.compose([f"paths.output_root={tmp_path}"])
    chosen = choose_dataset(cfg, saved(dict(digits, mirror_invariant=False)), "/m", overrides=[])
    assert chosen.cfg.dataset.root == str(tmp_path / "data" / "digits")
    assert "its saved root /home/someone/outputs/data/digits holds none" in chosen.source
    for name in ("Ebay_train.txt", "Ebay_test.txt"):  # digits that are there are read where they are
        (tmp_path / "here" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "here" / name).write_text("image_id class_id super_class_id path\n")
    here = dict(digits, root=str(tmp_path / "here"))
    assert choose_dataset(cfg, saved(here), "/m", overrides=[]).cfg.dataset.root == str(tmp_path / "here")
