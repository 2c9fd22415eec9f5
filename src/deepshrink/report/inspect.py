"""What each weighted layer of an ONNX file holds: element count, stored bits, sparsity.

Hand-written rather than taken from a library: ``onnx.reference`` can evaluate a
constant subgraph but neither knows ONNX Runtime's ``com.microsoft`` kernels
(``MatMulNBits``, ``QGemm``, ``DynamicQuantizeMatMul``) nor says in which dtype a weight
is *stored*, which is the number a size report needs. So we walk back from each layer's
weight input through the handful of ops quantizers put there (``DequantizeLinear``,
``Cast``, ``Gather`` from a codebook, ``Reshape``/``Transpose``...), evaluating them in
numpy and carrying the storage width along. The weight's name changes between files
(``W`` → ``W_quantized``, ``W_Transposed_quantized``, ``W_cb_idx``), so rows are built
from the graph structure, never from names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["layer_table", "weight_histograms"]

# op type -> (weight input, scale input, zero-point input, per-channel axis of the scale)
_INTEGER = {
    "QLinearConv": (3, 4, 5, 0), "QLinearMatMul": (3, 4, 5, -1), "QGemm": (3, 4, 5, None),
    "DynamicQuantizeMatMul": (1, 2, 3, -1), "MatMulInteger": (1, None, 3, -1), "ConvInteger": (1, None, 3, 0),
}
_FLOAT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
_BITS = {onnx.TensorProto.FLOAT: 32, onnx.TensorProto.DOUBLE: 64, onnx.TensorProto.FLOAT16: 16,
         onnx.TensorProto.BFLOAT16: 16, onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8,
         onnx.TensorProto.INT16: 16, onnx.TensorProto.UINT16: 16, onnx.TensorProto.INT32: 32}
for _name, _bits in (("INT4", 4), ("UINT4", 4), ("FLOAT8E4M3FN", 8), ("FLOAT8E5M2", 8), ("INT2", 2), ("UINT2", 2)):
    if hasattr(onnx.TensorProto, _name):
        _BITS[getattr(onnx.TensorProto, _name)] = _bits


@dataclass
class _Val:
    """A constant tensor, the bit width it is stored with, and (for index tensors) how many
    codebook tables its values address (per-channel codebooks add per-row offsets)."""

    a: np.ndarray
    bits: int
    tables: int = 1


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self._memo: dict[str, _Val | None] = {}  # small tensors only (scales, shapes): weights are not kept
        self._busy: set[str] = set()

    def const(self, name: str) -> _Val | None:
        """``name`` evaluated when it only depends on initializers, else None."""
        if name in self._memo:
            return self._memo[name]
        if name in self._busy:  # a cycle: not a constant
            return None
        self._busy.add(name)
        try:
            v = self._eval(name)
        finally:
            self._busy.discard(name)
        if v is None or v.a.size <= 4096:
            self._memo[name] = v
        return v

    def _eval(self, name: str) -> _Val | None:
        if not name:
            return None
        if name in self.inits:
            t = self.inits[name]
            return _Val(numpy_helper.to_array(t), _BITS.get(t.data_type, 32))
        node = self.producer.get(name)
        if node is None:
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant":
            return _Val(numpy_helper.to_array(attrs["value"]), _BITS.get(attrs["value"].data_type, 32)) \
                if "value" in attrs else None
        ins = [self.const(i) if i else None for i in node.input]
        if not ins or ins[0] is None:
            return None
        x = ins[0]
        op = node.op_type
        if op in ("Identity", "Cast"):
            return _Val(x.a.astype(_np_type(attrs.get("to", 1))) if op == "Cast" else x.a, x.bits, x.tables)
        if op == "Reshape" and ins[1] is not None:
            shape = [d if d != 0 else x.a.shape[i] for i, d in enumerate(ins[1].a.tolist())]
            return _Val(x.a.reshape(shape), x.bits, x.tables)
        if op == "Transpose":
            return _Val(np.transpose(x.a, attrs.get("perm")), x.bits, x.tables)
        if op in ("Squeeze", "Unsqueeze"):
            axes = attrs.get("axes", ins[1].a.tolist() if len(ins) > 1 and ins[1] is not None else None)
            fn = np.squeeze if op == "Squeeze" else np.expand_dims
            return _Val(fn(x.a, tuple(axes)) if axes is not None else np.squeeze(x.a), x.bits, x.tables)
        if op in ("Add", "Mul") and len(ins) == 2 and ins[1] is not None:
            y = ins[1]
            big, small = (x, y) if x.a.size >= y.a.size else (y, x)
            tables = small.a.size if op == "Add" and x.a.dtype.kind in "iu" and y.a.dtype.kind in "iu" else big.tables
            return _Val(x.a + y.a if op == "Add" else x.a * y.a, big.bits, tables)
        if op == "DequantizeLinear":
            scale = ins[1].a if len(ins) > 1 and ins[1] is not None else np.float32(1)
            zp = ins[2].a if len(ins) > 2 and ins[2] is not None else None
            axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
            return _Val(_dequantize(x.a, scale, zp, axis, block), x.bits)
        if op == "Gather" and len(ins) == 2 and ins[1] is not None and x.a.dtype.kind == "f":
            idx = ins[1]
            table = max(1, x.a.size // max(1, idx.tables))
            return _Val(np.take(x.a, idx.a.astype(np.int64), axis=attrs.get("axis", 0)), _bits_for(table))
        return None


def _np_type(to: int) -> type:
    return helper.tensor_dtype_to_np_dtype(to).type


def _bits_for(levels: int) -> int:
    return max(1, math.ceil(math.log2(levels)))


def _dequantize(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int, block: int = 0) -> np.ndarray:
    """``(q - zp) * scale``, with a per-axis (1-D) or blocked (same rank) scale broadcast along ``axis``."""
    q = q.astype(np.float32)
    scale = np.asarray(scale, np.float32)
    zp = np.zeros_like(scale) if zp is None else np.asarray(zp, np.float32)
    if scale.ndim == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    elif block and scale.ndim == q.ndim:
        scale, zp = np.repeat(scale, block, axis=axis), np.repeat(zp, block, axis=axis)
        cut = [slice(None)] * q.ndim
        cut[axis] = slice(0, q.shape[axis])
        scale, zp = scale[tuple(cut)], zp[tuple(cut)]
    return (q - zp) * scale


def _integer_weight(g: _Graph, node: onnx.NodeProto) -> tuple[np.ndarray, int] | None:
    """Dequantized weight and stored bits of ORT's integer ops (weights as int8/uint8 + scale)."""
    wi, si, zi, axis = _INTEGER[node.op_type]
    q = g.const(node.input[wi]) if len(node.input) > wi else None
    if q is None:
        return None
    zp = g.const(node.input[zi]) if zi is not None and len(node.input) > zi and node.input[zi] else None
    scale = g.const(node.input[si]) if si is not None and len(node.input) > si else _weight_scale(g, node)
    if axis is None:  # QGemm: B is (K, N), or (N, K) with transB=1; per-channel scales follow N
        axis = 0 if any(a.name == "transB" and a.i for a in node.attribute) else -1
    s = scale.a if scale is not None else np.float32(1)  # scale unknown: zeros and shape are still right
    return _dequantize(q.a, s, None if zp is None else zp.a, axis % q.a.ndim), q.bits


