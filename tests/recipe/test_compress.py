"""``deepshrink compress``: steps checkpointed, every file measured, reports written; a run killed
with SIGKILL after step 1 resumes to a byte-identical model; output folders are never clobbered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import onnx
import pytest

from deepshrink.cli._app import run_app

CNN = "deepshrink.examples:trained_digits_cnn"
RECIPE = """
steps:
  - prune: {method: magnitude, sparsity: 0.3}
  - prune: {method: structured, sparsity: 0.25, finetune_epochs: 2}
  - quantize: {scheme: int8-static}
"""


def _compress_argv(out, recipe, *extra):
    return ["compress", CNN, "--input-shape", "x:1x1x8x8", "-r", str(recipe), "-o", str(out),
            "--data", "digits:train", "--eval-data", "digits:test", "--repeats", "2", *extra]


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "r.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, recipe_file):
    out = tmp_path_factory.mktemp("run") / "out"
    assert run_app(_compress_argv(out, recipe_file, "--json")) == 0
    return out


def test_outputs_and_report(uninterrupted, capsys):
    out = uninterrupted
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "report.json", "recipe.yaml", "environment.json", "steps"} <= names
    assert sorted(p.name for p in (out / "steps").iterdir()) == ["00-original", "01-prune", "02-prune", "03-quantize"]
    report = json.loads((out / "report.json").read_text())
    steps = report["steps"]
    assert [s["verb"] for s in steps] == [None, "prune", "prune", "quantize"]
    assert steps[1]["details"]["sparsity_after"] == pytest.approx(0.3, abs=0.01)  # magnitude: zeros, same shapes
    assert steps[2]["params"] < 0.7 * steps[0]["params"]  # structured: channels removed
    assert steps[3]["size_bytes"] < 0.4 * steps[0]["size_bytes"]  # int8 weights
    for s in steps:  # every step measured on its own file, on the test digits
        assert s["runtime"] == "onnxruntime" and 0 < s["latency_ms"]["median"] and 0.5 < s["accuracy"] <= 1.0
        assert s["latency_ms"]["p10"] <= s["latency_ms"]["median"] <= s["latency_ms"]["p90"]  # the footer's spread
    assert report["data"] == {"source": "digits:test", "samples": 360, "labels": True}
    assert report["environment"]["threads"] == 2 and "torch" in report["environment"]["packages"]
    assert report["final"]["size_ratio"] == pytest.approx(steps[3]["size_bytes"] / steps[0]["size_bytes"])
    m = onnx.load(str(out / "model.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in m.graph.node)
    assert (out / "model.onnx").read_bytes() == (out / "steps" / "03-quantize" / "model.onnx").read_bytes()


def test_existing_output_folder_needs_resume_or_force(uninterrupted, recipe_file, tmp_path, capsys):
    before = sorted(p.name for p in uninterrupted.iterdir())
    assert run_app(_compress_argv(uninterrupted, recipe_file)) == 2
    assert "--resume" in capsys.readouterr().err
    assert sorted(p.name for p in uninterrupted.iterdir()) == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert run_app(_compress_argv(foreign, recipe_file, "--force")) == 2
    assert "compress did not write" in capsys.readouterr().err and (foreign / "notes.txt").read_text() == "keep"
    assert run_app(_compress_argv(tmp_path / "nothing", recipe_file, "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert run_app(_compress_argv(a_file, recipe_file)) == 2
    assert "is a file" in capsys.readouterr().err


def test_kill_after_step_1_then_resume_is_byte_identical(uninterrupted, recipe_file, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "DEEPSHRINK_DETERMINISTIC": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "deepshrink.cli", *_compress_argv(out, recipe_file, "--json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    done = out / "steps" / "01-prune" / "step.json"
    deadline = time.time() + 240
    while not done.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done.exists(), proc.stderr.read().decode()[-2000:]
    assert not (out / "model.onnx").exists()  # killed before the end: no final model
    finished = {p.name for p in (out / "steps").iterdir() if (p / "step.json").exists()}
    assert "01-prune" in finished and "03-quantize" not in finished
    assert run_app(_compress_argv(out, recipe_file, "--resume", "--json")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"][1]["reused"] is True and report["steps"][3]["reused"] is False
    assert (out / "model.onnx").read_bytes() == (uninterrupted / "model.onnx").read_bytes()
    assert not list((out / "steps").glob(".*"))  # no temporary folder left behind


def test_editing_the_recipe_redoes_the_changed_step_and_what_follows(uninterrupted, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)
    recipe = tmp_path / "r2.yaml"
    recipe.write_text(RECIPE.replace("{scheme: int8-static}", "{scheme: int8-dynamic}"))
    assert run_app(_compress_argv(out, recipe, "--resume", "--json")) == 0
    steps = json.loads((out / "report.json").read_text())["steps"]
    assert [s["reused"] for s in steps] == [True, True, True, False]
    assert onnx.load(str(out / "model.onnx")).graph.node != onnx.load(str(uninterrupted / "model.onnx")).graph.node


def test_deep_compression_step_writes_the_packed_file(tmp_path):
    """A pack step ends the chain: the final model is the .dsz, measured through what it decodes to."""
    from deepshrink.codec import unpack

    recipe = tmp_path / "dc.yaml"
    recipe.write_text("steps:\n  - pack: {method: deep-compression, fc_sparsity: 0.8, prune_epochs: 2, "
                      "finetune_epochs: 1}\n")
    out = tmp_path / "out"
    assert run_app(["compress", "deepshrink.examples:trained_digits_mlp", "--input-shape", "x:1x64", "-r",
                    str(recipe), "-o", str(out), "--data", "digits:train", "--eval-data", "digits:test",
                    "--repeats", "2", "--json"]) == 0
    steps = json.loads((out / "report.json").read_text())["steps"]
    assert (out / "model.dsz").read_bytes() == (out / "steps" / "01-pack" / "model.dsz").read_bytes()
    assert steps[1]["size_bytes"] == (out / "model.dsz").stat().st_size < 0.1 * steps[0]["size_bytes"]
    assert steps[1]["details"]["ratio"] > 10 and 0.5 < steps[1]["accuracy"] <= 1.0
    decoded = unpack(out / "model.dsz")
    assert decoded.factory == "deepshrink.examples:trained_digits_mlp"
    assert float((decoded.tensors["fc1.weight"] == 0).mean()) >= 0.79  # the pruned zeros travel


def test_compress_threads_reach_auto_quantization(tmp_path, monkeypatch):
    """`compress --threads 1` timed its table at 1 thread while the auto-int8 step's search timed at 2."""
    import deepshrink as ds
    import deepshrink.quantize as q
    from deepshrink.errors import InputError

    seen = []

    def record(model, config, **kw):
        seen.append(config.threads)
        raise InputError("stop here")

    monkeypatch.setattr(q, "quantize", record)
    with pytest.raises(InputError, match="stop here"):
        ds.compress("deepshrink.examples:DigitsMLP", "auto-int8", tmp_path / "out", data="digits:train",
                    input_shapes=["x:1x64"], threads=1)
    assert seen == [1]


