"""``quantize --scheme auto`` chooses among int8 layouts by measuring (issue 12, item 6), and
BatchNormalization is folded into its Conv before quantizing.

The timings are replaced here (``auto.time_layouts``) by a function of what each layout
contains, so the choice rule is tested without depending on the machine's load; the real
timing runs in ``real-graphs/check.sh`` case 1b and ``benchmarks/bench_pypi_models.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import deepshrink as ds
from cli_helpers import run_cli
from deepshrink.quantize import AutoConfig
from deepshrink.quantize.onnx import auto, layer_speed
from deepshrink.quantize.onnx.normalize import fold_batchnorm


def _cnn(shared_bn_input: bool = False, grouped: bool = False) -> onnx.ModelProto:
    """x [b, 3, 12, 12] -> conv1 -> bn1 -> Relu -> conv2 (stride 2) -> bn2 -> Relu -> GlobalAveragePool
    -> Flatten -> fc MatMul [16, 10] -> Add. With ``shared_bn_input`` conv1's output also feeds an Add,
    so bn1 must not be folded into it; with ``grouped`` conv2 has ``group`` 8 (two outputs per input channel)."""
    rng = np.random.default_rng(0)

    def t(name: str, *shape: int, scale: float = 0.3, positive: bool = False) -> onnx.TensorProto:
        a = rng.standard_normal(shape).astype(np.float32) * scale
        return numpy_helper.from_array(np.abs(a) + 0.5 if positive else a, name)

    inits = [t("w1", 8, 3, 3, 3), t("s1", 8, positive=True), t("b1", 8), t("m1", 8), t("v1", 8, positive=True),
             t("w2", 16, 1 if grouped else 8, 3, 3), t("s2", 16, positive=True), t("b2", 16), t("m2", 16), t("v2", 16, positive=True),
             t("fc_w", 16, 10), t("fc_b", 10)]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "s1", "b1", "m1", "v1"], ["n1"], name="bn1", epsilon=1e-3),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", strides=[2, 2], group=8 if grouped else 1),
             helper.make_node("BatchNormalization", ["c2", "s2", "b2", "m2", "v2"], ["n2"], name="bn2"),
             helper.make_node("Relu", ["n2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc_w"], ["mm"], name="fc"),
             helper.make_node("Add", ["mm", "fc_b"], ["y"], name="fc_add")]
    if shared_bn_input:
        nodes[2] = helper.make_node("Add", ["n1", "c1"], ["r1"], name="skip")
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _data(n: int = 32) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((n, 3, 12, 12)).astype(np.float32)}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_batchnorm_is_folded_into_its_conv_exactly_and_names_are_kept():
    m = _cnn()
    x = _data(8)["x"]
    before = _run(m, x)
    folded = fold_batchnorm(m)
    assert folded == ["bn1", "bn2"]
    assert [n.op_type for n in m.graph.node].count("BatchNormalization") == 0
    assert {n.name for n in m.graph.node if n.op_type == "Conv"} == {"conv1", "conv2"}
    onnx.checker.check_model(m)
    after = _run(m, x)
    assert np.abs(after - before).max() <= 1e-5 * np.abs(before).max()  # 2.4e-7 relative seen (float32 rounding)


def test_batchnorm_is_not_folded_when_the_conv_output_has_another_reader():
    m = _cnn(shared_bn_input=True)
    assert fold_batchnorm(m) == ["bn2"]  # bn1's input c1 also feeds the Add: folding would change it
    assert [n.name for n in m.graph.node if n.op_type == "BatchNormalization"] == ["bn1"]


_REAL_TIME_LAYERS = layer_speed.time_layers


@pytest.fixture(autouse=True)
def _no_layer_timing(monkeypatch):
    """The per-layer timings are real ones unless a test gives its own: none here by default."""
    monkeypatch.setattr(layer_speed, "time_layers", lambda *a, **k: {})


def _fake_timing(ratios):
    """A ``time_layouts`` returning ``ratios(model)`` ± 0.02 for each model, recording the calls."""
    calls = []

    def timing(float_model, models, data, *, progress=False, threads=2):
        calls.append(len(models))
        timing.threads.append(threads)
        return [(ratios(m), 0.02) for m in models]

    timing.threads = []
    return timing, calls


def _int8_convs(model: onnx.ModelProto) -> int:
    """Convs whose weight is dequantized from int8 (static QDQ) or that run as ConvInteger."""
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return sum(1 for n in model.graph.node if (n.op_type == "Conv" and n.input[1] in dq) or n.op_type == "ConvInteger")


def _stored_int8(model: onnx.ModelProto) -> set[str]:
    """Weights stored as int8 and dequantized by ``Cast`` + ``Mul`` when ORT loads the model."""
    int8 = {t.name for t in model.graph.initializer if t.data_type == TensorProto.INT8}
    cast = {n.output[0] for n in model.graph.node if n.op_type == "Cast" and n.input[0] in int8}
    return {n.output[0] for n in model.graph.node if n.op_type == "Mul" and n.input[0] in cast}


def _int8_matmuls(model: onnx.ModelProto) -> int:
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return sum(1 for n in model.graph.node if (n.op_type in ("MatMul", "Gemm") and n.input[1] in dq)
               or n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul"))


def test_auto_keeps_convs_float_when_int8_convs_measure_slower(monkeypatch):
    """The case1b situation: static int8 convs are slower than float on small feature maps; the
    MatMul alone in int8 is faster. Auto writes that layout and says why the convs stayed float."""
    timing, calls = _fake_timing(lambda m: 1.5 if _int8_convs(m) else 0.95)
    monkeypatch.setattr(auto, "time_layouts", timing)
    r = ds.quantize(_cnn(), AutoConfig(strategy="layouts"), data=_data())
    rep = r.report.details["auto"]
    assert calls == [6]  # the base (static everywhere) + 4 per-op-type layouts + int8 storage, each meeting the target
    assert _int8_convs(r.model.model) == 0 and _int8_matmuls(r.model.model) == 1
    assert _stored_int8(r.model.model) == {"w1", "w2"}  # the float convs' weights are stored in int8 all the same
    kept = {k["layer"]: k["reason"] for k in rep["kept_float"]}
    assert set(kept) == {"conv1", "conv2"} and all("timed" in v and "0.95×" in v for v in kept.values())
    chosen = [t for t in rep["speed"] if t.get("chosen")]
    assert len(chosen) == 1 and chosen[0]["what"].startswith("Conv float + ")
    assert rep["cos_mean"] >= 0.997 and rep["cos_min"] >= 0.99


def test_auto_keeps_grouped_convs_float_when_only_they_are_slower(monkeypatch):
    """Per conv kind: ORT's int8 grouped/depthwise kernels lose to float more often than dense ones."""
    def ratio(m: onnx.ModelProto) -> float:
        dq = {n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
        grouped_int8 = any(n.name == "conv2" and n.input[1] in dq for n in m.graph.node)
        return 1.3 if grouped_int8 else 0.8

    timing, calls = _fake_timing(ratio)
    monkeypatch.setattr(auto, "time_layouts", timing)
    rep = ds.quantize(_cnn(grouped=True), AutoConfig(strategy="layouts"), data=_data()).report.details["auto"]
    assert calls == [9]  # base + (all / group-1 only / no Conv) x (static / dynamic / float MatMul) - base - none + storage
    chosen = [t for t in rep["speed"] if t.get("chosen")][0]
    assert chosen["what"] == "static int8 Conv with group 1 (1 grouped/depthwise float) + static int8 MatMul/Gemm"
    assert [k["layer"] for k in rep["kept_float"]] == ["conv2"]


def test_auto_keeps_the_most_quantized_layout_when_it_is_faster(monkeypatch):
    """Every layout faster than float: the one quantizing the most weights wins over one only a little faster."""
    timing, _calls = _fake_timing(lambda m: 0.7 if _int8_convs(m) and _int8_matmuls(m) else 0.6)
    monkeypatch.setattr(auto, "time_layouts", timing)
    r = ds.quantize(_cnn(), AutoConfig(strategy="layouts"), data=_data())
    untimed = ds.quantize(_cnn(), AutoConfig(strategy="layouts", choose_by_speed=False), data=_data())
    assert r.model.model.SerializeToString() == untimed.model.model.SerializeToString()
    assert _int8_convs(r.model.model) == 2 and _int8_matmuls(r.model.model) == 1
    assert r.report.details["auto"]["kept_float"] == []


def test_auto_takes_a_much_faster_layout_over_the_most_quantized(monkeypatch):
    """0.45× against the full layout's 0.7×: under MUCH_FASTER (0.8) of its time, so speed wins."""
    timing, _calls = _fake_timing(lambda m: 0.7 if _int8_convs(m) and _int8_matmuls(m) else
                                  0.45 if not _int8_convs(m) else 0.9)
    monkeypatch.setattr(auto, "time_layouts", timing)
    rep = ds.quantize(_cnn(), AutoConfig(strategy="layouts"), data=_data()).report.details["auto"]
    chosen = [t for t in rep["speed"] if t.get("chosen")][0]
    assert chosen["ratio"] == pytest.approx(0.45) and chosen["what"].startswith("Conv float + ")


def test_auto_keeps_the_fastest_when_none_is_faster_than_float(monkeypatch):
    """Here even the int8-storage layout (the float graph once loaded) measures slower than float."""
    timing, _calls = _fake_timing(lambda m: 1.3 if _stored_int8(m) else 1.2 + 0.1 * _int8_convs(m) + 0.05 * _int8_matmuls(m))
    monkeypatch.setattr(auto, "time_layouts", timing)
    rep = ds.quantize(_cnn(), AutoConfig(strategy="layouts"), data=_data()).report.details["auto"]
    chosen = [t for t in rep["speed"] if t.get("chosen")][0]
    assert chosen["ratio"] == pytest.approx(1.25)  # MatMul int8 only: the least slow
    assert all("no layout was faster than float" in k["reason"] for k in rep["kept_float"])


def test_auto_stores_int8_weights_when_no_int8_arithmetic_pays(monkeypatch):
    """The case1b situation on an idle machine: every int8-compute layout is slower than float. Auto keeps
    the float graph and stores the weights in int8; ONNX Runtime folds the dequantization when it loads
    the model, so the graph that runs is the float one (same optimised op sequence) and outputs agree."""
    timing, _calls = _fake_timing(lambda m: 1.0 if _stored_int8(m) else 1.1 + 0.1 * _int8_convs(m))
    monkeypatch.setattr(auto, "time_layouts", timing)
    m = _cnn()
    r = ds.quantize(m, AutoConfig(strategy="layouts"), data=_data())
    rep = r.report.details["auto"]
    q = r.model.model
    assert [t["what"] for t in rep["speed"] if t.get("chosen")] == [auto.STORAGE_WHAT] and rep["kept_float"] == []
    assert _stored_int8(q) == {"w1", "w2", "fc_w"} and _int8_convs(q) == 0 and _int8_matmuls(q) == 0
    assert not {t.name for t in q.graph.initializer if t.data_type == TensorProto.FLOAT} & {"w1", "w2", "fc_w"}

    def optimised_ops(model: onnx.ModelProto, path) -> list[str]:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(path)
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(str(path)).graph.node]

    ref = _cnn()
    fold_batchnorm(ref)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        assert optimised_ops(q, Path(d) / "q.onnx") == optimised_ops(ref, Path(d) / "f.onnx")
    x = _data(8)["x"]
    a, b = _run(m, x), _run(q, x)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.9999  # per-channel int8 weights: 0.99999+ seen
    assert len(q.SerializeToString()) < 0.5 * len(m.SerializeToString())


