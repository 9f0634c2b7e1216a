"""Post-processing steps and the pipeline that applies them: the ``postprocess`` config group.

The group is a mapping of named steps, each a component (``_target_`` + arguments, one yaml in
``conf/postprocess/``): ``postprocess=flip``, ``postprocess=[query_expansion,k_reciprocal]``,
``postprocess=none`` (no step, the default). The same pipeline serves ``stage=eval``, every eval
during training and ``stage=predict``'s search. A step acts at one or more of three points, the
hooks of ``PostProcessor`` (each the identity by default):

* ``features_of``: the features of a batch of images (flip test-time augmentation);
* ``expand``: the query and gallery features before the ranking (query expansion);
* ``rerank``: the ``RetrievalResults`` of the ranking (k-reciprocal re-ranking), which it may
  re-order within its ``candidates`` top places.

Features are ranked once, between ``expand`` and ``rerank`` (``recog.metrics.rank``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from recog.metrics.results import RetrievalResults
from recog.metrics.retrieval import rank

Predict = Callable[[np.ndarray], np.ndarray]  # images [N, C, H, W] -> features [N, D]


class PostProcessor:
    """A post-processing step; this base class changes nothing (module docstring)."""

    # Which hooks do something (each step sets its own), and what they need.
    extracts = expands = reranks = False
    candidates = 0  # top places of each query the ranking must keep for ``rerank``
    real_only = False  # refused with binary codes (Hamming ranking)

    @property
    def reorders(self) -> bool:
        """Whether the ranking differs from the plain features' (query expansion, re-ranking)."""
        return self.expands or self.reranks

    @property
    def changes_scores(self) -> bool:
        """Whether the ranked scores are not those of the plain features (flip, query expansion)."""
        return self.extracts or self.expands

    def features_of(self, predict: Predict, images, normalize: bool) -> np.ndarray:
        """``[N, D]`` features of ``images`` (``predict(images)`` by default)."""
        return predict(images)

    def expand(self, queries: np.ndarray, gallery: np.ndarray | None):
        """``(queries, gallery)`` to rank; gallery None: the queries are the gallery."""
        return queries, gallery

    def rerank(self, results: RetrievalResults, queries: np.ndarray, gallery: np.ndarray | None) -> RetrievalResults:
        """The results re-ordered (``queries`` / ``gallery``: the features that were ranked)."""
        return results

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Pipeline(PostProcessor):
    """The steps of the ``postprocess`` group, applied in order at each hook."""

    def __init__(self, steps: Mapping[str, PostProcessor] | None = None):
        self.steps = dict(steps or {})
        for name, step in self.steps.items():
            if not isinstance(step, PostProcessor):
                raise TypeError(f"postprocess.{name} is a {type(step).__name__}, not a post-processing step")
        steps = list(self.steps.values())
        self.extracts = any(s.extracts for s in steps)
        self.expands = any(s.expands for s in steps)
        self.reranks = any(s.reranks for s in steps)
        self.candidates = max([s.candidates for s in steps], default=0)
        self.real_only = any(s.real_only for s in steps)

    def features_of(self, predict: Predict, images, normalize: bool) -> np.ndarray:
        for step in self.steps.values():
            predict = _wrapped(step, predict, normalize)
        return predict(images)

    def expand(self, queries, gallery):
        for step in self.steps.values():
            queries, gallery = step.expand(queries, gallery)
        return queries, gallery

    def rerank(self, results, queries, gallery):
        for step in self.steps.values():
            results = step.rerank(results, queries, gallery)
        return results

    def rank(self, queries, query_labels=None, gallery=None, gallery_labels=None, *, k: int = 0, **options):
        """The post-processed ranking: ``expand``, then ``recog.metrics.rank`` once (keeping the top
        ``max(k, candidates)`` places), then ``rerank``; returns the ``RetrievalResults`` with the
        first ``k`` places. Arguments as for ``recog.metrics.rank`` (real features only)."""
        queries, gallery = self.expand(queries, gallery)
        results = rank(queries, query_labels, gallery, gallery_labels, k=max(k, self.candidates), **options)
        return self.rerank(results, queries, gallery).top(k)

    def describe(self) -> str:
        """``none``, or the steps, e.g. ``query_expansion=QueryExpansion(k=5, alpha=0.0)``."""
        return ", ".join(f"{name}={step!r}" for name, step in self.steps.items()) or "none"

    def __repr__(self) -> str:
        return f"Pipeline({self.describe()})"


def _wrapped(step: PostProcessor, predict: Predict, normalize: bool) -> Predict:
    return lambda images: step.features_of(predict, images, normalize)


def build_postprocess(node) -> Pipeline:
    """The ``Pipeline`` of a ``postprocess`` config node (a mapping of named steps; None or empty:
    no step). ``ConfigError`` for a step its constructor refuses."""
    from omegaconf import OmegaConf

    from recog.config.build import build

    if node is None:
        return Pipeline()
    tree = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    return Pipeline({name: build(f"postprocess.{name}", step) for name, step in tree.items()})


def check_postprocess(cfg) -> Pipeline:
    """The pipeline of ``cfg.postprocess``, built (``ConfigError`` for a value its step refuses),
    and refused with ``eval.binarize`` when a step needs real features."""
    from recog.errors import ConfigError

    pipeline = build_postprocess(cfg.get("postprocess"))
    binarize = cfg.eval.get("binarize") if cfg.get("eval") is not None else None
    if binarize and pipeline.real_only:
        raise ConfigError(
            f"postprocess ({pipeline.describe()}) works on real features; it cannot be combined with "
            f"eval.binarize={getattr(binarize, 'value', binarize)} (Hamming ranking of binary codes)"
        )
    return pipeline
