"""ONNX → PyTorch importer: parity on digits models and a transformer block, trainability,
dynamic batch, the .pt2 route, and clear errors for unsupported ops and bad files."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from deepshrink.cli._app import run_app
from deepshrink.convert.onnx2torch import SUPPORTED_OPS, onnx_to_torch
from deepshrink.errors import InputError, UnsupportedError


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_digits_parity_and_accuracy(name, hub_onnx, digits, digits_cnn, digits_mlp):
    ref = {"cnn": digits_cnn, "mlp": digits_mlp}[name]
    x = torch.from_numpy(digits.x_test if name == "cnn" else digits.flat().x_test)
    gm = onnx_to_torch(hub_onnx[name])
    with torch.no_grad():
        a, b = ref(x), gm(x)
    assert _max_abs(a, b) < 1e-4  # 2.9e-06 (cnn), 0.0 (mlp) seen
    acc_ref = float((a.argmax(1).numpy() == digits.y_test).mean())
    acc_imp = float((b.argmax(1).numpy() == digits.y_test).mean())
    assert acc_imp == acc_ref  # 0.994 / 0.975 seen, identical


def test_imported_model_is_trainable_torch_modules(hub_onnx, digits, digits_cnn, digits_mlp):
    import copy

    gm = onnx_to_torch(hub_onnx["cnn"])
    kinds = {type(m).__name__ for m in gm.modules()}
    assert {"Conv2d", "Linear"} <= kinds  # real layers: prunable and quantizable like hand-written ones
    n_imp = sum(p.numel() for p in gm.parameters() if p.requires_grad)
    assert n_imp > 0.95 * sum(p.numel() for p in digits_cnn.parameters())  # BN folded by the exporter
    # fine-tuning the imported MLP follows the original's loss curve step for step
    x, y = torch.from_numpy(digits.flat().x_train[:128]), torch.from_numpy(digits.y_train[:128])
    curves = []
    for model in (copy.deepcopy(digits_mlp), onnx_to_torch(hub_onnx["mlp"])):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        losses = []
        for _ in range(5):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        curves.append(losses)
    assert curves[1][-1] < curves[1][0]  # it learns: 0.0305 -> 0.0259 seen
    assert max(abs(a - b) for a, b in zip(*curves, strict=True)) < 1e-5  # identical curves seen


def test_dynamic_batch(hub_onnx, digits_mlp):
    gm = onnx_to_torch(hub_onnx["mlp"])
    rng = np.random.default_rng(7)
    for batch in (1, 5, 33):
        x = torch.from_numpy(rng.random((batch, 64), dtype=np.float32))
        with torch.no_grad():
            assert _max_abs(gm(x), digits_mlp(x)) < 1e-4  # ~1e-6 seen


@pytest.mark.parametrize("opset", [13, 17])
def test_transformer_block_parity(opset, transformer_block_cls):
    torch.manual_seed(0)
    block = transformer_block_cls().eval()
    x = torch.randn(2, 7, 32)
    f = io.BytesIO()
    torch.onnx.export(block, (x,), f, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b", 1: "t"}}, opset_version=opset)
    proto = onnx.load_from_string(f.getvalue())
    ops = {n.op_type for n in proto.graph.node}
    assert {"MatMul", "Softmax", "Shape", "Reshape", "Transpose"} <= ops
    assert ("LayerNormalization" in ops) == (opset >= 17)  # opset 13 decomposes it into ReduceMean/Pow/Sqrt
    gm = onnx_to_torch(proto)
    x2 = torch.randn(3, 11, 32, generator=torch.Generator().manual_seed(3))  # other batch and length
    with torch.no_grad():
        assert _max_abs(gm(x2), block(x2)) < 1e-4  # ~1e-6 seen
    # shape arithmetic stays on sizes, not tensors: torch.export captures it with dynamic dims
    assert "int_tensor" not in gm.code
    dyn = ({0: torch.export.Dim("b", max=64), 1: torch.export.Dim("t", max=512)},)
    ep = torch.export.export(gm, (x,), dynamic_shapes=dyn, strict=False)
    with torch.no_grad():
        assert _max_abs(ep.module()(x2), block(x2)) < 1e-4  # ~1e-6 seen


def test_pt2_route_through_cli(hub_onnx, tmp_path, digits, digits_cnn):
    out = tmp_path / "cnn.pt2"
    rc = run_app(["convert", str(hub_onnx["cnn"]), str(out)])
    assert rc == 0 and out.is_file()
    import deepshrink as ds

    h = ds.load(out)
    with torch.no_grad():
        y = torch.as_tensor(np.asarray(h.model(torch.from_numpy(digits.x_test[:50]))))
        assert _max_abs(y, digits_cnn(torch.from_numpy(digits.x_test[:50]))) < 1e-4  # 2.9e-06 seen


def test_pt2_keeps_output_names_and_a_fixed_batch_back_to_onnx(tmp_path):
    """ONNX (fixed at batch 1, two named outputs, as a TFLite-born detector) → .pt2 → ONNX: the names came back
    as output_0 / output_1, and the re-export failed (a dynamic batch against the program's batch-1 guard)."""
    import deepshrink as ds

    rng = np.random.default_rng(0)
    w, v = (onnx.numpy_helper.from_array(rng.standard_normal((4, k)).astype(np.float32), n) for k, n in ((3, "W"), (2, "V")))
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["regressors"]),
                           helper.make_node("MatMul", ["x", "V"], ["classificators"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("regressors", TensorProto.FLOAT, [1, 3]),
                           helper.make_tensor_value_info("classificators", TensorProto.FLOAT, [1, 2])], [w, v])
    src = tmp_path / "det.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    assert run_app(["convert", str(src), str(tmp_path / "det.pt2")]) == 0
    h = ds.load(tmp_path / "det.pt2")
    assert h.output_names == ["regressors", "classificators"]
    assert [o.shape for o in h.outputs] == [(1, 3), (1, 2)]  # a program fixed at batch 1 (was: batch x 3)
    assert run_app(["convert", str(tmp_path / "det.pt2"), str(tmp_path / "back.onnx")]) == 0
    back = onnx.load(tmp_path / "back.onnx")
    assert [o.name for o in back.graph.output] == ["regressors", "classificators"]
    assert back.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1  # the batch the file declared


