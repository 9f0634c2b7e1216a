"""An open-set development benchmark generated offline: printed glyphs, one class per character.

Each class is a Unicode character drawn by at least ``MIN_FONTS`` of the fonts matplotlib ships
(DejaVu Sans / Serif / Mono with their bold and oblique faces, STIX, Computer Modern; not the
last-resort placeholder font). Its images are those drawings, one per font file: different real
designs of the same thing, as photos of one product differ, each jittered as a photo would be
(pose: rotation, scale, shear, shift; stroke width; blur; foreground and background colours;
sensor noise). Nothing is downloaded: the fonts come with matplotlib, which MLflow installs.

Characters that look alike across scripts (Latin A, Greek Alpha, Cyrillic A) are one class: two
characters that some font draws (nearly) identically, ``CONFUSABLE_DISTANCE`` apart, are linked,
and of each linked group only the lowest code point is kept. The remaining characters are shuffled
(``seed``): the first ``train_classes`` train, the next ``test_classes`` are the unseen test set
(query == gallery with self-exclusion, the Stanford Online Products protocol).

Users fine-tune backbones pretrained on other data (PaddleClas's ImageNet weights); nothing can be
downloaded here, so the benchmark brings its own "other data": the **pretraining split**, every
other character drawn by at least ``PRETRAIN_MIN_FONTS`` fonts (look-alikes merged over both pools,
so none of them looks like a benchmark character), ``PRETRAIN_COPIES`` jittered images per font
(``pretrain_classes``: that many of them, chosen with ``seed``; None: all).
``scripts/pretrain_glyphs.py`` trains a backbone on it (``dataset.pretrain=true``: train on the
pretraining split, evaluate on the benchmark's train split, never on its test split).

Files, in the SOP layout (``recog.data.sop``)::

    root/Ebay_train.txt, root/Ebay_test.txt   image_id class_id super_class_id path
    root/pretrain.txt                        (class_id: the code point; super_class_id: its 256-block)
    root/images/<code point, hex>/<font>.png  RGB, image_size x image_size (<font>_<copy>.png: pretraining)
    root/glyphs.json                         what was generated: parameters, versions, counts, the
                                             look-alike groups (the first of each is the class)

The folder is written whole or not at all (``recog.utils.atomic.replacing_dir``) and regenerated
when ``glyphs.json`` does not match the parameters. The output is deterministic for a given
matplotlib (its fonts) and FreeType, both recorded in ``glyphs.json``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from recog.data.sop import HEADER, load_sop
from recog.data.splits import RetrievalSplits
from recog.errors import DataError

log = logging.getLogger(__name__)

VERSION = 3  # of the generator: a change to what it draws bumps it (and regenerates)
MIN_FONTS = 8  # drawings (font files) a character needs to be a benchmark class
PRETRAIN_MIN_FONTS = 4  # ... to be a class of the pretraining split
PRETRAIN_COPIES = 3  # jittered images per drawing in the pretraining split
CONFUSABLE_DISTANCE = 0.01  # relative squared distance of two plain drawings in one font
PAIR_ROWS = 256  # drawings compared with the later ones at a time (a [rows, N] block of distances)
# Characters matplotlib's text layout (HarfBuzz shaping, matplotlib 3.11) draws as two glyphs (Thai and Lao
# AM: a ring above and a vowel): drawn through it. Every other character is the one glyph its code maps to.
SHAPED = frozenset({0x0E33, 0x0EB3})
RENDER_SIZE = 64  # canvas of the drawing and its jitter; downsampled to image_size
EM_PIXELS = 44  # font size on that canvas
BASELINE = 0.75  # of the canvas height, from the top
MANIFEST = "glyphs.json"
LIST_FILES = ("Ebay_train.txt", "Ebay_test.txt")
PRETRAIN_FILE = "pretrain.txt"
# Computer Modern's files map TeX positions, not Unicode, outside letters and digits; cmex10 and
# cmsy10 draw other symbols even there.
COMPUTER_MODERN = ("cmr10", "cmb10", "cmss10", "cmti10", "cmtt10", "cmmi10")
ALPHANUMERIC = frozenset(map(ord, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"))
EXCLUDED_FONTS = ("LastResort",)


@dataclass(frozen=True)
class Font:
    """One font file: ``name`` (its file stem) and the FreeType face."""

    name: str
    face: object

    def draws(self, code: int) -> bool:
        if self.name.startswith("cm"):
            return self.name in COMPUTER_MODERN and code in ALPHANUMERIC
        category = unicodedata.category(chr(code))
        # not control, format, private use, separators or combining marks (drawn on nothing)
        return category[0] not in "CZ" and category not in ("Mn", "Me")


def load_fonts() -> list[Font]:
    """matplotlib's TrueType fonts but the placeholder, sorted by file name."""
    import matplotlib
    from matplotlib import ft2font

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = []
    for path in sorted(folder.glob("*.ttf")):
        if not path.stem.startswith(EXCLUDED_FONTS):
            fonts.append(Font(path.stem, ft2font.FT2Font(str(path))))
    if not fonts:
        raise DataError(f"no TrueType fonts under {folder}: the glyph benchmark draws with matplotlib's fonts")
    return fonts


