"""SmoothQuant-style scale migration on ONNX graphs, folded where the graph allows it.

Per-tensor int8 activations lose most of their precision to a few outlier channels
(MiniLM after LayerNorm and GELU). For a layer ``y = x @ W`` we pick per-input-channel
scales ``s = max|x|^α / max|W_row|^(1-α)`` from calibration data and compute
``y = (x / s) @ (diag(s) W)`` — the same function, flatter activations.

Where ``1/s`` goes (in order of preference), for all layers that read the same tensor:

- folded into a producing ``LayerNormalization``/``SkipLayerNormalization``/
  ``EmbedLayerNormalization`` (γ, β) when every reader of that tensor is smoothed;
- folded into the V columns (weight and bias) of a producing fused ``Attention``
  (the context is linear in V) or into the columns of a producing ``MatMul``/``Gemm``
  (+ bias ``Add``);
- otherwise an explicit ``Mul`` on the edge into the smoothed layers only (post-LN BERT:
  a LayerNorm output is also the residual, so it cannot be rescaled in place).

No library does this on an arbitrary ONNX graph: ORT's ``SmoothQuant`` option needs Intel
Neural Compressor and always inserts ``Mul`` nodes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .backend import collect_tensors, initializer_map, split_feeds

LN_TYPES = {"LayerNormalization": (1, 2), "SkipLayerNormalization": (2, 3), "EmbedLayerNormalization": (5, 6)}


@dataclass
class SmoothReport:
    alpha: float
    folded: dict[str, str] = field(default_factory=dict)  # tensor -> where 1/s went
    muls: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"alpha": self.alpha, "folded": dict(self.folded), "mul_nodes": self.muls}


def _targets(model: onnx.ModelProto, nodes: Sequence[str] | None) -> dict[str, list[onnx.NodeProto]]:
    """Smoothable layers grouped by the activation tensor they read."""
    inits = initializer_map(model)
    chosen = set(nodes) if nodes is not None else None
    groups: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        if chosen is not None and n.name not in chosen:
            continue
        if n.op_type in ("MatMul", "Attention") and len(n.input) > 1 and n.input[1] in inits:
            if len(inits[n.input[1]].dims) == 2:
                groups[n.input[0]].append(n)
        elif n.op_type == "Gemm" and n.input[1] in inits:
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if not attrs.get("transA", 0) and not attrs.get("transB", 0):
                groups[n.input[0]].append(n)
    return groups


def activation_absmax(model: onnx.ModelProto, tensors: Sequence[str], calibration: dict[str, np.ndarray],
                      *, batch: int = 8, mask_input: str | None = None) -> dict[str, np.ndarray]:
    """Per-channel max |x| over calibration data (last axis = channels).

    Padded token positions are included by default: dynamic int8 takes one range per batch,
    so in a padded batch their outliers set the range too (MiniLM, batch 32: cosine 0.9943
    with them masked out, 0.9975 with them included; batch 1 unchanged). ``mask_input``
    names a mask input to ignore them instead.
    """
    feeds = split_feeds(calibration, batch)
    values = collect_tensors(model, list(tensors), feeds)
    out: dict[str, np.ndarray] = {}
    for t in tensors:
        acc = None
        for f, v in zip(feeds, values[t], strict=True):
            v = np.abs(np.asarray(v, np.float32))
            mask = f.get(mask_input) if mask_input else None
            if mask is not None and v.ndim == 3 and v.shape[:2] == mask.shape:
                v = v[mask.astype(bool)]
            m = v.reshape(-1, v.shape[-1]).max(0)
            acc = m if acc is None else np.maximum(acc, m)
        out[t] = acc
    return out


def outlier_ratio(absmax: np.ndarray) -> float:
    """Largest channel range over the median one: how far a few channels stick out."""
    med = float(np.median(absmax))
    return float("inf") if med <= 0 else float(np.max(absmax)) / med


def smooth_model(model: onnx.ModelProto, calibration: dict[str, np.ndarray], *, alpha: float = 0.7,
                 nodes: Sequence[str] | None = None, absmax: dict[str, np.ndarray] | None = None,
                 min_outlier_ratio: float = 0.0) -> tuple[onnx.ModelProto, SmoothReport]:
    """Return a smoothed copy of ``model`` (same function in float) and where each scale went.

    Only activation tensors whose :func:`outlier_ratio` reaches ``min_outlier_ratio`` are
    smoothed: a tensor without outlier channels gains little, and each unfoldable one costs a
    ``Mul`` at run time.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    report = SmoothReport(alpha)
    if alpha <= 0:
        return m, report
    g = m.graph
    inits = initializer_map(m)
    groups = _targets(m, nodes)
    if not groups:
        return m, report
    if absmax is None:
        absmax = activation_absmax(model, list(groups), calibration)
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    graph_outputs = {o.name for o in g.output}

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).astype(np.float32)

    def put(name: str, value: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    def shared_once(name: str) -> bool:  # an initializer read by one node only
        return len(consumers[name]) == 1

    inserts: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []
    for tensor, layers in groups.items():
        if tensor not in absmax:
            continue
        if any(not shared_once(n.input[1]) for n in layers):
            continue
        wmax = np.max(np.stack([np.abs(arr(n.input[1])).max(1) for n in layers]), 0)
        amax = absmax[tensor]
        if amax.shape != wmax.shape or outlier_ratio(amax) < min_outlier_ratio:
            continue
        s = (np.maximum(amax, 1e-5) ** alpha) / (np.maximum(wmax, 1e-5) ** (1 - alpha))
        s = np.clip(s, 1e-2, 1e2).astype(np.float32)
        for n in layers:
            put(n.input[1], arr(n.input[1]) * s[:, None])
        readers = consumers[tensor]
        all_smoothed = tensor not in graph_outputs and all(r in layers for r in readers)
        p = producers.get(tensor)
        where = None
        if all_smoothed and p is not None and p.op_type in LN_TYPES and list(p.output).index(tensor) == 0:
            gi, bi = LN_TYPES[p.op_type]
            if len(p.input) > gi and p.input[gi] in inits and shared_once(p.input[gi]):
                put(p.input[gi], arr(p.input[gi]) / s)
                if len(p.input) > bi and p.input[bi] and p.input[bi] in inits and shared_once(p.input[bi]):
                    put(p.input[bi], arr(p.input[bi]) / s)
                    where = f"{p.op_type} {p.name}"
                elif len(p.input) <= bi or not p.input[bi]:
                    where = f"{p.op_type} {p.name}"
                else:  # undo: beta shared, cannot fold
                    put(p.input[gi], arr(p.input[gi]) * s)
        elif all_smoothed and p is not None and p.op_type == "Attention" and p.input[1] in inits \
                and len(p.input) > 2 and p.input[2] in inits and shared_once(p.input[1]) and shared_once(p.input[2]):
            w, b = arr(p.input[1]), arr(p.input[2])
            h = w.shape[1] // 3
            if h == s.shape[0]:
                w[:, 2 * h:] /= s
                b[2 * h:] /= s
                put(p.input[1], w)
                put(p.input[2], b)
                where = f"Attention {p.name} (V)"
        if where is None:
            sname = f"{tensor}_smooth_inv"
            g.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), sname))
            inits[sname] = g.initializer[-1]
            out = f"{tensor}_smoothed"
            mul = helper.make_node("Mul", [tensor, sname], [out], name=f"{tensor}_smooth_mul")
            for n in layers:
                n.input[0] = out
            inserts.append((layers[0], mul))
            report.muls += 1
            where = "Mul"
        report.folded[tensor] = where
    for first, mul in inserts:
        idx = min(i for i, n in enumerate(g.node) if n.input and n.input[0] == mul.output[0])
        g.node.insert(idx, mul)
        del first
    return m, report
