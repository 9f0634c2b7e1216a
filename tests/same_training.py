"""Shared check of the training-speed tests: a faster mode trains the weights dygraph trains."""

import numpy as np


def assert_same_training(weights, ref_weights, start_weights, tolerance=0.02):
    """Per tensor, what the mode changed matches what dygraph changed: the largest difference is under
    ``tolerance`` of dygraph's largest update (float reduction order differs between the kernels; a
    wrong gradient gives differences the size of the update itself). Every tensor moved."""
    assert len(weights) == len(ref_weights) == len(start_weights)
    for i, (ours, ref, start) in enumerate(zip(weights, ref_weights, start_weights)):
        update = float(np.abs(ref - start).max())
        assert update > 0, f"trainable tensor {i} was not updated"
        difference = float(np.abs(ours - ref).max())
        assert difference <= tolerance * update, (
            f"tensor {i}: differs by {difference:.3g}, dygraph moved it {update:.3g}"
        )
