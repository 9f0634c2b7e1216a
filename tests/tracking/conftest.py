"""A small export of a random-weight PP-LCNet (no dataset, no MLflow), shared by the tracking tests."""

import numpy as np
import pytest

import recog
from recog.inference.export import export_model


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """An export directory: PP-LCNet x0.25, 32 px, FC neck to 16, checked on random input."""
    root = tmp_path_factory.mktemp("tiny_export")
    cfg = recog.compose(
        [
            "backbone.scale=0.25",
            "data.image_size=32",
            "neck.embedding_size=16",
            "head.class_num=3",
            f"paths.output_root={root}",
        ]
    )
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    export_model(recog.build_model(cfg), cfg, root / "export", images, cpu_onednn="full")  # no probe: quick
    return root / "export"
