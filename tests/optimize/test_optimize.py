"""`deepshrink optimize` / ds.optimize: ORT offline levels, shape inference, constant folding /
dead-node removal, fp16, transformer fusions; parity-checked, written atomically; bad input refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import deepshrink as ds
from cli_helpers import one_line_error, run_cli
from deepshrink.errors import InputError, MissingExtraError, ParityError, UnsupportedError
from deepshrink.optimize import OptimizeConfig, has_onnxslim, op_counts, optimize

_run = run_cli
_one_line_error = one_line_error


def _foldable(path=None) -> onnx.ModelProto:
    """y = relu(conv(x, W) + (b1 + b2)): ``b1 + b2`` is a constant subgraph; an Identity feeds nothing."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W")
    b1 = numpy_helper.from_array(rng.standard_normal((1, 8, 1, 1)).astype(np.float32), "b1")
    b2 = numpy_helper.from_array(rng.standard_normal((1, 8, 1, 1)).astype(np.float32), "b2")
    nodes = [
        helper.make_node("Add", ["b1", "b2"], ["b"], name="const_add"),
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "b"], ["cb"], name="bias"),
        helper.make_node("Relu", ["cb"], ["y"], name="relu"),
        helper.make_node("Identity", ["c"], ["unused"], name="dead"),
    ]
    g = helper.make_graph(nodes, "foldable",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 8, 8])],
                          [w, b1, b2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    if path is not None:
        onnx.save(m, str(path))
    return m


def test_basic_folds_constants_and_drops_dead_nodes(tmp_path):
    src = tmp_path / "in.onnx"
    _foldable(src)
    out = tmp_path / "out.onnx"
    res = optimize(src, OptimizeConfig(simplify="none"), output=out)
    assert res.ops_before == {"Add": 2, "Conv": 1, "Identity": 1, "Relu": 1}
    # ORT basic: b1 + b2 folded into one initializer, the dead Identity removed, the bias Add
    # fused into the Conv (Conv + Add fusion), Conv + Relu left as standard ONNX (no com.microsoft op)
    assert res.ops_after == {"Conv": 1, "Relu": 1}, res.ops_after
    assert res.parity.ok and res.parity.max_abs < 1e-5
    written = onnx.load(str(out))
    assert op_counts(written) == res.ops_after
    assert all(o.domain in ("", "ai.onnx") for o in written.opset_import)  # portable
    onnx.checker.check_model(written)
    assert not res.warnings


def test_extended_and_layout_use_ort_ops_and_say_so(tmp_path):
    src = tmp_path / "in.onnx"
    _foldable(src)
    ext = optimize(src, OptimizeConfig(level="extended", simplify="none"))
    assert ext.ops_after == {"com.microsoft::FusedConv": 1}  # Conv + Relu into ORT's FusedConv
    assert any("runs only on ONNX Runtime" in w for w in ext.warnings)
    lay = optimize(src, OptimizeConfig(level="layout", simplify="none"))
    assert any(k.startswith("com.microsoft.nchwc::") for k in lay.ops_after), lay.ops_after
    assert any("same instruction set" in w for w in lay.warnings)
    assert lay.parity.ok and ext.parity.ok


def test_fp16_halves_the_weights_and_keeps_float32_io(tmp_path):
    src = tmp_path / "in.onnx"
    _foldable(src)
    res = optimize(src, OptimizeConfig(fp16=True, simplify="none"), output=tmp_path / "h.onnx")
    m = onnx.load(str(tmp_path / "h.onnx"))
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    big = [t for t in m.graph.initializer if np.prod(t.dims) >= 8]
    assert big and all(t.data_type == TensorProto.FLOAT16 for t in big)
    assert res.parity.ok and 0 < res.parity.max_abs < 1e-2  # float16 rounding, not zero


@pytest.mark.skipif(not has_onnxslim(), reason="onnxslim not installed (pip install 'deepshrink[optimize]')")
def test_onnxslim_folds_before_ort(tmp_path):
    src = tmp_path / "in.onnx"
    _foldable(src)
    res = optimize(src, OptimizeConfig(simplify="onnxslim"))
    assert any(s.startswith("onnxslim") for s in res.steps)
    assert res.ops_after == {"Conv": 1, "Relu": 1} and res.parity.ok


@pytest.mark.skipif(has_onnxslim(), reason="onnxslim is installed")
def test_onnxslim_required_but_missing_is_refused(tmp_path):
    with pytest.raises(MissingExtraError, match=r"deepshrink\[optimize\]"):
        optimize(_foldable(), OptimizeConfig(simplify="onnxslim"))


def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    import deepshrink.optimize as mod

    real = mod._ort_optimize

    def broken(model, level):
        m = real(model, level)
        t = next(t for t in m.graph.initializer if len(t.dims) == 4)
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.01, t.name))
        return m

    monkeypatch.setattr(mod, "_ort_optimize", broken)
    out = tmp_path / "out.onnx"
    with pytest.raises(ParityError, match="nothing written"):
        optimize(_foldable(), OptimizeConfig(simplify="none"), output=out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not has_onnxslim(), reason="onnxslim is not installed")
