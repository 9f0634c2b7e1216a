"""The flat ``eval.*`` post-processing keys of older configs, in terms of the ``postprocess`` group.

Configs saved by older recog (a model folder's or a checkpoint's ``config.yaml``) carry
``eval.flip``, ``eval.query_expansion`` / ``qe_alpha`` and ``eval.rerank`` / ``rerank_k1`` /
``rerank_k2`` / ``rerank_lambda`` / ``rerank_top_k``; ``upgrade`` turns them into the equivalent
``postprocess`` steps when such a config is read. On the command line they are refused with
``hint``'s message saying what to write instead.
"""

from __future__ import annotations

# Old key -> (step, argument); the step's own key (flip, query_expansion, rerank) switches it on.
ARGUMENTS = {
    "qe_alpha": ("query_expansion", "alpha"),
    "rerank_k1": ("k_reciprocal", "k1"),
    "rerank_k2": ("k_reciprocal", "k2"),
    "rerank_lambda": ("k_reciprocal", "lambda_value"),
    "rerank_top_k": ("k_reciprocal", "top_k"),
}
SWITCHES = {"flip": "flip", "query_expansion": "query_expansion", "rerank": "k_reciprocal"}
TARGETS = {
    "flip": "recog.postprocess.Flip",
    "query_expansion": "recog.postprocess.QueryExpansion",
    "k_reciprocal": "recog.postprocess.KReciprocal",
}
KEYS = tuple(SWITCHES) + tuple(ARGUMENTS)


def upgrade(tree: dict) -> dict:
    """A saved config tree with the old ``eval.*`` keys, with a ``postprocess`` node instead (a tree
    that has a ``postprocess`` node, or none of the old keys, is returned as it is)."""
    evaluation = tree.get("eval")
    if "postprocess" in tree or not isinstance(evaluation, dict) or not set(KEYS) & set(evaluation):
        return tree
    evaluation = dict(evaluation)
    old = {key: evaluation.pop(key) for key in KEYS if key in evaluation}
    steps = {}
    if old.get("flip"):
        steps["flip"] = {"_target_": TARGETS["flip"]}
    if old.get("query_expansion"):
        steps["query_expansion"] = {"_target_": TARGETS["query_expansion"], "k": old["query_expansion"]}
    if old.get("rerank"):
        steps["k_reciprocal"] = {"_target_": TARGETS["k_reciprocal"]}
    for key, (step, argument) in ARGUMENTS.items():
        if step in steps and key in old:
            steps[step][argument] = old[key]
    return {**tree, "eval": evaluation, "postprocess": steps}


def hint(key: str) -> str | None:
    """What to write instead of the old key ``eval.<name>`` (None for any other key)."""
    name = key[len("eval.") :] if key.startswith("eval.") else None
    if name not in KEYS:
        return None
    step = SWITCHES.get(name) or ARGUMENTS[name][0]
    where = f"postprocess.{step}.{ARGUMENTS[name][1]}" if name in ARGUMENTS else f"postprocess={step}"
    return (
        f"eval.{name} is now {where} (post-processing is the postprocess group: postprocess=flip, "
        "query_expansion, k_reciprocal, or several: postprocess=[query_expansion,k_reciprocal])"
    )
