"""The post-processing pipeline's ranking (expand, rank once, rerank) against metrics computed
densely from explicit full rankings, and the postprocess group's components."""

import numpy as np
import pytest

import recog
from recog.errors import ConfigError
from recog.metrics import rank, retrieval_metrics
from recog.postprocess import (
    Flip,
    KReciprocal,
    Pipeline,
    QueryExpansion,
    build_postprocess,
    k_reciprocal_rerank,
    legacy,
    query_expansion,
)


def _data(n=60, d=8, classes=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.standard_normal((classes, d))[labels] + 0.9 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def dense_metrics(rankings, query_labels, gallery_labels, ks):
    """From explicit full rankings (gallery indices per query), the formulas of retrieval_metrics."""
    first, ap, inp, prec = [], [], [], {k: [] for k in ks}
    for q, order in enumerate(rankings):
        pos = np.nonzero(gallery_labels[order] == query_labels[q])[0]
        if len(pos) == 0:
            continue
        first.append(pos[0])
        ap.append(np.mean(np.arange(1, len(pos) + 1) / (pos + 1)))
        inp.append(len(pos) / (pos[-1] + 1))
        for k in ks:
            prec[k].append((pos < k).sum() / k)
    out = {f"recall_at_{k}": np.mean(np.array(first) < k) for k in ks}
    out.update({f"precision_at_{k}": np.mean(prec[k]) for k in ks})
    out.update(mAP=np.mean(ap), mINP=np.mean(inp))
    return out


def _check(got, expected):
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("top_k", [59, 12])
def test_rerank_query_equals_gallery(top_k):
    x, labels = _data()
    # The reference candidates come from k_reciprocal_rerank's own faiss search, not from the ranking.
    reranked, distances = k_reciprocal_rerank(x, None, k1=8, k2=3, lambda_value=0.3, top_k=top_k)
    rankings = []
    for q in range(len(x)):
        sims = x @ x[q]
        sims[q] = -np.inf
        rest = [j for j in np.argsort(-sims, kind="stable")[:-1] if j not in set(reranked[q])]
        rankings.append(np.concatenate([reranked[q], rest]).astype(int))
    expected = dense_metrics(rankings, labels, labels, [1, 5, 10])
    pipeline = Pipeline({"k_reciprocal": KReciprocal(k1=8, k2=3, lambda_value=0.3, top_k=top_k)})
    results = pipeline.rank(x, labels, k=20)
    _check(results.metrics((1, 5, 10)), expected)
    assert results.indices.tolist() == [r[:20].tolist() for r in rankings]
    rows = results.to_dicts()
    assert [e["rerank_distance"] for e in rows[0]["results"][: min(top_k, 20)]] == pytest.approx(
        distances[0, :20].tolist(), rel=1e-6
    )
    assert all("rerank_distance" not in e for e in rows[0]["results"][top_k:])
    assert results.metrics()["mAP"] != retrieval_metrics(x, labels)["mAP"]


def test_rerank_separate_gallery_and_query_expansion():
    x, labels = _data(seed=1)
    q, ql, g, gl = x[:15], labels[:15], x[15:], labels[15:]
    expanded = query_expansion(q, g, k=3, alpha=0.0)
    reranked, _ = k_reciprocal_rerank(expanded, g, k1=6, k2=2, lambda_value=0.2, top_k=g.shape[0])
    expected = dense_metrics(reranked, ql, gl, [1, 3])
    pipeline = Pipeline({"qe": QueryExpansion(k=3), "kr": KReciprocal(k1=6, k2=2, lambda_value=0.2, top_k=100)})
    _check(pipeline.rank(q, ql, g, gl).metrics((1, 3)), expected)


def test_query_expansion_alone_and_nothing():
    x, labels = _data(seed=2)
    assert Pipeline().rank(x, labels).metrics() == retrieval_metrics(x, labels)
    expanded = query_expansion(x, None, k=2, alpha=3.0)
    assert Pipeline({"qe": QueryExpansion(k=2, alpha=3.0)}).rank(x, labels).metrics() == retrieval_metrics(
        expanded, labels
    )


def test_rerank_keeps_the_places_after_its_candidates_and_their_positives_ranks():
    x, labels = _data(seed=3)
    plain = rank(x, labels, k=30)
    results = Pipeline({"kr": KReciprocal(k1=6, k2=2, top_k=10)}).rank(x, labels, k=30)
    np.testing.assert_array_equal(results.indices[:, 10:], plain.indices[:, 10:])
    assert (np.sort(results.indices[:, :10], axis=1) == np.sort(plain.indices[:, :10], axis=1)).all()
    after = plain.positive_ranks >= 10
    np.testing.assert_array_equal(results.positive_ranks[after], plain.positive_ranks[after])


@pytest.mark.slow
def test_the_postprocess_group_builds_its_options_and_refuses_bad_values():
    assert build_postprocess(recog.compose([]).postprocess).steps == {}
    built = build_postprocess(recog.compose(["postprocess=[flip,qe_k_reciprocal]"]).postprocess)
    assert [type(s) for s in built.steps.values()] == [Flip, QueryExpansion, KReciprocal]
    assert built.candidates == 100 and built.extracts and built.reorders and built.real_only
    for option, message in [
        ("postprocess.query_expansion.k=0", "at least 1"),
        ("postprocess.query_expansion.alpha=-1", "alpha"),
        ("postprocess.k_reciprocal.lambda_value=1.5", "lambda_value"),
        ("postprocess.k_reciprocal.k3=1", "valid keys in postprocess.k_reciprocal: k1, k2, lambda_value, top_k"),
    ]:
        with pytest.raises(ConfigError, match=message):
            recog.compose(["postprocess=qe_k_reciprocal", option])
    with pytest.raises(ConfigError, match="binarize"):
        recog.compose(["postprocess=k_reciprocal", "eval.binarize=sign"])
    with pytest.raises(ConfigError, match="eval.flip is now postprocess=flip"):
        recog.compose(["eval.flip=true"])


@pytest.mark.slow
def test_the_old_flat_eval_keys_map_to_the_same_steps():
    old = {
        "eval": {"recall_at": [1], "flip": True, "query_expansion": 4, "qe_alpha": 2.0, "rerank": "k_reciprocal"},
    }
    old["eval"].update(rerank_k1=7, rerank_k2=3, rerank_lambda=0.5, rerank_top_k=40)
    new = legacy.upgrade(old)
    assert new["eval"] == {"recall_at": [1]}
    cfg = recog.compose(
        [
            "postprocess=[flip,query_expansion,k_reciprocal]",
            "postprocess.query_expansion.k=4",
            "postprocess.query_expansion.alpha=2.0",
            "postprocess.k_reciprocal.k1=7",
            "postprocess.k_reciprocal.k2=3",
            "postprocess.k_reciprocal.lambda_value=0.5",
            "postprocess.k_reciprocal.top_k=40",
        ]
    )
    from omegaconf import OmegaConf

    assert new["postprocess"] == OmegaConf.to_container(cfg.postprocess)
    assert legacy.upgrade({"eval": {"flip": False, "query_expansion": 0}})["postprocess"] == {}


@pytest.mark.slow
def test_a_saved_config_with_the_old_eval_keys_loads_with_the_same_steps(tmp_path):
    from omegaconf import OmegaConf

    from recog.config.trusted import load_saved_config

    tree = OmegaConf.to_container(recog.compose(["head.class_num=5"]), resolve=True, enum_to_str=True)
    del tree["postprocess"]  # as older recog saved it: no group, flat eval.* keys
    tree["eval"].update(query_expansion=3, qe_alpha=0.5, rerank="k_reciprocal", rerank_top_k=20)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(tree))
    loaded = load_saved_config(tmp_path / "config.yaml")
    assert "query_expansion" not in loaded.eval and "rerank" not in loaded.eval
    pipeline = build_postprocess(loaded.postprocess)
    assert list(pipeline.steps) == ["query_expansion", "k_reciprocal"]
    assert (pipeline.steps["query_expansion"].k, pipeline.steps["query_expansion"].alpha) == (3, 0.5)
    assert pipeline.steps["k_reciprocal"].top_k == 20 and pipeline.steps["k_reciprocal"].k1 == 20
