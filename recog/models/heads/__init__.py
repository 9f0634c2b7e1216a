"""Heads: ``forward(features [N, embedding_size], labels [N] | None) -> logits [N, class_num]``.

Margin heads apply their margin only in training with labels; otherwise they return the cosine.
"""

from recog.models.heads.arcmargin import ArcMargin
from recog.models.heads.circlemargin import CircleMargin
from recog.models.heads.cosmargin import CosMargin
from recog.models.heads.fc import FCHead

__all__ = ["ArcMargin", "CircleMargin", "CosMargin", "FCHead"]