def _model_with(op: str, domain: str = "") -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], name="mystery_node", domain=domain)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(g, opset_imports=opsets)


def test_unsupported_op_names_op_node_and_route():
    with pytest.raises(UnsupportedError) as e:
        onnx_to_torch(_model_with("STFT"))
    msg = str(e.value)
    assert "'STFT'" in msg and "'mystery_node'" in msg and "OpenVINO IR (.xml)" in msg
    with pytest.raises(UnsupportedError) as e:
        onnx_to_torch(_model_with("FusedGemm", "com.microsoft"))
    assert "contrib" in str(e.value) and "before ORT optimization" in str(e.value)


def test_unsupported_op_cli_exit_2_nothing_written(tmp_path, capsys):
    src = tmp_path / "odd.onnx"
    onnx.save(_model_with("STFT"), str(src))
    out = tmp_path / "odd.pt2"
    rc = run_app(["convert", str(src), str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "STFT" in err and "mystery_node" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["odd.onnx"]  # no temp files left either


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        onnx_to_torch(tmp_path / "missing.onnx")
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(b"\x08\x07\x12\x05garbage-not-a-model")
    with pytest.raises(InputError, match="not a readable ONNX model"):
        onnx_to_torch(bad)


def test_op_table_size():
    assert len(SUPPORTED_OPS) >= 140  # 142 at the time of writing


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_recurrent_layers_from_torch(cell):
    torch.manual_seed(0)

    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = getattr(torch.nn, cell)(12, 16, num_layers=2, batch_first=True, bidirectional=True)
            self.head = torch.nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0])

    model = Tagger().eval()
    x = torch.randn(2, 9, 12)
    f = io.BytesIO()
    torch.onnx.export(model, (x,), f, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b", 1: "t"}})
    proto = onnx.load_from_string(f.getvalue())
    assert cell in {n.op_type for n in proto.graph.node}
    gm = onnx_to_torch(proto)
    x2 = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _max_abs(gm(x2), model(x2)) < 1e-4  # ~1e-6 seen


def test_ort_quantized_models_import(hub_onnx, tmp_path, digits):
    """ORT's dynamic (MatMulInteger) and static QDQ quantization import and match ORT exactly on
    the MLP; the QOperator format's contrib ops are refused with the QDQ alternative named."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from deepshrink.backends.onnx import make_session, run_onnx

    x = digits.flat()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": x.x_val[i:i + 1]} for i in range(32)])

        def get_next(self):
            return next(self.it, None)

    src = str(hub_onnx["mlp"])
    # 7-bit weights: ORT's uint8 x int8 kernel on a CPU without VNNI (AVX2's VPMADDUBSW) adds product pairs into
    # int16 with saturation, so full-range weights give it other values than the graph's integer arithmetic (max-abs
    # 0.41 on an AVX2-only EPYC); reduce_range keeps every pair in range and ORT exact on any CPU
    quantize_dynamic(src, str(tmp_path / "dyn.onnx"), weight_type=QuantType.QInt8, reduce_range=True)
    quantize_static(src, str(tmp_path / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    for name in ("dyn", "qdq"):
        path = tmp_path / f"{name}.onnx"
        # the graph's own semantics: ORT without its QDQ→integer-kernel fusion (which rounds 1 row differently)
        ref = run_onnx(make_session(str(path), optimize=False), {"x": x.x_test})[0]
        with torch.no_grad():
            out = onnx_to_torch(path)(torch.from_numpy(x.x_test)).numpy()
        assert float(np.abs(out - ref).max()) < 1e-5  # 0.0 seen for both
    quantize_static(src, str(tmp_path / "qop.onnx"), Reader(), quant_format=QuantFormat.QOperator)
    with pytest.raises(UnsupportedError, match="QDQ format"):
        onnx_to_torch(tmp_path / "qop.onnx")


# ---------------------------------------------------------------- data-dependent outputs, If, Loop, Pad → .pt2
def _graph_on_logits(nodes: list, out: onnx.ValueInfoProto, inits: list, name: str = "g") -> onnx.ModelProto:
    """x: float32[batch, 16] → MatMul(W: 16×10) → logits → ``nodes`` → ``out`` (opset 13)."""
    w = np.random.default_rng(7).standard_normal((16, 10)).astype(np.float32) * 0.5
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["logits"]), *nodes], name,
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])], [out],
                          [onnx.numpy_helper.from_array(w, "W"), *inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from deepshrink.backends.onnx import make_session, run_onnx

    return run_onnx(make_session(model, threads=1), {"x": x})[0]


def _signed_inputs() -> list[np.ndarray]:
    """A batch-4 input with a positive sum and a batch-3 one with a negative sum."""
    rng = np.random.default_rng(2024)
    return [np.abs(rng.standard_normal((4, 16))).astype(np.float32),
            -np.abs(rng.standard_normal((3, 16))).astype(np.float32)]


def _rel(ref: np.ndarray, got: np.ndarray) -> float:
    assert ref.shape == got.shape
    return float(np.abs(ref.astype(np.float64) - got).max() / np.abs(ref).max())


def _pt2(path) -> torch.nn.Module:
    return torch.export.load(str(path)).module()


def _run(mod: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = mod(torch.from_numpy(x))
    return [t.detach().numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]


def _if_model(then_nodes: list, else_nodes: list, then_type: int = TensorProto.FLOAT,
              cond_init: bool | None = None) -> onnx.ModelProto:
    """If node ``sign_switch`` on ReduceSum(x) > 0 (or on a constant ``cond_init``); branch outputs t_out / e_out."""
    then_g = helper.make_graph(then_nodes, "then_branch", [], [helper.make_tensor_value_info("t_out", then_type, None)])
    else_g = helper.make_graph(else_nodes, "else_branch", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    if cond_init is None:
        nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["cond"])]
        inits = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    else:
        nodes, inits = [], [helper.make_tensor("cond", TensorProto.BOOL, [], [cond_init])]
    nodes.append(helper.make_node("If", ["cond"], ["y"], name="sign_switch", then_branch=then_g, else_branch=else_g))
    return _graph_on_logits(nodes, helper.make_tensor_value_info("y", then_type, ["batch", 10]), inits, "if")


def _loop_model(trip_from_data: bool = False) -> onnx.ModelProto:
    """Loop node ``refine3``: y = tanh(y @ R), 3 times (or max(x) times), also emitting each step's row sums."""
    r = np.random.default_rng(8).standard_normal((10, 10)).astype(np.float32) * 0.4
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("MatMul", ["y_in", "R"], ["yr"]),
         helper.make_node("Tanh", ["yr"], ["y_out"]), helper.make_node("ReduceSum", ["y_out", "one"], ["row_sum"],
                                                                        keepdims=0)],
        "refine_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("y_in", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("y_out", TensorProto.FLOAT, ["batch", 10]),
         helper.make_tensor_value_info("row_sum", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor("one", TensorProto.INT64, [1], [1])])
    inits = [onnx.numpy_helper.from_array(r, "R"), helper.make_tensor("keep", TensorProto.BOOL, [], [True])]
    nodes = []
    if trip_from_data:
        nodes += [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
                  helper.make_node("Cast", ["m"], ["trip"], to=TensorProto.INT64)]
    else:
        inits.append(helper.make_tensor("trip", TensorProto.INT64, [], [3]))
    nodes.append(helper.make_node("Loop", ["trip", "keep", "logits"], ["y", "sums"], name="refine3", body=body))
    m = _graph_on_logits(nodes, helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10]), inits, "loop")
    m.graph.output.append(helper.make_tensor_value_info("sums", TensorProto.FLOAT, [None, "batch"]))
    return m


