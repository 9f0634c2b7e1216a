"""The tiny model and data most training tests use: PP-LCNet x0.25 at 16 px, 32-d embeddings, P x K
= 2 x 4 batches, no loader workers (fast on 2 CPU cores, and reproducible with one thread)."""

TINY_MODEL = [
    "backbone.scale=0.25",
    "data.image_size=16",
    "data.num_workers=0",
    "neck.embedding_size=32",
    "data.batch_size=8",
    "data.samples_per_class=4",
]
