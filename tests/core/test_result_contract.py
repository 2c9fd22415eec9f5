"""One contract for every transforming verb: a ``Result`` with ``.model`` (a new handle), a typed
``.report`` and ``.save``; the input is never changed. And one format table for every path."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

import deepshrink as ds
from deepshrink.core import formats
from deepshrink.core.result import Result, VerbReport
from deepshrink.errors import InputError


@pytest.fixture(scope="module")
def mlp_and_data(digits):
    from deepshrink.examples import trained_digits_mlp

    return trained_digits_mlp(), digits.flat()


def _state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _check(res, verb: str, kind: str) -> None:
    assert isinstance(res, Result) and isinstance(res.report, VerbReport)
    assert res.report.verb == verb and res.report.summary
    assert res.model.kind == kind
    d = res.report.to_dict()
    assert set(d) == {"verb", "method", "summary", "config", "layers", "measurements", "warnings", "details"}


def test_every_verb_returns_a_result_and_leaves_its_input_alone(mlp_and_data, tmp_path):
    mlp, d = mlp_and_data
    before = _state(mlp)
    h = ds.load(mlp, input_shapes={"x": (1, 64)})

    q = ds.quantize(h, ds.Int8DynamicConfig())
    _check(q, "quantize", "onnx")
    assert q.report.method == "int8-dynamic" and q.report.measurements["quantized_layers"] == 3
    assert [r["bits"] for r in q.report.layers] == [8, 8, 8]  # fc1..fc3 stored as int8
    written = q.save(tmp_path / "q.onnx")
    assert written.kind == "onnx" and onnx.load(str(tmp_path / "q.onnx")).graph.node

    p = ds.prune(mlp, ds.MagnitudePruneConfig(sparsity=0.5), example_inputs=(torch.zeros(1, 64),))
    _check(p, "prune", "torch")
    assert p.report.method == "magnitude" and p.model.model is not mlp
    assert [r["name"] for r in p.report.layers] == ["fc1", "fc2", "fc3"]
    assert all(abs(r["sparsity"] - 0.5) < 0.01 for r in p.report.layers)
    assert abs(p.report.measurements["sparsity_after"] - 0.5) < 0.01
    p.save(tmp_path / "p.safetensors")

    o = ds.optimize(q.model, ds.OptimizeConfig(simplify="none"))
    _check(o, "optimize", "onnx")
    assert isinstance(o.model.model, onnx.ModelProto) and o.report.measurements["nodes_after"] > 0

    c = ds.convert(h, tmp_path / "m.onnx")
    _check(c, "convert", "onnx")
    assert c.output == tmp_path / "m.onnx" and c.report.measurements["parity_max_abs"] < 1e-4

    k = ds.pack(h, ds.PackConfig(), output=tmp_path / "m.dsz")
    assert isinstance(k, Result) and k.report.verb == "pack" and k.report.method == "lossless"
    assert k.output == tmp_path / "m.dsz" and k.report.measurements["nbytes"] == (tmp_path / "m.dsz").stat().st_size

    s = ds.distill(mlp, None, (d.x_train[:64], d.y_train[:64]), ds.DistillConfig(derive="width=0.5", epochs=1),
                   progress=False)
    _check(s, "distill", "torch")
    assert s.report.measurements["student_params"] < s.report.measurements["teacher_params"]

    after = mlp.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no verb changed the model it was given


def test_save_refuses_what_it_cannot_write(mlp_and_data, tmp_path):
    mlp, _ = mlp_and_data
    q = ds.quantize(ds.load(copy.deepcopy(mlp), input_shapes={"x": (1, 64)}), ds.Int8DynamicConfig())
    with pytest.raises(InputError, match=r"unknown format '\.foo'"):
        q.save(tmp_path / "q.foo")
    with pytest.raises(InputError, match="does not write TensorFlow Lite"):
        q.save(tmp_path / "q.tflite")
    (tmp_path / "q.onnx").write_bytes(b"x")
    with pytest.raises(InputError, match="already exists"):
        q.save(tmp_path / "q.onnx")
    assert (tmp_path / "q.onnx").read_bytes() == b"x"


def test_the_format_table_answers_for_every_path(tmp_path):
    assert formats.by_suffix("A.ONNX").name == "onnx"
    assert formats.by_suffix("m.xml").companions == (".bin",)
    assert formats.by_suffix("m.dsz").holds == "packed"
    assert formats.by_suffix("weights.pt").name == "torch-pickle"
    assert formats.by_suffix("m.unknown") is None
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert formats.format_of(hf).name == "hf-folder"
    sm = tmp_path / "sm"
    sm.mkdir()
    (sm / "saved_model.pb").write_bytes(b"")
    assert formats.format_of(sm).name == "saved-model"
    with pytest.raises(InputError, match=r"use \.onnx, \.pt2$"):
        formats.require("out.tflite", ("onnx", "pt2"), what="student")
    (tmp_path / "m.xml").write_text("<net/>")
    (tmp_path / "m.bin").write_bytes(b"\0" * 8)
    assert formats.files_of(tmp_path / "m.xml") == [tmp_path / "m.bin"]
    from deepshrink.evaluate.size import file_size

    assert file_size(tmp_path / "m.xml") == len("<net/>") + 8
    assert np.isclose(len(formats.FORMATS), len({f.name for f in formats.FORMATS}))  # names are unique


def test_configs_declare_what_they_take_emit_and_need():
    """A chain is checked from what each config declares (``Config.contract``), before any work."""
    rows = [
        (ds.Int8DynamicConfig(), (("torch", "onnx"), "onnx", None)),
        (ds.Int8StaticConfig(), (("torch", "onnx"), "onnx", "data")),
        (ds.WeightOnlyConfig(method="gptq"), (("torch", "onnx"), "onnx", "data")),
        (ds.QATConfig(epochs=2), (("torch",), "onnx", "labels")),
        (ds.QATConfig(epochs=0), (("torch",), "onnx", "data")),
        (ds.MixedPrecisionConfig(overrides={"fc1": ds.Int8StaticConfig()}), (("torch", "onnx"), "onnx", "data")),
        (ds.MagnitudePruneConfig(sparsity=0.5), (("torch",), None, None)),  # pruning writes the kind it took
        (ds.MagnitudePruneConfig(sparsity=0.5, finetune_epochs=1), (("torch",), None, "labels")),
        (ds.GradualPruneConfig(final_sparsity=0.5), (("torch",), None, "labels")),
        (ds.StructuredPruneConfig(ratio=0.5, importance="activation"), (("torch",), None, "data")),
        (ds.DistillConfig(derive="width=0.5"), (("torch",), "torch", "data")),
        (ds.PackConfig(), (("torch", "onnx"), "dsz", None)),
    ]
    for cfg, (takes, emits, needs) in rows:
        c = cfg.contract()
        assert (c.takes, c.emits, c.needs) == (takes, emits, needs), type(cfg).__name__


def test_a_handle_answers_for_the_model_it_holds(mlp_and_data):
    """``result.model`` is a handle, yet reads like the model: module methods on a torch handle, graph
    fields on an ONNX one; copying a handle copies the handle."""
    mlp, _ = mlp_and_data
    p = ds.prune(mlp, ds.MagnitudePruneConfig(sparsity=0.5), example_inputs=(torch.zeros(1, 64),))
    assert sum(t.numel() for t in p.model.parameters()) == sum(t.numel() for t in mlp.parameters())
    assert p.model.eval()(torch.zeros(2, 64)).shape == (2, 10)
    q = ds.quantize(p.model, ds.Int8DynamicConfig())
    assert q.model.graph is q.model.model.graph and q.model.opset_import
    assert type(copy.deepcopy(q.model)).__name__ == "ModelHandle"
    with pytest.raises(AttributeError, match="onnx model"):
        _ = q.model.no_such_thing
