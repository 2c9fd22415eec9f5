"""Modules in the shapes structured pruning leaves them: attention modules with fewer heads, a fresh model
re-shaped to a pruned state dict (:func:`fit_to_state_dict`), and the record of which heads each kept.

Here, below ``prune`` and ``loading``, because reading a pruned model's weights back (``--weights pruned.safetensors``)
needs these shapes without the pruning algorithms.

Attention-head pruning of ``torch.nn.MultiheadAttention``.

``nn.MultiheadAttention`` ties the width of every head's query/key/value to ``embed_dim / num_heads``
and packs q, k and v into one ``in_proj_weight`` [3·E × E]; it cannot hold fewer heads at the same
``embed_dim``. Removing heads therefore swaps it for :class:`HeadPrunedAttention`: separate q/k/v
projections of width ``kept_heads × head_dim`` and an output projection reading them, with the same
call signature and semantics (Vaswani et al. 2017, "Attention Is All You Need", §3.2.2; the head
removal of Michel et al. 2019, "Are Sixteen Heads Really Better than One?"). Head ``h`` owns rows
``[h·d, (h+1)·d)`` of each of q, k, v inside ``in_proj_weight`` and the same columns of
``out_proj.weight`` (PyTorch's ``F.multi_head_attention_forward`` layout).

Hugging Face attention modules (BERT's ``query/key/value``, MPNet's ``q/k/v/o``) keep their class: their
projections are sliced and ``num_attention_heads`` set per module. MPNet adds a relative position bias
``(N, H₀, L, S)`` computed once by the encoder for every layer (T5's scheme, Raffel et al. 2020 §2.1; MPNet,
Song et al. 2020); a layer that lost heads gets it sliced to its kept heads by
:func:`slice_position_bias` (Hugging Face's own ``prune_heads`` leaves it whole, so MPNet fails after it).

Torch-Pruning's ``MultiheadAttentionPruner`` (1.6) prunes ``embed_dim`` — the residual width every
head shares — and keeps the head count, so it cannot do this.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class HeadPrunedAttention(nn.Module):
    """Multi-head attention with ``num_heads`` heads of ``head_dim`` on an ``embed_dim`` stream.

    A drop-in for ``nn.MultiheadAttention`` after head pruning: ``forward(query, key, value,
    key_padding_mask=None, need_weights=True, attn_mask=None, average_attn_weights=True,
    is_causal=False)`` → ``(output, weights or None)``. Shapes as in ``nn.MultiheadAttention``: float
    query ``(L, N, E)`` (``(N, L, E)`` with ``batch_first``, ``(L, E)`` unbatched), key/value ``(S, N, kdim/vdim)``;
    ``attn_mask`` ``(L, S)`` or ``(N·H₀, L, S)`` in the *original* head count ``H₀`` (sliced to the kept
    heads, ``head_index``), bool (True = not allowed) or additive float; ``key_padding_mask`` ``(N, S)``.
    Weights are ``(N, L, S)`` averaged over the kept heads, or ``(N, H, L, S)``.
    """

    # the attributes nn.TransformerEncoderLayer reads to choose its fused fast path, which needs the
    # packed layout: their values here send it to the plain path, which calls this module
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None
    bias_k = None
    bias_v = None
    add_zero_attn = False

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, kdim: int | None = None,
                 vdim: int | None = None, bias: bool = True, dropout: float = 0.0, batch_first: bool = False,
                 head_index: list[int] | None = None) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = dropout, batch_first
        width = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, width, bias=bias)
        self.k_proj = nn.Linear(self.kdim, width, bias=bias)
        self.v_proj = nn.Linear(self.vdim, width, bias=bias)
        self.out_proj = nn.Linear(width, embed_dim, bias=bias)
        self.register_buffer("head_index", torch.tensor(head_index if head_index is not None else range(num_heads),
                                                        dtype=torch.long))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        # (L, N, E) from here on, as F.multi_head_attention_forward
        tgt, n = query.shape[0], query.shape[1]
        src = key.shape[0]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).reshape(tgt, n, h, d).permute(1, 2, 0, 3)  # (N, H, L, d)
        k = self.k_proj(key).reshape(src, n, h, d).permute(1, 2, 0, 3)
        v = self.v_proj(value).reshape(src, n, h, d).permute(1, 2, 0, 3)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d)  # (N, H, L, S)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(tgt, src, dtype=torch.bool, device=query.device).triu(1)
        if attn_mask is not None:
            if attn_mask.dim() == 3:  # (N·H₀, L, S): one mask per original head
                attn_mask = attn_mask.reshape(n, -1, tgt, src).index_select(1, self.head_index)
            scores = _add_mask(scores, attn_mask)
        if key_padding_mask is not None:
            scores = _add_mask(scores, key_padding_mask.reshape(n, 1, 1, src))
        attn = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, p=self.dropout)
        out = torch.matmul(attn, v).permute(2, 0, 1, 3).reshape(tgt, n, h * d)  # (L, N, H·d)
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = attn.mean(1) if average_attn_weights else attn
        return out, weights.squeeze(0) if unbatched else weights

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"batch_first={self.batch_first}")


def _add_mask(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask.to(scores.dtype)


POSITION_BIAS = "position_bias"
HEAD_INDEX = "pruned_head_index"  # buffer: the original indices of the heads a module kept
KEPT_HEADS = "deepshrink_kept_heads"  # attribute: original indices of the heads a module kept (distillation reads it)


def record_kept_heads(mod: nn.Module, kept: torch.Tensor) -> None:
    """Note on ``mod`` (an attention module that lost heads) which of its original heads it keeps, as the plain
    attribute ``deepshrink_kept_heads`` (a list of ints; composed when pruned again). Not part of the state dict:
    it serves what runs in the same process after the pruning (attention-map distillation compares each kept head
    with the head it was, :func:`deepshrink.distill.losses.attention_loss`)."""
    kept_list = [int(i) for i in torch.as_tensor(kept).tolist()]
    before = getattr(mod, KEPT_HEADS, None)
    setattr(mod, KEPT_HEADS, [before[i] for i in kept_list] if before is not None else kept_list)


HEADER_WRITER = "deepshrink.writer"  # .safetensors header: written by deepshrink
HEADER_KEPT_HEADS = "deepshrink.kept_heads"  # .safetensors header: JSON {module: original indices of the heads it kept}


def weights_header(model: nn.Module) -> dict[str, str]:
    """The ``.safetensors`` header deepshrink writes beside a state dict (:func:`deepshrink.save`): the writer
    and, for attention modules that lost heads, the original indices of the heads each kept — a plain
    attribute (:func:`record_kept_heads`) that would not survive the file otherwise; :func:`restore_kept_heads`
    reads it back (:func:`deepshrink.loading.load_weights`)."""
    import json

    header = {"format": "pt", HEADER_WRITER: "deepshrink"}
    kept = {name: list(getattr(m, KEPT_HEADS)) for name, m in model.named_modules() if getattr(m, KEPT_HEADS, None)}
    if kept:
        header[HEADER_KEPT_HEADS] = json.dumps(kept, separators=(",", ":"))
    return header


def restore_kept_heads(model: nn.Module, header: dict[str, str]) -> None:
    """Note on each attention module the ``header`` (:func:`weights_header`) names which heads it kept. Raises
    ``ValueError`` when the record does not fit ``model`` (a module it names is missing, or the record is not
    JSON of lists of ints)."""
    import json

    spec = header.get(HEADER_KEPT_HEADS)
    if spec is None:
        return
    try:
        for name, heads in json.loads(spec).items():
            setattr(model.get_submodule(name), KEPT_HEADS, [int(i) for i in heads])
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def takes_position_bias(mod: nn.Module) -> bool:
    """Whether ``mod.forward`` takes a ``position_bias`` (a per-head additive attention bias from outside)."""
    try:
        return POSITION_BIAS in inspect.signature(mod.forward).parameters
    except (TypeError, ValueError):
        return False


def slice_position_bias(mod: nn.Module, kept: torch.Tensor) -> None:
    """Make ``mod`` (an attention module that lost heads) read only its kept heads of the ``position_bias``
    its caller passes, shape ``(N, H₀, L, S)`` in the original head count ``H₀``.

    ``kept``: int64 indices (of the heads ``mod`` had before this pruning) it keeps. Stored as the buffer
    ``pruned_head_index`` (original indices, composed when pruned again, so it survives ``state_dict``) and
    applied by a forward pre-hook; :func:`restore_position_bias_slicing` re-installs the hook on a model
    rebuilt from a state dict. Modules without a ``position_bias`` argument are left alone."""
    if not takes_position_bias(mod):
        return
    kept = torch.as_tensor(kept, dtype=torch.long)
    before = getattr(mod, HEAD_INDEX, None)
    if isinstance(before, torch.Tensor):
        setattr(mod, HEAD_INDEX, before.index_select(0, kept).clone())
        return  # the hook is there already
    mod.register_buffer(HEAD_INDEX, kept.clone())
    mod.register_forward_pre_hook(_slice_bias, with_kwargs=True)


def restore_position_bias_slicing(model: nn.Module) -> int:
    """Re-install :func:`slice_position_bias`'s hook on every module of ``model`` that has a
    ``pruned_head_index`` buffer but no hook (a model rebuilt from a pruned state dict). Returns how many."""
    n = 0
    for mod in model.modules():
        if isinstance(getattr(mod, HEAD_INDEX, None), torch.Tensor) and not any(
                getattr(h, "__name__", "") == _slice_bias.__name__ for h in mod._forward_pre_hooks.values()):
            mod.register_forward_pre_hook(_slice_bias, with_kwargs=True)
            n += 1
    return n


@functools.cache
def _bias_position(cls: type) -> int:
    """Where ``position_bias`` sits among the positional arguments of ``cls.forward`` (after ``self``)."""
    return list(inspect.signature(cls.forward).parameters).index(POSITION_BIAS) - 1


def _slice_bias(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    idx: torch.Tensor = getattr(mod, HEAD_INDEX)
    pos = _bias_position(type(mod))
    bias = args[pos] if len(args) > pos else kwargs.get(POSITION_BIAS)
    if not (isinstance(bias, torch.Tensor) and bias.dim() == 4 and bias.shape[1] != len(idx)):
        return args, kwargs
    cut = bias.index_select(1, idx.to(bias.device))
    if len(args) > pos:
        return (*args[:pos], cut, *args[pos + 1:]), kwargs
    return args, {**kwargs, POSITION_BIAS: cut}


def unsupported_reason(mha: nn.MultiheadAttention) -> str | None:
    """Why the heads of ``mha`` cannot be removed (None: they can)."""
    if mha.bias_k is not None or mha.bias_v is not None:
        return "add_bias_kv=True"
    if mha.add_zero_attn:
        return "add_zero_attn=True"
    if mha.embed_dim % mha.num_heads:
        return f"embed_dim {mha.embed_dim} is not a multiple of num_heads {mha.num_heads}"
    return None


def _qkv(mha: nn.MultiheadAttention | HeadPrunedAttention) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """(name, weight, bias) of q, k, v: slices of the packed projection or the separate ones."""
    if isinstance(mha, HeadPrunedAttention):
        return [(f"{p}_proj", getattr(mha, f"{p}_proj").weight, getattr(mha, f"{p}_proj").bias) for p in "qkv"]
    e = mha.embed_dim
    bias = mha.in_proj_bias
    if mha._qkv_same_embed_dim:
        w = mha.in_proj_weight
        return [(p, w[i * e:(i + 1) * e], bias[i * e:(i + 1) * e] if bias is not None else None)
                for i, p in enumerate("qkv")]
    return [(p, getattr(mha, f"{p}_proj_weight"), bias[i * e:(i + 1) * e] if bias is not None else None)
            for i, p in enumerate("qkv")]


def head_views(mha: nn.MultiheadAttention, tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per-head ``(H, k)`` views of ``tensors`` (parameter name → a tensor shaped like that parameter:
    the weights themselves, their squares, ``w·grad``...): every q/k/v row and output-projection
    column a head owns. Names are those of ``mha.named_parameters()``."""
    h, e = mha.num_heads, mha.embed_dim
    d = e // h
    views = []
    for name, t in tensors.items():
        if name == "in_proj_weight":
            views.append(t.reshape(3, h, d, -1).transpose(0, 1).reshape(h, -1))
        elif name == "in_proj_bias":
            views.append(t.reshape(3, h, d).transpose(0, 1).reshape(h, -1))
        elif name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            views.append(t.reshape(h, -1))
        elif name == "out_proj.weight":
            views.append(t.reshape(t.shape[0], h, d).transpose(0, 1).reshape(h, -1))
    return views


