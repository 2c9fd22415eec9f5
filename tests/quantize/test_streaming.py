"""Streamed int4 weight-only quantization (issue 17, memory at scale) on a 20 MB decoder with external data.

The full-size run (1.5 B parameters, 6 GB fp32) is ``benchmarks/bench_memory_scale.py``; here the
streamed output must equal the in-memory path's tensor for tensor, the CLI must take the streamed
path above its threshold, and the memory a streamed run adds must stay well under the model's size.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import deepshrink as ds
from cli_helpers import one_line_error, run_cli
from deepshrink.backends.onnx import load_onnx, make_session
from deepshrink.examples.decoder_onnx import write_decoder_onnx
from deepshrink.quantize import WeightOnlyConfig
from deepshrink.quantize.onnx import streaming


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decoder")
    path = folder / "decoder.onnx"
    params = write_decoder_onnx(path, d_model=256, layers=5, heads=4, vocab=2048)
    assert params == 4_986_368
    return path


def _tensors(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _nodes(model: onnx.ModelProto) -> list[str]:
    return sorted(str((n.op_type, n.name, list(n.input), list(n.output), sorted(
        (a.name, str(onnx.helper.get_attribute_value(a))) for a in n.attribute))) for n in model.graph.node)


@pytest.mark.parametrize("symmetric", [True, False])
def test_streamed_equals_in_memory(decoder, tmp_path, symmetric):
    out = tmp_path / "q.onnx"
    rep = streaming.stream_weight_only_rtn(decoder, out, symmetric=symmetric)
    assert rep.quantized_layers == 31  # 6 MatMuls in each of 5 layers, and the LM head
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx", "q.onnx.data"]
    mem = ds.quantize(decoder, WeightOnlyConfig.build(bits=4, group_size=128, method="rtn", symmetric=symmetric)).model.model
    got, want = _tensors(load_onnx(out)), _tensors(mem)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name]), name
    assert _nodes(load_onnx(out)) == _nodes(mem)
    feed = {"input_ids": np.array([[3, 1, 4, 1, 5, 9, 2, 6]], np.int64)}
    a = make_session(out, threads=1).run(None, feed)[0]
    b = make_session(mem, threads=1).run(None, feed)[0]
    assert np.array_equal(a, b)
    # the per-layer figure: 4-bit groups of 128 on N(0, 0.02²) weights keep a cosine of about 0.995
    assert 0.99 < rep.worst_cosine < 0.999


def test_cli_streams_above_the_threshold(decoder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(streaming, "STREAM_MIN_BYTES", 1 << 20)
    out = tmp_path / "q.onnx"
    rc, stdout, err = run_cli(capsys, "quantize", decoder, "-o", out, "--scheme", "int4-weight")
    assert rc == 0, err
    assert "streamed tensor by tensor" in stdout and "worst layer" in stdout
    assert sum(1 for n in load_onnx(out).graph.node if n.op_type == "MatMulNBits") == 31
    # refused before anything is written: a group size that is not a MatMulNBits block size, a failed gate
    for args, needle in ((("--group-size", "96"), "group_size"), (("--gate-min-cos", "0.9999"), "weight cosine")):
        bad = tmp_path / "bad.onnx"
        rc, _, err = run_cli(capsys, "quantize", decoder, "-o", bad, "--scheme", "int4-weight", *args)
        assert rc in (2, 3)
        one_line_error(err, needle)
        assert not bad.exists() and not (tmp_path / "bad.onnx.data").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx", "q.onnx.data"]


_PROBE = textwrap.dedent("""
    import sys
    src, out, tiny = sys.argv[1:4]
    import deepshrink as ds
    from deepshrink.quantize import WeightOnlyConfig
    from deepshrink.quantize.onnx.streaming import stream_weight_only_rtn

    def status(key):  # this process's own figures (ru_maxrss would carry the forking parent's peak over exec)
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    def run(mode, s, o):
        if mode == "stream":
            stream_weight_only_rtn(s, o, symmetric=True)
        else:
            ds.save(ds.quantize(s, WeightOnlyConfig.build(bits=4, group_size=128, method="rtn")), o, force=True)

    for mode in ("stream", "memory"):  # imports and first-call allocations, before the baselines
        run(mode, tiny, out + mode + ".warm.onnx")
    for mode in ("stream", "memory"):
        open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS (Linux >= 4.0)
        base = status("VmRSS")
        run(mode, src, out + mode + ".onnx")
        print(mode, status("VmHWM") - base)
""")


def test_streamed_memory_growth_is_bounded(decoder, tmp_path):
    """Peak RSS a run adds (fresh process, after a warm-up on a tiny model), against the model's 20 MB."""
    tiny = tmp_path / "tiny.onnx"
    write_decoder_onnx(tiny, d_model=128, layers=1, heads=2, vocab=256)
    size = (decoder.parent / "decoder.onnx.data").stat().st_size
    res = subprocess.run([sys.executable, "-c", _PROBE, str(decoder), str(tmp_path / "q_"), str(tiny)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    growth = {line.split()[0]: int(line.split()[1]) for line in res.stdout.strip().splitlines()[-2:]}
    # measured (2 runs): stream 8.8–13.4 MB (the largest weight, its codes, ORT loading the 5 MB output),
    # in memory 70–74 MB (3.5–3.7x the model)
    assert growth["stream"] < size, growth
    assert growth["stream"] < 0.5 * growth["memory"], growth


def test_stream_reports_what_stayed_float(decoder, tmp_path):
    """The token embedding (a Gather table, 2048 x 256) is not a MatMul weight: it is copied as it is and named."""
    rep = streaming.stream_weight_only_rtn(decoder, tmp_path / "q.onnx", exclude=["h.*.mlp.*"])
    assert rep.quantized_layers == 21
    # float matrices left: wte (524,288 values) and 10 MLP weights (262,144 each), of 4,980,736 matrix values
    assert rep.float_left == pytest.approx((524_288 + 10 * 262_144) / 4_980_736)
    assert rep.float_left_largest[0] == "wte"
    assert all(".mlp." in n for n in rep.float_left_largest[1:]) and len(rep.float_left_largest) == 4
