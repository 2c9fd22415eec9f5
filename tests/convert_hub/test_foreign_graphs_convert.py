"""ONNX → ``.pt2`` / ``.tflite`` of graphs other toolchains write (issue 12): ``Resize`` with
constant scales or with sizes computed from ``Shape`` stays dynamic in the ``.pt2``; a reflect
``Pad`` deep in a network with dynamic H/W converts without ``--input-shape`` (the example
input is image-sized, not 7 × 7); TFLite gets ``Resize``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import deepshrink as ds
from deepshrink.backends.onnx import make_session, run_onnx


def _init(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _w(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.3).astype(np.float32)


def _model(nodes, inits, opset: int = 13, dims=("n", 3, "h", "w")) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _upsample_net(by_sizes: bool) -> onnx.ModelProto:
    """conv s2 → 2× nearest Resize (constant scales, or sizes = Shape[2:] · 2) → concat skip → conv."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["b"], pads=[1, 1, 1, 1], strides=[2, 2])]
    inits = [_init("w1", _w((4, 3, 3, 3))), _init("w2", _w((4, 4, 3, 3), 1)), _init("w3", _w((2, 8, 1, 1), 2))]
    if by_sizes:
        nodes += [helper.make_node("Shape", ["b"], ["s"]),
                  helper.make_node("Slice", ["s", "st", "en"], ["nc"]),
                  helper.make_node("Slice", ["s", "en", "big"], ["hw"]),
                  helper.make_node("Mul", ["hw", "two"], ["hw2"]),
                  helper.make_node("Concat", ["nc", "hw2"], ["sizes"], axis=0),
                  helper.make_node("Resize", ["b", "", "", "sizes"], ["u"], mode="nearest",
                                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")]
        inits += [_init("st", np.array([0], np.int64)), _init("en", np.array([2], np.int64)),
                  _init("big", np.array([4], np.int64)), _init("two", np.array([2], np.int64))]
    else:
        nodes.append(helper.make_node("Resize", ["b", "", "scales"], ["u"], mode="nearest",
                                      coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
        inits.append(_init("scales", np.array([1, 1, 2, 2], np.float32)))
    nodes += [helper.make_node("Concat", ["a", "u"], ["c"], axis=1), helper.make_node("Conv", ["c", "w3"], ["y"])]
    return _model(nodes, inits)


def _rel(ref: np.ndarray, got: np.ndarray) -> float:
    assert ref.shape == got.shape
    return float(np.abs(ref - got).max() / np.abs(ref).max())


def _check_pt2(model: onnx.ModelProto, pt2, shapes) -> list[float]:
    mod = torch.export.load(str(pt2)).module()
    sess = make_session(model, threads=1)
    errs = []
    for shp in shapes:
        x = np.random.default_rng(5).standard_normal(shp).astype(np.float32)
        ref = run_onnx(sess, {"x": x})[0]
        with torch.no_grad():
            errs.append(_rel(ref, mod(torch.from_numpy(x)).numpy()))
    return errs


@pytest.mark.parametrize("by_sizes", [False, True], ids=["const-scales", "sizes-from-shape"])
def test_resize_pt2_stays_dynamic(by_sizes, tmp_path):
    m = _upsample_net(by_sizes)
    src = tmp_path / "up.onnx"
    onnx.save(m, src)
    # before: "torch.export cannot capture ONNX node ... (Resize): Could not guard on data-dependent expression"
    ds.convert(src, tmp_path / "up.pt2", input_shapes=["x:1x3x16x16"])
    errs = _check_pt2(m, tmp_path / "up.pt2", [(1, 3, 16, 16), (2, 3, 24, 32)])
    assert max(errs) < 1e-5  # ~2e-7 seen: other batch and H/W than the example


def test_reflect_pad_converts_without_input_shape(tmp_path):
    """Two stride-2 convs then reflect Pad 2: a 7×7 example leaves a 2×2 map, too small to pad."""
    m = _model([helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2]),
                helper.make_node("Conv", ["a", "w2"], ["b"], pads=[1, 1, 1, 1], strides=[2, 2]),
                helper.make_node("Pad", ["b", "pads"], ["p"], mode="reflect"),
                helper.make_node("Conv", ["p", "w3"], ["y"])],
               [_init("w1", _w((4, 3, 3, 3))), _init("w2", _w((4, 4, 3, 3), 1)), _init("w3", _w((2, 4, 3, 3), 2)),
                _init("pads", np.array([0, 0, 2, 2, 0, 0, 2, 2], np.int64))])
    src = tmp_path / "pad.onnx"
    onnx.save(m, src)
    ds.convert(src, tmp_path / "pad.pt2")  # before: "Padding size should be less than the corresponding input dimension"
    assert max(_check_pt2(m, tmp_path / "pad.pt2", [(1, 3, 48, 96), (2, 3, 32, 64)])) < 1e-5


@pytest.mark.parametrize(("mode", "coord"), [("nearest", "asymmetric"), ("linear", "half_pixel"),
                                             ("linear", "align_corners")])
def test_tflite_resize(mode, coord, tmp_path):
    pytest.importorskip("tensorflow")
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["a", "", "scales"], ["y"], mode=mode,
                              coordinate_transformation_mode=coord, nearest_mode="floor")]
    m = _model(nodes, [_init("w1", _w((4, 3, 3, 3))), _init("scales", np.array([1, 1, 2, 2], np.float32))],
               dims=("batch", 3, 8, 8))
    src = tmp_path / "r.onnx"
    onnx.save(m, src)
    res = ds.convert(src, tmp_path / "r.tflite")  # before: "ONNX op 'Resize' ... has no TFLite converter"
    assert res.hops[-1].parity.ok
    it = Interpreter(model_path=str(tmp_path / "r.tflite"))
    inp = it.get_input_details()[0]
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    it.resize_tensor_input(inp["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    got = it.get_tensor(it.get_output_details()[0]["index"])
    ref = run_onnx(make_session(m, threads=1), {"x": x})[0]
    assert _rel(ref, got) < 1e-5  # ~2e-7 seen
    ops = {o["op_name"] for o in it._get_ops_details()}  # noqa: SLF001
    assert ("RESIZE_NEAREST_NEIGHBOR" if mode == "nearest" else "RESIZE_BILINEAR") in ops


def test_graph_fixed_at_batch_1_keeps_its_batch(tmp_path):
    """A zoo-style graph declared at batch 1 that reshapes to [1, 64]: the .pt2 keeps batch 1 as the file
    declares it, and says so (one line in the CLI). A dynamic batch could not be captured here; where it can
    (MediaPipe's BlazeFace), it computed a batch of 2 wrong, folding it into the anchor axis."""
    m = _model([helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
                helper.make_node("Reshape", ["c", "shape"], ["f"]),
                helper.make_node("MatMul", ["f", "fc"], ["y"])],
               [_init("w1", _w((4, 3, 3, 3))), _init("shape", np.array([1, 64], np.int64)), _init("fc", _w((64, 5), 1))],
               dims=(1, 3, 8, 8))
    src = tmp_path / "b1.onnx"
    onnx.save(m, src)
    # before: "torch.export cannot capture ONNX node 'f' (Reshape): shape '[1, 64]' is invalid for input of size 64*s77"
    res = ds.convert(src, tmp_path / "b1.pt2")
    why = res.handle.metadata["deepshrink.static_dims_reason"]
    assert why == "batch dim of x kept static at 1 as the ONNX file declares it"
    assert max(_check_pt2(m, tmp_path / "b1.pt2", [(1, 3, 8, 8)])) < 1e-5


def test_tflite_reshape_to_shape_sliced_from_int64_min(tmp_path):
    """The dynamo exporter's attention reshapes: target = Concat(Shape[INT64_MIN:-2], Shape[-1:], Shape[-2:-1])
    on a dynamic batch. TF's partial shape evaluation turned the slice into [] (a traceback before)."""
    pytest.importorskip("tensorflow")
    i64 = lambda name, v: _init(name, np.array(v, np.int64))  # noqa: E731
    m = _model([helper.make_node("Shape", ["x"], ["s"]),
                helper.make_node("Slice", ["s", "lo", "m2"], ["lead"]),
                helper.make_node("Slice", ["s", "m1", "hi"], ["last"]),
                helper.make_node("Slice", ["s", "m2", "m1"], ["prev"]),
                helper.make_node("Concat", ["lead", "last", "prev"], ["t"], axis=0),
                helper.make_node("Reshape", ["x", "t"], ["r"]),
                helper.make_node("MatMul", ["r", "w"], ["y"])],
               [i64("lo", [-2**63]), i64("hi", [2**63 - 1]), i64("m1", [-1]), i64("m2", [-2]), _init("w", _w((4, 3)))],
               dims=("batch", 2, 4, 6))
    src = tmp_path / "attn.onnx"
    onnx.save(m, src)
    res = ds.convert(src, tmp_path / "attn.tflite")
    assert res.hops[-1].parity.ok and res.hops[-1].parity.max_abs < 1e-5  # ~1e-7 seen


def test_empty_float_initializers_do_not_break_pt2_saving(tmp_path):
    """Paddle2ONNX writes an empty float ``roi`` (and empty ``scales``) for every Resize (PP-OCRv4's
    text detector has 8): imported as empty parameters they share a null storage, and
    torch.export.save failed with "numel: integer multiplication overflow" (a traceback, exit 1)."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Resize", ["a", "roi1", "sc"], ["b"], mode="nearest"),
             helper.make_node("Resize", ["b", "roi2", "sc"], ["c"], mode="nearest"),
             helper.make_node("Conv", ["c", "w2"], ["y"], pads=[1, 1, 1, 1])]
    inits = [_init("w1", _w((4, 3, 3, 3))), _init("w2", _w((2, 4, 3, 3), 1)),
             _init("roi1", np.zeros(0, np.float32)), _init("roi2", np.zeros(0, np.float32)),
             _init("sc", np.array([1, 1, 2, 2], np.float32))]
    m = _model(nodes, inits, opset=11)
    src = tmp_path / "paddle_resize.onnx"
    onnx.save(m, src)
    ds.convert(src, tmp_path / "r.pt2", input_shapes=["x:1x3x16x16"])
    assert max(_check_pt2(m, tmp_path / "r.pt2", [(1, 3, 16, 16), (2, 3, 24, 32)])) < 1e-5


def test_minus_inf_constant_survives_the_pt2_round_trip(tmp_path):
    """magika's tf2onnx graph holds a ``-inf`` scalar constant (a fill value); the written ``.pt2`` was
    refused on reload ("tensor 'const_8' contains NaN or infinity"). ±inf in a constant is allowed
    (as in ONNX outside weight inputs); NaN and non-finite parameters are still refused."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Greater", ["a", "zero"], ["keep"]),
             helper.make_node("Where", ["keep", "a", "ninf"], ["m"]),
             helper.make_node("ReduceMax", ["m"], ["y"], axes=[2, 3], keepdims=0)]
    m = _model(nodes, [_init("w1", _w((4, 3, 3, 3))), _init("zero", np.array(0.0, np.float32)),
                       _init("ninf", np.array(-np.inf, np.float32))])
    src = tmp_path / "ninf.onnx"
    onnx.save(m, src)
    ds.convert(src, tmp_path / "ninf.pt2", input_shapes=["x:1x3x8x8"])
    assert ds.load(tmp_path / "ninf.pt2").kind == "torch"
    assert max(_check_pt2(m, tmp_path / "ninf.pt2", [(1, 3, 8, 8), (2, 3, 12, 16)])) < 1e-5


