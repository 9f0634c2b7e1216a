"""Deployment: run what ``stage=export`` wrote, without the training code paths.

``ExportedModel(model_dir)`` loads an export into the Paddle Inference predictor;
``preprocess_image(image, model.preprocess)`` prepares an ``[H, W, 3] uint8 RGB`` image for it.
``export_model`` (in ``recog.inference.export``) writes an export from a ``RecModel``.
"""

from recog.inference.predictor import ExportedModel, load_preprocess, preprocess_image

__all__ = ["ExportedModel", "load_preprocess", "preprocess_image"]
