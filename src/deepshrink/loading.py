"""``ds.load``: one entry point for every model source, returning a :class:`ModelHandle`.

Sources: an ``nn.Module``/``onnx.ModelProto`` in memory; ``.onnx`` files (with external
data kept inside the model's folder); ``torch.export`` archives (``.pt2``, refused when
they hold pickled objects unless ``trust_remote_code``); ``package.module:factory`` plus
``--weights`` (``.safetensors`` or a state-dict ``.pt`` read with ``weights_only=True``);
local Hugging Face folders (offline, remote code off); pickled whole models only with
``trust_remote_code=True``.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .backends.onnx import index_bounds, io_specs, load_onnx, normalize_onnx
from .backends.torch import forward_arg_names, forward_optional_names, run_torch
from .core.handle import ANY_DTYPE, ModelHandle, TensorSpec
from .errors import InputError, UnsupportedError, first_line

META_TOKENIZER = "deepshrink.tokenizer"


# the size a named (dynamic) axis is traced at when neither NAME=SIZE nor the data gives one: not a
# power of two, so it does not coincide with a model's fixed widths and get baked in by the exporter
NAMED_DIM_SIZE = 17
_DIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
Shape = tuple[int | str, ...]


def parse_input_shapes(items: list[str] | dict[str, Any] | None) -> dict[str, Shape]:
    """``["x:1x3x224x224", "mask:1x128"]`` → ``{"x": (1, 3, 224, 224), ...}``; a bare shape is keyed ``""``.

    A name in place of a size marks that axis dynamic, as ONNX's named dims do: ``x:2xseqx8`` is
    ``(2, "seq", 8)``; ``seq=12`` also says the size to trace at (default: the data's size, else
    :data:`NAMED_DIM_SIZE`). Axis 0 is the batch axis and always dynamic, unless another axis is
    named ``batch`` (a sequence-first model: ``x:10xbatchx32``). Dims are separated by ``x`` or, for
    names that contain an ``x``, by commas (``x:2,max_len,8``). A dict (the Python API) is checked the
    same way: values are tuples of positive ints and names. Raises :class:`InputError` naming the
    entry that is not a shape.
    """
    if isinstance(items, dict):
        return {str(k): _check_dims(k, v) for k, v in items.items()}
    shapes: dict[str, Shape] = {}
    for item in items or []:
        item, _dtype = _split_dtype(item)
        name, sep, dims = item.rpartition(":")
        if not sep:
            name, dims = "", item
        parts = [d.strip() for d in re.split(r"," if "," in dims else r"x", dims.strip())]
        shape: list[int | str] = []
        for d in parts:
            if d.isdigit() and int(d) > 0:
                shape.append(int(d))
            elif _DIM_NAME.fullmatch(d.partition("=")[0]) and (not d.partition("=")[1] or d.partition("=")[2].isdigit()):
                shape.append(d)
            else:
                shape = []
                break
        if not shape or any(isinstance(d, str) and d.endswith("=0") for d in shape):
            raise InputError(f"--input-shape {item!r}: expected NAME:DIMS such as x:1x3x224x224 "
                             "(a name in place of a size marks a dynamic axis: x:1xseqx8)")
        shapes[name] = tuple(shape)
    return shapes


# the element types ``--input-shape NAME:DIMS:DTYPE`` takes (a model whose input is token ids: x:1x64:int64)
INPUT_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


def _split_dtype(item: str) -> tuple[str, str | None]:
    """``"x:1x64:int64"`` → ``("x:1x64", "int64")``; without a third part ``(item, None)``. Raises
    :class:`InputError` for a third part that is not one of :data:`INPUT_DTYPES`."""
    head, sep, last = item.rpartition(":")
    if sep and last in INPUT_DTYPES:
        return head, last
    if item.count(":") >= 2:
        raise InputError(f"--input-shape {item!r}: {last!r} is not an element type deepshrink knows; give "
                         f"NAME:DIMS[:DTYPE] with DTYPE one of {', '.join(INPUT_DTYPES)}")
    return item, None


def parse_input_dtypes(items: list[str] | dict[str, Any] | None) -> dict[str, str]:
    """The element types given as ``NAME:DIMS:DTYPE`` (:data:`INPUT_DTYPES`): ``{name: dtype}``, a bare
    ``DIMS:DTYPE`` keyed ``""``; {} for the Python API's dict form, which gives shapes only."""
    if isinstance(items, dict) or not items:
        return {}
    out = {}
    for item in items:
        head, dtype = _split_dtype(item)
        if dtype is not None:
            out[head.rpartition(":")[0]] = dtype
    return out


def _check_dims(name: Any, dims: Any) -> Shape:
    """One API shape: a sequence of positive ints and axis names (``"seq"`` or ``"seq=12"``)."""
    ok = isinstance(dims, (tuple, list)) and len(dims) > 0
    out: list[int | str] = []
    for d in dims if ok else ():
        if isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0:
            out.append(int(d))
        elif isinstance(d, str) and _DIM_NAME.fullmatch(d.partition("=")[0]) and (
                not d.partition("=")[1] or (d.partition("=")[2].isdigit() and int(d.partition("=")[2]) > 0)):
            out.append(d)
        else:
            ok = False
    if not ok:
        raise InputError(f"input_shapes[{name!r}] = {dims!r}: expected a tuple of positive sizes and axis names, "
                         "such as (1, 3, 224, 224) or (2, 'seq', 8)")
    return tuple(out)


