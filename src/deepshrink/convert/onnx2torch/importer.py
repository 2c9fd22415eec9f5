"""ONNX → ``torch.fx.GraphModule``: walk the ONNX graph in order and let one small
converter per op (``ops.py``) emit fx nodes.

Why hand-written: the ready-made ``onnx2torch`` package requires torchvision, which does not
import beside the CPU torch here (and drags in a CUDA build when installed), so it cannot be
used. This importer keeps the same idea — a table of op converters — and adds what deepshrink
needs from an imported model:

- float initializers become ``nn.Parameter``s (BatchNorm statistics become buffers), and
  Conv / Gemm / MatMul-with-constant-weight / BatchNormalization become real ``nn.Conv2d``,
  ``nn.Linear``, ``nn.BatchNorm2d`` submodules named after their ONNX weights, so the
  imported model can be fine-tuned, pruned (also structurally) and distilled like any
  torch model;
- integer initializers and ``Constant`` outputs are known at import time: a node whose
  inputs are all known is evaluated at import (constant folding of shape arithmetic);
  everything else runs in the graph, so a dynamic batch dimension stays dynamic;
- an op without a converter raises ``UnsupportedError`` naming the op and the node and
  suggesting the closest working route.
"""

from __future__ import annotations

import difflib
import keyword
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import fx, nn

from ...errors import InputError, UnsupportedError

Value = Any  # an fx.Node (computed in the graph) or a torch.Tensor (known at import time)
Converter = Callable[["Builder", "OnnxNode"], "Value | list[Value] | tuple[Value, ...]"]

CONVERTERS: dict[str, Converter] = {}

# Ops that the torch/tf exporters only emit at a high opset and decompose below it.
_OPSET_HINTS = {  # the opset that introduced the op: exporters decompose it below that
    "LayerNormalization": 17, "Gelu": 20, "GroupNormalization": 18, "RMSNormalization": 23,
    "Attention": 23, "RotaryEmbedding": 23,
}


def converter(*op_types: str) -> Callable[[Converter], Converter]:
    """Register ``fn`` as the converter of each ONNX op type in ``op_types``."""

    def deco(fn: Converter) -> Converter:
        for op in op_types:
            CONVERTERS[op] = fn
        return fn

    return deco


@dataclass
class ShapeVal:
    """A small int64 tensor known element by element at import time: each item is a Python int
    or an fx node yielding a Python int (a size of some tensor). Shape arithmetic
    (Shape → Gather → Concat → Reshape) is kept at this level, so the imported graph reshapes
    with sizes rather than data-dependent tensors — which ``torch.export`` needs."""

    items: list[Any]
    scalar: bool = False


@dataclass
class OnnxNode:
    """One ONNX node, attributes decoded to Python values."""

    op_type: str
    name: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    opset: int

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


def np_to_torch(arr: np.ndarray, what: str) -> torch.Tensor:
    """A NumPy array as a torch tensor; element types torch lacks (int2/int4, float4/float8 as
    ml_dtypes) are an ``UnsupportedError`` naming the tensor."""
    try:
        return torch.from_numpy(np.array(arr, copy=True))
    except TypeError:
        raise UnsupportedError(f"{what} has element type {arr.dtype}, which torch cannot hold") from None


def _ident(text: str, fallback: str = "v") -> str:
    s = re.sub(r"\W", "_", text).strip("_") or fallback
    if s[0].isdigit():
        s = f"_{s}"
    if keyword.iskeyword(s):
        s = f"{s}_"
    return s


