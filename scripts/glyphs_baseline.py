"""The glyph benchmark (``dataset=glyphs``): its size, generation time and raw-pixel baselines.

    python scripts/glyphs_baseline.py                 # generate into a temp folder (timed), then measure
    python scripts/glyphs_baseline.py --root outputs/data/glyphs   # measure an existing one (generated if missing)

Prints the classes and images of each split, the distinct designs (font drawings that differ), the
folder's size, the generation time, and Recall@1 / mAP of raw pixels (each image flattened, its
mean removed, L2-normalised; cosine ranking, query == gallery without the query itself) on the test
split, both for the plain drawings (what jitter has to make a task) and for the generated images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="an existing (or new) benchmark folder; default: a fresh temp folder")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-classes", type=int, default=1000)
    parser.add_argument("--test-classes", type=int, default=1000)
    parser.add_argument("--pretrain-classes", type=int, help="of the pretraining split (default: all)")
    return parser.parse_args(argv)


def pixel_metrics(images, labels) -> dict:
    """Recall@1 and mAP of raw pixels: ``images [N, ...]`` flattened, centred, L2-normalised."""
    import numpy as np

    from recog.metrics import retrieval_metrics

    vectors = np.asarray(images, np.float32).reshape(len(images), -1)
    vectors -= vectors.mean(axis=1, keepdims=True)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)
    metrics = retrieval_metrics(vectors, np.asarray(labels), recall_at=(1,))
    return {"recall_at_1": metrics["recall_at_1"], "mAP": metrics["mAP"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    import cv2
    import numpy as np

    import recog  # noqa: F401  (quiets Paddle and friends)
    from recog.data import glyphs
    from recog.data.sop import read_sop_file

    with tempfile.TemporaryDirectory(prefix="glyphs-") as scratch:
        root = Path(args.root) if args.root else Path(scratch) / "glyphs"
        started = time.perf_counter()
        manifest = glyphs.write_glyphs(
            root,
            args.image_size,
            args.seed,
            train_classes=args.train_classes,
            test_classes=args.test_classes,
            pretrain_classes=args.pretrain_classes,
        )
        elapsed = time.perf_counter() - started
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        print(f"glyph benchmark at {args.image_size} px under {root}: {elapsed:.1f} s to generate or find")
        for name, count in manifest["counts"].items():
            print(f"  {name}: {count}")
        print(
            f"  {sum(len(g) - 1 for g in manifest['look_alike_groups'])} look-alike characters left out "
            f"({len(manifest['look_alike_groups'])} groups); {size / 1e6:.0f} MB of files"
        )

        test = read_sop_file(str(root / "Ebay_test.txt"), str(root))
        labels = [sample.label for sample in test]
        images = [cv2.imread(sample.path, cv2.IMREAD_COLOR) for sample in test]
        print(f"raw pixels, generated images (test split, {len(test)} images): {pixel_metrics(images, labels)}")

        fonts = {font.name: font for font in glyphs.load_fonts()}
        plain = []
        for sample in test:
            drawing = glyphs.draw(fonts[Path(sample.path).stem], sample.label)
            plain.append(cv2.resize(drawing.astype(np.float32), (args.image_size,) * 2, interpolation=cv2.INTER_AREA))
        print(f"raw pixels, plain drawings (same images without jitter): {pixel_metrics(plain, labels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
