"""Streamed GPTQ (issue 17, memory at scale): segment-by-segment calibration of an ONNX file with external data.

The 1.5 B-parameter run is ``benchmarks/bench_memory_scale.py``; here a 2 MB decoder (d=128, 3 layers)
checks the segment plan, that the written codes are GPTQ's and beat round-to-nearest layer by layer
and end to end, the CLI path and its refusals, determinism, and the memory a run adds.
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

from cli_helpers import one_line_error, run_cli
from deepshrink.backends.onnx import load_onnx, load_onnx_graph, make_session
from deepshrink.examples.decoder_onnx import write_decoder_onnx
from deepshrink.quantize.onnx import streaming
from deepshrink.quantize.onnx.streaming_gptq import plan_segments, stream_gptq

VOCAB = 512


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("decoder") / "decoder.onnx"
    assert write_decoder_onnx(path, d_model=128, layers=3, heads=4, vocab=VOCAB) == 722_688
    return path


@pytest.fixture(scope="module")
def calib():
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(0, VOCAB, (8, 32))}, {"input_ids": rng.integers(0, VOCAB, (4, 32))}


@pytest.fixture(scope="module")
def streamed(decoder, calib, tmp_path_factory):
    out = tmp_path_factory.mktemp("gptq") / "q.onnx"
    return out, stream_gptq(decoder, out, calib[0])


def _layers(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1].endswith(".weight")]


def test_segments_cut_at_the_residual_stream(decoder):
    model, _ = load_onnx_graph(decoder)
    segs = plan_segments(model.graph, _layers(model))
    # every layer in exactly one segment, in order; the segments tile the graph
    assert [name for s in segs for name in s.layers] == _layers(model)
    assert segs[0].start == 0 and segs[-1].stop == len(model.graph.node)
    assert all(a.stop == b.start for a, b in zip(segs, segs[1:], strict=False))
    # blocks 0 and 1 split into attention and MLP halves: between them only the residual stream (and the
    # attention mask every block reads) is live
    assert [s.layers for s in segs[:4]] == [
        (f"h.{i}.attn.q_proj", f"h.{i}.attn.k_proj", f"h.{i}.attn.v_proj", f"h.{i}.attn.o_proj") if half == 0
        else (f"h.{i}.mlp.fc_in", f"h.{i}.mlp.fc_out") for i in (0, 1) for half in (0, 1)]
    assert segs[0].inputs == ("input_ids",) and set(segs[0].outputs) == {"mask", "h.0.resid_1"}
    assert segs[1].inputs == ("h.0.resid_1",) and segs[1].outputs == ("h.0.resid_2",)
    assert set(segs[2].inputs) == {"h.0.resid_2", "mask"}


def test_written_codes_are_gptq_and_beat_rtn(decoder, calib, streamed):
    out, rep = streamed
    assert rep.quantized_layers == 19 and rep.method == "gptq"
    assert sorted(p.name for p in out.parent.iterdir()) == ["q.onnx", "q.onnx.data"]
    q = load_onnx(out)
    assert sum(n.op_type == "MatMulNBits" for n in q.graph.node) == 19
    # recompute the first layer's error from the written codes, on its float inputs (no layer before it)
    src = load_onnx(decoder)
    probe = onnx.ModelProto()
    probe.CopyFrom(src)
    probe.graph.output.append(onnx.helper.make_empty_tensor_value_info("h.0.ln_1"))
    x = np.concatenate([make_session(probe, threads=1).run(["h.0.ln_1"], {"input_ids": calib[0]["input_ids"]})[0]
                        ]).reshape(-1, 128)
    w = numpy_helper.to_array(next(t for t in src.graph.initializer if t.name == "h.0.attn.q_proj.weight"))
    t = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    deq = streaming._dequantize(t["h.0.attn.q_proj.weight_Q4"], t["h.0.attn.q_proj.weight_scales"], None, 4, True, 128)
    y = x @ w
    err = np.linalg.norm(y - x @ deq.T) / np.linalg.norm(y)
    first = rep.layers[0]
    assert first["layer"] == "h.0.attn.q_proj" and err == pytest.approx(first["err_gptq"], rel=1e-3)
    # 5 seeds (model and calibration): GPTQ / RTN output error per layer, worst layer 0.799–0.816,
    # mean over layers 0.472–0.484
    ratios = [g / r for _, g, r in rep.extra["layer_errors"]]
    assert max(ratios) < 0.9 and np.mean(ratios) < 0.6, ratios
    assert 0.98 < rep.worst_cosine < 0.995  # 5 seeds: 0.9846–0.9875


def test_end_to_end_error_below_rtn(decoder, calib, streamed, tmp_path):
    out, _ = streamed
    rtn = tmp_path / "rtn.onnx"
    streaming.stream_weight_only_rtn(decoder, rtn, symmetric=True)
    held = calib[1]
    ref = make_session(decoder, threads=1).run(None, held)[0]
    err = {p: np.linalg.norm(make_session(p, threads=1).run(None, held)[0] - ref) / np.linalg.norm(ref)
           for p in (out, rtn)}
    # 5 seeds, held-out ids: logits error GPTQ / RTN 0.752–0.803 (GPTQ 0.170–0.201, RTN 0.225–0.250)
    assert err[out] < 0.9 * err[rtn], err


def test_deterministic(decoder, calib, streamed, tmp_path):
    out, _ = streamed
    again = tmp_path / "q.onnx"
    stream_gptq(decoder, again, calib[0])
    assert again.read_bytes() == out.read_bytes()
    assert (tmp_path / "q.onnx.data").read_bytes() == (out.parent / "q.onnx.data").read_bytes()


def test_cli_streams_gptq_and_refuses_in_one_line(decoder, calib, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(streaming, "STREAM_MIN_BYTES", 1 << 20)
    data = tmp_path / "calib.npz"
    np.savez(data, input_ids=calib[0]["input_ids"])
    out = tmp_path / "q.onnx"
    rc, stdout, err = run_cli(capsys, "quantize", decoder, "-o", out, "--scheme", "int4-weight", "--method", "gptq",
                              "--data", data, "--calibration-size", "8")
    assert rc == 0, err
    assert "GPTQ streamed in" in stdout and "on 8 calibration samples" in stdout and "round-to-nearest" in stdout
    assert sum(n.op_type == "MatMulNBits" for n in load_onnx(out).graph.node) == 19
    bad_ids = tmp_path / "bad_ids.npz"
    np.savez(bad_ids, input_ids=np.full((2, 8), VOCAB + 5))  # token ids past the embedding table
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, a=np.zeros((2, 8), np.int64), b=np.zeros((2, 8), np.int64))
    for args, needle, code in (((), "needs calibration data", 2),
                               (("--data", wrong), "input(s) ['input_ids'] missing", 2),
                               (("--data", bad_ids), "calibration data", 2),
                               (("--data", data, "--group-size", "96"), "group_size", 2),
                               (("--data", data, "--gate-min-cos", "0.999"), "weight cosine", 3)):
        bad = tmp_path / "bad.onnx"
        rc, _, err = run_cli(capsys, "quantize", decoder, "-o", bad, "--scheme", "int4-weight", "--method", "gptq",
                             *args)
        assert rc == code, (args, err)
        one_line_error(err, needle)
        assert not bad.exists() and not (tmp_path / "bad.onnx.data").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith((".", "tmp"))]  # no stage left behind


_PROBE = textwrap.dedent("""
    import sys
    import numpy as np
    src, out, tiny = sys.argv[1:4]
    from deepshrink.quantize.onnx.streaming_gptq import stream_gptq

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    calib = {"input_ids": np.random.default_rng(0).integers(0, 256, (8, 32))}
    stream_gptq(tiny, out + "warm.onnx", calib)  # imports and first-call allocations, before the baseline
    open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS (Linux >= 4.0)
    base = status("VmRSS")
    stream_gptq(src, out + "q.onnx", calib)
    print(status("VmHWM") - base)
