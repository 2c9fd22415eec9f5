"""What the ONNX quantization handlers take and give: the prepared float model and the outcome.

Shared by ``api.py`` (the verb and the int8/codebook handlers) and ``qat_export.py`` (the QAT
deployment path), so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..core.handle import ModelHandle
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
    """How many weight tensors ``model`` stores in 8 bits or fewer: initializers of an integer
    type of at most 8 bits with two or more dimensions (QDQ and QOperator weights, MatMulNBits
    blocks, integer LSTM weights; scales and zero points are scalars or vectors). A tensor shared by
    several nodes counts once."""
    return sum(1 for t in model.graph.initializer if t.data_type in LOW_BIT_TYPES and len(t.dims) >= 2)


def result(prep: Prepared, model: onnx.ModelProto, report: dict[str, Any]) -> QuantizeOutcome:
    """Wrap a quantized ``model`` in a handle that keeps the source's examples, tokenizer and metadata.

    A report's ``quantized_layers`` from an integer scheme is the count of weights the written
    graph holds in low-bit form (:func:`stored_low_bit_weights`), not the number of candidate
    nodes: ONNX Runtime quantizes some ops the candidates miss (ConvTranspose) and skips others."""
    from ..backends.onnx import io_specs

    stored = stored_low_bit_weights(model)
    if stored and "quantized_layers" in report:
        report["quantized_layers"] = stored

    ins, outs = io_specs(model)
    meta = dict(prep.handle.metadata)
    h = ModelHandle(model, "onnx", ins, outs, example_inputs=prep.handle.example_inputs, source=prep.handle.source,
                    path=None, tokenizer_dir=prep.handle.tokenizer_dir, metadata=meta)
    return QuantizeOutcome(h, report)
