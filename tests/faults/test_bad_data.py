"""Bad images and bad lists: each kind is named, skipped (recorded) or fatal as configured, never a traceback.

The end-to-end skip-mode run (``test_skip_mode_run_completes_and_lists_the_bad_images``) needs the
stages to pass ``on_bad_image``, ``max_image_pixels`` and ``<run dir>/bad_images.tsv`` to
``ImageDataset`` and to call ``check_batch``.
"""

import logging
import zlib
from pathlib import Path

import cv2
import numpy as np
import paddle
import pytest

from recog.data import ImageDataset, Sample, build_transform, decode_image
from recog.data.bad_images import read_bad_images
from recog.errors import BadImageError, ConfigError, DataError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _random_image(seed, size=12):
    return (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)


def _encoded(ext, seed=0, size=12):
    ok, data = cv2.imencode(ext, _random_image(seed, size))
    assert ok
    return data.tobytes()


def png_bomb(width=100_000, height=100_000) -> bytes:
    """A PNG whose header promises ``width x height`` pixels (10**10 by default): decoding it would
    need 30 GB; the compressed rows that follow are only the first few."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])  # 8-bit grey
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def jpeg_bomb() -> bytes:
    """A JPEG frame header of 65000 x 65000 pixels, then a scan and the end marker."""
    sof = (
        b"\xff\xc0" + (17).to_bytes(2, "big") + b"\x08" + (65000).to_bytes(2, "big") * 2 + b"\x03" + b"\x01\x22\x00" * 3
    )
    return b"\xff\xd8" + sof + b"\xff\xda\x00\x02" + b"\x00" * 16 + b"\xff\xd9"


# kind -> (file bytes, or None: no file, or "dir": a folder; a fragment of the reason)
BAD_KINDS = {
    "zero_bytes": (b"", "empty"),
    "truncated_png": (_encoded(".png")[:200], "cannot decode"),
    "truncated_jpeg": (_encoded(".jpg", size=64)[:-100], "truncated"),
    "not_an_image": (b"just some text, not pixels\n" * 3, "cannot decode"),
    "png_bomb": (png_bomb(), "too large: 100000 x 100000 = 10000000000 pixels"),
    "jpeg_bomb": (jpeg_bomb(), "too large: 65000 x 65000"),
    "missing": (None, "missing"),
    "directory": ("dir", "unreadable"),
}
SUFFIX = {"truncated_jpeg": ".jpg", "jpeg_bomb": ".jpg", "not_an_image": ".jpg"}


def write_bad(folder: Path, kind: str) -> str:
    content, _ = BAD_KINDS[kind]
    path = folder / f"{kind}{SUFFIX.get(kind, '.png')}"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    return str(path)


def write_good(folder: Path, name: str, seed: int) -> str:
    path = folder / name
    cv2.imwrite(str(path), _random_image(seed))
    return str(path)


# ---- decoding -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_each_kind_of_bad_image_is_named_with_its_reason(tmp_path, kind):
    path = write_bad(tmp_path, kind)
    with pytest.raises(BadImageError) as err:
        decode_image(path)
    assert err.value.path == path and BAD_KINDS[kind][1] in err.value.reason
    assert str(err.value).startswith(f"bad image {path}: ") and isinstance(err.value, DataError)


def test_pixel_limit_is_configurable_and_checked_after_decoding_without_a_known_header(tmp_path):
    png = write_good(tmp_path, "big.png", 0)  # 12 x 12 = 144 pixels
    ok, ppm = cv2.imencode(".ppm", _random_image(1))  # a format whose header recog does not parse
    (tmp_path / "big.ppm").write_bytes(ppm.tobytes())
    for path in (png, str(tmp_path / "big.ppm")):
        with pytest.raises(BadImageError, match=r"too large: 12 x 12 = 144 pixels is over data.max_image_pixels=143"):
            decode_image(path, max_pixels=143)
        assert decode_image(path, max_pixels=144).shape == (12, 12, 3)
        assert decode_image(path, max_pixels=None).shape == (12, 12, 3)


# ---- the dataset --------------------------------------------------------------------------------------
@pytest.fixture()
def transform():
    return build_transform(8, MEAN, STD, train=False, hflip=False)


def test_eval_skip_marks_records_and_warns(tmp_path, transform, caplog):
    bad = [write_bad(tmp_path, kind) for kind in sorted(BAD_KINDS)]
    paths = [write_good(tmp_path, "first.png", 1)] + bad + [write_good(tmp_path, "last.png", 2)]
    record = tmp_path / "bad_images.tsv"
    dataset = ImageDataset([Sample(p, 7) for p in paths], transform, bad_image_record=str(record))
    with caplog.at_level(logging.WARNING, logger="recog.data.bad_images"):
        items = [dataset[i] for i in range(len(paths))]
    labels = np.array([label for _, label in items])
    assert labels.tolist() == [7] + [-1 - i for i in range(1, len(paths) - 1)] + [7]
    assert all(np.all(image == 0) for image, _ in items[1:-1]) and items[0][0].shape == (3, 8, 8)
    assert dataset.check_batch(labels).tolist() == [True] + [False] * len(bad) + [True]
    recorded = read_bad_images(record)
    assert list(recorded) == bad
    for path, kind in zip(bad, sorted(BAD_KINDS)):
        assert BAD_KINDS[kind][1] in recorded[path]
        assert any(path in r.getMessage() and "left out of the evaluation" in r.getMessage() for r in caplog.records)


def test_fail_mode_raises_on_the_batch_naming_path_and_reason(tmp_path, transform):
    bad = write_bad(tmp_path, "truncated_jpeg")
    samples = [Sample(write_good(tmp_path, "a.png", 1), 0), Sample(bad, 0)]
    record = tmp_path / "bad_images.tsv"
    dataset = ImageDataset(samples, transform, on_bad_image="fail", bad_image_record=str(record))
    labels = np.array([dataset[0][1], dataset[1][1]])
    assert labels.tolist() == [0, -2]
    with pytest.raises(DataError, match=rf"bad image\(s\): {bad} \(truncated: .*\).*data.on_bad_image=skip"):
        dataset.check_batch(labels)
    assert not record.exists()


def test_training_replaces_a_bad_image_by_one_of_its_class_deterministically(tmp_path, transform):
    bad = write_bad(tmp_path, "not_an_image")
    same_class = [write_good(tmp_path, f"c0_{i}.png", 10 + i) for i in range(3)]
    other = write_good(tmp_path, "c1.png", 20)
    samples = [Sample(bad, 0)] + [Sample(p, 0) for p in same_class] + [Sample(other, 1)]
    expected = {p: transform(cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB)).tobytes() for p in same_class}

    def draws(record):
        dataset = ImageDataset(samples, transform, labels=[0, 0, 0, 0, 1], seed=3, bad_image_record=str(record))
        chosen = []
        for draw in range(30):
            image, label = dataset[(0, 1, draw)]
            assert label == 0
            chosen.append(next(p for p, pixels in expected.items() if pixels == image.tobytes()))
        assert dataset.check_batch(np.zeros(4, np.int64), training=True).all()
        return chosen

    first = draws(tmp_path / "a.tsv")
    assert draws(tmp_path / "b.tsv") == first  # same seed, epoch and draws: same replacements
    assert set(first) == set(same_class)  # the replacement depends on the draw, within the class
    assert list(read_bad_images(tmp_path / "a.tsv")) == [bad]


def test_training_class_without_any_readable_image_stops_the_run(tmp_path, transform):
    bad = [write_bad(tmp_path, kind) for kind in ("zero_bytes", "missing")]
    samples = [Sample(bad[0], 0), Sample(bad[1], 0), Sample(write_good(tmp_path, "b.png", 1), 1)]
    dataset = ImageDataset(samples, transform, labels=[0, 0, 1])
    image, label = dataset[(1, 0, 0)]
    assert label == -2 and not image.any()
    with pytest.raises(DataError, match=rf"every training image of the class of .*{bad[1]} \(missing"):
        dataset.check_batch(np.array([0, label, 1]), training=True)


def test_fail_mode_in_training_does_not_replace(tmp_path, transform):
    bad = write_bad(tmp_path, "png_bomb")
    samples = [Sample(bad, 0), Sample(write_good(tmp_path, "a.png", 1), 0)]
    dataset = ImageDataset(samples, transform, labels=[0, 0], on_bad_image="fail")
    _, label = dataset[(0, 0, 5)]
    assert label == -1
    with pytest.raises(DataError, match=rf"{bad} \(too large"):
        dataset.check_batch(np.array([label, 0]), training=True)


def test_loader_workers_record_bad_images(tmp_path, transform):
    bad = [write_bad(tmp_path, kind) for kind in ("zero_bytes", "truncated_png", "missing")]
    good = [write_good(tmp_path, f"g{i}.png", i) for i in range(5)]
    paths = [good[0], bad[0], good[1], good[2], bad[1], good[3], bad[2], good[4]]
    record = tmp_path / "bad_images.tsv"
    dataset = ImageDataset([Sample(p, 1) for p in paths], transform, bad_image_record=str(record))
    loader = paddle.io.DataLoader(dataset, batch_size=3, shuffle=False, num_workers=2)
    keep = np.concatenate([dataset.check_batch(labels.numpy()) for _, labels in loader])
    assert keep.tolist() == [p in good for p in paths]
    assert sorted(read_bad_images(record)) == sorted(bad)


def test_bad_settings_are_config_errors(tmp_path, transform):
    with pytest.raises(ConfigError, match="data.on_bad_image must be one of skip, fail"):
        ImageDataset([], transform, on_bad_image="ignore")
    with pytest.raises(ConfigError, match="data.max_image_pixels must be positive"):
        ImageDataset([], transform, max_image_pixels=0)


# ---- end to end: python run.py (in this process: the run_cli fixture) -----------------------------------
def assert_clean_failure(result, *fragments):
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, output


@pytest.fixture()
def dataset_root(tmp_path):
    """3 classes x 4 random PNGs under img/, listed in train.txt and query.txt."""
    (tmp_path / "img").mkdir()
    lines = [f"img/{c}_{i}.png {c}" for c in range(3) for i in range(4)]
    for line in lines:
        name, label = line.split()
        write_good(tmp_path, name, int(label) * 10 + int(name[-5]))
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "query.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def list_args(root, train="train.txt", query="query.txt"):
    return [
        "stage=train",
        "dataset=image_list",
        f"dataset.root={root}",
        f"dataset.train_list={train}",
        f"dataset.query_list={query}",
        "data.batch_size=6",
        "data.samples_per_class=2",
        "backbone.scale=0.25",
        "data.image_size=16",
        "trainer.epochs=1",
        "data.num_workers=0",
        "mlflow.enabled=false",
        "export.after_train=false",
        f"paths.output_root={root / 'out'}",
        f"hydra.run.dir={root / 'run'}",
    ]


def _add_bad_images(root, kinds_by_class):
    """Bad images of the given kinds appended to the lists, in the given classes; their paths."""
    added, lines = [], []
    for label, kinds in kinds_by_class.items():
        for kind in kinds:
            path = Path(write_bad(root / "img", kind))
            lines.append(f"img/{path.name} {label}")
            added.append(str(path))
    for name in ("train.txt", "query.txt"):
        with open(root / name, "a") as f:
            f.write("\n".join(lines) + "\n")
    return added


@pytest.mark.slow
def test_skip_mode_run_completes_and_lists_the_bad_images(dataset_root, run_cli):
    """Needs the stages' wiring (see the module docstring)."""
    # (A file missing at the start is a list problem: see test_list_problems_are_reported_together_before_training.)
    bad = _add_bad_images(
        dataset_root,
        {0: ["zero_bytes", "truncated_png"], 1: ["truncated_jpeg", "not_an_image"], 2: ["png_bomb", "jpeg_bomb"]},
    )
    result = run_cli(*list_args(dataset_root), "data.on_bad_image=skip")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert (dataset_root / "run" / "best_model" / "model.safetensors").is_file()
    recorded = read_bad_images(dataset_root / "run" / "bad_images.tsv")
    assert sorted(recorded) == sorted(bad)
    for path in bad:
        assert f"bad image {path}" in output, path