def draw(font: Font, code: int) -> np.ndarray | None:
    """``[RENDER_SIZE, RENDER_SIZE] uint8`` coverage (255: ink) of one character, its baseline at
    ``BASELINE`` and its advance box centred (so position tells '.' from '·', '▌' from '▐');
    None when the font draws nothing. Glyphs larger than the canvas are shrunk to fit, centred."""
    face = font.face
    face.clear()
    face.set_size(EM_PIXELS, 72)
    glyph = face.load_char(code)
    if code in SHAPED:
        face.set_text(chr(code), 0.0)
        face.draw_glyphs_to_bitmap(antialiased=True)
        ink = np.asarray(face.get_image(), dtype=np.uint8)
        descent, offset = face.get_descent(), face.get_bitmap_offset()[0]
    else:
        ink, descent, offset = _one_glyph(face, glyph)
    if ink.size == 0 or not ink.any():
        return None
    height, width = ink.shape
    advance = glyph.horiAdvance / 64.0
    top = round(BASELINE * RENDER_SIZE - (height - descent / 64.0))
    left = round((RENDER_SIZE - advance) / 2 + offset / 64.0)
    if height > RENDER_SIZE - 2 or width > RENDER_SIZE - 2:
        scale = (RENDER_SIZE - 2) / max(height, width)
        shrunk = cv2.resize(
            ink.astype(np.float32) / 255.0,
            (max(1, round(width * scale)), max(1, round(height * scale))),
            interpolation=cv2.INTER_AREA,
        )
        ink = np.clip(np.rint(shrunk * 255.0), 0, 255).astype(np.uint8)
        height, width = ink.shape
        top, left = (RENDER_SIZE - height) // 2, (RENDER_SIZE - width) // 2
    top = min(max(top, 0), RENDER_SIZE - height)
    left = min(max(left, 0), RENDER_SIZE - width)
    canvas = np.zeros((RENDER_SIZE, RENDER_SIZE), np.uint8)
    canvas[top : top + height, left : left + width] = ink  # unshrunk: FreeType's coverage as it is
    return canvas


