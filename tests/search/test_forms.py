"""The search's int8 forms (issue 14): how int8 layers are built is chosen by measurement before the
per-layer search — on a tiny random BERT, so the BERT-fused forms are among them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("optuna")

import deepshrink as ds  # noqa: E402
from deepshrink.core.data import Dataset  # noqa: E402
from deepshrink.search import SearchConfig  # noqa: E402


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory):
    """A 2-layer random BERT sentence encoder (hidden 32, 4 heads), TorchScript export (ORT's fusions match it)."""
    import torch
    from transformers import BertConfig, BertModel

    from deepshrink.examples.minilm import SentenceEncoder

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, attn_implementation="eager",
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = SentenceEncoder(BertModel(cfg)).eval()
    path = tmp_path_factory.mktemp("bert") / "bert.onnx"
    ids, mask = torch.randint(1, 100, (1, 12)), torch.ones(1, 12, dtype=torch.int64)
    torch.onnx.export(model, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["sentence"], dynamic_axes={"input_ids": {0: "b", 1: "s"},
                                                              "attention_mask": {0: "b", 1: "s"}},
                      opset_version=17, dynamo=False)
    return path


def _tokens(n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 100, (n, 12)).astype(np.int64)
    mask = np.ones((n, 12), np.int64)
    mask[n // 2:, 9:] = 0  # right padding, as a tokenizer writes it
    ids[mask == 0] = 0
    return Dataset({"input_ids": ids, "attention_mask": mask})


def test_forms_of_a_bert_encoder(bert_onnx):
    from deepshrink.search.space import SMOOTHING, int8_forms

    forms = int8_forms(ds.load(str(bert_onnx)))
    labels = [label for label, _ in forms]
    # dynamic int8, then SmoothQuant + per-channel at each setting, then each of these on the fused graph
    n = 1 + len(SMOOTHING)
    assert len(forms) == 2 * n == 8
    assert [cfg.fuse for _, cfg in forms] == ["none"] * n + ["bert"] * n
    assert [cfg.smooth_alpha for _, cfg in forms] == [None, *(a for a, _ in SMOOTHING)] * 2
    assert [cfg.smooth_min_outlier_ratio for _, cfg in forms] == [0.0, *(r for _, r in SMOOTHING)] * 2
    assert [cfg.per_channel for _, cfg in forms] == ["auto", True, True, True] * 2
    assert all(label.endswith("BERT-fused graph") for label in labels[n:])


def test_search_measures_every_form_and_keeps_the_chosen_one(bert_onnx, tmp_path):
    # untimed: the cost is size, so the choice is exact (the same on every run)
    cfg = SearchConfig(target_cos=0.9, min_cos=0.8, trials=3, repeats=0, seed=0, choices=("float", "int8"),
                       sensitivity_samples=8)
    res = ds.search(str(bert_onnx), _tokens(48, 0), cfg, tmp_path / "out", eval_data=_tokens(64, 1))
    forms = res.report["int8_forms"]
    assert len(forms) == 8 and all("error" not in f for f in forms)
    chosen = [f for f in forms if f.get("chosen")]
    assert len(chosen) == 1
    # every form's all-int8 model meets this loose target; the smallest wins, ties to the earlier form
    assert all(f["shortfall"] <= 0 for f in forms)
    sizes = [f["size_ratio"] for f in forms]
    assert chosen[0] is forms[sizes.index(min(sizes))]
    assert res.report["int8"] == chosen[0]["form"]
    # the fused forms' graphs have one Attention per layer, whose layer list the search then chooses over
    for f in forms[4:]:
        assert f["fused"]["Attention"] == 2 and f["layers"] == 2 * 4  # Attention + 3 MatMuls per layer
    for f in forms[:4]:
        assert f["layers"] == 2 * 6  # Q, K, V, attention output, FFN in, FFN out
    # the chosen form's all-int8 model is the plain-int8 warm start (trial 0), built once
    assert res.report["plain_int8"]["trial"] == 0
    assert res.report["plain_int8"]["size_ratio"] == pytest.approx(chosen[0]["size_ratio"])
    assert res.report["reproduced"]["matches_candidate"]


def test_qattention_weight_zero_point_is_one_scalar(bert_onnx):
    from deepshrink.quantize.configs import Int8DynamicConfig

    q = ds.quantize(str(bert_onnx), Int8DynamicConfig(fuse="bert", per_channel=True), data=_tokens(16, 0)).model.model
    inits = {t.name: t for t in q.graph.initializer}
    qatt = [n for n in q.graph.node if n.op_type == "QAttention"]
    assert len(qatt) == 2
    for n in qatt:  # per-column weight scales, one scalar zero point (ORT's faster path; symmetric int8: all 0)
        assert list(inits[n.input[4]].dims) == [3 * 32]
        zp = inits[n.input[7]]
        assert list(zp.dims) == [] and onnx.numpy_helper.to_array(zp) == 0
