"""``deepshrink prune`` through the CLI: a structured run measured on the written ONNX file,
and bad input (out-of-range sparsity, a protect pattern matching nothing, data that does
not fit the model, NaN weights, an existing output) — one line, exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from deepshrink.cli._app import run_app
from deepshrink.examples import trained_digits_cnn, trained_digits_mlp

MLP = "deepshrink.examples:DigitsMLP"
CNN = "deepshrink.examples:DigitsCNN"

# Thresholds on figures that depend on the trained models, derived by benchmarks/seed_spread.py (8 seeds, see
# tests/README.md): upper bound max(mean + 3 std, worst + margin), lower bound min(mean - 3 std, worst - margin).
# 50% of the channels with only 2 fine-tune epochs: 8 seeds 0.004-0.051 (mean 0.031, std 0.016)
DROP_STRUCTURED_CLI = 0.0795


@pytest.fixture(scope="module")
def weights(tmp_path_factory, seed) -> dict[str, str]:
    d = tmp_path_factory.mktemp("w")
    out = {}
    for name, model in (("mlp", trained_digits_mlp(seed)), ("cnn", trained_digits_cnn(seed))):
        path = d / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        out[name] = str(path)
    return out


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


@pytest.mark.trains
def test_structured_to_onnx_with_table(weights, tmp_path, capsys, measured):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "cnn.pruned.onnx"
    rc = run_app(["prune", CNN, "-w", weights["cnn"], "-o", str(out), "--method", "structured", "--sparsity", "0.5",
                  "--data", "digits:train", "--finetune-epochs", "2", "--eval-data", "digits:test",
                  "--repeats", "3", "--threads", "1", "--json"])
    assert rc == 0, _err(capsys)
    res = json.loads(capsys.readouterr().out)
    rep, rows = res["report"], res["bench"]["rows"]
    assert res["bench"]["threads"] == 1  # the table times at the thread count asked for (always 2 before)
    first, last = rep["finetune_loss"]
    assert last < first and rep["batchnorm_recalibrated"] == 0  # DigitsCNN's BatchNorm follows training itself
    drop = measured("accuracy drop after 2 fine-tune epochs", rows[0]["accuracy"] - rows[1]["accuracy"], "upper",
                    margin=2 / 256)  # bench measures 256 test digits
    assert rep["params_after"] / rep["params_before"] < 0.27  # 0.258 seen
    assert {g["name"]: g["kept"] for g in rep["groups"]} == {"stem.0": 16, "block_conv1": 16, "down.0": 32}
    assert rows[0]["runtime"] == rows[1]["runtime"] == "onnxruntime"  # same runtime before/after
    assert rows[1]["params"] < 0.3 * rows[0]["params"]
    assert drop < DROP_STRUCTURED_CLI
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (3, 10)


def test_fine_tune_in_bfloat16_mixed_precision(weights, tmp_path, capsys):
    """`--mixed-precision bf16` reaches the fine-tune (the Trainer's autocast): the report and summary say so, and
    the fine-tuned weights differ from a float32 fine-tune's from the same seed (the forward passes rounded)."""
    outs = {}
    for mode in ("no", "BF16"):
        out = tmp_path / f"{mode}.safetensors"
        rc = run_app(["prune", MLP, "-w", weights["mlp"], "-o", str(out), "--sparsity", "0.5", "--data",
                      "digits:train", "--finetune-epochs", "1", "--mixed-precision", mode, "--repeats", "1", "--json"])
        assert rc == 0, _err(capsys)
        res = json.loads(capsys.readouterr().out)
        assert res["report"]["mixed_precision"] == mode.lower()
        outs[mode] = out
    from safetensors.numpy import load_file

    a, b = load_file(str(outs["no"])), load_file(str(outs["BF16"]))
    assert a.keys() == b.keys()
    assert any(not np.array_equal(a[k], b[k]) for k in a)  # bfloat16 forward passes: another trajectory
    assert all(np.array_equal(a[k] == 0, b[k] == 0) for k in a)  # the same mask: pruning ran before training


def test_seed_sets_the_fine_tune(weights, tmp_path, capsys):
    """`--seed`: the same seed writes the same weights, another seed another fine-tune (the data order)."""
    from safetensors.numpy import load_file

    outs = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        outs[name] = tmp_path / f"{name}.safetensors"
        rc = run_app(["prune", MLP, "-w", weights["mlp"], "-o", str(outs[name]), "--sparsity", "0.5", "--data",
                      "digits:train", "--finetune-epochs", "1", "--seed", seed, "--repeats", "1", "--json"])
        assert rc == 0, _err(capsys)
        capsys.readouterr()
    a, b, c = (load_file(str(outs[k])) for k in "abc")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_fine_tune_on_the_unpruned_model_s_soft_targets(weights, tmp_path, capsys):
    """`--distill --kd-alpha 1`: the fine-tune learns from the unpruned model's outputs alone, so shuffled labels give
    the same weights as the true ones, while a labels-only fine-tune follows the labels (other weights); the summary
    says what it trained on."""
    from safetensors.numpy import load_file

    from deepshrink.examples.digits import digits_data

    d = digits_data()
    shuffled = np.random.default_rng(0).permutation(d.y_train)
    assert (shuffled != d.y_train).mean() > 0.8
    got = {}
    for labels_name, labels in (("true", d.y_train), ("shuffled", shuffled)):
        data = tmp_path / f"{labels_name}.npz"
        np.savez(data, x=d.x_train, labels=labels)
        for how, extra in (("kd", ["--distill", "--kd-alpha", "1", "--lr-schedule", "cosine"]), ("ce", [])):
            out = tmp_path / f"{labels_name}-{how}.safetensors"
            rc = run_app(["prune", MLP, "-w", weights["mlp"], "-o", str(out), "--sparsity", "0.5", "--data", str(data),
                          "--finetune-epochs", "1", "--repeats", "1", "--allow-degraded", *extra])
            text = capsys.readouterr().out
            assert rc == 0, _err(capsys)
            if how == "kd":
                assert ("fine-tuned 1 epoch(s) on the unpruned model's soft targets (temperature 4, alpha 1), "
                        "cosine learning-rate decay") in text
            got[labels_name, how] = load_file(str(out))
    same = got["true", "kd"], got["shuffled", "kd"]
    assert all(np.array_equal(same[0][k], same[1][k]) for k in same[0])
    ce = got["true", "ce"], got["shuffled", "ce"]
    assert any(not np.allclose(ce[0][k], ce[1][k], atol=1e-3) for k in ce[0])
    assert any(not np.allclose(same[0][k], ce[0][k], atol=1e-3) for k in ce[0])


def test_soft_targets_alone_fine_tune_on_unlabelled_data(weights, tmp_path, capsys):
    """`--distill --kd-alpha 1` reads no labels, so unlabelled samples are enough; any other alpha needs labels, and
    the refusal names the way out."""
    from deepshrink.examples.digits import digits_data

    data = tmp_path / "unlabelled.npz"
    np.savez(data, x=digits_data().x_train[:256])
    base = ["prune", MLP, "-w", weights["mlp"], "--sparsity", "0.5", "--data", str(data), "--finetune-epochs", "1",
            "--repeats", "1", "--allow-degraded", "--json"]
    rc = run_app([*base, "-o", str(tmp_path / "half.onnx"), "--distill"])
    err = _err(capsys)
    assert rc == 2 and "unlabelled.npz has none); or fine-tune on the unpruned model" in err and "--kd-alpha 1" in err, err
    assert not (tmp_path / "half.onnx").exists()
    rc = run_app([*base, "-o", str(tmp_path / "soft.onnx"), "--distill", "--kd-alpha", "1"])
    assert rc == 0, _err(capsys)
    report = json.loads(capsys.readouterr().out)["report"]
    assert report["distilled"] == {"temperature": 4.0, "alpha": 1.0} and report["finetune_loss"][1] < report["finetune_loss"][0]


def test_structured_round_to_keeps_multiples_of_n(weights, tmp_path, capsys):
    """--round-to 8: 40% of 32 and 64 channels removed would keep 19 and 38; rounded up to 24 and 40."""
    out = tmp_path / "cnn.pt2"
    rc = run_app(["prune", CNN, "-w", weights["cnn"], "-o", str(out), "--method", "structured", "--sparsity", "0.4",
                  "--round-to", "8", "--data", "digits:val", "--repeats", "1", "--json", "--allow-degraded"])
    assert rc == 0, _err(capsys)
    kept = {g["name"]: g["kept"] for g in json.loads(capsys.readouterr().out)["report"]["groups"]}
    assert kept == {"stem.0": 24, "block_conv1": 24, "down.0": 40}


def test_magnitude_to_safetensors(weights, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "mlp.sparse.safetensors"
    rc = run_app(["prune", MLP, "-w", weights["mlp"], "-o", str(out), "--sparsity", "0.8", "--scope", "global",
                  "--data", "digits:val", "--repeats", "2", "--json", "--allow-degraded"])  # 0.8, no fine-tune
    assert rc == 0, _err(capsys)
    state = load_file(str(out))
    w = torch.cat([state[f"fc{i}.weight"].flatten() for i in (1, 2, 3)])
    assert float((w == 0).float().mean()) == pytest.approx(0.8, abs=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.0"], "sparsity"),
    (["--sparsity", "-0.2"], "sparsity"),
    (["--method", "structured", "--sparsity", "1.5"], "ratio"),
    (["--sparsity", "0.5", "--protect", "classifier.*"], "matches no module"),
    (["--method", "structured", "--sparsity", "0.5", "--protect", "nothing_here"], "matches no module"),
    (["--method", "wavelet", "--sparsity", "0.5"], "--method"),
    (["--method", "nm", "--nm", "4:4"], "n must be < m"),
    (["--method", "gradual"], "--sparsity"),
    (["--sparsity", "0.5", "--finetune-epochs", "1"], "labelled data"),
    (["--sparsity", "0.5", "--importance", "l1"], "--importance does not apply to --method magnitude"),
    (["--method", "nm", "--scope", "global"], "--scope does not apply to --method nm"),
    (["--method", "structured", "--sparsity", "0.5", "--nm", "1:4"], "--nm does not apply to --method structured"),
    (["--method", "gradual", "--sparsity", "0.5", "--threshold", "0.1"], "it is for magnitude"),
    (["--sparsity", "0.5", "--heads-ratio", "0.5"], "it is for structured"),
    (["--method", "structured", "--sparsity", "0.5", "--heads-ratio", "0.5"], "the model has no attention heads"),
    (["--method", "structured", "--sparsity", "0.5", "--ffn-ratio", "0.5"], "the model has no transformer FFN"),
    (["--sparsity", "0.5", "--round-to", "8"], "--round-to does not apply to --method magnitude"),
    (["--method", "structured", "--sparsity", "0.5", "--round-to", "0"], "round_to (--round-to): "),
    (["--method", "structured", "--sparsity", "0.5", "--heads-ratio", "1.0"], "heads_ratio (--heads-ratio): "),
    (["--sparsity", "0.5", "--mixed-precision", "bf16"], "--mixed-precision applies to training"),
    (["--sparsity", "0.5", "--distill"], "--distill applies to fine-tuning"),
    (["--sparsity", "0.5", "--lr-schedule", "cosine"], "--lr-schedule applies to fine-tuning"),
    (["--sparsity", "0.5", "--data", "digits:train", "--finetune-epochs", "1", "--kd-alpha", "0.9"],
     "--kd-temperature and --kd-alpha apply only with --distill"),
    (["--sparsity", "0.5", "--data", "digits:train", "--finetune-epochs", "1", "--distill", "--kd-alpha", "1.5"],
     "--kd-alpha 1.5: the soft targets' weight must be between 0 and 1"),
    (["--sparsity", "0.5", "--data", "digits:train", "--finetune-epochs", "1", "--distill", "--kd-temperature", "inf"],
     "--kd-temperature inf: the softmax temperature must be a finite number > 0"),
    (["--sparsity", "0.5", "--data", "digits:train", "--finetune-epochs", "1", "--distill", "--kd-temperature", "0"],
     "--kd-temperature 0: the softmax temperature"),
    (["--sparsity", "0.5", "--data", "digits:train", "--finetune-epochs", "1", "--lr-schedule", "step"],
     "--lr-schedule 'step': use constant, cosine or linear"),
    (["--sparsity", "0.5", "--data", "digits:train", "--finetune-epochs", "1", "--mixed-precision", "fp16"],
     "use no (float32) or bf16"),
])
def test_bad_options(weights, tmp_path, capsys, args, message):
    out = tmp_path / "out.onnx"
    rc = run_app(["prune", MLP, "-w", weights["mlp"], "-o", str(out), *args])
    err = _err(capsys)
    assert rc == 2, err
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_data_mismatched_to_model(weights, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((16, 3, 5), np.float32), labels=np.zeros(16, np.int64))
    out = tmp_path / "out.onnx"
    rc = run_app(["prune", MLP, "-w", weights["mlp"], "-o", str(out), "--sparsity", "0.5", "--data", str(bad),
                  "--finetune-epochs", "1"])
    err = _err(capsys)
    assert rc == 2 and ("failed on inputs" in err or "does not fit" in err) and "(2, 3, 5)" in err, err
    assert not out.exists()
    out2 = tmp_path / "out2.pt2"
    rc = run_app(["prune", CNN, "-w", weights["cnn"], "-o", str(out2), "--method", "structured", "--sparsity", "0.5",
                  "--data", str(bad)])
    err = _err(capsys)
    assert rc == 2 and "channels" in err, err
    assert not out2.exists()


def test_labels_out_of_range(weights, tmp_path, capsys):
    bad = tmp_path / "labels.npz"
    np.savez(bad, x=np.zeros((16, 64), np.float32), labels=np.full(16, 12, np.int64))
    out = tmp_path / "out.safetensors"
    rc = run_app(["prune", MLP, "-w", weights["mlp"], "-o", str(out), "--sparsity", "0.5", "--data", str(bad),
                  "--finetune-epochs", "1"])
    err = _err(capsys)
    assert rc == 2 and "labels run from 12 to 12, but the model's output has 10 classes" in err, err  # before pruning
    assert not out.exists()


def test_nan_weights_and_existing_output(weights, tmp_path, capsys):
    from safetensors.torch import load_file

    state = load_file(weights["mlp"])
    state["fc1.weight"][3, 3] = float("nan")
    nan_w = tmp_path / "nan.safetensors"
    save_file(state, str(nan_w))
    out = tmp_path / "out.safetensors"
    assert run_app(["prune", MLP, "-w", str(nan_w), "-o", str(out), "--sparsity", "0.5"]) == 2
    assert "NaN" in _err(capsys) and not out.exists()
    out.write_bytes(b"keep")
    assert run_app(["prune", MLP, "-w", weights["mlp"], "-o", str(out), "--sparsity", "0.5"]) == 2
    assert "already exists" in _err(capsys) and out.read_bytes() == b"keep"


def test_structured_pruning_to_safetensors_loads_back_on_its_source(weights, tmp_path, capsys):
    """A structurally pruned state dict is written as weights for the source's own architecture and read back
    with --weights on it (the layers re-shaped to the file's); an ONNX source has no architecture to read it on."""
    import deepshrink as ds

    s_out = tmp_path / "s.safetensors"
    rc = run_app(["prune", CNN, "-w", weights["cnn"], "-o", str(s_out), "--method", "structured", "--sparsity", "0.5",
                  "--input-shape", "x:1x1x8x8", "--repeats", "2", "--allow-degraded", "--json"])  # one-shot 0.5 without fine-tuning may degrade
    assert rc == 0, _err(capsys)
    rep = json.loads(capsys.readouterr().out)["report"]
    h = ds.load(CNN, weights=str(s_out), input_shapes=["x:1x1x8x8"])
    assert sum(p.numel() for p in h.model.parameters()) == rep["params_after"] < 0.3 * rep["params_before"]
    assert h.model.stem[0].out_channels == 16  # as the report's groups: stem.0 32 → 16
    onnx_src = tmp_path / "cnn.onnx"
    ds.save(ds.load(CNN, weights=weights["cnn"], input_shapes=["x:1x1x8x8"]), onnx_src)
    out2 = tmp_path / "o.safetensors"
    assert run_app(["prune", str(onnx_src), "-o", str(out2), "--method", "structured", "--sparsity", "0.5"]) == 2
    assert "write .onnx for" in _err(capsys) and not out2.exists()


def test_pt2_input_one_shot_and_refusals(tmp_path, capsys):
    from deepshrink.convert.writers import save
    from deepshrink.loading import load

    src = tmp_path / "mlp.pt2"
    save(load(trained_digits_mlp(0), input_shapes={"x": (2, 1, 8, 8)}), src)
    out = tmp_path / "mlp.sparse.pt2"
    rc = run_app(["prune", str(src), "-o", str(out), "--sparsity", "0.9", "--scope", "global", "--data", "digits:val",
                  "--repeats", "2", "--json", "--allow-degraded"])  # 0.9 without fine-tune loses > 5 points
    assert rc == 0, _err(capsys)
    capsys.readouterr()
    w = [p for p in load(out).model.parameters() if p.dim() >= 2]
    assert sum(int((p == 0).sum()) for p in w) / sum(p.numel() for p in w) == pytest.approx(0.9, abs=1e-4)
    for extra, message in ((["--method", "structured", "--sparsity", "0.5"], "package.module:factory"),
                           (["--sparsity", "0.5", "--data", "digits:train", "--finetune-epochs", "1"], ".pt2")):
        bad = tmp_path / "bad.pt2"
        assert run_app(["prune", str(src), "-o", str(bad), *extra]) == 2
        assert message in _err(capsys) and not bad.exists()


def test_structured_on_an_onnx_file(cnn_onnx, tmp_path, capsys):
    """An ONNX model (what TFLite, Keras and Paddle users have) is pruned structurally through its PyTorch import:
    the channel groups are found through the import's run-time helpers (the residual Add couples the stem's and
    the block's channels), and the written ONNX keeps the file's input and output names. (Before: refused, "is
    an ONNX model; pruning needs the PyTorch model".)"""
    import onnx

    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "cnn.pruned.onnx"
    # without fine-tuning the gate refuses (accuracy 100 % → ~11 %); what was pruned is printed before the refusal
    assert run_app(["prune", str(cnn_onnx), "-o", str(out), "--method", "structured", "--sparsity", "0.5",
                    "--data", "digits:val", "--repeats", "1"]) == 3
    cap = capsys.readouterr()
    assert "structured: parameters 37,962 → 9,770" in cap.out and "degraded" in cap.err and not out.exists()
    rc = run_app(["prune", str(cnn_onnx), "-o", str(out), "--method", "structured", "--sparsity", "0.5",
                  "--data", "digits:train", "--finetune-epochs", "1", "--repeats", "2", "--json", "--allow-degraded"])
    assert rc == 0, _err(capsys)
    res = json.loads(capsys.readouterr().out)
    rep = res["report"]
    assert sorted(g["kept"] for g in rep["groups"]) == [16, 16, 32] and len(rep["groups"]) == 3
    assert rep["params_after"] / rep["params_before"] < 0.27  # as the PyTorch source's 0.258
    first, last = rep["finetune_loss"]
    assert last < first
    src, pruned = onnx.load(cnn_onnx), onnx.load(out)
    assert [i.name for i in pruned.graph.input] == [i.name for i in src.graph.input]
    assert [o.name for o in pruned.graph.output] == [o.name for o in src.graph.output]
    convs = [tuple(t.dims) for t in pruned.graph.initializer if len(t.dims) == 4]
    assert sorted(c[0] for c in convs) == [16, 16, 16, 32]  # the stem and the residual block's two convs share 16
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (3, 10)


GROUPED = """
import torch
from torch import nn

class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.b = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.b(torch.relu(self.g(torch.relu(self.a(x))))).mean((2, 3)))

def grouped():
    torch.manual_seed(0)
    return Grouped().eval()
"""


def test_warnings_printed_once_as_warning_lines(tmp_path, monkeypatch, capsys):
    """What is left unpruned is said once, as a `warning:` line — not also as a raw UserWarning with a path."""
    import sys

    (tmp_path / "grouped_models.py").write_text(GROUPED)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "g.onnx"
    try:
        rc = run_app(["prune", "grouped_models:grouped", "--input-shape", "x:1x3x8x8", "-o", str(out),
                      "--method", "structured", "--sparsity", "0.5", "--repeats", "1"])
    finally:
        sys.modules.pop("grouped_models", None)
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert rc == 0, text
    assert "UserWarning" not in text and ".py:" not in text
    lines = [ln for ln in text.splitlines() if "left unpruned" in ln]
    assert lines == ["warning: unsupported grouped convolution g: channel group a, channel group g left unpruned"]


def test_structured_pruning_leaves_what_an_imported_split_reads_unpruned(tmp_path, capsys):
    """An ONNX ``Split`` with fixed sizes (YOLOv8's C2f blocks, the nudenet wheel's detector): the channels it
    splits were pruned and the export then failed on the old sizes (exit 2, nothing written). They are left
    unpruned and named; the rest is pruned and written."""
    from deepshrink.convert.export import export_onnx

    class SplitNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.branch = torch.nn.Conv2d(4, 16, 3, padding=1)
            self.fuse = torch.nn.Conv2d(20, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = torch.split(torch.relu(self.stem(x)), [4, 4], dim=1)
            y = torch.relu(self.fuse(torch.cat([torch.relu(self.branch(a)), b], 1)))
            return y.mean((2, 3))

    torch.manual_seed(0)
    src = tmp_path / "split.onnx"
    export_onnx(SplitNet().eval(), {"x": np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)}, src)
    out = tmp_path / "pruned.onnx"
    rc = run_app(["prune", str(src), "-o", str(out), "--method", "structured", "--sparsity", "0.5",
                  "--input-shape", "x:1x1x8x8", "--repeats", "1", "--allow-degraded"])
    cap = capsys.readouterr()
    assert rc == 0 and out.exists(), cap.err
    assert "runtime.split" in cap.err and "left unpruned" in cap.err  # the stem's channels: named, kept
    assert "branch: 16 → 8" in cap.out  # what does not pass the split is pruned


def test_an_imported_graph_failing_at_another_size_prints_no_fx_traceback(tmp_path, capfd):
    """The written file's dynamic H/W are checked at one pixel more; an ONNX import (a torch.fx module) that
    cannot take that size (pooled, upsampled and joined again, as YOLOv8's neck) printed torch.fx's traceback
    and generated code on stderr, twice, before a normal result."""
    import deepshrink as ds
    from deepshrink.convert.export import export_onnx

    class UpDown(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.d = torch.nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.c(x))
            up = torch.nn.functional.interpolate(torch.nn.functional.max_pool2d(y, 2), scale_factor=2.0)
            return self.d(torch.cat([up, y], 1)).mean((2, 3))

    torch.manual_seed(0)
    src = tmp_path / "updown.onnx"
    export_onnx(ds.load(UpDown().eval(), input_shapes=["x:batchx1xh=16xw=16"]), None, src)
    out = tmp_path / "sparse.onnx"
    rc = run_app(["prune", str(src), "-o", str(out), "--method", "magnitude", "--sparsity", "0.3",
                  "--input-shape", "x:1x1x16x16", "--repeats", "1", "--allow-degraded"])
    cap = capfd.readouterr()
    assert rc == 0 and out.exists(), cap.err
    assert "Traceback" not in cap.err + cap.out and "FX-traced" not in cap.err + cap.out, cap.err