def test_onnxslim_is_left_out_when_it_changes_the_outputs(tmp_path, monkeypatch):
    """onnxslim trusts a file's declared output shape (ddddocr's OCR model declares [1, seqlen] for
    [seqlen, 1, 8210]) and reshaped the output to it: the whole optimize failed, "max-abs inf". Under
    ``simplify="auto"`` the pipeline is rebuilt without onnxslim, kept when that holds, and said."""
    import deepshrink.optimize as mod

    real = mod._slim

    def reshaping(model):  # what onnxslim did to the OCR model's output: flattened to the declaration's rank
        m = real(model)
        out = m.graph.output[0].name
        for n in m.graph.node:
            n.output[:] = [f"{o}_pre" if o == out else o for o in n.output]
        m.graph.initializer.append(numpy_helper.from_array(np.array([1, -1], np.int64), "flat"))
        m.graph.node.append(helper.make_node("Reshape", [f"{out}_pre", "flat"], [out]))
        del m.graph.output[0].type.tensor_type.shape.dim[:]
        return m

    monkeypatch.setattr(mod, "_slim", reshaping)
    out = tmp_path / "out.onnx"
    res = optimize(_foldable(), OptimizeConfig(simplify="auto"), output=out)
    assert res.parity.ok and out.exists()
    assert not any(s.startswith("onnxslim") for s in res.steps)
    [w] = [w for w in res.warnings if w.startswith("onnxslim left out")]
    assert "has shape [1, 1024] where the reference has [2, 8, 8, 8]" in w  # the shape, not "max-abs inf"
    with pytest.raises(ParityError, match="has shape .* where the reference has"):  # asked for: not left out
        optimize(_foldable(), OptimizeConfig(simplify="onnxslim"))


def test_fuse_transformer_refuses_a_cnn(tmp_path):
    with pytest.raises(UnsupportedError, match="no attention block"):
        optimize(_foldable(), OptimizeConfig(fuse="transformer", simplify="none"), output=tmp_path / "o.onnx")
    assert list(tmp_path.iterdir()) == []


def test_public_api_and_bad_config():
    assert ds.OptimizeConfig is OptimizeConfig
    res = ds.optimize(_foldable(), ds.OptimizeConfig(simplify="none"))  # the module is the verb
    assert res.ops_after == {"Conv": 1, "Relu": 1}
    with pytest.raises(InputError, match="level"):
        OptimizeConfig.build(level="all")
    with pytest.raises(TypeError, match="unexpected keyword argument 'threads'"):
        optimize(_foldable(), threads=2)


def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys):
    src = tmp_path / "in.onnx"
    _foldable(src)
    out = tmp_path / "out.onnx"
    cases = [
        (("optimize", tmp_path / "missing.onnx", "-o", out), "missing.onnx"),
        (("optimize", src, "-o", out, "--level", "fast"), "level"),
        (("optimize", src, "-o", out, "--fuse", "transformer", "--simplify", "none"), "no attention block"),
        (("optimize", src, "-o", tmp_path / "out.txt"), ".onnx"),
        (("optimize", src, "-o", src), "same file"),
    ]
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(src.read_bytes()[:100])
    cases.append((("optimize", trunc, "-o", out), "trunc.onnx"))
    for args, needle in cases:
        rc, _, err = _run(capsys, *args)
        assert rc == 2, (args, err)
        _one_line_error(err, needle)
        assert not out.exists() and not (tmp_path / "out.txt").exists()
    out.write_bytes(b"keep")
    rc, _, err = _run(capsys, "optimize", src, "-o", out)
    assert rc == 2 and out.read_bytes() == b"keep"
    _one_line_error(err, "--force")


