"""Small exports of random-weight PP-LCNets and galleries of random PNGs, for the search-model tests."""

import json
from pathlib import Path

import cv2
import numpy as np

import recog
from recog.inference.export import export_model
from recog.inference.threshold import Threshold, save
from recog.utils import manifest


def tiny_export(root: Path, seed: int = 0, size: int = 32) -> Path:
    """An export in ``root/export``: PP-LCNet x0.25, ``size`` px, FC neck to 16, weights drawn with ``seed``."""
    import paddle

    cfg = recog.compose(
        [
            "backbone.scale=0.25",
            f"data.image_size={size}",
            "neck.embedding_size=16",
            "head.class_num=3",
            f"paths.output_root={root}",
        ]
    )
    paddle.seed(seed)
    images = np.random.default_rng(seed).standard_normal((2, 3, size, size)).astype(np.float32)
    export_model(recog.build_model(cfg), cfg, root / "export", images, cpu_onednn="full")  # no probe: quick
    return root / "export"


def with_threshold(export_dir: Path, score: float, target_fmr: float = 1e-3) -> Path:
    """``threshold.json`` added to an export, its manifest written again (as an export carrying one has it)."""
    save(export_dir, Threshold(score=score, target_fmr=target_fmr, fnmr=0.1))
    manifest.write_manifest(export_dir, "export")
    return export_dir


def write_gallery(root: Path, count: int = 12, classes: int = 4, seed: int = 0, name: str = "gallery") -> Path:
    """``count`` random 20 x 20 PNGs under ``root/img``, labelled ``i % classes``, listed in ``root/<name>.txt``."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        path = f"img/{name}_{i}.png"
        cv2.imwrite(str(root / path), rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
        lines.append(f"{path} {i % classes}")
    (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root / f"{name}.txt"


def read_rgb(path) -> np.ndarray:
    return cv2.imread(str(path))[:, :, ::-1].copy()


def manifest_of(index_dir: Path) -> dict:
    return json.loads((index_dir / "manifest.json").read_text())
