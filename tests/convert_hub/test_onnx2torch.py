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
    quantize_dynamic(src, str(tmp_path / "dyn.onnx"), weight_type=QuantType.QInt8)
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
