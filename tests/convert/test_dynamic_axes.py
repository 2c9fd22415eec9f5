"""Named (dynamic) axes in input shapes, and exports that hard-code an axis they declare dynamic.

A name in place of a size marks an axis dynamic (``x:2xseqx8``, ``{"x": (2, "seq", 8)}``); the file
must then run at any size of it with torch's numbers. The torchscript exporter bakes traced sizes into
``Reshape`` targets (a sequence-first ``nn.TransformerEncoder`` traced with axis 0 as the batch): such a
file is refused in one line naming the axis, and naming the real batch axis exports it correctly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import deepshrink as ds
from deepshrink.backends.onnx import make_session, run_onnx
from deepshrink.convert.export import AxisFixedError, export_onnx
from deepshrink.errors import InputError


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


class Tagger(nn.Module):
    """Bidirectional LSTM (batch_first) + per-step Linear: any sequence length is valid."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.LSTM(8, 12, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0])


class SeqFirst(nn.Module):
    """nn.TransformerEncoder with torch's default batch_first=False: input (seq, batch, 16)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x)


def _rel(model: nn.Module, path, x: np.ndarray) -> float:
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = run_onnx(make_session(path), {"x": x})[0]
    return float(np.abs(ref - got).max() / np.abs(ref).max())


def test_named_axis_is_dynamic_in_the_file(tmp_path):
    model = Tagger().eval()
    h = ds.load(model, input_shapes={"x": (2, "seq", 8)})
    assert h.inputs[0].shape == ("batch", "seq", 8) and h.example_inputs["x"].shape == (2, 17, 8)
    res = ds.convert(h, tmp_path / "t.onnx", exporter="torchscript")
    assert res.hops[0].parity.ok
    dims = onnx.load(str(tmp_path / "t.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", "seq", 8]
    rng = np.random.default_rng(0)
    for b, t in ((1, 7), (3, 12), (2, 20)):
        assert _rel(model, tmp_path / "t.onnx", rng.standard_normal((b, t, 8)).astype(np.float32)) < 1e-5  # 2e-7 seen
    h = ds.load(model, input_shapes=["x:2xseq=5x8"])  # NAME=SIZE: the traced size
    assert h.example_inputs["x"].shape == (2, 5, 8)


def test_api_shapes_are_checked():
    with pytest.raises(InputError, match=r"input_shapes\['x'\] = \(2, 'se q', 8\)"):
        ds.load(Tagger(), input_shapes={"x": (2, "se q", 8)})


def test_hard_coded_axis_refused_naming_it(tmp_path, capfd):
    model = SeqFirst().eval()
    h = ds.load(model, input_shapes=["x:10x2x16"])  # axis 0 taken as the batch: it is the sequence
    with pytest.raises(AxisFixedError, match=r"the torchscript export hard-codes axis 0 \('batch'\) of input 'x': "
                                             r"traced at 10, the file fails at 11 in Reshape node"):
        ds.convert(h, tmp_path / "e.onnx", exporter="torchscript")
    assert not (tmp_path / "e.onnx").exists()
    assert "onnxruntime" not in capfd.readouterr().err  # no ORT log line next to the one-line error


def test_naming_the_batch_axis_fixes_axis_0(tmp_path):
    model = SeqFirst().eval()
    h = ds.load(model, input_shapes=["x:10xbatchx16"])
    assert h.inputs[0].shape == (10, "batch", 16)
    export_onnx(h, None, tmp_path / "e.onnx", exporter="torchscript")
    dims = onnx.load(str(tmp_path / "e.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == [10, "batch", 16]
    rng = np.random.default_rng(1)
    for b in (2, 3, 1):
        assert _rel(model, tmp_path / "e.onnx", rng.standard_normal((10, b, 16)).astype(np.float32)) < 1e-5  # 1.8e-7 seen
