"""Determinism (issue 17): the same inputs and seed give byte-identical files from convert,
quantize (every scheme), prune, pack and compress — in a fresh process at one intra-op thread and
in another at two.

Each process runs the whole job list through the real CLI (``run_app``) into its own folder; the
test then compares every written file byte for byte. The trained weights come from one
safetensors file written before the processes start, so training is not part of what is compared.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CNN = "deepshrink.examples:DigitsCNN"
SCHEMES = ("int8-dynamic", "int8-static", "int4-weight", "kmeans", "log2", "auto", "ptq")


def jobs(w: str, onnx_in: str, out: Path) -> list[list[str]]:
    src = [CNN, "-w", w, "--input-shape", "x:1x1x8x8"]
    data = ["--data", "digits:train", "--eval-data", "digits:test"]
    js = [["convert", *src, str(out / "cnn.onnx")], ["convert", *src, str(out / "cnn.pt2")]]
    for s in SCHEMES:
        extra = ["--group-size", "32"] if s == "int4-weight" else []  # the digits layers are 64 wide
        extra += ["--allow-slower"] if s == "auto" else []  # its speed gate times the result: not deterministic
        js.append(["quantize", *(src if s == "ptq" else [onnx_in]), "-o", str(out / f"q-{s}.onnx"), "--scheme", s,
                   *extra, *data, "--no-bench", "--allow-degraded"])
    js.append(["prune", *src, "-o", str(out / "p-mag.onnx"), "--sparsity", "0.5", *data, "--repeats", "1",
               "--allow-degraded"])
    js.append(["prune", *src, "-o", str(out / "p-struct.onnx"), "--method", "structured", "--sparsity", "0.5",
               "--finetune-epochs", "1", *data, "--repeats", "1", "--allow-degraded"])
    js.append(["prune", *src, "-o", str(out / "p-struct.pt2"), "--method", "structured", "--sparsity", "0.5",
               *data, "--repeats", "1", "--allow-degraded"])  # .pt2 through the atomic writer
    js.append(["pack", *src, "-o", str(out / "cnn.dsz"), "--fc-bits", "4", "--other-bits", "6"])
    js.append(["compress", onnx_in, "--recipe", "int8-static", "-o", str(out / "compress"), *data,
               "--repeats", "1", "--allow-degraded"])
    return js


def _main(w: str, onnx_in: str, out: str) -> None:
    from deepshrink.cli import run_app

    for argv in jobs(w, onnx_in, Path(out)):
        rc = run_app([*argv, "--json"] if argv[0] != "pack" else argv)
        if rc != 0:
            raise SystemExit(f"{argv[:2]} exited {rc}")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, digits_cnn):
    from safetensors.torch import save_file

    from deepshrink.convert.writers import save
    from deepshrink.loading import load

    d = tmp_path_factory.mktemp("det")
    save_file(digits_cnn.state_dict(), str(d / "cnn.safetensors"))
    save(load(digits_cnn, input_shapes={"x": (1, 1, 8, 8)}), d / "in.onnx")
    return d


def _files(root: Path) -> dict[str, bytes]:
    # the compress folder's reports carry timings and the environment; its model and steps must match
    skip = {"report.json", "report.md", "report.html", "environment.json"}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip and not p.name.endswith(".json")}


def test_outputs_are_byte_identical_across_processes_and_thread_counts(inputs, tmp_path):
    runs = {}
    for threads in ("1", "2"):
        out = tmp_path / f"t{threads}"
        out.mkdir()
        env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONHASHSEED": threads}
        res = subprocess.run([sys.executable, __file__, str(inputs / "cnn.safetensors"), str(inputs / "in.onnx"),
                              str(out)], env=env, capture_output=True, text=True, timeout=900, check=False)
        assert res.returncode == 0, res.stderr[-2000:]
        runs[threads] = _files(out)
    one, two = runs["1"], runs["2"]
    assert len(one) >= 13 and one.keys() == two.keys()
    differ = [name for name in one if one[name] != two[name]]
    assert not differ, f"files differ between 1 and 2 threads: {differ}"


if __name__ == "__main__":
    _main(*sys.argv[1:4])
