"""Writing a model: the format follows the extension (``.onnx``, ``.pt2``, ``.safetensors``).

Lives in ``convert`` because writing a PyTorch model as ONNX or ``.pt2`` is an export; reading
(``deepshrink.loading``) needs no exporter, so the two no longer import each other.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..core.handle import ModelHandle
from ..errors import InputError, UnsupportedError
from ..loading import load


def save(handle: ModelHandle | nn.Module, path: str | os.PathLike[str], *, force: bool = False,
         source_path: str | os.PathLike[str] | None = None, **export_options: Any) -> ModelHandle:
    """Write a model; the format follows the extension (``.onnx``, ``.pt2``, ``.safetensors``)."""
    from ..core.fileio import atomic_path, check_output

    if isinstance(handle, nn.Module):
        handle = load(handle)
    out = check_output(path, inputs=(source_path or handle.path,), force=force)
    suffix = out.suffix.lower()
    if suffix == ".onnx":
        if handle.kind == "onnx":
            from ..backends.onnx import save_onnx

            save_onnx(handle.model, out)
            return load(out)
        from .export import export_onnx

        return export_onnx(handle, None, out, force=True, **export_options)
    if handle.kind != "torch":
        raise UnsupportedError(f"cannot write an ONNX model as {suffix}; convert it to PyTorch first")
    if suffix == ".pt2":
        from .export import torch_export

        ep = torch_export(handle)
        with atomic_path(out) as tmp:
            try:
                torch.export.save(ep, str(tmp.with_suffix(".pt2")))
            except RuntimeError as exc:  # torch's packager: one line, not a traceback; nothing written
                from ..errors import first_line

                tmp.with_suffix(".pt2").unlink(missing_ok=True)
                raise UnsupportedError(f"torch.export.save could not write the program: {first_line(exc, 200)}") from exc
            tmp.with_suffix(".pt2").replace(tmp)
        return load(out)
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in handle.model.state_dict().items()}
        with atomic_path(out) as tmp:
            save_file(state, str(tmp))
        return handle
    raise InputError(f"output {out}: unknown format {suffix!r}; use .onnx, .pt2 or .safetensors")
