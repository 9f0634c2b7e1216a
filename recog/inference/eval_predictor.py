"""A Paddle Inference predictor of a model being trained, for the eval stage's feature extraction.

On the CPU the predictor (oneDNN, with conv + batch-norm fusions) computes features several times
faster than the dygraph model. ``EvalPredictor`` converts the model's feature path to a static
graph once (``paddle.jit.to_static``, about 1.5 s), and before each eval saves the current weights
with it (``refresh``: a few hundredths of a second) and loads them into a fresh predictor.

Which oneDNN mode works depends on the graph (Paddle 3.3's oneDNN crashes on some, see
``recog.inference.export``), so the first ``refresh`` probes the modes in a child process
(``choose_onednn_mode``, a few seconds) and keeps the first that reproduces the dygraph features.
Every ``refresh`` then compares the predictor with the dygraph model on a few fixed random images
(``check``), so stale or wrong weights can never go unnoticed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import paddle

from recog.errors import RecogError
from recog.inference.export import INPUT_NAME, FeatureExtractor, choose_onednn_mode, dygraph_features
from recog.inference.predictor import MODEL_FILE, ONEDNN_MODES, GraphPredictor
from recog.models.rec_model import RecModel

log = logging.getLogger(__name__)

CHECK_IMAGES = 4


class EvalPredictor:
    """``predict(images [N, 3, S, S] float32) -> features [N, D] float32`` of ``model``'s eval-mode
    feature path (L2-normalised if ``normalize``), as of the last ``refresh()``.

    ``device``: ``cpu``, ``gpu`` or ``gpu:N`` (as ``paddle.get_device()`` says); ``threads``: CPU
    math threads (default ``OMP_NUM_THREADS``); ``tolerance``: the largest max-abs difference from
    the dygraph features accepted, relative to the features' largest magnitude (raw features may be
    tiny, e.g. a fresh tanh neck's). The graph files live in a temporary directory removed with the
    object.
    """

    def __init__(
        self,
        model: RecModel,
        normalize: bool,
        image_size: int,
        device: str = "cpu",
        threads: int | None = None,
        tolerance: float = 1e-4,
    ):
        self.model = model
        self.normalize = bool(normalize)
        self.device, _, gpu_id = str(device).partition(":")
        self.gpu_id = int(gpu_id or 0)
        self.threads = int(threads or os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
        self.tolerance = float(tolerance)
        self.onednn: str | None = None if self.device == "cpu" else "off"  # chosen by the first refresh
        self.attempts: dict[str, str] = {}
        self.last_difference: float | None = None
        spec = paddle.static.InputSpec([None, 3, int(image_size), int(image_size)], "float32", name=INPUT_NAME)
        self._extractor = FeatureExtractor(model, self.normalize)
        # Traced once; later saves reuse the program with the parameters' current values.
        self._static = paddle.jit.to_static(self._extractor, input_spec=[spec], full_graph=True)
        self._check_images = (
            np.random.default_rng(0)
            .standard_normal((CHECK_IMAGES, 3, int(image_size), int(image_size)))
            .astype(np.float32)
        )
        self._dir = Path(tempfile.mkdtemp(prefix="recog-eval-graph-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._dir), True)
        self._graph: GraphPredictor | None = None

    def refresh(self) -> None:
        """Save the model's current weights, load them into a predictor and check it against the
        dygraph model; ``RecogError`` if they differ beyond the tolerance (the predictor is then
        unusable until a later refresh passes)."""
        self._graph = None
        was_training = self.model.training
        self._extractor.eval()
        try:
            paddle.jit.save(self._static, str(self._dir / Path(MODEL_FILE).stem))
            reference = dygraph_features(self.model, self._check_images, self.normalize)
        finally:
            if was_training:
                self.model.train()
        tolerance = self.tolerance * max(float(np.abs(reference).max()), float(np.finfo(np.float32).tiny))
        if self.onednn is None:
            self.onednn, self.attempts = choose_onednn_mode(self._dir, self._check_images, reference, tolerance)
            if self.onednn != ONEDNN_MODES[0]:
                log.info(
                    "eval predictor: oneDNN mode %r for this model (%s)",
                    self.onednn,
                    "; ".join(f"{k}: {v}" for k, v in self.attempts.items()),
                )
        graph = GraphPredictor(self._dir, self.device, self.threads, self.onednn, gpu_id=self.gpu_id)
        self.last_difference = float(np.abs(graph.run(self._check_images) - reference).max())
        if not self.last_difference <= tolerance:
            raise RecogError(
                f"the eval predictor (oneDNN mode {self.onednn}) differs from the dygraph model by "
                f"{self.last_difference:.3g} (tolerance {tolerance:.3g}) on {CHECK_IMAGES} check images"
            )
        self._graph = graph

    def predict(self, images: np.ndarray) -> np.ndarray:
        if self._graph is None:
            raise RuntimeError("EvalPredictor.predict before a successful refresh()")
        return self._graph.run(images)

    def close(self) -> None:
        self._graph = None
        self._cleanup()
