"""PyTorch → ONNX through torch.onnx: ``dynamo`` or ``torchscript`` exporter, or ``auto`` (the default):
torchscript for a model with recurrent layers (``nn.LSTM``/``nn.GRU``/``nn.RNN``) or a Hugging Face model
inside, dynamo otherwise.

- Recurrent layers: the dynamo exporter writes one as slices and concatenations of its weights around a loop,
  where no int8 quantizer finds them as weights (a 3-layer LSTM speaker encoder: 95 % of its weights stayed
  float, 0.97× the float model's latency); the torchscript exporter writes ONNX ``LSTM``/``GRU``/``RNN`` nodes
  with the weights as initializers, which ONNX Runtime quantizes (``DynamicQuantizeLSTM``: 0.75× on the same
  model).
- Hugging Face transformers: ONNX Runtime's transformer fusions (``optimize --fuse transformer``, the fused
  attention ``quantize`` uses) match the torchscript exporter's graph; on the dynamo exporter's they fuse no
  attention block (MiniLM: 0 Attention against 6), and the dynamo export of any BERT costs ~8 s of CPU against
  ~0.3 s. When torchscript was chosen here and fails, dynamo is tried.

Always writes one self-contained ``.onnx`` file (the dynamo exporter otherwise puts the
weights in a side ``.onnx.data`` file), makes the batch axis — and every axis the input
spec names symbolically, such as a sequence length — dynamic, records the exporter in
the model's metadata, and carries a Hugging Face tokenizer along with the file.
Falls back from dynamo to torchscript when dynamo fails, and from an ``auto`` torchscript choice to dynamo
when torchscript fails, and says why.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch

from ..backends.onnx import io_specs, save_onnx
from ..backends.torch import is_hf_model
from ..core.fileio import check_output
from ..core.handle import ModelHandle
from ..errors import InputError, UnsupportedError, first_line

log = logging.getLogger("deepshrink")
Exporter = Literal["auto", "dynamo", "torchscript"]
EXPORTERS = ("auto", "dynamo", "torchscript")


def resolve_exporter(exporter: str, model: Any) -> str:
    """``auto`` → ``torchscript`` when ``model`` (a module) holds recurrent layers or a Hugging Face model (a
    module :func:`~deepshrink.backends.torch.is_hf_model` reads as one), else ``dynamo`` (module docstring); any
    other name as given. Raises :class:`InputError` for an unknown name."""
    if exporter not in EXPORTERS:
        raise InputError(f"unknown exporter {exporter!r}; use {', '.join(EXPORTERS)}")
    if exporter != "auto":
        return exporter
    if not isinstance(model, torch.nn.Module):
        return "dynamo"
    tracing_wins = any(isinstance(m, torch.nn.RNNBase) or is_hf_model(m) for m in model.modules())
    return "torchscript" if tracing_wins else "dynamo"
# torch's exporter uses these names internally; an output with such a name breaks the file.
_RESERVED_OUTPUT_NAMES = {"embedding"}


def _as_handle(model: Any, example_inputs: dict[str, np.ndarray] | None) -> ModelHandle:
    from ..loading import load

    handle = model if isinstance(model, ModelHandle) else load(model)
    if example_inputs is not None:
        handle.example_inputs = {k: np.asarray(v) for k, v in example_inputs.items()}
        handle.inputs = [s.__class__(s.name, ("batch", *handle.example_inputs[s.name].shape[1:]),
                                     str(handle.example_inputs[s.name].dtype)) if s.name in handle.example_inputs else s
                         for s in handle.inputs]
    if handle.kind != "torch":
        raise InputError("export_onnx needs a PyTorch model")
    if handle.example_inputs is None:
        raise InputError("the model has no fixed input signature; pass --input-shape NAME:DIMS or --data")
    return handle


def _dynamic_axes(handle: ModelHandle) -> dict[str, dict[int, str]]:
    """Input name → {axis: name} of the axes exported dynamic: axis 0 (the batch, or the name the spec
    gives it) and every axis the spec names. An axis-0 size with another axis named ``batch`` (a
    sequence-first model: ``x:10xbatchx32``) stays fixed."""
    axes: dict[str, dict[int, str]] = {}
    if handle.metadata.get("deepshrink.static_all"):  # the last resort of the ONNX import: every dim static
        return axes
    # inputs whose declared fixed batch must stay fixed (an imported graph that reshapes to [1, ...])
    keep_fixed = set(filter(None, handle.metadata.get("deepshrink.static_batch", "").split(",")))
    for spec in handle.inputs:
        ex = handle.example_inputs[spec.name] if handle.example_inputs else None
        rank = ex.ndim if ex is not None else len(spec.shape)
        fixed_batch = spec.name in keep_fixed and bool(spec.shape) and isinstance(spec.shape[0], int)
        batch_elsewhere = "batch" in spec.shape[1:]
        dims: dict[int, str] = {}
        if rank and spec.shape and isinstance(spec.shape[0], str):
            dims[0] = spec.shape[0]
        elif rank and not batch_elsewhere and not fixed_batch:
            dims[0] = "batch"
        for i, d in enumerate(spec.shape):
            if i > 0 and i < rank and (isinstance(d, str) or (isinstance(d, int) and d <= 0)):
                dims[i] = d if isinstance(d, str) else f"dim{i}"  # -1: dynamic without a name (Paddle2ONNX)
        axes[spec.name] = dims
    return axes


_EXPORTER_KEYS = ("pkg.", "namespace")


def strip_exporter_metadata(proto: onnx.ModelProto) -> None:
    """Drop what the exporter records about this machine and this process, in place.

    The dynamo exporter stores per-node stack traces with local file paths, FX node names and
    module scopes (``pkg.torch.onnx.*``), and graph-level facts such as symbolic range
    constraints whose values depend on what was exported earlier in the same process. None of it
    changes what the model computes; it leaks paths, adds ~1/3 to a small file, and makes two
    exports of the same weights differ byte for byte.
    """

    def keep(props: Any) -> list[Any]:
        return [p for p in props if not p.key.startswith(_EXPORTER_KEYS)]

    def clean_graph(graph: onnx.GraphProto) -> None:
        if hasattr(graph, "metadata_props"):
            kept = keep(graph.metadata_props)
            del graph.metadata_props[:]
            graph.metadata_props.extend(kept)
        for node in graph.node:
            kept = keep(node.metadata_props)
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
            for attr in node.attribute:
                if attr.HasField("g"):
                    clean_graph(attr.g)
                for g in attr.graphs:
                    clean_graph(g)

    clean_graph(proto.graph)
    for fn in proto.functions:
        for node in fn.node:
            kept = keep(node.metadata_props)
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
    kept = keep(proto.metadata_props)
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)


def _output_names(handle: ModelHandle, output_names: list[str] | None) -> list[str]:
    names = list(output_names or handle.output_names or ["output"])
    return [f"{n}_out" if n in _RESERVED_OUTPUT_NAMES else n for n in names]


def torch_export(handle: ModelHandle) -> torch.export.ExportedProgram:
    """``torch.export`` with the same dynamic axes as the ONNX export.

    Raises ``UnsupportedError`` in one line when the model cannot be captured; torch's own log
    (graph dumps, guard warnings) is kept quiet. For an ``fx.GraphModule`` (an imported ONNX
    model) the line names the node that failed — the ONNX node and op type where the importer
    tagged it (``node.meta["onnx_node"]``)."""
    dyn = _torch_dynamic_shapes(handle)
    args = _args(handle)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            _quiet_exporter_logs()
            logging.disable(logging.CRITICAL)  # torch logs whole graphs when capture fails; we report one line
            try:
                return torch.export.export(handle.model, args, dynamic_shapes=dyn, strict=False)
            finally:
                logging.disable(logging.NOTSET)
    except Exception as exc:
        raise UnsupportedError(f"torch.export cannot capture {_failing_node(handle.model, exc) or 'this model'}: "
                               f"{first_line(exc, 300)}") from None


def _failing_node(model: Any, exc: BaseException) -> str | None:
    """The node of ``model``'s fx graph that was running when ``exc`` was raised (torch.export runs a
    ``GraphModule`` through ``fx.Interpreter.run_node``), as words; None if not found."""
    graph = getattr(model, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        return None
    seen: set[int] = set()
    ex: BaseException | None = exc
    while ex is not None and id(ex) not in seen:
        seen.add(id(ex))
        tb = ex.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            node = frame.f_locals.get("n") if frame.f_code.co_name == "run_node" else None
            if isinstance(node, torch.fx.Node) and node.graph is graph:
                onnx_node = node.meta.get("onnx_node")
                return f"ONNX node '{onnx_node[0]}' ({onnx_node[1]})" if onnx_node else f"node '{node.name}'"
            tb = tb.tb_next
        ex = ex.__cause__ or ex.__context__
    return None


def _torch_dynamic_shapes(handle: ModelHandle) -> tuple[dict[int, Any], ...] | None:
    """The dynamic axes of each positional argument :func:`_args` passes, in input order (None: none dynamic).
    A tuple, not a dict by input name: torch matches a dict against the ``forward``'s own parameter names,
    which are not the model's input names when those came from elsewhere (a student factory's
    ``nn.Sequential`` takes ``input`` where its teacher's spec says ``x``)."""
    dims: dict[str, Any] = {}
    axes = _dynamic_axes(handle)
    out = tuple({i: dims.setdefault(sym, torch.export.Dim.AUTO) for i, sym in axes.get(name, {}).items()}
                for name in handle.input_names)
    return out if any(out) else None


