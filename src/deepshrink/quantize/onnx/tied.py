"""Tied weights: one matrix read both as an embedding table (``Gather``) and as an output projection.

Language models tie the output head to the token embedding (``head.weight = emb.weight``); the
exported graph then holds one initializer ``W [V, D]`` read by ``Gather(W, ids)`` and by
``MatMul(h, Transpose(W))`` (or ``Gemm(h, W, transB=1)``). ONNX Runtime's quantizers see no constant
weight behind the ``Transpose`` and will not quantize an initializer another node still reads as
float, so the largest matrix of a small LM stayed fp32 (80–90% of the weights).

The fix keeps one stored copy, quantized once:

1. :func:`untie` (before quantizing) gives the projection its own constant ``W_T = W.T`` so the
   scheme quantizes it like any other layer;
2. :func:`retie` (after) makes the embedding read the projection's *quantized* storage and drops
   the float ``W``:

   - ``MatMulInteger`` (int8 dynamic): ``Gather`` of the int8 rows of ``Transpose(W_T_quantized)``,
     cast and scaled by the scale of each row (per-channel) or the tensor's scale;
   - ``MatMulNBits`` (int4/int8 weight-only): ``Gather`` of each token's packed row (``[blocks,
     blob]`` bytes), unpacked with integer ``Div``/``Mod``, minus the symmetric zero point
     ``2**(bits-1)``, times the row's block scales;
   - any scheme that leaves ``W_T`` as a float tensor computed in the graph (QDQ
     ``DequantizeLinear``, codebook ``Gather``): ``Gather(Transpose(that tensor), ids)``.

   A tie whose storage is none of these is left untied (two copies) and reported as such.

ONNX Runtime folds the constant ``Transpose`` of the int8 table at session load; the file holds one
copy. The embedding then returns the quantized values (the same rounding the head computes with).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .normalize import drop_unused_initializers, node_attr


@dataclass(frozen=True)
class Tie:
    """One weight ``weight`` [V, D] read by ``gathers`` and by the projection node ``matmul`` through ``weight_t``."""

    weight: str
    weight_t: str
    gathers: tuple[str, ...]
    matmul: str

    def to_dict(self) -> dict[str, object]:
        return {"weight": self.weight, "gathers": list(self.gathers), "projection": self.matmul}


def untie(model: onnx.ModelProto) -> list[Tie]:
    """Give each tied projection its own transposed constant (in place); returns the ties found.

    A tie: a float 2-D initializer read by ``Gather`` (axis 0, as the table) and by exactly one
    projection: ``Transpose(perm=[1, 0]) → MatMul`` (as its weight) or ``Gemm(transB=1)`` (weight
    input, no ``transA``). The projection is rewritten as ``MatMul(x, W_T)`` (``+ Add`` of a Gemm bias).
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    ties: list[Tie] = []
    for name, t in list(inits.items()):
        if t.data_type != TensorProto.FLOAT or len(t.dims) != 2 or name in {o.name for o in g.output}:
            continue
        users = readers.get(name, [])
        gathers = [n for n in users if n.op_type == "Gather" and n.input[0] == name and node_attr(n, "axis", 0) == 0]
        others = [n for n in users if n not in gathers]
        if not gathers or len(others) != 1:
            continue
        proj = others[0]
        if proj.op_type == "Transpose" and list(node_attr(proj, "perm", [1, 0])) == [1, 0]:
            mms = readers.get(proj.output[0], [])
            if len(mms) != 1 or mms[0].op_type != "MatMul" or mms[0].input[1] != proj.output[0]:
                continue
            mm = mms[0]
            wt = _unique(f"{name}_transposed", inits)
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(t).T), wt))
            inits[wt] = g.initializer[-1]
            mm.input[1] = wt
            g.node.remove(proj)
        elif (proj.op_type == "Gemm" and proj.input[1] == name and node_attr(proj, "transB", 0) == 1
              and not node_attr(proj, "transA", 0) and node_attr(proj, "alpha", 1.0) == 1.0 and node_attr(proj, "beta", 1.0) == 1.0):
            wt = _unique(f"{name}_transposed", inits)
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(t).T), wt))
            inits[wt] = g.initializer[-1]
            idx = list(g.node).index(proj)
            has_bias = len(proj.input) > 2 and bool(proj.input[2])
            out = proj.output[0]
            mm = helper.make_node("MatMul", [proj.input[0], wt], [f"{out}_matmul" if has_bias else out], name=proj.name)
            new = [mm] + ([helper.make_node("Add", [mm.output[0], proj.input[2]], [out], name=f"{proj.name}_bias")]
                          if has_bias else [])
            g.node.remove(proj)
            for j, m in enumerate(new):
                g.node.insert(idx + j, m)
        else:
            continue
        ties.append(Tie(name, wt, tuple(n.name for n in gathers), mm.name))
    return ties


