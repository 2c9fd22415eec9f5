"""The dependency graph: which parameter slices must be removed together.

The model is captured with ``torch.fx`` (symbolic trace + ``ShapeProp`` on example inputs)
and every tensor gets a *channel layout*: which channel sets its channel dimension holds,
at which offsets, each channel spread over ``repeat`` positions (after a flatten). A
producer (Conv/Linear output) creates a channel set; per-channel ops (BatchNorm, depthwise
conv, activations, pooling) carry it; a residual add / broadcast multiply *unites* the sets
of both operands (they must keep the same channels); ``cat`` along channels concatenates
layouts (offset mapping); a consumer (next Conv/Linear input) records which input columns
each channel owns. A union of sets is a :class:`Group`: its channels are removed from every
member at once.

Transformer attention heads and FFN neurons are found by module structure, because attention
does not map to channel layouts and HF models do not symbolic-trace: Hugging Face BERT-style blocks
(``query``/``key``/``value`` + the block's ``output.dense``; ``intermediate.dense`` →
``output.dense``), every ``nn.MultiheadAttention`` (its heads, swapped for a smaller module, see
:mod:`.attention`) and the FFN of ``nn.TransformerEncoderLayer``/``DecoderLayer`` (``linear1`` →
``linear2``). Those modules are opaque to the trace: the residual width they read is left as it is.

Anything the analysis does not understand blocks the channel sets it touches (they are left
unpruned) and is reported by name — never a crash, never a silently wrong model. The
analysis is hand-written (Torch-Pruning has one) because deepshrink's per-layer search needs
the same groups, and the peer's graph is tied to its own pruner objects.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.nn import functional as F

from ...backends.pruned_modules import HeadPrunedAttention, unsupported_reason
from ...backends.torch import is_hf_model
from ...errors import first_line

# "out" (weight dim 0 + bias), "in" (weight dim 1), "channel" (per-channel params), "heads" (a BERT-style
# attention's head count), "mha_heads" (the heads of an nn.MultiheadAttention, swapped whole; see attention.py)
Role = str


@dataclass(frozen=True)
class Seg:
    set_id: int
    size: int
    repeat: int = 1


@dataclass(frozen=True)
class Layout:
    dim: int  # channel dimension (non-negative) of the tensor
    segs: tuple[Seg, ...]

    def aligned(self, ndim_from: int, ndim_to: int) -> Layout:
        return Layout(self.dim + (ndim_to - ndim_from), self.segs)


@dataclass
class Member:
    module: str
    role: Role
    offset: int = 0
    repeat: int = 1


@dataclass
class Group:
    """Channels that must be removed together from every member."""

    id: int
    size: int
    kind: str  # "channel", "head", "ffn"
    members: list[Member] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    keep: torch.Tensor | None = None  # kept channel indices once a plan is made

    @property
    def prunable(self) -> bool:
        return not self.blocked and any(m.role in ("out", "mha_heads") for m in self.members)

    @property
    def name(self) -> str:
        heads = [m.module for m in self.members if m.role in ("heads", "mha_heads")]
        if heads:
            return heads[0]
        outs = [m.module for m in self.members if m.role == "out"]
        return outs[0] if outs else (self.members[0].module if self.members else f"group{self.id}")

    def describe(self) -> str:
        mods = sorted({f"{m.module}:{m.role}" for m in self.members})
        return f"{self.kind} group {self.name} ({self.size}): " + ", ".join(mods)


@dataclass
class DependencyGraph:
    groups: list[Group]
    warnings: list[str]
    traced: bool
    fits: list[Any] = field(default_factory=list)  # reconstruct.Fit per re-fitted layer, when asked

    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]


_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                nn.Hardsigmoid, nn.Mish, nn.ELU, nn.PReLU, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity,
                nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                nn.AdaptiveMaxPool2d)
_ELEMENTWISE = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
                operator.isub, operator.neg, torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid,
                torch.tanh, torch.clamp, torch.neg, F.relu, F.relu6, F.gelu, F.silu, F.leaky_relu, F.hardswish,
                F.hardsigmoid, F.elu, F.dropout, F.sigmoid, F.tanh, F.mish,
                F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
                F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "add", "add_", "mul", "mul_", "sub", "div", "contiguous",
                        "clone", "clamp", "float", "detach", "neg"}
_RESHAPE = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}
_PAD = {F.pad}  # spatial padding keeps the channels (checked on the shapes: a pad of the channel dim blocks)
_PAD_MODULES = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
                nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
                nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)
_PERMUTE = {torch.permute, torch.transpose, torch.swapaxes, torch.swapdims}
_PERMUTE_METHODS = {"permute", "transpose", "swapaxes", "swapdims"}
_REDUCE = {torch.mean, torch.sum, torch.amax}
_REDUCE_METHODS = {"mean", "sum", "amax"}


class _Analysis:
    def __init__(self, model: nn.Module, protected: set[str]) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.protected = protected
        self.parent: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.members: dict[int, list[Member]] = {}
        self.blocked: dict[int, list[str]] = {}
        self.kinds: dict[int, str] = {}
        self.warnings: list[str] = []
        self.calls: dict[str, int] = {}
        self.split_into: dict[int, tuple[int, int]] = {}  # a root split in two (see `split`)

    # -- union-find over channel sets -----------------------------------------------------
    def new_set(self, size: int, kind: str = "channel") -> int:
        sid = len(self.parent)
        self.parent[sid] = sid
        self.sizes[sid] = size
        self.members[sid] = []
        self.blocked[sid] = []
        self.kinds[sid] = kind
        return sid

    def find(self, sid: int) -> int:
        while self.parent[sid] != sid:
            self.parent[sid] = self.parent[self.parent[sid]]
            sid = self.parent[sid]
        return sid

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        self.members[ra] += self.members.pop(rb)
        self.blocked[ra] += self.blocked.pop(rb)

    def block(self, layout: Layout | None, reason: str) -> None:
        if layout is None:
            return
        for s in layout.segs:
            r = self.find(s.set_id)
            if reason not in self.blocked[r]:
                self.blocked[r].append(reason)

    def resolve(self, layout: Layout) -> Layout:
        """The layout with every split set replaced by its parts."""
        segs: list[Seg] = []
        stack = list(reversed(layout.segs))
        while stack:
            seg = stack.pop()
            r = self.find(seg.set_id)
            if r in self.split_into:
                a, b = self.split_into[r]
                stack += [Seg(b, self.sizes[b], seg.repeat), Seg(a, self.sizes[a], seg.repeat)]
            else:
                segs.append(Seg(r, self.sizes[r], seg.repeat))
        return Layout(layout.dim, tuple(segs))

    def split(self, sid: int, k: int) -> None:
        """Cut a channel set into its first ``k`` channels and the rest, rewriting its members'
        offsets (used when an elementwise op meets a concat on the other side)."""
        r = self.find(sid)
        n = self.sizes[r]
        a, b = self.new_set(k, self.kinds[r]), self.new_set(n - k, self.kinds[r])
        for m in self.members[r]:
            self.members[a].append(Member(m.module, m.role, m.offset, m.repeat))
            self.members[b].append(Member(m.module, m.role, m.offset + k * m.repeat, m.repeat))
        self.blocked[a] = list(self.blocked[r])
        self.blocked[b] = list(self.blocked[r])
        self.members[r] = []
        self.split_into[r] = (a, b)

    def add_member(self, sid: int, member: Member) -> None:
        self.members[self.find(sid)].append(member)

    def members_from_layout(self, layout: Layout, module: str, role: Role) -> None:
        off = 0
        for s in layout.segs:
            self.add_member(s.set_id, Member(module, role, off, s.repeat))
            off += s.size * s.repeat

    # -- groups ------------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        roots = sorted({self.find(s) for s in self.parent} - set(self.split_into))
        out = []
        for r in roots:
            g = Group(len(out), self.sizes[r], self.kinds[r], list(self.members[r]), list(self.blocked[r]))
            mods = {m.module for m in g.members}
            for mod in sorted(mods):
                if mod in self.protected:
                    g.blocked.append(f"{mod} is protected")
                if self.calls.get(mod, 0) > 1:
                    g.blocked.append(f"{mod} is called {self.calls[mod]} times (shared weights)")
            out.append(g)
        return out


# ops that cut a tensor into a tuple of pieces of fixed sizes (their result has no single shape)
_SPLITS = {torch.split, torch.functional.split, torch.chunk, torch.tensor_split, torch.unbind}
_SPLIT_METHODS = {"split", "chunk", "tensor_split", "unbind", "split_with_sizes"}


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    tm = node.meta.get("tensor_meta")
    shape = getattr(tm, "shape", None)
    return tuple(shape) if shape is not None else None


def _nodes_in(args: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: out.append(n) or n)
    return out


def _target_name(node: fx.Node) -> str:
    t = node.target
    if node.op == "call_module":
        return f"module {t}"
    if node.op == "call_method":
        return f"method .{t}()"
    return f"function {getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', str(t))}".replace("_operator.", "")


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def _transformer_groups(model: nn.Module, ana: _Analysis) -> set[str]:
    """Attention-head and FFN-neuron groups of BERT-style blocks, found by structure.
    Returns the names of the block modules so the graph trace treats them as opaque."""
    mods = ana.modules
    leaves: set[str] = set()
    for name, m in mods.items():
        heads, hsize = getattr(m, "num_attention_heads", None), getattr(m, "attention_head_size", None)
        if not (isinstance(heads, int) and isinstance(hsize, int)):
            continue
        parent = name.rpartition(".")[0]
        prefix = f"{name}." if name else ""
        # BERT: query/key/value, the output projection in the parent block (output.dense);
        # MPNet: q/k/v/o in the one module
        layouts = ((("query", "key", "value"), f"{parent}.output.dense" if parent else "output.dense"),
                   (("q", "k", "v"), prefix + "o"))
        found = next((lay for lay in layouts if all(isinstance(getattr(m, a, None), nn.Linear) for a in lay[0])), None)
        if found is None:
            continue
        qkv, out_name = found
        out = mods.get(out_name)
        if not isinstance(out, nn.Linear) or out.in_features != heads * hsize or getattr(m, qkv[0]).out_features != heads * hsize:
            ana.warnings.append(f"attention module {name!r}: no matching output projection found; its heads are left unpruned")
            continue
        sid = ana.new_set(heads, "head")
        for lin in qkv:
            ana.add_member(sid, Member(prefix + lin, "out", 0, hsize))
        ana.add_member(sid, Member(out_name, "in", 0, hsize))
        ana.add_member(sid, Member(name, "heads", 0, hsize))
        leaves.add(parent or name)
    for name, m in mods.items():
        if isinstance(m, nn.MultiheadAttention):
            sid = ana.new_set(m.num_heads, "head")
            ana.add_member(sid, Member(name, "mha_heads", 0, m.embed_dim // max(m.num_heads, 1)))
            why = unsupported_reason(m) or ("it is the whole model" if not name else None)
            if why:
                ana.block(Layout(0, (Seg(sid, m.num_heads),)), f"unsupported attention {name or type(m).__name__} ({why})")
            leaves.add(name)
        elif isinstance(m, HeadPrunedAttention):  # pruned before: opaque, its heads stay as they are
            leaves.add(name)
        elif isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            l1, l2 = getattr(m, "linear1", None), getattr(m, "linear2", None)
            if isinstance(l1, nn.Linear) and isinstance(l2, nn.Linear) and l1.out_features == l2.in_features:
                sid = ana.new_set(l1.out_features, "ffn")
                prefix = f"{name}." if name else ""
                ana.add_member(sid, Member(prefix + "linear1", "out"))
                ana.add_member(sid, Member(prefix + "linear2", "in"))
            leaves.add(name)
    for name, m in mods.items():
        inter = getattr(getattr(m, "intermediate", None), "dense", None)
        outd = getattr(getattr(m, "output", None), "dense", None)
        if isinstance(inter, nn.Linear) and isinstance(outd, nn.Linear) and inter.out_features == outd.in_features:
            sid = ana.new_set(inter.out_features, "ffn")
            prefix = f"{name}." if name else ""
            ana.add_member(sid, Member(prefix + "intermediate.dense", "out"))
            ana.add_member(sid, Member(prefix + "output.dense", "in"))
            leaves.update({prefix + "intermediate", prefix + "output"})
    return leaves


def _capture(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], leaves: set[str]) -> fx.GraphModule:
    """``model`` as a ``GraphModule`` with ``leaves`` opaque, shapes propagated on ``example_inputs`` (eval mode,
    no gradient; the mode is given back)."""
    if isinstance(model, fx.GraphModule) and not leaves:  # already a graph (an ONNX import): read as it is
        gm = model  # (tracing it again would run its helpers on proxies)
    else:
        graph = _Tracer(leaves).trace(model, concrete_args=_defaults_beyond(model, len(example_inputs)))
        gm = fx.GraphModule(model, graph)
    from torch.fx.passes.shape_prop import ShapeProp

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    finally:
        model.train(was_training)
    return gm


def _hf_backbones(model: nn.Module, leaves: set[str]) -> set[str]:
    """The outermost submodules (not ``model`` itself) that are Hugging Face models
    (:func:`~deepshrink.backends.torch.is_hf_model`) and hold transformer blocks in ``leaves``."""
    found: set[str] = set()
    for name, m in model.named_modules():
        if not name or any(name.startswith(f"{f}.") for f in found):
            continue
        if is_hf_model(m) and any(leaf.startswith(f"{name}.") for leaf in leaves):
            found.add(name)
    return found


def build_graph(model: nn.Module, example_inputs: tuple[torch.Tensor, ...] | None, *,
                protected: set[str] | None = None) -> DependencyGraph:
    """Analyse ``model`` (run on ``example_inputs``) into groups of coupled channels."""
    ana = _Analysis(model, protected or set())
    leaves = _transformer_groups(model, ana)
    traced = False
    if example_inputs is not None:
        # a Hugging Face model inside a wrapper (a sentence encoder's pooling, a task head) cannot be traced
        # whole (its mask helpers slice with traced sizes); its blocks are found by structure, so on failure
        # the trace is tried again with that model opaque, for what the wrapper adds around it
        tries = [leaves] + ([leaves | hf] if leaves and (hf := _hf_backbones(model, leaves)) else [])
        for i, opaque in enumerate(tries):
            try:
                gm = _capture(model, example_inputs, opaque)
                traced, leaves = True, opaque
                break
            except Exception as exc:  # noqa: BLE001 - any capture failure means "leave it alone"
                if i + 1 < len(tries):
                    continue
                first = first_line(exc, 160) if str(exc).strip() else ""
                ana.warnings.append(f"graph capture of {type(model).__name__} failed ({type(exc).__name__}: "
                                    f"{first}); only transformer heads/FFN neurons found by structure are pruned")
        if traced:
            _walk(gm.graph, ana, leaves, own_graph=gm is model)
            if gm is model:
                model.recompile()  # reshapes to a fixed channel count now read -1 (see _fixed_size_reshape)
    else:
        ana.warnings.append("no example inputs to trace the model with (pass example_inputs=(x,) or data=): "
                            "only transformer heads/FFN neurons found by structure are pruned")
    groups = ana.groups()
    left: dict[str, list[str]] = {}  # one warning per reason, naming every group it blocks
    for g in groups:
        for r in g.blocked:
            if r.startswith("unsupported"):
                left.setdefault(r, [])
                if f"{g.kind} group {g.name}" not in left[r]:
                    left[r].append(f"{g.kind} group {g.name}")
    for r, names in left.items():
        ana.warnings.append(f"{r}: {', '.join(names)} left unpruned")
    # recurrent layers are not taken apart (their gates couple every hidden unit across time steps): say so,
    # with their share of the weights, rather than leave a model that is mostly LSTM unpruned in silence
    total = sum(p.numel() for p in model.parameters()) or 1
    for name, mod in model.named_modules():
        if isinstance(mod, nn.RNNBase):
            share = sum(p.numel() for p in mod.parameters()) / total
            ana.warnings.append(f"recurrent layer {name} ({type(mod).__name__}, {100 * share:.0f}% of the weights) "
                                "left unpruned: structured pruning does not remove LSTM/GRU/RNN hidden units")
    return DependencyGraph(groups, ana.warnings, traced)


def _defaults_beyond(model: nn.Module, given: int) -> dict[str, Any] | None:
    """``forward``'s parameters past the ``given`` positional inputs that have defaults (e.g. ``embed=False``),
    fixed at those defaults for the trace: the model runs as it is called with ``given`` inputs, and a branch
    on such a flag (``if embed:``) no longer stops the capture."""
    from ...backends.torch import forward_arg_names, forward_defaults

    defaults = forward_defaults(model)
    fixed = {n: defaults[n] for n in forward_arg_names(model)[given:] if n in defaults}
    return fixed or None


class _Env(dict):
    """Node → layout; reads resolve split sets so every consumer sees the current sets."""

    def __init__(self, ana: _Analysis) -> None:
        super().__init__()
        self.ana = ana

    def get(self, key: Any, default: Any = None) -> Any:
        value = super().get(key, default)
        return self.ana.resolve(value) if isinstance(value, Layout) else value


def _walk(graph: fx.Graph, ana: _Analysis, leaves: set[str], *, own_graph: bool = False) -> None:
    """Give every node of ``graph`` its channel layout, recording groups in ``ana``. ``own_graph``: ``graph`` is
    the model's own (an imported ``GraphModule``), so a reshape to a fixed channel count may be rewritten."""
    env: dict[fx.Node, Layout | None] = _Env(ana)

    def lay(n: Any) -> Layout | None:
        return env.get(n) if isinstance(n, fx.Node) else None

    for node in graph.nodes:
        shape = _shape(node)
        ins = [n for n in _nodes_in((node.args, node.kwargs))]
        in_layouts = [(n, env.get(n)) for n in ins if env.get(n) is not None]
        result: Layout | None = None
        what = _target_name(node) if node.op in ("call_module", "call_method", "call_function") else node.op

        def unsupported(reason: str | None = None, in_layouts: list = in_layouts, what: str = what) -> None:
            for _, lo in in_layouts:
                ana.block(lo, f"unsupported {reason or what}")

        if node.op in ("placeholder", "get_attr"):
            result = None
        elif node.op == "output":
            for _, lo in in_layouts:
                ana.block(lo, "reaches the model output")
        elif node.op == "call_module":
            name = str(node.target)
            ana.calls[name] = ana.calls.get(name, 0) + 1
            mod = ana.modules[name]
            x = node.args[0] if node.args else None
            xl, xs = lay(x), _shape(x)
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and shape is not None:
                if xl is not None and (xl.dim != 1 or any(s.repeat != 1 for s in xl.segs)):
                    unsupported(f"channel layout into {name}")
                    xl = None
                if mod.groups == 1:
                    if xl is not None:
                        ana.members_from_layout(xl, name, "in")
                    sid = ana.new_set(mod.out_channels)
                    ana.add_member(sid, Member(name, "out"))
                    result = Layout(1, (Seg(sid, mod.out_channels),))
                elif mod.groups == mod.in_channels == mod.out_channels and xl is not None:
                    ana.members_from_layout(xl, name, "channel")
                    result = xl
                else:
                    why = (f"depthwise convolution {name} (its input's channels were not followed)"
                           if mod.groups == mod.in_channels == mod.out_channels else f"grouped convolution {name}")
                    unsupported(why)
                    sid = ana.new_set(mod.out_channels)
                    ana.add_member(sid, Member(name, "out"))
                    ana.block(Layout(1, (Seg(sid, mod.out_channels),)), f"unsupported {why}")
                    result = Layout(1, (Seg(sid, mod.out_channels),))
            elif isinstance(mod, nn.Linear) and shape is not None and xs is not None:
                if xl is not None and xl.dim != len(xs) - 1:
                    unsupported(f"channel layout into {name}")
                    xl = None
                if xl is not None:
                    ana.members_from_layout(xl, name, "in")
                sid = ana.new_set(mod.out_features)
                ana.add_member(sid, Member(name, "out"))
                result = Layout(len(shape) - 1, (Seg(sid, mod.out_features),))
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm) or (isinstance(mod, nn.PReLU)
                                                                       and mod.num_parameters > 1):
                # per-channel parameters on axis 1: BatchNorm's statistics and affine, PReLU's slopes (MTCNN)
                if xl is not None and xl.dim == 1 and all(s.repeat == 1 for s in xl.segs):
                    ana.members_from_layout(xl, name, "channel")
                    result = xl
                else:
                    unsupported()
            elif isinstance(mod, (*_ACT_MODULES, *_PAD_MODULES)):  # a per-channel PReLU is taken above
                result = _passthrough(xl, xs, shape)
                if result is None and xl is not None:
                    unsupported()
            elif isinstance(mod, nn.Flatten):
                result = _reshape(xl, xs, shape)
                if result is None and xl is not None:
                    unsupported()
            elif name in leaves:  # heads / FFN found by structure; the residual width it reads stays
                for _, lo in in_layouts:
                    ana.block(lo, f"feeds the residual stream of {name} ({type(mod).__name__})")
            else:
                unsupported(f"layer type {type(mod).__name__} ({name})")
        elif node.op in ("call_function", "call_method"):
            t = node.target
            # a function that states how channels cross it (an ONNX-imported graph's run-time helpers)
            rule = str(getattr(t, "channel_rule", "")) if node.op == "call_function" else ""
            if shape is None:  # size queries and other non-tensor results
                result = None
                # a tuple of channel slices with fixed sizes (torch.split; an ONNX import's Split, YOLOv8's C2f
                # blocks; its TopK): the group cannot shrink — the export failed on the split's old sizes
                if in_layouts and (t in _SPLITS or (node.op == "call_method" and t in _SPLIT_METHODS)
                                   or isinstance(node.meta.get("tensor_meta"), (tuple, list))):
                    unsupported()
            elif t in _ELEMENTWISE or (node.op == "call_method" and t in _ELEMENTWISE_METHODS) or rule == "elementwise":
                result = _elementwise(node, shape, ins, env, ana, what, own_graph=own_graph)
            elif t in _RESHAPE or (node.op == "call_method" and t in _RESHAPE_METHODS) or rule == "reshape":
                x = node.args[0]
                result = _reshape(lay(x), _shape(x), shape)
                if result is None and lay(x) is not None:
                    unsupported()
                elif result is not None and not _fixed_size_reshape(node, result.dim, shape, own_graph):
                    unsupported("reshape to a fixed channel count")
                    result = None
            elif t in _PAD or (node.op == "call_method" and t == "pad") or rule == "passthrough":
                x = node.args[0]
                result = _passthrough(lay(x), _shape(x), shape)
                if result is None and lay(x) is not None:
                    unsupported("padding of the channel dimension")
            elif t in _PERMUTE or (node.op == "call_method" and t in _PERMUTE_METHODS):
                x = node.args[0]
                result = _permute(node, lay(x), _shape(x), shape)
                if result is None and lay(x) is not None:
                    unsupported()
            elif t in _REDUCE or (node.op == "call_method" and t in _REDUCE_METHODS) or rule.startswith("reduce:"):
                x = node.args[0]
                at = tuple(int(i) for i in rule.split(":")[1:]) if rule else (1, 2)
                result = _reduce(node, lay(x), _shape(x), shape, at)
                if result is None and lay(x) is not None:
                    unsupported()
            elif t in (torch.cat, torch.concat):
                result = _cat(node, shape, env, ana, what)
            elif t is operator.getitem and not in_layouts:
                result = None
            else:
                unsupported()
        env[node] = result