def test_auto_builds_a_per_layer_layout_from_each_layer_timed_alone(monkeypatch):
    """Item 6's "per layer": conv1 measured faster in int8 alone, conv2 slower, the fc faster as dynamic
    int8 than as static. The layout made of those choices is one more candidate; here it is the
    fastest whole model, so it is written."""
    alone = {"conv1": {"static": 0.8}, "conv2": {"static": 1.3}, "fc": {"static": 1.2, "dynamic": 0.9}}
    monkeypatch.setattr(layer_speed, "time_layers", lambda m, layers, *a, **k: {n: alone[n] for n in layers if n in alone})

    def ratio(m: onnx.ModelProto) -> float:
        dq = {n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
        conv1 = any(n.name == "conv1" and n.input[1] in dq for n in m.graph.node)
        conv2 = any(n.name == "conv2" and n.input[1] in dq for n in m.graph.node)
        dyn = any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in m.graph.node)
        return 0.7 if conv1 and not conv2 and dyn else 0.95

    timing, calls = _fake_timing(ratio)
    monkeypatch.setattr(auto, "time_layouts", timing)
    r = ds.quantize(_cnn(), AutoConfig(strategy="layouts"), data=_data())
    rep = r.report.details["auto"]
    assert calls == [7]  # base + 4 per-op-type layouts + the per-layer one + int8 storage
    chosen = [t for t in rep["speed"] if t.get("chosen")][0]
    assert chosen["what"].startswith("per layer") and "1 of 2 Conv" in chosen["what"]
    assert chosen["ratio"] == pytest.approx(0.7)
    assert [k["layer"] for k in rep["kept_float"]] == ["conv2"]
    assert rep["layer_speed"] == alone
    assert "per-layer timing: 2 of 3 layers ran faster in int8 than in float alone" in auto.summary_from_dict(rep)