def split_dim(d: int | str) -> tuple[str | None, int | None]:
    """``"seq=12"`` → ``("seq", 12)``, ``"seq"`` → ``("seq", None)``, ``8`` → ``(None, 8)``."""
    if isinstance(d, int):
        return None, d
    name, _, size = d.partition("=")
    return name, int(size) if size else None


def load(src: Any, *, weights: str | os.PathLike[str] | None = None,
         input_shapes: list[str] | dict[str, tuple[int | str, ...]] | None = None,
         data: Any = None, trust_remote_code: bool = False) -> ModelHandle:
    """Load a model from any supported source (see module docstring).

    ``input_shapes``: CLI-style strings or ``{name: shape}``; a name in place of a size marks a
    dynamic axis (see :func:`parse_input_shapes`). Raises :class:`InputError` for a shape that is not one."""
    shapes = parse_input_shapes(input_shapes)
    dtypes = parse_input_dtypes(input_shapes)
    if isinstance(src, ModelHandle):
        handle = src
    elif isinstance(src, nn.Module):
        handle = _torch_handle(src, source=type(src).__name__)
    elif _is_onnx_proto(src):
        from .backends.onnx import check_tensor_data, inline_external_data

        inline_external_data(src, what="the ONNX model given")
        check_tensor_data(src, what="the ONNX model given")
        ins, outs = io_specs(src)
        handle = ModelHandle(src, "onnx", ins, outs, source="<onnx model>")
    else:
        handle = _load_path_or_factory(str(src), weights, trust_remote_code)
    if weights is not None and handle.kind == "onnx":
        raise InputError("--weights applies to a module:factory source or a Hugging Face folder, not to an ONNX file")
    if handle.kind == "torch":
        _apply_example_inputs(handle, shapes, data, dtypes)
    elif shapes:
        _check_onnx_shapes(handle, shapes, dtypes)
    if handle.kind == "onnx" and not handle.index_bounds:
        handle.index_bounds = index_bounds(handle.model)
    return handle


def _is_onnx_proto(obj: Any) -> bool:
    return type(obj).__name__ == "ModelProto" and hasattr(obj, "graph")


def _load_path_or_factory(src: str, weights: Any, trust: bool) -> ModelHandle:
    from .core import formats

    path = Path(src)
    fmt = formats.format_of(path)
    if path.is_dir():
        if fmt is not None and fmt.name == "hf-folder":
            handle = load_hf_folder(path, trust_remote_code=trust)
            if weights is not None:  # the folder's architecture with other weights (a pruned state dict: re-shaped)
                load_weights(handle.model, weights)
            return handle
        if fmt is not None and fmt.name == "saved-model":
            raise UnsupportedError(f"{path} is a TensorFlow SavedModel; convert it with `deepshrink convert {path} model.onnx`")
        raise InputError(f"{path} is a folder but not a Hugging Face model (no config.json)")
    suffix = path.suffix.lower()
    name = fmt.name if fmt is not None else None
    if name == "onnx":
        model = load_onnx(path)
        normalized = normalize_onnx(model)
        _check_onnx_weights_finite(model, str(path))
        ins, outs = io_specs(model)
        handle = ModelHandle(model, "onnx", ins, outs, source=str(path), path=path)
        meta = {p.key: p.value for p in model.metadata_props}
        handle.metadata = meta
        if normalized:
            handle.metadata["deepshrink.normalized"] = "; ".join(normalized)
        tok = meta.get(META_TOKENIZER)
        if tok and (path.parent / tok).is_dir():
            handle.tokenizer_dir = path.parent / tok
        return handle
    if name == "pt2":
        if weights is not None:
            raise InputError("--weights applies to a module:factory source or a Hugging Face folder, not to a .pt2 "
                             "archive (its weights are inside it)")
        return _load_pt2(path, trust)
    if name in ("safetensors", "torch-pickle"):
        if not path.is_file():
            raise InputError(f"model file {path} does not exist")
        if name == "safetensors":
            raise InputError(f"{path} holds weights only; pass the architecture as package.module:factory "
                             f"with --weights {path}")
        if not trust:  # a pickle: whether it holds a whole model is only known by running it
            raise InputError(f"{path} is a pickle; without --trust-remote-code deepshrink reads only weights from it: "
                             f"pass the architecture as package.module:factory with --weights {path}, or "
                             "--trust-remote-code to unpickle a whole model (this runs code the file names)")
        if os.getcwd() not in sys.path:  # as for module:factory: the model's classes may live beside it
            sys.path.insert(0, os.getcwd())
        try:
            obj = torch.load(path, weights_only=False, map_location="cpu")  # user opted in
        except (ImportError, AttributeError) as exc:  # the pickle names a class that is not importable here
            raise InputError(f"{path}: unpickling the model failed ({type(exc).__name__}: {first_line(exc, 160)}); make the module that "
                             "defines the model's class importable (PYTHONPATH) and retry") from None
        if not isinstance(obj, nn.Module):
            raise InputError(f"{path} does not hold a whole nn.Module (found {type(obj).__name__}); use module:factory --weights")
        return _torch_handle(obj, source=str(path))
    if fmt is not None and fmt.holds in ("keras", "tflite"):
        raise UnsupportedError(f"{path}: the other verbs work on ONNX and PyTorch models; convert it first: "
                               f"`deepshrink convert {path} {path.stem}.onnx`")
    if fmt is not None and fmt.holds == "openvino":
        raise UnsupportedError(f"{path}: OpenVINO IR is a conversion target (and `bench` runs it); the other verbs "
                               "work on the ONNX model it came from")
    if name == "packed":
        raise UnsupportedError(f"{path} is a packed model; decode it with `deepshrink unpack {path} -o "
                               f"{_unpack_target(path)}`")
    if is_factory_source(src):
        return _load_factory(src, weights)
    if not path.exists():
        raise InputError(f"model {src} not found (expected a file, a Hugging Face folder or package.module:factory)")
    raise InputError(f"{path}: unknown model format {suffix!r}; use .onnx, .pt2, a Hugging Face folder or module:factory")


