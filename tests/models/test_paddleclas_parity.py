"""Numerical parity with PaddleClas itself: the same weights and input give the same outputs.

PaddleClas's model definitions (the ``paddleclas==2.6.0`` wheel, which ``make install`` downloads
into ``.venv/oracles`` as a test oracle, imported from the archive, never installed) are built
with random weights and random BN statistics; the weights go through a ``.pdparams`` file into
recog's models by name.
"""

import sys
import zipfile
from pathlib import Path

import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.models.backbones import PPLCNet, ResNetVd
from recog.models.backbones.pplcnet import SCALES
from recog.models.heads import ArcMargin, CircleMargin, CosMargin
from recog.models.stop_layer import truncate_after
from recog.models.weights import load_pretrained


@pytest.fixture(scope="module")
def ppcls(tmp_path_factory):
    wheels = sorted((Path(sys.prefix) / "oracles").glob("paddleclas-2.6.0-*.whl"))
    assert wheels, f"the PaddleClas reference wheel is missing from {Path(sys.prefix) / 'oracles'}: run make install"
    unpacked = tmp_path_factory.mktemp("paddleclas")
    with zipfile.ZipFile(wheels[-1]) as wheel:  # ppcls is a namespace package: zipimport cannot load it
        wheel.extractall(unpacked, [n for n in wheel.namelist() if n.startswith("paddleclas/ppcls/")])
    sys.path.insert(0, str(unpacked / "paddleclas"))
    from ppcls.utils import logger

    logger.init_logger()
    import ppcls.arch.backbone.legendary_models.pp_lcnet as pp_lcnet
    import ppcls.arch.backbone.legendary_models.resnet as resnet
    import ppcls.arch.gears as gears

    return {"pp_lcnet": pp_lcnet, "resnet": resnet, "gears": gears}


def _randomise(layer, tmp_path, seed=0):
    """Random weights and BN statistics in ``layer``; returns them saved as a .pdparams file."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, value in layer.state_dict().items():
        shape = value.shape
        if name.endswith("_variance"):
            state[name] = rng.uniform(0.5, 2.0, shape).astype("float32")
        else:
            state[name] = 0.2 * rng.standard_normal(shape, dtype=np.float32)  # drawn as float32: ~4x quicker
    layer.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    path = tmp_path / "weights.pdparams"
    paddle.save(state, str(path))
    return path


def _compare_backbones(theirs, ours, tmp_path, size=64):
    theirs.eval()
    path = _randomise(theirs, tmp_path)
    report = load_pretrained(ours, path)
    assert report["missing"] == [] and report["unexpected"] == []
    ours.eval()
    x = paddle.to_tensor(np.random.default_rng(1).standard_normal((2, 3, size, size)).astype("float32"))
    with paddle.no_grad():
        np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), rtol=1e-4, atol=1e-5)
        # Features at the stop layer: theirs without the classifier, ours cut at flatten.
        theirs.fc = paddle.nn.Identity()
        features = truncate_after(ours, "flatten")(x).numpy()
        np.testing.assert_allclose(features, theirs(x).numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(features).max() > 1e-3  # not a comparison of zeros


@pytest.mark.slow
@pytest.mark.parametrize("scale", SCALES)
def test_pplcnet_matches_paddleclas(ppcls, scale, tmp_path):
    name = "PPLCNet_x" + str(scale).replace(".", "_")
    theirs = getattr(ppcls["pp_lcnet"], name)(pretrained=False)
    _compare_backbones(theirs, PPLCNet(scale=scale), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_vd_matches_paddleclas(ppcls, depth, tmp_path):
    theirs = getattr(ppcls["resnet"], f"ResNet{depth}_vd")(pretrained=False)
    _compare_backbones(theirs, ResNetVd(depth=depth), tmp_path)


@pytest.mark.parametrize(
    "ours_cls,name,kwargs",
    [
        (ArcMargin, "ArcMargin", {"margin": 0.2, "scale": 30.0}),
        (ArcMargin, "ArcMargin", {"margin": 0.5, "scale": 64.0, "easy_margin": True}),
        (CosMargin, "CosMargin", {"margin": 0.15, "scale": 64.0}),
        (CircleMargin, "CircleMargin", {"margin": 0.25, "scale": 256.0}),
    ],
)
def test_margin_heads_match_paddleclas_in_training(ppcls, ours_cls, name, kwargs, tmp_path):
    theirs = getattr(ppcls["gears"], name)(embedding_size=16, class_num=7, **kwargs)
    ours = ours_cls(embedding_size=16, class_num=7, **kwargs)
    report = load_pretrained(ours, _randomise(theirs, tmp_path))
    assert report["missing"] == [] and report["unexpected"] == []
    rng = np.random.default_rng(3)
    features = paddle.to_tensor(rng.standard_normal((6, 16)).astype("float32"))
    labels = paddle.to_tensor(rng.integers(0, 7, (6,)).astype("int64"))
    theirs.train(), ours.train()
    np.testing.assert_allclose(ours(features, labels).numpy(), theirs(features, labels).numpy(), rtol=1e-5, atol=1e-4)