def test_input_name_that_is_not_an_identifier_converts(tmp_path):
    """onnx's zoo graphs (light_shufflenet: 'gpu_0/data_0') name inputs with '/': the imported module calls
    it 'gpu_0_data_0', and convert's parity check failed with "input(s) ['gpu_0_data_0'] missing"."""
    nodes = [helper.make_node("Conv", ["gpu_0/data_0", "w1"], ["y"], pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("gpu_0/data_0", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [_init("w1", _w((4, 3, 3, 3)))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    src = tmp_path / "slash.onnx"
    onnx.save(m, src)
    ds.convert(src, tmp_path / "slash.pt2")
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = run_onnx(make_session(m, threads=1), {"gpu_0/data_0": x})[0]
    got = torch.export.load(str(tmp_path / "slash.pt2")).module()(torch.from_numpy(x)).detach().numpy()
    assert _rel(ref, got) < 1e-5


def test_paddle_reshape_targets_computed_from_shapes_stay_dynamic(tmp_path):
    """PP-OCRv4's recogniser (Paddle2ONNX): a Reshape whose target is computed (ONNX's own shape
    inference then gives its output no rank), followed by a Reshape to ``[cast(-1), cast(Shape[2:3])]``
    with every constant cast int32 → int64. Before: "torch.export cannot capture ONNX node ... (Reshape):
    Could not extract specialized integer from data-dependent expression u0"."""
    i32 = TensorProto.INT32
    m = _model([helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("Shape", ["c"], ["s"]),
                helper.make_node("Slice", ["s", "zero", "two"], ["nc"]),
                helper.make_node("Concat", ["nc", "minus1"], ["t1"], axis=0),
                helper.make_node("Reshape", ["c", "t1"], ["f"]),  # [n, 4, h*w], rank unknown to onnx
                helper.make_node("Shape", ["f"], ["s2"]),
                helper.make_node("Cast", ["s2"], ["s2i"], to=i32),
                helper.make_node("Slice", ["s2i", "two32", "three32"], ["hw32"]),
                helper.make_node("Cast", ["hw32"], ["hw"], to=TensorProto.INT64),
                helper.make_node("Constant", [], ["m1_32"], value=numpy_helper.from_array(np.array([-1], np.int32))),
                helper.make_node("Cast", ["m1_32"], ["m1"], to=TensorProto.INT64),
                helper.make_node("Concat", ["m1", "hw"], ["t2"], axis=0),
                helper.make_node("Reshape", ["f", "t2"], ["y"])],
               [_init("w1", _w((4, 3, 3, 3))), _init("zero", np.array([0], np.int64)),
                _init("two", np.array([2], np.int64)), _init("minus1", np.array([-1], np.int64)),
                _init("two32", np.array([2], np.int32)), _init("three32", np.array([3], np.int32))])
    src = tmp_path / "paddle.onnx"
    onnx.save(m, src)
    res = ds.convert(src, tmp_path / "paddle.pt2", input_shapes=["x:1x3x8x16"])
    assert "deepshrink.static_dims_reason" not in res.handle.metadata  # captured dynamic, no fallback
    assert max(_check_pt2(m, tmp_path / "paddle.pt2", [(1, 3, 8, 16), (2, 3, 12, 20)])) < 1e-5


def test_yolo_float_range_over_a_size_stays_dynamic(tmp_path):
    """YOLOv8's head (Ultralytics export): ``Range(0.0, Cast(Shape[3], FLOAT), 1.0)`` — anchor
    offsets over the feature map's width. Before: "torch.export cannot capture ONNX node ... (Range):
    Could not guard on data-dependent expression zuf1 > 0.0"."""
    m = _model([helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
                helper.make_node("Shape", ["c"], ["s"]),
                helper.make_node("Gather", ["s", "three"], ["wi"], axis=0),
                helper.make_node("Cast", ["wi"], ["wf"], to=TensorProto.FLOAT),
                helper.make_node("Range", ["start", "wf", "step"], ["r"]),
                helper.make_node("Add", ["c", "r"], ["y"])],
               [_init("w1", _w((4, 3, 3, 3))), _init("three", np.array(3, np.int64)),
                _init("start", np.array(0.0, np.float32)), _init("step", np.array(1.0, np.float32))])
    src = tmp_path / "yolo.onnx"
    onnx.save(m, src)
    res = ds.convert(src, tmp_path / "yolo.pt2", input_shapes=["x:1x3x16x16"])
    assert "deepshrink.static_dims_reason" not in res.handle.metadata
    assert max(_check_pt2(m, tmp_path / "yolo.pt2", [(1, 3, 16, 16), (2, 3, 24, 40)])) < 1e-5


def test_static_fallback_says_which_dims_became_static(tmp_path, monkeypatch):
    """The last resort of item 3: when no dynamic capture works, every dim takes the example shape
    (from --input-shape) and the reason names the dims. Forced here by a capture that refuses
    dynamic shapes."""
    from deepshrink.convert import export as export_mod
    from deepshrink.errors import UnsupportedError

    real = torch.export.export

    def picky(mod, args, dynamic_shapes=None, strict=False):
        if dynamic_shapes:
            raise UnsupportedError("Could not guard on data-dependent expression (forced)")
        return real(mod, args, dynamic_shapes=dynamic_shapes, strict=strict)

    monkeypatch.setattr(export_mod.torch.export, "export", picky)
    m = _upsample_net(by_sizes=False)
    src = tmp_path / "up.onnx"
    onnx.save(m, src)
    res = ds.convert(src, tmp_path / "up.pt2", input_shapes=["x:1x3x16x16"])
    why = res.handle.metadata["deepshrink.static_dims_reason"]
    assert why.startswith("dims x[0]=1, x[2]=16, x[3]=16 became static") and "forced" in why, why
    assert max(_check_pt2(m, tmp_path / "up.pt2", [(1, 3, 16, 16)])) < 1e-5


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_recurrent_pt2_keeps_the_sequence_dynamic(kind, tmp_path):
    """ddddocr's OCR model: a bidirectional LSTM over a width computed at run time. Stepped in a Python
    loop, torch.export specialised the sequence length to the example's (the .pt2 then refused any
    other width: "Guard failed"); run as one scan it stays dynamic. x: [seq, batch, 6], hidden 5."""
    gates = {"LSTM": 4, "GRU": 3}[kind]
    hid = 5
    attrs = {"hidden_size": hid, "direction": "bidirectional"}
    if kind == "GRU":
        attrs["linear_before_reset"] = 1
    m = _model([helper.make_node(kind, ["x", "W", "R", "B"], ["y_all", "y_h"], **attrs),
                helper.make_node("Transpose", ["y_all"], ["y"], perm=[0, 2, 1, 3])],
               [_init("W", _w((2, gates * hid, 6))), _init("R", _w((2, gates * hid, hid), 1)),
                _init("B", _w((2, 2 * gates * hid), 2))], opset=14, dims=("seq", "b", 6))
    src = tmp_path / "rnn.onnx"
    onnx.save(m, src)
    ds.convert(src, tmp_path / "rnn.pt2", input_shapes=["x:7x2x6"])
    errs = _check_pt2(m, tmp_path / "rnn.pt2", [(7, 2, 6), (3, 1, 6), (19, 3, 6)])
    assert max(errs) < 1e-5  # ~1e-7 seen; before: the 3- and 19-step inputs failed a guard on the length 7


def test_a_program_that_runs_only_at_the_example_size_is_caught():
    """torch.export may guard a dim it was told is dynamic instead of failing (the stepped LSTM did: its
    .pt2 refused every other width). The route runs the written program at other sizes and, when the
    source runs there and the program does not, says so (it then writes an all-static program)."""
    from deepshrink.convert.onnx2torch.route import _fails_at_other_sizes
    from deepshrink.core.handle import ModelHandle, TensorSpec

    m = _model([helper.make_node("Relu", ["x"], ["y"])], [], dims=("n", 3, "w"))

    class OnlySeven(torch.nn.Module):
        def forward(self, x):
            if x.shape[2] != 7:
                raise RuntimeError("Guard failed: x.size()[2] == 7")
            return torch.relu(x)

    src = ds.load(m)
    spec = [TensorSpec("x", ("n", 3, "w"), "float32")]
    example = {"x": np.zeros((2, 3, 7), np.float32)}
    bad = ModelHandle(OnlySeven(), "torch", spec, ["y"], example)
    line = _fails_at_other_sizes(src, bad, bad)
    assert line is not None and "x 2x3x8" in line and "Guard failed" in line
    good = ModelHandle(torch.nn.ReLU(), "torch", spec, ["y"], example)
    assert _fails_at_other_sizes(src, good, good) is None


def test_an_if_whose_untaken_branch_cannot_run_at_the_example_shape_is_one_line(tmp_path, capsys):
    """silero VAD v5's kind: an ``If`` on a value known only at run time (the sample rate) whose branches fit
    different input sizes. torch.cond traces both branches on the example, the other branch's Conv does not
    fit it ("Kernel size can't be greater than actual input size"): one line naming the node and torch.cond,
    exit 2, no FX dump, nothing written (left: specialising such an If; notes/issue-12-session-e.md)."""
    from cli_helpers import one_line_error, run_cli

    then_g = helper.make_graph([helper.make_node("Unsqueeze", ["x", "ax1"], ["x3"]),
                                helper.make_node("Conv", ["x3", "k"], ["c"]),
                                helper.make_node("ReduceMean", ["c", "ax2"], ["t"], keepdims=0)], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
                               [_init("ax1", np.array([1], np.int64)), _init("ax2", np.array([1, 2], np.int64)),
                                _init("k", _w((1, 1, 9)))])
    else_g = helper.make_graph([helper.make_node("ReduceMean", ["x", "ax3"], ["e"], keepdims=0)], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
                               [_init("ax3", np.array([1], np.int64))])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], name="If_rate", then_branch=then_g, else_branch=else_g)]
    m = _model(nodes, [_init("zero", np.array(1e9, np.float32))], dims=("n", "len"))
    src = tmp_path / "if.onnx"
    onnx.save(m, src)
    out = tmp_path / "if.pt2"
    rc, _o, err = run_cli(capsys, "convert", src, out, "--input-shape", "x:2x5")
    assert rc == 2, err
    one_line_error(err, "If_rate")
    assert "torch.cond" in err and not out.exists()
