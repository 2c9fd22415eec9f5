import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import deepshrink as ds
from deepshrink.backends.onnx import make_session, run_onnx
from deepshrink.convert.parity import check_parity, compare_outputs, merge_outputs
from deepshrink.errors import InputError, ParityError


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_cnn_export_parity_and_dynamic_batch(tmp_path, digits_cnn, exporter, rng):
    h = ds.load(digits_cnn, input_shapes=["x:1x1x8x8"])
    res = ds.convert(h, tmp_path / "m.onnx", exporter=exporter, data="digits:val")
    parity = res.hops[0].parity
    assert parity.ok and parity.max_abs < 1e-4  # 3.8e-06 seen
    assert parity.n_inputs == 5 + 64  # random batches of 2 and 3, then 64 real digits
    assert "over 69 samples (64 from the data, 5 random)" in parity.summary()  # the count the user asked for, named
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert {p.key: p.value for p in model.metadata_props}["deepshrink.exporter"] == exporter
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = rng.standard_normal((7, 1, 8, 8)).astype(np.float32)
    out = run_onnx(make_session(tmp_path / "m.onnx"), {"x": x})[0]
    assert np.abs(out - digits_cnn(torch.from_numpy(x)).detach().numpy()).max() < 1e-4  # 3e-06 seen
    assert not list(tmp_path.glob("*.data")) and not list(tmp_path.glob(".*"))  # one file, no leftovers


def test_pt2_and_opset_routes(tmp_path, digits_mlp, cnn_onnx):
    h = ds.load(digits_mlp, input_shapes=["x:1x64"])
    res = ds.convert(h, tmp_path / "m.pt2")
    assert res.hops[0].parity.ok and res.hops[0].parity.max_abs < 1e-5  # 0 seen
    res = ds.convert(str(cnn_onnx), tmp_path / "o19.onnx", opset=19)
    assert res.hops[0].parity.max_abs < 1e-5
    assert {o.domain: o.version for o in onnx.load(str(tmp_path / "o19.onnx")).opset_import}.get("", 0) == 19


def _corrupt(path, name, factor=1.5):
    model = onnx.load(str(path))
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            a = numpy_helper.to_array(init).copy()
            a[3] *= factor
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(a, name))
    return ds.load(model)


def test_bisect_names_the_first_diverging_layer(digits_cnn, cnn_onnx):
    h = ds.load(digits_cnn, input_shapes=["x:1x1x8x8"])
    bad = _corrupt(cnn_onnx, "block_conv2.weight")
    report = check_parity(h, bad)
    assert not report.ok and report.max_abs > 0.1  # 3.5 seen
    assert "over 5 random samples" in report.summary()  # no data: every sample drawn
    assert report.divergence is not None and report.divergence.reference_layer == "block_conv2"
    assert report.divergence.candidate_op == "Conv"
    # ONNX vs ONNX: the reference's own node is named
    onnx_ref = ds.load(str(cnn_onnx))
    report2 = check_parity(onnx_ref, bad)
    conv_nodes = [n.name for n in onnx_ref.model.graph.node if n.op_type == "Conv"]
    assert report2.divergence is not None and report2.divergence.reference_layer == conv_nodes[2]
    with pytest.raises(ParityError) as err:
        check_parity(h, bad, raise_on_fail=True)
    assert "block_conv2" in err.value.report.summary()


def test_healthy_models_have_no_false_divergence(digits_cnn, cnn_onnx):
    h = ds.load(digits_cnn, input_shapes=["x:1x1x8x8"])
    from deepshrink.convert.parity import bisect_divergence

    x = h.sample_inputs(batch=2)
    assert bisect_divergence(h, ds.load(str(cnn_onnx)), x) is None  # BN folded into conv: isolated gap only


def test_compare_outputs_math():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[1.0, 0.1], [0.0, -2.0]])
    d = compare_outputs(a, b)
    assert d.max_abs == pytest.approx(4.0) and d.rel == pytest.approx(2.0)
    assert d.cos_min == pytest.approx(-1.0) and d.cos_mean == pytest.approx((1 / np.sqrt(1.01) - 1) / 2)
    assert d.top1 == 0.5


def test_top1_agreement_is_not_reported_for_unit_norm_embeddings():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # a sentence encoder's normalised output
    assert compare_outputs(emb, emb + 1e-3).top1 is None
    confident = np.full((6, 8), 1e-5)
    confident[np.arange(6), np.arange(6)] = 1 - 7e-5  # softmax rows of a sure classifier: near unit norm too
    assert compare_outputs(confident, confident).top1 == 1.0
    assert compare_outputs(3 * emb, 3 * emb).top1 == 1.0  # logits of any scale


