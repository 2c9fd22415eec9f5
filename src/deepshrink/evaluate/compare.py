"""``compare(before, after, data)``: the one before/after measurement every command prints.

The written model is measured where it will run, and the original beside it in the same
runtime, so the ratios compare like with like: an ONNX output is timed in ONNX Runtime against
the original written as ONNX (a PyTorch original is exported to a temporary file first); a
PyTorch output (``.pt2``, ``.safetensors``) is timed in PyTorch against the original module.
Sizes are the files' bytes on disk (an original held only in memory counts its serialized
form). Accuracy or fidelity come from ``data`` (labels: accuracy; none: output cosine), as
:func:`deepshrink.evaluate.bench.bench` computes them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from ..core.handle import ModelHandle


def compare(before: ModelHandle, after: ModelHandle | str | Path, *, data: Any = None, repeats: int = 30,
            warmup: int = 5, threads: int = 2, names: tuple[str, str] | None = None, progress: bool = False,
            export_before: Any = None) -> Any:
    """Bench ``before`` (the original, a handle) and ``after`` (the written model: its path, or a
    handle whose ``path`` is the file) side by side; returns :class:`~deepshrink.evaluate.bench.BenchTable`.

    ``data``: what :func:`~deepshrink.evaluate.bench.bench` accepts (None: random inputs, no
    accuracy). ``export_before``: ``fn(handle, path) -> handle`` writing a PyTorch original as ONNX
    when ``after`` is ONNX (default: ``deepshrink.convert.writers.save``). Raises what ``bench``
    raises (``InputError`` for data that does not fit)."""
    from .bench import bench

    names = names or (before.source or "original", str(getattr(after, "path", None) or after))
    after_kind = after.kind if isinstance(after, ModelHandle) else ("onnx" if str(after).lower().endswith(".onnx")
                                                                    else "file")
    kw = {"data": data, "repeats": repeats, "warmup": warmup, "threads": threads, "names": list(names),
          "progress": progress}
    if after_kind == "onnx" and before.kind == "onnx" and before.path is not None:
        return bench([before, after], **kw)
    if after_kind == "onnx":
        with tempfile.TemporaryDirectory(prefix="deepshrink.compare.") as tmp:
            path = Path(tmp) / "original.onnx"
            if before.kind == "onnx":
                from ..backends.onnx import save_onnx

                save_onnx(before.model, path)
                ref = before.with_model(before.model, path=path)
            else:
                if export_before is None:
                    from ..convert.writers import save as export_before
                ref = export_before(before, path)
            kw["names"] = [names[0] if names[0].endswith("(onnx)") else f"{names[0]} (onnx)", names[1]]
            return bench([ref, after], **kw)
    if isinstance(after, ModelHandle) and isinstance(after.model, torch.fx.GraphModule):
        # a reloaded .pt2 is a GraphModule, which has a ``.graph`` as ONNX models do: time it behind
        # a plain module so the size and runtime are read as PyTorch's
        after = after.with_model(_Plain(after.model))
    return bench([before, after], **kw)


class _Plain(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any) -> Any:
        return self.inner(*args)
