"""The ``eval.*`` post-processing settings, applied the same way by ``stage=eval``, every eval
during training and ``stage=predict``'s gallery search.

``eval.flip`` changes the features (``features_of``); ``eval.query_expansion`` and ``eval.rerank``
change the ranking (``metrics``, ``search``). All off: the plain features and ranking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from recog.postprocess.flip import average_flipped, hflip_images
from recog.postprocess.metrics import postprocessed_metrics
from recog.postprocess.query_expansion import query_expansion
from recog.postprocess.rerank import k_reciprocal_rerank


@dataclass(frozen=True)
class PostProcess:
    """What ``eval.flip``, ``eval.query_expansion`` / ``qe_alpha`` and ``eval.rerank`` /
    ``rerank_k1`` / ``rerank_k2`` / ``rerank_lambda`` / ``rerank_top_k`` ask for."""

    flip: bool = False
    qe_k: int = 0
    qe_alpha: float = 0.0
    rerank: str | None = None
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    top_k: int = 100

    @classmethod
    def from_config(cls, eval_cfg) -> PostProcess:
        """From an ``eval`` config section (missing keys: off / the defaults, as for a config
        saved before these options existed)."""
        rerank = eval_cfg.get("rerank")
        return cls(
            flip=bool(eval_cfg.get("flip", False)),
            qe_k=int(eval_cfg.get("query_expansion", 0) or 0),
            qe_alpha=float(eval_cfg.get("qe_alpha", 0.0)),
            rerank=None if rerank is None else str(getattr(rerank, "value", rerank)),
            k1=int(eval_cfg.get("rerank_k1", 20)),
            k2=int(eval_cfg.get("rerank_k2", 6)),
            lambda_value=float(eval_cfg.get("rerank_lambda", 0.3)),
            top_k=int(eval_cfg.get("rerank_top_k", 100)),
        )

    @property
    def reorders(self) -> bool:
        """Whether the ranking differs from the plain inner-product ranking."""
        return bool(self.qe_k) or self.rerank is not None

    def features_of(self, predict: Callable[[np.ndarray], np.ndarray], images, normalize: bool) -> np.ndarray:
        """``predict(images) -> [N, D]`` features, or with ``flip`` the mean of those of the images
        ``[N, C, H, W]`` and of their mirrors (L2-normalised again when ``normalize``)."""
        features = predict(images)
        if not self.flip:
            return features
        return average_flipped(features, predict(hflip_images(images)), normalize=normalize)

    def metrics(
        self, query, query_labels, gallery=None, gallery_labels=None, recall_at: Iterable[int] = (1, 5, 10)
    ) -> dict:
        """Retrieval metrics of the post-processed ranking (``recog.postprocess.metrics``);
        ``gallery=None``: the queries are the gallery."""
        return postprocessed_metrics(
            query,
            query_labels,
            gallery,
            gallery_labels,
            recall_at=recall_at,
            qe_k=self.qe_k,
            qe_alpha=self.qe_alpha,
            rerank_top_k=self.top_k if self.rerank else 0,
            k1=self.k1,
            k2=self.k2,
            lambda_value=self.lambda_value,
        )

    def expand(self, queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """The queries after query expansion against ``gallery`` (unchanged when it is off)."""
        if not self.qe_k:
            return np.asarray(queries, np.float32)
        return query_expansion(queries, gallery, k=self.qe_k, alpha=self.qe_alpha)

    def rerank_order(self, queries: np.ndarray, gallery: np.ndarray, k: int):
        """``(indices [Nq, K] int64, distances [Nq, K] float32)``: the first ``K = min(k, gallery
        size)`` gallery items of each (already expanded) query after k-reciprocal re-ranking of
        its top ``max(k, top_k)`` candidates, by ascending re-ranked distance."""
        indices, distances = k_reciprocal_rerank(
            queries, gallery, k1=self.k1, k2=self.k2, lambda_value=self.lambda_value, top_k=max(k, self.top_k)
        )
        return indices[:, :k], distances[:, :k]