""")


def test_memory_growth_is_bounded(tmp_path):
    """Peak RSS a streamed GPTQ run adds (fresh process, after a warm-up on a 2-layer model of the same
    width), against the 76 MB model's size: never the whole model."""
    src = tmp_path / "m.onnx"
    write_decoder_onnx(src, d_model=256, layers=24, heads=4, vocab=256)
    warm = tmp_path / "warm.onnx"
    write_decoder_onnx(warm, d_model=256, layers=2, heads=4, vocab=256)
    size = (tmp_path / "m.onnx.data").stat().st_size
    res = subprocess.run([sys.executable, "-c", _PROBE, str(src), str(tmp_path / "q_"), str(warm)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    growth = int(res.stdout.strip().splitlines()[-1])
    # measured: +34.3 and +35.2 MB (0.45x) in a worktree, +49.3 MB (0.65x) in a fresh clone under load; the same
    # on the 12-layer, 38.5 MB model (+34.8, +37.6 MB): a fixed cost (ORT sessions, the runs-check, allocator pages
    # handed back by malloc_trim and touched again), not a share of the model. The in-memory GPTQ path
    # (ds.quantize) grew by 1.7 GB (44x) on the 38.5 MB model, so 0.8x still tells the two apart.
    assert growth < 0.8 * size, (growth, size)
