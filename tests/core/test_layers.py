"""One layer naming across commands: ``info --layers`` lists module path, weight and ONNX node
name; quantize's include/exclude and prune's protect take any of them."""

from __future__ import annotations

import json

import pytest
import torch

import deepshrink as ds
from deepshrink.core.layers import module_path, names_of, select
from deepshrink.errors import InputError


@pytest.mark.parametrize("weight, path", [
    ("fc1.weight", "fc1"), ("blocks.0.attn.qkv.weight", "blocks.0.attn.qkv"), ("fc.weight_quantized", "fc"),
    ("down.0.weight_DequantizeLinear_Output", "down.0"), ("onnx::MatMul_123", None), ("W", None),
    ("/enc/fc/MatMul_weight", None),
])
def test_module_path_from_a_weight_name(weight, path):
    assert module_path(weight) == path


def test_select_takes_any_name_and_refuses_a_pattern_that_selects_nothing():
    layers = [("node_Conv_1", names_of("node_Conv_1", "stem.0.weight")), ("node_linear", names_of("node_linear", "fc.weight"))]
    assert select(layers, exclude=["stem.0"]) == ["node_linear"]
    assert select(layers, include=["fc.weight"]) == ["node_linear"]
    assert select(layers, include=["node_Conv_*"]) == ["node_Conv_1"]
    with pytest.raises(InputError, match=r"--exclude pattern 'stem\.1' matches no layer; layers are: node_Conv_1, node_linear"):
        select(layers, exclude=["stem.1"])


def test_info_layers_lists_the_three_names(cnn_onnx, capsys):
    from cli_helpers import run_cli

    rc, out, _ = run_cli(capsys, "info", cnn_onnx, "--layers", "--json")
    assert rc == 0
    rows = json.loads(out)["layers"]
    assert [r["module"] for r in rows] == ["stem.0", "block_conv1", "block_conv2", "down.0", "fc"]
    assert [r["op"] for r in rows] == ["Conv", "Conv", "Conv", "Conv", "Gemm"]
    assert all(r["node"] and r["weight"] == f"{r['module']}.weight" and r["bits"] == 32 for r in rows)


def test_quantize_exclude_by_module_path_and_prune_protect_by_weight_name(cnn_onnx, digits_cnn, digits):
    q = ds.quantize(str(cnn_onnx), ds.Int8StaticConfig(exclude=("stem.0",)), data={"x": digits.x_val})
    bits = {r["name"]: r["bits"] for r in q.report.layers}
    assert sorted(bits.values()) == [8, 8, 8, 8, 32]  # the stem's conv stayed float, the rest int8
    p = ds.prune(digits_cnn, ds.MagnitudePruneConfig(sparsity=0.5, protect=("fc.weight",)),
                 example_inputs=(torch.zeros(1, 1, 8, 8),))
    sparsity = {r["name"]: r["sparsity"] for r in p.report.layers}
    assert sparsity["fc"] == 0.0 and sparsity["down.0"] == pytest.approx(0.5, abs=0.01)
    assert float((p.model.model.fc.weight == 0).float().mean()) == 0.0