@torch.no_grad()
def prune_heads(mha: nn.MultiheadAttention, keep: torch.Tensor) -> HeadPrunedAttention:
    """A :class:`HeadPrunedAttention` holding the heads ``keep`` (sorted indices) of ``mha``."""
    reason = unsupported_reason(mha)
    if reason is not None:
        raise ValueError(f"cannot remove heads of a MultiheadAttention with {reason}")
    d = mha.embed_dim // mha.num_heads
    rows = torch.cat([torch.arange(int(i) * d, (int(i) + 1) * d) for i in keep])
    bias = mha.in_proj_bias is not None
    new = HeadPrunedAttention(mha.embed_dim, len(keep), d, kdim=mha.kdim, vdim=mha.vdim, bias=bias,
                              dropout=mha.dropout, batch_first=mha.batch_first, head_index=[int(i) for i in keep])
    ref = mha.in_proj_weight if mha._qkv_same_embed_dim else mha.q_proj_weight
    new.to(device=ref.device, dtype=ref.dtype)
    for (_, w, b), lin in zip(_qkv(mha), (new.q_proj, new.k_proj, new.v_proj), strict=True):
        lin.weight.copy_(w.index_select(0, rows))
        if b is not None:
            lin.bias.copy_(b.index_select(0, rows))
    new.out_proj.weight.copy_(mha.out_proj.weight.index_select(1, rows))
    if mha.out_proj.bias is not None:
        new.out_proj.bias.copy_(mha.out_proj.bias)
    new.train(mha.training)
    return new


