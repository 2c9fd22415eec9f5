"""Bad input through the real command line, one table for every command (issue 17).

Each row runs ``deepshrink <argv>`` in-process (``run_app``) and asserts what the quality bar
promises for input a user can get wrong or a stranger can forge:

- exit status 2 and no traceback;
- stderr is one non-empty line (a usage error ends with its ``(see '... --help')`` hint), and it
  names the problem (``expect``, a case-insensitive substring);
- nothing is left in the output folder (its listing, hidden files included, is the same before
  and after) and the inputs are untouched (the fixture folder's names, sizes and times);
- no code from a model file ran: pickles here carry ``exec`` of code that creates a marker file,
  and the marker must not exist afterwards.

``CASES`` covers missing/empty/truncated/garbage model files of every format, pickles that carry
code, Hugging Face folders that ask for remote code, data that does not fit, NaN weights, bad
recipes, impossible budgets, outputs that exist, cannot be written or are the input.
``EXTERNAL`` covers the ONNX external-data attack class (CVE-2022-25882, CVE-2024-27318,
CVE-2026-27489, CVE-2026-34445, CVE-2026-34446 on read); ``test_write_*`` the write side
(CVE-2025-51480).
"""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deepshrink.cli import run_app

FACTORY = "deepshrink.examples:DigitsMLP"
MARKER = "PWNED"  # the file every code-carrying pickle here would create


