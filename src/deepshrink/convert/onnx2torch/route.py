"""The ``onnx → torch`` conversion route: import the graph, write it as a ``torch.export``
archive (``.pt2``) or its weights (``.safetensors``), and hand back the handle read from
the written file so parity is measured on the artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core.handle import ModelHandle, TensorSpec
from ...errors import UnsupportedError, first_line
from ..routes import ConvertOptions, register_route
from .importer import _ident, onnx_to_torch


def imported_handle(src: ModelHandle, data: Any = None) -> ModelHandle:
    """The ONNX handle's model imported as a torch ``GraphModule``, same IO spec.

    Its example inputs (what ``torch.export`` traces with) come from ``data`` when given, else
    from the ONNX handle; symbolic dims get sizes other than 1 (batch 2, dynamic image H/W the
    model's metadata size or 224, others 7) so the export does not specialize them to 1."""
    gm = onnx_to_torch(src.model)
    ins = [TensorSpec(_ident(s.name, "x"), s.shape, s.dtype) for s in src.inputs]
    if data is not None:
        from ...core.data import load_data

        example = {_ident(k, "x"): v[:2] for k, v in load_data(data, src).inputs.items()}
    elif src.example_inputs is not None:
        example = {_ident(k, "x"): v for k, v in src.example_inputs.items()}
    else:
        from ...core.shapes import assumed_shape

        rng = np.random.default_rng(0)
        example = {}
        for s in src.inputs:
            # dynamic image H/W: the metadata size or 224, large enough for real pooling/padding stacks
            shape, _ = assumed_shape(s, src.metadata, batch=2, default=7)
            dt = np.dtype(s.np_dtype)
            example[_ident(s.name, "x")] = (rng.integers(0, 2, shape).astype(dt) if dt.kind in "iub"
                                            else rng.standard_normal(shape).astype(dt))
    return ModelHandle(gm, "torch", ins, list(src.outputs), example, source=src.source, path=None,
                       tokenizer_dir=src.tokenizer_dir, metadata={**src.metadata, "imported_from": "onnx"})


def trainable_handle(src: ModelHandle, data: Any = None) -> ModelHandle:
    """The ONNX handle as a PyTorch handle the torch-side verbs take (structured pruning, distillation): the
    imported ``GraphModule`` (Conv/Gemm/MatMul with their own weights become ``nn.Conv*``/``nn.Linear``,
    BatchNormalization ``nn.BatchNorm``; its run-time helpers state how channels cross them), the ONNX
    file's own input and output names, and inputs whose batch the file fixes kept at that batch when it is
    exported again. Any other handle is returned as it is (every caller holds a model of either kind).
    Raises :class:`UnsupportedError` naming the node when an op cannot be imported."""
    if src.kind != "onnx":
        return src
    imported = imported_handle(src, data)
    examples = imported.example_inputs or {}
    fixed = {s.name: s.shape[0] for s in src.inputs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    example = {s.name: (examples[_ident(s.name, "x")][:fixed[s.name]] if s.name in fixed
                        else examples[_ident(s.name, "x")]) for s in src.inputs}
    handle = ModelHandle(imported.model, "torch", list(src.inputs), list(src.outputs), example, source=src.source,
                         path=None, tokenizer_dir=src.tokenizer_dir, metadata=dict(imported.metadata))
    if fixed:
        handle.metadata["deepshrink.static_batch"] = ",".join(fixed)
    return handle


@register_route("onnx", "torch")
def onnx_to_pt2(src: ModelHandle, dst: Path, opts: ConvertOptions) -> tuple[Any, Any]:
    from ..writers import save

    imported = imported_handle(src, opts.data)
    why_static: str | None = None
    static_feed: dict[str, Any] = {}
    # the file's own declaration (not --input-shape, which gives sizes to its dynamic dims)
    inits = {t.name for t in src.model.graph.initializer}
    file_batch = {_ident(i.name, "x"): i.type.tensor_type.shape.dim[0].dim_value for i in src.model.graph.input
                  if i.name not in inits and i.type.tensor_type.shape.dim
                  and i.type.tensor_type.shape.dim[0].HasField("dim_value") and i.type.tensor_type.shape.dim[0].dim_value > 0}
    declared = [s for s in imported.inputs if s.name in file_batch]
    if declared:
        # an ONNX file that fixes its batch (every TFLite-born model: 1) runs at that batch only; a program
        # exported with a dynamic batch would accept others and could compute them wrong (BlazeFace's anchor
        # reshape folded a batch of 2 into its anchors), so the batch stays as the file declares it
        imported.metadata["deepshrink.static_batch"] = ",".join(s.name for s in declared)
        if imported.example_inputs is not None:
            imported.example_inputs = {k: (v[:file_batch[k]] if k in file_batch else v)
                                       for k, v in imported.example_inputs.items()}
        why_static = (f"batch dim of {', '.join(s.name for s in declared)} kept static at "
                      f"{', '.join(str(file_batch[s.name]) for s in declared)} as the ONNX file declares it")
    try:
        handle = save(imported, dst, force=True)
    except UnsupportedError as exc:
        # graphs fixed at batch 1 (a Reshape to [1, 9216]) cannot take a dynamic batch: keep the batch the
        # file declares; the reason goes to handle.metadata (the CLI prints it as one warning line)
        fixed = [s for s in imported.inputs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0]
        handle, failure = None, exc
        if fixed:
            imported.metadata["deepshrink.static_batch"] = ",".join(s.name for s in fixed)
            try:
                handle = save(imported, dst, force=True)
                why_static = (f"batch dim of {', '.join(s.name for s in fixed)} kept static at "
                              f"{', '.join(str(s.shape[0]) for s in fixed)} as the ONNX file declares it; with a "
                              f"dynamic batch, {first_line(exc, 200)}")
            except UnsupportedError as exc2:
                failure = exc2
        if handle is None:
            handle, why_static, static_feed = _all_static(src, imported, dst, opts, failure)
    if not static_feed:
        other = _fails_at_other_sizes(src, handle, imported)
        if other:  # a capture that guarded a dynamic dim to the example's size: the file would lie about it
            handle, why_static, static_feed = _all_static(
                src, imported, dst, opts, UnsupportedError(f"the captured program ran only at the example's sizes "
                                                           f"({other})"))
    parity = None
    if why_static:
        handle.metadata["deepshrink.static_dims_reason"] = why_static
    if static_feed:  # a fully static program runs only at its example shapes: parity is checked there
        from ..parity import check_parity

        parity = check_parity(src, handle, inputs=[static_feed])
    try:
        handle.model.eval()
    except NotImplementedError:  # torch.export's loaded module refuses eval(); it is already inference-only
        handle.model = _Frozen(handle.model)
    return handle, parity


def _fails_at_other_sizes(src: ModelHandle, handle: ModelHandle, imported: ModelHandle) -> str | None:
    """Run the written program with every dynamic non-batch dim a little larger than in the example
    (+32 from 64 up, so image sizes stay multiples of 32; else +1). The error line when ONNX Runtime
    runs the source at those sizes but the program does not (torch.export specialised a dim it was
    told was dynamic: it records a guard instead of failing); ``None`` when it runs, or when the
    check cannot be made (no example, no dynamic dim, or the source itself refuses those sizes)."""
    from ...backends.onnx import make_session
    from ..parity import run_model

    examples = imported.example_inputs or {}
    rng = np.random.default_rng(1)
    feed, changed = {}, False
    for spec in src.inputs:
        x = examples.get(_ident(spec.name, "x"))
        if x is None:
            return None
        shape = list(np.shape(x))
        for i, d in enumerate(spec.shape[:len(shape)]):
            if i > 0 and not (isinstance(d, int) and d > 0):
                shape[i] += 32 if shape[i] >= 64 else 1
                changed = True
        x = np.asarray(x)
        feed[spec.name] = (np.resize(x, shape) if x.dtype.kind in "iub"  # token ids and masks keep valid values
                           else rng.standard_normal(shape).astype(x.dtype))
    if not changed:
        return None
    try:
        make_session(src.model, threads=1).run(None, feed)
    except Exception:  # noqa: BLE001 - the source refuses these sizes too: nothing to learn
        return None
    try:
        run_model(handle, feed)
    except Exception as exc:  # noqa: BLE001 - any failure here is the program's, reported in one line
        return f"at {', '.join(k + ' ' + 'x'.join(map(str, v.shape)) for k, v in feed.items())}: {first_line(exc, 160)}"
    return None


def _all_static(src: ModelHandle, imported: ModelHandle, dst: Path, opts: ConvertOptions,
                failure: BaseException) -> tuple[ModelHandle, str, dict[str, Any]]:
    """The last resort (issue 12 item 3): every dim static at the example shapes (--input-shape, --data, or
    the defaults large enough for the graph). Returns the written handle, the one-line reason naming the
    dims that became static, and the feed (by ONNX input name) parity must use; raises what the capture
    raises when even this fails."""
    from ..writers import save

    imported.metadata["deepshrink.static_all"] = "1"
    if src.example_inputs is not None and opts.data is None:  # the sizes --input-shape gave, as given
        imported.example_inputs = {_ident(k, "x"): v for k, v in src.example_inputs.items()}
    handle = save(imported, dst, force=True)
    examples = imported.example_inputs or {}
    feed = {s.name: examples[_ident(s.name, "x")] for s in src.inputs if _ident(s.name, "x") in examples}
    dims = [(s.name, tuple(examples[s.name].shape)) for s in imported.inputs if s.name in examples]
    declared = {s.name: s.shape for s in imported.inputs}
    dynamic = [f"{n}[{i}]={d}" for n, shape in dims for i, d in enumerate(shape)
               if i < len(declared.get(n, ())) and not (isinstance(declared[n][i], int) and declared[n][i] > 0)]
    why = (f"dims {', '.join(dynamic) or 'of every input'} became static (the example shapes: "
           f"{', '.join(n + ' ' + 'x'.join(map(str, sh)) for n, sh in dims)}; pass --input-shape for others) "
           f"because torch.export could not keep them dynamic: {first_line(failure, 200)}")
    return handle, why, feed


class _Frozen(torch.nn.Module):
    """Wraps a module loaded from a ``.pt2`` so ``.eval()`` works (its own ``eval`` raises)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_inner", inner)  # not a child: train()/eval() must not reach it

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner(*args, **kwargs)