def _unpack_target(path: Path) -> str:
    """What ``unpack`` can write for a ``.dsz`` file: ``model.onnx`` for an ONNX source, else
    ``model.safetensors`` (a torch model or bare tensors decode to a state dict)."""
    from .core.formats import peek_dsz_source_kind

    try:
        with open(path, "rb") as fh:
            kind = peek_dsz_source_kind(fh.read(7))
    except OSError:
        kind = None
    return "model.onnx" if kind == "onnx" else "model.safetensors"


# Weight slots (op type -> input indices) whose initializers must be finite: a NaN or an infinity there
# poisons every output. Other constants may hold an infinity on purpose (an attention mask's fill value).
_WEIGHT_SLOTS = {"MatMul": (0, 1), "Gemm": (0, 1, 2), "Conv": (1, 2), "ConvTranspose": (1, 2), "Gather": (0,),
                 "LSTM": (1, 2, 3), "GRU": (1, 2, 3), "RNN": (1, 2, 3), "BatchNormalization": (1, 2, 3, 4),
                 "LayerNormalization": (1, 2)}


def _check_onnx_weights_finite(model: Any, source: str) -> None:
    """Refuse an ONNX model whose weights (the initializers in :data:`_WEIGHT_SLOTS`) hold NaN or ±inf."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    for node in model.graph.node:
        for i in _WEIGHT_SLOTS.get(node.op_type, ()):
            name = node.input[i] if i < len(node.input) else ""
            t = inits.get(name)
            if t is None or name in seen:
                continue
            seen.add(name)
            try:
                arr = numpy_helper.to_array(t)
            except Exception:  # noqa: BLE001 - an odd type; the runtime will say
                continue
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise InputError(f"model {source}: weight {name!r} of {node.op_type} node {node.name!r} contains NaN "
                                 "or infinity")


def is_factory_source(src: Any) -> bool:
    """``package.module:factory`` (and not a file of that name): the source ``weights`` are for."""
    return (isinstance(src, str) and re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", src) is not None
            and not Path(src).exists())


def _load_factory(spec: str, weights: Any) -> ModelHandle:
    mod_name, fn_name = spec.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise InputError(f"cannot import {mod_name!r} for factory {spec}: {exc}") from None
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        raise InputError(f"{mod_name} has no callable {fn_name!r}")
    model = fn()
    if not isinstance(model, nn.Module):
        raise InputError(f"factory {spec} returned {type(model).__name__}, not an nn.Module")
    if weights is not None:
        load_weights(model, weights)
    elif any(True for _ in model.parameters()):
        from .core.quiet import defer_note

        defer_note(f"{spec} was given without --weights: its weights are those the factory builds (its initial, "
                   f"untrained ones, unless the factory loads trained weights itself)")
    return _torch_handle(model.eval(), source=spec)


def load_weights(model: nn.Module, weights: str | os.PathLike[str]) -> None:
    """Load a ``.safetensors`` or state-dict ``.pt`` into ``model``.

    The names must be the model's, or a checkpoint of a part of it (a Hugging Face ``model.safetensors`` under
    the wrapper deepshrink loads a folder into: the names are given the part's prefix; integer buffers the model
    does not keep, such as ``position_ids``, are dropped), or the model's names under one more prefix. When the
    names match and some shapes differ, the file is taken as a structured pruning of this architecture (what
    ``prune --method structured -o x.safetensors`` writes): ``model``'s layers are re-shaped to the file's
    (:func:`deepshrink.prune.structured.fit_to_state_dict`) and, from deepshrink's own header, the heads each
    attention module kept are noted on it. Raises ``InputError`` for a missing, unreadable or non-finite file and
    for a state dict that does not fit (naming the shapes and names that differ)."""
    path = Path(weights)
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    meta: dict[str, str] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as fh:  # the tensors and the header, one read
                meta = fh.metadata() or {}
                state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is not a mapping
        else:
            state = torch.load(path, weights_only=True, map_location="cpu")
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
    except pickle.UnpicklingError:
        raise InputError(f"weights file {path} holds pickled objects besides tensors; unpickling them could run "
                         "code, so it is not loaded (save the state dict as .safetensors)") from None
    except Exception as exc:
        raise InputError(f"weights file {path} cannot be read ({type(exc).__name__}: {first_line(exc, 160)})") from None
    if not isinstance(state, dict):
        raise InputError(f"weights file {path} does not hold a state dict")
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all():
            raise InputError(f"weights file {path}: tensor {k!r} contains NaN or infinity")
    from .backends.pruned_modules import fit_to_state_dict, restore_kept_heads

    own = model.state_dict()
    state = _align_keys(state, own)
    if set(state) == set(own) and any(tuple(own[k].shape) != tuple(v.shape) for k, v in state.items()):
        try:  # the same tensors in other shapes: a structured pruning of this architecture (what `prune` writes)
            fit_to_state_dict(model, state)
        except (RuntimeError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise InputError(f"weights file {path} does not fit the model: its layer shapes are not a pruning of "
                             f"it ({type(exc).__name__}: {first_line(exc, 120)})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = _state_mismatch(model.state_dict(), state)
        if not detail:  # torch refused for another reason: its own words, cut to a line
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            detail = " ".join(lines[1:3])[:300]
        raise InputError(f"weights file {path} does not fit the model: {detail}") from None
    try:
        restore_kept_heads(model, meta)
    except ValueError as exc:
        raise InputError(f"weights file {path}: its kept-heads record does not fit the model ({first_line(exc, 120)})") from None


def _align_keys(state: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its names made ``own``'s when they differ by one prefix (added or removed) and nothing the
    model has is missing; the file's extra entries are dropped only when they are integer buffers (a Hugging Face
    checkpoint's ``embeddings.position_ids``). Otherwise ``state`` unchanged (the load then names the mismatch)."""
    if set(state) == set(own) or not state or not own:
        return state
    some_state, some_own = list(state)[:8], list(own)[:8]  # a few: the first may be one the other side lacks
    candidates = {(k[: -len(s)], "") for s in some_state for k in own if k.endswith("." + s)}
    candidates |= {("", k[: -len(o)]) for o in some_own for k in state if k.endswith("." + o)}
    for add, strip in sorted(candidates):
        mapped = {add + k.removeprefix(strip): v for k, v in state.items() if k.startswith(strip)}
        extra = set(mapped) - set(own)
        if set(own) <= set(mapped) and all(not torch.is_tensor(mapped[k]) or not mapped[k].is_floating_point()
                                           for k in extra):
            return {k: v for k, v in mapped.items() if k in own}
    return state