class _Exec:
    """Pickles as ``exec(code)``: unpickling it runs ``code`` (here: create the marker file)."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (self.code,))


def _evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weight": _Exec(f"open({str(marker)!r}, 'w').close()")}, protocol=2)


def _tiny_onnx(w: np.ndarray | None = None, width: int = 3) -> onnx.ModelProto:
    """y = x @ W + b, x: float32 (N, 4), y: (N, width)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, width)).astype(np.float32) if w is None else w
    width = w.shape[1]
    b = rng.standard_normal(width).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"), helper.make_node("Add", ["h", "b"], ["y"], name="add")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _with_external(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    """Save ``model`` into ``folder`` with every initializer in ``<name>.data``."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / name), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=name + ".data", size_threshold=0)
    return folder / name


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every input file the rows read, built once (a few seconds: one torch.export)."""
    import torch
    from safetensors.torch import save_file

    from deepshrink.examples import DigitsMLP

    d = tmp_path_factory.mktemp("bad_input")
    marker = d / MARKER
    torch.manual_seed(0)
    mlp = DigitsMLP().eval()
    # ONNX
    onnx.save_model(_tiny_onnx(), str(d / "good.onnx"))
    good = (d / "good.onnx").read_bytes()
    (d / "empty.onnx").write_bytes(b"")
    (d / "trunc.onnx").write_bytes(good[: len(good) // 2])
    (d / "garbage.onnx").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    nan_w = np.ones((4, 3), np.float32)
    nan_w[1, 2] = np.nan
    onnx.save_model(_tiny_onnx(nan_w), str(d / "nan.onnx"))
    inf_w = np.ones((4, 3), np.float32)
    inf_w[0, 0] = -np.inf
    onnx.save_model(_tiny_onnx(inf_w), str(d / "inf.onnx"))
    (d / "link.onnx").symlink_to(d / "good.onnx")
    (d / "existing.onnx").write_bytes(b"keep me")
    (d / "not_a_folder").write_bytes(b"a file")
    (d / "a_folder.onnx").mkdir()
    # torch.export archives
    ep = torch.export.export(mlp, (torch.zeros(2, 64),))
    torch.export.save(ep, str(d / "mlp.pt2"))
    pt2 = (d / "mlp.pt2").read_bytes()
    (d / "empty.pt2").write_bytes(b"")
    (d / "trunc.pt2").write_bytes(pt2[: len(pt2) // 2])
    (d / "garbage.pt2").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    with zipfile.ZipFile(d / "mlp.pt2") as src, zipfile.ZipFile(d / "nan.pt2", "w") as dst:
        for n in src.namelist():  # fc1.weight[0, 0] = NaN in the raw weight bytes
            raw = src.read(n)
            dst.writestr(n, np.float32(np.nan).tobytes() + raw[4:] if n.endswith("weights/weight_0") else raw)
    with zipfile.ZipFile(d / "mlp.pt2") as src, zipfile.ZipFile(d / "evil.pt2", "w") as dst:
        for n in src.namelist():  # sample inputs replaced by a pickle that runs code
            dst.writestr(n, _evil_pickle(marker) if n.endswith("sample_inputs/model.pt") else src.read(n))
    with zipfile.ZipFile(d / "mlp.pt2") as src, zipfile.ZipFile(d / "evil_weights.pt2", "w") as dst:
        for n in src.namelist():  # a legacy pickled weights entry
            dst.writestr(n, src.read(n))
        dst.writestr("mlp/data/weights/weights.pt", _evil_pickle(marker))
    # weights
    state = {k: v.contiguous() for k, v in mlp.state_dict().items()}
    save_file(state, str(d / "mlp.safetensors"))
    st = (d / "mlp.safetensors").read_bytes()
    (d / "empty.safetensors").write_bytes(b"")
    (d / "trunc.safetensors").write_bytes(st[: len(st) // 2])
    (d / "garbage.safetensors").write_bytes(b"\xff" * 8 + b"not a header" * 20)
    bad = dict(state)
    bad["fc2.weight"] = bad["fc2.weight"].clone()
    bad["fc2.weight"][0, 0] = float("nan")
    save_file(bad, str(d / "nan.safetensors"))
    save_file({**state, "fc1.weight": torch.zeros(7, 64)}, str(d / "wrongshape.safetensors"))
    save_file({k: v for k, v in state.items() if k != "fc3.bias"}, str(d / "missingkey.safetensors"))
    (d / "evil.pt").write_bytes(_evil_pickle(marker))
    # Hugging Face folders
    hf = d / "hf_pickle"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": 32, "hidden_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16}))
    (hf / "pytorch_model.bin").write_bytes(_evil_pickle(marker))
    remote = d / "hf_remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({
        "model_type": "evilnet", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}))
    (remote / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    # packed files
    from deepshrink.codec import PackConfig, pack

    pack(str(d / "good.onnx"), PackConfig(), output=d / "good.dsz", progress=False)
    dsz = (d / "good.dsz").read_bytes()
    (d / "empty.dsz").write_bytes(b"")
    (d / "trunc.dsz").write_bytes(dsz[: len(dsz) // 2])
    (d / "garbage.dsz").write_bytes(b"DSZ" + bytes(range(200)))
    # data for good.onnx (x: float32 (N, 4)) and the MLP (x: (N, 64))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    np.savez(d / "wrongname.npz", a=x, b=x)
    np.savez(d / "wrongshape.npz", x=rng.standard_normal((16, 5)).astype(np.float32))
    np.savez(d / "wrongdtype.npz", x=np.array([["a"] * 4] * 16))
    np.savez(d / "emptydata.npz", x=np.zeros((0, 4), np.float32))
    np.savez(d / "mismatched.npz", x=x, labels=np.zeros(5, np.int64))
    np.savez(d / "unequal.npz", x=x, z=x[:3])
    (d / "garbage.npz").write_bytes(b"PK\x03\x04junk")
    np.savez(d / "good64.npz", x=rng.standard_normal((64, 4)).astype(np.float32))
    np.savez(d / "unlabelled64.npz", x=rng.standard_normal((32, 64)).astype(np.float32))
    # labels no classifier output here can read: good.onnx has 3 classes, the MLP 10
    np.savez(d / "badlabels4.npz", x=rng.standard_normal((64, 4)).astype(np.float32), labels=np.arange(64) % 4 + 5)
    np.savez(d / "floatlabels4.npz", x=rng.standard_normal((64, 4)).astype(np.float32),
             labels=np.full(64, 0.5, np.float32))
    np.savez(d / "badlabels64.npz", x=rng.standard_normal((32, 64)).astype(np.float32), labels=np.arange(32) % 3 + 10)
    np.savez(d / "seqlabels4.npz", x=rng.standard_normal((64, 4)).astype(np.float32),
             labels=rng.integers(0, 2, (64, 3)))  # one label per output position (sequence labelling)
    (d / "qat.yaml").write_text("steps:\n  - quantize: {scheme: qat, epochs: 1}\n")
    # recipes
    (d / "unknown_key.yaml").write_text("steps:\n  - quantize: {scheme: int8-dynamic, bogus_key: 3}\n")
    (d / "unknown_step.yaml").write_text("steps:\n  - shrinkify: {}\n")
    (d / "not_a_mapping.yaml").write_text("- just\n- a list\n")
    (d / "bad.yaml").write_text("steps: [\n")
    return d


@dataclass
class Env:
    fx: Path  # the shared input files (read-only for the rows)
    case: Path  # a folder of this row's own (for rows that build hostile files)
    out: Path  # the output folder, watched: nothing may appear in it


@dataclass
class Case:
    id: str
    argv: Callable[[Env], list[str]]
    expect: str
    setup: Callable[[Env], None] | None = None
    marks: list[Any] = field(default_factory=list)


def C(id: str, argv: Callable[[Env], list[str]], expect: str, setup: Callable[[Env], None] | None = None,
      xfail: str | None = None) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(Case(id, argv, expect, setup), id=id, marks=marks)


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` (hidden ones too, links not followed) -> (size, mtime ns)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            p = Path(root) / n
            s = p.lstat()
            out[str(p.relative_to(folder))] = (s.st_size, s.st_mtime_ns)
    return out


def _existing(e: Env) -> None:
    (e.out / "out.onnx").write_bytes(b"an earlier result")
    (e.out / "out.dsz").write_bytes(b"an earlier result")


CASES = [
    # --- model files: missing, empty, truncated, garbage -----------------------------------------
    C("info-missing-onnx", lambda e: ["info", f"{e.fx}/nope.onnx"], "does not exist"),
    C("info-empty-onnx", lambda e: ["info", f"{e.fx}/empty.onnx"], "empty.onnx"),
    C("info-truncated-onnx", lambda e: ["info", f"{e.fx}/trunc.onnx"], "trunc.onnx"),
    C("info-garbage-onnx", lambda e: ["info", f"{e.fx}/garbage.onnx"], "garbage.onnx"),
    C("info-folder-as-onnx", lambda e: ["info", f"{e.fx}/a_folder.onnx"], "a_folder.onnx"),
    C("info-missing-pt2", lambda e: ["info", f"{e.fx}/nope.pt2"], "does not exist"),
    C("info-empty-pt2", lambda e: ["info", f"{e.fx}/empty.pt2"], "empty.pt2"),
    C("info-truncated-pt2", lambda e: ["info", f"{e.fx}/trunc.pt2"], "trunc.pt2"),
    C("info-garbage-pt2", lambda e: ["info", f"{e.fx}/garbage.pt2"], "garbage.pt2"),
    C("info-missing-safetensors", lambda e: ["info", FACTORY, "-w", f"{e.fx}/nope.safetensors"], "does not exist"),
    C("info-empty-safetensors", lambda e: ["info", FACTORY, "-w", f"{e.fx}/empty.safetensors"], "empty.safetensors"),
    C("info-truncated-safetensors", lambda e: ["info", FACTORY, "-w", f"{e.fx}/trunc.safetensors"],
      "trunc.safetensors"),
    C("info-garbage-safetensors", lambda e: ["info", FACTORY, "-w", f"{e.fx}/garbage.safetensors"],
      "garbage.safetensors"),
    C("info-safetensors-as-model", lambda e: ["info", f"{e.fx}/mlp.safetensors"], "weights only"),
    C("info-wrong-shape-weights", lambda e: ["info", FACTORY, "-w", f"{e.fx}/wrongshape.safetensors"],
      "does not fit"),
    C("info-missing-key-weights", lambda e: ["info", FACTORY, "-w", f"{e.fx}/missingkey.safetensors"],
      "fc3.bias"),
    C("info-unknown-factory", lambda e: ["info", "deepshrink.examples:NoSuchNet"], "NoSuchNet"),
    C("info-unknown-suffix", lambda e: ["info", f"{e.fx}/not_a_folder"], "not_a_folder"),
    C("unpack-missing-dsz", lambda e: ["unpack", f"{e.fx}/nope.dsz", "-o", f"{e.out}/m.onnx"], "does not exist"),
    C("unpack-empty-dsz", lambda e: ["unpack", f"{e.fx}/empty.dsz", "-o", f"{e.out}/m.onnx"], "empty.dsz"),
    C("unpack-truncated-dsz", lambda e: ["unpack", f"{e.fx}/trunc.dsz", "-o", f"{e.out}/m.onnx"], "trunc.dsz"),
    C("unpack-garbage-dsz", lambda e: ["unpack", f"{e.fx}/garbage.dsz", "-o", f"{e.out}/m.onnx"], "garbage.dsz"),
    C("convert-garbage-onnx", lambda e: ["convert", f"{e.fx}/garbage.onnx", f"{e.out}/m.pt2"], "garbage.onnx"),
    C("quantize-missing-onnx", lambda e: ["quantize", f"{e.fx}/nope.onnx", "-o", f"{e.out}/q.onnx"], "does not exist"),
    C("quantize-truncated-pt2", lambda e: ["quantize", f"{e.fx}/trunc.pt2", "-o", f"{e.out}/q.onnx"], "trunc.pt2"),
    C("prune-empty-pt2", lambda e: ["prune", f"{e.fx}/empty.pt2", "-o", f"{e.out}/p.pt2", "-s", "0.5"], "empty.pt2"),
    C("pack-garbage-onnx", lambda e: ["pack", f"{e.fx}/garbage.onnx", "-o", f"{e.out}/p.dsz"], "garbage.onnx"),
    C("compress-empty-onnx", lambda e: ["compress", f"{e.fx}/empty.onnx", "-r", "int8", "-o", f"{e.out}/run"],
      "empty.onnx"),
    C("bench-garbage-second", lambda e: ["bench", f"{e.fx}/good.onnx", f"{e.fx}/garbage.onnx", "--repeats", "1"],
      "garbage.onnx"),
    # --- pickles that carry code, remote code ----------------------------------------------------
    C("info-pickle-pt", lambda e: ["info", f"{e.fx}/evil.pt"], "--trust-remote-code"),
    C("info-pickle-as-weights", lambda e: ["info", FACTORY, "-w", f"{e.fx}/evil.pt"], "evil.pt holds pickled objects"),
    C("prune-pickle-as-weights", lambda e: ["prune", FACTORY, "-w", f"{e.fx}/evil.pt", "-o", f"{e.out}/p.pt2",
                                            "-s", "0.5"], "could run code"),
    C("info-pickle-in-pt2", lambda e: ["info", f"{e.fx}/evil.pt2"], "pickle"),
    C("quantize-pickled-weights-in-pt2", lambda e: ["quantize", f"{e.fx}/evil_weights.pt2", "-o", f"{e.out}/q.onnx"],
      "pickle"),
    C("info-hf-pickle-bin", lambda e: ["info", f"{e.fx}/hf_pickle"], "pytorch_model.bin) hold pickled objects"),
    C("convert-hf-pickle-bin", lambda e: ["convert", f"{e.fx}/hf_pickle", f"{e.out}/m.onnx"], "could run code"),
    C("info-hf-remote-code", lambda e: ["info", f"{e.fx}/hf_remote"], "trust_remote_code"),
    C("prune-hf-remote-code", lambda e: ["prune", f"{e.fx}/hf_remote", "-o", f"{e.out}/p.pt2", "-s", "0.5"],
      "trust_remote_code"),
    # --- NaN / inf weights -------------------------------------------------------------------------
    C("info-nan-onnx", lambda e: ["info", f"{e.fx}/nan.onnx"], "NaN"),
    C("quantize-inf-onnx", lambda e: ["quantize", f"{e.fx}/inf.onnx", "-o", f"{e.out}/q.onnx"], "infinity"),
    C("pack-nan-onnx", lambda e: ["pack", f"{e.fx}/nan.onnx", "-o", f"{e.out}/p.dsz", "--lossless"], "NaN"),
    C("prune-nan-pt2", lambda e: ["prune", f"{e.fx}/nan.pt2", "-o", f"{e.out}/p.pt2", "-s", "0.5"], "fc1.weight"),
    C("prune-nan-safetensors", lambda e: ["prune", FACTORY, "-w", f"{e.fx}/nan.safetensors", "-o", f"{e.out}/p.pt2",
                                          "-s", "0.5"], "fc2.weight"),
    # --- data that does not fit --------------------------------------------------------------------
    C("quantize-data-wrong-name", lambda e: ["quantize", f"{e.fx}/good.onnx", "-o", f"{e.out}/q.onnx",
                                             "-d", f"{e.fx}/wrongname.npz"], "'x'"),
    C("quantize-data-wrong-shape", lambda e: ["quantize", f"{e.fx}/good.onnx", "-o", f"{e.out}/q.onnx",
                                              "-d", f"{e.fx}/wrongshape.npz"], "shape"),
    C("quantize-data-wrong-dtype", lambda e: ["quantize", f"{e.fx}/good.onnx", "-o", f"{e.out}/q.onnx",
                                              "-d", f"{e.fx}/wrongdtype.npz"], "not numeric"),
    C("quantize-data-empty", lambda e: ["quantize", f"{e.fx}/good.onnx", "-o", f"{e.out}/q.onnx",
                                        "-d", f"{e.fx}/emptydata.npz"], "0 samples"),
    C("quantize-data-label-count", lambda e: ["quantize", f"{e.fx}/good.onnx", "-o", f"{e.out}/q.onnx",
                                              "-s", "int8-static", "-d", f"{e.fx}/mismatched.npz"], "5 labels"),
    C("bench-data-unequal", lambda e: ["bench", f"{e.fx}/good.onnx", "-d", f"{e.fx}/unequal.npz", "--repeats", "1"],
      "disagree"),
    C("bench-data-garbage", lambda e: ["bench", f"{e.fx}/good.onnx", "-d", f"{e.fx}/garbage.npz", "--repeats", "1"],
      "garbage.npz"),
    C("convert-data-missing", lambda e: ["convert", FACTORY, f"{e.out}/m.onnx", "-d", f"{e.fx}/nope.npz"],
      "nope.npz"),
    C("info-input-shape-wrong", lambda e: ["info", f"{e.fx}/good.onnx", "--input-shape", "x:1x5"], "does not fit"),
    C("info-input-shape-unknown-name", lambda e: ["info", f"{e.fx}/good.onnx", "--input-shape", "q:1x4"], "'q'"),
    C("info-input-shape-garbage", lambda e: ["info", FACTORY, "--input-shape", "x:1xbanana"], "--input-shape"),
    C("pack-needs-labels", lambda e: ["pack", FACTORY, "-o", f"{e.out}/p.dsz", "--prune-epochs", "1",
                                      "-d", f"{e.fx}/unlabelled64.npz"], "label"),
    C("compress-needs-labels", lambda e: ["compress", FACTORY, "-r", "prune-int8", "-o", f"{e.out}/run",
                                          "-d", f"{e.fx}/unlabelled64.npz"], "label"),
    # trial t: labels outside the model's classes reached training as a traceback, or scored every model 0 %
    C("search-labels-out-of-range", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/badlabels4.npz", "-o",
                                               f"{e.out}/run", "--max-drop", "1"], "labels run from 5 to 8"),
    C("search-labels-not-class-ids", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/floatlabels4.npz", "-o",
                                                f"{e.out}/run", "--max-drop", "1"], "integer class ids"),
    C("compress-qat-labels-out-of-range", lambda e: ["compress", f"{e.fx}/good.onnx", "-r", f"{e.fx}/qat.yaml", "-o",
                                                     f"{e.out}/run", "-d", f"{e.fx}/badlabels4.npz"], "3 classes"),
    C("prune-labels-out-of-range", lambda e: ["prune", FACTORY, "-o", f"{e.out}/p.safetensors", "--sparsity", "0.5", "--finetune-epochs",
                                              "1", "-d", f"{e.fx}/badlabels64.npz"], "labels run from 10 to 12"),
    C("pack-labels-out-of-range", lambda e: ["pack", FACTORY, "-o", f"{e.out}/p.dsz", "--prune-epochs", "1",
                                             "-d", f"{e.fx}/badlabels64.npz"], "10 classes"),
    C("search-budget-unparsable", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/good64.npz", "-o",
                                             f"{e.out}/run", "--target-cos", "0.99", "--budget", "size=fast"],
      "cannot be parsed"),
    C("search-budget-wrong-unit", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/good64.npz", "-o",
                                             f"{e.out}/run", "--target-cos", "0.99", "--budget", "latency=2MB"],
      "does not fit latency"),
    C("search-two-budgets", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/good64.npz", "-o",
                                       f"{e.out}/run", "--target-cos", "0.99", "--budget", "latency=0.5x",
                                       "--budget", "size=0.1x"], "--budget given 2 times"),
    C("search-drop-needs-labels", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/good64.npz", "-o",
                                             f"{e.out}/run", "--max-drop", "1"], "no labels"),
    C("search-negative-drop", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/good64.npz", "-o",
                                         f"{e.out}/run", "--max-drop", "-1"], "negative"),
    C("search-drop-and-cos", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/good64.npz", "-o",
                                        f"{e.out}/run", "--max-drop", "1", "--target-cos", "0.99"], "not both"),
    C("search-no-target", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/good64.npz", "-o",
                                     f"{e.out}/run"], "fidelity target"),
    C("search-confidence-without-cos", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/good64.npz", "-o",
                                                  f"{e.out}/run", "--max-drop", "1", "--confidence", "2"],
      "--confidence applies to a cosine target"),
    C("search-confidence-negative", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/good64.npz", "-o",
                                               f"{e.out}/run", "--target-cos", "0.99", "--confidence", "-1"],
      "confidence"),
    C("search-bad-time", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/good64.npz", "-o",
                                    f"{e.out}/run", "--target-cos", "0.99", "--time", "soon"], "time 'soon'"),
    C("search-pack-unknown", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/good64.npz", "-o",
                                        f"{e.out}/run", "--target-cos", "0.99", "--pack", "maybe"], "--pack 'maybe'"),
    C("search-pack-epochs", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/good64.npz", "-o",
                                       f"{e.out}/run", "--target-cos", "0.99", "--pack-epochs", "40"], "--pack-epochs"),
    C("search-structured-unknown", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/good64.npz", "-o",
                                              f"{e.out}/run", "--target-cos", "0.99", "--structured", "x"],
      "--structured 'x'"),
    C("search-pack-on-unlabelled", lambda e: ["search", FACTORY, "-d", f"{e.fx}/unlabelled64.npz", "-o",
                                              f"{e.out}/run", "--target-cos", "0.99", "--pack", "on"], "--pack on"),
    # where nothing answers (with the ray extra) or without the extra: one line naming --ray, before any loading
    C("search-ray-dead-address", lambda e: ["search", f"{e.fx}/good.onnx", "-d", f"{e.fx}/good64.npz", "-o",
                                            f"{e.out}/run", "--target-cos", "0.99", "--ray", "127.0.0.1:1"], "--ray"),
    C("prune-gradual-needs-data", lambda e: ["prune", FACTORY, "-o", f"{e.out}/p.pt2", "-m", "gradual", "-s", "0.5"],
      "data"),
    C("prune-fisher-needs-data", lambda e: ["prune", FACTORY, "-o", f"{e.out}/p.pt2", "-m", "structured", "-s", "0.5",
                                            "--importance", "fisher"], "--importance fisher scores channels"),
    # --- recipes -----------------------------------------------------------------------------------
    C("compress-unknown-recipe-key", lambda e: ["compress", f"{e.fx}/good.onnx", "-r", f"{e.fx}/unknown_key.yaml",
                                                "-o", f"{e.out}/run"], "bogus_key"),
    C("compress-unknown-step", lambda e: ["compress", f"{e.fx}/good.onnx", "-r", f"{e.fx}/unknown_step.yaml",
                                          "-o", f"{e.out}/run"], "shrinkify"),
    C("compress-recipe-not-mapping", lambda e: ["compress", f"{e.fx}/good.onnx", "-r", f"{e.fx}/not_a_mapping.yaml",
                                                "-o", f"{e.out}/run"], "steps"),
    C("compress-recipe-bad-yaml", lambda e: ["compress", f"{e.fx}/good.onnx", "-r", f"{e.fx}/bad.yaml",
                                             "-o", f"{e.out}/run"], "YAML"),
    C("compress-no-such-recipe", lambda e: ["compress", f"{e.fx}/good.onnx", "-r", "int9", "-o", f"{e.out}/run"],
      "int9"),
    C("distill-teacher-module-missing", lambda e: ["distill", "-t", "nope_pkg.module:f", "-o", f"{e.out}/s.pt2",
                                                   "--derive", "width=0.5", "-d", f"{e.fx}/unlabelled64.npz"],
      "nope_pkg"),
    C("distill-width-out-of-range", lambda e: ["distill", "-t", FACTORY, "-o", f"{e.out}/s.pt2", "--derive", "width=1.5",
                                               "-d", f"{e.fx}/unlabelled64.npz"], "0 < F < 1"),
    C("distill-unknown-derive", lambda e: ["distill", "-t", FACTORY, "-o", f"{e.out}/s.pt2", "--derive", "depth=2",
                                           "-d", f"{e.fx}/unlabelled64.npz"], "layers=K"),
    C("distill-unknown-loss", lambda e: ["distill", "-t", FACTORY, "-o", f"{e.out}/s.pt2", "--derive", "width=0.5",
                                         "--loss", "magic", "-d", f"{e.fx}/unlabelled64.npz"], "magic"),
    C("distill-unknown-output-format", lambda e: ["distill", "-t", FACTORY, "-o", f"{e.out}/s.txt", "--derive",
                                                  "width=0.5", "-d", f"{e.fx}/unlabelled64.npz"], ".txt"),
    C("distill-data-missing", lambda e: ["distill", "-t", FACTORY, "-o", f"{e.out}/s.pt2", "--derive", "width=0.5",
                                         "-d", f"{e.fx}/no_such.npz"], "no_such.npz"),
    C("distill-zero-temperature", lambda e: ["distill", "-t", FACTORY, "-o", f"{e.out}/s.pt2", "--derive", "width=0.5",
                                             "--temperature", "0", "-d", f"{e.fx}/unlabelled64.npz"], "temperature"),
    C("distill-alpha-needs-labels", lambda e: ["distill", "-t", FACTORY, "-o", f"{e.out}/s.pt2", "--derive", "width=0.5",
                                               "--alpha", "0.5", "-d", f"{e.fx}/unlabelled64.npz"], "has none"),
    C("distill-no-student", lambda e: ["distill", "-t", FACTORY, "-o", f"{e.out}/s.pt2",
                                       "-d", f"{e.fx}/unlabelled64.npz"], "--derive"),
    C("recipes-unknown", lambda e: ["recipes", "int9"], "int9"),
    # --- impossible budgets and bad values ---------------------------------------------------------
    C("quantize-auto-target-above-1", lambda e: ["quantize", f"{e.fx}/good.onnx", "-o", f"{e.out}/q.onnx",
                                                 "-s", "auto", "--target-cos", "1.5"], "target_cos"),
    C("quantize-auto-unreachable-budget", lambda e: ["quantize", f"{e.fx}/good.onnx", "-o", f"{e.out}/q.onnx",
                                                     "-s", "auto", "--target-cos", "1.0", "--min-cos", "1.0",
                                                     "--max-kept", "0", "--no-bench", "-d", f"{e.fx}/good64.npz",
                                                     "--strategy", "layouts"],
      "could not reach"),
    C("quantize-auto-search-unreachable", lambda e: ["quantize", f"{e.fx}/good.onnx", "-o", f"{e.out}/q.onnx",
                                                     "-s", "auto", "--target-cos", "1.0", "--min-cos", "1.0",
                                                     "--no-bench", "-d", f"{e.fx}/good64.npz"],
      "could not reach"),
    C("quantize-bits-9", lambda e: ["quantize", f"{e.fx}/good.onnx", "-o", f"{e.out}/q.onnx", "-s", "int4-weight",
                                    "--bits", "9"], "--bits"),
    C("quantize-unknown-scheme", lambda e: ["quantize", f"{e.fx}/good.onnx", "-o", f"{e.out}/q.onnx", "-s", "int3"],
      "int3"),
    C("prune-sparsity-1", lambda e: ["prune", FACTORY, "-o", f"{e.out}/p.pt2", "-s", "1.0"], "sparsity"),
    C("pack-sparsity-above-1", lambda e: ["pack", f"{e.fx}/good.onnx", "-o", f"{e.out}/p.dsz", "-s", "1.5"],
      "sparsity"),
    C("bench-zero-threads", lambda e: ["bench", f"{e.fx}/good.onnx", "--threads", "0"], "--threads"),
    # trial u: per-position labels were a ValueError traceback (exit 1); labels of no class (999, -1, NaN) scored 0 %
    C("bench-labels-per-position", lambda e: ["bench", f"{e.fx}/good.onnx", "-d", f"{e.fx}/seqlabels4.npz",
                                              "--repeats", "1"], "labels have shape [64, 3]"),
    C("bench-labels-out-of-range", lambda e: ["bench", f"{e.fx}/good.onnx", "-d", f"{e.fx}/badlabels4.npz",
                                              "--repeats", "1"], "labels run from 5 to 8"),
    C("quantize-eval-labels-out-of-range", lambda e: ["quantize", f"{e.fx}/good.onnx", "-o", f"{e.out}/q.onnx",
                                                      "--scheme", "int8-dynamic", "--eval-data",
                                                      f"{e.fx}/badlabels4.npz"], "labels run from 5 to 8"),
    C("compress-zero-repeats", lambda e: ["compress", f"{e.fx}/good.onnx", "-r", "int8", "-o", f"{e.out}/run",
                                          "--repeats", "0"], "--repeats"),
    C("demo-unknown-model", lambda e: ["demo", "--out", f"{e.out}/demo", "--model", "resnet9000"], "resnet9000"),
    C("quantize-missing-output-option", lambda e: ["quantize", f"{e.fx}/good.onnx"], "--output"),
    C("prune-unknown-option", lambda e: ["prune", FACTORY, "-o", f"{e.out}/p.pt2", "--sparsityy", "0.5"],
      "--sparsityy"),
    # --- outputs: existing, unwritable, the input ------------------------------------------------
    C("convert-output-exists", lambda e: ["convert", f"{e.fx}/good.onnx", f"{e.out}/out.onnx"], "--force",
      setup=_existing),
    C("quantize-output-exists", lambda e: ["quantize", f"{e.fx}/good.onnx", "-o", f"{e.out}/out.onnx"], "--force",
      setup=_existing),
    C("pack-output-exists", lambda e: ["pack", f"{e.fx}/good.onnx", "-o", f"{e.out}/out.dsz", "--lossless"],
      "--force", setup=_existing),
    C("unpack-output-exists", lambda e: ["unpack", f"{e.fx}/good.dsz", "-o", f"{e.out}/out.onnx"], "--force",
      setup=_existing),
    C("optimize-missing-onnx", lambda e: ["optimize", f"{e.fx}/nope.onnx", "-o", f"{e.out}/o.onnx"], "does not exist"),
    C("optimize-garbage-onnx", lambda e: ["optimize", f"{e.fx}/garbage.onnx", "-o", f"{e.out}/o.onnx"], "garbage.onnx"),
    C("optimize-nan-onnx", lambda e: ["optimize", f"{e.fx}/nan.onnx", "-o", f"{e.out}/o.onnx"], "NaN"),
    C("optimize-output-exists", lambda e: ["optimize", f"{e.fx}/good.onnx", "-o", f"{e.out}/out.onnx"], "--force",
      setup=_existing),
    C("optimize-output-symlink-to-input", lambda e: ["optimize", f"{e.fx}/good.onnx", "-o", f"{e.fx}/link.onnx",
                                                     "--force"], "same file"),
    C("optimize-bad-level", lambda e: ["optimize", f"{e.fx}/good.onnx", "-o", f"{e.out}/o.onnx", "--level", "all"],
      "level"),
    C("optimize-fuse-not-a-transformer", lambda e: ["optimize", f"{e.fx}/good.onnx", "-o", f"{e.out}/o.onnx",
                                                    "--fuse", "transformer"], "no attention block"),
    C("convert-output-side-file-exists", lambda e: ["convert", f"{e.fx}/good.onnx", f"{e.out}/new.onnx"],
      "new.onnx.data already exists", setup=lambda e: (e.out / "new.onnx.data").write_bytes(b"earlier tensors")),
    C("compress-output-not-empty", lambda e: ["compress", f"{e.fx}/good.onnx", "-r", "int8", "-o", f"{e.out}"],
      "not empty", setup=_existing),
    C("convert-output-is-input", lambda e: ["convert", f"{e.fx}/good.onnx", f"{e.fx}/good.onnx", "--force"],
      "same file"),
    C("quantize-output-symlink-to-input", lambda e: ["quantize", f"{e.fx}/good.onnx", "-o", f"{e.fx}/link.onnx",
                                                     "--force"], "same file"),
    C("pack-output-is-input", lambda e: ["pack", f"{e.fx}/good.dsz", "-o", f"{e.fx}/good.dsz", "--force"],
      "same file"),
    C("unpack-output-symlink-to-input", lambda e: ["unpack", f"{e.fx}/good.dsz", "-o", f"{e.out}/l.onnx", "--force"],
      "same file", setup=lambda e: (e.out / "l.onnx").symlink_to(e.fx / "good.dsz")),
    C("prune-output-is-weights", lambda e: ["prune", FACTORY, "-w", f"{e.fx}/mlp.safetensors", "-s", "0.5",
                                            "-o", f"{e.fx}/mlp.safetensors", "--force"], "same file"),
    C("convert-output-is-folder", lambda e: ["convert", f"{e.fx}/good.onnx", f"{e.fx}/a_folder.onnx", "--force"],
      "directory"),
    C("convert-output-folder-missing", lambda e: ["convert", f"{e.fx}/good.onnx", f"{e.out}/no/such/m.onnx"],
      "does not exist"),
    C("quantize-output-under-a-file", lambda e: ["quantize", f"{e.fx}/good.onnx", "-o",
                                                 f"{e.fx}/not_a_folder/q.onnx"], "not_a_folder"),
    C("convert-output-unwritable", lambda e: ["convert", f"{e.fx}/good.onnx", "/proc/deepshrink-test.onnx"],
      "/proc is not writable"),
    C("unpack-output-unwritable", lambda e: ["unpack", f"{e.fx}/good.dsz", "-o", "/proc/deepshrink-test.onnx"],
      "not writable"),
    C("compress-output-unwritable", lambda e: ["compress", f"{e.fx}/good.onnx", "-r", "int8", "-o",
                                               "/proc/deepshrink-test"], "not writable"),
    C("convert-output-unknown-format", lambda e: ["convert", f"{e.fx}/good.onnx", f"{e.out}/m.xyz"], ".xyz"),
    C("pack-output-not-dsz", lambda e: ["pack", f"{e.fx}/good.onnx", "-o", f"{e.out}/p.zip"], ".dsz"),
]


# ---- ONNX external data: the attack class on read ---------------------------------------------------
def _ext(e: Env, mutate: Callable[[onnx.TensorProto, Env], None], *, tensor: str = "W") -> None:
    """``case/m/model.onnx`` with its initializers in ``model.onnx.data``, then ``mutate`` applied to
    one initializer's external-data entries (the .data file is left as written)."""
    path = _with_external(_tiny_onnx(), e.case / "m")
    m = onnx.load(str(path), load_external_data=False)
    t = next(i for i in m.graph.initializer if i.name == tensor)
    mutate(t, e)
    onnx.save_model(m, str(path))


