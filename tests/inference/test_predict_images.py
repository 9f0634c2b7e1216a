"""One [H, W, 3] array is one image."""

import numpy as np
import pytest

from recog.errors import DataError
from recog.inference import ExportedModel


def test_predict_images_of_one_array_is_one_image(exported):
    export_dir, _, _ = exported
    model = ExportedModel(export_dir)
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    one = model.predict_images(image)
    assert one.shape == (1, model.feature_dim)
    np.testing.assert_allclose(one, model.predict_images([image]), atol=1e-6)
    assert model.predict_images(np.stack([image, image])).shape == (2, model.feature_dim)
    with pytest.raises(DataError, match="got an array of shape"):
        model.predict_images(image[:, :, 0])
