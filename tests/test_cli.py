"""The CLI as a user meets it: exit codes, one-line errors, nothing half-written."""

import json
import subprocess
import sys

import numpy as np
import pytest

from deepshrink.cli._app import run_app


def _run(capsys, *args):
    rc = run_app([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(err: str, needle: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert "Traceback" not in err


def test_convert_info_bench_happy_path(tmp_path, capsys, cnn_onnx):
    out = tmp_path / "copy.onnx"
    rc, stdout, _ = _run(capsys, "convert", cnn_onnx, out, "--json")
    assert rc == 0 and json.loads(stdout)["hops"][0]["parity"]["ok"] is True
    rc, stdout, _ = _run(capsys, "info", out, "--json")
    info = json.loads(stdout)
    assert rc == 0 and info["inputs"] == ["x: float32[batchx1x8x8]"] and info["ops"]["Conv"] == 4
    rc, stdout, _ = _run(capsys, "bench", cnn_onnx, out, "--data", "digits:test", "--repeats", "3", "--json")
    rows = json.loads(stdout)["rows"]
    assert rc == 0 and rows[1]["accuracy"] == rows[0]["accuracy"] > 0.97  # 0.992 seen


@pytest.mark.parametrize("case", ["missing", "truncated", "exists", "same", "bad_ext", "bad_shape", "unknown_exporter"])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, cnn_onnx, case):
    out = tmp_path / "out.onnx"
    src = cnn_onnx
    extra: list[str] = []
    needle = ""
    if case == "missing":
        src, needle = tmp_path / "nope.onnx", "does not exist"
    elif case == "truncated":
        src = tmp_path / "trunc.onnx"
        src.write_bytes(cnn_onnx.read_bytes()[:1000])
        needle = "trunc.onnx"
    elif case == "exists":
        out.write_bytes(b"keep me")
        needle = "--force"
    elif case == "same":
        out, needle = cnn_onnx, "same file"
        extra = ["--force"]
    elif case == "bad_ext":
        out, needle = tmp_path / "out.weird", "target format"
    elif case == "bad_shape":
        extra, needle = ["--input-shape", "x:1x3"], "does not fit"
    elif case == "unknown_exporter":
        src = "deepshrink.examples:DigitsMLP"
        extra, needle = ["--input-shape", "x:1x64", "--exporter", "magic"], "unknown exporter"
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, _, err = _run(capsys, "convert", src, out, *extra)
    assert rc == 2
    _one_line_error(err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing left over
    if case == "exists":
        assert out.read_bytes() == b"keep me"


def test_parity_failure_exits_3_with_report_and_writes_nothing(tmp_path, capsys, cnn_onnx):
    out = tmp_path / "strict.onnx"
    rc, _, err = _run(capsys, "convert", cnn_onnx, out, "--opset", "19", "--atol", "0", "--rtol", "0")
    # an opset conversion is numerically exact for this graph, so zero tolerance still passes
    assert rc == 0, err
    rc, _, err = _run(capsys, "convert", "deepshrink.examples:trained_digits_cnn", tmp_path / "cnn.onnx",
                      "--input-shape", "x:1x1x8x8", "--atol", "0", "--rtol", "0")
    assert rc == 3 and "parity FAILED" in err and "max-abs" in err and "Traceback" not in err
    assert not (tmp_path / "cnn.onnx").exists() and not list(tmp_path.glob(".*"))


def test_bench_bad_data(tmp_path, capsys, cnn_onnx):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    rc, _, err = _run(capsys, "bench", cnn_onnx, "--data", tmp_path / "d.npz")
    assert rc == 2
    _one_line_error(err, "the model wants x: float32[batchx1x8x8]")
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 1, 8, 8), np.float32))
    rc, _, err = _run(capsys, "bench", cnn_onnx, "--data", tmp_path / "e.npz")
    assert rc == 2
    _one_line_error(err, "empty")


def test_factory_with_nan_weights(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from deepshrink.examples import DigitsMLP

    state = {k: v.clone() for k, v in DigitsMLP().state_dict().items()}
    state["fc1.bias"][3] = float("nan")
    save_file(state, str(tmp_path / "w.safetensors"))
    rc, _, err = _run(capsys, "convert", "deepshrink.examples:DigitsMLP", tmp_path / "m.onnx",
                      "--weights", tmp_path / "w.safetensors", "--input-shape", "x:1x64")
    assert rc == 2
    _one_line_error(err, "fc1.bias")
    assert not (tmp_path / "m.onnx").exists()
    del torch


def test_demo_runs_offline_as_a_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "deepshrink.cli", "demo", "--out", str(tmp_path / "demo"), "--json"],
                          capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                                            "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["parity"]["ok"] and summary["parity"]["max_abs"] < 1e-4
    rows = summary["bench"]["rows"]
    assert rows[0]["accuracy"] > 0.97 and abs(rows[1]["accuracy"] - rows[0]["accuracy"]) < 1e-9  # 0.992 seen
    assert (tmp_path / "demo" / "digits_cnn.onnx").is_file()
    names = [r["name"] for r in rows]
    assert names == ["PyTorch fp32", "ONNX fp32", "ONNX pruned 50%", "ONNX pruned + int8"]
    assert rows[0]["params"] > 3.5 * rows[2]["params"]  # the caller's model is untouched: 38,122 vs 9,772
    assert rows[3]["accuracy"] > rows[0]["accuracy"] - 0.03  # 0.984 vs 0.992 seen
    assert rows[3]["size_bytes"] < 0.25 * rows[1]["size_bytes"]  # 27.8 KB vs 162.6 KB seen
