"""Sizes: bytes on disk (with every side file the model needs), parameters, non-zeros."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def model_files(path: str | os.PathLike[str]) -> list[Path]:
    """The file and its side files: ONNX external data, OpenVINO's ``.bin``, a folder's files."""
    p = Path(path)
    if p.is_dir():
        return [f for f in p.rglob("*") if f.is_file()]
    files = [p]
    if p.suffix == ".onnx":
        from ..backends.onnx import external_files

        files += [f for f in external_files(p) if f.is_file()]
    else:
        from ..core.formats import files_of

        files += files_of(p)
    return files


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a model, external data included (a tokenizer is not counted)."""
    return sum(f.stat().st_size for f in model_files(path))


def _is_onnx(model: Any) -> bool:
    import onnx

    return isinstance(model, onnx.ModelProto)  # not hasattr(.graph): torch.fx.GraphModule has one too


def _tensors(model: Any) -> list[np.ndarray]:
    if _is_onnx(model):
        from onnx import numpy_helper

        return [numpy_helper.to_array(t) for t in _initializers(model.graph)]
    return [p.detach().cpu().float().numpy() for p in model.parameters()]


def _initializers(graph: Any) -> list[Any]:
    """Initializers of ``graph`` and of every subgraph (``If`` branches, ``Loop``/``Scan`` bodies)."""
    import onnx

    out = list(graph.initializer)
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out += _initializers(a.g)
            for g in a.graphs:
                out += _initializers(g)
    return out


def param_count(model: Any) -> int:
    """Parameters of a torch module, or initializer elements of an ONNX model, subgraphs included (handles accepted)."""
    model = getattr(model, "model", model)
    return int(sum(t.size for t in _tensors(model)))


def counted_tensors(handle: Any) -> list[np.ndarray]:
    """The tensors a handle's reported counts cover: an ONNX file's initializers; for a PyTorch model the
    parameters its output depends on (a sentence encoder's unused BERT pooler is not counted, as its ONNX export
    drops it and ``prune``/``distill`` summaries leave it out), every parameter when that cannot be measured (no
    example inputs, a model too large to probe, a probe that fails)."""
    if handle.kind == "torch" and handle.example_inputs is not None:
        import torch

        from ..backends.torch import counted_parameter_list

        try:
            probe = tuple(torch.as_tensor(np.asarray(handle.example_inputs[n])) for n in handle.input_names)
        except (KeyError, TypeError, ValueError):
            probe = None
        used = counted_parameter_list(handle.model, probe)
        if used is not None:
            return [p.detach().cpu().float().numpy() for p in used]
    return _tensors(handle.model)


def counted_param_count(handle: Any) -> int:
    """A handle's parameter count for reports (``bench``, ``info``): the elements of the tensors :func:`counted_tensors`
    names."""
    return int(sum(t.size for t in counted_tensors(handle)))


def nonzero_count(model: Any) -> int:
    model = getattr(model, "model", model)
    return int(sum(np.count_nonzero(t) for t in _tensors(model)))


def weight_bytes(model: Any) -> int:
    """Bytes held by weights: ONNX initializers at their stored dtype, torch params/buffers."""
    model = getattr(model, "model", model)
    if _is_onnx(model):
        return int(sum(t.nbytes for t in _tensors(model)))
    return int(sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())))
