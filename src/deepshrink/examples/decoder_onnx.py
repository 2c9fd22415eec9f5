"""A randomly initialised decoder-only transformer written straight to ONNX with external data.

For memory-at-scale checks (issue 17): the graph is built with ``onnx.helper`` and every weight
is generated and appended to the external-data file one tensor at a time, so writing a
1.5 B-parameter (6 GB fp32) model needs about one tensor's memory (the largest, the LM head
``(d_model, vocab)``), never the model's.

Architecture (pre-LayerNorm GPT without biases or positional embeddings): token embedding
``Gather``; per layer ``x += Wo·Attn(LN(x)·Wq, LN(x)·Wk, LN(x)·Wv)`` with causal softmax
attention over ``heads`` heads and ``x += W2·ReLU(W1·LN(x))`` (``W1``: ``(d, 4d)``); a final
LayerNorm and an untied LM head. Input ``input_ids``: int64 ``(batch, seq)``; output
``logits``: float32 ``(batch, seq, vocab)``. Weights ~ N(0, 0.02²), LayerNorm scales 1, shifts 0.
Parameters: ``12·d²·layers + 2·vocab·d + (4·layers + 2)·d``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = ["decoder_parameters", "write_decoder_onnx"]

_ALIGN = 4096  # tensors start on page boundaries in the data file


def decoder_parameters(d_model: int, layers: int, vocab: int) -> int:
    """The parameter count of :func:`write_decoder_onnx`'s model."""
    return 12 * d_model * d_model * layers + 2 * vocab * d_model + (4 * layers + 2) * d_model


def write_decoder_onnx(path: str | os.PathLike[str], *, d_model: int = 256, layers: int = 4, heads: int = 4,
                       vocab: int = 2048, seed: int = 0, opset: int = 17) -> int:
    """Write the model to ``path`` and its weights to ``<path>.data``; returns the parameter count.

    Not atomic (a benchmark/test fixture); overwrites both files."""
    if d_model % heads:
        raise ValueError(f"d_model {d_model} is not a multiple of heads {heads}")
    path = Path(path)
    data_name = path.name + ".data"
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    dh = d_model // heads

    with open(path.parent / data_name, "wb") as f:
        def weight(name: str, shape: tuple[int, ...], fill: float | None = None) -> str:
            if fill is None:
                arr = rng.standard_normal(shape, dtype=np.float32)
                arr *= np.float32(0.02)
            else:
                arr = np.full(shape, fill, np.float32)
            offset = -(-f.tell() // _ALIGN) * _ALIGN
            f.seek(offset)
            f.write(arr.tobytes())
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(arr.nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)
            return name

        def const(name: str, arr: np.ndarray) -> str:
            inits.append(onnx.numpy_helper.from_array(arr, name))
            return name

        def node(op: str, inputs: list[str], out: str, **attrs: object) -> str:
            nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
            return out

        const("heads_shape", np.array([0, 0, heads, dh], np.int64))
        const("model_shape", np.array([0, 0, d_model], np.int64))
        const("scale", np.array(1.0 / np.sqrt(dh), np.float32))
        const("one", np.array(1.0, np.float32))
        const("big", np.array(1e9, np.float32))
        const("seq_slice", np.array([1], np.int64))
        const("seq_end", np.array([2], np.int64))
        shape = node("Shape", ["input_ids"], "ids_shape")
        seq = node("Slice", [shape, "seq_slice", "seq_end"], "seq_len")
        square = node("Concat", [seq, seq], "mask_shape", axis=0)
        ones = node("ConstantOfShape", [square], "mask_ones", value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
        lower = node("Trilu", [ones], "mask_lower", upper=0)
        mask = node("Mul", [node("Sub", [lower, "one"], "mask_sub"), "big"], "mask")
        x = node("Gather", [weight("wte", (vocab, d_model)), "input_ids"], "embed", axis=0)

        def layer_norm(x: str, name: str) -> str:
            return node("LayerNormalization", [x, weight(name + ".weight", (d_model,), 1.0),
                                               weight(name + ".bias", (d_model,), 0.0)], name, axis=-1)

        for i in range(layers):
            p = f"h.{i}."
            h = layer_norm(x, p + "ln_1")
            q, k, v = (node("MatMul", [h, weight(p + f"attn.{w}.weight", (d_model, d_model))], p + f"attn.{w}")
                       for w in ("q_proj", "k_proj", "v_proj"))
            qh = node("Transpose", [node("Reshape", [q, "heads_shape"], p + "q_heads")], p + "q_t", perm=[0, 2, 1, 3])
            kh = node("Transpose", [node("Reshape", [k, "heads_shape"], p + "k_heads")], p + "k_t", perm=[0, 2, 3, 1])
            vh = node("Transpose", [node("Reshape", [v, "heads_shape"], p + "v_heads")], p + "v_t", perm=[0, 2, 1, 3])
            scores = node("Add", [node("Mul", [node("MatMul", [qh, kh], p + "qk"), "scale"], p + "qk_scaled"), mask],
                          p + "scores")
            att = node("MatMul", [node("Softmax", [scores], p + "probs", axis=-1), vh], p + "att")
            merged = node("Reshape", [node("Transpose", [att], p + "att_t", perm=[0, 2, 1, 3]), "model_shape"],
                          p + "att_merged")
            o = node("MatMul", [merged, weight(p + "attn.o_proj.weight", (d_model, d_model))], p + "attn.o_proj")
            x = node("Add", [x, o], p + "resid_1")
            h = layer_norm(x, p + "ln_2")
            m = node("Relu", [node("MatMul", [h, weight(p + "mlp.fc_in.weight", (d_model, 4 * d_model))],
                                   p + "mlp.fc_in")], p + "mlp.act")
            m = node("MatMul", [m, weight(p + "mlp.fc_out.weight", (4 * d_model, d_model))], p + "mlp.fc_out")
            x = node("Add", [x, m], p + "resid_2")
        x = layer_norm(x, "ln_f")
        node("MatMul", [x, weight("lm_head.weight", (d_model, vocab))], "logits")

    graph = helper.make_graph(
        nodes, "decoder", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="deepshrink")
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return decoder_parameters(d_model, layers, vocab)
