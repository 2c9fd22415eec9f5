"""Writing a model: the format follows the extension (``.onnx``, ``.pt2``, ``.safetensors``).

Lives in ``convert`` because writing a PyTorch model as ONNX or ``.pt2`` is an export; reading
(``deepshrink.loading``) needs no exporter, so the two no longer import each other.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import formats
from ..core.handle import ModelHandle
from ..core.result import Result
from ..errors import InputError, UnsupportedError
from ..loading import load


def save(handle: ModelHandle | nn.Module | Result, path: str | os.PathLike[str], *, force: bool = False,
         source_path: str | os.PathLike[str] | None = None, **export_options: Any) -> ModelHandle:
    """Write a model (a handle, an ``nn.Module`` or a verb's :class:`Result`) atomically; the format
    follows the extension (``.onnx``, ``.pt2``, ``.safetensors``: :mod:`deepshrink.core.formats`).
    Returns the handle of what was written. Raises ``InputError`` (existing output without
    ``force``, unknown extension), ``UnsupportedError`` (an ONNX model as a torch format)."""
    if isinstance(handle, Result):
        handle = handle.model
    if isinstance(handle, nn.Module):
        handle = load(handle)
    fmt = formats.require(path, ("onnx", "pt2", "safetensors"))
    return _write(handle, path, fmt.name, force=force, source_path=source_path, **export_options)


def _write(handle: ModelHandle, path: str | os.PathLike[str], fmt: str, *, force: bool = False,
           source_path: str | os.PathLike[str] | None = None, **export_options: Any) -> ModelHandle:
    from ..core.fileio import atomic_path, check_output

    out = check_output(path, inputs=(source_path or handle.path,), force=force)
    if fmt == "onnx":
        if handle.kind == "onnx":
            from ..backends.onnx import save_onnx

            save_onnx(handle.model, out)
            return load(out)
        from .export import export_onnx

        return export_onnx(handle, None, out, force=True, **export_options)
    if handle.kind != "torch":
        raise UnsupportedError(f"cannot write an ONNX model as {out.suffix}; convert it to PyTorch first")
    if fmt == "pt2":
        from .export import torch_export

        ep = torch_export(handle)
        with atomic_path(out) as tmp, tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as d:
            # saved under the final file name in a private folder, then moved: torch.export.save names the
            # archive's entries after the file, so a temporary name would make two runs' bytes differ
            staged = Path(d) / out.name
            try:
                torch.export.save(ep, str(staged), extra_files=pt2_extra_files(handle))
            except RuntimeError as exc:  # torch's packager: one line, not a traceback; nothing written
                from ..errors import first_line

                raise UnsupportedError(f"torch.export.save could not write the program: {first_line(exc, 200)}") from exc
            staged.replace(tmp)
        if handle.tokenizer_dir is not None:  # as beside an .onnx: text data keeps working on the written model
            from .export import copy_tokenizer

            copy_tokenizer(Path(handle.tokenizer_dir), out.parent / (out.name + ".tokenizer"))
        return load(out)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        from ..backends.pruned_modules import weights_header

        state = {k: v.detach().contiguous() for k, v in handle.model.state_dict().items()}
        with atomic_path(out) as tmp:
            save_file(state, str(tmp), metadata=weights_header(handle.model))
        return handle
    raise InputError(f"output {out}: deepshrink does not write {fmt} here")


def _writer(fmt: str) -> Any:
    def write(handle: ModelHandle, path: str | os.PathLike[str], **options: Any) -> ModelHandle:
        return _write(handle, path, fmt, **options)

    return write


for _name in ("onnx", "pt2", "safetensors"):
    formats.register_writer(_name, _writer(_name))


def pt2_extra_files(handle: ModelHandle) -> dict[str, str]:
    """What a ``.pt2`` written by deepshrink carries beside the program (``torch.export.save``'s ``extra_files``):
    the model's output names under :data:`deepshrink.core.formats.PT2_OUTPUT_NAMES`, read back by the loader."""
    import json

    names = handle.output_names
    return {formats.PT2_OUTPUT_NAMES: json.dumps(names)} if names else {}