def retie(model: onnx.ModelProto, ties: list[Tie]) -> tuple[list[Tie], list[Tie]]:
    """Point each tie's ``Gather`` nodes at the projection's quantized storage (in place).

    Returns (ties now sharing one stored copy, ties left as two copies). A tie whose table was
    quantized on its own (the scheme reached the ``Gather`` too) or whose projection was left float is
    put back as one float weight read through a ``Transpose``.
    """
    shared: list[Tie] = []
    apart: list[Tie] = []
    for tie in ties:
        ok = _retie_one(model, tie)
        (shared if ok else apart).append(tie)
    if shared:
        drop_unused_initializers(model)
    return shared, apart


def _retie_one(model: onnx.ModelProto, tie: Tie) -> bool:
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    gathers = [n for n in g.node if n.op_type == "Gather" and n.name in tie.gathers and n.input[0] == tie.weight]
    if len(gathers) != len(tie.gathers):
        return False  # the scheme rewrote the table itself (quantized it, or renamed it)
    if tie.weight_t in inits and inits[tie.weight_t].data_type == TensorProto.FLOAT:
        # the projection stayed float: one float copy again, read through a Transpose
        t_out = f"{tie.weight}_retied"
        g.node.insert(0, helper.make_node("Transpose", [tie.weight], [t_out], perm=[1, 0], name=f"{tie.weight}_tie_T"))
        for n in g.node:
            for i, x in enumerate(n.input):
                if x == tie.weight_t:
                    n.input[i] = t_out
        g.initializer.remove(inits[tie.weight_t])
        return True
    q8 = inits.get(f"{tie.weight_t}_quantized")
    mmi = next((n for n in g.node if n.op_type == "MatMulInteger" and len(n.input) > 1
                and n.input[1] == f"{tie.weight_t}_quantized"), None)
    if q8 is not None and mmi is not None:
        return _retie_int8(model, tie, gathers, mmi, inits)
    nbits = next((n for n in g.node if n.op_type == "MatMulNBits" and len(n.input) > 2
                  and n.input[1].startswith(f"{tie.weight_t}_") and n.input[1] in inits), None)
    if nbits is not None:
        return _retie_nbits(model, tie, gathers, nbits, inits)
    producer = next((n for n in g.node if tie.weight_t in n.output or
                     (n.op_type == "DequantizeLinear" and n.input[0] == f"{tie.weight_t}_quantized")), None)
    if producer is not None:
        dq_out = producer.output[0]
        t_out = f"{tie.weight}_retied"
        g.node.append(helper.make_node("Transpose", [dq_out], [t_out], perm=[1, 0], name=f"{tie.weight}_tie_T"))
        for n in gathers:
            n.input[0] = t_out
        _toposort(model)
        return True
    return False


def _retie_int8(model: onnx.ModelProto, tie: Tie, gathers: list[onnx.NodeProto], mmi: onnx.NodeProto,
                inits: dict[str, onnx.TensorProto]) -> bool:
    g = model.graph
    scale = inits.get(f"{tie.weight_t}_scale")
    if scale is None:
        return False
    if len(mmi.input) > 3 and mmi.input[3]:
        zp = inits.get(mmi.input[3])
        if zp is None or numpy_helper.to_array(zp).any():
            return False  # an asymmetric weight grid: not worth a second code path
    base = f"{tie.weight}_tied"
    table = f"{base}_int8"
    g.node.insert(0, helper.make_node("Transpose", [f"{tie.weight_t}_quantized"], [table], perm=[1, 0],
                                      name=f"{base}_T"))
    per_row = len(scale.dims) == 1 and scale.dims[0] > 1
    for k, n in enumerate(gathers):
        out = n.output[0]
        p = f"{base}{k}"
        nodes = [helper.make_node("Gather", [table, n.input[1]], [f"{p}_q"], axis=0, name=n.name),
                 helper.make_node("Cast", [f"{p}_q"], [f"{p}_f"], to=TensorProto.FLOAT, name=f"{p}_cast")]
        if per_row:
            axes = f"{base}_last_axis"
            if axes not in inits:
                g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), axes))
                inits[axes] = g.initializer[-1]
            nodes += [helper.make_node("Gather", [scale.name, n.input[1]], [f"{p}_s"], axis=0, name=f"{p}_scale"),
                      helper.make_node("Unsqueeze", [f"{p}_s", axes], [f"{p}_s1"], name=f"{p}_unsqueeze"),
                      helper.make_node("Mul", [f"{p}_f", f"{p}_s1"], [out], name=f"{p}_dequant")]
        else:
            nodes.append(helper.make_node("Mul", [f"{p}_f", scale.name], [out], name=f"{p}_dequant"))
        _replace(g, n, nodes)
    return True