@pytest.mark.trains
def test_digits_cnn_extended_cli(tmp_path, capsys, cnn_onnx):
    """The real CNN: three Conv+ReLU pairs fuse into FusedConv; the table shows ops, size and latency."""
    out = tmp_path / "cnn.opt.onnx"
    rc, stdout, err = _run(capsys, "optimize", cnn_onnx, "-o", out, "--level", "extended", "--data", "digits:test",
                           "--repeats", "3", "--json")
    assert rc == 0, err
    import json

    res = json.loads(stdout)
    before, after = res["ops_before"], res["ops_after"]
    assert before["Conv"] == 4 and before["Relu"] == 4
    assert after["com.microsoft::FusedConv"] == 3 and res["nodes_after"] == res["nodes_before"] - 3
    assert res["parity"]["ok"] and res["parity"]["max_abs"] < 1e-4
    rows = res["bench"]["rows"]
    assert [r["name"] for r in rows] == [cnn_onnx.name, "cnn.opt.onnx"]  # the files, not "input"/"optimised"
    assert rows[1]["accuracy"] == rows[0]["accuracy"] and rows[1]["median_ms"] > 0
    assert out.is_file() and op_counts(onnx.load(str(out))) == after


def test_minilm_transformer_fusion_and_fp16(minilm_dir):
    """MiniLM (TorchScript export): ORT's BERT fusions + onnxslim + float16 in one pass (~15 s)."""
    from deepshrink.loading import load
    from deepshrink.quantize.api import to_onnx_handle

    h = to_onnx_handle(load(str(minilm_dir)))
    res = optimize(h, OptimizeConfig(fuse="transformer", fp16=True))
    assert res.fused == {"EmbedLayerNormalization": 1, "Attention": 6, "BiasGelu": 6, "SkipLayerNormalization": 12}
    assert res.ops_after["com.microsoft::Attention"] == 6 and "Softmax" not in res.ops_after
    # 567 -> 137 nodes seen (66 without fp16: the float16 graph keeps Casts around float32-only ops)
    assert res.nodes_after < res.nodes_before / 3
    assert res.bytes_after < 0.51 * res.bytes_before  # 90.4 MB -> 45.2 MB
    # float16 weights: worst sentence cosine 0.9999987 seen, max-abs 3e-4 on unit-norm embeddings
    # (parity on right-padded masks at sequence 16, batches 2 and 3: the fused Attention's contract)
    assert res.parity.ok and res.parity.n_inputs == 5 and res.parity.outputs[0].cos_min > 0.9999
    assert any("right-padded" in w for w in res.warnings)


def test_parity_feeds_a_graph_whose_state_input_fixes_the_batch_at_its_size():
    """silero VAD v6 (input [n, 576], state h [1, 1, 128]): optimize's parity fed the user's 16 samples at once
    and ONNX Runtime refused h; the data now goes in chunks of the fixed batch, the random set at it."""
    from cli_helpers import state_input_graph
    from deepshrink.convert.parity import parity_inputs

    m = state_input_graph()
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((5, 4)).astype(np.float32), "h": rng.standard_normal((5, 1, 3)).astype(np.float32)}
    sets = parity_inputs(ds.load(m), data)
    # 4 random draws of the fixed batch (one draw alone was one sample), then the 5 samples of data one by one
    assert [len(s["x"]) for s in sets] == [1] * 9 and all(s["h"].shape == (1, 1, 3) for s in sets)
    assert len({s["x"].tobytes() for s in sets[:4]}) == 4
    res = optimize(m, OptimizeConfig(), data=data)
    assert res.parity is not None and res.parity.ok and res.parity.n_inputs == 9


def test_transformer_fusion_of_a_model_whose_heads_were_pruned(tmp_path):
    """A BERT with half its heads pruned: ORT's fusion wrote the configuration's head count on every fused
    Attention (the reshape targets it reads it from are computed in the export), so a MiniLM pruned to 9 heads ran as
    12 heads of 24 (cosine 0.905, parity refused it). Each node now gets the count its QKV weight holds, and the
    fused model matches the pruned one."""
    import torch
    transformers = pytest.importorskip("transformers")

    from deepshrink.convert.export import export_onnx
    from deepshrink.examples.minilm import SentenceEncoder
    from deepshrink.prune import StructuredPruneConfig
    from deepshrink.prune.structured import structured_prune

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, attn_implementation="eager")
    model = SentenceEncoder(transformers.BertModel(cfg)).eval()
    ids = torch.randint(1, 100, (4, 10))
    mask = torch.ones_like(ids)
    structured_prune(model, StructuredPruneConfig(ratio=0.0, heads_ratio=0.5), (ids, mask))
    h = export_onnx(model, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    assert h.metadata["deepshrink.exporter"] == "torchscript"  # auto: a Hugging Face model inside
    res = optimize(h, OptimizeConfig(fuse="transformer", simplify="none"))
    heads = [next(a.i for a in n.attribute if a.name == "num_heads") for n in res.model.model.graph.node
             if n.op_type == "Attention"]
    assert heads == [2, 2]
    assert res.parity.ok and res.parity.outputs[0].cos_min > 0.99999
