"""``deepshrink quantize`` through the CLI: a good run writes the file and measures it; bad
input is one line on stderr, exit status 2, and no output file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from deepshrink.cli._app import run_app
from deepshrink.convert.export import export_onnx

# Thresholds on figures that depend on the trained models, derived by benchmarks/seed_spread.py (8 seeds, see
# tests/README.md): upper bound max(mean + 3 std, worst + margin), lower bound min(mean - 3 std, worst - margin).
# (the CLI measures on 256 test digits: the margin is 2/256)
INT8_DROP = 0.0079  # CNN int8-static accuracy drop, 8 seeds: -0.0039-0.0000
CLI_BC_COS_GAP_RATIO = 0.556  # W3A8 (1 - cosine to fp32), bias-corrected / plain, 8 seeds: 0.220-0.483
CLI_BC_ACC = 0.945  # W3A8 bias-corrected accuracy, 8 seeds: 0.961-0.992 (mean 0.980, std 0.011)


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory, digits, digits_mlp):
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    export_onnx(digits_mlp, {"x": digits.flat().x_val[:2]}, path)
    return path


@pytest.fixture(scope="module")
def calib_npz(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("data") / "calib.npz"
    np.savez(path, x=digits.flat().x_val[:64], labels=digits.y_val[:64])
    return path


def _bad(capsys, argv, out, needle):
    rc = run_app(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert not out.exists() and not any(p.name.startswith(f".{out.name}") for p in out.parent.iterdir())
    assert needle in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err


@pytest.mark.trains
def test_static_int8_cli_writes_and_measures(cnn_onnx, tmp_path, capsys, measured):
    out = tmp_path / "cnn.int8.onnx"
    rc = run_app(["quantize", str(cnn_onnx), "-o", str(out), "--scheme", "int8-static", "--data", "digits",
                  "--repeats", "3", "--threads", "1", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert rc == 0 and out.exists()
    assert payload["bench"]["threads"] == 1  # the table times at the thread count asked for (always 2 before)
    rows = payload["bench"]["rows"]
    assert len(rows) == 2 and rows[1]["size_bytes"] < 0.5 * rows[0]["size_bytes"]  # 0.3x seen
    assert measured("CLI int8-static: accuracy drop", rows[0]["accuracy"] - rows[1]["accuracy"], "upper",
                    margin=2 / 256) <= INT8_DROP
    from deepshrink.quantize.onnx.backend import integer_op_counts

    assert integer_op_counts(out).get("QLinearConv", 0) >= 4


def test_auto_cli_prints_kept_layers(mlp_onnx, calib_npz, tmp_path, capsys):
    out = tmp_path / "mlp.auto.onnx"
    rc = run_app(["quantize", str(mlp_onnx), "-o", str(out), "--scheme", "auto", "--data", str(calib_npz),
                  "--target-cos", "0.999999", "--max-kept", "1", "--no-bench", "--allow-slower", "--strategy", "layouts"])
    text = capsys.readouterr().out
    assert rc == 0 and out.exists()
    assert "kept float:" in text and "sensitivity" in text and "trial" in text


@pytest.mark.parametrize("extra,needle", [
    (["--scheme", "kmeans", "--bits", "9"], "--bits 9 is outside 2–8"),
    (["--scheme", "log2", "--bits", "1"], "--bits 1 is outside 2–8"),
    (["--scheme", "int4-weight", "--group-size", "32"], "does not divide the input dimension 300"),
    (["--scheme", "int4-weight", "--group-size", "48"], "power of two"),
    (["--scheme", "int8-dynamic", "--exclude", "nothing_like_this*"], "matches no quantizable layer"),
    (["--scheme", "int8-static", "--include", "conv*"], "matches no quantizable layer"),
    (["--scheme", "int8-fancy"], "--scheme 'int8-fancy'"),
    (["--scheme", "int8-static", "--observer", "median"], "observer"),
    (["--scheme", "int8-dynamic", "--smooth", "1.5"], "--smooth 1.5"),
    (["--scheme", "auto", "--target-cos", "1.5"], "target_cos"),
    (["--scheme", "auto", "--target-cos", "0.999999", "--max-kept", "0", "--strategy", "layouts"], "could not reach"),
    (["--scheme", "auto", "--max-kept", "0.3"], "--max-kept applies to auto's --strategy layouts"),
    (["--scheme", "auto", "--exclude", "fc*"], "--exclude applies to auto's --strategy layouts"),
    (["--scheme", "auto", "--strategy", "fancy"], "--strategy 'fancy': use search or layouts"),
    (["--scheme", "auto", "--strategy", "layouts", "--trials", "4"], "--trials is the number of candidates"),
    (["--scheme", "auto", "--trials", "0"], "trials"),
    (["--scheme", "int8-dynamic", "--strategy", "layouts"], "--strategy does not apply to --scheme int8-dynamic"),
    (["--scheme", "int8-dynamic", "--threads", "0"], "--threads must be at least 1"),
])
def test_bad_options(mlp_onnx, calib_npz, tmp_path, capsys, extra, needle):
    out = tmp_path / "q.onnx"
    _bad(capsys, ["quantize", str(mlp_onnx), "-o", str(out), "--data", str(calib_npz), *extra], out, needle)


@pytest.mark.parametrize("extra,needle", [
    (["--scheme", "int8-dynamic", "--observer", "mse"],
     "--observer does not apply to --scheme int8-dynamic (int8 weights, activations scaled at run time: no calibration)"),
    (["--scheme", "int8-static", "--group-size", "64"], "--group-size does not apply to --scheme int8-static"),
    (["--scheme", "int8-dynamic", "--method", "gptq"], "--method does not apply to --scheme int8-dynamic"),
    (["--scheme", "int4-weight", "--per-tensor"], "--per-tensor does not apply to --scheme int4-weight"),
    (["--scheme", "log2", "--smooth", "0.5"], "--smooth does not apply to --scheme log2"),
    (["--scheme", "kmeans", "--calibration-size", "8"], "--calibration-size does not apply to --scheme kmeans"),
    (["--scheme", "int8-static", "--target-cos", "0.99"], "it is for auto"),
    (["--scheme", "int8-dynamic", "--no-bias-correction"], "--no-bias-correction does not apply"),
])
def test_options_the_scheme_does_not_use_are_refused(mlp_onnx, calib_npz, tmp_path, capsys, extra, needle):
    out = tmp_path / "q.onnx"
    _bad(capsys, ["quantize", str(mlp_onnx), "-o", str(out), "--data", str(calib_npz), "--no-bench", *extra],
         out, needle)


def test_scheme_options_at_their_defaults_or_for_their_scheme_pass(mlp_onnx, calib_npz, tmp_path, capsys):
    from deepshrink.cli._options import option_param
    from deepshrink.cli.quantize_cmd import SCHEME_OPTIONS, build_config

    out = tmp_path / "q.onnx"
    rc = run_app(["quantize", str(mlp_onnx), "-o", str(out), "--scheme", "int8-static", "--observer", "mse",
                  "--per-tensor", "--calibration-size", "16", "--data", str(calib_npz), "--no-bench"])
    assert rc == 0 and out.exists(), capsys.readouterr().err
    defaults = {"bits": None, "group_size": 128, "method": "rtn", "observer": "percentile", "per_channel": None,
                "smooth": None, "include": [], "exclude": [], "target_cos": 0.997, "min_cos": 0.99,
                "calibration_size": 64}
    cfg = build_config("ptq", **defaults, given={"--observer": "--observer"})
    assert cfg.observer == "percentile"  # --observer reaches ptq's activation quantizers
    assert all(option_param(o) in {*defaults, "max_kept", "bias_correction", "strategy", "trials"} for o in SCHEME_OPTIONS)


def test_bad_data(mlp_onnx, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((8, 7), np.float32))
    _bad(capsys, ["quantize", str(mlp_onnx), "-o", str(out), "--scheme", "int8-static", "--data", str(wrong)],
         out, "the model wants")
    renamed = tmp_path / "renamed.npz"
    np.savez(renamed, a=np.zeros((8, 64), np.float32), b=np.zeros((8, 64), np.float32))
    _bad(capsys, ["quantize", str(mlp_onnx), "-o", str(out), "--scheme", "int8-static", "--data", str(renamed)],
         out, "does not match the model")
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 64), np.float32))
    _bad(capsys, ["quantize", str(mlp_onnx), "-o", str(out), "--scheme", "int8-static", "--data", str(empty)],
         out, "empty")
    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.full((4, 64), np.nan, np.float32))
    _bad(capsys, ["quantize", str(mlp_onnx), "-o", str(out), "--scheme", "int8-static", "--data", str(nan)],
         out, "NaN")
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes((tmp_path / "wrong.npz").read_bytes()[:40])
    _bad(capsys, ["quantize", str(mlp_onnx), "-o", str(out), "--scheme", "int8-static", "--data", str(truncated)],
         out, "cannot be read")
    _bad(capsys, ["quantize", str(mlp_onnx), "-o", str(out), "--scheme", "int8-static"], out, "needs calibration data")
    folder = tmp_path / "adir.npz"
    folder.mkdir()
    _bad(capsys, ["quantize", str(mlp_onnx), "-o", str(out), "--scheme", "int8-static", "--data", str(folder)],
         out, "adir.npz is a directory")


def test_a_lone_array_named_otherwise_is_used_and_said(mlp_onnx, tmp_path, capsys, caplog):
    out = tmp_path / "q.onnx"
    data = tmp_path / "wrong_key.npz"
    np.savez(data, not_the_input=np.random.default_rng(0).random((16, 64), dtype=np.float32))
    with caplog.at_level("WARNING", logger="deepshrink"):
        rc = run_app(["quantize", str(mlp_onnx), "-o", str(out), "--scheme", "int8-static", "--data", str(data),
                      "--no-bench"])
    assert rc == 0 and out.exists()
    assert any("'not_the_input' is used as the model's input 'x'" in r.getMessage() for r in caplog.records)


def test_bad_files(mlp_onnx, calib_npz, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    _bad(capsys, ["quantize", str(tmp_path / "missing.onnx"), "-o", str(out)], out, "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(mlp_onnx.read_bytes()[:100])
    _bad(capsys, ["quantize", str(broken), "-o", str(out)], out, "broken.onnx")
    _bad(capsys, ["quantize", str(mlp_onnx), "-o", str(tmp_path / "q.pt2")], tmp_path / "q.pt2", ".onnx")
    existing = tmp_path / "exists.onnx"
    existing.write_bytes(b"keep me")
    rc = run_app(["quantize", str(mlp_onnx), "-o", str(existing), "--data", str(calib_npz)])
    assert rc == 2 and existing.read_bytes() == b"keep me" and "--force" in capsys.readouterr().err
    folder = tmp_path / "out.onnx"
    folder.mkdir()
    _bad(capsys, ["quantize", str(mlp_onnx), "-o", str(folder), "--force", "--no-bench"], folder / "q.onnx",
         "is a directory")
    assert folder.is_dir() and not any(folder.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.onnx")]  # no temporary file beside it


@pytest.mark.trains
def test_ptq_cli_low_bit_with_bias_correction(tmp_path, capsys, digits, seed, measured):
    """--scheme ptq: 3-bit weights of a torch model, calibrated and bias-corrected, deployed as QDQ."""
    from safetensors.torch import save_file

    from deepshrink.examples import trained_digits_cnn
    from deepshrink.quantize.onnx.backend import integer_op_counts

    w = tmp_path / "cnn.safetensors"
    save_file(trained_digits_cnn(seed + 2).state_dict(), str(w))
    acc, cos = {}, {}
    for flag in ("--bias-correction", "--no-bias-correction"):
        out = tmp_path / f"cnn{flag}.onnx"
        rc = run_app(["quantize", "deepshrink.examples:DigitsCNN", "-w", str(w), "--input-shape", "x:1x1x8x8",
                      "-o", str(out), "--scheme", "ptq", "--bits", "3", "--data", "digits:train", flag,
                      "--eval-data", "digits:test", "--repeats", "2", "--json", "--allow-degraded"])
        payload = json.loads(capsys.readouterr().out)  # (plain W3A8 loses > 5 points: the gate would refuse it)
        assert rc == 0 and out.exists()
        assert integer_op_counts(out).get("QLinearConv", 0) >= 4
        acc[flag] = payload["bench"]["rows"][1]["accuracy"]
        cos[flag] = payload["bench"]["rows"][1]["cos_mean"]
        assert ("bias_correction" in payload["report"]) == (flag == "--bias-correction")
    # (the accuracy gain alone spreads too widely to bound, 8 seeds: 0.000-0.125; the fidelity gap does not)
    ratio = measured("CLI W3A8: 1 - cosine to fp32, corrected / plain", (1 - cos["--bias-correction"])
                     / (1 - cos["--no-bias-correction"]), "upper", margin=0.05)
    after = measured("CLI W3A8 bias-corrected: accuracy", acc["--bias-correction"], "lower", margin=2 / 256)
    assert ratio < CLI_BC_COS_GAP_RATIO and after > CLI_BC_ACC


def test_ptq_cli_on_an_onnx_model(cnn_onnx, tmp_path, capsys):
    """--scheme ptq calibrates an ONNX model's PyTorch import (it was refused; a recipe's ptq step took it) and
    writes QDQ int8 under the file's own input and output names."""
    from deepshrink.quantize.onnx.backend import integer_op_counts

    out = tmp_path / "w4.onnx"
    rc = run_app(["quantize", str(cnn_onnx), "-o", str(out), "--scheme", "ptq", "--bits", "4", "--data",
                  "digits:train", "--eval-data", "digits:test", "--repeats", "2", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert rc == 0 and integer_op_counts(out).get("QLinearConv", 0) >= 4
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["x"] and [o.name for o in graph.output] == ["output"]
    # W4A8 of the digits CNN through its import, 3 training seeds: 0.992-1.000 of the test digits (cosine 0.996-0.998)
    assert payload["bench"]["rows"][1]["accuracy"] > 0.95


def test_ptq_finds_a_linear_exported_as_a_matmul_on_its_transposed_weight(tmp_path, capsys):
    """Trial u (attacut): a Linear on 3-D inputs exports as a MatMul on its transposed weight under a new name
    ('val_53'); --scheme ptq of that ONNX file stopped with "QAT layer 'val_53': its weight is not found". The weight is
    found by its values, with its output channels on axis 1."""
    import numpy as np
    import torch

    import deepshrink as ds
    from deepshrink.quantize.onnx.backend import integer_op_counts

    class PerStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 1)

        def forward(self, x):  # (N, T, 8) -> (N, T)
            return self.fc2(torch.relu(self.fc1(x))).squeeze(-1)

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((64, 6, 8)).astype(np.float32)
    ds.convert(ds.load(PerStep().eval(), data={"x": x}), tmp_path / "m.onnx")
    assert any(n.op_type == "MatMul" for n in onnx.load(str(tmp_path / "m.onnx")).graph.node)
    np.savez(tmp_path / "d.npz", x=x)
    out = tmp_path / "q.onnx"
    rc = run_app(["quantize", str(tmp_path / "m.onnx"), "-o", str(out), "--scheme", "ptq", "--data",
                  str(tmp_path / "d.npz"), "--repeats", "1", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert rc == 0 and sum(integer_op_counts(out).values()) >= 2
    # W4A8 of two small layers, seeded weights and deterministic calibration (no training): cosine 0.9974
    assert payload["bench"]["rows"][1]["cos_mean"] > 0.99


def test_ptq_cli_bad_input(cnn_onnx, tmp_path, capsys):
    out = tmp_path / "x.onnx"
    _bad(capsys, ["quantize", str(cnn_onnx), "-o", str(out), "--scheme", "int8-static", "--bias-correction",
                  "--data", "digits"], out, "--bias-correction does not apply to --scheme int8-static")


@pytest.mark.parametrize("select", [["--include", "fc1"], ["--exclude", "fc2"]])
def test_layers_kept_float_on_purpose_are_not_warned_about(mlp_onnx, tmp_path, capsys, select):
    """`--include fc1` keeps fc2 and fc3 float because the user said so: the "stayed float" warning is for what a
    scheme leaves float by itself (a new user's `--include` printed every other layer as a warning)."""
    out = tmp_path / "q.onnx"
    rc = run_app(["quantize", str(mlp_onnx), "-o", str(out), "--scheme", "int8-dynamic", "--per-channel",
                  "--data", "digits", "--repeats", "1", *select])
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert rc == 0 and out.exists()
    assert "stayed float" not in text, text
    from deepshrink.quantize.api import float_weights

    left = float_weights(onnx.load(str(mlp_onnx)), onnx.load(str(out)))
    assert left["share"] > 0.1  # fc2 (or fc2 and fc3) is float and above the warning's 10 % all the same


def test_stayed_float_says_why_for_convolutions_under_int8_dynamic(cnn_onnx, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    rc = run_app(["quantize", str(cnn_onnx), "-o", str(out), "--scheme", "int8-dynamic", "--data", "digits",
                  "--repeats", "1"])
    text = capsys.readouterr().err  # warnings go to stderr
    assert rc == 0 and "warning: stayed float: Conv" in text
    assert "convolutions need --scheme int8-static" in " ".join(text.split())