def test_a_per_layer_layout_equal_to_an_op_type_layout_is_not_timed_twice(monkeypatch):
    """Both convs faster as static int8 alone and the fc as dynamic int8: that is the layout "static int8 Conv +
    dynamic int8 MatMul/Gemm" already built, so no per-layer layout is added."""
    alone = {"conv1": {"static": 0.8}, "conv2": {"static": 0.9}, "fc": {"static": 1.2, "dynamic": 0.9}}
    monkeypatch.setattr(layer_speed, "time_layers", lambda m, layers, *a, **k: {n: alone[n] for n in layers if n in alone})
    timing, calls = _fake_timing(lambda m: 0.9)
    monkeypatch.setattr(auto, "time_layouts", timing)
    rep = ds.quantize(_cnn(), AutoConfig(strategy="layouts"), data=_data()).report.details["auto"]
    assert calls == [6]  # base + 4 per-op-type layouts + int8 storage: the per-layer one is one of them
    assert not [t for t in rep["speed"] if t["what"].startswith("per layer")]


def test_layer_inputs_and_single_node_models_reproduce_the_layer():
    """The captured input of a layer, run through that layer alone, gives what the layer computes in the
    whole model (here: the fc MatMul, whose output plus the bias is the model output)."""
    m = _cnn()
    data = _data(4)
    caught = layer_speed.layer_inputs(m, ["conv2", "fc"], data, samples=3)
    assert caught["fc"].shape == (3, 16) and caught["conv2"].shape == (3, 8, 12, 12)
    one = layer_speed.single_node_model(m, "fc", caught["fc"][:1])
    sess = ort.InferenceSession(one.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": caught["fc"]})[0] + numpy_helper.to_array(next(t for t in m.graph.initializer
                                                                         if t.name == "fc_b"))
    assert np.abs(y - _run(m, data["x"][:3])).max() <= 1e-5


