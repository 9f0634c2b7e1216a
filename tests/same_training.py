"""Shared check of the training-speed tests: a faster mode trains the weights dygraph trains."""

import numpy as np


def assert_same_training(weights, ref_weights, start_weights, tolerance=0.02):
    """Per tensor, what the mode changed matches what dygraph changed: the largest difference is under
    ``tolerance`` of dygraph's largest update (float reduction order differs between the kernels; a
    wrong gradient gives differences the size of the update itself). Every tensor moved.

    In float32 this holds for a few steps only, and by luck: two roundings of the same training part
    (differences grow about tenfold per step at lr 0.01 until an activation crosses a kink, e.g.
    Hardswish's at +-3, or a triplet's hardest negative changes). PP-LCNet x0.5 with Paddle's kernel
    against itself from weights perturbed by one rounding: 14% after 3 steps. Compare one step in
    float32, or several in float64 (``Layer.to(dtype="float64")``), with a tight ``tolerance``."""
    assert len(weights) == len(ref_weights) == len(start_weights)
    for i, (ours, ref, start) in enumerate(zip(weights, ref_weights, start_weights)):
        update = float(np.abs(ref - start).max())
        assert update > 0, f"trainable tensor {i} was not updated"
        difference = float(np.abs(ours - ref).max())
        assert difference <= tolerance * update, (
            f"tensor {i}: differs by {difference:.3g}, dygraph moved it {update:.3g}"
        )
