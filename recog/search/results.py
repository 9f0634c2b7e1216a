"""Search results as an object: ``RetrievalResults`` (``recog.metrics.results``), per query its
top-k gallery items with paths, labels and scores, and the positives' ranks when labelled.

``GalleryIndex.retrieve`` wraps a faiss search in one; ``recog.metrics.rank`` ranks exactly and
fills in the positives' ranks too. ``to_dicts`` gives the JSON-ready rows of ``results.json``.
"""

from recog.metrics.results import RetrievalResults, check_labels, check_paths

__all__ = ["RetrievalResults", "check_labels", "check_paths"]