def _convert_cli(tmp_path, model: onnx.ModelProto, name: str, capsys) -> tuple[int, str, str, object]:
    src, dst = tmp_path / f"{name}.onnx", tmp_path / f"{name}.pt2"
    onnx.save(model, str(src))
    capsys.readouterr()
    rc = run_app(["convert", str(src), str(dst)])
    out, err = capsys.readouterr()
    return rc, out, err, dst


def test_nonzero_to_pt2_verified_set_by_set(tmp_path, capsys):
    """NonZero's output length depends on the data: parity compares each input set on its own."""
    model = _graph_on_logits([helper.make_node("Greater", ["logits", "zero"], ["pos"]),
                              helper.make_node("NonZero", ["pos"], ["idx"], name="positive_idx")],
                             helper.make_tensor_value_info("idx", TensorProto.INT64, [2, "count"]),
                             [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])], "nonzero")
    rc, out, err, dst = _convert_cli(tmp_path, model, "nonzero", capsys)
    assert rc == 0, err
    assert "parity OK" in out and "idx: max-abs 0," in out
    mod = _pt2(dst)
    for x in _signed_inputs():
        ref = _ort(model, x)
        got = _run(mod, x)[0]
        assert got.shape == ref.shape and np.array_equal(got, ref)
    # the two inputs give different counts, which is what broke the old concatenating check
    assert len({_ort(model, x).shape[1] for x in _signed_inputs()}) == 2


