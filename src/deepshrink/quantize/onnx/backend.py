"""The deployed artifact: ONNX models that really run quantized in ONNX Runtime.

- Dynamic int8 and static int8 (QDQ or QOperator) are ONNX Runtime's own
  ``quantize_dynamic`` / ``quantize_static`` — we only choose the nodes, the observer
  and the options (per-channel, the float default for fused graphs, pre-processing with
  ``skip_symbolic_shape=True``), because ORT's passes already emit the patterns its
  kernels fuse (``QLinearConv``, ``DynamicQuantizeMatMul``, ``QAttention``...).
- The ``mse`` and ``entropy`` observers are ours: ORT has no MSE-optimal range search, and its
  entropy calibrator, reached through ``quantize_static``, keeps 128 histogram bins for 128
  quantized bins, so its only candidate threshold is the min-max range. We collect the
  activations, pick each range with :mod:`deepshrink.quantize.observers`, and hand the ranges
  to ``quantize_static`` through its calibration cache.
- BERT-like encoders are first fused with ``onnxruntime.transformers.optimizer`` (fused
  Attention is then quantized as one ``QAttention``); the head count it needs is read
  from the model's Hugging Face config or from the attention reshapes in the graph.
- Weight-only int4/int8 is ORT's ``MatMulNBitsQuantizer`` (round-to-nearest); GPTQ
  writes the ``MatMulNBits`` node itself from our own GPTQ solution, because ORT's GPTQ
  path needs Intel Neural Compressor.
- Codebooks (k-means, log2) have no ORT pass at all: each weight becomes a float
  codebook plus a uint8 index tensor feeding ``Cast`` → ``Gather``, so the file really
  holds one byte per weight.

:func:`integer_op_counts` checks what ORT actually runs: it saves the ORT-optimized
graph and counts the integer kernels in it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import logging
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import DeepshrinkError, InputError, UnsupportedError, first_line
from ..configs import MATMUL_NBITS_GROUP_SIZES, PER_CHANNEL_MIN_DB
from .normalize import drop_unused_initializers

INTEGER_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QAttention", "QGemm", "QEmbedLayerNormalization", "MatMulNBits",
    "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearConcat", "QLinearAveragePool", "DynamicQuantizeLSTM", "NhwcQLinearConv", "QLinearSoftmax",
})

# node type -> index of its weight input
WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "Attention": 1, "ConvTranspose": 1, "Gather": 0,
                "EmbedLayerNormalization": 2, "LSTM": 1}


@dataclass(frozen=True)
class WeightNode:
    """A node whose weight is a constant initializer."""

    name: str
    op_type: str
    weight: str
    shape: tuple[int, ...]


def initializer_map(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def weight_nodes(model: onnx.ModelProto, op_types: Iterable[str] | None = None) -> list[WeightNode]:
    """Nodes of ``op_types`` whose weight input is an initializer (float, ≥ 2-D)."""
    inits = initializer_map(model)
    types = set(op_types) if op_types else set(WEIGHT_INPUT) - {"Gather", "EmbedLayerNormalization", "LSTM"}
    out = []
    for i, n in enumerate(model.graph.node):
        if n.op_type not in types or n.op_type not in WEIGHT_INPUT:
            continue
        idx = WEIGHT_INPUT[n.op_type]
        if len(n.input) <= idx or n.input[idx] not in inits:
            continue
        t = inits[n.input[idx]]
        if t.data_type != onnx.TensorProto.FLOAT or len(t.dims) < 2:
            continue
        out.append(WeightNode(n.name or f"{n.op_type}_{i}", n.op_type, n.input[idx], tuple(t.dims)))
    return out


STORAGE_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": -1, "Attention": -1, "LSTM": 1, "GRU": 1, "RNN": 1,
                "Gather": 0}  # the output-channel axis of each op's weight (Gemm: 0 with transB, else 1)


def int8_weight_storage(model: onnx.ModelProto, nodes: Sequence[str]) -> onnx.ModelProto:
    """``nodes``' float weights stored as int8 and turned back into float when the model is loaded.

    Each weight ``W`` becomes ``Mul(Cast(W_q, float), scale)`` with ``W_q`` int8, symmetric
    (zero point 0, range −127…127) and per output channel (``scale`` float32, one per channel of
    :data:`STORAGE_AXIS`, shaped to broadcast against ``W``). Both nodes read only initializers,
    so ONNX Runtime's constant folding (every optimisation level but ``ORT_DISABLE_ALL``) computes
    the float weight once when the session is created: the graph that runs is the float graph,
    at the float speed, while the file holds a quarter of the weight bytes. This is the ONNX form
    of what TensorFlow Lite does for its float16 weights on CPU (dequantized at load time); it
    is a size layout, not an int8-compute one. The tensor keeps its name, so every reader of it
    (tied weights included) reads the dequantized values.

    ``nodes``: node names as :func:`weight_nodes` gives them; nodes whose weight is not a float
    initializer of at least 2 dimensions are skipped. Returns a new model; ``model`` is unchanged.
    """
    from onnx import TensorProto

    m = onnx.ModelProto()
    m.CopyFrom(model)
    ensure_node_names(m)
    wanted = set(nodes)
    inits = initializer_map(m)
    graph_inputs = {i.name for i in m.graph.input}
    done: set[str] = set()
    front: list[onnx.NodeProto] = []
    for n in m.graph.node:
        if n.name not in wanted:
            continue
        idx = WEIGHT_INPUT.get(n.op_type, 1)
        if len(n.input) <= idx or n.input[idx] in done or n.input[idx] in graph_inputs:
            continue
        t = inits.get(n.input[idx])
        if t is None or t.data_type != TensorProto.FLOAT or len(t.dims) < 2:
            continue
        w = numpy_helper.to_array(t).astype(np.float32)
        if n.op_type == "Gemm":
            axis = 0 if any(a.name == "transB" and a.i for a in n.attribute) else 1
        else:
            axis = STORAGE_AXIS.get(n.op_type, 0) % w.ndim
        shape = [1] * w.ndim
        shape[axis] = w.shape[axis]
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale = (np.abs(w).max(axis=reduce) / 127.0).astype(np.float32)
        scale = np.where(scale > 0, scale, np.float32(1.0)).reshape(shape).astype(np.float32)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        name = t.name
        m.graph.initializer.remove(t)
        m.graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"),
                                    numpy_helper.from_array(scale, f"{name}_scale")])
        front += [helper.make_node("Cast", [f"{name}_int8"], [f"{name}_cast"], to=TensorProto.FLOAT,
                                   name=f"{name}_storage_cast"),
                  helper.make_node("Mul", [f"{name}_cast", f"{name}_scale"], [name], name=f"{name}_storage_dequant")]
        done.add(name)
    if front:
        rest = list(m.graph.node)
        del m.graph.node[:]
        m.graph.node.extend(front + rest)
    return m


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (ORT's node lists select by name)."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)


def node_matches(node: WeightNode, pattern: str) -> bool:
    """``pattern`` names the node, its weight or the module path (``deepshrink.core.layers``)."""
    from ...core.layers import matches, names_of

    return matches(pattern, names_of(node.name, node.weight))


def select_nodes(candidates: Sequence[WeightNode], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """Names of the candidates matched by ``include`` (all when empty) and not by ``exclude``; a
    pattern may name the node, its weight or the module path (``deepshrink.core.layers``).

    A pattern that matches no candidate is an :class:`InputError` that lists a few valid names.
    """
    from ...core.layers import names_of, select

    return select([(c.name, names_of(c.name, c.weight)) for c in candidates], include, exclude,
                  what="quantizable layer")


# ---------------------------------------------------------------------------------------------
# ORT plumbing


def _save_tmp(model: onnx.ModelProto, path: Path) -> Path:
    from ...backends.onnx import EXTERNAL_DATA_THRESHOLD, inline_external_data

    inline_external_data(model)  # onnx.save_model would write loaded EXTERNAL tensors to the location they name
    big = model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    onnx.save_model(model, str(path), save_as_external_data=big, location=path.name + ".data" if big else None)
    return path


def optimized_graph(model: onnx.ModelProto | str | Path, *, level: str = "all") -> onnx.ModelProto:
    """The graph ONNX Runtime actually runs after its optimizations (saved by the session)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="deepshrink.opt.") as d:
        src = _save_tmp(model, Path(d) / "in.onnx") if isinstance(model, onnx.ModelProto) else Path(model)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                       "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                       "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        return onnx.load(str(Path(d) / "opt.onnx"))


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in model.graph.node))