def _one_glyph(face, glyph) -> tuple[np.ndarray, int, int]:
    """``(coverage [H, W] uint8, descent, x offset)`` (26.6 units) of one loaded glyph, as
    ``set_text`` + ``draw_glyphs_to_bitmap`` lay out a one-glyph text (its control box, 1 pixel
    of margin): the same bitmap without ``set_text``'s text shaping, most of a drawing's cost."""
    x_min, y_min, x_max, y_max = glyph.bbox
    if x_min > x_max:
        x_min = y_min = x_max = y_max = 0
    ink = np.zeros(((y_max - y_min) // 64 + 2, (x_max - x_min) // 64 + 2), np.uint8)
    # FreeType's bitmap of the outline: left = floor(x_min / 64), top = ceil(y_max / 64)
    top = -(-y_max // 64)
    face.draw_glyph_to_bitmap(ink, -(x_min // 64), int(y_max / 64 - top + 1), glyph, antialiased=True)
    return ink, -y_min, x_min


def coverage(fonts: list[Font]) -> dict[int, list[str]]:
    """code point -> names of the fonts that draw it, for the characters at least ``PRETRAIN_MIN_FONTS``
    fonts map (a font that maps a character but draws nothing is dropped later, in ``catalogue``)."""
    cover: dict[int, list[str]] = {}
    for font in fonts:
        for code, glyph in font.face.get_charmap().items():
            if glyph != 0 and font.draws(code):
                cover.setdefault(code, []).append(font.name)
    return {code: names for code, names in sorted(cover.items()) if len(names) >= PRETRAIN_MIN_FONTS}


@dataclass(frozen=True)
class Catalogue:
    """Every class: ``fonts_of`` code point -> the fonts that draw it (``PRETRAIN_MIN_FONTS`` or more,
    look-alikes removed), and the look-alike ``groups`` (the first of each kept)."""

    fonts_of: dict[int, list[str]]
    groups: list[list[int]]

    def benchmark_codes(self) -> list[int]:
        """The characters ``MIN_FONTS`` or more fonts draw: where train and test classes come from."""
        return sorted(code for code, names in self.fonts_of.items() if len(names) >= MIN_FONTS)


@functools.lru_cache(maxsize=2)
def catalogue(image_size: int) -> Catalogue:
    """Every character's plain drawings are compared once per process (several seconds of CPU);
    only the lists are kept, the drawings are made again for the classes written."""
    fonts = {font.name: font for font in load_fonts()}
    drawings = {}
    for code, names in coverage(list(fonts.values())).items():
        drawn = {name: image for name in names if (image := draw(fonts[name], code)) is not None}
        if len(drawn) >= PRETRAIN_MIN_FONTS:
            drawings[code] = drawn
    groups = confusable_groups(drawings, image_size)
    left_out = {code for group in groups for code in group[1:]}
    fonts_of = {code: sorted(drawn) for code, drawn in drawings.items() if code not in left_out}
    return Catalogue(fonts_of, groups)


def confusable_groups(drawings: dict[int, dict[str, np.ndarray]], image_size: int) -> list[list[int]]:
    """Groups (sorted code points, two or more) of characters some font draws alike: within a
    font, ``|a - b|^2 / max(|a|^2, |b|^2) < CONFUSABLE_DISTANCE`` at ``image_size``; linked
    transitively."""
    by_font: dict[str, list[tuple[int, np.ndarray]]] = {}
    for code, drawn in drawings.items():
        for name, image in drawn.items():
            small = cv2.resize(image.astype(np.float32) / 255.0, (image_size, image_size), interpolation=cv2.INTER_AREA)
            by_font.setdefault(name, []).append((code, small.reshape(-1)))
    parent = {code: code for code in drawings}

    def root(code: int) -> int:
        while parent[code] != code:
            parent[code] = parent[parent[code]]
            code = parent[code]
        return code

    for entries in by_font.values():
        codes = [code for code, _ in entries]
        vectors = np.stack([vector for _, vector in entries])
        norms = (vectors**2).sum(1)
        products = 2 * vectors @ vectors.T
        for start in range(0, len(codes), PAIR_ROWS):  # row blocks of the upper triangle: i < j
            rows, cols = norms[start : start + PAIR_ROWS, None], norms[None, start:]
            distance = rows + cols - products[start : start + PAIR_ROWS, start:]
            distance /= np.maximum(np.maximum(rows, cols), 1e-12)
            for i, j in zip(*np.nonzero(np.triu(distance < CONFUSABLE_DISTANCE, k=1))):
                a, b = root(codes[start + i]), root(codes[start + j])
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for code in drawings:
        groups.setdefault(root(code), []).append(code)
    return sorted(sorted(group) for group in groups.values() if len(group) > 1)


def jitter(drawing: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """A photo-like ``[image_size, image_size, 3] uint8`` RGB image of one drawing: stroke width,
    pose (rotation +-10 deg, scale 0.8-1.05, shear, shift), blur, dark ink of a random colour on a
    light surface of another, then sensor noise."""
    coverage = drawing.astype(np.float32) / 255.0
    stroke = int(rng.integers(-1, 2))  # erode 1 px, keep, dilate 1 px (at RENDER_SIZE)
    if stroke:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(stroke) + 1,) * 2)
        changed = cv2.dilate(coverage, kernel) if stroke > 0 else cv2.erode(coverage, kernel)
        if changed.sum() >= 0.4 * coverage.sum():  # erosion must not erase thin strokes
            coverage = changed
    angle, scale = rng.uniform(-10, 10), rng.uniform(0.8, 1.05)
    shear, shift = rng.uniform(-0.15, 0.15), rng.uniform(-4, 4, size=2)
    centre = RENDER_SIZE / 2
    matrix = cv2.getRotationMatrix2D((centre, centre), angle, scale)
    matrix = matrix @ np.array([[1, shear, -shear * centre], [0, 1, 0], [0, 0, 1]], np.float64)
    matrix[:, 2] += shift
    coverage = cv2.warpAffine(coverage, matrix, (RENDER_SIZE, RENDER_SIZE), flags=cv2.INTER_LINEAR)
    sigma = rng.uniform(0, 1.2)
    if sigma > 0.3:
        coverage = cv2.GaussianBlur(coverage, (0, 0), sigma)
    background, foreground = _colours(rng)
    image = background + coverage[..., None] * (foreground - background)
    image = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)
    image = image + rng.normal(0.0, rng.uniform(0, 0.04), size=image.shape)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A light background (luminance at least 0.6) and a dark foreground (at most 0.35), RGB in [0, 1],
    each of a random colour: print on a surface, always dark on light."""
    luminance = np.array([0.299, 0.587, 0.114])
    background = rng.uniform(0.45, 1.0, size=3)
    while float(background @ luminance) < 0.6:
        background = rng.uniform(0.45, 1.0, size=3)
    foreground = rng.uniform(0.0, 0.55, size=3)
    while float(foreground @ luminance) > 0.35:
        foreground = rng.uniform(0.0, 0.55, size=3)
    return background.astype(np.float32), foreground.astype(np.float32)


def generation_parameters(
    image_size: int, seed: int, train_classes: int, test_classes: int, pretrain_classes: int | None
) -> dict:
    """What the generated folder depends on (compared with ``glyphs.json`` to reuse it)."""
    import matplotlib
    from matplotlib import ft2font

    return {
        "version": VERSION,
        "image_size": int(image_size),
        "seed": int(seed),
        "train_classes": int(train_classes),
        "test_classes": int(test_classes),
        "pretrain_classes": pretrain_classes,
        "min_fonts": MIN_FONTS,
        "pretrain_min_fonts": PRETRAIN_MIN_FONTS,
        "pretrain_copies": PRETRAIN_COPIES,
        "confusable_distance": CONFUSABLE_DISTANCE,
        "matplotlib": matplotlib.__version__,
        "freetype": ft2font.__freetype_version__,
    }


def _manifest_matches(root: Path, parameters: dict) -> bool:
    try:
        saved = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(saved, dict)
        and saved.get("parameters") == parameters
        and all((root / name).is_file() for name in (*LIST_FILES, PRETRAIN_FILE))
    )


def write_glyphs(
    root,
    image_size: int = 32,
    seed: int = 0,
    train_classes: int = 1000,
    test_classes: int = 1000,
    pretrain_classes: int | None = None,
) -> dict:
    """Generate the benchmark under ``root`` unless ``glyphs.json`` there already matches; returns
    the manifest (parameters, counts, the left-out confusable characters)."""
    from tqdm import tqdm

    from recog.utils import atomic

    root = Path(root)
    if image_size < 8 or image_size > RENDER_SIZE:
        raise DataError(f"glyph image_size must be between 8 and {RENDER_SIZE}, got {image_size}")
    if train_classes < 1 or test_classes < 1:
        raise DataError(
            f"the glyph benchmark needs train_classes and test_classes >= 1, got {train_classes}, {test_classes}"
        )
    parameters = generation_parameters(image_size, seed, train_classes, test_classes, pretrain_classes)
    if _manifest_matches(root, parameters):
        return json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    if root.exists() and not root.is_dir():
        raise DataError(f"dataset.root={root} is a file, not a folder for the glyph benchmark")
    if root.is_dir() and any(root.iterdir()) and not (root / MANIFEST).is_file():
        raise DataError(
            f"dataset.root={root} holds files that are not a glyph benchmark (no {MANIFEST}): "
            "choose an empty or new folder"
        )
    log.info("writing the glyph benchmark under %s (once; about a minute)", root)
    found = catalogue(image_size)
    codes = found.benchmark_codes()
    if train_classes + test_classes > len(codes):
        raise DataError(
            f"the glyph benchmark has {len(codes)} classes here (characters {MIN_FONTS}+ fonts draw, look-alikes "
            f"merged): train_classes + test_classes = {train_classes + test_classes} is too many"
        )
    order = np.random.default_rng(seed).permutation(len(codes))
    splits = {
        LIST_FILES[0]: sorted(codes[i] for i in order[:train_classes]),
        LIST_FILES[1]: sorted(codes[i] for i in order[train_classes : train_classes + test_classes]),
    }
    others = sorted(set(found.fonts_of) - set(splits[LIST_FILES[0]]) - set(splits[LIST_FILES[1]]))
    chosen = np.random.default_rng(seed).permutation(len(others))[
        : len(others) if pretrain_classes is None else pretrain_classes
    ]
    splits[PRETRAIN_FILE] = sorted(others[i] for i in chosen)
    fonts = load_fonts()
    by_name = {font.name: font for font in fonts}
    font_index = {font.name: i for i, font in enumerate(fonts)}
    copies = {name: 1 for name in LIST_FILES} | {PRETRAIN_FILE: PRETRAIN_COPIES}
    total = sum(
        len(found.fonts_of[code]) * copies[name] for name, split_codes in splits.items() for code in split_codes
    )
    counts = {}
    try:
        with atomic.replacing_dir(root, "the glyph benchmark") as tmp:
            with tqdm(total=total, desc="glyph images", unit="img", dynamic_ncols=True) as bar:
                image_id = 0
                for list_name, split_codes in splits.items():
                    rows = [" ".join(HEADER)]
                    distinct = 0
                    for code in split_codes:
                        folder = tmp / "images" / f"{code:04x}"
                        folder.mkdir(parents=True)
                        drawings = {name: draw(by_name[name], code) for name in found.fonts_of[code]}
                        distinct += len({drawing.tobytes() for drawing in drawings.values()})
                        for name, drawing in drawings.items():
                            for copy in range(copies[list_name]):
                                # copy 0 of a benchmark image: seeded by (seed, character, font) alone
                                key = [seed, code, font_index[name]] + (
                                    [copy + 1] if list_name == PRETRAIN_FILE else []
                                )
                                image = jitter(drawing, image_size, np.random.default_rng(key))
                                ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                                if not ok:
                                    raise DataError(f"cannot encode the glyph image of U+{code:04X} in {name}")
                                file = f"{name}_{copy}.png" if list_name == PRETRAIN_FILE else f"{name}.png"
                                atomic.write_file(folder / file, png.tobytes())
                                image_id += 1
                                rows.append(f"{image_id} {code} {code // 256} images/{code:04x}/{file}")
                                bar.update(1)
                    atomic.write_file(tmp / list_name, "\n".join(rows) + "\n")
                    counts[list_name] = {
                        "classes": len(split_codes),
                        "images": len(rows) - 1,
                        "distinct_designs": distinct,
                    }
            manifest = {
                "parameters": parameters,
                "counts": dict(counts, available_classes=len(codes)),
                "fonts": [font.name for font in fonts],
                "look_alike_groups": [[f"U+{c:04X}" for c in group] for group in found.groups],
            }
            atomic.write_file(tmp / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    except OSError as error:
        raise DataError(f"cannot write the glyph benchmark under {root}: {error}") from None
    return manifest


def load_glyphs(
    root: str,
    image_size: int = 32,
    seed: int = 0,
    train_classes: int = 1000,
    test_classes: int = 1000,
    pretrain_classes: int | None = None,
    pretrain: bool = False,
    mirror_invariant: bool = False,
) -> RetrievalSplits:
    """Generate the glyph benchmark under ``root`` once (no download), then load it as SOP.
    ``pretrain``: train on the pretraining split and evaluate on the benchmark's train split (what
    ``scripts/pretrain_glyphs.py`` trains a backbone on), never touching the test classes.
    Glyphs are not mirror invariant (a mirrored 'b' is a 'd')."""
    write_glyphs(root, image_size, seed, train_classes, test_classes, pretrain_classes)
    if pretrain:
        return load_sop(os.fspath(root), PRETRAIN_FILE, LIST_FILES[0], mirror_invariant=mirror_invariant)
    return load_sop(os.fspath(root), mirror_invariant=mirror_invariant)
