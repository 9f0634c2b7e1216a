"""Retrieval post-processing: flip test-time augmentation, query expansion, k-reciprocal re-ranking.

All work on ``[N, D] float32`` features and never build an N x N matrix: neighbours come from
exact faiss searches (``recog.postprocess.knn``), re-ranking from sparse neighbour graphs.
"""

from recog.postprocess.flip import average_flipped, hflip_images
from recog.postprocess.query_expansion import query_expansion
from recog.postprocess.rerank import k_reciprocal_rerank

__all__ = ["average_flipped", "hflip_images", "k_reciprocal_rerank", "query_expansion"]