def float_islands(model: onnx.ModelProto | str | Path) -> dict[str, int]:
    """Ops ONNX Runtime runs in float between int8 ones, each costing a dequantize before and a quantize after
    (``{op_type: count}`` in its optimized graph: a float node fed by ``DequantizeLinear`` whose output goes to
    ``QuantizeLinear``) — MTCNN's PReLU, for one, has no int8 kernel."""
    g = optimized_graph(model).graph
    made_by = {o: n.op_type for n in g.node for o in n.output}
    read_by: dict[str, list[str]] = {}
    for n in g.node:
        for i in n.input:
            read_by.setdefault(i, []).append(n.op_type)
    skip = {"DequantizeLinear", "QuantizeLinear", *INTEGER_OPS}
    found = [n.op_type for n in g.node if n.op_type not in skip
             and any(made_by.get(i) == "DequantizeLinear" for i in n.input)
             and any("QuantizeLinear" in read_by.get(o, ()) for o in n.output)]
    return dict(collections.Counter(found))


def integer_op_counts(model: onnx.ModelProto | str | Path) -> dict[str, int]:
    """Integer kernels in the ORT-optimized graph: {op_type: count}; empty when ORT runs float."""
    counts = op_counts(optimized_graph(model))
    return {k: v for k, v in sorted(counts.items()) if k in INTEGER_OPS}


def float_compute_ops(model: onnx.ModelProto | str | Path) -> dict[str, int]:
    """Float MatMul/Conv/Gemm kernels still left in the ORT-optimized graph."""
    counts = op_counts(optimized_graph(model))
    return {k: v for k, v in counts.items() if k in ("MatMul", "Conv", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm")}


def failing_node(exc: BaseException, model: onnx.ModelProto) -> str | None:
    """The node ONNX Runtime's quantizer was working on when it raised ``exc``: ``"Gemm 'fc1'"``, or None.

    Read from the traceback: the innermost ``onnxruntime`` frame holding a node (a ``NodeProto``
    local), else a local naming one of ``model``'s tensors, mapped to the node that reads it.
    """
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        if "onnxruntime" in tb.tb_frame.f_code.co_filename:
            frames.append(tb.tb_frame)
        tb = tb.tb_next
    readers: dict[str, onnx.NodeProto] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, n)
    names = {n.name: n for n in model.graph.node if n.name}
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, onnx.NodeProto):
                return f"{value.op_type} {value.name!r}"
        for value in frame.f_locals.values():
            if isinstance(value, str) and value:
                node = names.get(value) or readers.get(value) or readers.get(value.removesuffix("_quantized"))
                if node is not None:
                    return f"{node.op_type} {node.name!r}"
    return None