def _state_mismatch(own: dict[str, Any], given: dict[str, Any], show: int = 3) -> str:
    """One line on how a state dict differs from a model's: shape mismatches first (file vs model), then
    the model's keys the file lacks and the file's keys the model lacks, each counted, the first ``show``
    named ("" when none differs)."""
    def some(items: list[str]) -> str:
        return ", ".join(items[:show]) + (", …" if len(items) > show else "")

    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in given and hasattr(given[k], "shape") and tuple(given[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    parts = [f"{len(shapes)} shape(s) differ (file vs model): {some(shapes)}" if shapes else "",
             f"{len(missing)} of the model's tensors missing: {some(missing)}" if missing else "",
             f"{len(unexpected)} tensors the model does not have: {some(unexpected)}" if unexpected else ""]
    return "; ".join(p for p in parts if p)


def _load_pt2(path: Path, trust: bool) -> ModelHandle:
    if not path.is_file():
        raise InputError(f"model file {path} does not exist")
    if not trust:
        _check_pt2_safe(path)
    from .core.formats import PT2_OUTPUT_NAMES, pt2_output_names

    extra = {PT2_OUTPUT_NAMES: ""}
    try:
        ep = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:
        raise InputError(f"{path} is not a readable torch.export archive ({type(exc).__name__}: {first_line(exc, 160)})") from None
    module = ep.module()
    _check_finite(module, str(path))
    names = list(ep.graph_signature.user_inputs)
    ins = []
    example: dict[str, np.ndarray] = {}
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    for name in names:
        val = placeholders[name].meta.get("val")
        if val is None:
            continue
        shape = tuple(int(d) if isinstance(d, int) else f"d{i}" for i, d in enumerate(val.shape))
        dtype = str(val.dtype).replace("torch.", "")
        ins.append(TensorSpec(name, shape, dtype))
    handle = ModelHandle(module, "torch", ins, [], source=str(path), path=path)
    handle.metadata["input_names"] = ",".join(names)
    # a program traced without a dynamic batch runs at that batch only (an ONNX file fixed at batch 1, converted):
    # exports from it keep the batch fixed, as a dynamic one would fail the program's guard
    static = [s.name for s in ins if s.shape and isinstance(s.shape[0], int)]
    if static:
        handle.metadata["deepshrink.static_batch"] = ",".join(static)
    tok = path.parent / (path.name + ".tokenizer")  # written beside it when the model came from a HF folder
    if tok.is_dir():
        handle.tokenizer_dir = tok
    if all(isinstance(d, int) for s in ins for d in s.shape):
        example = {s.name: np.zeros(s.shape, s.np_dtype) for s in ins}
        handle.example_inputs = example
    else:  # dynamic dims: the shapes the export recorded (symbolic, as the inputs'), without running the model;
        # the inputs the program was exported with, kept in the archive, to export it further
        handle.outputs = _pt2_output_specs(ep)
        handle.example_inputs = _stored_example_inputs(ep, names)
    if not handle.outputs:
        _set_output_specs(handle)
    names = pt2_output_names(extra[PT2_OUTPUT_NAMES])
    if names is not None and len(names) == len(handle.outputs):  # the names the model had when deepshrink wrote it
        handle.outputs = [TensorSpec(n, s.shape, s.dtype) for n, s in zip(names, handle.outputs, strict=True)]
    return handle


def _stored_example_inputs(ep: Any, names: list[str]) -> dict[str, np.ndarray] | None:
    """The example inputs an ExportedProgram keeps (``ep.example_inputs``: positional, then keyword), by input
    name; None when the archive has none or they are not one tensor per input (a nested structure)."""
    stored = getattr(ep, "example_inputs", None)
    if not stored or len(stored) != 2:
        return None
    args, kwargs = stored
    values = [*args, *(kwargs or {}).values()]
    if len(values) != len(names) or not all(isinstance(v, torch.Tensor) for v in values):
        return None
    return {n: v.detach().cpu().numpy() for n, v in zip(names, values, strict=True)}


def _pt2_output_specs(ep: Any) -> list[TensorSpec]:
    """The user outputs of an ExportedProgram as specs, from the fake tensors its graph records (a symbolic
    dim: ``d{i}``, as the inputs name theirs); [] when the graph does not record them."""
    out_node = next((n for n in ep.graph.nodes if n.op == "output"), None)
    if out_node is None:
        return []
    users = list(ep.graph_signature.user_outputs)
    specs = []
    for i, arg in enumerate(out_node.args[0]):
        val = getattr(arg, "meta", {}).get("val")
        name = getattr(arg, "name", "")
        if name not in users or not hasattr(val, "shape"):
            continue
        shape = tuple(int(d) if isinstance(d, int) else f"d{j}" for j, d in enumerate(val.shape))
        specs.append(TensorSpec("output" if len(users) == 1 else f"output_{i}", shape, str(val.dtype).replace("torch.", "")))
    return specs


def _check_pt2_safe(path: Path) -> None:
    """Refuse archives whose loading would unpickle objects (weights or constants)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            for n in names:
                base = n.rsplit("/", 1)[-1]
                if n.endswith("_config.json") and ("/weights/" in n or "/constants/" in n):
                    cfg = json.loads(z.read(n))
                    for fqn, meta in cfg.get("config", {}).items():
                        p = meta.get("path_name", "")
                        if meta.get("use_pickle") or p.startswith(("custom_obj", "opaque_obj")):
                            raise InputError(f"{path}: entry {fqn!r} is stored as a pickle; loading it could run code. "
                                             "Pass --trust-remote-code if you trust this file")
                elif ("/weights/" in n or "/constants/" in n) and base.endswith(".pt"):
                    raise InputError(f"{path}: legacy pickled weights ({n}); pass --trust-remote-code if you trust this file")
                elif "/sample_inputs/" in n and base.endswith(".pt"):
                    try:
                        torch.load(io.BytesIO(z.read(n)), weights_only=True)
                    except Exception:
                        raise InputError(f"{path}: sample inputs are pickled objects; pass --trust-remote-code "
                                         "if you trust this file") from None
    except zipfile.BadZipFile:
        raise InputError(f"{path} is not a torch.export archive (not a zip file, or truncated)") from None


def load_hf_folder(path: Path, *, trust_remote_code: bool = False) -> ModelHandle:
    """A local Hugging Face model folder → torch handle with its tokenizer attached.

    A sentence-transformers folder (``modules.json`` with a Pooling module) becomes a
    mean-pooled sentence encoder; otherwise the base model's first output is used.
    """
    try:
        from transformers import AutoConfig, AutoModel, AutoTokenizer
    except ImportError:
        from .errors import MissingExtraError

        raise MissingExtraError("transformers", "examples", "loading a Hugging Face folder") from None
    from transformers.utils import logging as hf_logging

    from .examples.minilm import SentenceEncoder

    hf_logging.disable_progress_bar()
    if not trust_remote_code:
        _refuse_remote_code(path)
    try:
        AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
        model = AutoModel.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code,
                                          attn_implementation="eager")
    except pickle.UnpicklingError:
        raise InputError(f"{path}: the weights (pytorch_model.bin) hold pickled objects besides tensors; unpickling "
                         "them could run code, so they are not loaded (use model.safetensors)") from None
    except Exception as exc:
        raise InputError(f"{path}: cannot load the Hugging Face model offline ({type(exc).__name__}: "
                         f"{first_line(exc)})") from None
    modules_json = path / "modules.json"
    is_st = modules_json.is_file() and "Pooling" in modules_json.read_text()
    normalize = is_st and "Normalize" in modules_json.read_text()
    wrapped: nn.Module = SentenceEncoder(model, normalize=normalize) if is_st else _FirstOutput(model)
    wrapped.eval()
    _check_finite(wrapped, str(path))
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    enc = tok(["deepshrink measures what it ships.", "A second, somewhat longer example sentence for shapes."],
              padding=True, return_tensors="np")
    names = ["input_ids", "attention_mask"]
    example = {n: np.asarray(enc[n]).astype(np.int64) for n in names}
    ins = [TensorSpec(n, ("batch", "sequence"), "int64") for n in names]
    handle = ModelHandle(wrapped, "torch", ins, [], example_inputs=example, source=str(path), path=path,
                         tokenizer_dir=path)
    handle.metadata["input_names"] = ",".join(names)
    _set_output_specs(handle, "sentence_embedding" if is_st else "last_hidden_state")
    return handle


def _refuse_remote_code(path: Path) -> None:
    """Refuse, before transformers reads anything else, a folder whose config asks for its own code
    (``auto_map``: Python files that ``trust_remote_code`` would import and run)."""
    for name in ("config.json", "tokenizer_config.json"):
        f = path / name
        if not f.is_file():
            continue
        try:
            cfg = json.loads(f.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{f} is not valid JSON ({first_line(exc, 120)})") from None
        auto_map = cfg.get("auto_map") if isinstance(cfg, dict) else None
        if auto_map:
            shown = ", ".join(str(v) for v in (auto_map.values() if isinstance(auto_map, dict) else [auto_map]))[:120]
            raise InputError(f"{path}: {name} asks to run the folder's own code (auto_map: {shown}); deepshrink runs "
                             "no code from a model folder unless you pass --trust-remote-code (trust_remote_code=True)")


class _FirstOutput(nn.Module):
    """Expose a Hugging Face model as ``(input_ids, attention_mask) -> last_hidden_state``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _check_finite(model: nn.Module, source: str) -> None:
    """Refuse a module whose floating-point parameters hold NaN or ±inf, or whose buffers hold NaN.

    A buffer or lifted constant may legitimately be ±inf (a ``-inf`` fill value or mask: magika's
    tf2onnx graph has one, imported into the ``.pt2`` as a constant), as the ONNX check allows it
    outside weight inputs."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise InputError(f"model {source}: tensor {name!r} contains NaN or infinity")
    for name, b in model.named_buffers():
        if b.is_floating_point() and torch.isnan(b).any():
            raise InputError(f"model {source}: tensor {name!r} contains NaN")


def _torch_handle(model: nn.Module, source: str) -> ModelHandle:
    from .backends.torch import set_eval

    set_eval(model)
    _check_finite(model, source)
    names = forward_arg_names(model)
    # dtype unknown until data or --input-shape says: data keeps its integer ids, floats -> float32
    ins = [TensorSpec(n, ("batch",), ANY_DTYPE) for n in names]
    handle = ModelHandle(model, "torch", ins, [], source=source)
    handle.metadata["input_names"] = ",".join(names)
    optional = forward_optional_names(model)
    if optional:
        handle.metadata["optional_inputs"] = ",".join(optional)
    return handle


def _optional_inputs(handle: ModelHandle) -> set[str]:
    """The ``forward`` parameters with a default (:func:`_torch_handle` records them)."""
    return set(filter(None, handle.metadata.get("optional_inputs", "").split(",")))


def _trim_optional(handle: ModelHandle, provided: Any) -> list[str]:
    """The model's input names without the trailing ``forward`` parameters that have a default and that
    neither ``--input-shape`` nor the data provide (torchcrepe's ``forward(x, embed=False)``: ``x`` only).
    Inputs are passed by position, so an optional parameter before a provided one stays an input."""
    names = list(handle.input_names)
    optional = _optional_inputs(handle)
    while len(names) > 1 and names[-1] in optional and names[-1] not in provided:
        names.pop()
    if len(names) != len(handle.input_names):
        handle.inputs = [s for s in handle.inputs if s.name in names]
        handle.metadata["input_names"] = ",".join(names)
    return names


def _apply_example_inputs(handle: ModelHandle, shapes: dict[str, tuple[int, ...]], data: Any,
                          dtypes: dict[str, str] | None = None) -> None:
    """Fill a torch handle's input spec from --input-shape (and its ``:DTYPE``) or --data (batch axis dynamic)."""
    names = handle.input_names
    dtypes = dict(dtypes or {})
    if shapes:
        names = _trim_optional(handle, {k for k in shapes if k} or {names[0]})
        if "" in shapes:
            if len(names) != 1 and len(shapes) == 1:
                raise InputError(f"the model has inputs {names}; name each: --input-shape NAME:DIMS")
            shapes = {names[0] if k == "" else k: v for k, v in shapes.items()}
            dtypes = {names[0] if k == "" else k: v for k, v in dtypes.items()}
        unknown = [k for k in shapes if k not in names]
        if unknown:
            raise InputError(f"--input-shape names {unknown}, but the model's inputs are {names}")
        missing = [n for n in names if n not in shapes]
        if missing and handle.example_inputs is None:
            raise InputError(f"--input-shape is missing input(s) {missing}")
        example = dict(handle.example_inputs or {})
        rng = np.random.default_rng(0)
        given = _data_arrays(data, handle) if data is not None else {}
        specs = {}
        for n, shp in shapes.items():
            arr = given.get(n)
            fixed0 = _batch_named_elsewhere(shp)
            fits = (arr is not None and arr.ndim == len(shp) and len(arr) > 0
                    and all(arr.shape[i] == d for i, d in enumerate(shp) if isinstance(d, int) and (i or fixed0)))
            concrete = tuple(_example_size(d, arr.shape[i] if fits else None) for i, d in enumerate(shp))
            dtype = np.dtype(dtypes[n]) if n in dtypes else None
            if fits:
                # --data holds this input at the stated shape: take its values, and so its dtype (token ids)
                example[n] = np.resize(arr, concrete).astype(dtype or arr.dtype)
            elif dtype is not None and dtype.kind == "b":
                example[n] = np.ones(concrete, dtype)
            elif dtype is not None and dtype.kind in "iu":  # ids 0 and 1 index any table of two rows or more
                example[n] = rng.integers(0, 2, concrete).astype(dtype)
            else:
                example[n] = rng.standard_normal(concrete).astype(dtype or np.float32)
            dims = tuple(split_dim(d)[0] if isinstance(d, str) else ("batch" if i == 0 and not fixed0 else d)
                         for i, d in enumerate(shp))
            specs[n] = TensorSpec(n, dims, str(example[n].dtype))
        handle.example_inputs = example
        handle.inputs = [specs.get(n) or _spec_from_example(n, example[n], handle) for n in names]
    elif data is not None:
        from .core.data import load_data

        optional = _optional_inputs(handle)
        tried = list(names)
        while True:  # trailing forward parameters with a default are inputs only when the data holds them
            try:
                ds = load_data(data, None if handle.tokenizer_dir is None and not isinstance(data, str)
                               else _loose(handle, tried))
                break
            except InputError:
                if len(tried) > 1 and tried[-1] in optional:
                    tried.pop()
                    continue
                raise
        names = _trim_optional(handle, set(ds.inputs) | set(tried[:1]))
        missing = [n for n in names if n not in ds.inputs]
        if missing and len(names) == 1 and len(ds.inputs) == 1:
            ds.inputs = {names[0]: next(iter(ds.inputs.values()))}
        elif missing:
            raise InputError(f"data {ds.source} does not match the model: input(s) {missing} missing; the data has {sorted(ds.inputs)}")
        example = {n: ds.inputs[n][:2] for n in names}
        handle.example_inputs = example
        handle.inputs = [_spec_from_example(n, example[n], handle) for n in names]
    if handle.example_inputs is not None and (shapes or data is not None or not handle.outputs):
        _set_output_specs(handle)  # (a loader that read the output spec already, e.g. a .pt2's recorded one, keeps it)


def _batch_named_elsewhere(shape: tuple[int | str, ...]) -> bool:
    """Whether an axis other than 0 is named ``batch``: then axis 0 is fixed unless named itself."""
    return any(isinstance(d, str) and split_dim(d)[0] == "batch" for d in shape[1:])


def _example_size(d: int | str, data_size: int | None) -> int:
    """The size to trace a dim at: a number as given; a named axis at NAME=SIZE, the data's size, or
    :data:`NAMED_DIM_SIZE` (never 1, which the exporters would fix as a constant)."""
    name, size = split_dim(d)
    if name is None:
        return int(d)
    if size is not None:
        return size
    return data_size if data_size is not None and data_size > 1 else NAMED_DIM_SIZE


def _data_arrays(data: Any, handle: ModelHandle) -> dict[str, np.ndarray]:
    """The input arrays of ``data`` by name (a lone array under another name goes to a lone input)."""
    from .core.data import load_data

    ds = load_data(data, None if handle.tokenizer_dir is None and not isinstance(data, str) else _loose(handle))
    arrays = dict(ds.inputs)
    if len(handle.input_names) == 1 and len(arrays) == 1 and handle.input_names[0] not in arrays:
        arrays = {handle.input_names[0]: next(iter(arrays.values()))}
    return arrays


def _spec_from_example(name: str, example: np.ndarray, handle: ModelHandle) -> TensorSpec:
    """Batch axis dynamic; axes the existing spec names symbolically (a sequence) stay dynamic."""
    old = next((s for s in handle.inputs if s.name == name), None)
    dims: list[int | str] = ["batch", *example.shape[1:]]
    if old is not None and len(old.shape) == example.ndim:
        dims = [o if isinstance(o, str) else d for o, d in zip(old.shape, dims, strict=True)]
    return TensorSpec(name, tuple(dims), str(example.dtype))


def _loose(handle: ModelHandle, names: list[str] | None = None) -> ModelHandle:
    """A handle whose input spec does not constrain shapes (used before shapes are known); ``names``:
    only these inputs."""
    return ModelHandle(handle.model, handle.kind, [TensorSpec(s.name, (), s.dtype) for s in handle.inputs
                                                   if names is None or s.name in names],
                       tokenizer_dir=handle.tokenizer_dir)


def _set_output_specs(handle: ModelHandle, first_name: str | None = None) -> None:
    """``handle.outputs`` from one run on its example inputs; axis 0 named ``batch`` unless every input's batch is
    fixed (``metadata["deepshrink.static_batch"]``: a program traced at a fixed batch, whose outputs keep it)."""
    if handle.example_inputs is None:
        return
    static = set(filter(None, handle.metadata.get("deepshrink.static_batch", "").split(",")))
    static_batch = bool(static) and static >= set(handle.input_names)
    try:
        outs = run_torch(handle.model, handle.example_inputs, handle.input_names)
    except InputError as exc:
        named = [f"'{d}' of {s.name} (traced at {handle.example_inputs[s.name].shape[i]})"
                 for s in handle.inputs for i, d in enumerate(s.shape)
                 if isinstance(d, str) and i > 0 and d != "batch" and s.name in handle.example_inputs]
        if not named:
            raise
        raise InputError(f"{exc}; --input-shape made {', '.join(named)} a dynamic axis — "
                         "if that axis has a fixed size, give the number") from None
    if first_name is None and len(handle.outputs) == len(outs):
        names = handle.output_names  # keep names chosen earlier (e.g. sentence_embedding)
    else:
        names = [first_name or "output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
    handle.outputs = [TensorSpec(n, (o.shape[0] if static_batch and o.ndim else "batch", *o.shape[1:]), str(o.dtype))
                      for n, o in zip(names, outs, strict=True)]


def _check_onnx_shapes(handle: ModelHandle, shapes: dict[str, tuple[int | str, ...]],
                       dtypes: dict[str, str] | None = None) -> None:
    """An ONNX file fixes which axes are dynamic: a size must fit the file's dim, a named axis must be a
    dynamic one there; named axes are drawn at their ``NAME=SIZE`` (or :data:`NAMED_DIM_SIZE`). It fixes the
    element types too: a ``:DTYPE`` given must be the file's."""
    names = handle.input_names
    if "" in shapes and len(names) == 1:
        shapes = {names[0]: shapes[""]}
        dtypes = {names[0]: dtypes[""]} if dtypes and "" in dtypes else dtypes
    for n, dtype in (dtypes or {}).items():
        spec = next((s for s in handle.inputs if s.name == n), None)
        if spec is not None and spec.dtype != dtype:
            raise InputError(f"--input-shape {n}: the ONNX file's input is {spec.describe()}, not {dtype}")
    concrete: dict[str, tuple[int, ...]] = {}
    for n, shp in shapes.items():
        spec = next((s for s in handle.inputs if s.name == n), None)
        if spec is None:
            raise InputError(f"--input-shape names {n!r}, but the model's inputs are {names}")
        given = "x".join(map(str, shp))
        # only fixed dims must match: a symbolic, unnamed (``?``) or non-positive (``-1``, Paddle2ONNX) dim is dynamic
        if len(spec.shape) != len(shp) or any(isinstance(d, int) and d > 0 and isinstance(v, int) and d != v
                                              for d, v in zip(spec.shape, shp, strict=False)):
            raise InputError(f"--input-shape {n}:{given} does not fit the model's {spec.describe()}")
        fixed = [i for i, (d, v) in enumerate(zip(spec.shape, shp, strict=True)) if isinstance(d, int) and d > 0
                 and isinstance(v, str)]
        if fixed:
            raise InputError(f"--input-shape {n}:{given} names axis {fixed[0]} dynamic, but the ONNX file fixes it "
                             f"at {spec.shape[fixed[0]]} ({spec.describe()})")
        concrete[n] = tuple(_example_size(v, None) for v in shp)
    # an input not given takes the sizes its named axes got in the inputs given (input_ids: 1x16 makes
    # attention_mask [batch, sequence] 1x16 too; it was 1x1, and the graph would not run)
    named: dict[str, int] = {}
    for n, size in concrete.items():
        spec = next(s for s in handle.inputs if s.name == n)
        named.update((d, v) for d, v in zip(spec.shape, size, strict=True) if isinstance(d, str) and d)
    shapes = concrete
    rng = np.random.default_rng(0)
    handle.example_inputs = {
        s.name: (rng.standard_normal(shapes[s.name]).astype(s.np_dtype) if s.name in shapes
                 else np.zeros(tuple(named.get(d, c) if isinstance(d, str) and d else c
                                     for d, c in zip(s.shape, s.concrete(), strict=True)), s.np_dtype))
        for s in handle.inputs}