def test_if_on_data_becomes_torch_cond(tmp_path, capsys):
    model = _if_model([helper.make_node("Relu", ["logits"], ["t_out"])], [helper.make_node("Neg", ["logits"], ["e_out"])])
    rc, out, err, dst = _convert_cli(tmp_path, model, "if", capsys)
    assert rc == 0, err
    ep = torch.export.load(str(dst))
    assert any(n.target is torch.ops.higher_order.cond for n in ep.graph.nodes)
    for x in _signed_inputs():  # one input takes each branch
        assert _rel(_ort(model, x), _run(ep.module(), x)[0]) <= 1e-6  # 0.0 seen
    pos, neg = (_run(ep.module(), x)[0] for x in _signed_inputs())
    assert pos.min() >= 0 and (neg > 0).any() and (neg < 0).any()  # relu on one, negation on the other


def test_if_on_a_constant_is_inlined():
    for flag, ref_fn in ((True, lambda v: np.maximum(v, 0)), (False, np.negative)):
        model = _if_model([helper.make_node("Relu", ["logits"], ["t_out"])],
                          [helper.make_node("Neg", ["logits"], ["e_out"])], cond_init=flag)
        gm = onnx_to_torch(model)
        assert not [m for m in gm.modules() if type(m).__name__ == "IfModule"]
        x = _signed_inputs()[0]
        w = onnx.numpy_helper.to_array(model.graph.initializer[0])
        np.testing.assert_allclose(_run(gm, x)[0], ref_fn(x @ w), rtol=1e-6, atol=1e-6)


