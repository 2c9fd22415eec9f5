"""What the ONNX quantization handlers take and give: the prepared float model and the outcome.

Shared by ``api.py`` (the verb and the int8/codebook handlers) and ``qat_export.py`` (the QAT
deployment path), so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ...core.handle import ModelHandle
from .normalize import Normalized
from .tied import Tie


@dataclass
class QuantizeOutcome:
    """The quantized model and what was done to it (plain data, JSON-ready)."""

    handle: ModelHandle
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """The float ONNX model to quantize, its handle, and the calibration arrays (or None)."""

    handle: ModelHandle
    model: onnx.ModelProto
    data: dict[str, np.ndarray] | None
    labels: np.ndarray | None = None
    fused: dict[str, int] = field(default_factory=dict)
    opset_from: int | None = None  # the model's opset when prepare() had to raise it to 13
    normalized: Normalized | None = None  # what prepare() rewrote for ONNX Runtime's quantizers
    ties: list[Tie] = field(default_factory=list)  # tied embedding/projection weights, untied by prepare()


LOW_BIT_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4)


def stored_low_bit_weights(model: onnx.ModelProto) -> int:
    """How many layers compute with a weight ``model`` stores in 8 bits or fewer: the nodes that read
    an initializer of an integer type of at most 8 bits with two or more dimensions (QOperator
    weights, MatMulNBits blocks, integer LSTM weights), directly or through a
    ``DequantizeLinear`` (QDQ). Scales and zero points are scalars or vectors and do not count; a
    layer reading two such weights (an LSTM's W and R) counts once, a weight shared by two layers
    (tied embedding and head) counts for each."""
    low = {t.name for t in model.graph.initializer if t.data_type in LOW_BIT_TYPES and len(t.dims) >= 2}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    layers: set[int] = set()
    for name in low:
        for n in readers.get(name, []):
            if n.op_type == "DequantizeLinear":
                layers.update(id(m) for m in readers.get(n.output[0], []))
            else:
                layers.add(id(n))
    return len(layers)


def result(prep: Prepared, model: onnx.ModelProto, report: dict[str, Any]) -> QuantizeOutcome:
    """Wrap a quantized ``model`` in a handle that keeps the source's examples, tokenizer and metadata.

    A report's ``quantized_layers`` from an integer scheme is the count of weights the written
    graph holds in low-bit form (:func:`stored_low_bit_weights`), not the number of candidate
    nodes: ONNX Runtime quantizes some ops the candidates miss (ConvTranspose) and skips others."""
    from ...backends.onnx import io_specs

    stored = stored_low_bit_weights(model)
    if stored and "quantized_layers" in report:
        report["quantized_layers"] = stored

    ins, outs = io_specs(model)
    meta = dict(prep.handle.metadata)
    h = ModelHandle(model, "onnx", ins, outs, example_inputs=prep.handle.example_inputs, source=prep.handle.source,
                    path=None, tokenizer_dir=prep.handle.tokenizer_dir, metadata=meta)
    return QuantizeOutcome(h, report)


def describe(rep: dict[str, Any]) -> str:
    """One line of what a quantization did, from its report (``QuantizeOutcome.report``)."""
    parts = []
    if "fused" in rep:
        parts.append("fused " + ", ".join(f"{v} {k}" for k, v in rep["fused"].items()))
    computed = (rep.get("auto") or {}).get("quantized_layers")
    if "quantized_layers" in rep and computed is not None and computed != rep["quantized_layers"]:
        # auto may store a float-computed layer's weights in int8: say both counts, not one against the other
        parts.append(f"{rep['quantized_layers']} layers' weights in int8, {computed} of them computed in int8")
    elif "quantized_layers" in rep:
        kept = rep.get("kept_float") or rep.get("kept") or []
        parts.append(f"{rep['quantized_layers']} layers quantized" + (f", {len(kept)} kept in float" if kept else ""))
    if rep.get("float_concat"):
        fc = rep["float_concat"]
        parts.append(f"{len(fc)} Concat kept float (inputs {fc[0]['ratio']:g}× apart in range"
                     + (f": {fc[0]['node']}" if len(fc) == 1 else f", largest at {fc[0]['node']}") + ")")
    if "smooth" in rep:
        parts.append(f"smoothing alpha {rep['smooth']['alpha']} ({rep['smooth']['mul_nodes']} Mul nodes)")
    if "weight_bits" in rep:
        parts.append(f"W{rep['weight_bits']}A{rep['act_bits']} on {len(rep.get('layers', []))} layers"
                     + (", bias-corrected" if "bias_correction" in rep else ""))
    tied = rep.get("tied_weights") or {}
    if tied.get("shared") or tied.get("two_copies"):
        parts.append(f"tied weights: {len(tied.get('shared', []))} quantized once and shared, "
                     f"{len(tied.get('two_copies', []))} stored twice")
    if "groups" in rep:
        parts.append("; ".join(f"{g['scheme']}: {len(g['layers'])} layers" for g in rep["groups"]))
    return ", ".join(parts) or "quantized"


def verb_report(scheme: str, outcome: QuantizeOutcome) -> Any:
    """The :class:`~deepshrink.core.result.VerbReport` of a quantization: ``details`` is the outcome's
    report (JSON-ready); ``layers`` are read from the quantized graph on first access (bits and
    sparsity per weighted layer, :func:`deepshrink.report.inspect.layer_table`)."""
    import json

    from ...core.result import VerbReport

    rep = json.loads(json.dumps(outcome.report, default=str))
    model = outcome.handle.model

    def layers() -> list[dict[str, Any]]:
        if not isinstance(model, onnx.ModelProto):
            return []
        from ...report.inspect import layer_table

        return layer_table(model)

    warnings = [rep["conv_integer"]] if rep.get("conv_integer") else []
    fw = rep.get("float_weights") or {}
    measurements = {k: rep[k] for k in ("quantized_layers",) if k in rep}
    if fw:
        measurements["float_weight_share"] = fw.get("share", 0.0)
    return VerbReport("quantize", scheme, describe(rep), config=rep.get("config") or {}, layers=layers,
                      measurements=measurements, warnings=warnings, details=rep)