class Builder:
    """Holds the fx graph under construction and the root module that owns its weights."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.env: dict[str, Value] = {}
        self.initializers: dict[str, onnx.TensorProto] = {i.name: i for i in model.graph.initializer}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.uses: dict[str, int] = {}
        self.shapes: dict[str, ShapeVal] = {}
        # a scalar of shape arithmetic cast to a float type (YOLO heads: Range(0.0, float(W), 1.0)): its
        # value stays a symbolic size for the converters that can use one
        self.float_shapes: dict[str, ShapeVal] = {}
        self.ranks: dict[str, int] = {}
        self.static_dims: dict[str, list[int | None]] = {}
        self.buffer_inputs: set[str] = set()  # initializers that are statistics, not trainable
        self._const_attrs: dict[int, fx.Node] = {}
        self._keep_alive: list[torch.Tensor] = []  # keeps id()s in _const_attrs valid

    # ---------------------------------------------------------------- values
    def value(self, name: str) -> Value:
        if name == "":
            return None
        if name in self.env:
            return self.env[name]
        if name in self.shapes:  # shape arithmetic consumed by an op that wants a tensor
            from .runtime import int_tensor

            sv = self.shapes[name]
            v = self.call(int_tensor, list(sv.items), sv.scalar)
            self.env[name] = v
            return v
        if name in self.initializers:
            v = self._initializer(name)
            self.env[name] = v
            return v
        raise InputError(f"ONNX value '{name}' is used before it is produced (graph not topologically sorted?)")

    def tensor_of(self, name: str) -> torch.Tensor:
        return np_to_torch(numpy_helper.to_array(self.initializers[name]), f"initializer '{name}'")

    def _initializer(self, name: str) -> Value:
        t = self.tensor_of(name)
        if not t.dtype.is_floating_point or t.dim() == 0 or t.numel() == 0:
            # integer data, scalars and empty tensors (Paddle2ONNX's Resize roi/scales placeholders) are
            # import-time constants; empty parameters share a null storage that torch.export.save cannot
            # package ("numel: integer multiplication overflow")
            return t
        if name in self.buffer_inputs:
            return self.get_attr(name, t, buffer=True)
        return self.get_attr(name, nn.Parameter(t), buffer=False)

    def get_attr(self, hint: str, t: torch.Tensor, buffer: bool) -> fx.Node:
        target = self._register(hint, t, buffer)
        return self.graph.get_attr(target)

    def _register(self, hint: str, t: torch.Tensor, buffer: bool) -> str:
        parts = [_ident(p) for p in re.split(r"[./]", hint) if p] or ["w"]
        mod: nn.Module = self.root
        for p in parts[:-1]:
            sub = getattr(mod, p, None) if p in mod._modules else None
            if sub is None:
                if hasattr(mod, p):  # clashes with a tensor: fall back to a flat name
                    return self._register("_".join(parts), t, buffer)
                sub = nn.Module()
                mod.add_module(p, sub)
            mod = sub
        leaf = parts[-1]
        base, k = leaf, 1
        while hasattr(mod, leaf):
            leaf = f"{base}_{k}"
            k += 1
        if buffer:
            mod.register_buffer(leaf, t)
        else:
            mod.register_parameter(leaf, t if isinstance(t, nn.Parameter) else nn.Parameter(t))
        return ".".join([*parts[:-1], leaf])

    def add_module(self, hint: str, module: nn.Module) -> str:
        name = _ident("_".join(p for p in re.split(r"[./:]", hint) if p), "m")
        # nest like the original module path where it is free: fc1.weight -> module "fc1"
        base, k = name, 1
        while hasattr(self.root, name):
            name = f"{base}_{k}"
            k += 1
        self.root.add_module(name, module)
        return name

    def lift(self, v: Any) -> Any:
        """Turn import-time tensors inside ``v`` into buffers the graph can read."""
        if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter):
            key = id(v)
            if key not in self._const_attrs:
                self._keep_alive.append(v)
                target = self._register("_const", v.detach().clone(), buffer=True)
                self._const_attrs[key] = self.graph.get_attr(target)
            return self._const_attrs[key]
        if isinstance(v, (list, tuple)):
            return type(v)(self.lift(i) for i in v)
        if isinstance(v, dict):
            return {k: self.lift(i) for k, i in v.items()}
        return v

    @staticmethod
    def is_node(v: Any) -> bool:
        if isinstance(v, fx.Node):
            return True
        if isinstance(v, (list, tuple)):
            return any(Builder.is_node(i) for i in v)
        if isinstance(v, dict):
            return any(Builder.is_node(i) for i in v.values())
        return False

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Value:
        """Emit ``fn(*args, **kwargs)`` into the graph, or evaluate it now if no input is a graph node."""
        if not self.is_node(args) and not self.is_node(kwargs):
            with torch.no_grad():
                return fn(*args, **kwargs)
        return self.graph.call_function(fn, self.lift(args), self.lift(kwargs))

    def call_module(self, target: str, *args: Any) -> fx.Node:
        return self.graph.call_module(target, self.lift(args))

    def sym(self, name: str) -> ShapeVal | None:
        """``name`` as shape arithmetic: a ``ShapeVal``, or a known int tensor of rank <= 1; else None."""
        if not name:
            return None
        if name in self.shapes:
            return self.shapes[name]
        if name in self.env or name in self.initializers:
            v = self.value(name)
            if self.known(v) and isinstance(v, torch.Tensor) and not v.dtype.is_floating_point and v.dim() <= 1 \
                    and v.dtype != torch.bool:
                return ShapeVal([int(i) for i in v.reshape(-1).tolist()], v.dim() == 0)
        return None

    def known(self, v: Value) -> bool:
        return v is not None and not self.is_node(v)

    def getitem(self, v: Value, i: int) -> Value:
        import operator

        return self.call(operator.getitem, v, i)


def _attr_value(a: onnx.AttributeProto) -> Any:
    if a.type == onnx.AttributeProto.TENSOR:
        arr = numpy_helper.to_array(a.t)
        if arr.dtype.kind in "OSU":  # string tensors: no torch equivalent; reported by the converter
            return a
        return np_to_torch(arr, f"attribute '{a.name}'")
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        return a  # sub-graphs: not supported by any converter, reported by name
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [s.decode("utf-8") for s in v]
    return v


def unsupported_message(node: OnnxNode) -> str:
    where = f"ONNX op '{node.op_type}'" + (f" (domain '{node.domain}')" if node.domain not in ("", "ai.onnx") else "")
    msg = f"{where} in node '{node.name or node.outputs[0]}' has no PyTorch converter"
    if node.domain.startswith("com.microsoft"):
        return (msg + "; it is an ONNX Runtime contrib op (from ORT graph optimization, or from QOperator-format "
                "quantization) — import the model as exported, before ORT optimization; for quantized models "
                "use the QDQ format (quant_format=QDQ), which imports; or keep this model in ONNX Runtime")
    if node.domain not in ("", "ai.onnx"):
        return (msg + f"; the importer covers the standard ai.onnx domain only — keep this model in ONNX Runtime "
                f"or a runtime that implements '{node.domain}'")
    hint = ""
    if node.op_type in _OPSET_HINTS:
        hint = f"; re-export with opset < {_OPSET_HINTS[node.op_type]} so the exporter decomposes it into basic ops"
    close = difflib.get_close_matches(node.op_type, list(CONVERTERS), n=1, cutoff=0.75)
    if close:
        hint += f"; the closest supported op is '{close[0]}'"
    return (msg + hint + "; this ONNX file still runs in ONNX Runtime and converts to OpenVINO IR (.xml) — "
            f"deepshrink's ONNX → PyTorch route supports {len(CONVERTERS)} ops (see deepshrink.convert.onnx2torch.SUPPORTED_OPS)")


def onnx_node(n: onnx.NodeProto, opset: int) -> OnnxNode:
    """``n`` with its attributes decoded (sub-graphs stay ``AttributeProto``s)."""
    return OnnxNode(n.op_type, n.name, n.domain, list(n.input), list(n.output),
                    {a.name: _attr_value(a) for a in n.attribute}, opset)


def _subgraph_refs(n: OnnxNode) -> list[str]:
    """Names the sub-graphs of ``n`` (If branches, Loop/Scan bodies) read from the enclosing scope."""
    refs: list[str] = []
    for a in n.attrs.values():
        if isinstance(a, onnx.AttributeProto):
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                refs += [r for r in outer_references(sub) if r not in refs]
    return refs


def bind(b: Builder, name: str, v: Any) -> None:
    """Make ``v`` (a graph value, an import-time tensor, or shape arithmetic) the value of ``name``."""
    if not name:
        return
    if isinstance(v, ShapeVal):
        if all(isinstance(i, int) for i in v.items):  # fully static: a plain constant
            t = torch.tensor(v.items, dtype=torch.int64)
            b.env[name] = t.reshape(()) if v.scalar else t
        else:
            b.shapes[name] = v
        return
    if isinstance(v, fx.Node) and v.op == "call_function":
        v.name = b.graph._graph_namespace.create_name(_ident(name), v)  # readable code
    b.env[name] = v


def raw_value(b: Builder, name: str) -> Any:
    """The value of ``name`` as the converters left it: shape arithmetic stays a ``ShapeVal``."""
    return b.shapes[name] if name in b.shapes else b.value(name)


def convert_nodes(b: Builder, nodes: list[OnnxNode]) -> None:
    """Emit every node of ``nodes`` (in order) into ``b``'s graph, binding its outputs. Each fx node
    a converter emits is tagged with the ONNX node it came from (``meta["onnx_node"]``: name and
    op type), so a later failure (``torch.export``) can be reported by ONNX node."""
    for n in nodes:
        fn = CONVERTERS.get(n.op_type) if n.domain in ("", "ai.onnx") else None
        if fn is None:
            raise UnsupportedError(unsupported_message(n))
        before = len(b.graph.nodes)
        try:
            out = fn(b, n)
        except (UnsupportedError, InputError):
            raise
        except NotImplementedError as exc:
            raise UnsupportedError(f"{unsupported_message(n).split(' has no')[0]} uses a variant not supported: {exc}") from None
        tag = (n.name or (n.outputs[0] if n.outputs else "?"), n.op_type)
        for k, node in enumerate(reversed(b.graph.nodes)):
            if k >= len(b.graph.nodes) - before:
                break
            node.meta.setdefault("onnx_node", tag)
        outs = list(out) if isinstance(out, tuple) else [out]  # a list is one value: a sequence
        for name, v in zip(n.outputs, outs, strict=False):
            bind(b, name, v)


def _infer_ranks(b: Builder, proto: onnx.ModelProto) -> None:
    """Ranks (and static sizes) of every value shape inference can tell: ONNX's own, then, for the values
    it leaves without a rank (after a Reshape whose target is computed at run time, as Paddle2ONNX
    writes them), ONNX Runtime's symbolic shape inference. A value without a rank makes its ``Shape``
    a tensor that ``torch.export`` cannot specialize."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:
        inferred = proto
    _take_ranks(b, inferred.graph)
    outputs = {o for n in proto.graph.node for o in n.output if o}
    if all(o in b.ranks for o in outputs):
        return
    from ...backends.onnx import symbolic_shapes

    sym = symbolic_shapes(proto)
    if sym is not None:
        _take_ranks(b, sym.graph, only_new=True)


