"""kill -9 at random moments during ``quantize`` and ``prune`` never leaves a partial output
(issue 17): after each kill the output path either does not exist or holds exactly the bytes an
uninterrupted run writes (the outputs are deterministic, tests/test_determinism.py). What a kill
can leave is the hidden staging folder (``.deepshrink.*``) beside the output, never a file under
the output's name."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CNN = "deepshrink.examples:DigitsCNN"
KILLS = 10  # per command: 20 in all


def _argv(kind: str, w: str, onnx_in: str, out: Path) -> list[str]:
    base = [sys.executable, "-m", "deepshrink.cli"]
    if kind == "quantize":
        return [*base, "quantize", onnx_in, "-o", str(out), "--scheme", "int8-static", "--data", "digits:train",
                "--repeats", "3", "--allow-degraded"]
    return [*base, "prune", CNN, "-w", w, "--input-shape", "x:1x1x8x8", "-o", str(out), "--sparsity", "0.5",
            "--data", "digits:train", "--repeats", "3", "--allow-degraded"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, digits_cnn):
    from safetensors.torch import save_file

    from deepshrink.convert.writers import save
    from deepshrink.loading import load

    d = tmp_path_factory.mktemp("kill")
    save_file(digits_cnn.state_dict(), str(d / "cnn.safetensors"))
    save(load(digits_cnn, input_shapes={"x": (1, 1, 8, 8)}), d / "in.onnx")
    return str(d / "cnn.safetensors"), str(d / "in.onnx")


@pytest.mark.parametrize("kind", ["quantize", "prune"])
def test_kill9_never_leaves_a_partial_output(inputs, tmp_path, kind):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref" / "m.onnx"
    ref.parent.mkdir()
    t0 = time.monotonic()
    subprocess.run(_argv(kind, *inputs, ref), env=env, check=True, capture_output=True, timeout=600)
    full = time.monotonic() - t0
    expected = ref.read_bytes()
    rng = random.Random(0)
    landed = 0
    for i in range(KILLS):
        out = tmp_path / f"k{i}" / "m.onnx"
        out.parent.mkdir()
        proc = subprocess.Popen(_argv(kind, *inputs, out), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, full * 1.05))  # from start-up to just past a whole run
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if out.exists():
            assert out.read_bytes() == expected, f"kill {i}: a partial or different {out.name}"
            landed += 1
        visible = [p.name for p in out.parent.iterdir() if not p.name.startswith(".")]
        assert visible in ([], [out.name]), f"kill {i}: left {visible}"
    assert landed < KILLS  # the kills did land inside runs, not all after them
