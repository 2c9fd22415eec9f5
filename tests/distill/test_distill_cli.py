"""``deepshrink distill`` as a user meets it: bad input refused in one line with nothing written; two
processes give the one-process student; ``kill -9`` then ``--resume`` gives the uninterrupted student."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from safetensors.torch import save_file

from cli_helpers import one_line_error, run_cli
from deepshrink.errors import InputError

TEACHER = "deepshrink.examples.digits:DigitsMLP"


_run = run_cli
_one_line_error = one_line_error


@pytest.fixture(scope="module")
def mlp_weights(tmp_path_factory, digits_mlp):
    path = tmp_path_factory.mktemp("teacher") / "mlp.safetensors"
    save_file({k: v.contiguous() for k, v in digits_mlp.state_dict().items()}, str(path))
    return path


@pytest.fixture
def students(tmp_path, monkeypatch):
    """A module of student factories importable as ``students_mod:NAME``."""
    (tmp_path / "students_mod.py").write_text(textwrap.dedent("""
        from torch import nn
        def twelve():  # 12 classes where the teacher has 10
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 12))
        def small():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _nothing_written(out):
    assert not out.exists() and not any(out.parent.glob(f".{out.name}*"))


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, mlp_weights, students):
    out = tmp_path / "s.onnx"
    base = ["distill", "--teacher", TEACHER, "-w", mlp_weights, "-o", out]
    cases = [
        (["--student", "students_mod:twelve", "--data", "digits:train"], "10 vs 12 classes"),
        (["--derive", "layers=0", "--data", "digits:train"], "would leave 0 layers"),
        (["--derive", "layers=2", "--data", "digits:train"], "for an MLP or CNN use derive width=F"),
        (["--derive", "width=0.5", "--data", "digits:train", "--nproc", str(os.cpu_count() * 4 + 1)], "CPU core"),
        (["--data", "digits:train"], "either --student S or --derive"),
        (["--student", "students_mod:small", "--derive", "width=0.5", "--data", "digits:train"], "not both"),
        (["--derive", "width=0.5", "--data", "digits:train", "--loss", "sharpness"], "--loss 'sharpness'"),
        (["--derive", "width=0.5", "--data", "digits:train", "--loss", "kd+embedding"], "one output loss at a time"),
        (["--derive", "width=0.5", "--data", "digits:train", "--loss", "hidden+hidden"], "names a term twice"),
        (["--derive", "width=0.5", "--data", "digits:train", "--loss", "hidden", "--layer-map", "0,x"], "--layer-map '0,x'"),
        (["--derive", "width=0.5", "--data", "digits:train", "--loss", "hidden", "--layer-map", "kept"], "copied from"),
        (["--derive", "width=0.5", "--data", "digits:train", "--lr-schedule", "step"], "lr_schedule"),
        (["--derive", "width=0.5", "--data", "digits:train", "--warmup", "1.5"], "warmup"),
        (["--derive", "width=0.5", "--data", "sentences:wider"], "sentences:wide:N"),
        (["--derive", "width=0.5", "--data", "digits:train", "--freeze", "*word_embeddings*"], "matches none"),
        (["--derive", "width=0.5", "--data", "digits:train", "--dropout", "1.5"], "dropout"),
        (["--derive", "width=0.5", "--data", "digits:train", "--dropout", "0"], "has no dropout"),
        (["--derive", "width=0.5", "--data", "digits:train", "--group-by-length"], "attention_mask"),
        (["--student", "s.onnx", "--student-weights", mlp_weights, "--data", "digits:train"],
         "--student-weights applies to a module:factory or Hugging Face folder --student, not to s.onnx"),
        (["--student", "students_mod:small", "--student-weights", "nowhere.safetensors", "--data", "digits:train"],
         "--student-weights file nowhere.safetensors does not exist"),
        (["--derive", "width=0.5", "--data", "digits:train", "--loss", "embedding+3*bogus"], "'bogus' is not a loss term"),
        (["--derive", "width=0.5", "--data", "digits:train", "--mixed-precision", "fp16"],
         "--mixed-precision 'fp16': use no (float32) or bf16"),
        (["--derive", "width=0.5", "--data", "digits:train", "--gate-max-drop", "-1"], "give accuracy points between 0 and 100"),
        (["--derive", "width=0.5", "--data", "digits:train", "--gate-min-cos", "2"], "give a cosine between -1 and 1"),
        (["--derive", "width=0.5", "--data", "digits:train", "--gate-min-cos", "0.9"],
         "--gate-min-cos judges data without labels; digits:train has labels"),
        (["--derive", "width=0.5", "--data", "digits:train", "--allow-degraded"], "--allow-degraded applies with a fidelity gate"),
    ]
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 1, 8, 8), np.float32), labels=np.zeros(0, np.int64))
    cases.append((["--derive", "width=0.5", "--data", empty], "empty"))
    np.savez(tmp_path / "unlabelled.npz", x=np.zeros((40, 1, 8, 8), np.float32))
    cases.append((["--derive", "width=0.5", "--data", tmp_path / "unlabelled.npz", "--gate-max-drop", "5"],
                  "--gate-max-drop judges accuracy, but"))
    x8 = np.zeros((8, 1, 8, 8), np.float32)
    np.savez(tmp_path / "over.npz", x=x8, labels=np.full(8, 10, np.int64))  # trial 15i: IndexError traceback
    cases.append((["--derive", "width=0.5", "--data", tmp_path / "over.npz"], "labels run from 10 to 10, but the teacher has 10 classes"))
    np.savez(tmp_path / "fl.npz", x=x8, labels=np.linspace(0, 0.9, 8).astype(np.float32))  # were truncated to class 0
    cases.append((["--derive", "width=0.5", "--data", tmp_path / "fl.npz"], "labels must be class indices"))
    cases.append((["--derive", "width=0.5", "--data", "digits:train", "--eval-data", tmp_path / "over.npz"],
                  "evaluation data's labels run from 10"))
    cases += [(["--derive", "width=0.5", "--data", "digits:train", *extra], needle) for extra, needle in (
        (["--metric", "cosine"], "metric (--metric) cosine is not used by the kd loss"),  # trial 15i: ignored
        (["--layer-map", "0,1"], "layer_map (--layer-map) (0, 1) is not used by the kd loss"))]
    for extra, needle in cases:
        rc, _, err = _run(capsys, *base, *extra)
        assert rc == 2, (extra, err)
        _one_line_error(err, needle)
        _nothing_written(out)


