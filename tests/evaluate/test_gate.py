"""The fidelity gate: a written model whose outputs collapsed is refused (exit 3, nothing written)
unless --allow-degraded; healthy results pass; evaluation never uses the calibration samples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepshrink.cli import run_app
from deepshrink.core.data import Dataset
from deepshrink.evaluate.bench import BenchResult, BenchRow
from deepshrink.evaluate.gate import DegradedError, FidelityPolicy, check, judge, split_holdout


def _ds(n: int, labels: bool = True) -> Dataset:
    x = np.arange(n, dtype=np.float32).reshape(n, 1)
    return Dataset({"x": x}, np.arange(n) % 3 if labels else None, "d")


@pytest.mark.parametrize("n, used, calib, held, spared", [
    (100, 64, 64, 36, True),   # enough past the calibration samples
    (70, 64, 53, 17, True),    # too few past them: the last quarter (at least 16) is held out
    (40, 40, 24, 16, True),
    (31, 64, 31, 31, False),   # nothing can be spared: both are the whole set, and it says so
])
def test_split_holdout(n, used, calib, held, spared):
    a, b, ok = split_holdout(_ds(n), used)
    assert (len(a), len(b), ok) == (calib, held, spared)
    if spared:  # disjoint, in order, labels follow their samples
        assert a.inputs["x"][-1, 0] < b.inputs["x"][0, 0]
        assert np.array_equal(b.labels, (b.inputs["x"][:, 0].astype(int)) % 3)


def _table(acc0, acc1, cos_min, n=256, data="d.npz"):
    row = lambda name, acc, cmin: BenchRow(name, "onnxruntime", 1, 1, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, acc,  # noqa: E731
                                          cmin, cmin, 0.0, 1.0)
    return BenchResult([row("a", acc0, 1.0), row("b", acc1, cos_min)], 2, 1, 1, "cpu", n, data)


def test_judge_rules():
    p = FidelityPolicy()
    assert not judge(_table(0.98, 0.90, 0.99), p).passed          # 8 points on 256 samples
    assert judge(_table(0.98, 0.95, 0.50), p).passed              # 3 points: labels rule, cosine unused
    assert judge(_table(1.0, 0.875, 0.5, n=16), p).passed         # 2 flips of 16: noise, not a collapse
    assert not judge(_table(1.0, 0.8125, 0.5, n=16), p).passed    # 3 flips of 16
    assert not judge(_table(None, None, 0.85), p).passed          # no labels: worst cosine below 0.9
    assert judge(_table(None, None, 0.91), p).passed
    assert judge(_table(None, None, 0.85), FidelityPolicy(min_cos=0.8)).passed
    lossy = FidelityPolicy(judge_random=False)
    v = judge(_table(None, None, 0.5, data="random"), lossy)
    assert v.passed and v.reason.startswith("not judged")
    assert not judge(_table(None, None, 0.5, data="random"), p).passed
    with pytest.raises(DegradedError) as e:
        check(_table(0.98, 0.5, 0.2), p, what="m.onnx")
    assert e.value.exit_code == 3 and "98.0% → 50.0%" in str(e.value) and "nothing written" in str(e.value)
    assert not check(_table(0.98, 0.5, 0.2), FidelityPolicy(allow_degraded=True)).passed


@pytest.mark.parametrize("bad", [{"min_cos": 1.5}, {"max_drop": -0.1}, {"max_drop": 5.0}])
def test_policy_refuses_out_of_range(bad):
    from deepshrink.errors import InputError

    with pytest.raises(InputError):
        FidelityPolicy(**bad)


def test_cli_refuses_collapsed_quantization(cnn_onnx, tmp_path, capsys):
    """2-bit power-of-two weights wreck the digits CNN: exit 3, nothing written, the first broken
    layer named; --allow-degraded keeps the file and prints the verdict as one warning."""
    out = tmp_path / "sub" / "cnn.log2.onnx"
    out.parent.mkdir()
    args = ["quantize", str(cnn_onnx), "-o", str(out), "--scheme", "log2", "--bits", "2", "--data", "digits:train",
            "--eval-data", "digits:test", "--repeats", "1"]
    assert run_app(args) == 3
    err = capsys.readouterr().err
    assert "degraded: accuracy fell" in err and "first layer below the limit:" in err and "(Conv)" in err
    assert list(out.parent.iterdir()) == []  # not even a staging folder is left
    assert run_app([*args, "--allow-degraded", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert out.exists() and payload["gate"]["passed"] is False and payload["gate"]["first_broken_layer"]
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_cli_healthy_int8_passes_on_held_out_samples(cnn_onnx, tmp_path, capsys):
    """int8-static with --data only: calibrated on the first --calibration-size samples, measured
    on the rest (never on the calibration samples), and the gate passes."""
    out = tmp_path / "cnn.int8.onnx"
    assert run_app(["quantize", str(cnn_onnx), "-o", str(out), "--scheme", "int8-static", "--data", "digits:train",
                    "--calibration-size", "64", "--repeats", "1", "--no-bench", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    gate = payload["gate"]
    assert gate["passed"] and gate["reason"] == "" and gate["data"].endswith("[64:" + gate["data"].split(":")[-1])
    assert gate["samples"] >= 16 and gate["accuracy_after"] > gate["accuracy_before"] - 0.05
    assert payload["bench"] is None and out.exists()