def ort_quantizer_error(exc: BaseException, model: onnx.ModelProto, what: str = "quantizer") -> UnsupportedError:
    """One line for an exception raised inside ONNX Runtime's quantization code, naming the node."""
    node = failing_node(exc, model)
    where = f" on {node}" if node else ""
    return UnsupportedError(f"ONNX Runtime's {what} failed{where}: {type(exc).__name__}: {first_line(exc)}; "
                            "nothing was written (--exclude the layer to keep it float)")


def _ort_quantize(fn: Any, model: onnx.ModelProto, **kwargs: Any) -> onnx.ModelProto:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's "consider pre-processing" advice, once per call
    try:
        with tempfile.TemporaryDirectory(prefix="deepshrink.q.") as d:
            src = _save_tmp(model, Path(d) / "in.onnx")
            out = Path(d) / "out.onnx"
            try:
                fn(str(src), str(out), **kwargs)
            except (DeepshrinkError, KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:
                raise ort_quantizer_error(exc, model) from exc
            return onnx.load(str(out))
    finally:
        root.setLevel(level)


def preprocess(model: onnx.ModelProto) -> onnx.ModelProto:
    """ORT's ``quant_pre_process`` (BN folding, shape inference); symbolic shapes skipped (FACTS)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    def run(src: str, dst: str) -> None:
        quant_pre_process(src, dst, skip_symbolic_shape=True)

    try:
        out = _ort_quantize(run, model)
    except Exception:  # pre-processing is an optimisation, not a requirement
        return model
    _restore_fused_names(model, out)
    ensure_node_names(out)
    return out


def _restore_fused_names(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """Give a node ORT's optimizer renamed while fusing (``fc2`` -> ``fc2/MatMulAddFusion``) its name back,
    so include/exclude patterns and reports keep naming the user's layers."""
    old = {n.name for n in before.graph.node if n.name}
    present = {n.name for n in after.graph.node}
    for n in after.graph.node:
        base, _, tail = n.name.rpartition("/")
        if n.name in old or not tail.endswith("Fusion"):
            continue
        if base and base in old and base not in present:
            n.name = base
            present.add(base)


# ---------------------------------------------------------------------------------------------
# transformer fusion


def detect_bert(model: onnx.ModelProto, hf_dir: Path | None = None) -> tuple[int, int] | None:
    """(num_heads, hidden) of a BERT-like encoder, from its HF config or its attention reshapes."""
    if hf_dir is not None and (Path(hf_dir) / "config.json").is_file():
        try:
            cfg = json.loads((Path(hf_dir) / "config.json").read_text())
            if cfg.get("model_type") in ("bert", "roberta", "distilbert", "xlm-roberta", "electra", "mpnet") or \
                    "BertModel" in str(cfg.get("architectures")):
                return int(cfg["num_attention_heads"]), int(cfg["hidden_size"])
        except (ValueError, KeyError, OSError):
            pass
    inits = initializer_map(model)
    ln_sizes = collections.Counter(
        inits[n.input[1]].dims[0] for n in model.graph.node
        if n.op_type == "LayerNormalization" and len(n.input) > 1 and n.input[1] in inits)
    if not ln_sizes or not any(n.op_type == "Softmax" for n in model.graph.node):
        return None
    hidden = int(ln_sizes.most_common(1)[0][0])
    producers = {o: n for n in model.graph.node for o in n.output}

    def const_ints(name: str) -> list[int] | None:
        if name in inits:
            return numpy_helper.to_array(inits[name]).reshape(-1).astype(int).tolist()
        p = producers.get(name)
        if p is not None and p.op_type == "Constant" and p.attribute:
            return numpy_helper.to_array(p.attribute[0].t).reshape(-1).astype(int).tolist()
        if p is not None and p.op_type == "Unsqueeze":
            return const_ints(p.input[0])
        return None

    for n in model.graph.node:
        if n.op_type != "Reshape":
            continue
        shape = const_ints(n.input[1])
        if shape is None:
            p = producers.get(n.input[1])
            if p is None or p.op_type != "Concat" or len(p.input) != 4:
                continue
            parts = [const_ints(i) for i in p.input]
            shape = [v[0] if v and len(v) == 1 else 0 for v in parts]
        if len(shape) == 4 and shape[3] > 1 and hidden % shape[3] == 0 and shape[3] < hidden:
            heads = shape[2] if shape[2] > 0 else hidden // shape[3]
            if heads * shape[3] == hidden:
                return heads, hidden
    return None


def fuse_transformer(model: onnx.ModelProto, num_heads: int, hidden: int) -> tuple[onnx.ModelProto, dict[str, int]]:
    """ORT's BERT fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm); returns the fused counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    from ...core.quiet import detail, native_output_silenced

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    # its fusion modules log under their own top-level names (fusion_attention, …) and onnx_model prints a failed
    # shape inference: shown behind --verbose only
    with tempfile.TemporaryDirectory(prefix="deepshrink.fuse.") as d, native_output_silenced() as said:
        src = _save_tmp(model, Path(d) / "in.onnx")
        opt = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden)
        stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
        fused = opt.model
    detail(said[0] if said else "", what="ONNX Runtime transformer fusions")
    if num_heads > 0 and hidden % num_heads == 0:
        _attention_heads_from_weights(fused, hidden // num_heads)
    ensure_node_names(fused)
    return fused, stats


def _attention_heads_from_weights(model: onnx.ModelProto, head_size: int) -> None:
    """Give each fused ``Attention`` node the head count its packed QKV weight holds, in place.

    ORT's fusion writes the ``num_heads`` it is given (the model's configuration) on every node when it cannot read
    the count from the graph's reshapes — as in the torchscript export of a model whose heads were pruned, where the
    reshape targets are computed. Structured pruning keeps the head size, so a node whose weight is
    ``(hidden, 3 · H · head_size)`` has H heads (9 in a MiniLM pruned from 12 heads of 32: the fused model read them
    as 12 heads of 24 and its embeddings fell to cosine 0.905). Nodes with ``qkv_hidden_sizes`` or a weight that
    is not a multiple of the head size are left as written."""
    inits = initializer_map(model)
    for n in model.graph.node:
        if n.op_type != "Attention" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        if any(a.name == "qkv_hidden_sizes" for a in n.attribute):
            continue
        width = int(inits[n.input[1]].dims[-1])
        if width % (3 * head_size):
            continue
        for a in n.attribute:
            if a.name == "num_heads":
                a.i = width // (3 * head_size)


# ---------------------------------------------------------------------------------------------
# int8


def per_tensor_sqnr_db(weight: np.ndarray, axis: int = 1, bits: int = 8) -> float:
    """Median over output channels (``axis``) of each channel's SQNR (dB) under one per-tensor scale.

    The median channel, not the whole tensor: a few large channels would dominate a
    whole-tensor SQNR while the rest are crushed to a handful of levels. Computed from the
    weight alone, so the choice below needs no data.
    """
    w = np.moveaxis(np.asarray(weight, dtype=np.float64), axis, -1).reshape(-1, np.shape(weight)[axis])
    qmax = 2 ** (bits - 1) - 1
    scale = float(np.abs(w).max()) / qmax
    if scale == 0.0:
        return float("inf")
    err = np.clip(np.round(w / scale), -qmax, qmax) * scale - w
    signal, noise = np.sum(w * w, axis=0), np.sum(err * err, axis=0)
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(np.where(noise > 0, signal / np.maximum(noise, 1e-300), np.inf))
    return float(np.median(db))


def choose_per_channel(model: onnx.ModelProto, nodes: Sequence[str],
                       min_sqnr_db: float = PER_CHANNEL_MIN_DB) -> dict[str, float]:
    """The nodes whose weight loses too much with one scale per tensor: {node: per-tensor SQNR dB}.

    A layer whose output channels differ widely in range (BERT's FFN output projections, whose
    few outlier columns feed the residual stream) needs per-channel scales; the rest lose next
    to nothing with one scale. ONNX Runtime's integer MatMul pays a fixed cost per output column
    for per-column scales (about 6.5 ns a column per call here, ~6% of MiniLM's batch-1
    latency when every layer is per-channel), so granularity ``auto`` spends it only where the
    median output channel's SQNR under one per-tensor scale falls below ``min_sqnr_db``.
    """
    inits = initializer_map(model)
    wanted = set(nodes)
    out: dict[str, float] = {}
    for wn in weight_nodes(model, ("MatMul", "Attention")):
        if wn.name not in wanted or len(wn.shape) != 2:
            continue
        db = per_tensor_sqnr_db(numpy_helper.to_array(inits[wn.weight]), axis=1)
        if db < min_sqnr_db:
            out[wn.name] = round(db, 1)
    return out


def int8_saturates() -> bool:
    """Whether this CPU's uint8 × int8 kernels saturate: an x86 CPU without VNNI (AVX512-VNNI, AVX-VNNI) or AMX,
    where ONNX Runtime's MLAS multiplies with ``VPMADDUBSW``, which adds each pair of uint8 × int8 products into an
    int16 with saturation (2 × 255 × 127 > 32,767). Weights kept to 7 bits (ONNX Runtime's ``reduce_range``) keep
    every pair in range. Measured on an AVX2-only AMD EPYC (ORT 1.32): a tied-embedding LM's worst logit cosine,
    static int8, 0.989 with 8-bit weights against 0.9997 on an AVX-512-VNNI EPYC; an MLP's dynamic int8 differed
    from the graph's integer arithmetic by 0.41 (max-abs), by 0 with 7-bit weights."""
    import platform

    from ...core.cpu import cpuinfo

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False  # ARM's dot-product kernels accumulate in int32
    info = cpuinfo()
    return info is not None and not info[1] & {"avx512_vnni", "avx_vnni", "amx_int8"}


def reduce_range_for(reduce_range: bool | None) -> bool:
    """``reduce_range`` as given, or (None) whether this CPU needs it (:func:`int8_saturates`)."""
    return int8_saturates() if reduce_range is None else bool(reduce_range)


def quantize_dynamic_int8(model: onnx.ModelProto, nodes: Sequence[str], *, per_channel: bool | str = True,
                          reduce_range: bool | None = None, report: dict[str, Any] | None = None,
                          per_channel_min_db: float = PER_CHANNEL_MIN_DB) -> onnx.ModelProto:
    """ORT ``quantize_dynamic`` on exactly ``nodes`` (int8 weights, uint8 activations at run time).

    ``per_channel="auto"`` quantizes the layers :func:`choose_per_channel` picks per channel and
    the rest per tensor (two ORT passes over disjoint node sets); the chosen layers and their
    per-tensor SQNR go to ``report["per_channel_layers"]``. ``reduce_range``: 7-bit weights; None —
    where this CPU's int8 kernels saturate (:func:`int8_saturates`).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not nodes:
        return model
    reduce_range = reduce_range_for(reduce_range)

    def run(m: onnx.ModelProto, subset: Sequence[str], pc: bool) -> onnx.ModelProto:
        return _ort_quantize(quantize_dynamic, m, nodes_to_quantize=list(subset), per_channel=pc,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})

    if per_channel == "auto":
        chosen = choose_per_channel(model, nodes, per_channel_min_db)
        if report is not None:
            report["per_channel_layers"] = chosen
        rest = [n for n in nodes if n not in chosen]
        q = run(model, rest, False) if rest else model
        if chosen:
            q = run(q, list(chosen), True)
    else:
        q = run(model, nodes, bool(per_channel))
    scalar_zero_points(q)
    return q


# node type -> index of its weight zero point (com.microsoft QAttention: input 7)
_WEIGHT_ZERO_POINT = {"MatMulInteger": 3, "QAttention": 7}


def scalar_zero_points(model: onnx.ModelProto) -> int:
    """Replace all-zero per-column weight zero points of ``MatMulInteger`` / ``QAttention`` with one scalar zero.

    Symmetric int8 weights have zero points that are all 0; given as a vector, ORT takes its
    per-column zero-point path (slower), although a scalar 0 means the same (both ops take a
    scalar or a per-column weight zero point). Returns the count.
    """
    inits = initializer_map(model)
    zero_name = "deepshrink_weight_zero_point_int8"
    changed = 0
    for n in model.graph.node:
        at = _WEIGHT_ZERO_POINT.get(n.op_type)
        if at is None or len(n.input) <= at or n.input[at] not in inits:
            continue
        t = inits[n.input[at]]
        a = numpy_helper.to_array(t)
        if a.ndim == 1 and a.size > 1 and a.dtype == np.int8 and not a.any():
            n.input[at] = zero_name
            changed += 1
    if changed:
        if zero_name not in inits:
            model.graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int8), zero_name))
        drop_unused_initializers(model)
    return changed


class _Reader:
    """ORT CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds, self.i = feeds, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self) -> None:
        self.i = 0

    def __len__(self) -> int:
        return len(self.feeds)


