"""build_model says what is missing instead of silently reading (writing) a dataset."""

import logging

import pytest

import recog
from recog.errors import ConfigError


def test_build_model_without_class_num_says_what_is_missing(tmp_path, caplog):
    cfg = recog.compose(["backbone.scale=0.25", "data.image_size=32", f"paths.output_root={tmp_path}"])
    with caplog.at_level(logging.WARNING, logger="recog"):
        model = recog.build_model(cfg)
    assert "head.class_num is not set" in caplog.text and str(tmp_path) in caplog.text
    assert model.head is not None
    cfg = recog.compose(
        [
            "backbone.scale=0.25",
            "dataset=image_list",
            f"dataset.root={tmp_path / 'none'}",
            "dataset.train_list=t.txt",
            "dataset.query_list=q.txt",
        ]
    )
    with pytest.raises(ConfigError, match="the head needs a class count: set head.class_num=N"):
        recog.build_model(cfg)


def test_build_model_with_class_num_reads_no_dataset(tmp_path, caplog):
    cfg = recog.compose(["backbone.scale=0.25", "data.image_size=32", f"paths.output_root={tmp_path}"])
    with caplog.at_level(logging.WARNING, logger="recog"):
        recog.build_model(cfg, class_num=3)
    assert list(tmp_path.iterdir()) == [] and "class_num" not in caplog.text