def _take_ranks(b: Builder, g: onnx.GraphProto, *, only_new: bool = False) -> None:
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if not t.HasField("shape") or (only_new and vi.name in b.ranks):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        b.ranks[vi.name] = len(dims)
        b.static_dims[vi.name] = dims


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    from ...backends.onnx import load_onnx

    p = Path(model)
    if not p.is_file():
        raise InputError(f"ONNX file {p} does not exist")
    return load_onnx(p)  # the checked loader: external data stays inside the model's folder


def onnx_to_torch(model: onnx.ModelProto | str | Path, *, tuple_outputs: bool = False) -> fx.GraphModule:
    """Import an ONNX model (a ``ModelProto`` or a path) as a runnable, trainable ``GraphModule``.

    ``forward`` takes the graph inputs positionally (also by their sanitized names) and returns
    one tensor, or a tuple when the graph has several outputs (always a tuple with
    ``tuple_outputs``, as control-flow bodies need). The module is in eval mode.
    """
    proto = _load(model)  # (the converters are registered by the package: onnx2torch/__init__ imports ops)
    b = Builder(proto)
    g = proto.graph
    nodes = [onnx_node(n, b.opset) for n in g.node]
    _infer_ranks(b, proto)
    for n in nodes:
        for i in [*n.inputs, *_subgraph_refs(n)]:
            b.uses[i] = b.uses.get(i, 0) + 1
        if n.op_type == "BatchNormalization":
            b.buffer_inputs.update(n.inputs[3:5])
    init_names = set(b.initializers)
    input_names: list[str] = []
    for vi in g.input:
        if vi.name in init_names:
            continue
        ph = b.graph.placeholder(_ident(vi.name, "x"))
        b.env[vi.name] = ph
        input_names.append(vi.name)
    convert_nodes(b, nodes)
    results = []
    for vo in g.output:
        v = b.value(vo.name)
        results.append(b.lift(v) if not b.is_node(v) else v)
    b.graph.output(results[0] if len(results) == 1 and not tuple_outputs else tuple(results))
    gm = fx.GraphModule(b.root, b.graph, class_name="ImportedOnnx")
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.onnx_input_names = input_names  # type: ignore[attr-defined]
    gm.onnx_output_names = [o.name for o in g.output]  # type: ignore[attr-defined]
    gm.meta["deepshrink.imported_from"] = "onnx"  # (meta survives copy.deepcopy; attributes do not)
    return gm.eval()


