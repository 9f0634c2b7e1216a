"""Gallery search: a faiss index of gallery features or binary codes, and a picture of results.

``GalleryIndex`` builds (``flat`` exact, ``ivf`` / ``hnsw`` approximate), edits (add, remove
by id), searches (deterministic order: best score first, ties by lower gallery index), saves and
loads an index with its labels, image paths, ids, edit history and the model that embedded it,
and computes exact retrieval metrics (``index.py``; the faiss side in ``faiss_backend.py``, the
saved form in ``store.py``, the model binding and ids in ``binding.py``). ``RetrievalResults`` holds a
search's results (``results.py``); ``retrieval_grid`` draws the queries' top results into a PNG.
"""

from recog.search.index import FORMAT_VERSION, KINDS, GalleryIndex, IndexConfigError, ModelMismatchError, model_digest
from recog.search.picture import retrieval_grid, save_retrieval_grid
from recog.search.results import RetrievalResults

__all__ = [
    "FORMAT_VERSION",
    "GalleryIndex",
    "IndexConfigError",
    "KINDS",
    "ModelMismatchError",
    "RetrievalResults",
    "retrieval_grid",
    "model_digest",
    "save_retrieval_grid",
]
