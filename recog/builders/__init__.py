"""Everything recog builds from a config, in one place (``recog.api`` re-exports it):

- model.py: ``build_model`` (``RecModel``), ``build_loss`` (``WeightedLoss``), ``component_class``;
- data.py: ``load_splits`` (the dataset), ``build_train_loader`` (P x K batches with the training
  transform), ``build_evaluator`` (eval features and metrics);
- training.py: ``prepare_training`` (the checked config, run dir, device and processes of a
  training), ``build_optimizer`` (optimizer and LR schedule), ``build_trainer`` (a whole training
  run: the above, data parallel, mixed precision, the step strategy, checkpoints, the MLflow run).

Each builds one thing from ``cfg`` the way ``run.py`` does; components themselves are built by
``recog.config.build.build_component`` (``hydra.utils.instantiate`` with readable errors).
"""

from recog.builders.data import build_evaluator, build_train_loader, load_splits
from recog.builders.model import build_loss, build_model, component_class
from recog.builders.training import build_optimizer, build_trainer, prepare_training

__all__ = [
    "build_evaluator",
    "build_loss",
    "build_model",
    "build_optimizer",
    "build_train_loader",
    "build_trainer",
    "component_class",
    "load_splits",
    "prepare_training",
]
