"""Graphs ONNX Runtime's quantizers mishandle are rewritten exactly before quantization
(``deepshrink.quantize.onnx.normalize``): Gemm alpha/beta/2-D bias/transA, Cast-fed fp16 weights,
Constant-node weights; and a failure inside ORT's quantizer is one line naming the node."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import deepshrink as ds
from deepshrink.errors import UnsupportedError
from deepshrink.quantize import Int8DynamicConfig, Int8StaticConfig, WeightOnlyConfig
from deepshrink.quantize.onnx import backend as ob
from deepshrink.quantize.onnx.normalize import normalize_for_quantization
from deepshrink.quantize.onnx.sensitivity import run_outputs

K, N = 48, 24


def _gemm_model(*, alpha=1.0, beta=1.0, trans_a=0, trans_b=1, bias_shape=(N,), bias_input=False, seed=0):
    """x [batch, K] (or [K, batch] with transA) -> Gemm -> Relu -> Gemm(transB) -> y [batch, 8]."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((N, K) if trans_b else (K, N)) / np.sqrt(K)).astype(np.float32)
    w2 = (rng.standard_normal((8, N)) / np.sqrt(N)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "fc1.weight"), numpy_helper.from_array(w2, "fc2.weight")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [K, "batch"] if trans_a else ["batch", K])]
    fc1_in = ["x", "fc1.weight"]
    if bias_input:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, list(bias_shape)))
        fc1_in.append("b")
    elif bias_shape is not None:
        inits.append(numpy_helper.from_array(np.asarray(rng.standard_normal(bias_shape), np.float32), "fc1.bias"))
        fc1_in.append("fc1.bias")
    nodes = [helper.make_node("Gemm", fc1_in, ["h"], name="fc1", alpha=alpha, beta=beta, transA=trans_a, transB=trans_b),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "fc2.weight"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def _feeds(model, batch=5, seed=1):
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in model.graph.input:
        dims = [d.dim_value or batch for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def _run(model, feeds):
    from deepshrink.backends.onnx import make_session

    return make_session(model, threads=1, optimize=False).run(None, feeds)[0]


GEMM_CASES = [dict(alpha=a, beta=b, trans_a=ta, trans_b=tb, bias_shape=s)
              for a, b, ta, tb, s in itertools.product((1.0, 0.5), (1.0, 2.0), (0, 1), (0, 1),
                                                        ((N,), (1, N), (1,), (), (5, N), None))
              if not (s is None and b != 1.0)]


@pytest.mark.parametrize("case", GEMM_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_gemm_rewrite_is_exact_and_canonical(case):
    model = _gemm_model(**case)
    feeds = _feeds(model)
    ref = _run(model, feeds)
    norm = onnx.ModelProto()
    norm.CopyFrom(model)
    done = normalize_for_quantization(norm)
    onnx.checker.check_model(norm)
    got = _run(norm, feeds)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()  # float32 re-association only
    inits = ob.initializer_map(norm)
    for n in norm.graph.node:
        if n.op_type != "Gemm":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        assert attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if len(n.input) > 2:
            assert list(inits[n.input[2]].dims) == [N]
    canonical_already = (case["alpha"], case["beta"], case["trans_a"], case["bias_shape"]) in (
        (1.0, 1.0, 0, (N,)), (1.0, 1.0, 0, None))
    assert bool(done) != canonical_already
    if case["trans_a"] or case["bias_shape"] == (5, N):  # no canonical Gemm computes these: MatMul form
        assert done.gemm_to_matmul == ["fc1"]
        assert "fc1" in {w.name for w in ob.weight_nodes(norm, ("MatMul",))}  # the weight is still a constant


def test_gemm_with_scaled_input_bias_is_exact():
    model = _gemm_model(beta=2.0, bias_input=True, bias_shape=(1, N))
    feeds = _feeds(model)
    norm = onnx.ModelProto()
    norm.CopyFrom(model)
    assert normalize_for_quantization(norm).gemm_to_matmul == ["fc1"]
    np.testing.assert_allclose(_run(norm, feeds), _run(model, feeds), rtol=0, atol=1e-5)


def test_shared_bias_is_copied_not_scaled_under_its_other_reader():
    model = _gemm_model(beta=2.0)
    g = model.graph
    g.node.append(helper.make_node("Add", ["fc1.bias", "fc1.bias"], ["b2"], name="reuse"))
    g.output.append(helper.make_tensor_value_info("b2", TensorProto.FLOAT, None))
    from deepshrink.backends.onnx import make_session

    feeds = _feeds(model)
    ref = make_session(model, threads=1, optimize=False).run(None, feeds)
    normalize_for_quantization(model)
    got = make_session(model, threads=1, optimize=False).run(None, feeds)
    for r, o in zip(ref, got, strict=True):
        np.testing.assert_allclose(o, r, rtol=0, atol=1e-5)


def _cosines(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("case", [dict(beta=2.0), dict(bias_shape=(1, N)), dict(alpha=0.5, trans_a=0, beta=2.0)],
                         ids=["beta2", "bias2d", "alpha-beta"])
def test_static_int8_of_odd_gemm_matches_float(case):
    """Before: beta=2 written with beta=1 and the unscaled bias (cosine worst 0.69 on the user-report
    graph); a [1, N] bias raised ORT's ValueError."""
    model = _gemm_model(**case)
    calib = _feeds(model, batch=64, seed=3)
    q = ds.quantize(ds.load(model), Int8StaticConfig(), data=calib)
    fresh = _feeds(model, batch=256, seed=2024)
    cos = _cosines(run_outputs(q.model.model, fresh), run_outputs(model, fresh))
    # 5 weight seeds x 3 cases: mean 0.99938-0.99997, worst 0.947-0.9995 (worst is a near-zero output row);
    # the beta bug gave mean 0.918 / worst 0.686 on the user-report graph
    assert cos.mean() >= 0.999 and cos.min() >= 0.93
    assert sum(t.data_type == TensorProto.INT8 for t in q.model.model.graph.initializer) >= 2  # both weights int8


def _cast_model(seed=0):
    """Conv + MatMul + MatMul whose weights are fp16 initializers behind Cast(to=FLOAT)."""
    rng = np.random.default_rng(seed)
    wc = (rng.standard_normal((8, 3, 3, 3)) / 5).astype(np.float16)
    w1 = (rng.standard_normal((8 * 8 * 8, 32)) / 20).astype(np.float16)
    w2 = (rng.standard_normal((32, 10)) / 6).astype(np.float16)
    inits = [numpy_helper.from_array(wc, "conv.w16"), numpy_helper.from_array(w1, "fc1.w16"),
             numpy_helper.from_array(w2, "fc2.w16"), numpy_helper.from_array(np.array([-1, 512], np.int64), "shape")]
    nodes = [helper.make_node("Cast", ["conv.w16"], ["conv.w"], to=TensorProto.FLOAT, name="InsertedCast_conv"),
             helper.make_node("Conv", ["x", "conv.w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["f"], name="flatten"),
             helper.make_node("Cast", ["fc1.w16"], ["fc1.w"], to=TensorProto.FLOAT, name="InsertedCast_fc1"),
             helper.make_node("MatMul", ["f", "fc1.w"], ["m"], name="fc1"),
             helper.make_node("Relu", ["m"], ["m1"], name="relu1"),
             helper.make_node("Cast", ["fc2.w16"], ["fc2.w"], to=TensorProto.FLOAT, name="InsertedCast_fc2"),
             helper.make_node("MatMul", ["m1", "fc2.w"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_cast_fed_fp16_weights_are_quantized_and_the_rest_stays_fp16():
    """Before: "found no layer to quantize" (the weights are Cast outputs, not initializers)."""
    model = _cast_model()
    q = ds.quantize(ds.load(model), Int8DynamicConfig())
    rep = q.report.details
    assert rep["quantized_layers"] == 2
    assert rep["normalized"]["casts_folded"] == ["InsertedCast_conv", "InsertedCast_fc1", "InsertedCast_fc2"]
    inits = ob.initializer_map(q.model.model)
    int8 = sorted(t.name for t in q.model.model.graph.initializer if t.data_type == TensorProto.INT8 and t.dims)
    assert len(int8) == 2 and all(np.prod(inits[n].dims) >= 320 for n in int8)
    # the conv (no int8-dynamic kernel here) keeps its fp16 weight behind its Cast: no fp32 copy twice its size
    assert inits["conv.w16"].data_type == TensorProto.FLOAT16 and "conv.w" not in inits
    assert any(n.op_type == "Cast" and n.name == "InsertedCast_conv" for n in q.model.model.graph.node)
    fresh = _feeds(model, batch=64, seed=2024)
    cos = _cosines(run_outputs(q.model.model, fresh), run_outputs(model, fresh))
    assert cos.min() >= 0.995  # 0.9996 worst seen


def test_cast_fed_weights_reach_weight_only_int4():
    model = _cast_model()
    q = ds.quantize(ds.load(model), WeightOnlyConfig(group_size=32))
    assert sum(n.op_type == "MatMulNBits" for n in q.model.model.graph.node) == 2


def test_constant_node_weights_are_quantized():
    model = _gemm_model()
    g = model.graph
    w = next(t for t in g.initializer if t.name == "fc1.weight")
    g.node.insert(0, helper.make_node("Constant", [], ["fc1.weight"], value=w, name="const_w"))
    g.initializer.remove(w)
    q = ds.quantize(ds.load(model), Int8DynamicConfig())
    assert q.report.details["quantized_layers"] == 2


def test_ort_quantizer_failure_is_one_line_naming_the_node():
    """The raw [1, N]-bias graph handed to ORT unnormalised: its ValueError becomes one line naming Gemm fc1."""
    model = _gemm_model(bias_shape=(1, N))
    with pytest.raises(UnsupportedError) as err:
        ob.quantize_static_int8(model, [], _feeds(model, batch=8))
    msg = str(err.value)
    assert "Gemm 'fc1'" in msg and "ValueError" in msg and "\n" not in msg


def test_mixed_leaves_what_its_default_cannot_quantize_float_and_says_so():
    """Before: the int8-dynamic default was handed the Conv too and failed ("--include pattern 'conv' matches no
    quantizable layer"), though the user gave no --include."""
    from deepshrink.errors import InputError
    from deepshrink.quantize import MixedPrecisionConfig

    model = _cast_model()
    q = ds.quantize(ds.load(model), MixedPrecisionConfig(overrides={"fc1": WeightOnlyConfig(group_size=32)}))
    rep = q.report.details
    assert rep["groups"] == [{"scheme": "WeightOnlyConfig", "layers": ["fc1"]},
                             {"scheme": "Int8DynamicConfig", "layers": ["fc2"]}]
    assert rep["float_layers"] == ["conv"]
    with pytest.raises(InputError, match="does not quantize Conv"):
        ds.quantize(ds.load(model), MixedPrecisionConfig(overrides={"conv": WeightOnlyConfig(group_size=32)}))


def test_weights_cast_from_a_non_constant_are_named_in_the_refusal():
    from deepshrink.errors import InputError

    nodes = [helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT, name="InsertedCast_w"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8]),
                                           helper.make_tensor_value_info("w16", TensorProto.FLOAT16, [8, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(InputError) as err:
        ds.quantize(ds.load(model), Int8DynamicConfig())
    assert "Cast nodes (InsertedCast_w)" in str(err.value) and "--include" not in str(err.value)