def split_feeds(inputs: dict[str, np.ndarray], batch: int = 1) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(inputs.values())))
    return [{k: v[i:i + batch] for k, v in inputs.items()} for i in range(0, n, batch)]


def quantize_static_int8(model: onnx.ModelProto, nodes: Sequence[str], calibration: dict[str, np.ndarray], *,
                         observer: str = "minmax", percentile: float = 99.999, per_channel: bool = True,
                         fmt: str = "qdq", symmetric_activations: bool = False,
                         op_types: Sequence[str] = (), exclude_nodes: Sequence[str] = (),
                         reduce_range: bool | None = None) -> onnx.ModelProto:
    """ORT ``quantize_static`` with calibrated activation ranges; ``mse`` and ``entropy`` ranges are computed here.

    ``nodes``: the nodes to quantize (empty: every node of ORT's op types); ``exclude_nodes``: nodes kept float;
    ``reduce_range``: 7-bit weights, None — where this CPU's int8 kernels saturate (:func:`int8_saturates`)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    extra: dict[str, Any] = {"DefaultTensorType": onnx.TensorProto.FLOAT,
                             "ActivationSymmetric": symmetric_activations}
    method = {"minmax": CalibrationMethod.MinMax, "moving_average": CalibrationMethod.MinMax,
              "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.MinMax,
              "mse": CalibrationMethod.MinMax}.get(observer)
    if method is None:
        raise InputError(f"unknown observer {observer!r}; use minmax, moving_average, percentile, mse or entropy")
    if observer == "moving_average":
        extra["CalibMovingAverage"] = True
    if observer == "percentile":
        extra["CalibPercentile"] = percentile
    # a graph fixed at batch B (TFLite-born detectors: 1) is fed B samples at a time
    fixed = fixed_batch_of(model)
    feeds = split_feeds(calibration, batch=fixed or (1 if observer in ("minmax", "mse", "entropy") else 8))
    kwargs: dict[str, Any] = dict(
        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
        per_channel=per_channel, reduce_range=reduce_range_for(reduce_range),
        activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
        weight_type=QuantType.QInt8, nodes_to_quantize=list(nodes) or None, nodes_to_exclude=list(exclude_nodes) or None,
        op_types_to_quantize=list(op_types) or None, calibrate_method=method, extra_options=extra)
    with tempfile.TemporaryDirectory(prefix="deepshrink.cal.") as d:
        if observer in ("minmax", "mse", "entropy"):
            # ORT has no MSE search, and its entropy calibrator, called through quantize_static, has as many
            # histogram bins as quantized bins (128 and 128): its one candidate threshold is the min-max range.
            # The ranges do not depend on which nodes are quantized: auto's trials reuse them (_RANGES)
            cache = Path(d) / "ranges.json"
            cache.write_bytes(_cached_ranges(model, feeds, kwargs, observer))
            kwargs["calibration_cache_path"] = str(cache)
            return _ort_quantize(quantize_static, model, calibration_data_reader=None, **kwargs)
        kwargs["calibration_data_reader"] = _Reader(feeds)
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print progress
            return _ort_quantize(quantize_static, model, **kwargs)


_RANGES: collections.OrderedDict[tuple[str, ...], bytes] = collections.OrderedDict()  # the last few calibrations


def _cached_ranges(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], kwargs: dict[str, Any],
                   observer: str) -> bytes:
    """The calibration cache file (ORT's ``TensorsData`` JSON) of ``model`` on ``feeds`` for ``observer``,
    computed once per (graph, data, observer, op types) and kept for the next call: auto and search
    quantize the same calibrated graph with many node subsets, and the ranges do not depend on them."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    h = hashlib.sha1(model.SerializeToString())
    for f in feeds:
        for k in sorted(f):
            a = np.ascontiguousarray(f[k])
            h.update(f"{k}{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
    # the op types quantize_static calibrates when given none: the same tensors as its own reader path
    types = kwargs.get("op_types_to_quantize") or sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    key = (h.hexdigest(), observer, ",".join(types))
    if key in _RANGES:
        _RANGES.move_to_end(key)
        return _RANGES[key]
    with tempfile.TemporaryDirectory(prefix="deepshrink.ranges.") as d:
        path = Path(d) / "ranges.json"
        _observer_ranges(model, feeds, path, {**kwargs, "op_types_to_quantize": types}, observer)
        data = path.read_bytes()
    _RANGES[key] = data
    while len(_RANGES) > 4:
        _RANGES.popitem(last=False)
    return data


def _observer_ranges(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], cache: Path, kwargs: dict[str, Any],
                     observer: str) -> None:
    """Min-max calibration names the tensors and gives their ranges (``minmax``), or the ranges are then
    re-chosen by our ``observer`` (``mse``: :class:`~.observers.MSEObserver`; ``entropy``:
    :class:`~.observers.EntropyObserver`, 2048 bins)."""
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorData,
        TensorsData,
        create_calibrator,
        save_tensors_data,
    )

    from ..observers import EntropyObserver, MSEObserver

    with tempfile.TemporaryDirectory(prefix="deepshrink.mse.") as d:
        src = _save_tmp(model, Path(d) / "in.onnx")
        cal = create_calibrator(src, kwargs.get("op_types_to_quantize"), augmented_model_path=str(Path(d) / "aug.onnx"),
                                calibrate_method=CalibrationMethod.MinMax)
        cal.collect_data(_Reader(feeds))
        minmax = cal.compute_data()
        names = list(minmax.data)
    if observer == "minmax":
        save_tensors_data(minmax, cache)
        return
    acts = collect_tensors(model, names, feeds)
    ranges = {}
    for name in names:
        obs = (MSEObserver(bits=8, symmetric=False, max_samples=1 << 13, grid=40) if observer == "mse" else
               EntropyObserver(bits=8, symmetric=False))
        for a in acts[name]:
            obs.observe(np.asarray(a, np.float32))
        lo, hi = (float(v) for v in obs.range())
        ranges[name] = TensorData(lowest=np.array(min(float(lo), 0.0), np.float32), highest=np.array(max(float(hi), 0.0), np.float32))
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache)


