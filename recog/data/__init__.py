"""Datasets, image pipeline, P x K sampling and loaders."""

from recog.data.dataset import ImageDataset
from recog.data.digits import load_digits
from recog.data.lists import load_lists, read_image_list
from recog.data.loader import build_eval_loader, build_train_loader, set_loader_epoch
from recog.data.sampler import PKBatchSampler
from recog.data.sop import load_sop, read_sop_file
from recog.data.splits import RetrievalSplits, Sample
from recog.data.transforms import Transform, build_transform, decode_image

__all__ = [
    "ImageDataset",
    "PKBatchSampler",
    "RetrievalSplits",
    "Sample",
    "Transform",
    "build_eval_loader",
    "build_train_loader",
    "build_transform",
    "decode_image",
    "load_digits",
    "load_lists",
    "load_sop",
    "read_image_list",
    "read_sop_file",
    "set_loader_epoch",
]
