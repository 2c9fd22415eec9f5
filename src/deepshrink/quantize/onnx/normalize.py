"""Rewrite a float ONNX graph into the forms ONNX Runtime's quantizers handle, computing the same thing.

ONNX Runtime's quantizers (1.32) assume a narrower ONNX than the spec allows; given the
rest they either write a model that computes something else or fail deep inside:

- ``Gemm`` with ``beta != 1``: the static (QDQ) quantizer writes the quantized bias with
  ``beta=1`` and the unscaled bias (every output shifted); ``alpha != 1`` and ``transA=1``
  are equally outside the ``Gemm`` patterns its kernels (``QGemm``) and the dynamic pass
  (``MatMul`` only) know.
- ``Gemm`` with a bias ``C`` of shape ``[1, N]`` (legal: ``C`` only has to broadcast): the
  static quantizer's int32 bias step raises numpy's "truth value of an array ... is
  ambiguous" ``ValueError``.
- Weights stored as fp16 (or bf16/fp64) initializers and upcast by ``Cast`` nodes — the layout
  fp16 converters write (``InsertedCast_*``) — or held in ``Constant`` nodes (Paddle2ONNX and some
  TF exports): the quantizers only see initializer weights.

:func:`normalize_for_quantization` folds those forms away, exactly (float32 arithmetic on
constants, no change to what the graph computes):

- a ``Constant`` node holding a floating-point tensor (not a scalar) becomes an initializer of the same name;
- ``Cast(to=FLOAT)`` of a floating-point initializer becomes a float32 initializer under the
  Cast's output name (the consumers are untouched; the source stays while anything else reads it);
- ``Gemm``: ``alpha`` is folded into a constant ``B``, ``beta`` into a constant ``C``, a ``C`` that
  broadcasts to ``[N]`` (``[]``, ``[1]``, ``[1, N]``, ``[1, 1]``) is stored as ``[N]``; a ``Gemm``
  that still is not canonical (``transA=1``, a non-constant ``B`` with ``alpha != 1``, a per-row
  or non-constant scaled ``C``) is written as ``MatMul`` (+ ``Transpose`` / ``Mul`` / ``Add``),
  which every quantizer handles;
- a ``BatchNormalization`` (inference form) that is the only reader of a ``Conv`` with constant
  weights is folded into that Conv's weight and bias (Ioffe & Szegedy 2015, eq. for inference;
  the folding of Jacob et al. 2018, sec. 3.2). ONNX Runtime fuses the pair at session time for a
  float model, but not once the Conv's output is wrapped in QuantizeLinear/DequantizeLinear, so a
  static int8 CNN quantized unfolded runs an extra float BatchNormalization per conv (measured on
  the real-graphs case 1: 1.86× against 1.57× the float latency). ORT's offline "basic" level
  would fold it too, but it also rewrites ``MatMul``+``Add`` into ``Gemm`` under new node names,
  which would break the layer names users pass to ``--include``/``--exclude``; the fold here is
  the four-line algebra and keeps every name.

The Gemm semantics are ONNX's (https://onnx.ai/onnx/operators/onnx__Gemm.html):
``Y = alpha * A' @ B' + beta * C``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_FLOAT_SOURCES = (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


@dataclass
class Normalized:
    """What :func:`normalize_for_quantization` changed (names of nodes, JSON-ready)."""

    constants_folded: list[str] = field(default_factory=list)  # Constant nodes turned into initializers
    casts_folded: list[str] = field(default_factory=list)  # Cast nodes replaced by float32 initializers
    gemm_canonical: list[str] = field(default_factory=list)  # Gemm kept, alpha/beta/bias folded
    gemm_to_matmul: list[str] = field(default_factory=list)  # Gemm rewritten as MatMul (+ Add ...)
    bn_folded: list[str] = field(default_factory=list)  # BatchNormalization nodes folded into their Conv
    # each folded Cast with its source initializer, so a weight no scheme quantized goes back to its
    # stored precision (see restore_unquantized_casts)
    cast_sources: list[tuple[onnx.NodeProto, onnx.TensorProto]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, list[str]]:
        return {k: v for k, v in (("constants_folded", self.constants_folded), ("casts_folded", self.casts_folded), ("gemm_canonical", self.gemm_canonical),
                                  ("gemm_to_matmul", self.gemm_to_matmul),
                                  ("bn_folded", self.bn_folded)) if v}

    def __bool__(self) -> bool:
        return bool(self.constants_folded or self.casts_folded or self.gemm_canonical or self.gemm_to_matmul
                    or self.bn_folded)


def normalize_for_quantization(model: onnx.ModelProto) -> Normalized:
    """Rewrite ``model`` in place (see the module doc); returns what was changed.

    Only the main graph is rewritten (subgraphs of ``If``/``Loop`` are left as they are).
    """
    done = Normalized()
    done.constants_folded = fold_constant_nodes(model)
    done.casts_folded, done.cast_sources = fold_constant_casts(model)
    canon, to_mm = canonicalize_gemms(model)
    done.gemm_canonical, done.gemm_to_matmul = canon, to_mm
    done.bn_folded = fold_batchnorm(model)
    if done:
        drop_unused_initializers(model)
    return done


def fold_batchnorm(model: onnx.ModelProto) -> list[str]:
    """Fold each inference-mode ``BatchNormalization`` that alone reads a ``Conv``'s output into that Conv.

    With ``s = scale / sqrt(var + epsilon)`` per output channel: ``W' = W * s`` (over the kernel's
    first axis) and ``b' = (b - mean) * s + B``; the Conv takes the BN's output name, so readers
    are unchanged. Only done when the Conv's weight (and bias, if any) and the four BN inputs are
    float32 initializers read by nobody else, the BN has one output and ``training_mode`` 0, and
    the Conv's output is not a graph output. Returns the names of the folded BN nodes.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    outputs = {o.name for o in g.output}
    declared = {i.name for i in g.input}  # IR < 4 lists initializers as inputs too: those may be fed
    producer = {o: n for n in g.node for o in n.output}

    def const(name: str) -> np.ndarray | None:
        t = inits.get(name)
        if t is None or t.data_type != TensorProto.FLOAT or readers.get(name, 0) != 1 or name in declared:
            return None
        return numpy_helper.to_array(t)

    folded: list[str] = []
    drop: set[int] = set()
    for bn in g.node:
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or len(bn.output) != 1 \
                or len(bn.input) != 5 or node_attr(bn, "training_mode", 0):
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") \
                or readers.get(bn.input[0], 0) != 1 or bn.input[0] in outputs or len(conv.input) < 2:
            continue
        w = const(conv.input[1])
        b = const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        scale, shift, mean, var = (const(x) for x in bn.input[1:])
        if w is None or scale is None or shift is None or mean is None or var is None \
                or (len(conv.input) > 2 and conv.input[2] and b is None) or scale.shape != (w.shape[0],):
            continue
        eps = float(node_attr(bn, "epsilon", 1e-5))  # type: ignore[arg-type]
        s = (scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps))
        w2 = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        b0 = b.astype(np.float64) if b is not None else np.zeros(w.shape[0])
        b2 = ((b0 - mean) * s + shift).astype(np.float32)
        wname, bname = conv.input[1], f"{conv.input[1]}_bn_folded_bias"
        for t in [t for t in g.initializer if t.name in (wname, *(bn.input[1:]), *(conv.input[2:3]))]:
            g.initializer.remove(t)
        g.initializer.append(numpy_helper.from_array(w2, wname))
        g.initializer.append(numpy_helper.from_array(b2, bname))
        del conv.input[2:]
        conv.input.append(bname)
        _forget_shapes(model, {conv.output[0]})
        conv.output[0] = bn.output[0]
        drop.add(id(bn))
        folded.append(bn.name or bn.output[0])
    if drop:
        keep = [n for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(keep)
    return folded


def fold_constant_nodes(model: onnx.ModelProto) -> list[str]:
    """Turn every ``Constant`` node whose ``value`` is a floating-point tensor (not a scalar) into an initializer.

    The initializer takes the node's output name (its readers are unchanged); a Constant that is
    itself a graph output stays. Returns the names of the folded nodes.
    """
    g = model.graph
    outputs = {o.name for o in g.output}
    floats = (TensorProto.FLOAT, *_FLOAT_SOURCES)
    folded: list[str] = []
    keep = []
    for n in g.node:
        value = node_attr(n, "value", None) if n.op_type == "Constant" and n.domain in ("", "ai.onnx") else None
        if (isinstance(value, onnx.TensorProto) and len(n.attribute) == 1 and value.data_type in floats
                and int(np.prod(value.dims)) > 1 and n.output[0] not in outputs):  # scalars (scales, eps) stay
            t = onnx.TensorProto()
            t.CopyFrom(value)
            t.name = n.output[0]
            g.initializer.append(t)
            folded.append(n.name or n.output[0])
            continue
        keep.append(n)
    if folded:
        del g.node[:]
        g.node.extend(keep)
    return folded


def fold_constant_casts(model: onnx.ModelProto) -> tuple[list[str], list[tuple[onnx.NodeProto, onnx.TensorProto]]]:
    """Replace every ``Cast(to=FLOAT)`` of a float16/bfloat16/float64 initializer by a float32 initializer.

    The new initializer takes the Cast's output name, so the consumers read it unchanged.
    Returns the names of the folded Cast nodes, and each (Cast node, source initializer) pair.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {i.name for i in g.input}
    folded: list[str] = []
    sources: list[tuple[onnx.NodeProto, onnx.TensorProto]] = []
    keep = []
    new_inits = []
    for n in g.node:
        if (n.op_type == "Cast" and n.domain in ("", "ai.onnx") and len(n.input) == 1 and n.input[0] in inits
                and n.input[0] not in graph_inputs and node_attr(n, "to", None) == TensorProto.FLOAT
                and inits[n.input[0]].data_type in _FLOAT_SOURCES):
            arr = numpy_helper.to_array(inits[n.input[0]]).astype(np.float32)
            new_inits.append(numpy_helper.from_array(arr, n.output[0]))
            folded.append(n.name or n.output[0])
            src = onnx.TensorProto()
            src.CopyFrom(inits[n.input[0]])
            cast = onnx.NodeProto()
            cast.CopyFrom(n)
            sources.append((cast, src))
            continue
        keep.append(n)
    if folded:
        del g.node[:]
        g.node.extend(keep)
        g.initializer.extend(new_inits)
        _forget_shapes(model, {t.name for t in new_inits})
    return folded, sources


def restore_unquantized_casts(model: onnx.ModelProto, done: Normalized) -> list[str]:
    """Put back the ``Cast`` of every folded weight still stored as float32 in ``model`` (the quantized
    graph): it left quantization untouched, so it keeps the precision it was stored in (fp16 weights
    stay fp16 in the file, not twice their size). Exact: fp16 → fp32 is lossless. Returns the Cast names.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    restored: list[str] = []
    for cast, src in done.cast_sources:
        out = cast.output[0]
        t = inits.get(out)
        if t is None or t.data_type != TensorProto.FLOAT:
            continue
        g.initializer.remove(t)
        if src.name not in inits:
            g.initializer.append(src)
            inits[src.name] = src
        g.node.insert(0, cast)
        restored.append(cast.name or out)
    return restored


def canonicalize_gemms(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Fold ``alpha``/``beta``/a broadcast bias of every ``Gemm`` (see the module doc).

    Returns (names of Gemms made canonical in place, names of Gemms rewritten as MatMul).
    A constant shared with another node is copied before it is scaled, never changed under
    its other readers.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {i.name for i in g.input}
    canonical: list[str] = []
    to_matmul: list[str] = []
    new_nodes: list[onnx.NodeProto] = []

    def const(name: str) -> np.ndarray | None:
        if name and name in inits and name not in graph_inputs:
            return numpy_helper.to_array(inits[name])
        return None

    def add_init(arr: np.ndarray, base: str) -> str:
        name, k = base, 1
        while name in inits:
            name, k = f"{base}_{k}", k + 1
        t = numpy_helper.from_array(np.ascontiguousarray(arr), name)
        g.initializer.append(t)
        inits[name] = t
        return name

    for n in g.node:
        if n.op_type != "Gemm" or n.domain not in ("", "ai.onnx"):
            new_nodes.append(n)
            continue
        alpha, beta = float(node_attr(n, "alpha", 1.0)), float(node_attr(n, "beta", 1.0))
        trans_a, trans_b = int(node_attr(n, "transA", 0)), int(node_attr(n, "transB", 0))
        a_in, b_in = n.input[0], n.input[1]
        c_in = n.input[2] if len(n.input) > 2 else ""
        b, c = const(b_in), const(c_in)
        name = n.name or n.output[0]
        n_out = None if b is None else int(b.shape[0] if trans_b else b.shape[1])
        changed = False
        if c_in and beta == 0.0:  # C is ignored
            c_in, c, beta, changed = "", None, 1.0, True
        if alpha != 1.0 and b is not None:
            b = (b.astype(np.float32) * np.float32(alpha)).astype(b.dtype)
            b_in, alpha, changed = add_init(b, f"{b_in}_alpha"), 1.0, True
        if c is not None and (beta != 1.0 or c.ndim != 1 or (n_out is not None and c.shape != (n_out,))):
            scaled = (c.astype(np.float32) * np.float32(beta)).astype(c.dtype) if beta != 1.0 else c
            flat = _as_row(scaled, n_out)
            if flat is not None:
                c_in, c, beta, changed = add_init(flat, f"{c_in}_{'beta' if beta != 1.0 else 'row'}"), flat, 1.0, True
            elif beta != 1.0:
                c_in, c, beta, changed = add_init(scaled, f"{c_in}_beta"), scaled, 1.0, True
        c_is_row = c is None or (c.ndim == 1 and (n_out is None or c.shape == (n_out,)))
        if trans_a == 0 and alpha == 1.0 and beta == 1.0 and c_is_row:
            if changed:
                attrs = {"transB": trans_b} if trans_b else {}
                new_nodes.append(helper.make_node("Gemm", [a_in, b_in, c_in] if c_in else [a_in, b_in],
                                                  list(n.output), name=n.name, **attrs))
                canonical.append(name)
            else:
                new_nodes.append(n)
            continue
        # MatMul form: Y = (A' @ B') [* alpha] [+ C [* beta]]
        out = n.output[0]
        if trans_a:
            new_nodes.append(helper.make_node("Transpose", [a_in], [f"{out}_At"], perm=[1, 0], name=f"{name}_transA"))
            a_in = f"{out}_At"
        if trans_b:
            if b is not None:
                b_in = add_init(b.T, f"{b_in}_T")
            else:
                new_nodes.append(helper.make_node("Transpose", [b_in], [f"{out}_Bt"], perm=[1, 0],
                                                  name=f"{name}_transB"))
                b_in = f"{out}_Bt"
        tail: list[tuple[str, str, str]] = []  # (op, operand, node suffix)
        if alpha != 1.0:
            tail.append(("Mul", add_init(np.array(alpha, np.float32), f"{name}_alpha"), "alpha"))
        if c_in:
            if beta != 1.0:
                new_nodes.append(helper.make_node("Mul", [c_in, add_init(np.array(beta, np.float32), f"{name}_beta")],
                                                  [f"{out}_betaC"], name=f"{name}_beta"))
                c_in = f"{out}_betaC"
            tail.append(("Add", c_in, "bias"))
        cur = f"{out}_matmul" if tail else out
        new_nodes.append(helper.make_node("MatMul", [a_in, b_in], [cur], name=n.name or name))
        for i, (op, operand, suffix) in enumerate(tail):
            nxt = out if i == len(tail) - 1 else f"{out}_{suffix}"
            new_nodes.append(helper.make_node(op, [cur, operand], [nxt], name=f"{name}_{suffix}"))
            cur = nxt
        to_matmul.append(name)
    if canonical or to_matmul:
        del g.node[:]
        g.node.extend(new_nodes)
    return canonical, to_matmul


def _as_row(c: np.ndarray, n_out: int | None) -> np.ndarray | None:
    """``c`` as a 1-D ``[N]`` bias when it broadcasts along the rows (shape [], [1], [N], [1, 1], [1, N])."""
    if n_out is None or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
        return None
    row = c.reshape(-1)
    if row.size == n_out:
        return np.ascontiguousarray(row)
    if row.size == 1:
        return np.full((n_out,), row[0], dtype=c.dtype)
    return None


def node_attr(node: onnx.NodeProto, name: str, default: object) -> object:
    """The value of ``node``'s attribute ``name``, or ``default`` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _forget_shapes(model: onnx.ModelProto, names: set[str]) -> None:
    g = model.graph
    for v in [v for v in g.value_info if v.name in names]:
        g.value_info.remove(v)


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove the initializers no node reads (inside If/Loop bodies included) and no output names."""
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for n in g.node:  # names read inside subgraphs (If/Loop bodies) count as used
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                used |= {i for m in sub.node for i in m.input}
    keep = [t for t in g.initializer if t.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
