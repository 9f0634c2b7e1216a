"""Retrieval post-processing: flip test-time augmentation, query expansion, k-reciprocal re-ranking.

As components of the ``postprocess`` config group (``recog.postprocess.base``): ``Flip``,
``QueryExpansion``, ``KReciprocal``, applied by a ``Pipeline``. As functions on ``[N, D] float32``
features: ``average_flipped``, ``query_expansion``, ``k_reciprocal_rerank`` / ``rerank_candidates``.
None builds an N x N matrix: neighbours come from exact faiss searches (``recog.postprocess.knn``),
re-ranking from sparse neighbour graphs.
"""

from recog.postprocess.base import Pipeline, PostProcessor, build_postprocess
from recog.postprocess.flip import Flip, average_flipped, hflip_images
from recog.postprocess.k_reciprocal import KReciprocal
from recog.postprocess.query_expansion import QueryExpansion, query_expansion
from recog.postprocess.rerank import k_reciprocal_rerank, rerank_candidates

__all__ = [
    "Flip",
    "KReciprocal",
    "Pipeline",
    "PostProcessor",
    "QueryExpansion",
    "average_flipped",
    "build_postprocess",
    "hflip_images",
    "k_reciprocal_rerank",
    "query_expansion",
    "rerank_candidates",
]