def _set(key: str, value: str) -> Callable[[onnx.TensorProto, Env], None]:
    def mutate(t: onnx.TensorProto, e: Env) -> None:
        for entry in t.external_data:
            if entry.key == key:
                entry.value = value
                return
        t.external_data.add(key=key, value=value)
    return mutate


def _secret(e: Env) -> Path:
    """A file outside the model's folder that the attacks try to read (48 bytes: W's size)."""
    secret = e.case / "secret.bin"
    secret.write_bytes(b"S" * 48)
    return secret


def _symlink_out(t: onnx.TensorProto, e: Env) -> None:
    (e.case / "m" / "w.bin").symlink_to(_secret(e))
    _set("location", "w.bin")(t, e)
    _set("offset", "0")(t, e)


def _symlink_dir(t: onnx.TensorProto, e: Env) -> None:
    _secret(e)
    (e.case / "m" / "sub").symlink_to(e.case)
    _set("location", "sub/secret.bin")(t, e)
    _set("offset", "0")(t, e)


def _hardlink_out(t: onnx.TensorProto, e: Env) -> None:
    os.link(_secret(e), e.case / "m" / "w.bin")
    _set("location", "w.bin")(t, e)
    _set("offset", "0")(t, e)


def _fifo(t: onnx.TensorProto, e: Env) -> None:
    os.mkfifo(e.case / "m" / "w.fifo")
    _set("location", "w.fifo")(t, e)


