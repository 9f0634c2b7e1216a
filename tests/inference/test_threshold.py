"""threshold.json: round trip, the decision rule of each similarity, and refusals of bad files."""

import json

import pytest

from recog.errors import ConfigError
from recog.inference import threshold
from recog.inference.threshold import Threshold


def test_round_trip_and_missing_file(tmp_path):
    assert threshold.load(tmp_path) is None
    saved = Threshold(score=0.62, target_fmr=1e-3, fnmr=0.12, positive_pairs=10, negative_pairs=90)
    threshold.save(tmp_path, saved)
    assert threshold.load(tmp_path) == saved


def test_inner_product_passes_at_or_above_hamming_at_or_below():
    cosine = Threshold(score=0.5, target_fmr=0.01)
    assert cosine.accepts(0.5) and cosine.accepts(0.9) and not cosine.accepts(0.49)
    hamming = Threshold(score=3, target_fmr=0.01, similarity="hamming")
    assert hamming.accepts(3) and hamming.accepts(0) and not hamming.accepts(4)


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "JSON object"),
        ('{"score": 0.5}', "needs 'score' and 'target_fmr'"),
        ('{"score": NaN, "target_fmr": 0.01}', "not valid JSON"),
        ('{"score": "0.5", "target_fmr": 0.01}', "finite number"),
        ('{"score": 0.5, "target_fmr": 1.5}', "target_fmr"),
        ('{"score": 0.5, "target_fmr": 0.01, "fnmr": -1}', "fnmr"),
        ('{"score": 0.5, "target_fmr": 0.01, "similarity": "l2"}', "similarity"),
        ('{"score": 0.5, "target_fmr": 0.01, "negative_pairs": true}', "negative_pairs"),
        ('{"score": 0.5, "target_fmr": 0.01, "_target_": "os.system"}', "unknown fields"),
        ("not json", "not valid JSON"),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path, content, message):
    (tmp_path / threshold.FILE_NAME).write_text(content)
    with pytest.raises(ConfigError, match=message):
        threshold.load(tmp_path)


def test_an_oversized_file_is_not_parsed(tmp_path):
    (tmp_path / threshold.FILE_NAME).write_text(json.dumps({"score": 0.5, "target_fmr": 0.01, "pad": "x" * 5000}))
    with pytest.raises(ConfigError, match="over 4096 bytes"):
        threshold.load(tmp_path)
