"""ONNX → PyTorch: import an ONNX graph as a runnable, trainable ``torch.fx.GraphModule``.

``onnx_to_torch(model_or_path)`` returns the module; ``SUPPORTED_OPS`` lists the ONNX op
types with a converter. See ``importer.py`` for why this is written here rather than taken
from the ``onnx2torch`` package.
"""

from __future__ import annotations

from . import ops as _ops  # noqa: F401  (registers the converters)
from .importer import CONVERTERS, converter, onnx_to_torch, unsupported_message

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(CONVERTERS))

from . import route as _route  # noqa: E402,F401  (registers the onnx → torch route)

__all__ = ["SUPPORTED_OPS", "converter", "onnx_to_torch", "unsupported_message"]