def export_onnx(model: Any, example_inputs: dict[str, np.ndarray] | None = None,
                path: str | os.PathLike[str] | None = None, *, exporter: Exporter = "auto",
                opset: int | None = None, output_names: list[str] | None = None, dynamic_batch: bool = True,
                force: bool = False, fallback: bool = True) -> ModelHandle:
    """Export a torch model (module or handle) to ``path`` and return the ONNX handle.

    Without ``path`` the model is returned in memory only.
    """
    handle = _as_handle(model, example_inputs)
    chosen = exporter == "auto"
    exporter = resolve_exporter(exporter, handle.model)  # type: ignore[assignment]
    out = check_output(path, inputs=(handle.path,), force=force) if path is not None else None
    names = _output_names(handle, output_names)
    proto, used, why, ts_why = None, exporter, "", ""
    if exporter == "torchscript" and chosen and fallback:  # chosen here, not by the user: dynamo if it fails
        try:
            proto = _export_torchscript(handle, names, opset, dynamic_batch)
            if dynamic_batch:
                check_dynamic_axes(proto, handle, "the torchscript export")
        except Exception as exc:
            proto, why = None, first_line(exc, 300).split(" [Caused by")[0]  # the rest is a fragment of the IR graph
            ts_why = why
            warnings.warn(f"torchscript exporter failed ({why}); falling back to the dynamo exporter", stacklevel=2)
            exporter = used = "dynamo"
    if exporter == "dynamo":
        try:
            proto = _export_dynamo(handle, names, opset, dynamic_batch)
            if dynamic_batch:
                _check_symbolic(proto, handle)
                check_dynamic_axes(proto, handle, "the dynamo export", advise=not fallback)
        except Exception as exc:
            why = _root_cause(exc)
            if not fallback or ts_why:
                raise UnsupportedError(f"the dynamo exporter failed: {why}"
                                       + (f" (torchscript failed first: {ts_why})" if ts_why else "")) from None
            warnings.warn(f"dynamo exporter failed ({why}); falling back to the torchscript exporter", stacklevel=2)
            used = "torchscript"
    if proto is None:
        try:
            proto = _export_torchscript(handle, names, opset, dynamic_batch)
        except Exception as exc:
            msg = first_line(exc, 300).split(" [Caused by")[0]  # the rest is a fragment of the IR graph
            raise UnsupportedError(f"the torchscript exporter failed: {msg}" + (f" (dynamo failed first: {why})" if why else "")) from None
        if dynamic_batch:
            check_dynamic_axes(proto, handle, "the torchscript export")
    _name_dynamic_dims(proto, handle)
    strip_exporter_metadata(proto)
    meta = {"deepshrink.exporter": used, "deepshrink.source": str(handle.source or "")}
    if why:
        meta["deepshrink.exporter_fallback_reason"] = why
    if handle.tokenizer_dir is not None and out is not None:
        meta["deepshrink.tokenizer"] = out.name + ".tokenizer"
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **meta})
    ins, outs = io_specs(proto)
    result = ModelHandle(proto, "onnx", ins, outs, example_inputs=handle.example_inputs, source=str(out or handle.source),
                         path=out, tokenizer_dir=handle.tokenizer_dir, metadata=meta)
    if out is not None:
        if handle.tokenizer_dir is not None:
            tok_target = out.parent / (out.name + ".tokenizer")
            copy_tokenizer(handle.tokenizer_dir, tok_target)
            result.tokenizer_dir = tok_target
        save_onnx(proto, out)
    return result