def _passthrough(xl: Layout | None, xs: tuple[int, ...] | None, shape: tuple[int, ...] | None) -> Layout | None:
    if xl is None or xs is None or shape is None:
        return None
    if len(xs) == len(shape) and xs[xl.dim] == shape[xl.dim]:
        return xl
    return None


def _reshape(xl: Layout | None, xs: tuple[int, ...] | None, shape: tuple[int, ...] | None) -> Layout | None:
    if xl is None or xs is None or shape is None:
        return None
    d = xl.dim
    if tuple(xs) == tuple(shape):
        return xl
    if len(shape) == d + 1 and tuple(shape[:d]) == tuple(xs[:d]) and shape[d] == math.prod(xs[d:]):
        r = math.prod(xs[d + 1:])
        return Layout(d, tuple(Seg(s.set_id, s.size, s.repeat * r) for s in xl.segs))
    return None


def _fixed_size_reshape(node: fx.Node, dim: int, shape: tuple[int, ...], rewrite: bool) -> bool:
    """Whether the channel axis ``dim`` of a reshape's result (``shape``) can change size. A target shape that
    spells that axis's size as a number (an ONNX Reshape to ``[batch, 200]``, ``x.view(n, 200)``) would keep
    asking for the old size after pruning: with ``rewrite`` (the graph is the model's own) the number becomes
    -1 — and an ONNX reshape's other -1 (``[-1, 200]``) becomes 0, ONNX's "copy the input's dim", where the input
    keeps that dim — so the reshape follows the channels; where that cannot be done, False (the group is
    blocked). The rewrite computes the same shape as before, pruned or not."""
    if node.op == "call_method" and node.target not in ("view", "reshape"):  # x.flatten(1): no sizes
        return True
    if node.op == "call_method":  # x.view(a, b, c) or x.view((a, b, c))
        container, at = (node.args, 1) if not (len(node.args) == 2 and isinstance(node.args[1], (list, tuple))) else (
            node.args[1], 0)
        items = list(container[at:]) if container is node.args else list(container)
    elif node.target is torch.reshape or getattr(node.target, "shape_argument", None) == 1:  # reshape(x, shape, ...)
        target = node.kwargs.get("shape", node.args[1] if len(node.args) > 1 else None)
        if not isinstance(target, (list, tuple)):
            return not isinstance(target, torch.Tensor)  # a shape computed in the graph follows the tensor
        items = list(target)
    else:  # flatten, squeeze: no sizes in their arguments
        return True
    if len(items) != len(shape) or not isinstance(items[dim], int) or items[dim] == -1:
        return True
    if not rewrite:
        return False
    others = [i for i, v in enumerate(items) if isinstance(v, int) and v == -1]
    if others:  # ONNX's Reshape to [-1, 200]: the -1 becomes 0 (ONNX: copy the input's dim) where that dim is kept
        xs = _shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        j = others[0]
        onnx_copy = getattr(node.target, "shape_argument", None) == 1 and len(node.args) > 2 and node.args[2] == 0
        if not (onnx_copy and len(others) == 1 and xs is not None and j < len(xs) and xs[j] == shape[j]):
            return False
        items[j] = 0
    items[dim] = -1
    if node.op == "call_method":
        node.args = (node.args[0], *items) if not (len(node.args) == 2 and isinstance(node.args[1], (list, tuple))) \
            else (node.args[0], type(node.args[1])(items))
    elif "shape" in node.kwargs:
        node.kwargs = {**node.kwargs, "shape": type(node.kwargs["shape"])(items)}
    else:
        node.args = (node.args[0], type(node.args[1])(items), *node.args[2:])
    return True


