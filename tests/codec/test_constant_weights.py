"""A graph whose weights are Constant nodes has nothing pack can compress: one line, nothing written."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deepshrink.cli._app import run_app


def test_constant_node_weights_are_refused_not_divided_by_zero(tmp_path, capsys):
    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w"], value=w), helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])])
    src = tmp_path / "const.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    rc = run_app(["pack", str(src), "-o", str(tmp_path / "c.dsz")])
    err = capsys.readouterr().err
    assert rc == 2 and "Constant nodes" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["const.onnx"]