class AxisFixedError(UnsupportedError):
    """An axis the input spec declares dynamic is fixed in the exported graph."""


def _check_symbolic(proto: onnx.ModelProto, handle: ModelHandle) -> None:
    """Refuse a dynamo export whose graph input fixes an axis the spec declares dynamic (torch.export
    specialises an axis the model's code branches on, e.g. the sequence axis of ``nn.LSTM``)."""
    dims_of = {vi.name: vi.type.tensor_type.shape.dim for vi in proto.graph.input}
    for name, axes in _dynamic_axes(handle).items():
        dims = dims_of.get(name)
        for axis, label in axes.items():
            if dims is not None and axis < len(dims) and dims[axis].HasField("dim_value"):
                raise AxisFixedError(f"torch.export fixed axis {axis} ({label!r}) of input {name!r} at "
                                     f"{dims[axis].dim_value}: the model's code specialises it")


def check_dynamic_axes(proto: onnx.ModelProto, handle: ModelHandle, what: str, *, advise: bool = True) -> None:
    """Run the exported graph with every dynamic axis one longer than traced and compare with torch.

    The torchscript exporter traces sizes into ``Reshape`` targets and loop bounds while still
    declaring the axis dynamic; such a file fails (or computes something else) at any other size.
    Raises :class:`AxisFixedError` naming the input, the axis and the node ONNX Runtime stops in.
    """
    from ..backends.onnx import make_session
    from ..backends.torch import run_torch

    axes = _dynamic_axes(handle)
    base = {n: np.asarray(handle.example_inputs[n]) for n in handle.input_names}  # type: ignore[index]
    labels = sorted({lab for dims in axes.values() for lab in dims.values()})
    if not labels:
        return
    try:
        sess = make_session(proto, threads=1)
    except Exception:  # a file ORT cannot load is reported by whoever runs it, with its own message
        return
    for label in labels:
        feed, where = dict(base), []
        for n, dims in axes.items():
            grown = [i for i, lab in dims.items() if lab == label]
            if grown:
                shape = list(base[n].shape)
                for i in grown:
                    shape[i] += 1
                feed[n] = np.resize(base[n], shape).astype(base[n].dtype)
                where += [(n, i, base[n].shape[i]) for i in grown]
        n0, axis, size = where[0]
        head = f"{what} hard-codes axis {axis} ({label!r}) of input {n0!r}: traced at {size}, the file "
        tips = ["keep that axis fixed (a size, not a name, in --input-shape) or try the other --exporter"]
        if axis == 0 and label == "batch" and base[n0].ndim > 1:
            rest = "".join(f"x{d}" for d in base[n0].shape[2:])
            tips.insert(0, f"if axis 0 is not the batch (a sequence-first model), name the batch axis: "
                           f"--input-shape {n0}:{size}xbatch{rest}")
        hint = "; " + "; or ".join(tips) if advise else ""
        try:  # a torch.fx module (an ONNX import) prints its generated code's traceback on stderr when it fails
            with contextlib.redirect_stderr(io.StringIO()):
                ref = run_torch(handle.model, feed, handle.input_names)
        except InputError:  # the model itself does not take that size (YOLO at 321 pixels): nothing to promise
            continue
        try:
            got = [np.asarray(o) for o in sess.run(None, feed)]
        except Exception as exc:  # noqa: BLE001 - any failure at another size is the hard-coded axis
            node = re.search(r"running (\w+) node\. Name:'([^']*)'", str(exc))
            at = f" in {node.group(1)} node {node.group(2)!r}" if node else ""
            raise AxisFixedError(head + f"fails at {size + 1}{at}" + hint) from None
        for r, g in zip(ref, got, strict=False):
            r = np.asarray(r, np.float64)
            # a traced size gives grossly wrong numbers, not rounding: 1e-2 leaves room for fp16 models
            if r.shape != g.shape or (r.size and np.abs(r - g).max() > 1e-2 * max(np.abs(r).max(), 1e-6)):
                raise AxisFixedError(head + f"gives other numbers than the model at {size + 1}" + hint)