def test_time_layers_times_each_layer_in_each_form():
    """Real timings (values not asserted: they depend on the machine): one ratio per layer and form."""
    m = _cnn()
    fold_batchnorm(m)
    got = _REAL_TIME_LAYERS(m, ["conv1", "conv2", "fc"], _data(4),
                                              {"dyn": lambda one, names, d: auto.ob.quantize_dynamic_int8(one, names)},
                                              repeats=3, min_seconds=0.0)
    assert set(got) == {"conv1", "conv2", "fc"} and all(set(v) == {"dyn"} and v["dyn"] > 0 for v in got.values())


def test_allow_slower_skips_the_timing(monkeypatch, tmp_path, capsys):
    """``--allow-slower`` keeps the most-quantized layout untimed (the output is the same on every run)."""
    def refuse(*_a, **_k):
        raise AssertionError("time_layouts must not run with --allow-slower")

    monkeypatch.setattr(auto, "time_layouts", refuse)
    src, data = tmp_path / "cnn.onnx", tmp_path / "d.npz"
    onnx.save(_cnn(), src)
    np.savez(data, **_data(64))
    out = tmp_path / "q.onnx"
    rc, _o, err = run_cli(capsys, "quantize", src, "-o", out, "--scheme", "auto", "--data", data, "--allow-slower",
                          "--no-bench", "--strategy", "layouts")
    assert rc == 0, err
    assert _int8_convs(onnx.load(out)) == 2