def test_if_branches_torch_cond_cannot_hold_refused_by_node(tmp_path, capsys):
    model = _if_model([helper.make_node("Cast", ["logits"], ["t_out"], to=TensorProto.INT64)],
                      [helper.make_node("Neg", ["logits"], ["e_out"])], then_type=TensorProto.INT64)
    rc, out, err, dst = _convert_cli(tmp_path, model, "if_mixed", capsys)
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]
    assert rc == 2 and not dst.exists() and len(lines) == 1, lines
    assert "ONNX node 'sign_switch' (If)" in lines[0] and "torch.cond" in lines[0] and "dtype" in lines[0]


def test_loop_with_constant_trip_count_is_unrolled(tmp_path):
    from deepshrink.convert.export import torch_export
    from deepshrink.convert.onnx2torch.route import imported_handle

    model = _loop_model()
    h = imported_handle(ds_load_onnx(model, tmp_path))
    gm = h.model
    assert not [m for m in gm.modules() if type(m).__name__ == "LoopModule"]
    assert sorted(p.numel() for p in gm.parameters()) == [100, 160]  # R shared by the 3 iterations, and W
    mod = torch_export(h).module()
    for x in _signed_inputs():
        ref_y, ref_sums = _ort_all(model, x)
        y, sums = _run(mod, x)
        assert sums.shape == (3, len(x)) and _rel(ref_sums, sums) <= 1e-5  # ~2e-7 seen
        assert _rel(ref_y, y) <= 1e-5  # ~2e-7 seen


def test_loop_with_data_dependent_trip_count_refused_by_node(tmp_path, capsys):
    model = _loop_model(trip_from_data=True)
    gm = onnx_to_torch(model)  # still runs eagerly
    x = _signed_inputs()[0] * 2  # max 4.8: 4 iterations
    y, sums = _run(gm, x)
    ref_y, ref_sums = _ort_all(model, x)
    assert sums.shape == ref_sums.shape == (4, 4) and _rel(ref_y, y) <= 1e-5
    rc, out, err, dst = _convert_cli(tmp_path, model, "loop_dyn", capsys)
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]
    assert rc == 2 and not dst.exists() and len(lines) == 1, lines
    assert "ONNX node 'refine3' (Loop)" in lines[0] and "trip count is only known at run time" in lines[0]


def ds_load_onnx(model: onnx.ModelProto, tmp_path):
    import deepshrink as ds

    path = tmp_path / f"{model.graph.name}.onnx"
    onnx.save(model, str(path))
    return ds.load(str(path))


def _ort_all(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    from deepshrink.backends.onnx import make_session, run_onnx

    return run_onnx(make_session(model, threads=1), {"x": x})


def _pad_model(fill: str) -> onnx.ModelProto:
    """Pad node ``border_pad`` (constant mode, value 1.5) on x: [batch, 5, 6, 7]; the fill given as a
    scalar initializer (what torch's dynamo exporter writes), a [1] initializer, or a Constant node."""
    nodes, inits = [], [helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 1, 2, 0, 0, 2, 1])]
    if fill == "constant":
        nodes.append(helper.make_node("Constant", [], ["fill"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [1.5])))
    else:
        inits.append(helper.make_tensor("fill", TensorProto.FLOAT, [] if fill == "scalar" else [1], [1.5]))
    nodes.append(helper.make_node("Pad", ["x", "pads", "fill"], ["y"], mode="constant", name="border_pad"))
    g = helper.make_graph(nodes, "pad_value", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 6, 7])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 9, 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("fill", ["scalar", "vector", "constant"])
def test_pad_with_constant_fill_exports(tmp_path, fill):
    from deepshrink.convert.export import torch_export
    from deepshrink.convert.onnx2torch.route import imported_handle

    h = imported_handle(ds_load_onnx(_pad_model(fill), tmp_path))
    assert not list(h.model.parameters())  # the fill is a number in the graph, not a parameter
    mod = torch_export(h).module()
    for b in (2, 3):
        x = np.random.default_rng(b).standard_normal((b, 5, 6, 7)).astype(np.float32)
        ref = np.pad(x, [(0, 0), (0, 0), (1, 2), (2, 1)], constant_values=1.5)
        assert np.array_equal(_run(mod, x)[0], ref)


