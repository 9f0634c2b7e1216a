"""Fixtures shared by the stage tests of one test process."""

import numpy as np
import pytest

import recog
from recog.inference.export import export_model


@pytest.fixture(scope="session")
def predict_export(tmp_path_factory):
    """An export of a random-weight PP-LCNet x0.25 (32 px, 24-d features) for the stage=predict tests
    (test_predict, test_predict_postprocess): built once per test process, never written to."""
    root = tmp_path_factory.mktemp("predict_export")
    cfg = recog.compose(
        [
            "backbone.scale=0.25",
            "data.image_size=32",
            "neck.embedding_size=24",
            "head.class_num=5",
            f"paths.output_root={root}",
        ]
    )
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    export_model(recog.build_model(cfg), cfg, root / "export", images, cpu_onednn="full")
    return root / "export"
