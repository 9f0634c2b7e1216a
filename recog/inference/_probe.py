"""Child process of the oneDNN check: run an inference model with one oneDNN mode on saved images.

``python -m recog.inference._probe MODEL_DIR MODE IMAGES.npy OUT.npz``. Run apart from the caller
because some of Paddle's oneDNN kernels crash the process (a segmentation fault) on some graphs;
the caller (an export, or the eval stage's predictor) then falls back to the next mode instead of
dying with it. ``MODEL_DIR`` needs only the inference model files, not a whole export.
"""

import sys


def main(argv) -> int:
    model_dir, mode, images_path, out_path = argv
    import os

    import numpy as np

    from recog.inference.predictor import GraphPredictor

    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    model = GraphPredictor(model_dir, device="cpu", threads=threads, onednn=mode)
    images = np.load(images_path)
    np.savez(out_path, batch=model.run(images), single=model.run(images[:1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