def test_pad_fill_round_trip_through_onnx(tmp_path, capsys):
    """deepshrink's own torch → ONNX export of F.pad(value=1.5) reads back as .pt2."""
    torch.manual_seed(0)

    class PadConv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(torch.nn.functional.pad(x, (1, 1, 2, 0), value=1.5))

    from deepshrink.convert import export_onnx

    model = PadConv().eval()
    onnx_path, dst = tmp_path / "pad_conv.onnx", tmp_path / "pad_conv.pt2"
    export_onnx(model, {"x": np.zeros((1, 3, 8, 8), np.float32)}, onnx_path)
    assert [n.op_type for n in onnx.load(str(onnx_path)).graph.node] == ["Pad", "Conv"]
    assert run_app(["convert", str(onnx_path), str(dst)]) == 0, capsys.readouterr().err
    mod = _pt2(dst)
    for b in (1, 3):
        x = np.random.default_rng(b).standard_normal((b, 3, 8, 8)).astype(np.float32)
        assert _rel(_run(model, x)[0], _run(mod, x)[0]) <= 1e-5  # 0.0 seen


@pytest.mark.parametrize("flat", [[0, 128], [-1, 128]])
def test_imported_graph_prunes_through_exporter_patterns(flat):
    """What other toolchains write and structured pruning must follow in an ONNX import: Paddle's conv bias added
    as Reshape(b, [1, C, 1, 1]) (a per-channel constant, sliced with the channels), one bias shared by two convs
    (tf2onnx merges equal constants), TensorFlow's SAME padding at stride 2 (one more at the end), and a Reshape
    to a literal [batch, 128] before the classifier (the 128 must follow the pruned channels). Before: every
    group was blocked or the export failed on "shape '[2, 128]' is invalid"."""
    from onnx import numpy_helper as nh

    from deepshrink.backends.onnx import make_session, run_onnx
    from deepshrink.convert.onnx2torch.route import trainable_handle
    from deepshrink.prune import StructuredPruneConfig, prune_with_report

    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n) for n, s in
             (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (8, 8, 1, 1)), ("w3", (8, 8, 1, 1)), ("shared", (8,)),
              ("w4", (10, 128)), ("b4", (10,)))]
    inits += [nh.from_array(np.array([1, 8, 1, 1], np.int64), "bshape"), nh.from_array(np.array(flat, np.int64), "flat")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[2, 2], pads=[0, 0, 1, 1]),
             helper.make_node("Reshape", ["b1", "bshape"], ["b1r"]), helper.make_node("Add", ["c1", "b1r"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "shared"], ["c2"]), helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3", "shared"], ["c3"]), helper.make_node("Relu", ["c3"], ["r3"]),
             helper.make_node("Reshape", ["r3", "flat"], ["f"]),
             helper.make_node("Gemm", ["f", "w4", "b4"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], inits)
    import deepshrink as ds

    src = ds.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    handle = trainable_handle(src, {"x": x})
    with torch.no_grad():  # the import computes what ONNX Runtime does
        assert _max_abs(handle.model(torch.from_numpy(x)), torch.from_numpy(run_onnx(make_session(src.model), {"x": x})[0])) < 1e-4
    pruned, report = prune_with_report(handle, StructuredPruneConfig(ratio=0.5), data={"x": x})
    assert not report.warnings
    assert sorted((g["size"], g["kept"]) for g in report.groups) == [(8, 4), (8, 4), (8, 4)]
    m = pruned.model
    assert tuple(m.get_parameter("b1").shape) == (1, 4, 1, 1)  # the reshaped bias, sliced with conv 1's channels
    with torch.no_grad():
        y = m(torch.from_numpy(x))
    assert y.shape == (4, 10)
    from deepshrink.convert import export_onnx

    written = export_onnx(pruned)
    assert _max_abs(torch.from_numpy(run_onnx(make_session(written.model), {"x": x})[0]), y) < 1e-4
