"""PaddleClas 2.6.0 as a test oracle: its model files imported from the wheel in ``.venv/oracles``
(unpacked to a temporary folder, never installed), and random weights saved as ``.pdparams``."""

import importlib
import sys
import zipfile
from pathlib import Path

import numpy as np
import paddle


def import_ppcls(folder: Path, *modules: str) -> dict:
    """Unpack ``ppcls`` from the wheel into ``folder`` and import ``ppcls.<module>`` for each name."""
    wheels = sorted((Path(sys.prefix) / "oracles").glob("paddleclas-2.6.0-*.whl"))
    assert wheels, f"the PaddleClas reference wheel is missing from {Path(sys.prefix) / 'oracles'}: run make install"
    if not (folder / "paddleclas" / "ppcls").is_dir():
        with zipfile.ZipFile(wheels[-1]) as wheel:  # ppcls is a namespace package: zipimport cannot load it
            wheel.extractall(folder, [n for n in wheel.namelist() if n.startswith("paddleclas/ppcls/")])
    if str(folder / "paddleclas") not in sys.path:
        sys.path.insert(0, str(folder / "paddleclas"))
    from ppcls.utils import logger

    logger.init_logger()
    return {name: importlib.import_module(f"ppcls.{name}") for name in modules}


def randomise(layer, path: Path, seed: int = 0) -> Path:
    """Random weights and BN statistics (variances in [0.5, 2]) into ``layer``; saved to ``path``."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, value in layer.state_dict().items():
        if name.endswith("_variance"):
            state[name] = rng.uniform(0.5, 2.0, value.shape).astype("float32")
        else:
            state[name] = 0.2 * rng.standard_normal(value.shape, dtype=np.float32)  # drawn as float32: ~4x quicker
    layer.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    paddle.save(state, str(path))
    return path
