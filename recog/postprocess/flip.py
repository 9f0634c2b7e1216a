"""Flip test-time augmentation: the features of an image and of its mirror image, averaged."""

import numpy as np

from recog.postprocess.base import PostProcessor


def hflip_images(images):
    """Mirror ``[N, C, H, W]`` images left-right (a NumPy array or a Paddle tensor, same type back)."""
    if isinstance(images, np.ndarray):
        return np.ascontiguousarray(images[..., ::-1])
    import paddle

    return paddle.flip(images, axis=[3])


def average_flipped(features, flipped_features, normalize: bool = True) -> np.ndarray:
    """``[N, D]`` features of the images and of their mirrors -> ``[N, D] float32``: their mean,
    L2-normalised when ``normalize`` (so that the mean of two unit vectors is a unit vector again;
    a zero mean stays zero)."""
    a = np.asarray(features, np.float32)
    b = np.asarray(flipped_features, np.float32)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"features and flipped features must both be [N, D], got {a.shape} and {b.shape}")
    mean = 0.5 * (a + b)
    if normalize:
        norms = np.linalg.norm(mean, axis=1, keepdims=True)
        mean = mean / np.maximum(norms, np.float32(1e-12))
    return mean


class Flip(PostProcessor):
    """Flip test-time augmentation (``postprocess=flip``): each image's features are the mean of its
    own and its mirror image's, L2-normalised again when the model's features are. For data that
    look the same mirrored (not digits or text); extraction costs twice as much."""

    extracts = True
    real_only = True  # a code's bits cannot be averaged

    def features_of(self, predict, images, normalize: bool) -> np.ndarray:
        return average_flipped(predict(images), predict(hflip_images(images)), normalize=normalize)
