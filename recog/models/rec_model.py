"""RecModel: backbone (cut at its stop layer by the builder) -> neck -> head."""

import paddle
from paddle import nn


class RecModel(nn.Layer):
    """A feature-learning model.

    ``forward(images, labels=None)`` takes ``images: [N, 3, H, W] float32`` and returns a dict:

    - ``backbone``: the backbone output at the stop layer (``[N, C]`` or ``[N, C, h, w]``);
    - ``features``: ``[N, D]``, the neck output, or the flattened backbone output without a neck.
      These are what retrieval uses. A multi-scale neck (FPN) reads ``backbone.stage_features``
      instead, and ``backbone`` is then the last stage's map;
    - ``logits``: ``[N, class_num]``, only when a head is configured. Margin heads apply their
      margin only when ``labels`` are given in training mode.
    """

    def __init__(self, backbone: nn.Layer, neck: nn.Layer | None = None, head: nn.Layer | None = None):
        super().__init__()
        self.backbone = backbone  # already cut at its stop layer (recog.models.stop_layer.truncate_after)
        self.neck = neck
        self.head = head

    def forward(self, images: paddle.Tensor, labels: paddle.Tensor | None = None) -> dict:
        if getattr(self.neck, "multi_scale", False):  # FPN: the last stages' maps, finest first
            maps = self.backbone.stage_features(images)[-len(self.neck.in_channels) :]
            out = {"backbone": maps[-1], "features": self.neck(maps)}
        else:
            out = {"backbone": self.backbone(images)}
            features = out["backbone"]
            if features.ndim > 2:
                features = features.flatten(1)
            out["features"] = self.neck(features) if self.neck is not None else features
        if self.head is not None:
            out["logits"] = self.head(out["features"], labels)
        return out