def _device(t: onnx.TensorProto, e: Env) -> None:
    import stat

    try:
        os.mknod(e.case / "m" / "zero", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's numbers
    except OSError:
        (e.case / "m" / "zero").symlink_to("/dev/zero")  # no CAP_MKNOD: the link form, refused as a link
    _set("location", "zero")(t, e)


def _folder(t: onnx.TensorProto, e: Env) -> None:
    (e.case / "m" / "adir").mkdir()
    _set("location", "adir")(t, e)


def _dup_location(t: onnx.TensorProto, e: Env) -> None:
    t.external_data.add(key="location", value="../secret.bin")


def _no_location(t: onnx.TensorProto, e: Env) -> None:
    kept = [(x.key, x.value) for x in t.external_data if x.key != "location"]
    del t.external_data[:]
    for k, v in kept:
        t.external_data.add(key=k, value=v)


def _not_marked_external(t: onnx.TensorProto, e: Env) -> None:
    t.data_location = TensorProto.DEFAULT
    t.raw_data = np.zeros(12, np.float32).tobytes()


def _E(id: str, mutate: Callable[[onnx.TensorProto, Env], None], expect: str, cmd: str = "info") -> Any:
    def argv(e: Env) -> list[str]:
        model = f"{e.case}/m/model.onnx"
        return {"info": ["info", model], "quantize": ["quantize", model, "-o", f"{e.out}/q.onnx"],
                "convert": ["convert", model, f"{e.out}/m.pt2"], "pack": ["pack", model, "-o", f"{e.out}/p.dsz"],
                "bench": ["bench", model, "--repeats", "1"],
                "compress": ["compress", model, "-r", "int8", "-o", f"{e.out}/run"]}[cmd]
    return C(f"external-{id}", argv, expect, setup=lambda e: _ext(e, mutate))


EXTERNAL = [
    _E("dotdot", _set("location", "../secret.bin"), "escapes"),  # CVE-2022-25882
    _E("dotdot-nested", _set("location", "sub/../../secret.bin"), "escapes", cmd="quantize"),
    _E("dotdot-backslash", _set("location", "..\\secret.bin"), "escapes", cmd="pack"),
    _E("absolute", _set("location", "/etc/passwd"), "absolute"),  # CVE-2024-27318
    _E("absolute-dev-zero", _set("location", "/dev/zero"), "absolute", cmd="convert"),
    _E("windows-drive", _set("location", "C:/Windows/win.ini"), "absolute"),
    _E("symlink-out", _symlink_out, "symbolic link", cmd="quantize"),  # CVE-2026-27489
    _E("symlinked-folder", _symlink_dir, "symbolic link"),
    _E("hardlink-out", _hardlink_out, "hard link", cmd="bench"),  # CVE-2026-34446
    _E("fifo", _fifo, "FIFO"),
    _E("device", _device, "zero"),
    _E("folder", _folder, "folder"),
    _E("missing-file", _set("location", "nope.bin"), "missing", cmd="compress"),
    _E("offset-past-end", _set("offset", "4096"), "past the end"),
    _E("length-past-end", _set("length", "4096"), "past the end"),
    _E("length-beyond-memory", _set("length", str(1 << 62)), "past the end", cmd="quantize"),
    _E("length-short-of-shape", _set("length", "8"), "needs 48 bytes"),
    _E("offset-junk", _set("offset", "12abc"), "not a non-negative integer"),
    _E("offset-negative", _set("offset", "-4"), "not a non-negative integer"),
    _E("length-float", _set("length", "4.8e1"), "not a non-negative integer"),
    _E("junk-key", _set("__class__", "x"), "unknown external-data key"),  # CVE-2026-34445
    _E("junk-key-length-alias", _set("_length", "99999999999"), "unknown external-data key"),
    _E("duplicate-location", _dup_location, "repeats"),
    _E("no-location", _no_location, "no location"),
    _E("empty-location", _set("location", ""), "no location"),
    _E("control-char-location", _set("location", "model.onnx.data\x00../../etc/passwd"), "control characters"),
    _E("basepath", _set("basepath", "/etc"), "basepath"),
    _E("entries-on-inline-tensor", _not_marked_external, "not marked EXTERNAL"),
]


def _fifo_watchdog(folder: Path, stop: threading.Event, opened: list[str]) -> None:
    """Unblock any reader stuck on a FIFO under ``folder``: open its write end (which succeeds only
    while a reader waits) and close it, so the reader sees end-of-file and the test fails instead
    of hanging. Records the FIFOs that were opened for reading."""
    while not stop.is_set():
        for p in folder.rglob("*.fifo"):
            try:
                fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            opened.append(p.name)
            os.close(fd)
        time.sleep(0.02)


def _run(case: Case, tmp_path: Path, fx: Path, capfd: pytest.CaptureFixture[str]) -> None:
    env = Env(fx=fx, case=tmp_path / "case", out=tmp_path / "out")
    env.case.mkdir()
    env.out.mkdir()
    if case.setup is not None:
        case.setup(env)
    before_out, before_fx, before_case = _listing(env.out), _listing(fx), _listing(env.case)
    argv = case.argv(env)
    stop, opened = threading.Event(), []
    watchdog = threading.Thread(target=_fifo_watchdog, args=(env.case, stop, opened), daemon=True)
    watchdog.start()
    capfd.readouterr()
    try:
        try:
            status = run_app(argv)
        except BaseException as exc:  # noqa: BLE001 - the test's point: nothing escapes as a traceback
            pytest.fail(f"deepshrink {' '.join(argv)} raised {type(exc).__name__}: {exc}")
    finally:
        stop.set()
        watchdog.join()
    out, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    shown = f"deepshrink {' '.join(argv)}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    assert status == 2, shown
    assert "Traceback" not in out + err, shown
    assert len(lines) == 1, shown
    assert case.expect.lower() in lines[0].lower(), shown
    assert _listing(env.out) == before_out, f"files left behind in the output folder\n{shown}"
    assert _listing(fx) == before_fx, f"the shared inputs changed\n{shown}"
    assert _listing(env.case) == before_case, f"the row's inputs changed\n{shown}"
    assert not (fx / MARKER).exists(), f"code from a model file ran\n{shown}"
    assert not opened, f"a FIFO was opened for reading\n{shown}"


@pytest.mark.parametrize("case", CASES + EXTERNAL)
def test_bad_input(case: Case, tmp_path: Path, fx: Path, capfd: pytest.CaptureFixture[str]) -> None:
    _run(case, tmp_path, fx, capfd)


def test_table_size() -> None:
    """The issue asks for at least 60 bad-input rows across every command, and the attack class."""
    commands = {c.values[0].argv(Env(Path("f"), Path("c"), Path("o")))[0] for c in CASES}
    assert len(CASES) >= 60
    assert commands >= {"convert", "info", "bench", "demo", "quantize", "prune", "compress", "recipes", "pack",
                        "unpack", "optimize"}
    assert len(EXTERNAL) >= 20


# ---- controls: the same files, undamaged, are accepted (so each row can fail) ----------------------
def test_external_data_inside_the_folder_loads(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from deepshrink.backends.onnx import load_onnx

    path = _with_external(_tiny_onnx(), tmp_path / "m")
    model = load_onnx(path)
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "W"))
    np.testing.assert_array_equal(w, numpy_helper.to_array(_tiny_onnx().graph.initializer[0]))
    assert all(i.data_location == TensorProto.DEFAULT for i in model.graph.initializer)
    assert run_app(["info", str(path)]) == 0
    # a sub-folder and an explicit offset/length (what onnx writes for several tensors) are fine
    sub = tmp_path / "s"
    (sub / "w").mkdir(parents=True)
    onnx.save_model(_tiny_onnx(), str(sub / "model.onnx"), save_as_external_data=True, location="w/all.bin",
                    size_threshold=0)
    assert run_app(["info", str(sub / "model.onnx")]) == 0


