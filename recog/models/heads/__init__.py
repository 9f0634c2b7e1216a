"""Heads: ``forward(features [N, embedding_size], labels [N] | None) -> logits [N, class_num]``."""

from recog.models.heads.arcmargin import ArcMargin
from recog.models.heads.fc import FCHead

__all__ = ["ArcMargin", "FCHead"]
from recog.models.heads.circlemargin import CircleMargin
from recog.models.heads.cosmargin import CosMargin

__all__ += ["CosMargin", "CircleMargin"]
