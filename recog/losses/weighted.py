"""The training objective: a weighted sum of named loss terms."""

import paddle
from paddle import nn

from recog.distributed import global_batch, parallel


def sees_global_batch(term: nn.Layer) -> bool:
    """Whether ``term`` is computed on the whole data-parallel batch (see ``WeightedLoss``): every
    term is, except those whose class declares ``per_sample = True``."""
    return not getattr(term, "per_sample", False)


class WeightedLoss(nn.Layer):
    """``total = sum_i weight_i * term_i(outputs[input_i], labels)``.

    ``terms`` maps a name to ``(weight, input, module)`` where ``input`` names the model output
    the term reads (``logits``, ``features`` or ``backbone``). The call returns every weighted term
    under its name and their sum under ``"loss"``.

    Data parallel (several ranks): a term that relates samples to each other (mines pairs or
    triplets, contrasts, fills a cross-batch memory) is computed on the global batch, every rank's
    rows gathered in rank order (``recog.distributed.global_batch``), so N processes train the
    objective one process trains on the concatenated batch, and each rank returns that process's
    value. A term whose class declares ``per_sample = True`` (a mean over samples of a value that
    depends on the sample alone, like CE on its logits row) is computed on the rank's own rows:
    with equal batches per rank, the mean over ranks that ``paddle.DataParallel`` takes is the
    global mean. Gathering costs, per step and model output read: three all_gathers (row counts,
    rows, labels) and a host read of the counts.
    """

    def __init__(self, terms: dict[str, tuple[float, str, nn.Layer]]):
        super().__init__()
        if not terms:
            raise ValueError("a loss needs at least one term")
        self.weights = {name: float(weight) for name, (weight, _, _) in terms.items()}
        self.inputs = {name: str(key) for name, (_, key, _) in terms.items()}
        self.terms = nn.LayerDict({name: module for name, (_, _, module) in terms.items()})

    def forward(self, outputs: dict[str, paddle.Tensor], labels: paddle.Tensor) -> dict[str, paddle.Tensor]:
        values = {}
        gathered = {}  # model output name -> (inputs, labels) of the global batch, gathered once per call
        for name, term in self.terms.items():
            key = self.inputs[name]
            if key not in outputs:
                raise KeyError(
                    f"loss term '{name}' reads '{key}' but the model outputs only {sorted(outputs)}"
                    + (": configure a head (e.g. head=arcmargin)" if key == "logits" else "")
                )
            inputs, term_labels = outputs[key], labels
            if sees_global_batch(term) and parallel.is_distributed():
                if key not in gathered:
                    gathered[key] = global_batch.gather(outputs[key], labels)
                inputs, term_labels = gathered[key]
            values[name] = self.weights[name] * term(inputs, term_labels)
        values["loss"] = paddle.add_n(list(values.values()))
        return values