def _weight_scale(g: _Graph, node: onnx.NodeProto) -> _Val | None:
    """MatMulInteger/ConvInteger carry no weight scale; ORT multiplies it into the activation
    scale of the ``DynamicQuantizeLinear`` that feeds the node: ``Mul(x_scale, w_scale)``."""
    dql = g.producer.get(node.input[0])
    if dql is not None and dql.op_type == "DynamicQuantizeLinear" and len(dql.output) > 1:
        for m in g.consumers.get(dql.output[1], []):
            if m.op_type == "Mul":
                for i in m.input:
                    if i != dql.output[1] and (v := g.const(i)) is not None:
                        return v
    stem = node.input[1].removesuffix("_quantized")
    return g.const(stem + "_scale") if stem + "_scale" in g.inits else None


def _nbits_weight(g: _Graph, node: onnx.NodeProto) -> tuple[np.ndarray, int] | None:
    """``MatMulNBits``: B is uint8 (N, blocks, blob) packing ``bits``-wide values low bits first;
    scales (N * blocks), zero points packed the same way (default 2**(bits-1)). Returns (K, N)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n, bits, block = attrs["K"], attrs["N"], attrs.get("bits", 4), attrs["block_size"]
    packed, scales = g.const(node.input[1]), g.const(node.input[2]) if len(node.input) > 2 else None
    if packed is None or scales is None:
        return None
    blocks = -(-k // block)
    q = _unpack(packed.a.reshape(n, -1), bits)[:, : blocks * block].reshape(n, blocks, block)
    zp_v = g.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if zp_v is None:
        zp = np.full((n, blocks), 2 ** (bits - 1), np.float32)
    elif zp_v.a.dtype == np.uint8:
        zp = _unpack(zp_v.a.reshape(n, -1), bits)[:, :blocks].astype(np.float32)
    else:
        zp = zp_v.a.reshape(n, blocks).astype(np.float32)
    w = (q - zp[..., None]) * scales.a.reshape(n, blocks, 1).astype(np.float32)
    return w.reshape(n, -1)[:, :k].T, bits


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """Unpack rows of uint8 holding ``8 // bits`` values each, lowest bits first."""
    per = 8 // bits
    shifts = np.arange(per, dtype=np.uint8) * bits
    vals = (packed[..., None] >> shifts) & ((1 << bits) - 1)
    return vals.reshape(packed.shape[0], -1).astype(np.float32)


