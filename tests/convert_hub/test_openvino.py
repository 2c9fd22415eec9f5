"""ONNX → OpenVINO IR: fp32 parity < 1e-4 on digits, the fp16 option really halves the
weights, the OpenVINO runner in bench, and the missing-extra message."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import deepshrink as ds
from deepshrink.cli._app import run_app

pytest.importorskip("openvino")


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_ir_parity_fp32(name, hub_onnx, tmp_path):
    res = ds.convert(hub_onnx[name], tmp_path / f"{name}.xml")
    p = res.hops[-1].parity
    assert p.ok and p.max_abs < 1e-4  # 3.8e-06 (cnn), 1.9e-06 (mlp) seen
    assert (tmp_path / f"{name}.bin").is_file()
    assert sorted(x.name for x in tmp_path.iterdir()) == [f"{name}.bin", f"{name}.xml"]


def test_fp16_weights_halve_the_file(hub_onnx, tmp_path):
    r32 = ds.convert(hub_onnx["mlp"], tmp_path / "a.xml")
    r16 = ds.convert(hub_onnx["mlp"], tmp_path / "b.xml", fp16=True)
    b32, b16 = (tmp_path / "a.bin").stat().st_size, (tmp_path / "b.bin").stat().st_size
    assert 0.45 < b16 / b32 < 0.55  # 0.50 seen
    assert r16.hops[-1].parity.max_abs > r32.hops[-1].parity.max_abs  # fp16 really moves the outputs
    assert r16.hops[-1].parity.max_abs < 1e-2  # 1e-3-ish seen


def test_runner_and_bench(hub_onnx, tmp_path, digits):
    from deepshrink.backends.openvino_rt import make_runner

    ds.convert(hub_onnx["cnn"], tmp_path / "cnn.xml")
    run = make_runner(tmp_path / "cnn.xml", threads=2)
    out = run({"x": digits.x_test[:5]})[0]
    assert out.shape == (5, 10)
    acc = float((np.concatenate([run({"x": digits.x_test[i:i + 60]})[0] for i in range(0, 360, 60)]).argmax(1)
                 == digits.y_test).mean())
    assert acc > 0.97  # 0.994 seen, as the source model
    res = ds.bench([str(hub_onnx["cnn"]), str(tmp_path / "cnn.xml")], repeats=5, warmup=1)
    assert "openvino" in str(res.to_dict())


def test_missing_bin_and_missing_extra(hub_onnx, tmp_path, monkeypatch, capsys):
    from deepshrink.backends.openvino_rt import make_runner
    from deepshrink.errors import InputError

    ds.convert(hub_onnx["mlp"], tmp_path / "m.xml")
    (tmp_path / "m.bin").unlink()
    with pytest.raises(InputError, match="no weights file m.bin"):
        make_runner(tmp_path / "m.xml")
    monkeypatch.setitem(sys.modules, "openvino", None)
    out = tmp_path / "n.xml"
    rc = run_app(["convert", str(hub_onnx["mlp"]), str(out)])
    assert rc == 2 and not out.exists() and not (tmp_path / "n.bin").exists()
    assert "pip install 'deepshrink[openvino]'" in capsys.readouterr().err


def test_bisection_names_first_diverging_node(hub_onnx, tmp_path):
    """fp16 weights against a 1e-4 tolerance: the first node past it is the first Gemm (fc1)."""
    from deepshrink.convert.openvino_ir import bisect_openvino

    ds.convert(hub_onnx["mlp"], tmp_path / "h.xml", fp16=True)
    h = ds.load(hub_onnx["mlp"])
    div = bisect_openvino(h, tmp_path / "h.xml", h.sample_inputs(batch=4, seed=3), atol=1e-4, rtol=1e-4)
    assert div is not None and div.candidate_op == "Gemm" and "fc1" in div.reference_layer, div
    assert div.max_abs > 1e-4
    assert bisect_openvino(h, tmp_path / "h.xml", h.sample_inputs(batch=4, seed=3), atol=1e-1) is None
