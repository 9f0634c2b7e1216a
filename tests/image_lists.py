"""Tiny image-list datasets for the tests that run real training: random 12x12 PNGs on disk."""

from pathlib import Path

import cv2
import numpy as np


def write_image_lists(root: Path, sizes=(("train", 200), ("query", 37), ("gallery", 53)), classes: int = 5) -> list:
    """``count`` random PNGs per ``(name, count)``, labelled ``i % classes``, listed in ``<name>.txt``;
    returns the ``dataset=image_list`` overrides for the lists written (train, query, gallery)."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name, count in sizes:
        lines = []
        for i in range(count):
            path = f"img/{name}_{i}.png"
            cv2.imwrite(str(root / path), (rng.random((12, 12, 3)) * 255).astype(np.uint8))
            lines.append(f"{path} {i % classes}")
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return ["dataset=image_list", f"dataset.root={root}"] + [f"dataset.{name}_list={name}.txt" for name, _ in sizes]
