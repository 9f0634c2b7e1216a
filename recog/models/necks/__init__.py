"""Necks: ``[N, in_channels] -> [N, embedding_size]``; each exposes ``embedding_size``."""

from recog.models.necks.fc import FCNeck

__all__ = ["FCNeck"]