def test_good_inputs_pass(fx: Path, tmp_path: Path) -> None:
    """The rows' good files work: each bad row differs from a working call by the one defect."""
    assert run_app(["info", str(fx / "good.onnx")]) == 0
    assert run_app(["info", str(fx / "mlp.pt2")]) == 0
    assert run_app(["info", FACTORY, "-w", str(fx / "mlp.safetensors")]) == 0
    assert run_app(["unpack", str(fx / "good.dsz"), "-o", str(tmp_path / "u.onnx")]) == 0
    assert run_app(["convert", str(fx / "good.onnx"), str(tmp_path / "c.onnx"), "--force"]) == 0


# ---- the write side (CVE-2025-51480) ---------------------------------------------------------------
def _loaded_external(location: str) -> onnx.ModelProto:
    """A model in memory whose W carries its bytes but still says it lives at ``location``."""
    m = _tiny_onnx()
    t = m.graph.initializer[0]
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    return m


@pytest.mark.parametrize("location", ["../escaped.bin", "/tmp/deepshrink-escaped.bin", "sub/../../escaped.bin"])
def test_write_refuses_unsafe_location(tmp_path: Path, location: str) -> None:
    from deepshrink.backends.onnx import save_onnx
    from deepshrink.errors import InputError

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match="absolute|escapes"):
        save_onnx(_loaded_external(location), out / "m.onnx")
    assert list(out.iterdir()) == []
    assert not (tmp_path / "escaped.bin").exists() and not Path("/tmp/deepshrink-escaped.bin").exists()