def _permute(node: fx.Node, xl: Layout | None, xs: tuple[int, ...] | None,
             shape: tuple[int, ...]) -> Layout | None:
    """permute / transpose: the channel dimension moves with its axis. A flattened layout (``repeat`` > 1:
    each channel spread over the positions of later axes) is not followed — the axes it spans may move."""
    if xl is None or xs is None or any(seg.repeat != 1 for seg in xl.segs):
        return None
    nd = len(xs)
    args = list(node.args[1:])
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if name == "permute":
        dims = node.kwargs.get("dims", args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args)
        perm = [int(d) % nd for d in dims]
        if sorted(perm) != list(range(nd)):
            return None
    else:  # transpose / swapaxes / swapdims: two axes
        pair = [node.kwargs.get(k) for k in ("dim0", "dim1", "axis0", "axis1") if k in node.kwargs] or args
        if len(pair) != 2:
            return None
        a, b = (int(d) % nd for d in pair)
        perm = list(range(nd))
        perm[a], perm[b] = perm[b], perm[a]
    new_dim = perm.index(xl.dim)
    if len(shape) != nd or shape[new_dim] != xs[xl.dim]:
        return None
    return Layout(new_dim, xl.segs)


def _reduce(node: fx.Node, xl: Layout | None, xs: tuple[int, ...] | None, shape: tuple[int, ...],
            at: tuple[int, int] = (1, 2)) -> Layout | None:
    """A reduction; ``at``: the positions of its axes and keepdim arguments (torch's ``mean(x, dim, keepdim)``:
    1, 2)."""
    if xl is None or xs is None:
        return None
    dims = node.kwargs.get("dim", node.args[at[0]] if len(node.args) > at[0] else None)
    keep = bool(node.kwargs.get("keepdim", node.args[at[1]] if len(node.args) > at[1] else False))
    if isinstance(dims, torch.Tensor):
        dims = [int(d) for d in dims.reshape(-1).tolist()]
    if dims is None or isinstance(dims, fx.Node):
        return None
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = [d % len(xs) for d in dims]
    if xl.dim in dims:
        return None
    new_dim = xl.dim if keep else xl.dim - sum(1 for d in dims if d < xl.dim)
    if new_dim >= len(shape) or shape[new_dim] != xs[xl.dim]:
        return None
    return Layout(new_dim, xl.segs)


