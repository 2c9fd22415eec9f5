"""Helpers shared by the CLI tests: run a command in-process, and check a one-line refusal."""

from __future__ import annotations

from deepshrink.cli import run_app


def run_cli(capsys, *args):
    """Run ``deepshrink ARGS`` in this process: (exit status, stdout, stderr)."""
    rc = run_app([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str, needle: str) -> None:
    """``err`` is exactly one ``error:`` line containing ``needle``, with no traceback."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert "Traceback" not in err


def state_input_graph():
    """``y = sum(x, 1) + sum(h)``: ``x: [n, 4]`` has a free batch, the state ``h: [1, 1, 3]`` fixes it at 1
    (how silero VAD v6 declares its LSTM state): a graph to be fed one sample at a time."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("ReduceSum", ["x", "ax"], ["s"], keepdims=1),
                           helper.make_node("Reshape", ["h", "shape"], ["hf"]),
                           helper.make_node("ReduceSum", ["hf", "ax"], ["hs"], keepdims=1),
                           helper.make_node("Add", ["s", "hs"], ["y"])], "state",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
                           helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
                          [helper.make_tensor("shape", TensorProto.INT64, [2], [1, 3]),
                           helper.make_tensor("ax", TensorProto.INT64, [1], [1])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def save_batch_graph(path, nodes, inits, inputs: int, outputs: int, out_name: str, opset: int = 17) -> None:
    """Save a graph of ``nodes``/``inits`` reading ``x: [n, inputs]`` and writing ``out_name: [n, outputs]``."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", inputs])],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["n", outputs])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
