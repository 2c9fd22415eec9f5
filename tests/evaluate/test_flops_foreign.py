"""``info`` FLOPs and parameters on graphs other toolchains write (issue 12): networks inside
``If`` branches (Silero VAD style), dynamic H/W without ``--input-shape`` (Ultralytics ``imgsz``
metadata), and layers after a Reshape whose target is computed at run time."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import deepshrink as ds


def _init(name: str, shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


def _branch(tag: str, seed: int) -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("MatMul", ["input", f"w1{tag}"], [f"h{tag}"]),
         helper.make_node("MatMul", [f"h{tag}", f"w2{tag}"], [f"y{tag}"])],
        f"branch{tag}", [], [helper.make_tensor_value_info(f"y{tag}", TensorProto.FLOAT, None)],
        [_init(f"w1{tag}", (32, 8), seed), _init(f"w2{tag}", (8, 1), seed + 1)])


def test_if_branches_counted(tmp_path):
    sr = numpy_helper.from_array(np.array(16000, np.int64), "sr16")
    g = helper.make_graph(
        [helper.make_node("Equal", ["sr", "sr16"], ["is16"]),
         helper.make_node("If", ["is16"], ["out"], then_branch=_branch("a", 0), else_branch=_branch("b", 2))],
        "vad", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 32]),
                helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [sr])
    path = tmp_path / "vad.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 16)]), path)
    res = ds.info(path)
    assert res["flops"] == 2 * (32 * 8 + 8 * 1)  # one branch runs; 0 before
    assert res["parameters"] == 2 * (32 * 8 + 8) + 1  # both branches' weights + the main graph's scalar; 1 before


def _detector(meta: dict[str, str]) -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])], "det",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [_init("w", (4, 3, 3, 3))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    return m


def test_dynamic_hw_counted_at_metadata_size_or_224(tmp_path):
    for meta, side in (({"imgsz": "[64, 64]"}, 64), ({}, 224)):
        path = tmp_path / "det.onnx"
        onnx.save(_detector(meta), path)
        res = ds.info(path)
        out = side // 2
        assert res["flops"] == 2 * 4 * out * out * 27  # was 2·4·1·1·27 = 216 (a 1×1-pixel input)
        assert res["flops_shape"].startswith(f"images at 1x3x{side}x{side}")
    res = ds.info(path, input_shapes=["images:1x3x32x48"])  # a given size wins, and needs no note
    assert res["flops"] == 2 * 4 * 16 * 24 * 27 and "flops_shape" not in res


def test_flops_after_runtime_reshape_chain(tmp_path):
    """Shape → Gather → Mul → Concat → Reshape: ONNX shape inference loses the shape there, so the
    MatMul after it counted 0; ORT's symbolic shape inference follows it."""
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
             helper.make_node("Gather", ["s", "i1"], ["c"], axis=0),
             helper.make_node("Gather", ["s", "i2"], ["h"], axis=0),
             helper.make_node("Mul", ["c", "h"], ["ch"]),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
             helper.make_node("Unsqueeze", ["ch", "ax"], ["ch1"]),
             helper.make_node("Concat", ["n1", "ch1"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["y"])]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [i64("i0", 0), i64("i1", 1), i64("i2", 2), i64("ax", [0]), _init("w", (24, 10))])
    path = tmp_path / "chain.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    assert ds.info(path, input_shapes=["x:1x4x6"])["flops"] == 2 * 24 * 10  # 0 before


def test_declared_minus_one_dims_do_not_count_negative(tmp_path):
    """Paddle2ONNX declares intermediate shapes with -1 batch ([-1, 200, 1, 1] in the PP-OCR text-direction
    classifier's SE blocks): they stayed as declared and counted negative MACs (info: "flops -111,296")."""
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["a", "w2"], ["y"]),
         # an op ONNX Runtime's symbolic shape inference does not know: the fallback keeps declared shapes
         helper.make_node("Probe", ["a"], ["z"], domain="ai.example")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 2, 8, 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [_init("w1", (4, 3, 3, 3)), _init("w2", (2, 4, 1, 1), 1)],
        value_info=[helper.make_tensor_value_info("a", TensorProto.FLOAT, [-1, 4, 8, 8])])
    path = tmp_path / "neg.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.example", 1)]),
              path)
    from deepshrink.evaluate.flops import onnx_macs

    macs = onnx_macs(onnx.load(path), {"x": np.zeros((1, 3, 8, 8), np.float32)})
    # conv1: 1·4·8·8 outputs × 27 MACs; conv2: 1·2·8·8 × 4 MACs
    assert macs == 4 * 64 * 27 + 2 * 64 * 4