def test_a_prune_step_s_batch_size_seed_and_precision_reach_its_fine_tune(tmp_path, monkeypatch):
    """A recipe could not set the fine-tune's batch size (trial t): ``batch_size``, ``seed`` and ``mixed_precision``
    in a prune step go to ``prune()`` as the CLI's --batch-size / --seed / --mixed-precision do, and are kept in the
    resolved recipe."""
    import deepshrink as ds
    import deepshrink.prune as p
    from deepshrink.errors import InputError
    from deepshrink.recipe import parse_recipe

    seen = []

    def record(model, config, **kw):
        seen.append({k: kw.get(k) for k in ("batch_size", "seed", "mixed_precision")})
        raise InputError("stop here")

    monkeypatch.setattr(p, "prune", record)
    steps = {"steps": [{"prune": {"sparsity": 0.25, "finetune_epochs": 1, "batch_size": 8, "seed": 3,
                                  "mixed_precision": "bf16"}}]}
    with pytest.raises(InputError, match="stop here"):
        ds.compress("deepshrink.examples:DigitsMLP", steps, tmp_path / "out", data="digits:train",
                    input_shapes=["x:1x64"])
    assert seen == [{"batch_size": 8, "seed": 3, "mixed_precision": "bf16"}]
    resolved = parse_recipe(steps).resolved()["steps"][0]["prune"]
    assert (resolved["batch_size"], resolved["seed"], resolved["mixed_precision"]) == (8, 3, "bf16")
    assert parse_recipe({"steps": [{"prune": resolved}]}).resolved()["steps"][0]["prune"] == resolved


def test_an_original_that_fails_its_export_leaves_no_folder(tmp_path):
    """Trial u: a compress whose step 0 (the original's ONNX export and parity check) failed left OUT with its marker
    file and an empty steps/ folder."""
    import torch

    import deepshrink as ds
    from deepshrink.errors import DeepshrinkError

    class Noisy(torch.nn.Module):  # its export cannot match it: the parity check fails
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x) + torch.rand_like(self.fc(x))

    with pytest.raises(DeepshrinkError, match="changed the outputs"):
        ds.compress(Noisy(), "int8", tmp_path / "out", input_shapes=["x:1x4"])
    assert not (tmp_path / "out").exists()
