"""load_pretrained: round trips, name matching, shape errors, and refusing malicious pickles."""

import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import logging
import os
import pickle
from collections import OrderedDict

import numpy as np
import paddle
import pytest
from paddle import nn
from safetensors.numpy import save_file

from recog.errors import RecogError
from recog.models.heads import ArcMargin
from recog.models.necks import BNNeck
from recog.models.weights import load_pretrained, read_pdparams


class Net(nn.Layer):
    def __init__(self, width=6, classes=4):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2D(3, 4, 3), nn.BatchNorm2D(4))
        self.neck = BNNeck(4, embedding_size=width)
        self.head = ArcMargin(width, classes)


def _randomise(model, seed):
    rng = np.random.default_rng(seed)
    for value in model.state_dict().values():
        value.set_value(rng.standard_normal(value.shape).astype("float32"))
    return model


def _numpy_state(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _assert_same(model, state):
    got = _numpy_state(model)
    assert sorted(got) == sorted(state)
    for k in state:
        np.testing.assert_array_equal(got[k], state[k], err_msg=k)


@pytest.mark.parametrize("protocol", [2, 4])
def test_round_trip_paddle_save(tmp_path, protocol):
    source = _randomise(Net(), 0)
    path = tmp_path / "model.pdparams"
    paddle.save(source.state_dict(), str(path), protocol=protocol)
    target = Net()
    report = load_pretrained(target, path)
    _assert_same(target, _numpy_state(source))  # includes BN statistics (buffers)
    assert report["missing"] == report["unexpected"] == report["skipped"] == []
    assert report["loaded"] == sorted(source.state_dict())
    assert "neck.feat_bn._mean" in report["loaded"]


def test_round_trip_safetensors(tmp_path):
    source = _randomise(Net(), 1)
    path = tmp_path / "model.safetensors"
    save_file(_numpy_state(source), str(path))
    target = Net()
    assert load_pretrained(target, str(path))["missing"] == []
    _assert_same(target, _numpy_state(source))


def test_paddle_safetensors_format_under_pdparams_suffix(tmp_path):
    source = _randomise(Net(), 2)
    path = tmp_path / "model.pdparams"
    paddle.save(source.state_dict(), str(path), safetensors=True)
    assert open(path, "rb").read(1) != b"\x80"  # not a pickle
    target = Net()
    load_pretrained(target, path)
    _assert_same(target, _numpy_state(source))


def test_paddleclas_style_plain_dict_and_tuple_forms(tmp_path):
    # PaddleClas's released files: a plain (Ordered)dict of numpy arrays, pickle protocol 2.
    state = _numpy_state(_randomise(Net(), 3))
    path = tmp_path / "released.pdparams"
    with open(path, "wb") as f:
        pickle.dump(OrderedDict(state), f, protocol=2)
    target = Net()
    load_pretrained(target, path)
    _assert_same(target, state)
    # Paddle 2.1 / paddle.save of a non-state-dict: tensors as (runtime name, array) tuples,
    # next to non-tensor entries, which are skipped and reported.
    path = tmp_path / "mixed.pdparams"
    paddle.save({**{k: v for k, v in _randomise(Net(), 4).state_dict().items()}, "epoch": 3}, str(path))
    target = Net()
    report = load_pretrained(target, path)
    assert report["skipped"] == ["epoch"] and report["missing"] == []
    _assert_same(target, _numpy_state(_randomise(Net(), 4)))


def test_file_from_the_other_numpy_major_version(tmp_path):
    # numpy 1.x (PaddleClas's released weights) pickles numpy.core.multiarray._reconstruct,
    # numpy 2.x numpy._core.multiarray._reconstruct; both must load under either. Protocol 2
    # spells globals as text, so the module name can be swapped in place.
    state = _numpy_state(_randomise(Net(), 8))
    data = pickle.dumps(state, protocol=2)
    names = [b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"]
    if names[1] in data:
        names.reverse()
    assert names[0] in data and names[1] not in data
    path = tmp_path / "other_numpy.pdparams"
    path.write_bytes(data.replace(names[0], names[1]))
    target = Net()
    load_pretrained(target, path)
    _assert_same(target, state)


def test_split_big_parameter_is_reassembled(tmp_path):
    # paddle.save splits a > 1 GB parameter under protocols 2/3; the same layout, small.
    state = _numpy_state(_randomise(Net(), 5))
    weight = state.pop("head.weight")
    flat = weight.reshape(-1)
    state["head.weight@@.0"], state["head.weight@@.1"] = flat[:10], flat[10:]
    state["UnpackBigParamInfor@@"] = {
        "head.weight": {"OriginShape": weight.shape, "slices": ["head.weight@@.0", "head.weight@@.1"]}
    }
    path = tmp_path / "big.pdparams"
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=2)
    target = Net()
    report = load_pretrained(target, path)
    assert report["unexpected"] == [] and report["missing"] == []
    np.testing.assert_array_equal(target.head.weight.numpy(), weight)


def test_missing_and_unexpected_are_reported(tmp_path, caplog):
    source = _numpy_state(_randomise(Net(), 6))
    del source["head.weight"]
    source["head.extra"] = np.zeros(3, "float32")
    path = tmp_path / "partial.safetensors"
    save_file(source, str(path))
    target = Net()
    before = target.head.weight.numpy().copy()
    with caplog.at_level(logging.WARNING, logger="recog.models.weights"):
        report = load_pretrained(target, path)
    assert report["missing"] == ["head.weight"]
    assert report["unexpected"] == ["head.extra"]
    assert "head.weight" not in report["loaded"] and "neck.fc.weight" in report["loaded"]
    np.testing.assert_array_equal(target.head.weight.numpy(), before)  # left as it was
    np.testing.assert_array_equal(target.neck.fc.weight.numpy(), source["neck.fc.weight"])
    assert "head.weight" in caplog.text and "head.extra" in caplog.text


def test_shape_mismatch_names_tensor_and_shapes_and_loads_nothing(tmp_path):
    source = _numpy_state(_randomise(Net(classes=7), 7))
    path = tmp_path / "other.pdparams"
    paddle.save({k: paddle.to_tensor(v) for k, v in source.items()}, str(path))
    target = Net(classes=4)
    before = _numpy_state(target)
    with pytest.raises(RecogError, match=r"'head\.weight' has shape \[6, 7\] in the file but \[6, 4\] in the model"):
        load_pretrained(target, path)
    _assert_same(target, before)  # all-or-nothing


def test_bad_paths(tmp_path):
    with pytest.raises(RecogError, match="not found") as missing:
        load_pretrained(Net(), tmp_path / "nope.pdparams")
    # where PaddleClas publishes its weights, since recog downloads nothing
    assert "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/legendary_models/" in str(missing.value)
    assert "download the file yourself" in str(missing.value)
    (tmp_path / "model.pdparams").write_bytes(b"")
    with pytest.raises(RecogError, match="did you mean model.pdparams"):
        load_pretrained(Net(), tmp_path / "model")
    other = tmp_path / "model.pth"
    other.write_bytes(b"whatever")
    with pytest.raises(RecogError, match="unknown suffix '.pth'"):
        load_pretrained(Net(), other)
    garbage = tmp_path / "garbage.pdparams"
    garbage.write_bytes(b"this is not a pickle")
    with pytest.raises(RecogError, match="cannot read"):
        load_pretrained(Net(), garbage)
    unrelated = tmp_path / "unrelated.safetensors"
    save_file({"conv1.weight": np.zeros((4, 3, 3, 3), "float32")}, str(unrelated))
    with pytest.raises(RecogError, match="none of the 1 tensors"):
        load_pretrained(Net(), unrelated)


class _Exploit:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_and_does_not_run(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pdparams"
    state = _numpy_state(Net())
    state["neck.fc.weight"] = _Exploit(f"touch {marker}")
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=protocol)
    # the payload is real: a plain unpickle would run it
    assert f"{os.system.__module__}".encode() in path.read_bytes() and not marker.exists()
    with pytest.raises(
        RecogError, match=rf"refusing to load .*evil\.pdparams: the file references {os.system.__module__}\.system"
    ):
        load_pretrained(Net(), path)
    assert not marker.exists()


def test_other_dangerous_globals_are_refused(tmp_path):
    for callable_, args in ((eval, ("1",)), (getattr, ("text", "upper")), (exec, ("pass",)), (__import__, ("os",))):
        path = tmp_path / "evil.pdparams"

        class Payload:
            def __reduce__(self, callable_=callable_, args=args):
                return (callable_, args)

        with open(path, "wb") as f:
            pickle.dump({"x": Payload()}, f, protocol=4)
        with pytest.raises(RecogError, match=rf"references builtins\.{callable_.__name__}"):
            read_pdparams(path)


def test_plain_unpickle_of_the_exploit_would_run(tmp_path):
    # Control: the same construction does execute under an unrestricted pickle.load.
    marker = tmp_path / "ran"
    data = pickle.dumps({"w": _Exploit(f"touch {marker}")})
    pickle.loads(data)
    assert marker.exists()