def test_seed_fixes_a_factory_students_random_start(tmp_path, capsys, mlp_weights, students):
    import onnx
    from onnx import numpy_helper

    def weights(name, seed):
        out = tmp_path / name
        rc, _, err = _run(capsys, "distill", "--teacher", TEACHER, "-w", mlp_weights, "--student", "students_mod:small",
                          "--data", "digits:val", "--epochs", "0", "--repeats", "1", "--seed", str(seed), "-o", out)
        assert rc == 0, err
        return [numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer]

    a, b, c = weights("a.onnx", 0), weights("b.onnx", 0), weights("c.onnx", 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # trial 15i: two runs, two students
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_the_fidelity_gate_is_off_unless_a_limit_is_given(tmp_path, capsys, mlp_weights, students):
    out = tmp_path / "s.onnx"
    args = ("distill", "--teacher", TEACHER, "-w", mlp_weights, "--student", "students_mod:small",
            "--data", "digits:val", "--epochs", "0", "--repeats", "1", "-o", out)  # an untrained student: ~10 %
    rc, _, err = _run(capsys, *args, "--gate-max-drop", "5")
    assert rc == 3, err
    _one_line_error(err, "degraded: accuracy fell")
    _nothing_written(out)  # nor the checkpoint folder
    rc, stdout, err = _run(capsys, *args, "--gate-max-drop", "5", "--allow-degraded", "--force")
    assert rc == 0 and out.is_file() and "warning: kept despite the fidelity gate" in err, stdout  # on stderr
    assert "the model degraded" not in err, err  # the table's own warning said it a second time (trial t)
    out.unlink()
    rc, stdout, err = _run(capsys, *args)  # no limit: written, as before
    assert rc == 0 and out.is_file() and "fidelity gate" not in stdout + err, err


def test_mixed_precision_is_said_in_the_summary(tmp_path, capsys, mlp_weights, students):
    out = tmp_path / "s.onnx"
    rc, stdout, err = _run(capsys, "distill", "--teacher", TEACHER, "-w", mlp_weights, "--student", "students_mod:small",
                           "--data", "digits:val", "--epochs", "1", "--repeats", "1", "--mixed-precision", "BFloat16",
                           "-o", out)
    assert rc == 0, err
    assert re.search(r"over \d+ steps, 1 epoch, 1 process\(es\), bfloat16 mixed precision", stdout), stdout
    assert stdout.startswith("student given"), stdout[:80]  # no empty line from the progress bars (not a terminal)


@pytest.mark.trains
def test_user_student_is_distilled(tmp_path, capsys, mlp_weights, students, measured):
    out = tmp_path / "s.onnx"
    rc, stdout, err = _run(capsys, "distill", "--teacher", TEACHER, "-w", mlp_weights, "--student", "students_mod:small",
                           "--data", "digits:train", "--eval-data", "digits:val", "--epochs", "3", "--repeats", "2",
                           "-o", out, "--json")
    assert rc == 0, err
    res = json.loads(stdout)
    rows = res["bench"]["rows"]
    weights = 64 * 32 + 32 + 32 * 10 + 10
    assert res["report"]["student_from"] == "given" and res["report"]["student_params"] == weights
    import onnx

    # the ONNX row counts every initializer element: the weights and the Flatten's target shape (2 int64)
    assert rows[1]["params"] == sum(int(np.prod(t.dims)) for t in onnx.load(str(out)).graph.initializer) == weights + 2
    assert out.is_file() and not (tmp_path / ".s.onnx.distill-ckpt").exists()
    # 3 epochs from a random init: the student learned from the teacher (chance 0.1); 1 seed
    assert measured("user student accuracy after 3 epochs", rows[1]["accuracy"], "lower") > 0.5, rows


# ------------------------------------------------------------------------------------------
# processes: the same student from one or two processes, and after kill -9 + --resume

EPOCHS = 4


def _cli(weights, out, *extra):
    return [sys.executable, "-m", "deepshrink.cli", "distill", "--teacher", TEACHER, "-w", str(weights),
            "--derive", "width=0.5", "--data", "digits:train", "--eval-data", "digits:val", "--epochs", str(EPOCHS),
            "--batch-size", "32", "--checkpoint-every", "5", "--repeats", "1", "--json", "-o", str(out), *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "DEEPSHRINK_DETERMINISTIC": "1",
            "PYTHONPATH": os.pathsep.join([p for p in sys.path if p])}


def _weights_of(path):
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, mlp_weights):
    out = tmp_path_factory.mktemp("one") / "student.onnx"
    proc = subprocess.run(_cli(mlp_weights, out), capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads(proc.stdout)


def test_two_processes_give_the_one_process_student(tmp_path, mlp_weights, one_process):
    out = tmp_path / "student.onnx"
    proc = subprocess.run(_cli(mlp_weights, out, "--nproc", "2"), capture_output=True, text=True, env=_env(),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(proc.stdout)["report"]
    assert rep["world_size"] == 2 and rep["steps"] == one_process[1]["report"]["steps"] == EPOCHS * 34
    a, b = _weights_of(one_process[0]), _weights_of(out)
    assert a.keys() == b.keys()
    # each rank takes half of every global batch of one shared permutation and DDP averages the gradients, so
    # only float summation order differs: 7.5e-8 measured after 136 Adam steps; 1e-5 leaves room for other CPUs
    worst = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
    assert worst < 1e-5, worst


def test_kill_then_resume_gives_the_uninterrupted_student(tmp_path, mlp_weights, one_process):
    import torch

    out = tmp_path / "student.onnx"
    ckpt = tmp_path / ".student.onnx.distill-ckpt" / "last.ckpt"
    proc = subprocess.Popen(_cli(mlp_weights, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not out.exists()
    step = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step < EPOCHS * 34, step  # killed mid-training, at a checkpoint between steps 5 and the end
    # without --resume the checkpoint is not silently reused or overwritten
    again = subprocess.run(_cli(mlp_weights, out), capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 2 and "--resume" in again.stderr and not out.exists()
    resumed = subprocess.run(_cli(mlp_weights, out, "--resume"), capture_output=True, text=True, env=_env(),
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["report"]["resumed_from"] == step
    a, b = _weights_of(one_process[0]), _weights_of(out)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # deterministic training: bit for bit
    assert not ckpt.parent.exists()


def test_an_onnx_teacher_is_distilled_through_its_pytorch_import(cnn_onnx, tmp_path, capsys):
    """A teacher given as an ONNX file (the only form a TFLite or Keras user has) is run and its student derived
    from its PyTorch import; the student is written as ONNX with the file's input and output names and measured
    against the ONNX teacher. (Before: refused, "distillation trains, so it needs the PyTorch teacher".)"""
    import onnx

    from deepshrink.cli._app import run_app

    out = tmp_path / "student.onnx"
    rc = run_app(["distill", "--teacher", str(cnn_onnx), "--derive", "width=0.5", "--data", "digits:train",
                  "--epochs", "2", "--repeats", "1", "--json", "-o", str(out)])
    err = capsys.readouterr()
    assert rc == 0, err.err
    res = json.loads(err.out)
    rep, rows = res["report"], res["bench"]["rows"]
    assert rep["student_params"] / rep["teacher_params"] < 0.27  # half the channels of every conv: 0.257
    assert rep["loss"][-1] < rep["loss"][0]
    assert rows[0]["name"] == str(cnn_onnx) and rows[0]["runtime"] == rows[1]["runtime"] == "onnxruntime"
    src, student = onnx.load(cnn_onnx), onnx.load(out)
    assert [o.name for o in student.graph.output] == [o.name for o in src.graph.output]
    assert [i.name for i in student.graph.input] == [i.name for i in src.graph.input]


def test_loss_terms_join_with_plus():
    from deepshrink.cli.distill_cmd import config_for

    c = config_for("embedding+hidden+attention")
    assert (c.loss, c.hidden_weight, c.attention_weight) == ("embedding", 1.0, 1.0)
    c = config_for("attention")  # a feature term alone: the output loss stays auto
    assert (c.loss, c.hidden_weight, c.attention_weight) == ("auto", 0.0, 1.0)
    c = config_for("kd")
    assert (c.loss, c.hidden_weight, c.attention_weight) == ("kd", 0.0, 0.0)
    c = config_for("embedding + 3*hidden + 0.5*attention")  # a feature term's weight
    assert (c.loss, c.hidden_weight, c.attention_weight) == ("embedding", 3.0, 0.5)
    for bad in ("2*embedding", "0*hidden", "-1*hidden", "x*hidden", "inf*attention", "3*hidden+hidden"):
        with pytest.raises(InputError):
            config_for(bad)