MIXED_RANGE_RATIO = 32.0  # a Concat input this many times smaller than another keeps < 8 of a shared scale's 256 steps


def mixed_range_concats(model: onnx.ModelProto, calibration: dict[str, np.ndarray], *,
                        ratio: float = MIXED_RANGE_RATIO, samples: int = 16) -> list[tuple[str, float]]:
    """Concat nodes whose float inputs' amplitudes (max |x| on the first ``samples`` calibration samples) are more
    than ``ratio`` apart, with that ratio, largest first. Static QDQ gives a Concat's inputs and output one
    scale: a detector's output that joins box coordinates (0–320 pixels) and class scores (0–1) then rounds
    every score to 0 (YOLOv8's ``output0``, whose cosine to the float model stays 0.9996 all the same)."""
    concats = [n for n in model.graph.node if n.op_type == "Concat" and len(n.input) > 1]
    if not concats:
        return []
    names = sorted({i for n in concats for i in n.input if i})
    inits = {i.name for i in model.graph.initializer}
    feeds = split_feeds({k: v[:samples] for k, v in calibration.items()},
                        batch=fixed_batch_of(model) or min(samples, len(next(iter(calibration.values())))))
    try:
        acts = collect_tensors(model, [n for n in names if n not in inits], feeds)
    except Exception:  # noqa: BLE001 - a graph the probe cannot run: no exclusion, ORT's own result stands
        return []
    # float tensors only: Concats of shape tensors (int64) are not quantized
    amp = {n: max(float(np.abs(v).max()) for v in vs) for n, vs in acts.items()
           if vs and all(np.asarray(v).size and np.asarray(v).dtype.kind == "f" for v in vs)}
    for i in model.graph.initializer:
        if i.name in names:
            a = onnx.numpy_helper.to_array(i)
            if a.size and a.dtype.kind == "f":
                amp[i.name] = float(np.abs(a).max())
    found = []
    for n in concats:
        values = [amp[i] for i in n.input if i in amp]
        if len(values) < 2:
            continue
        big, small = max(values), min(values)
        if small > 0 and big / small > ratio:
            found.append((n.name, big / small))
    return sorted(found, key=lambda t: -t[1])


