"""The data from config: the dataset's splits (``load_splits``), the training loader with its
transform (``build_train_loader``) and the eval features and metrics (``build_evaluator``)."""

from omegaconf import DictConfig

from recog.config import require_complete
from recog.config.build import build_component
from recog.data import build_train_loader as pk_loader
from recog.data import build_transform
from recog.data.loader import dataset_options
from recog.data.splits import RetrievalSplits
from recog.evaluation import Evaluator
from recog.utils.precision import Amp


def load_splits(cfg: DictConfig) -> RetrievalSplits:
    """Read (for the digits: first write) the dataset named by ``cfg.dataset``."""
    require_complete(cfg, "dataset")
    return build_component("dataset", cfg.dataset)


def build_train_loader(cfg: DictConfig, splits: RetrievalSplits, run_dir=None, rank: int = 0, world: int = 1):
    """P x K batches of ``splits.train`` as ``cfg.data`` says (augmentation, random flips for a
    mirror-invariant dataset), this rank's share of each; at most ``trainer.steps_per_epoch`` an
    epoch. Bad images are recorded in ``<run_dir>/bad_images.tsv``."""
    data = cfg.data
    transform = build_transform(
        data.image_size, data.mean, data.std, train=True, hflip=splits.mirror_invariant, augment=data.get("augment")
    )
    return pk_loader(
        splits.train,
        splits.train_labels_contiguous(),
        transform,
        data.batch_size,
        data.samples_per_class,
        data.num_workers,
        cfg.seed,
        rank=rank,
        world_size=world,
        options=dataset_options(data, run_dir),
        steps_per_epoch=cfg.trainer.steps_per_epoch or None,
    )


def build_evaluator(
    cfg: DictConfig, splits: RetrievalSplits, run_dir=None, amp: Amp | None = None, data_cfg: DictConfig | None = None
) -> Evaluator:
    """The ``Evaluator`` of ``splits`` with ``cfg.eval``; ``data_cfg``: the trained model's ``data``
    section (image size, normalisation; default ``cfg.data``). Bad images go to ``run_dir``'s record."""
    options = dataset_options(cfg.data, run_dir)
    return Evaluator(
        splits,
        data_cfg if data_cfg is not None else cfg.data,
        cfg.eval,
        amp=amp,
        options=options,
        postprocess=cfg.get("postprocess"),
    )
