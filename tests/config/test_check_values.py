"""Value ranges, declared beside their fields in the schema (recog/config/schema.py): refused at
compose time with a message naming the key, the range and what the value means."""

import dataclasses

import pytest

import recog
from recog.config.schema import MLFLOW_MAX_EXPERIMENT_NAME, DataConfig, Range, RecogConfig
from recog.errors import ConfigError


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.eval_every=0", "trainer.eval_every must be at least 1"),
        ("eval.recall_at=[0]", "eval.recall_at: every K must be at least 1"),
        ("eval.recall_at=[]", "eval.recall_at needs at least one K"),
        ("neck.embedding_size=0", "neck.embedding_size must be an integer of at least 1, got 0"),
        ("head.class_num=0", "head.class_num must be an integer of at least 1, got 0"),
        ("trainer.steps_per_epoch=-2", "trainer.steps_per_epoch must be at least 1"),
        ("predict.batch_size=0", "predict.batch_size must be at least 1"),
        ("trainer.epochs=0", "trainer.epochs must be at least 1"),
        ("trainer.log_every=0", "trainer.log_every must be at least 1"),
        ("trainer.grad_clip=0", "trainer.grad_clip must be above 0"),
        ("predict.top_k=0", "predict.top_k must be at least 1"),
        ("predict.picture_queries=-1", "predict.picture_queries must be at least 0"),
        ("export.tolerance=0", "export.tolerance must be above 0"),
        ("export.tolerance=nan", "export.tolerance must be above 0"),
        ("export.check_images=0", "export.check_images must be at least 1"),
        ("mlflow.request_retries=-1", "mlflow.request_retries must be at least 0"),
        ("mlflow.request_timeout=0", "mlflow.request_timeout must be at least 1"),
        ("launcher.nproc_per_node=0", "launcher.nproc_per_node must be at least 1"),
        ("launcher.nnodes=0", "launcher.nnodes must be at least 1"),
        ("launcher.node_rank=2", "launcher.node_rank=2 must be below launcher.nnodes=1"),
        ("mlflow.experiment_name=''", "mlflow.experiment_name must not be empty"),
        ("seed=-1", "seed must be in 0..4294967295 (numpy's global seed), got -1"),
        ("data.image_size=9000", "data.image_size must be in 1..8192 (pixels a side), got 9000"),
        ("data.num_workers=-1", "data.num_workers must be 0 (load in the main process) or more, got -1"),
        ("data.mean=[1,2]", "data.mean needs 3 values (R, G, B), got [1.0, 2.0]"),
        ("data.std=[0.5,0,0.5]", "data.std: every value must be above 0 (R, G, B), got [0.5, 0.0, 0.5]"),
        ("data.std=[0.5,nan,0.5]", "data.std: every value must be above 0"),
        ("data.max_image_pixels=0", "data.max_image_pixels must be at least 1 (null: no limit), got 0"),
        ("eval.predictor_min_megapixels=inf", "eval.predictor_min_megapixels must be at least 0 (megapixels)"),
        ("export.opset_version=6", "export.opset_version must be at least 7"),
    ],
)
def test_out_of_range_values_are_refused_at_compose_time(override, message):
    with pytest.raises(ConfigError) as caught:
        recog.compose([override])
    assert message in str(caught.value)


def test_in_range_values_compose():
    cfg = recog.compose(
        [
            "trainer.eval_every=2",
            "eval.recall_at=[1,2]",
            "neck.embedding_size=1",
            "trainer.steps_per_epoch=1",
            "predict.batch_size=1",
            "trainer.epochs=1",
            "predict.picture_queries=0",
            "mlflow.request_retries=0",
            "launcher.nnodes=2",
            "launcher.node_rank=1",
        ]
    )
    assert cfg.trainer.eval_every == 2 and list(cfg.eval.recall_at) == [1, 2]


def test_long_experiment_name_names_the_real_cause():
    with pytest.raises(ConfigError, match="mlflow.experiment_name is 10000 characters long; at most 500 are allowed"):
        recog.compose(["mlflow.experiment_name=" + "x" * 10000])
    recog.compose(["mlflow.experiment_name=" + "x" * MLFLOW_MAX_EXPERIMENT_NAME])


def test_experiment_name_limit_is_mlflows():
    from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH

    assert MLFLOW_MAX_EXPERIMENT_NAME == MAX_EXPERIMENT_NAME_LENGTH


def test_component_sizes_checked_by_key_path_in_any_option():
    with pytest.raises(ConfigError, match="neck.embedding_size must be an integer of at least 1, got -3"):
        recog.compose(["neck=fpn", "neck.embedding_size=-3"])
    recog.compose(["neck=bnneck"])  # embedding_size null: the backbone's width


def test_null_means_unset_and_is_not_checked():
    cfg = recog.compose(["trainer.grad_clip=null", "data.max_image_pixels=null", "launcher.node_rank=null"])
    assert cfg.trainer.grad_clip is None and cfg.data.max_image_pixels is None


def test_every_range_sits_on_a_field_of_the_schema():
    """The ranges are the fields' own: each numeric bound of a field of recog's sections is met by its default."""

    def fields(schema, prefix=""):
        for spec in dataclasses.fields(schema):
            if dataclasses.is_dataclass(spec.type):
                yield from fields(spec.type, f"{prefix}{spec.name}.")
            elif "range" in spec.metadata:
                yield f"{prefix}{spec.name}", spec

    ranged = dict(fields(RecogConfig))
    assert {"seed", "data.image_size", "trainer.epochs", "export.tolerance", "launcher.nnodes"} <= set(ranged)
    assert isinstance(dict(fields(DataConfig))["std"].metadata["range"], Range)
    for key, spec in ranged.items():
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        assert spec.metadata["range"].problem(key, default) is None, key