def weighted_nodes(model: onnx.ModelProto) -> Iterator[tuple[onnx.NodeProto, str, np.ndarray, int]]:
    """(node, name, dequantized weight, stored bits) for every weighted layer, in graph order;
    one weight at a time, so a large model never has all its weights dequantized at once."""
    g = _Graph(model)
    handlers: dict[str, Callable[[_Graph, onnx.NodeProto], tuple[np.ndarray, int] | None]] = {
        op: _integer_weight for op in _INTEGER}
    handlers["MatMulNBits"] = _nbits_weight
    for i, node in enumerate(model.graph.node):
        got = None
        if node.op_type in handlers:
            got = handlers[node.op_type](g, node)
        elif node.op_type in _FLOAT and len(node.input) > 1:
            v = g.const(node.input[_FLOAT[node.op_type]])
            if v is None and node.op_type == "MatMul":  # weight on the left: W @ x
                v = g.const(node.input[0])
            if v is not None and v.a.dtype.kind == "f" and v.a.ndim >= 2:
                got = (v.a, v.bits)
        if got is not None:
            yield node, node.name or f"{node.op_type}_{i}", got[0], got[1]


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    from ..backends.onnx import load_onnx  # external data checked before it is read

    return model if isinstance(model, onnx.ModelProto) else load_onnx(model)


def layer_table(model: onnx.ModelProto | str | Path) -> list[dict]:
    """One row per weighted layer, in graph order.

    Row keys: ``name`` (node name), ``op`` (op type), ``params`` (int, weight elements),
    ``shape`` (list[int], the weight as stored after dequantization), ``bits`` (int, bits per
    stored weight: 32 float, 16 fp16, 8 int8, 4 for 4-bit ``MatMulNBits``, ceil(log2 K) for a
    K-entry codebook), ``sparsity`` (float in [0, 1], fraction of exact zeros in the
    dequantized weight). Biases, codebook tables and scales are not counted.
    """
    rows = []
    for node, name, w, bits in weighted_nodes(_load(model)):
        rows.append({"name": name, "op": node.op_type, "params": int(w.size), "shape": [int(d) for d in w.shape],
                     "bits": int(bits), "sparsity": float(np.count_nonzero(w == 0) / max(1, w.size))})
    return rows


def weight_histograms(model: onnx.ModelProto | str | Path, *, layers: int = 4, bins: int = 41) -> list[dict]:
    """Histograms of the dequantized weights of the ``layers`` largest layers (most elements).

    Rows ``{"layer": name, "edges": list[float] (bins + 1), "counts": list[int] (bins)}``, in
    graph order; the range is the layer's own min..max.
    """
    found = []  # (elements, graph position, row): every layer's histogram, the largest kept
    for pos, (_, name, w, _) in enumerate(weighted_nodes(_load(model))):
        counts, edges = np.histogram(w.astype(np.float64).ravel(), bins=bins)
        found.append((w.size, pos, {"layer": name, "edges": edges.tolist(), "counts": counts.astype(int).tolist()}))
    keep = sorted(found, key=lambda r: (-r[0], r[1]))[:layers]
    return [row for _, _, row in sorted(keep, key=lambda r: r[1])]