def test_write_inlines_loaded_external_tensor(tmp_path: Path) -> None:
    """A safe location whose bytes are loaded: written inside the .onnx, no side file anywhere."""
    from deepshrink.backends.onnx import save_onnx

    save_onnx(_loaded_external("w.bin"), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    back = onnx.load(str(tmp_path / "m.onnx"))
    assert back.graph.initializer[0].data_location == TensorProto.DEFAULT


def test_load_refuses_unloaded_external_proto(tmp_path: Path) -> None:
    """A ModelProto in memory that points at files: its location was never checked, so it is refused."""
    import deepshrink as ds
    from deepshrink.errors import InputError

    m = _tiny_onnx()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../../etc/passwd")
    with pytest.raises(InputError, match="escapes"):
        ds.load(m)


def test_write_external_data_replaces_links_not_targets(tmp_path: Path, fx: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A large model is written with a side file; an existing ``<out>.data`` that is a symlink or a hard
    link to a file elsewhere is replaced as a name, never written through (with ``--force``)."""
    import deepshrink.backends.onnx as bo

    monkeypatch.setattr(bo, "EXTERNAL_DATA_THRESHOLD", 0)
    out = tmp_path / "out"
    out.mkdir()
    onnx.save_model(_tiny_onnx(width=300), str(tmp_path / "wide.onnx"))  # W: 4.8 KB, over onnx's 1 KB cut
    victim_s, victim_h = tmp_path / "victim_s.bin", tmp_path / "victim_h.bin"
    victim_s.write_bytes(b"precious")
    victim_h.write_bytes(b"precious")
    for name, victim, link in (("s.onnx", victim_s, os.symlink), ("h.onnx", victim_h, os.link)):
        (out / name).write_bytes(b"old")
        link(victim, out / f"{name}.data")
        monkeypatch.chdir(out)  # onnx's own writer looked for the side file in the current folder
        assert run_app(["convert", str(tmp_path / "wide.onnx"), str(out / name), "--force", "--no-verify"]) == 0
        assert victim.read_bytes() == b"precious"
        assert not (out / f"{name}.data").is_symlink() and (out / f"{name}.data").stat().st_nlink == 1
        assert run_app(["info", str(out / name)]) == 0


def test_onnx2torch_path_goes_through_the_checked_loader(tmp_path: Path) -> None:
    from deepshrink.convert.onnx2torch import onnx_to_torch
    from deepshrink.errors import InputError

    e = Env(fx=tmp_path, case=tmp_path, out=tmp_path)
    _ext(e, _set("__class__", "x"))
    with pytest.raises(InputError, match="unknown external-data key"):
        onnx_to_torch(tmp_path / "m" / "model.onnx")