def _name_dynamic_dims(proto: onnx.ModelProto, handle: ModelHandle) -> None:
    """Give the exporter's generated symbols (``s43``) the names of the input spec (``batch``)."""
    wanted = _dynamic_axes(handle)
    rename: dict[str, str] = {}
    for vi in proto.graph.input:
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            new = wanted.get(vi.name, {}).get(i)
            if new and d.dim_param and d.dim_param != new:
                rename.setdefault(d.dim_param, new)
    if not rename:
        return
    for vi in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy only the tokenizer files of a Hugging Face folder (not the weights)."""
    keep = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "merges.txt",
            "vocab.json", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json", "config.json")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in keep:
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def _args(handle: ModelHandle) -> tuple[torch.Tensor, ...]:
    """Example tensors with a batch of at least 2: torch.export fixes a size-1 axis as static."""
    if handle.example_inputs is None:
        raise InputError(f"the PyTorch model {handle.source or ''} has no example inputs to export it with: pass "
                         "input_shapes (CLI --input-shape NAME:1x64) or data".replace("  ", " "))
    axes = _dynamic_axes(handle)
    unnamed: dict[int, str] = {} if handle.metadata.get("deepshrink.static_all") else {0: "batch"}
    out = []
    for n in handle.input_names:
        a = np.ascontiguousarray(handle.example_inputs[n])
        if a.ndim and a.shape[0] == 1 and 0 in axes.get(n, unnamed):
            a = np.concatenate([a, a])
        out.append(torch.from_numpy(a))
    return tuple(out)


def _export_dynamo(handle: ModelHandle, names: list[str], opset: int | None, dynamic: bool) -> onnx.ModelProto:
    dyn = _torch_dynamic_shapes(handle) if dynamic else None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        _quiet_exporter_logs()
        logging.disable(logging.CRITICAL)  # torch logs whole graphs when export fails; we report one line
        try:
            prog = torch.onnx.export(handle.model, _args(handle), None, input_names=handle.input_names,
                                     output_names=names, opset_version=opset, dynamo=True, external_data=False,
                                     dynamic_shapes=dyn, verbose=False)
        finally:
            logging.disable(logging.NOTSET)
    assert prog is not None
    return prog.model_proto


def _export_torchscript(handle: ModelHandle, names: list[str], opset: int | None, dynamic: bool) -> onnx.ModelProto:
    buf = io.BytesIO()
    axes = _dynamic_axes(handle) if dynamic else None
    if axes is not None and any(dims.get(0) == "batch" for dims in axes.values()):
        axes.update({n: {0: "batch"} for n in names})
    from ..core.quiet import detail, native_output_silenced

    # on an error, torch's C++ side prints the whole TorchScript IR graph to file descriptor 1
    captured: list[str] = []
    try:
        with warnings.catch_warnings(), native_output_silenced() as captured:
            warnings.simplefilter("ignore")
            torch.onnx.export(handle.model, _args(handle), buf, input_names=handle.input_names, output_names=names,
                              opset_version=opset or 17, dynamo=False, dynamic_axes=axes, do_constant_folding=True)
    finally:
        detail("".join(captured), what="torch.onnx.export (TorchScript) output")
    return onnx.load_from_string(buf.getvalue())


def _quiet_exporter_logs() -> None:
    for name in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo", "torch._export",
                 "torch.fx.experimental.symbolic_shapes", "torch._subclasses"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _root_cause(exc: BaseException) -> str:
    """The innermost cause's type and first meaningful line, without terminal colour codes."""

    inner = exc
    while inner.__cause__ is not None and inner.__cause__ is not inner:
        inner = inner.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(inner))
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(inner).__name__}: {line[:200]}"