@pytest.mark.slow
def test_fail_mode_stops_with_the_path(dataset_root, run_cli):
    (bad,) = _add_bad_images(dataset_root, {1: ["truncated_png"]})
    result = run_cli(*list_args(dataset_root), "data.on_bad_image=fail")
    assert_clean_failure(result, bad, "cannot decode")
    assert not (dataset_root / "run" / "best_model").exists()


@pytest.mark.slow
def test_list_problems_are_reported_together_before_training(dataset_root, run_cli):
    lines = (dataset_root / "train.txt").read_text().splitlines()
    lines[1] = "img/0_1.png zero"
    lines[4] = "img/1_0.png"
    lines[6] = lines[5]
    lines[8] = "img/nope.png 2"
    (dataset_root / "bad.txt").write_text("\n".join(lines) + "\n")
    result = run_cli(*list_args(dataset_root, train="bad.txt"))
    assert_clean_failure(
        result,
        "bad.txt",
        "4 problem(s)",
        "line 2: label 'zero' is not an integer",
        "line 5: 1 fields",
        "line 7: 'img/1_1.png' is listed again (first on line 6)",
        "line 9: image 'img/nope.png' does not exist",
    )
    assert not (dataset_root / "run" / "best_model").exists()


@pytest.mark.slow
def test_paths_outside_the_root_are_refused(dataset_root, run_cli, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    secret = write_good(outside, "secret.png", 5)
    with open(dataset_root / "query.txt", "a") as f:
        f.write(f"../{outside.name}/secret.png 0\n{secret} 1\nimg/../../{outside.name}/secret.png 2\n")
    result = run_cli(*list_args(dataset_root))
    assert_clean_failure(
        result,
        "query.txt",
        "line 13: path '../",
        "line 14: absolute path",
        "line 15: path 'img/../../",
        "leaves the dataset root",
    )