def test_one_value_per_sample_is_compared_over_the_samples():
    """A (N, 1) output (a presence score): one sample's cosine is only its sign, so a value near 0 that flips
    would read -1; the output is judged by its cosine over all the samples instead, the same figure whether
    the output comes as (N, 1), (N,) or inside several outputs side by side."""
    from deepshrink.quantize.onnx.sensitivity import output_view

    ref = np.array([[2.0], [1.0], [1e-3], [-1.5], [0.5]])
    out = np.array([[2.1], [0.9], [-1e-3], [-1.4], [0.5]])
    over = float(ref[:, 0] @ out[:, 0] / np.linalg.norm(ref) / np.linalg.norm(out))
    d = compare_outputs(ref, out)
    assert d.cos_min == pytest.approx(over) and d.cos_mean == pytest.approx(over) and 0.99 < over < 1
    assert compare_outputs(ref[:, 0], out[:, 0]).cos_min == pytest.approx(over)
    boxes = np.arange(20.0).reshape(5, 4)
    side = compare_outputs(output_view([boxes, ref]), output_view([boxes, out]))
    assert side.cos_min == pytest.approx(over) and side.top1 == 1.0  # the (N, 4) block equal: the score decides
    from deepshrink.search.objective import _accuracy

    assert _accuracy(out, np.zeros(5, int)) is None  # one column: no argmax accuracy (it would always be 1.0 here)


def test_merge_outputs_of_data_dependent_length():
    """Sets whose outputs differ in length from set to set (NonZero's [2, count]) are compared set by
    set; where they do concatenate, the merge gives the concatenated comparison's numbers."""
    a1, b1 = np.array([[0, 1, 3], [2, 0, 1]]), np.array([[0, 1, 3], [2, 0, 4]])  # one index off by 3
    a2 = np.array([[0, 0, 1, 1, 2], [1, 5, 0, 2, 7]])
    d = merge_outputs([(a1, b1), (a2, a2.copy())], "idx")
    assert d.max_abs == 3.0 and d.rel == pytest.approx(3 / 7)  # max |ref| over both sets is 7
    # rows: (0,1,3)=(0,1,3); (2,0,1)·(2,0,4) = 8 / (√5·√20) = 0.8; the second set's 2 rows equal
    assert d.cos_min == pytest.approx(0.8) and d.cos_mean == pytest.approx((1 + 0.8 + 1 + 1) / 4)
    shifted = merge_outputs([(a1, b1), (a2, a2[:, :4])])  # a length that differs is a mismatch
    assert shifted.max_abs == float("inf")
    x, y = np.random.default_rng(0).standard_normal((2, 3, 4)), np.random.default_rng(1).standard_normal((2, 2, 4))
    m = merge_outputs([(x[0], x[1]), (y[0], y[1])])
    c = compare_outputs(np.concatenate([x[0], y[0]]), np.concatenate([x[1], y[1]]))
    assert (m.max_abs, m.rel, m.cos_min, m.top1) == pytest.approx((c.max_abs, c.rel, c.cos_min, c.top1))
    assert m.cos_mean == pytest.approx(c.cos_mean)


def test_minilm_export_parity_on_real_sentences(tmp_path, minilm_dir):
    res = ds.convert(str(minilm_dir), tmp_path / "minilm.onnx", data="sentences:64")
    parity = res.hops[0].parity
    assert parity.ok and parity.max_abs < 1e-4  # 2.1e-07 seen on 64 real sentences
    assert parity.outputs[0].name == "sentence_embedding" and parity.outputs[0].cos_min > 0.99999
    h = ds.load(str(tmp_path / "minilm.onnx"))
    assert h.tokenizer_dir is not None and (h.tokenizer_dir / "tokenizer.json").is_file()
    assert [d.dim_param for d in h.model.graph.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]
    # the tokenizer travelled: plain text now works as data for the ONNX file
    (tmp_path / "t.txt").write_text("a sentence\nanother, longer sentence than the first one\n")
    d = ds.load_data(str(tmp_path / "t.txt"), h)
    out = run_onnx(make_session(h.model), d.inputs)[0]
    assert out.shape == (2, 384)


