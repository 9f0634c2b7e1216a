"""The samples of a retrieval dataset, split into train / query / gallery."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """One image: absolute ``path`` and its original class ``label`` (>= 0)."""

    path: str
    label: int


@dataclass
class RetrievalSplits:
    """Train and evaluation samples of one dataset.

    ``gallery is None`` means the query == gallery protocol (SOP, CUB, Cars): each query is
    searched against all other query images. ``mirror_invariant`` says whether a horizontally
    flipped image is still the same class (True for photos, False for digits), i.e. whether
    random horizontal flips are a valid augmentation.
    """

    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample] | None = None
    mirror_invariant: bool = True

    @property
    def num_train_classes(self) -> int:
        return len({s.label for s in self.train})

    def train_label_map(self) -> dict[int, int]:
        """Original train label -> contiguous label in ``0..C-1`` (sorted by original label)."""
        return {label: i for i, label in enumerate(sorted({s.label for s in self.train}))}

    def train_labels_contiguous(self) -> list[int]:
        """Contiguous label of each train sample, in order (for the classifier head).

        Evaluation keeps the original labels (``Sample.label``)."""
        mapping = self.train_label_map()
        return [mapping[s.label] for s in self.train]
