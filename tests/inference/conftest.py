"""A small export of a random-weight PP-LCNet, shared by the predictor tests (no dataset, no MLflow)."""

import numpy as np
import pytest

import recog
from recog.inference.export import export_model


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``(export_dir, model, cfg)``: PP-LCNet x0.25, 32 px, FC neck to 24, checked on random input."""
    root = tmp_path_factory.mktemp("export")
    cfg = recog.compose(
        [
            "backbone.scale=0.25",
            "data.image_size=32",
            "neck.embedding_size=24",
            "head.class_num=5",
            f"paths.output_root={root}",
        ]
    )
    model = recog.build_model(cfg)
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    export_model(model, cfg, root / "export", images, cpu_onednn="full")  # no probe: quick
    return root / "export", model, cfg
