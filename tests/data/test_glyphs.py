"""The glyph benchmark: drawings keep what tells characters apart, look-alikes become one class,
jitter is a pure function of its seed, and the written folder is an SOP dataset of unseen test classes."""

import json
import os

import cv2
import numpy as np
import pytest

from recog.data import glyphs
from recog.data.sop import read_sop_file
from recog.errors import DataError

# The catalogue of characters (~6 s of CPU) is built once per process (at one image size):
# every test that writes glyphs shares a worker.
pytestmark = pytest.mark.xdist_group("glyphs")


@pytest.fixture(scope="module")
def fonts():
    return {font.name: font for font in glyphs.load_fonts()}


def test_the_placeholder_font_is_left_out_and_every_family_is_in(fonts):
    assert not any(name.startswith("LastResort") for name in fonts)
    assert {"DejaVuSans", "DejaVuSerif-Bold", "DejaVuSansMono-Oblique", "STIXGeneral", "cmr10"} <= set(fonts)


def test_drawings_keep_the_baseline_and_the_horizontal_position(fonts):
    sans = fonts["DejaVuSans"]
    period, middle_dot = glyphs.draw(sans, ord(".")), glyphs.draw(sans, 0xB7)
    assert period.dtype == np.uint8 and period.shape == (glyphs.RENDER_SIZE,) * 2
    rows = lambda image: np.nonzero(image.max(axis=1))[0]  # noqa: E731
    assert rows(period).min() > rows(middle_dot).max()  # '.' sits on the baseline, '·' above it
    left_half, right_half = glyphs.draw(sans, 0x258C), glyphs.draw(sans, 0x2590)
    columns = lambda image: np.nonzero(image.max(axis=0))[0]  # noqa: E731
    assert columns(left_half).mean() < glyphs.RENDER_SIZE / 2 < columns(right_half).mean()


def _drawn_by_text_layout(font, code):
    """``draw`` as matplotlib lays the character out as a text (``set_text``; the reference)."""
    face = font.face
    face.clear()
    face.set_size(glyphs.EM_PIXELS, 72)
    face.set_text(chr(code), 0.0)
    face.draw_glyphs_to_bitmap(antialiased=True)
    ink = np.asarray(face.get_image(), dtype=np.uint8)
    if not ink.any():
        return None
    height, width = ink.shape
    advance = face.load_char(code).horiAdvance / 64.0
    top = round(glyphs.BASELINE * glyphs.RENDER_SIZE - (height - face.get_descent() / 64.0))
    left = round((glyphs.RENDER_SIZE - advance) / 2 + face.get_bitmap_offset()[0] / 64.0)
    if max(height, width) > glyphs.RENDER_SIZE - 2:  # shrunk to fit, centred
        scale = (glyphs.RENDER_SIZE - 2) / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        ink = cv2.resize(ink.astype(np.float32) / 255.0, size, interpolation=cv2.INTER_AREA)
        ink = np.clip(np.rint(ink * 255.0), 0, 255).astype(np.uint8)
        height, width = ink.shape
        top, left = (glyphs.RENDER_SIZE - height) // 2, (glyphs.RENDER_SIZE - width) // 2
    canvas = np.zeros((glyphs.RENDER_SIZE,) * 2, np.uint8)
    top = min(max(top, 0), glyphs.RENDER_SIZE - height)
    left = min(max(left, 0), glyphs.RENDER_SIZE - width)
    canvas[top : top + height, left : left + width] = ink
    return canvas


def test_drawings_equal_matplotlibs_text_layout_of_the_character(fonts):
    """``draw`` renders the glyph a character maps to without the text layout (its shaping is most
    of the cost); the pixels are those of the layout, shaped characters (Thai / Lao AM) included."""
    rng = np.random.default_rng(0)
    compared = 0
    for font in fonts.values():
        codes = sorted(code for code, glyph in font.face.get_charmap().items() if glyph and font.draws(code))
        sample = {codes[i] for i in rng.choice(len(codes), size=min(60, len(codes)), replace=False)}
        sample |= {code for code in (*glyphs.SHAPED, 0x20, 0x2588, 0xFDFD) if code in codes}
        for code in sorted(sample):
            expected, drawn = _drawn_by_text_layout(font, code), glyphs.draw(font, code)
            if expected is None or drawn is None:
                assert expected is None and drawn is None, (font.name, hex(code))
            else:
                assert np.array_equal(drawn, expected), (font.name, hex(code))
                compared += 1
    assert compared > 500