def _elementwise(node: fx.Node, shape: tuple[int, ...], ins: list[fx.Node], env: dict[fx.Node, Layout | None],
                 ana: _Analysis, what: str, *, own_graph: bool = False) -> Layout | None:
    """An element-wise op: operands with channel sets are united; a tensor without them must broadcast over the
    channel axis (size 1 there) — or, in a graph that is the model's own (an ONNX import), be a per-channel
    constant read by this op alone (a bias added as ``[1, C, 1, 1]``, a folded BatchNorm's scale), which then
    becomes a member of the group with role ``tensor:K`` (sliced on its axis K)."""
    nd = len(shape)
    layouts = []
    for n in ins:
        s = _shape(n)
        if s is None:
            continue
        lo = env.get(n)
        layouts.append((n, s, lo.aligned(len(s), nd) if lo is not None else None))
    with_l = [lo for _, _, lo in layouts if lo is not None]
    if not with_l:
        return None
    if len({lo.dim for lo in with_l}) == 1 and len({tuple(s.size for s in lo.segs) for lo in with_l}) > 1:
        with_l = _refine(with_l, ana)
        layouts = [(n, s, ana.resolve(lo) if lo is not None else None) for n, s, lo in layouts]
    ref = with_l[0]
    ok = all(lo.dim == ref.dim and [(s.size, s.repeat) for s in lo.segs] == [(s.size, s.repeat) for s in ref.segs]
             for lo in with_l)
    constants: list[tuple[str, int]] = []
    if ok and len(shape) > ref.dim:
        width = sum(seg.size for seg in ref.segs)
        for n, s, lo in layouts:
            if lo is None:  # a tensor without channel sets broadcast against channels
                k = ref.dim - (nd - len(s))
                if 0 <= k < len(s) and s[k] != 1:
                    per_channel = (own_graph and n.op == "get_attr" and len(n.users) == 1 and s[k] == width
                                   and all(d == 1 for i, d in enumerate(s) if i != k)
                                   and all(seg.repeat == 1 for seg in ref.segs))
                    if per_channel:
                        constants.append((str(n.target), k))
                    else:
                        ok = False
    if not ok:
        for lo in with_l:
            ana.block(lo, f"unsupported operands of {what}")
        return None
    for lo in with_l[1:]:
        for a, b in zip(ref.segs, lo.segs, strict=True):
            ana.union(a.set_id, b.set_id)
    for target, k in constants:
        ana.members_from_layout(ana.resolve(ref), target, f"tensor:{k}")
    return ref