@torch.no_grad()
def mask_heads(mha: nn.MultiheadAttention, keep: torch.Tensor) -> None:
    """Zero, in place, the output-projection columns of every head not in ``keep``: the unpruned twin
    of :func:`prune_heads` (same outputs), used to prove the swap exact."""
    d = mha.embed_dim // mha.num_heads
    drop = [h for h in range(mha.num_heads) if h not in set(keep.tolist())]
    for h in drop:
        mha.out_proj.weight[:, h * d:(h + 1) * d] = 0.0


def from_state_dict(mha: nn.MultiheadAttention, state: dict[str, torch.Tensor], prefix: str) -> HeadPrunedAttention:
    """An empty :class:`HeadPrunedAttention` shaped like the pruned weights under ``prefix`` in ``state``."""
    d = mha.embed_dim // mha.num_heads
    width = state[prefix + "q_proj.weight"].shape[0]
    index = state.get(prefix + "head_index")
    return HeadPrunedAttention(mha.embed_dim, width // d, d, kdim=mha.kdim, vdim=mha.vdim,
                               bias=prefix + "q_proj.bias" in state, dropout=mha.dropout, batch_first=mha.batch_first,
                               head_index=index.tolist() if index is not None else None)


@torch.no_grad()
def fit_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize Linear/Conv/BatchNorm/PReLU/attention modules of a freshly built ``model`` to the
    shapes in a pruned ``state`` dict (then ``load_state_dict`` works); an ``nn.MultiheadAttention``
    whose heads were removed becomes a :class:`HeadPrunedAttention`. Returns ``model``."""
    for name, mod in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        if isinstance(mod, nn.MultiheadAttention) and prefix + "q_proj.weight" in state and name:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, from_state_dict(mod, state, prefix))
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        w = state.get(prefix + "weight")
        if w is None:
            continue
        if isinstance(mod, nn.Linear) and tuple(w.shape) != tuple(mod.weight.shape):
            mod.weight = nn.Parameter(torch.empty_like(w))
            mod.out_features, mod.in_features = w.shape
            if mod.bias is not None:
                mod.bias = nn.Parameter(torch.empty(w.shape[0]))
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and tuple(w.shape) != tuple(mod.weight.shape):
            depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
            mod.weight = nn.Parameter(torch.empty_like(w))
            mod.out_channels = w.shape[0]
            mod.in_channels = w.shape[0] if depthwise else w.shape[1]
            if depthwise:
                mod.groups = w.shape[0]
            if mod.bias is not None:
                mod.bias = nn.Parameter(torch.empty(w.shape[0]))
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm) and w.shape[0] != mod.num_features:
            n = w.shape[0]
            mod.num_features = n
            mod.weight, mod.bias = nn.Parameter(torch.empty(n)), nn.Parameter(torch.empty(n))
            mod.running_mean, mod.running_var = torch.zeros(n), torch.ones(n)
        elif isinstance(mod, nn.PReLU) and mod.num_parameters > 1 and w.shape[0] != mod.num_parameters:
            mod.num_parameters = w.shape[0]
            mod.weight = nn.Parameter(torch.empty_like(w))
    for name, mod in model.named_modules():
        q = getattr(mod, "query", None)
        q = getattr(mod, "q", None) if q is None else q
        if isinstance(q, nn.Linear) and isinstance(getattr(mod, "attention_head_size", None), int):
            mod.num_attention_heads = q.out_features // mod.attention_head_size
            mod.all_head_size = q.out_features
        kept = state.get(f"{name}.{HEAD_INDEX}" if name else HEAD_INDEX)
        if kept is not None and not hasattr(mod, HEAD_INDEX):
            mod.register_buffer(HEAD_INDEX, torch.empty_like(kept))
    restore_position_bias_slicing(model)
    return model
