"""The training objective: a weighted sum of named loss terms."""

import paddle
from paddle import nn


class WeightedLoss(nn.Layer):
    """``total = sum_i weight_i * term_i(outputs[input_i], labels)``.

    ``terms`` maps a name to ``(weight, input, module)`` where ``input`` names the model output
    the term reads (``logits``, ``features`` or ``backbone``). The call returns every weighted term
    under its name and their sum under ``"loss"``.
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
        for name, term in self.terms.items():
            key = self.inputs[name]
            if key not in outputs:
                raise KeyError(
                    f"loss term '{name}' reads '{key}' but the model outputs only {sorted(outputs)}"
                    + (": configure a head (e.g. head=arcmargin)" if key == "logits" else "")
                )
            values[name] = self.weights[name] * term(outputs[key], labels)
        values["loss"] = paddle.add_n(list(values.values()))
        return values