def _refine(layouts: list[Layout], ana: _Analysis) -> list[Layout]:
    """Split channel sets so that all ``layouts`` share the same segment boundaries (an SE
    multiply or residual add whose one side comes from a concat). Only for repeat-1 layouts
    of equal total width; anything else is returned unchanged (and then blocked)."""
    if any(s.repeat != 1 for lo in layouts for s in lo.segs):
        return layouts
    if len({sum(s.size for s in lo.segs) for lo in layouts}) != 1:
        return layouts
    cuts = sorted({c for lo in layouts for c in np.cumsum([s.size for s in lo.segs]).tolist()})
    for lo in layouts:
        start = 0
        for seg in ana.resolve(lo).segs:
            inner = [c - start for c in cuts if start < c < start + seg.size]
            sid, done = seg.set_id, 0
            for c in inner:
                ana.split(sid, c - done)
                sid, done = ana.split_into[ana.find(sid)][1], c
            start += seg.size
    return [ana.resolve(lo) for lo in layouts]


def _cat(node: fx.Node, shape: tuple[int, ...], env: dict[fx.Node, Layout | None], ana: _Analysis,
         what: str) -> Layout | None:
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    nd = len(shape)
    dim = dim % nd
    parts = []
    for t in tensors:
        s, lo = _shape(t), env.get(t) if isinstance(t, fx.Node) else None
        if s is None:
            return None
        parts.append((s, lo))
    if all(lo is None for _, lo in parts):
        return None
    if any(lo is not None and lo.dim == dim for _, lo in parts):
        segs: list[Seg] = []
        for s, lo in parts:
            if lo is not None and lo.dim == dim:
                segs.extend(lo.segs)
            else:  # a part whose channels we do not track: a frozen slice
                if lo is not None:
                    ana.block(lo, f"unsupported {what} along another dimension")
                sid = ana.new_set(s[dim])
                ana.block(Layout(dim, (Seg(sid, s[dim]),)), f"unsupported untracked input of {what}")
                segs.append(Seg(sid, s[dim]))
        return Layout(dim, tuple(segs))
    for _, lo in parts:
        ana.block(lo, f"unsupported {what} along dimension {dim}")
    return None
