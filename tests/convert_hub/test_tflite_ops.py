"""ONNX → TFLite op converters for what detectors and segmenters use (issue 12 item 4):
ConvTranspose, pooling with SAME/ceil/1-D/excluded padding, Resize that either picks ONNX's
pixels or is refused by name (never silently different), Split into uneven parts, the optional
outputs of LayerNormalization, reductions over every axis — each on a tiny ``onnx.helper``
graph, the ``.tflite`` run in TFLite's interpreter against ONNX Runtime. Plus a small
detector-like torch head and a 2-head ``nn.MultiheadAttention`` end to end."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import deepshrink as ds
from deepshrink.errors import UnsupportedError

pytest.importorskip("tensorflow")

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits=(), opset=18):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                          initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _tflite_vs_ort(model, feeds, tmp_path):
    import onnxruntime as ort

    from deepshrink.backends.tflite_rt import make_runner
    from deepshrink.convert.tflite import onnx_to_tflite

    onnx_to_tflite(ds.load(model), tmp_path / "m.tflite")
    got = make_runner(tmp_path / "m.tflite", threads=1)(feeds)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
    return got


def _refused(model, tmp_path, words):
    from deepshrink.convert.tflite import onnx_to_tflite

    with pytest.raises(UnsupportedError, match=words) as e:
        onnx_to_tflite(ds.load(model), tmp_path / "m.tflite")
    assert "\n" not in str(e.value)  # one line, not TensorFlow's trace
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.parametrize("attrs,shape,w_shape", [
    (dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]), (1, 3, 5, 6), (3, 4, 3, 3)),
    (dict(strides=[2, 1], group=2, dilations=[2, 1]), (2, 4, 4, 5), (4, 3, 3, 2)),
    (dict(strides=[2, 2], auto_pad="SAME_UPPER"), (1, 2, 3, 3), (2, 2, 3, 3)),
    (dict(strides=[3, 2], output_shape=[10, 8]), (1, 1, 3, 3), (1, 2, 3, 3)),
    (dict(strides=[2], pads=[1, 0]), (1, 2, 7), (2, 3, 4)),  # 1-D
])
def test_conv_transpose(attrs, shape, w_shape, tmp_path):
    w = RNG.standard_normal(w_shape).astype(np.float32)
    b = RNG.standard_normal(w_shape[1] * attrs.get("group", 1)).astype(np.float32)
    m = _model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)], [("x", shape)], ["y"],
               [("w", w), ("b", b)])
    _tflite_vs_ort(m, {"x": RNG.standard_normal(shape).astype(np.float32)}, tmp_path)


@pytest.mark.parametrize("op,attrs,shape", [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), (1, 2, 7, 8)),
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER"), (1, 2, 5, 5)),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1), (1, 2, 8, 9)),
    ("MaxPool", dict(kernel_shape=[3], strides=[2], pads=[1, 1]), (2, 3, 9)),  # 1-D
    ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0), (1, 2, 5, 6)),
])
def test_pooling_variants(op, attrs, shape, tmp_path):
    m = _model([helper.make_node(op, ["x"], ["y"], **attrs)], [("x", shape)], ["y"])
    _tflite_vs_ort(m, {"x": RNG.standard_normal(shape).astype(np.float32)}, tmp_path)


def test_maxpool_indices_output_is_refused_by_name(tmp_path):
    m = _model([helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2])], [("x", (1, 1, 4, 4))], ["y"])
    m.graph.output.append(helper.make_tensor_value_info("idx", TensorProto.INT64, None))
    _refused(m, tmp_path, r"MaxPool output #1 \('idx'\) is not computed")


def _resize(mode, coord, nearest_mode="round_prefer_floor", scales=None, sizes=None, axes=None, shape=(1, 2, 4, 4)):
    attrs = dict(mode=mode, coordinate_transformation_mode=coord, nearest_mode=nearest_mode)
    if axes is not None:
        attrs["axes"] = axes
    inits = [("roi", np.zeros(0, np.float32))]
    if scales is not None:
        inits.append(("scales", np.asarray(scales, np.float32)))
        ins = ["x", "roi", "scales"]
    else:
        inits.append(("sizes", np.asarray(sizes, np.int64)))
        ins = ["x", "roi", "", "sizes"]
    return _model([helper.make_node("Resize", ins, ["y"], **attrs)], [("x", shape)], ["y"], inits)


@pytest.mark.parametrize("model", [
    _resize("nearest", "half_pixel", "round_prefer_ceil", sizes=[1, 2, 8, 12]),
    _resize("nearest", "half_pixel", "round_prefer_floor", sizes=[1, 2, 6, 10]),  # non-integer upscale: was refused
    _resize("nearest", "asymmetric", "floor", scales=[1, 1, 2, 3]),
    _resize("nearest", "asymmetric", "floor", scales=[3, 2], axes=[3, 2]),  # opset-18 axes, reversed
    _resize("linear", "half_pixel", sizes=[1, 2, 3, 7]),
    _resize("linear", "align_corners", scales=[1, 1, 2, 2]),
    _resize("linear", "pytorch_half_pixel", sizes=[1, 2, 8, 2]),
])
def test_resize_picks_onnx_pixels(model, tmp_path):
    x = RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)
    _tflite_vs_ort(model, {"x": x}, tmp_path)


@pytest.mark.parametrize("model,words", [
    # these two converted before and gave other pixels than ONNX (node suite: max-abs 5)
    (_resize("nearest", "asymmetric", "round_prefer_ceil", sizes=[1, 2, 8, 8]), "no TFLite resize picks the same pixels"),
    (_resize("nearest", "half_pixel", "ceil", sizes=[1, 2, 8, 8]), "no TFLite resize picks the same pixels"),
    (_resize("linear", "half_pixel", scales=[1, 1, 0.6, 0.6]), "not input × scale exactly"),
    (_resize("linear", "align_corners", sizes=[1, 2, 1, 3]), "size of 1 with align_corners"),
    (_resize("cubic", "half_pixel", scales=[1, 1, 2, 2]), "Resize mode cubic"),
])
def test_resize_that_tflite_cannot_match_is_refused(model, words, tmp_path):
    _refused(model, tmp_path, words)


def test_split_into_uneven_parts(tmp_path):
    m = _model([helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3)], [("x", (2, 8))],
               ["a", "b", "c"])
    got = _tflite_vs_ort(m, {"x": RNG.standard_normal((2, 8)).astype(np.float32)}, tmp_path)
    assert [g.shape[1] for g in got] == [3, 3, 2]


def test_layer_norm_optional_outputs(tmp_path):
    m = _model([helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv_std"], axis=-1)],
               [("x", (2, 3, 5))], ["y", "mean", "inv_std"],
               [("s", RNG.standard_normal(5).astype(np.float32)), ("b", RNG.standard_normal(5).astype(np.float32))])
    _tflite_vs_ort(m, {"x": RNG.standard_normal((2, 3, 5)).astype(np.float32)}, tmp_path)


def test_reduce_over_every_axis_when_axes_are_empty(tmp_path):
    m = _model([helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1)], [("x", (3, 2, 2))], ["y"],
               [("axes", np.zeros(0, np.int64))])
    got = _tflite_vs_ort(m, {"x": RNG.standard_normal((3, 2, 2)).astype(np.float32)}, tmp_path)
    assert got[0].shape == (1, 1, 1)


def test_detector_like_head_end_to_end(tmp_path):
    """ConvTranspose, Sigmoid·Mul (SiLU), MaxPool with padding, nearest and bilinear upsampling,
    Split, a strided Slice, Softmax on the channel axis and a 5-D Concat, from torch's exporter."""
    import torch

    from deepshrink.convert import export_onnx

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.up = torch.nn.ConvTranspose2d(8, 8, 2, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            y = y * torch.sigmoid(y)
            y = torch.nn.functional.max_pool2d(y, 3, 2, 1)
            y = self.up(y)
            y = torch.nn.functional.interpolate(y, scale_factor=2.0, mode="nearest")
            y = torch.nn.functional.interpolate(y, size=(12, 20), mode="bilinear", align_corners=False)
            a, b = y.split(4, dim=1)
            b = b[:, :, ::2, ::2]
            a = torch.softmax(a[:, :, ::2, ::2], dim=1)
            return torch.cat([a.unsqueeze(1), b.unsqueeze(1)], dim=1)  # (1, 2, 4, 6, 10)

    torch.manual_seed(0)
    x = RNG.standard_normal((1, 3, 8, 10)).astype(np.float32)
    path = tmp_path / "head.onnx"
    export_onnx(Head().eval(), {"x": x}, path, exporter="torchscript")
    res = ds.convert(path, tmp_path / "head.tflite")
    p = res.hops[-1].parity
    assert p.ok and p.max_abs < 1e-4, p  # ~1e-6 seen


def test_two_head_multihead_attention(tmp_path):
    import torch

    from deepshrink.convert import export_onnx

    class MHA(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x)[0]

    torch.manual_seed(0)
    path = tmp_path / "mha.onnx"
    export_onnx(MHA().eval(), {"x": np.zeros((2, 5, 16), np.float32)}, path, exporter="torchscript")
    res = ds.convert(path, tmp_path / "mha.tflite")
    p = res.hops[-1].parity
    assert p.ok and p.max_abs < 1e-4, p  # ~1e-7 seen


def test_int16_input_keeps_its_dtype(tmp_path):
    """int16/uint16/uint32/uint64 inputs were declared float32 in the .tflite signature."""
    g = helper.make_graph([helper.make_node("Mod", ["x", "y"], ["z"])], "g",
                          [helper.make_tensor_value_info(n, TensorProto.INT16, (2, 3)) for n in ("x", "y")],
                          [helper.make_tensor_value_info("z", TensorProto.INT16, (2, 3))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    assert [s.np_dtype for s in ds.load(m).inputs] == [np.int16, np.int16]
    x = np.array([[-7, 5, 9], [4, -3, 0]], np.int16)
    y = np.array([[3, -2, 4], [3, 3, 7]], np.int16)
    _tflite_vs_ort(m, {"x": x, "y": y}, tmp_path)


_UNARY = [("Abs", {}), ("Ceil", {}), ("Floor", {}), ("Sin", {}), ("Cos", {}), ("Sign", {}), ("Softsign", {}),
          ("Softplus", {}), ("Mish", {}), ("Elu", {"alpha": 0.7}), ("Selu", {}), ("Celu", {"alpha": 2.0}),
          ("ThresholdedRelu", {"alpha": 0.3}), ("HardSigmoid", {"alpha": 0.25, "beta": 0.4}), ("HardSwish", {})]


def test_unary_activations(tmp_path):
    """Element-wise ops without a TFLite converter before (MobileNetV3/YOLO activations and
    the like), one output each in one graph; Log/Reciprocal on positive values, Round on ties."""
    nodes = [helper.make_node(op, ["x"], [f"y{k}"], **kw) for k, (op, kw) in enumerate(_UNARY)]
    nodes += [helper.make_node("Log", ["p"], ["log"]), helper.make_node("Reciprocal", ["p"], ["rec"]),
              helper.make_node("Round", ["r"], ["round"])]
    outs = [f"y{k}" for k in range(len(_UNARY))] + ["log", "rec", "round"]
    shape = (2, 4, 3, 5)
    m = _model(nodes, [("x", shape), ("p", shape), ("r", (7,))], outs)
    feeds = {"x": RNG.standard_normal(shape).astype(np.float32) * 3,
             "p": RNG.uniform(0.2, 3.0, shape).astype(np.float32),
             "r": np.float32([0.5, 1.5, 2.5, -0.5, -1.5, 0.2, 3.7])}  # ONNX Round: half to even
    _tflite_vs_ort(m, feeds, tmp_path)


_X = ("x", (2, 4, 3, 5))


@pytest.mark.parametrize("node,inits,feed", [
    (helper.make_node("PRelu", ["x", "s"], ["y"]), [("s", RNG.uniform(0, 1, (4, 1, 1)).astype(np.float32))], None),
    (helper.make_node("Pad", ["x", "p", "v"], ["y"]), [("p", np.array([0, 0, 1, 2, 0, 0, 2, 1])), ("v", np.float32(-3))],
     None),
    (helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect"), [("p", np.array([0, 0, 2, 1, 0, 0, 1, 2]))], None),
    (helper.make_node("Pad", ["x", "p"], ["y"], mode="edge"), [("p", np.array([0, 0, 1, 1, 0, 0, 1, 0]))], None),
    (helper.make_node("Tile", ["x", "r"], ["y"]), [("r", np.array([1, 2, 1, 3]))], None),
    (helper.make_node("ArgMax", ["x"], ["y"], axis=1), [], None),
    (helper.make_node("ArgMin", ["x"], ["y"], axis=-1, keepdims=0), [], None),
    (helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2), [], None),
    (helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="CRD"), [], None),
    (helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2), [], RNG.standard_normal((2, 4, 6, 4)).astype(np.float32)),
    (helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"]),
     [("s", RNG.standard_normal(4).astype(np.float32)), ("b", RNG.standard_normal(4).astype(np.float32))], None),
    (helper.make_node("ReduceMin", ["x", "ax"], ["y"], keepdims=0), [("ax", np.array([1, 3]))], None),
    (helper.make_node("ReduceProd", ["x", "ax"], ["y"]), [("ax", np.array([2]))], None),
    (helper.make_node("Sum", ["x", "x", "x"], ["y"]), [], None),
    (helper.make_node("Mean", ["x", "x"], ["y"]), [], None),
], ids=lambda v: getattr(v, "op_type", "") + (f"-{v.attribute[-1].s.decode()}" if getattr(v, "op_type", "") in
                                               ("Pad", "DepthToSpace") and v.attribute else ""))
def test_more_ops(node, inits, feed, tmp_path):
    """Ops without a TFLite converter before: PRelu, Pad, Tile, ArgMax, DepthToSpace /
    PixelShuffle, InstanceNorm, the remaining reductions, variadic Sum/Mean."""
    x = feed if feed is not None else RNG.standard_normal(_X[1]).astype(np.float32)
    m = _model([node], [("x", x.shape)], ["y"], inits, opset=18)
    if node.op_type in ("ArgMax", "ArgMin"):
        m.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    _tflite_vs_ort(m, {"x": x}, tmp_path)


def test_conv_same_lower(tmp_path):
    """auto_pad=SAME_LOWER was read as no padding (wrong shape and values)."""
    w = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", strides=[2, 2])],
               [("x", (1, 2, 6, 7))], ["y"], [("w", w)])
    got = _tflite_vs_ort(m, {"x": RNG.standard_normal((1, 2, 6, 7)).astype(np.float32)}, tmp_path)
    assert got[0].shape == (1, 3, 3, 4)


@pytest.mark.parametrize("node,words", [
    (helper.make_node("Dropout", ["x", "r", "t"], ["y"]), "Dropout with training_mode"),
    (helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2, mode="CRD"), "SpaceToDepth mode CRD"),
])
def test_variants_tflite_would_get_wrong_are_refused(node, words, tmp_path):
    """Both converted before and gave other values (node suite: max-abs 2.55 and 27)."""
    m = _model([node], [("x", (1, 4, 4, 6))], ["y"], [("r", np.float32(0.5)), ("t", np.bool_(True))])
    _refused(m, tmp_path, words)


def test_clip_on_integers_with_one_bound(tmp_path):
    """An int32 Clip with only a min: the absent max was +inf, which TF refused for an int32 tensor."""
    g = helper.make_graph([helper.make_node("Clip", ["x", "lo"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.INT32, (3, 4))],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, (3, 4))],
                          initializer=[numpy_helper.from_array(np.int32(-2), "lo")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    _tflite_vs_ort(m, {"x": RNG.integers(-9, 9, (3, 4)).astype(np.int32)}, tmp_path)