def test_model_without_signature_needs_shapes(digits_mlp, tmp_path):
    with pytest.raises(InputError, match="--input-shape"):
        ds.convert(ds.load(digits_mlp), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


class _Branchy(torch.nn.Module):
    """A data-dependent branch: torch.export refuses it, the tracing exporter takes one path."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        if (x.abs() >= 0).all():
            return self.fc(x) * 2
        return self.fc(x)


def test_inputs_named_otherwise_than_the_forward_s_arguments_export_with_dynamo(tmp_path, recwarn):
    """An ``nn.Sequential`` takes ``input``; its spec (here given, in distillation the teacher's) says ``x``: the
    dynamic axes go to torch by position (by name, torch.export refused them and the tracing exporter took over)."""
    seq = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    h = ds.load(seq, input_shapes=["input:1x64"])
    h = h.with_model(seq, inputs=[dataclasses.replace(h.inputs[0], name="x")],
                     example_inputs={"x": h.example_inputs["input"]})
    ds.convert(h, tmp_path / "s.onnx")
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "s.onnx")).metadata_props}
    assert meta["deepshrink.exporter"] == "dynamo" and "deepshrink.exporter_fallback_reason" not in meta
    assert not [w for w in recwarn if "exporter failed" in str(w.message)]
    model = onnx.load(str(tmp_path / "s.onnx"))
    assert [i.name for i in model.graph.input] == ["x"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch stays dynamic


def test_dynamo_failure_falls_back_and_says_why(tmp_path):
    with pytest.warns(UserWarning, match="dynamo exporter failed .*GuardOnDataDependent"):
        res = ds.convert(ds.load(_Branchy(), input_shapes=["x:2x4"]), tmp_path / "b.onnx")
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "b.onnx")).metadata_props}
    assert meta["deepshrink.exporter"] == "torchscript"
    assert "data-dependent" in meta["deepshrink.exporter_fallback_reason"] and "\x1b" not in meta["deepshrink.exporter_fallback_reason"]
    assert res.hops[0].parity.ok and res.hops[0].parity.max_abs < 1e-5  # 6e-08 seen


def test_export_keeps_no_machine_paths_or_stack_traces(tmp_path, digits_cnn):
    """The dynamo exporter's per-node stack traces, paths and range facts are dropped: the same
    weights export to the same bytes, whatever was exported earlier in the process."""
    import deepshrink as ds

    h = ds.load(digits_cnn, input_shapes=["x:1x1x8x8"])
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    ds.convert(h, a)
    ds.convert(ds.load(digits_cnn, input_shapes=["x:3x1x8x8"]), b)  # other example shapes, same model
    m = onnx.load(str(a))
    keys = {p.key for n in m.graph.node for p in n.metadata_props} | {p.key for p in m.metadata_props}
    assert not any(k.startswith("pkg.") for k in keys), keys
    assert b"stack_trace" not in a.read_bytes() and str(tmp_path).encode() not in a.read_bytes()
    assert a.read_bytes() == b.read_bytes()


def test_pt2_from_a_hf_folder_keeps_its_tokenizer(tmp_path, minilm_dir):
    # trial 15i: a .pt2 written from a Hugging Face model lost the tokenizer, so text data failed on it
    ds.convert(str(minilm_dir), tmp_path / "m.pt2")
    assert (tmp_path / "m.pt2.tokenizer" / "tokenizer.json").is_file()
    h = ds.load(str(tmp_path / "m.pt2"))
    assert h.tokenizer_dir == tmp_path / "m.pt2.tokenizer"
    d = ds.load_data("sentences:3", h)
    assert d.inputs["input_ids"].shape[0] == 3


class _HFLike(torch.nn.Module):
    """A module that reads as a Hugging Face model (a ``config`` and a ``base_model_prefix``)."""

    base_model_prefix = "model"

    def __init__(self) -> None:
        super().__init__()
        self.config = {"model_type": "toy"}
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).relu()


def test_a_hugging_face_model_exports_with_torchscript_and_falls_back_to_dynamo(tmp_path, monkeypatch):
    """`auto` picks torchscript for a Hugging Face model (ORT's transformer fusions match its graph only); when
    that export fails, dynamo writes the file and the reason is recorded."""
    from deepshrink.convert import export

    assert export.resolve_exporter("auto", _HFLike()) == "torchscript"
    res = ds.convert(ds.load(_HFLike(), input_shapes=["x:2x4"]), tmp_path / "a.onnx")
    assert res.hops[0].exporter == "torchscript" and res.hops[0].parity.ok

    def broken(*a, **k):
        raise RuntimeError("tracing went wrong")

    monkeypatch.setattr(export, "_export_torchscript", broken)
    with pytest.warns(UserWarning, match="torchscript exporter failed .*tracing went wrong"):
        res = ds.convert(ds.load(_HFLike(), input_shapes=["x:2x4"]), tmp_path / "b.onnx")
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "b.onnx")).metadata_props}
    assert meta["deepshrink.exporter"] == "dynamo" and "tracing went wrong" in meta["deepshrink.exporter_fallback_reason"]
    assert res.hops[0].parity.ok
    with pytest.raises(ds.errors.UnsupportedError, match="the torchscript exporter failed"):
        ds.convert(ds.load(_HFLike(), input_shapes=["x:2x4"]), tmp_path / "c.onnx", exporter="torchscript")


def test_an_unknown_exporter_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    import deepshrink.loading

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(deepshrink.loading, "load", no_load)
    with pytest.raises(InputError, match="unknown exporter 'magic'"):
        ds.convert("some/hf-folder", tmp_path / "m.onnx", exporter="magic")
    assert not list(tmp_path.iterdir())