def _retie_nbits(model: onnx.ModelProto, tie: Tie, gathers: list[onnx.NodeProto], node: onnx.NodeProto,
                 inits: dict[str, onnx.TensorProto]) -> bool:
    g = model.graph
    if len(node.input) > 3 and node.input[3]:
        return False  # stored zero points (asymmetric): left as two copies
    bits, block = int(node_attr(node, "bits", 4)), int(node_attr(node, "block_size", 32))
    k_dim, n_dim = int(node_attr(node, "K", 0)), int(node_attr(node, "N", 0))
    packed, scales = inits.get(node.input[1]), inits.get(node.input[2]) if len(node.input) > 2 else None
    if packed is None or scales is None or k_dim % block or 8 % bits:
        return False
    blocks, per_byte = k_dim // block, 8 // bits
    base = f"{tie.weight}_tied"

    def const(name: str, value: np.ndarray) -> str:
        full = f"{base}_{name}"
        if full not in inits:
            g.initializer.append(numpy_helper.from_array(value, full))
            inits[full] = g.initializer[-1]
        return full

    divisors = const("div", (2 ** (bits * np.arange(per_byte))).astype(np.int32))  # [per_byte]
    modulus = const("mod", np.array(2 ** bits, np.int32))
    zero = const("zero", np.array(2 ** (bits - 1), np.float32))
    scale_rows = const("scale_shape", np.array([n_dim, blocks, 1], np.int64))
    last = const("last", np.array([-1], np.int64))
    width = const("width", np.array([k_dim], np.int64))
    for k, n in enumerate(gathers):
        ids, out, p = n.input[1], n.output[0], f"{base}{k}"
        nodes = [
            helper.make_node("Gather", [packed.name, ids], [f"{p}_bytes"], axis=0, name=n.name),  # [..., blocks, blob]
            helper.make_node("Cast", [f"{p}_bytes"], [f"{p}_i"], to=TensorProto.INT32, name=f"{p}_cast"),
            helper.make_node("Unsqueeze", [f"{p}_i", last], [f"{p}_i1"], name=f"{p}_unsq"),  # [..., blocks, blob, 1]
            helper.make_node("Div", [f"{p}_i1", divisors], [f"{p}_shift"], name=f"{p}_div"),  # low value first
            helper.make_node("Mod", [f"{p}_shift", modulus], [f"{p}_codes"], name=f"{p}_mod"),
            helper.make_node("Cast", [f"{p}_codes"], [f"{p}_cf"], to=TensorProto.FLOAT, name=f"{p}_castf"),
            helper.make_node("Sub", [f"{p}_cf", zero], [f"{p}_c0"], name=f"{p}_sub"),
            helper.make_node("Reshape", [scales.name, scale_rows], [f"{p}_srows"], name=f"{p}_srows"),
            helper.make_node("Gather", [f"{p}_srows", ids], [f"{p}_s"], axis=0, name=f"{p}_scale"),  # [..., blocks, 1]
            helper.make_node("Shape", [ids], [f"{p}_ids_shape"], name=f"{p}_shape"),
            helper.make_node("Concat", [f"{p}_ids_shape", const("blocks", np.array([blocks, -1], np.int64))],
                             [f"{p}_bshape"], axis=0, name=f"{p}_bshape"),
            helper.make_node("Reshape", [f"{p}_c0", f"{p}_bshape"], [f"{p}_cb"], name=f"{p}_cb"),  # [..., blocks, g]
            helper.make_node("Mul", [f"{p}_cb", f"{p}_s"], [f"{p}_w"], name=f"{p}_dequant"),
            helper.make_node("Concat", [f"{p}_ids_shape", width], [f"{p}_oshape"], axis=0, name=f"{p}_oshape"),
            helper.make_node("Reshape", [f"{p}_w", f"{p}_oshape"], [out], name=f"{p}_out"),
        ]
        _replace(g, n, nodes)
    return True


def _replace(g: onnx.GraphProto, old: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
    idx = list(g.node).index(old)
    g.node.remove(old)
    for j, m in enumerate(new):
        g.node.insert(idx + j, m)


def _toposort(model: onnx.ModelProto) -> None:
    g = model.graph
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        progress = False
        for n in list(pending):
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
                pending.remove(n)
                progress = True
        if not progress:  # a cycle or an outer-scope name: keep the rest as they were
            ordered += pending
            break
    del g.node[:]
    g.node.extend(ordered)


def _unique(base: str, taken: dict[str, object]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