def fixed_batch_of(model: onnx.ModelProto) -> int | None:
    """The batch a graph's inputs fix (:func:`deepshrink.core.shapes.fixed_batch`), or None when free."""
    from ...backends.onnx import io_specs
    from ...core.shapes import fixed_batch

    return fixed_batch(io_specs(model)[0])


def collect_tensors(model: onnx.ModelProto, names: Sequence[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """Run the float model and return the values of intermediate tensors ``names`` per feed
    (:func:`deepshrink.backends.onnx.intermediate_values`)."""
    from ...backends.onnx import intermediate_values

    return intermediate_values(model, names, feeds)


# ---------------------------------------------------------------------------------------------
# weight-only (MatMulNBits)


def check_group_size(model: onnx.ModelProto, nodes: Sequence[str], group_size: int) -> None:
    by_name = {w.name: w for w in weight_nodes(model, ("MatMul",))}
    dims = {int(by_name[n].shape[0]) for n in nodes}
    for name in nodes:
        w = by_name[name]
        if w.shape[0] % group_size:
            fits = [g for g in MATMUL_NBITS_GROUP_SIZES if all(d % g == 0 for d in dims)]
            hint = (f"group sizes that fit every selected layer: {', '.join(map(str, fits))}" if fits else
                    f"no MatMulNBits group size ({', '.join(map(str, MATMUL_NBITS_GROUP_SIZES))}) divides every "
                    "selected layer's input")
            raise InputError(f"group size {group_size} does not divide the input dimension {w.shape[0]} of layer "
                             f"{name!r} (weight {list(w.shape)}); {hint}, or --exclude the layer")


def quantize_weight_only_rtn(model: onnx.ModelProto, nodes: Sequence[str], *, bits: int, group_size: int,
                             symmetric: bool) -> onnx.ModelProto:
    """ORT ``MatMulNBitsQuantizer`` round-to-nearest on ``nodes`` (MatMul with a 2-D constant weight)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    if bits not in (2, 4, 8):
        raise UnsupportedError(f"ONNX Runtime's MatMulNBits stores 2, 4 or 8 bits, not {bits}")
    check_group_size(model, nodes, group_size)
    all_mm = [w.name for w in weight_nodes(model, ("MatMul",))]
    cfg = DefaultWeightOnlyQuantConfig(block_size=group_size, is_symmetric=symmetric, bits=bits,
                                       op_types_to_quantize=("MatMul",))
    work = onnx.ModelProto()
    work.CopyFrom(model)  # the quantizer rewrites the model it is given: the caller's float model stays intact
    q = MatMulNBitsQuantizer(work, bits=bits, block_size=group_size, is_symmetric=symmetric,
                             nodes_to_exclude=[n for n in all_mm if n not in set(nodes)], algo_config=cfg)
    logging.disable(logging.INFO)  # one INFO line per node otherwise
    try:
        q.process()
    except (DeepshrinkError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        raise ort_quantizer_error(exc, model, "weight-only quantizer") from exc
    finally:
        logging.disable(logging.NOTSET)
    out = q.model.model
    ensure_node_names(out)
    return out


def pack_matmul_nbits(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, bits: int,
                      group_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ONNX Runtime's ``MatMulNBits`` layout from codes in the ``nn.Linear`` orientation.

    ``q``: (N, K) integers in [0, 2**bits); ``scales``/``zeros``: (N, K // group_size) (``zeros``
    None: symmetric, ORT's default zero point 2**(bits-1)). Returns packed codes
    (N, K/g, g·bits/8) uint8 (first code in the low bits of each byte), scales (N, K/g) float32
    and packed zero points (N, ⌈(K/g)·bits/8⌉) uint8 or None: the arrays
    ``MatMulNBitsQuantizer`` writes (com.microsoft ``MatMulNBits`` contrib-op spec)."""
    n, k = q.shape
    blocks = k // group_size
    qt = q.reshape(n, blocks, group_size).astype(np.uint8)
    per_byte = 8 // bits
    packed = np.zeros((n, blocks, group_size // per_byte), np.uint8)
    for j in range(per_byte):
        packed |= (qt[:, :, j::per_byte] << (bits * j)).astype(np.uint8)
    zpack = None
    if zeros is not None:
        zt = zeros.astype(np.uint8)  # (N, blocks)
        zpack = np.zeros((n, (blocks * bits + 7) // 8), np.uint8)
        for b in range(blocks):
            zpack[:, (b * bits) // 8] |= (zt[:, b] << ((b * bits) % 8)).astype(np.uint8)
    return packed, np.ascontiguousarray(scales, dtype=np.float32), zpack


def write_matmul_nbits(model: onnx.ModelProto, node_name: str, q: np.ndarray, scales: np.ndarray,
                       zeros: np.ndarray | None, bits: int, group_size: int) -> None:
    """Replace MatMul ``node_name`` by ``MatMulNBits`` from given integer codes.

    ``q``: (K, N) integers in [0, 2**bits); ``scales``/``zeros``: (K // group_size, N);
    the weight is ``(q - zero) * scale``. Codes are packed into ORT's (N, K/g, g*bits/8) layout.
    """
    if bits not in (2, 4, 8):
        raise UnsupportedError(f"ONNX Runtime's MatMulNBits stores 2, 4 or 8 bits, not {bits}")
    g = model.graph
    idx = next(i for i, n in enumerate(g.node) if n.name == node_name)
    node = g.node[idx]
    k, n = q.shape
    packed, _, zpack = pack_matmul_nbits(q.T, scales.T, None if zeros is None else zeros.T, bits, group_size)
    base = node.input[1]
    new_inputs = [node.input[0], base + "_nbits_q", base + "_nbits_scales"]
    g.initializer.extend([numpy_helper.from_array(packed, base + "_nbits_q"),
                          numpy_helper.from_array(scales.T.reshape(-1).astype(np.float32), base + "_nbits_scales")])
    if zpack is not None:
        g.initializer.append(numpy_helper.from_array(zpack.reshape(-1), base + "_nbits_zeros"))
        new_inputs.append(base + "_nbits_zeros")
    new = helper.make_node("MatMulNBits", new_inputs, list(node.output), name=node.name, domain="com.microsoft",
                           K=k, N=n, bits=bits, block_size=group_size)
    g.node.remove(node)
    g.node.insert(idx, new)
    drop_unused_initializers(model)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))




# ---------------------------------------------------------------------------------------------
# codebooks (k-means, log2)


def write_codebook(model: onnx.ModelProto, weight: str, codebook: np.ndarray, indices: np.ndarray,
                   axis: int | None = None) -> None:
    """Replace initializer ``weight`` by ``Gather(codebook, Cast(indices))``.

    ``codebook``: (K,) shared, or (C, K) one table per slice along ``axis`` of the weight;
    ``indices``: uint8, the weight's shape.
    """
    g = model.graph
    inits = initializer_map(model)
    if weight not in inits:
        raise InputError(f"initializer {weight!r} not found")
    shape = tuple(inits[weight].dims)
    if indices.shape != shape or indices.dtype != np.uint8:
        raise InputError(f"indices for {weight!r} must be uint8 of shape {shape}, got {indices.dtype} {indices.shape}")
    codebook = np.asarray(codebook, np.float32)
    g.initializer.remove(inits[weight])
    g.initializer.append(numpy_helper.from_array(indices, weight + "_cb_idx"))
    cast_out = weight + "_cb_idx_i32"
    nodes = [helper.make_node("Cast", [weight + "_cb_idx"], [cast_out], to=onnx.TensorProto.INT32,
                              name=weight + "_cb_cast")]
    if codebook.ndim == 2:
        if axis is None:
            raise InputError("a per-channel codebook needs its axis")
        k = codebook.shape[1]
        off_shape = [1] * len(shape)
        off_shape[axis] = shape[axis]
        offsets = (np.arange(shape[axis], dtype=np.int32) * k).reshape(off_shape)
        g.initializer.append(numpy_helper.from_array(offsets, weight + "_cb_off"))
        nodes.append(helper.make_node("Add", [cast_out, weight + "_cb_off"], [cast_out + "_off"], name=weight + "_cb_add"))
        cast_out += "_off"
    g.initializer.append(numpy_helper.from_array(codebook.reshape(-1), weight + "_cb"))
    nodes.append(helper.make_node("Gather", [weight + "_cb", cast_out], [weight], axis=0, name=weight + "_cb_gather"))
    for i, n in enumerate(nodes):
        g.node.insert(i, n)


def _forget_shape(model: onnx.ModelProto, name: str) -> None:
    """Drop recorded shapes of a tensor whose layout we changed (shape inference redoes them)."""
    g = model.graph
    for coll in (g.value_info, g.input):
        for v in [v for v in coll if v.name == name]:
            coll.remove(v)


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite ``Gemm(x, W, b)`` with a constant weight as ``MatMul`` (same name) + ``Add``.

    ORT's dynamic and weight-only passes only handle ``MatMul``; exporters write
    ``nn.Linear`` as ``Gemm`` with ``transB=1``. Returns the number of nodes rewritten.
    """
    g = model.graph
    inits = initializer_map(model)
    uses = collections.Counter(i for n in g.node for i in n.input)
    done = 0
    for idx in range(len(g.node) - 1, -1, -1):
        n = g.node[idx]
        if n.op_type != "Gemm" or n.input[1] not in inits or uses[n.input[1]] != 1:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            continue
        if attrs.get("transB", 0):
            w = numpy_helper.to_array(inits[n.input[1]])
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w.T), n.input[1]))
            _forget_shape(model, n.input[1])
        has_bias = len(n.input) > 2 and bool(n.input[2])
        mm_out = n.output[0] + "_matmul" if has_bias else n.output[0]
        new = [helper.make_node("MatMul", [n.input[0], n.input[1]], [mm_out], name=n.name)]
        if has_bias:
            new.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=n.name + "_bias"))
        g.node.remove(n)
        for j, m in enumerate(new):
            g.node.insert(idx + j, m)
        done += 1
    return done


def no_candidates_message(model: onnx.ModelProto, op_types: Sequence[str], scheme: str) -> str:
    """Why a scheme found nothing to quantize, and which scheme would (one line)."""
    ops = {n.op_type for n in model.graph.node}
    already = sorted(ops & set(INTEGER_OPS))
    if already:  # ddddocr's OCR model (ConvInteger, DynamicQuantizeLSTM, MatMulInteger): nothing float left to take
        return (f"{scheme} found no layer to quantize: the model is already quantized ({', '.join(already[:4])}"
                f"{', …' if len(already) > 4 else ''}); quantize its float original instead")
    consts = {n.output[0] for n in model.graph.node if n.op_type == "Constant" and n.output}
    uses_consts = any(i in consts for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv") for i in n.input)
    producers = {o: n for n in model.graph.node for o in n.output}
    casts = sorted({producers[n.input[1]].name for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")
                    and len(n.input) > 1 and n.input[1] in producers and producers[n.input[1]].op_type == "Cast"})
    if casts:
        return (f"{scheme} found no layer to quantize: the weights come through Cast nodes ({', '.join(casts[:3])}) "
                "whose input is not a stored constant, so no quantizer sees a constant weight")
    computed = _computed_weights(model, producers)
    if computed:
        return (f"{scheme} found no layer to quantize: the weights are computed by the graph "
                f"({', '.join(computed[:3])}), not stored; run `deepshrink optimize IN.onnx -o FOLDED.onnx` "
                "first to fold them into stored weights, then quantize FOLDED.onnx")
    if uses_consts:
        return (f"{scheme} found no layer to quantize: this graph's weights are Constant nodes, not initializers "
                "(Paddle2ONNX / TF exports); deepshrink quantizes initializer weights only for now")
    if "Conv" in ops and not ops & set(op_types):
        return (f"{scheme} quantizes weights of {', '.join(op_types)}, and this model computes with Conv: use "
                "--scheme int8-static with --data (recipe int8-static) for convolutions")
    return f"{scheme} found no layer to quantize: no {', '.join(op_types)} with a constant weight in this graph"


def _computed_weights(model: onnx.ModelProto, producers: dict[str, Any]) -> list[str]:
    """Op types (with a node name) of nodes other than ``Constant`` that compute a MatMul/Gemm/Conv
    weight from constants alone (``ConstantOfShape``, ``Add`` of two constants, ...): a constant-folding
    pass (``deepshrink optimize``) turns them into the stored weights the quantizers need."""
    const = {i.name for i in model.graph.initializer}
    for n in model.graph.node:  # topological order: a node is constant when all its inputs are
        if n.op_type == "Constant" or (n.input and all(not i or i in const for i in n.input)
                                       and n.op_type not in ("RandomNormal", "RandomUniform")):
            const.update(o for o in n.output if o)
    found = []
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm", "Conv") and len(n.input) > 1:
            src = producers.get(n.input[1])
            if src is not None and src.op_type not in ("Constant", "Cast") and n.input[1] in const:
                label = f"{src.op_type} {src.name}" if src.name else src.op_type
                if label not in found:
                    found.append(label)
    return found
