"""recog: deep metric learning on PaddlePaddle, composed with Hydra, tracked in MLflow.

Python API (the same objects ``run.py`` builds)::

    cfg = recog.compose(["backbone.scale=0.5", "neck.embedding_size=128"])
    model = recog.build_model(cfg)
    loss_fn = recog.build_loss(cfg)
"""

from recog._runtime import configure_runtime

configure_runtime()

__all__ = ["compose", "build_model", "build_loss", "load_model"]


def __getattr__(name):
    # Lazy, so that `import recog.metrics` does not pull in Hydra and the model zoo.
    if name in __all__:
        from recog import api

        return getattr(api, name)
    raise AttributeError(f"module 'recog' has no attribute {name!r}")