def test_look_alikes_across_scripts_are_one_group(fonts):
    codes = [ord("A"), 0x391, 0x410, ord("B"), ord("b")]  # Latin A, Greek Alpha, Cyrillic A
    drawings = {
        code: {name: glyphs.draw(fonts[name], code) for name in ("DejaVuSans", "DejaVuSerif")} for code in codes
    }
    assert glyphs.confusable_groups(drawings, 32) == [[ord("A"), 0x391, 0x410]]


def test_jitter_is_a_pure_function_of_its_seed(fonts):
    drawing = glyphs.draw(fonts["DejaVuSerif"], ord("g"))
    first = glyphs.jitter(drawing, 32, np.random.default_rng([0, 103, 4]))
    again = glyphs.jitter(drawing, 32, np.random.default_rng([0, 103, 4]))
    other = glyphs.jitter(drawing, 32, np.random.default_rng([1, 103, 4]))
    assert first.dtype == np.uint8 and first.shape == (32, 32, 3)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


@pytest.fixture(scope="module")
def small_benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("glyphs") / "glyphs"
    manifest = glyphs.write_glyphs(root, image_size=16, seed=3, train_classes=6, test_classes=5, pretrain_classes=4)
    return root, manifest


@pytest.mark.slow
def test_the_folder_is_an_sop_dataset_of_unseen_classes(small_benchmark):
    root, manifest = small_benchmark
    assert manifest["counts"]["Ebay_train.txt"]["classes"] == 6 and manifest["counts"]["Ebay_test.txt"]["classes"] == 5
    assert manifest["counts"]["available_classes"] >= 2000  # at least 1,000 train + 1,000 test classes possible
    splits = glyphs.load_glyphs(str(root), image_size=16, seed=3, train_classes=6, test_classes=5, pretrain_classes=4)
    train, test = {s.label for s in splits.train}, {s.label for s in splits.query}
    assert len(train) == 6 and len(test) == 5 and not train & test and splits.gallery is None
    for samples in (splits.train, splits.query):
        per_class = {}
        for sample in samples:
            per_class[sample.label] = per_class.get(sample.label, 0) + 1
        assert min(per_class.values()) >= glyphs.MIN_FONTS
    assert not splits.mirror_invariant
    left_out = {int(code[2:], 16) for group in manifest["look_alike_groups"] for code in group[1:]}
    assert 0x391 in left_out and 0x410 in left_out and not left_out & (train | test)
    pretraining = glyphs.load_glyphs(str(root), 16, 3, 6, 5, pretrain_classes=4, pretrain=True)
    pretrain = {s.label for s in pretraining.train}
    assert len(pretrain) == 4 and not pretrain & (train | test) and not pretrain & left_out
    assert {s.label for s in pretraining.query} == train  # pretraining is evaluated on the train classes
    per_class = {}
    for sample in pretraining.train:
        per_class[sample.label] = per_class.get(sample.label, 0) + 1
    assert min(per_class.values()) >= glyphs.PRETRAIN_MIN_FONTS * glyphs.PRETRAIN_COPIES


@pytest.mark.slow
def test_a_matching_folder_is_reused_and_a_foreign_one_refused(small_benchmark, tmp_path):
    root, _ = small_benchmark
    stamp = os.stat(root / "Ebay_train.txt").st_mtime_ns
    glyphs.write_glyphs(root, image_size=16, seed=3, train_classes=6, test_classes=5, pretrain_classes=4)
    assert os.stat(root / "Ebay_train.txt").st_mtime_ns == stamp
    assert read_sop_file(str(root / "Ebay_test.txt"), str(root))
    assert json.loads((root / glyphs.MANIFEST).read_text())["parameters"]["seed"] == 3
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a glyph benchmark"):
        glyphs.write_glyphs(foreign, image_size=16, train_classes=2, test_classes=2)
    assert (foreign / "notes.txt").read_text() == "mine"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        glyphs.write_glyphs(a_file, image_size=16, train_classes=2, test_classes=2)


def test_impossible_sizes_are_refused_before_any_work(tmp_path):
    with pytest.raises(DataError, match="image_size"):
        glyphs.write_glyphs(tmp_path / "g", image_size=4)
    with pytest.raises(DataError, match="train_classes"):
        glyphs.write_glyphs(tmp_path / "g", train_classes=0)
    assert not (tmp_path / "g").exists()