def outer_references(graph: onnx.GraphProto) -> list[str]:
    """Names a sub-graph (If/Loop/Scan body) reads from the enclosing scope, in first-use order."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    out: list[str] = []

    def visit(g: onnx.GraphProto, local: set[str]) -> None:
        local = set(local) | {i.name for i in g.input} | {i.name for i in g.initializer}
        for n in g.node:
            for name in n.input:
                if name and name not in local and name not in out:
                    out.append(name)
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    visit(sub, local)
            local.update(n.output)
        for o in g.output:  # a branch may return an enclosing value as it is
            if o.name and o.name not in local and o.name not in out:
                out.append(o.name)

    visit(graph, defined)
    return out


def import_subgraph(b: Builder, graph: onnx.GraphProto) -> tuple[fx.GraphModule, list[str]]:
    """A control-flow body as its own GraphModule taking (formal inputs..., outer references...)."""
    outer = outer_references(graph)
    g = onnx.GraphProto()
    g.CopyFrom(graph)
    for name in outer:
        g.input.append(onnx.helper.make_empty_tensor_value_info(name))
    sub = onnx.helper.make_model(g, opset_imports=list(b.model.opset_import))
    return onnx_to_torch(sub, tuple_outputs=True).train(False), outer


def _rename_refs(graph: onnx.GraphProto, ren: dict[str, str]) -> None:
    """In place: references of ``graph`` (and of its own sub-graphs) to enclosing names in ``ren``
    are renamed; names the graph defines itself shadow them."""
    local = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    for n in graph.node:
        for k, name in enumerate(n.input):
            if name and name not in local and name in ren:
                n.input[k] = ren[name]
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _rename_refs(sub, {k: v for k, v in ren.items() if k not in local})
        local.update(n.output)
    for o in graph.output:
        if o.name not in local and o.name in ren:
            o.name = ren[o.name]


def inline_graph(b: Builder, graph: onnx.GraphProto, scope: str, formal: list[Any],
                 init_scope: str | None = None) -> list[Any]:
    """Convert a control-flow body's nodes straight into ``b``'s graph (no sub-module), its formal
    inputs bound to ``formal``; returns the values of its outputs (``ShapeVal`` where shape
    arithmetic). Used where the control flow is decided at import time: an ``If`` on a constant
    condition, a ``Loop`` with a constant trip count (one call per iteration: unrolling).

    Names the body defines get the prefix ``scope`` (node names too, so errors name e.g.
    ``refine3/iter2/MatMul_0``); its initializers get ``init_scope`` (default ``scope``), so the
    iterations of an unrolled loop share one parameter; enclosing names are read as they are.
    """
    init_scope = scope if init_scope is None else init_scope
    ren: dict[str, str] = {i.name: f"{init_scope}{i.name}" for i in graph.initializer}
    ren.update({i.name: f"{scope}{i.name}" for i in graph.input})
    ren.update({o: f"{scope}{o}" for n in graph.node for o in n.output if o})
    for init in graph.initializer:
        b.initializers.setdefault(ren[init.name], init)
    if len(formal) != len(graph.input):
        raise InputError(f"sub-graph {graph.name!r} takes {len(graph.input)} inputs, given {len(formal)}")
    for vi, v in zip(graph.input, formal, strict=True):
        bind(b, ren[vi.name], v)
    nodes = []
    for proto in graph.node:
        c = onnx.NodeProto()
        c.CopyFrom(proto)
        c.name = f"{scope}{proto.name or (proto.output[0] if proto.output else proto.op_type)}"
        c.input[:] = [ren.get(i, i) for i in proto.input]
        c.output[:] = [ren.get(o, o) for o in proto.output]
        for a in c.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _rename_refs(sub, ren)
        nodes.append(onnx_node(c, b.opset))
    convert_nodes(b, nodes)
    return [raw_value(b, ren.get(o.name, o.name)) for o in graph.output]
