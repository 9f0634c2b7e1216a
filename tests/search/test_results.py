"""RetrievalResults: a search's arrays with paths and labels, the rows of results.json."""

import numpy as np
import pytest

from recog.search import GalleryIndex, RetrievalResults


def test_retrieve_holds_the_search_and_gives_the_json_rows():
    gallery = np.eye(4, dtype=np.float32)
    index = GalleryIndex.build(gallery, labels=[0, 1, 1, 2], paths=["a", "b", "c", "d"])
    found = index.retrieve(gallery[:2], 6, query_paths=["q0", "q1"], query_labels=[0, 1])
    assert isinstance(found, RetrievalResults) and len(found) == 2
    scores, indices = index.search(gallery[:2], 6)
    np.testing.assert_array_equal(found.indices, indices)
    np.testing.assert_array_equal(found.scores, scores)
    rows = found.to_dicts()
    assert rows == index.results(gallery[:2], 6, ["q0", "q1"], [0, 1])
    assert [r["index"] for r in rows[0]["results"]] == [0, 1, 2, 3]  # ties by lower index; empty places left out
    assert rows[1]["results"][0] == {"rank": 1, "index": 1, "path": "b", "label": 1, "score": 1.0}


def test_query_labels_and_paths_are_checked():
    index = GalleryIndex.build(np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match="query paths: 1 for 2 items"):
        index.retrieve(np.eye(2, dtype=np.float32), 1, query_paths=["x"])