def _deep_mlp(layers: int = 10) -> onnx.ModelProto:
    """x [b, 32] -> (MatMul [32, 32] -> Relu) x layers -> y [b, 32]."""
    rng = np.random.default_rng(3)
    nodes, inits, cur = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((32, 32)) / 5).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"], name=f"fc{i}"),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}")]
        cur = f"r{i}"
    nodes[-1] = helper.make_node("Relu", [f"m{layers - 1}"], ["y"], name=f"relu{layers - 1}")
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 32])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_keep_float_bisects_on_many_layers():
    """10 layers, a target int8 misses: the count kept float is bisected (≤ 1 + log2(10) + 1 trials after the
    first), and the count found is the smallest that meets the target among those tried."""
    data = {"x": np.random.default_rng(4).standard_normal((48, 32)).astype(np.float32)}
    cfg = AutoConfig(strategy="layouts", target_cos=0.9999, min_cos=0.9, smooth_alphas=(0.0,), max_kept_fraction=1.0,
                     choose_by_speed=False)
    rep = ds.quantize(_deep_mlp(), cfg, data=data).report.details["auto"]
    assert rep["met"] and rep["cos_mean"] >= 0.9999  # 7 kept seen: 10, 5, 7, 6 tried
    kept = len(rep["kept_float"])
    probes = rep["trials"][1:]
    assert 1 <= kept < 10 and len(probes) <= 5  # limit 10, then 5, then 2 or 7, ...: 4-5 trials, not up to 10
    by_count = {int(t["what"].split(", ")[1].split()[0]): t["cos_mean"] for t in probes}
    assert by_count[kept] >= 0.9999
    assert all(c < 0.9999 for k, c in by_count.items() if k < kept)  # every smaller count tried missed it


def test_auto_runs_a_graph_fixed_at_batch_1():
    """ddddocr's OCR model declares ``input1: [1, 1, 64, W]``: auto fed 16 samples at once and ONNX Runtime
    refused them ("Got invalid dimensions for input"); a fixed batch is now fed at its size."""
    m = _cnn()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    rep = ds.quantize(m, AutoConfig(strategy="layouts", choose_by_speed=False), data=_data()).report.details["auto"]
    assert rep["met"] and rep["cos_mean"] >= 0.997 and rep["quantized_layers"] == 3


def test_auto_times_layers_and_layouts_at_the_configured_threads(monkeypatch):
    """`quantize --threads 1`: every timing auto does (each layer alone, then the whole layouts) runs ORT at 1
    intra-op thread, not the default 2 — the layout fastest at 2 threads need not be fastest at 1."""
    from deepshrink.quantize.onnx import layer_speed

    per_layer: list[int] = []
    real = layer_speed.time_layers

    def layers(*args, threads, **kw):
        per_layer.append(threads)
        return real(*args, threads=threads, **kw)

    monkeypatch.setattr(layer_speed, "time_layers", layers)
    for threads in (1, 2):
        timing, calls = _fake_timing(lambda m: 0.9)
        monkeypatch.setattr(auto, "time_layouts", timing)
        per_layer.clear()
        ds.quantize(_cnn(), AutoConfig(strategy="layouts", threads=threads), data=_data())
        assert calls and timing.threads == [threads] * len(calls)
        assert per_layer and set(per_layer) == {threads}
