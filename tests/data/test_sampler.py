import numpy as np
import pytest

from recog.data import PKBatchSampler
from recog.errors import ConfigError

# 6 classes; class 5 has only 2 samples (fewer than K=4).
LABELS = [c for c in range(5) for _ in range(10)] + [5, 5]


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_batches_are_p_classes_times_k_ordered():
    sampler = PKBatchSampler(LABELS, batch_size=12, samples_per_class=4, seed=1)
    batches = _epoch(sampler, 0)
    assert len(batches) == len(sampler) == len(LABELS) // 12
    labels = np.asarray(LABELS)
    seen = set()
    for epoch in range(20):
        for batch in _epoch(sampler, epoch):
            rows = labels[batch].reshape(3, 4)
            assert (rows == rows[:, :1]).all()  # K consecutive of one class
            assert len(set(rows[:, 0])) == 3  # P distinct classes
            for row_indices, row in zip(np.reshape(batch, (3, 4)), rows):
                if row[0] != 5:  # enough samples: no repeats
                    assert len(set(row_indices)) == 4
            seen.update(rows[:, 0])
    assert seen == set(range(6))


def test_deterministic_per_seed_and_epoch():
    a = PKBatchSampler(LABELS, 8, 2, seed=0)
    b = PKBatchSampler(LABELS, 8, 2, seed=0)
    assert _epoch(a, 3) == _epoch(b, 3)
    assert _epoch(a, 0) != _epoch(a, 1)
    assert _epoch(a, 0) != _epoch(PKBatchSampler(LABELS, 8, 2, seed=1), 0)


def test_at_least_one_batch():
    assert len(list(PKBatchSampler([0, 0, 1, 1], 4, 2))) == 1
    assert len(PKBatchSampler([0, 1, 2], 2, 1)) == 1


def test_config_errors():
    with pytest.raises(ConfigError, match="not divisible by data.samples_per_class 4"):
        PKBatchSampler(LABELS, 10, 4)
    with pytest.raises(ConfigError) as err:
        PKBatchSampler([0, 1, 2, 3, 4] * 20, 64, 4)
    assert str(err.value) == (
        "batch_size 64 with samples_per_class 4 needs 16 classes per batch but the training "
        "set has 5: lower data.batch_size or raise data.samples_per_class"
    )
