"""Child process of the export check: run an export with one oneDNN mode on saved images.

``python -m recog.inference._probe EXPORT_DIR MODE IMAGES.npy OUT.npz``. Run apart from the export
because some of Paddle's oneDNN kernels crash the process (a segmentation fault) on some graphs;
the export then falls back to the next mode instead of dying with it.
"""

import sys


def main(argv) -> int:
    model_dir, mode, images_path, out_path = argv
    import numpy as np

    from recog.inference.predictor import ExportedModel

    model = ExportedModel(model_dir, device="cpu", onednn=mode)
    images = np.load(images_path)
    batch = model.predict(images, binarize=False)
    single = model.predict(images[:1], binarize=False)
    np.savez(out_path, batch=batch, single=single)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
