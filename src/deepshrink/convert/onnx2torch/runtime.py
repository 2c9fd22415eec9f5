"""Functions an imported ``GraphModule`` calls at run time where ONNX semantics differ from
torch's (reshape's 0 meaning "copy this dim", slicing by tensors of starts/ends/axes/steps,
SAME padding computed from the input's shape, integer division truncating toward zero...).

They take tensors and plain Python values, so the converters can also call them eagerly to
fold constant sub-graphs (shape arithmetic) at import time.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

IntsLike = Sequence[int] | torch.Tensor


def ints(v: IntsLike | None) -> list[Any]:
    """A tensor or sequence of integers as a Python list (symbolic sizes stay symbolic)."""
    if v is None:
        return []
    if isinstance(v, torch.Tensor):
        return [int(i) for i in v.reshape(-1).tolist()]
    return [i if isinstance(i, (int, torch.SymInt)) else int(i) for i in v]


def dim(x: torch.Tensor, i: int) -> Any:
    """One size of ``x`` as a Python int (a SymInt under torch.export): shape arithmetic without tensors."""
    return x.shape[i]


def int_tensor(items: list[Any], scalar: bool) -> torch.Tensor:
    """Shape arithmetic handed to an op that wants an int64 tensor."""
    t = torch.tensor([int(i) if not isinstance(i, torch.SymInt) else i for i in items], dtype=torch.int64)
    return t.reshape(()) if scalar else t


def idiv(a: Any, b: Any) -> Any:
    """ONNX integer Div (truncates toward zero) on Python ints."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def shape(x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64)


def size(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64)


def reshape(x: torch.Tensor, new_shape: IntsLike, allowzero: int = 0) -> torch.Tensor:
    dims = ints(new_shape)
    if not allowzero:
        dims = [x.shape[i] if isinstance(d, int) and d == 0 else d for i, d in enumerate(dims)]
    return torch.reshape(x, dims)


def flatten(x: torch.Tensor, axis: int = 1) -> torch.Tensor:
    axis = axis + x.dim() if axis < 0 else axis
    outer = math.prod(x.shape[:axis])
    return torch.reshape(x, (outer, -1)) if x.numel() else torch.reshape(x, (outer, math.prod(x.shape[axis:])))


def squeeze(x: torch.Tensor, axes: IntsLike | None = None) -> torch.Tensor:
    if axes is None or (isinstance(axes, Sequence) and len(axes) == 0):
        return torch.squeeze(x)
    ax = [a % x.dim() for a in ints(axes)] if x.dim() else []
    return torch.squeeze(x, tuple(ax)) if ax else x


def unsqueeze(x: torch.Tensor, axes: IntsLike) -> torch.Tensor:
    ax = ints(axes)
    rank = x.dim() + len(ax)
    for a in sorted(a % rank for a in ax):
        x = torch.unsqueeze(x, a)
    return x


def expand(x: torch.Tensor, new_shape: IntsLike) -> torch.Tensor:
    dims = ints(new_shape)
    # ONNX Expand broadcasts both ways (a 1 in `shape` keeps x's dim).
    out_rank = max(len(dims), x.dim())
    dims = [1] * (out_rank - len(dims)) + dims
    xs = [1] * (out_rank - x.dim()) + list(x.shape)
    target = [-1 if isinstance(b, int) and b == 1 else b for b in dims]
    return x.reshape(xs).expand(target)


def tile(x: torch.Tensor, repeats: IntsLike) -> torch.Tensor:
    return x.repeat(ints(repeats))


def constant_of_shape(new_shape: IntsLike, value: torch.Tensor | None = None) -> torch.Tensor:
    dims = ints(new_shape)
    if value is None:
        return torch.zeros(dims, dtype=torch.float32)
    return torch.full(dims, value.reshape(-1)[0].item(), dtype=value.dtype)


def arange(start: Any, limit: Any, delta: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    vals = [v.item() if isinstance(v, torch.Tensor) else v for v in (start, limit, delta)]
    dt = dtype or next((v.dtype for v in (start, limit, delta) if isinstance(v, torch.Tensor)), torch.int64)
    return torch.arange(*vals, dtype=dt)


def slice_(x: torch.Tensor, starts: IntsLike, ends: IntsLike, axes: IntsLike | None = None,
           steps: IntsLike | None = None) -> torch.Tensor:
    st, en = ints(starts), ints(ends)
    ax = ints(axes) if axes is not None and len(ints(axes)) else list(range(len(st)))
    sp = ints(steps) if steps is not None and len(ints(steps)) else [1] * len(st)
    index: list[Any] = [slice(None)] * x.dim()
    flips = []
    for s, e, a, k in zip(st, en, ax, sp, strict=True):
        a = a % x.dim()
        n = x.shape[a]
        if k > 0:
            if isinstance(s, int) and isinstance(e, int):
                s = max(0, min(n, s + n if s < 0 else s))
                e = max(0, min(n, e + n if e < 0 else e))
                index[a] = slice(s, max(s, e), k)
            else:  # symbolic sizes: Python slicing clamps the same way, without guards
                index[a] = slice(s, e, k)
        else:  # torch has no negative steps: flip, then slice forward
            s = max(-1, min(n - 1, s + n if s < 0 else s))
            e = max(-1, min(n - 1, e + n if e < 0 else e))
            # elements s, s+k, ..., > e  ->  in flipped coordinates (n-1-i)
            fs, fe = n - 1 - s, n - 1 - e
            index[a] = slice(fs, max(fs, fe), -k)
            flips.append(a)
    if flips:
        x = torch.flip(x, flips)
    return x[tuple(index)]


def gather(x: torch.Tensor, indices: torch.Tensor, axis: int = 0) -> torch.Tensor:
    axis = axis % x.dim()
    idx = indices.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    flat = torch.index_select(x, axis, idx.reshape(-1))
    return flat.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


def gather_elements(x: torch.Tensor, indices: torch.Tensor, axis: int = 0) -> torch.Tensor:
    axis = axis % x.dim()
    idx = indices.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return torch.gather(x, axis, idx)


def gather_nd(x: torch.Tensor, indices: torch.Tensor, batch_dims: int = 0) -> torch.Tensor:
    idx = indices.long()
    b = batch_dims
    bshape = list(x.shape[:b])
    nb = math.prod(bshape) if bshape else 1
    xf = x.reshape(nb, *x.shape[b:])
    k = idx.shape[-1]
    idf = idx.reshape(nb, -1, k)
    outs = []
    for i in range(nb):
        sel = tuple(idf[i, :, j] for j in range(k))
        outs.append(xf[i][sel])
    out = torch.stack(outs)
    return out.reshape(*idx.shape[:-1], *x.shape[b + k:])


def scatter_elements(x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, axis: int = 0,
                     reduction: str = "none") -> torch.Tensor:
    axis = axis % x.dim()
    idx = indices.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    if reduction == "none":
        return torch.scatter(x, axis, idx, updates)
    red = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}[reduction]
    return torch.scatter_reduce(x, axis, idx, updates, reduce=red, include_self=True)


def scatter_nd(x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    out = x.clone()
    idx = indices.long()
    k = idx.shape[-1]
    idf = idx.reshape(-1, k)
    upd = updates.reshape(idf.shape[0], *x.shape[k:])
    for i in range(idf.shape[0]):
        key = tuple(int(v) for v in idf[i])
        if reduction == "add":
            out[key] = out[key] + upd[i]
        elif reduction == "mul":
            out[key] = out[key] * upd[i]
        elif reduction == "max":
            out[key] = torch.maximum(out[key], upd[i])
        elif reduction == "min":
            out[key] = torch.minimum(out[key], upd[i])
        else:
            out[key] = upd[i]
    return out


def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if not a.dtype.is_floating_point and not b.dtype.is_floating_point:
        return torch.div(a, b, rounding_mode="trunc")
    return torch.div(a, b)


def mod(a: torch.Tensor, b: torch.Tensor, fmod: int = 0) -> torch.Tensor:
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


def pow_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = torch.pow(a, b.to(a.dtype) if a.dtype.is_floating_point else b)
    return out.to(a.dtype)


def clip(x: torch.Tensor, lo: torch.Tensor | float | None = None, hi: torch.Tensor | float | None = None) -> torch.Tensor:
    if isinstance(lo, torch.Tensor):
        lo = lo.item()
    if isinstance(hi, torch.Tensor):
        hi = hi.item()
    if lo is None and hi is None:
        return x
    return torch.clamp(x, lo, hi)


def _same_pads(in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
               upper: bool) -> list[int]:
    begins, ends = [], []
    for n, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        small, big = total // 2, total - total // 2
        begins.append(small if upper else big)
        ends.append(big if upper else small)
    return begins + ends


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX [b1, b2, ..., e1, e2, ...] -> F.pad's last-dim-first [b_last, e_last, ...]."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def resolve_pads(x: torch.Tensor, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
                 pads: Sequence[int] | None, auto_pad: str) -> list[int]:
    nsp = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(list(x.shape[2:]), kernel, strides, dilations, auto_pad == "SAME_UPPER")
    if auto_pad == "VALID":
        return [0] * (2 * nsp)
    return list(pads) if pads else [0] * (2 * nsp)


def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, strides: list[int] | None, pads: list[int] | None,
         dilations: list[int] | None, group: int, auto_pad: str) -> torch.Tensor:
    nsp = w.dim() - 2
    kernel = list(w.shape[2:])
    strides = strides or [1] * nsp
    dilations = dilations or [1] * nsp
    p = resolve_pads(x, kernel, strides, dilations, pads, auto_pad)
    if p[:nsp] == p[nsp:]:
        padding: Any = p[:nsp]
    else:
        x = F.pad(x, _torch_pad(p))
        padding = 0
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nsp]
    return fn(x, w, b, stride=strides, padding=padding, dilation=dilations, groups=group)


def conv_transpose(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, strides: list[int] | None,
                   pads: list[int] | None, dilations: list[int] | None, group: int, auto_pad: str,
                   output_padding: list[int] | None, output_shape: list[int] | None) -> torch.Tensor:
    """Transposed conv with ONNX's padding rules: run torch's with no padding, then crop
    ``pads`` (begin/end) and grow ``output_padding`` at the end, then add the bias."""
    nsp = w.dim() - 2
    kernel = list(w.shape[2:])
    strides = strides or [1] * nsp
    dilations = dilations or [1] * nsp
    out_pad = output_padding or [0] * nsp
    in_sizes = list(x.shape[2:])
    full = [s * (n - 1) + (k - 1) * d + 1 for n, s, k, d in zip(in_sizes, strides, kernel, dilations, strict=True)]
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = list(output_shape[-nsp:]) if output_shape else [n * s for n, s in zip(in_sizes, strides, strict=True)]
        total = [f + op - t for f, op, t in zip(full, out_pad, target, strict=True)]
        if auto_pad == "SAME_UPPER" or (output_shape and auto_pad != "SAME_LOWER" and False):
            begin = [t // 2 for t in total]
        else:
            begin = [t - t // 2 for t in total]
        end = [t - bg for t, bg in zip(total, begin, strict=True)]
    else:
        p = list(pads) if pads else [0] * (2 * nsp)
        begin, end = p[:nsp], p[nsp:]
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nsp]
    y = fn(x, w, None, stride=strides, padding=0, output_padding=0, groups=group, dilation=dilations)
    index: list[Any] = [slice(None), slice(None)]
    grow = []
    for i in range(nsp):
        stop = full[i] - end[i] + out_pad[i]
        grow.append(max(0, stop - full[i]))
        index.append(slice(begin[i], min(stop, full[i])))
    y = y[tuple(index)]
    if any(grow):
        y = F.pad(y, [v for g in reversed(grow) for v in (0, g)])
    if b is not None:
        y = y + b.reshape(1, -1, *([1] * nsp))
    return y


def pool(x: torch.Tensor, kind: str, kernel: list[int], strides: list[int], pads: list[int], dilations: list[int],
         auto_pad: str, ceil_mode: int, count_include_pad: int) -> torch.Tensor:
    nsp = len(kernel)
    strides = strides or [1] * nsp
    dilations = dilations or [1] * nsp
    p = resolve_pads(x, kernel, strides, dilations, pads, auto_pad)
    sym = p[:nsp] == p[nsp:] and all(2 * a <= k for a, k in zip(p[:nsp], kernel, strict=True))
    if kind == "max":
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nsp]
        if not sym:
            x = F.pad(x, _torch_pad(p), value=float("-inf"))
            p = [0] * (2 * nsp)
        return fn(x, kernel, strides, p[:nsp], dilations, ceil_mode=bool(ceil_mode))
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nsp]
    if any(d != 1 for d in dilations):
        return _avg_pool_dilated(x, kernel, strides, p, dilations, ceil_mode, count_include_pad)
    if sym and (count_include_pad or not any(p)):
        return fn(x, kernel, strides, p[:nsp], ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad))
    # asymmetric or excluded padding: sum over padded input / count of real elements
    xp = F.pad(x, _torch_pad(p))
    ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad(p))
    s = fn(xp, kernel, strides, 0, ceil_mode=bool(ceil_mode), count_include_pad=True)
    if count_include_pad:
        return s
    c = fn(ones, kernel, strides, 0, ceil_mode=bool(ceil_mode), count_include_pad=True)
    return s / c


def max_pool_with_indices(x: torch.Tensor, kernel: list[int], strides: list[int], pads: list[int],
                          dilations: list[int], auto_pad: str, ceil_mode: int,
                          storage_order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MaxPool's optional Indices output: flat offsets into the whole input tensor."""
    nsp = len(kernel)
    strides = strides or [1] * nsp
    dilations = dilations or [1] * nsp
    p = resolve_pads(x, kernel, strides, dilations, pads, auto_pad)
    if p[:nsp] != p[nsp:] or (storage_order and nsp != 2):
        raise NotImplementedError("MaxPool Indices with asymmetric padding or non-2-D column-major storage_order")
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nsp]
    y, idx = fn(x, kernel, strides, p[:nsp], dilations, ceil_mode=bool(ceil_mode), return_indices=True)
    if storage_order:  # column-major: h + w * H
        h, w = x.shape[2], x.shape[3]
        idx = (idx // w) + (idx % w) * h
    plane = math.prod(x.shape[2:])
    base = torch.arange(x.shape[0] * x.shape[1]).reshape(x.shape[0], x.shape[1], *([1] * nsp)) * plane
    return y, idx + base


def _avg_pool_dilated(x: torch.Tensor, kernel: list[int], strides: list[int], p: list[int], dilations: list[int],
                      ceil_mode: int, count_include_pad: int) -> torch.Tensor:
    """Average pooling with dilations (torch has none): a depthwise conv with a dilated box kernel."""
    nsp = len(kernel)
    c = x.shape[1]
    tp = _torch_pad(p)
    if ceil_mode:  # extra end padding so the last partial window is kept
        extra = []
        for n, k, s, d, a, e in zip(x.shape[2:], kernel, strides, dilations, p[:nsp], p[nsp:], strict=True):
            eff = (k - 1) * d + 1
            size = n + a + e
            out = -(-(size - eff) // s) + 1
            if (out - 1) * s >= n + a:
                out -= 1
            extra.append(max(0, (out - 1) * s + eff - size))
        for i, g in enumerate(reversed(extra)):
            tp[2 * i + 1] += g
    xp = F.pad(x, tp)
    ones = F.pad(torch.ones_like(x[:1, :1]), tp)
    if count_include_pad:  # padding counts, the ceil-mode overhang does not
        base = F.pad(torch.ones_like(x[:1, :1]), _torch_pad(p))
        ones = F.pad(base, [0 if i % 2 == 0 else t - q for i, (t, q) in enumerate(zip(tp, _torch_pad(p), strict=True))])
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nsp]
    k = torch.ones(c, 1, *kernel, dtype=x.dtype)
    s = fn(xp, k, stride=strides, dilation=dilations, groups=c)
    cnt = fn(ones, torch.ones(1, 1, *kernel, dtype=x.dtype), stride=strides, dilation=dilations)
    return s / cnt


def reduce(x: torch.Tensor, kind: str, axes: IntsLike | None, keepdims: int, noop_with_empty_axes: int = 0) -> torch.Tensor:
    ax = ints(axes)
    if not ax:
        if noop_with_empty_axes:
            return x
        ax = list(range(x.dim()))
    ax = sorted(a % x.dim() for a in ax) if x.dim() else []
    kd = bool(keepdims)
    if kind == "mean":
        return torch.mean(x, dim=ax, keepdim=kd) if ax else x
    if kind == "sum":
        return torch.sum(x, dim=ax, keepdim=kd) if ax else x
    if kind == "max":
        return torch.amax(x, dim=ax, keepdim=kd) if x.numel() else _empty_reduce(x, ax, kd, float("-inf"))
    if kind == "min":
        return torch.amin(x, dim=ax, keepdim=kd) if x.numel() else _empty_reduce(x, ax, kd, float("inf"))
    if kind == "prod":
        out = x
        for a in reversed(ax):
            out = torch.prod(out, dim=a, keepdim=kd)
        return out
    if kind == "l1":
        return torch.sum(torch.abs(x), dim=ax, keepdim=kd)
    if kind == "l2":
        return torch.sqrt(torch.sum(x * x, dim=ax, keepdim=kd))
    if kind == "sumsquare":
        return torch.sum(x * x, dim=ax, keepdim=kd)
    if kind == "logsum":
        return torch.log(torch.sum(x, dim=ax, keepdim=kd))
    if kind == "logsumexp":
        return torch.logsumexp(x, dim=ax, keepdim=kd)
    raise ValueError(kind)


def _empty_reduce(x: torch.Tensor, ax: list[int], kd: bool, fill: float) -> torch.Tensor:
    shp = [1 if i in ax else n for i, n in enumerate(x.shape)] if kd else [n for i, n in enumerate(x.shape) if i not in ax]
    return torch.full(shp, fill, dtype=x.dtype)


def arg_extreme(x: torch.Tensor, kind: str, axis: int, keepdims: int, select_last_index: int) -> torch.Tensor:
    axis = axis % x.dim()
    if select_last_index:
        flipped = torch.flip(x, [axis])
        idx = (torch.argmax if kind == "max" else torch.argmin)(flipped, dim=axis, keepdim=bool(keepdims))
        return x.shape[axis] - 1 - idx
    return (torch.argmax if kind == "max" else torch.argmin)(x, dim=axis, keepdim=bool(keepdims))


def softmax_legacy(x: torch.Tensor, axis: int, kind: str) -> torch.Tensor:
    """Opset < 13: softmax over the input flattened to 2-D at ``axis``."""
    axis = axis % x.dim() if x.dim() else 0
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    fn = {"softmax": torch.softmax, "log": torch.log_softmax}[kind]
    if kind == "hardmax":
        out = F.one_hot(flat.argmax(1), flat.shape[1]).to(x.dtype)
    else:
        out = fn(flat, 1)
    return out.reshape(x.shape)


def hardmax(x: torch.Tensor, axis: int) -> torch.Tensor:
    axis = axis % x.dim()
    return torch.movedim(F.one_hot(x.argmax(axis), x.shape[axis]).to(x.dtype), -1, axis)


def split(x: torch.Tensor, sizes: IntsLike | None, axis: int, num_outputs: int) -> tuple[torch.Tensor, ...]:
    axis = axis % x.dim()
    n = x.shape[axis]
    szs = ints(sizes)
    if not szs:
        chunk = -(-n // num_outputs)
        szs = [min(chunk, n - i * chunk) for i in range(num_outputs)]
    return tuple(torch.split(x, szs, dim=axis))


def topk(x: torch.Tensor, k: IntsLike, axis: int, largest: int, sorted_: int) -> tuple[torch.Tensor, torch.Tensor]:
    kk = ints(k)[0]
    axis = axis % x.dim()
    if largest:
        # ONNX breaks ties by the lower index; a stable sort gives that
        vals, idx = torch.sort(x, dim=axis, descending=True, stable=True)
    else:
        vals, idx = torch.sort(x, dim=axis, descending=False, stable=True)
    return vals.narrow(axis, 0, kk), idx.narrow(axis, 0, kk)


def cumsum(x: torch.Tensor, axis: IntsLike, exclusive: int, reverse: int) -> torch.Tensor:
    a = ints(axis)[0] % x.dim()
    if reverse:
        x = torch.flip(x, [a])
    out = torch.cumsum(x, a)
    if exclusive:
        out = out - x
    if reverse:
        out = torch.flip(out, [a])
    return out.to(x.dtype)


def trilu(x: torch.Tensor, k: IntsLike | None, upper: int) -> torch.Tensor:
    kk = ints(k)[0] if k is not None and len(ints(k)) else 0
    return torch.triu(x, kk) if upper else torch.tril(x, kk)


def one_hot(indices: torch.Tensor, depth: IntsLike, values: torch.Tensor, axis: int) -> torch.Tensor:
    d = int(ints(depth)[0]) if not isinstance(depth, torch.Tensor) or depth.numel() == 1 else int(depth.reshape(-1)[0])
    idx = indices.long()
    idx = torch.where(idx < 0, idx + d, idx)
    valid = (idx >= 0) & (idx < d)
    oh = F.one_hot(torch.where(valid, idx, torch.zeros_like(idx)), d) * valid.unsqueeze(-1)
    out = torch.where(oh.bool(), values[1], values[0])
    rank = out.dim()
    axis = axis % rank
    return torch.movedim(out, -1, axis)


def eye_like(x: torch.Tensor, k: int, dtype: torch.dtype | None) -> torch.Tensor:
    n, m = x.shape
    i = torch.arange(n).unsqueeze(1)
    j = torch.arange(m).unsqueeze(0)
    return (j - i == k).to(dtype or x.dtype)


def depth_to_space(x: torch.Tensor, blocksize: int, mode: str) -> torch.Tensor:
    n, c, h, w = x.shape
    b = blocksize
    if mode == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


def space_to_depth(x: torch.Tensor, blocksize: int, mode: str = "DCR") -> torch.Tensor:
    n, c, h, w = x.shape
    b = blocksize
    perm = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)
    y = x.reshape(n, c, h // b, b, w // b, b).permute(*perm)
    return y.reshape(n, c * b * b, h // b, w // b)


def layer_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, axis: int, eps: float) -> torch.Tensor:
    axis = axis % x.dim()
    shp = list(x.shape[axis:])
    orig = x.dtype
    xf = x.float()
    out = F.layer_norm(xf, shp, None, None, eps)
    out = out * scale.float().expand(shp) if scale is not None else out
    if bias is not None:
        out = out + bias.float()
    return out.to(orig)


def group_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    c = x.shape[1]
    out = F.group_norm(x, groups, None, None, eps)
    shp = [1, c] + [1] * (x.dim() - 2)
    if scale.numel() == groups and groups != c:  # opset 18: per-group scale/bias
        scale = scale.repeat_interleave(c // groups)
        bias = bias.repeat_interleave(c // groups)
    return out * scale.reshape(shp) + bias.reshape(shp)


def instance_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=eps)


def lp_norm(x: torch.Tensor, axis: int, p: int) -> torch.Tensor:
    norm = torch.linalg.vector_norm(x, ord=float(p), dim=axis, keepdim=True)
    return torch.where(norm == 0, torch.zeros_like(x), x / norm)


def _src_coords(out_n: int, in_n: int, scale: float, mode: str) -> torch.Tensor:
    """Source coordinate of each output index; ``scale * in_n`` is the unrounded output length
    the ONNX formulas use (it differs from ``out_n`` when the scale does not divide evenly)."""
    o = torch.arange(out_n, dtype=torch.float64)
    width = scale * in_n
    if mode == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5 if width != 1 else torch.full_like(o, -0.5)
    if mode == "align_corners":
        return o * (in_n - 1) / (width - 1) if width != 1 else torch.zeros_like(o)
    if mode == "asymmetric":
        return o / scale
    if mode == "half_pixel_symmetric":
        offset = in_n / 2 * (1 - out_n / width)
        return offset + (o + 0.5) / scale - 0.5
    raise NotImplementedError(f"Resize coordinate_transformation_mode {mode}")


def _nearest(c: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "floor":
        return torch.floor(c)
    if mode == "ceil":
        return torch.ceil(c)
    if mode == "round_prefer_ceil":
        return torch.floor(c + 0.5)
    return torch.ceil(c - 0.5)  # round_prefer_floor


def _cubic_weights(t: torch.Tensor, a: float) -> torch.Tensor:
    def k(x: torch.Tensor) -> torch.Tensor:
        x = x.abs()
        return torch.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                           torch.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, torch.zeros_like(x)))
    return torch.stack([k(t + 1), k(t), k(1 - t), k(2 - t)], dim=-1)


def resize(x: torch.Tensor, scales: torch.Tensor | Sequence[float] | None, sizes: IntsLike | None, mode: str,
           coord: str, nearest_mode: str, cubic_coeff_a: float, exclude_outside: int,
           roi: torch.Tensor | None = None, axes: list[int] | None = None, policy: str = "stretch",
           extrapolation: float = 0.0) -> torch.Tensor:
    """ONNX Resize, axis by axis (separable): gather the source pixels each output reads and
    blend them with nearest / linear / cubic weights, following the coordinate mode."""
    r = x.dim()
    ax = [a % r for a in axes] if axes else list(range(r))
    if sizes is not None and len(ints(sizes)):
        want = list(x.shape)
        for a, v in zip(ax, ints(sizes), strict=True):
            want[a] = v
        scl = [o / n for o, n in zip(want, x.shape, strict=True)]
        out_size = want
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            sc = pick(scl[a] for a in ax)
            scl = [sc if i in ax else 1.0 for i in range(r)]
            out_size = [int(sc * x.shape[i] + 0.5) if i in ax else x.shape[i] for i in range(r)]
    else:
        given = ([float(v) for v in scales.reshape(-1).tolist()] if isinstance(scales, torch.Tensor)
                 else [float(v) for v in scales])  # type: ignore[union-attr]
        scl = [1.0] * r
        for a, v in zip(ax, given, strict=True):
            scl[a] = v
        # an integer scale keeps sizes integer arithmetic (symbolic sizes stay exact under torch.export)
        out_size = [n if s == 1.0 else n * int(s) if float(s).is_integer() else int(math.floor(n * s))
                    for n, s in zip(x.shape, scl, strict=True)]
    roi_full = None
    if coord == "tf_crop_and_resize":
        rv = [float(v) for v in roi.reshape(-1).tolist()] if roi is not None and roi.numel() else []
        roi_full = [0.0] * r + [1.0] * r
        for i, a in enumerate(ax):
            if rv:
                roi_full[a], roi_full[r + a] = rv[i], rv[len(ax) + i]
    orig = x.dtype
    y = x.double() if mode != "nearest" else x
    for a in range(r):
        n, on, sc = x.shape[a], out_size[a], scl[a]
        if isinstance(sc, float) and sc == 1.0 and roi_full is None:
            continue
        if roi_full is not None:
            lo, hi = roi_full[a], roi_full[r + a]
            width = sc * n
            o = torch.arange(on, dtype=torch.float64)
            c = (o * (hi - lo) * (n - 1) / (width - 1) if width != 1 else torch.full_like(o, (hi - lo) * (n - 1) / 2)) \
                + lo * (n - 1)
            outside = (c < 0) | (c > n - 1)
        else:
            c = _src_coords(on, n, sc, coord)
            outside = None
        if mode == "nearest":
            idx = _nearest(c, nearest_mode).long().clamp(0, n - 1)
            y = torch.index_select(y, a, idx)
        else:
            if mode == "linear":
                cc = c.clamp(0, n - 1)
                lo_i = torch.floor(cc).long().clamp(0, n - 1)
                hi_i = (lo_i + 1).clamp(max=n - 1)
                t = cc - lo_i
                idx = torch.stack([lo_i, hi_i], -1)
                w = torch.stack([1 - t, t], -1)
            elif mode == "cubic":
                base = torch.floor(c)
                t = c - base
                idx = base.long().unsqueeze(-1) + torch.arange(-1, 3)
                w = _cubic_weights(t, cubic_coeff_a)
                if exclude_outside:
                    w = w * ((idx >= 0) & (idx < n))
                    w = w / w.sum(-1, keepdim=True)
                idx = idx.clamp(0, n - 1)
            else:
                raise NotImplementedError(f"Resize mode {mode}")
            g = torch.index_select(y, a, idx.reshape(-1))
            shp = list(y.shape)
            shp[a:a + 1] = [on, idx.shape[-1]]
            g = g.reshape(shp)
            wshape = [1] * len(shp)
            wshape[a], wshape[a + 1] = on, idx.shape[-1]
            y = (g * w.reshape(wshape)).sum(a + 1)
        if outside is not None and bool(outside.any()):
            mshape = [1] * r
            mshape[a] = on
            y = torch.where(outside.reshape(mshape), torch.tensor(extrapolation, dtype=y.dtype), y)
    return y.to(orig) if y.dtype != orig else y


def nonzero(x: torch.Tensor) -> torch.Tensor:
    return torch.stack(torch.nonzero(x, as_tuple=True)) if x.dim() else torch.nonzero(x.reshape(1)).T


def bitshift(a: torch.Tensor, b: torch.Tensor, direction: str) -> torch.Tensor:
    return torch.bitwise_left_shift(a, b) if direction == "LEFT" else torch.bitwise_right_shift(a, b)


def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, x * slope)


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype)


def where(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(c.bool(), a, b)


def mean_of(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for v in xs[1:]:
        out = out + v
    return out / len(xs)


def sum_of(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for v in xs[1:]:
        out = out + v
    return out


def max_of(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for v in xs[1:]:
        out = torch.maximum(out, v)
    return out


def min_of(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for v in xs[1:]:
        out = torch.minimum(out, v)
    return out


def gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, alpha: float, beta: float, trans_a: int,
         trans_b: int) -> torch.Tensor:
    if trans_a:
        a = a.t()
    if trans_b:
        b = b.t()
    y = torch.matmul(a, b)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


def lrn(x: torch.Tensor, size: int, alpha: float, beta: float, bias: float) -> torch.Tensor:
    return F.local_response_norm(x, size, alpha=alpha, beta=beta, k=bias)


def einsum(equation: str, *xs: torch.Tensor) -> torch.Tensor:
    return torch.einsum(equation, *xs)


def is_inf(x: torch.Tensor, detect_negative: int, detect_positive: int) -> torch.Tensor:
    out = torch.zeros_like(x, dtype=torch.bool)
    if detect_negative:
        out = out | torch.isneginf(x)
    if detect_positive:
        out = out | torch.isposinf(x)
    return out


def batch_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
               eps: float) -> torch.Tensor:
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)


def mat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, b)


def celu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return F.celu(x, alpha)


def mish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tanh(F.softplus(x))


def compress(x: torch.Tensor, condition: torch.Tensor, axis: int | None) -> torch.Tensor:
    cond = condition.bool()
    if axis is None:
        flat = x.reshape(-1)
        return flat[: cond.numel()][cond[: flat.numel()]]
    axis = axis % x.dim()
    n = min(cond.numel(), x.shape[axis])
    idx = torch.nonzero(cond[:n]).reshape(-1)
    return torch.index_select(x, axis, idx)


def reverse_sequence(x: torch.Tensor, lens: torch.Tensor, batch_axis: int, time_axis: int) -> torch.Tensor:
    out = x.clone()
    for i, n in enumerate(lens.tolist()):
        sel: list[Any] = [slice(None)] * x.dim()
        sel[batch_axis] = i
        sel[time_axis] = slice(0, n)
        part = x[tuple(sel)]
        t = time_axis - (1 if batch_axis < time_axis else 0)
        out[tuple(sel)] = torch.flip(part, [t])
    return out


_WIDE = {torch.uint16: torch.int64, torch.uint32: torch.int64, torch.uint64: torch.int64}
_WIDENED: dict[Any, Any] = {}


def widen(fn: Any) -> Any:
    """``fn`` wrapped to compute unsigned 16/32/64-bit integers (few torch kernels take them)
    in int64 and cast back. Cached, and published in this module so fx can name it."""
    if fn in _WIDENED:
        return _WIDENED[fn]

    def wrapped(*xs: Any) -> Any:
        dts = [x.dtype for x in xs if isinstance(x, torch.Tensor) and x.dtype in _WIDE]
        if not dts:
            return fn(*xs)
        out = fn(*[x.to(torch.int64) if isinstance(x, torch.Tensor) and x.dtype in _WIDE else x for x in xs])
        return out if out.dtype == torch.bool else out.to(dts[0])

    name = f"onnx_{getattr(fn, '__name__', 'op')}"
    wrapped.__name__ = wrapped.__qualname__ = name
    if fn in _ARITHMETIC:  # see CHANNEL_RULES
        wrapped.channel_rule = "elementwise"  # type: ignore[attr-defined]
    wrapped.__module__ = __name__
    globals().setdefault(name, wrapped)
    _WIDENED[fn] = wrapped
    return wrapped


def layer_norm_full(x: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None, axis: int,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNormalization with its optional Mean and InvStdDev outputs."""
    axis = axis % x.dim()
    dims = tuple(range(axis, x.dim()))
    xf = x.float()
    mean = xf.mean(dims, keepdim=True)
    inv = torch.rsqrt(((xf - mean) ** 2).mean(dims, keepdim=True) + eps)
    y = (xf - mean) * inv
    if scale is not None:
        y = y * scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype), mean, inv


def rms_norm(x: torch.Tensor, scale: torch.Tensor, axis: int, eps: float, stash_type: int) -> torch.Tensor:
    axis = axis % x.dim()
    dims = tuple(range(axis, x.dim()))
    xf = x.float() if stash_type == 1 else x
    y = xf * torch.rsqrt((xf * xf).mean(dims, keepdim=True) + eps)
    return (y.to(x.dtype) * scale).to(x.dtype)


def _q_shape(s: torch.Tensor, x: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    if s.dim() == 0 or s.numel() == 1 and block == 0:
        return s.reshape(())
    axis = axis % x.dim()
    if block:
        s = torch.repeat_interleave(s, block, dim=axis).narrow(axis, 0, x.shape[axis])
        return s
    shp = [1] * x.dim()
    shp[axis] = -1
    return s.reshape(shp)


def dequantize_linear(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, axis: int,
                      block_size: int) -> torch.Tensor:
    s = _q_shape(scale, x, axis, block_size)
    z = _q_shape(zero, x, axis, block_size).to(torch.float32) if zero is not None else 0.0
    return ((x.to(torch.float32) - z) * s.to(torch.float32)).to(scale.dtype)


_Q_RANGE = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-32768, 32767),
            torch.uint16: (0, 65535), torch.int32: (-(2**31), 2**31 - 1)}


def quantize_linear(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, axis: int, block_size: int,
                    saturate: int, out_dtype: torch.dtype | None) -> torch.Tensor:
    dt = zero.dtype if zero is not None else (out_dtype or torch.uint8)
    if dt not in _Q_RANGE:
        raise NotImplementedError(f"QuantizeLinear to {dt}")
    lo, hi = _Q_RANGE[dt]
    s = _q_shape(scale, x, axis, block_size).to(torch.float32)
    z = _q_shape(zero, x, axis, block_size).to(torch.float32) if zero is not None else 0.0
    q = torch.round(x.to(torch.float32) / s) + z
    return q.clamp(lo, hi).to(torch.int64).to(dt)


def cumprod(x: torch.Tensor, axis: IntsLike, exclusive: int, reverse: int) -> torch.Tensor:
    a = ints(axis)[0] % x.dim()
    if reverse:
        x = torch.flip(x, [a])
    if exclusive:
        x = torch.cat([torch.ones_like(x.narrow(a, 0, 1)), x.narrow(a, 0, x.shape[a] - 1)], a)
    out = torch.cumprod(x, a).to(x.dtype)
    return torch.flip(out, [a]) if reverse else out


def mvn(x: torch.Tensor, axes: list[int]) -> torch.Tensor:
    mean = x.mean(axes, keepdim=True)
    var = ((x - mean) ** 2).mean(axes, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-9)


def lp_pool(x: torch.Tensor, kernel: list[int], strides: list[int] | None, pads: list[int] | None,
            dilations: list[int] | None, auto_pad: str, ceil_mode: int, p: int) -> torch.Tensor:
    nsp = len(kernel)
    strides = strides or [1] * nsp
    dilations = dilations or [1] * nsp
    pp = resolve_pads(x, kernel, strides, dilations, pads, auto_pad)
    xp = F.pad(x, _torch_pad(pp))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nsp]
    c = x.shape[1]
    k = torch.ones(c, 1, *kernel, dtype=x.dtype)
    if ceil_mode:
        raise NotImplementedError("LpPool ceil_mode")
    return fn(xp.abs() ** p, k, stride=strides, dilation=dilations, groups=c) ** (1.0 / p)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              past_k: torch.Tensor | None, past_v: torch.Tensor | None, nonpad: torch.Tensor | None,
              scale: float | None, is_causal: int, q_heads: int | None, kv_heads: int | None, softcap: float,
              qk_mode: int, window: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """The opset-23/24 ``Attention`` op: 3-D inputs split into heads, KV cache concatenation,
    grouped-query heads, boolean or additive masks (a short mask pads with "masked"),
    offset-aligned causal and sliding-window masks, softcap, and fully masked rows → 0."""
    three_d = q.dim() == 3
    if three_d:
        b = q.shape[0]
        q = q.reshape(b, q.shape[1], q_heads, -1).transpose(1, 2)
        k = k.reshape(b, k.shape[1], kv_heads, -1).transpose(1, 2)
        v = v.reshape(b, v.shape[1], kv_heads, -1).transpose(1, 2)
    if past_k is not None:
        k = torch.cat([past_k, k], 2)
        v = torch.cat([past_v, v], 2)
    present_k, present_v = k, v
    sq, skv = q.shape[2], k.shape[2]
    dt = q.dtype
    neg = torch.tensor(float("-inf"), dtype=dt)
    bias = torch.zeros(sq, skv, dtype=dt)
    if mask is not None:
        if mask.shape[-1] < skv:
            mask = F.pad(mask, (0, skv - mask.shape[-1]), value=False if mask.dtype == torch.bool else float("-inf"))
        bias = bias + (torch.where(mask, torch.zeros((), dtype=dt), neg) if mask.dtype == torch.bool else mask.to(dt))
    if nonpad is not None and past_k is None:
        offset: Any = (nonpad.reshape(-1) - sq).reshape(-1, 1, 1, 1)
    else:
        offset = past_k.shape[2] if past_k is not None else 0
    i = torch.arange(sq).reshape(sq, 1)
    j = torch.arange(skv).reshape(1, skv)
    if is_causal:
        bias = bias + torch.where(j <= i + offset, torch.zeros((), dtype=dt), neg)
    left, right = window
    if left >= 0 or right >= 0:
        diff = (i + offset) - j
        allowed = torch.ones_like(diff, dtype=torch.bool)
        if left >= 0:
            allowed = allowed & (diff <= left)
        if right >= 0:
            allowed = allowed & (-diff <= right)
        bias = bias + torch.where(allowed, torch.zeros((), dtype=dt), neg)
    if nonpad is not None:
        pad = j.reshape(1, 1, 1, skv) < nonpad.reshape(-1, 1, 1, 1)
        bias = bias + torch.where(pad, torch.zeros((), dtype=dt), neg)
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk and hq % hk == 0:
        k = k.repeat_interleave(hq // hk, dim=1)
        v = v.repeat_interleave(hq // hk, dim=1)
    s = math.sqrt(scale if scale is not None else 1.0 / math.sqrt(q.shape[3]))
    qk = torch.matmul(q * s, (k * s).transpose(-1, -2))
    if softcap and softcap > 0:
        qk = softcap * torch.tanh(qk / softcap)
    qk_out = qk
    scores = qk + bias
    if qk_mode == 2:
        qk_out = scores
    dead = torch.isneginf(bias.amax(-1, keepdim=True))
    row_max = torch.where(torch.isneginf(scores.amax(-1, keepdim=True)), torch.zeros((), dtype=dt),
                          scores.amax(-1, keepdim=True))
    e = torch.exp(scores.float() - row_max.float())
    tot = e.sum(-1, keepdim=True)
    probs = (e / torch.where(tot == 0, torch.ones_like(tot), tot)).to(dt)
    probs = torch.where(dead, torch.zeros((), dtype=dt), probs)
    if qk_mode == 3:
        qk_out = probs
    y = torch.matmul(probs, v)
    if three_d:
        y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
    return y, present_k, present_v, qk_out.to(dt)


def nll_loss(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: str,
             ignore_index: int | None) -> torch.Tensor:
    t = target.long()
    ii = -100 if ignore_index is None else ignore_index
    if x.dim() > 2 or x.dim() == 2:
        return F.nll_loss(x, t, weight=weight, reduction=reduction, ignore_index=ii)
    return F.nll_loss(x, t, weight=weight, reduction=reduction, ignore_index=ii)


def softmax_cross_entropy(scores: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None, reduction: str,
                          ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(scores, dim=1)
    return nll_loss(logp, labels, weight, reduction, ignore_index), logp


_ACT = {
    "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu,
}


def _act(name: str, alpha: float | None = None, beta: float | None = None) -> Any:
    if name in _ACT:
        return _ACT[name]
    if name == "HardSigmoid":
        a, b = alpha if alpha is not None else 0.2, beta if beta is not None else 0.5
        return lambda x: torch.clamp(a * x + b, 0, 1)
    if name == "LeakyRelu":
        return lambda x: F.leaky_relu(x, alpha if alpha is not None else 0.01)
    if name == "Affine":
        return lambda x: (alpha if alpha is not None else 1.0) * x + (beta if beta is not None else 0.0)
    if name == "ScaledTanh":
        return lambda x: (alpha if alpha is not None else 1.0) * torch.tanh((beta if beta is not None else 1.0) * x)
    if name == "Softsign":
        return F.softsign
    if name == "Softplus":
        return F.softplus
    if name == "Elu":
        return lambda x: F.elu(x, alpha if alpha is not None else 1.0)
    if name == "ThresholdedRelu":
        return lambda x: F.threshold(x, alpha if alpha is not None else 1.0, 0.0)
    raise NotImplementedError(f"recurrent activation {name}")


def _cell(kind: str, xt: torch.Tensor, h: torch.Tensor, c: torch.Tensor, wd: torch.Tensor, rd: torch.Tensor,
          wb: torch.Tensor, rb: torch.Tensor, pd: torch.Tensor | None, f: list[Any], hidden: int,
          clip: float | None, linear_before_reset: int, input_forget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One time step of an ONNX RNN / GRU / LSTM direction: ``(h, c)`` after input ``xt`` [batch, input]."""
    gx = xt @ wd.t() + wb
    if kind == "RNN":
        g = gx + h @ rd.t() + rb
        if clip:
            g = torch.clamp(g, -clip, clip)
        return f[0](g), c
    if kind == "GRU":
        gz, gr, gh = gx.split(hidden, -1)
        rz, rr, rh = rd.split(hidden, 0)
        bz, br, bh = rb.split(hidden, -1)
        pre_z, pre_r = gz + h @ rz.t() + bz, gr + h @ rr.t() + br
        if clip:
            pre_z, pre_r = torch.clamp(pre_z, -clip, clip), torch.clamp(pre_r, -clip, clip)
        z, rg = f[0](pre_z), f[0](pre_r)
        pre_h = gh + rg * (h @ rh.t() + bh) if linear_before_reset else gh + (rg * h) @ rh.t() + bh
        if clip:
            pre_h = torch.clamp(pre_h, -clip, clip)
        return (1 - z) * f[1](pre_h) + z * h, c
    g = gx + h @ rd.t() + rb
    gi, go, gf, gc = g.split(hidden, -1)
    if pd is not None:
        pi, po, pf = pd.split(hidden, -1)
        gi, gf = gi + pi * c, gf + pf * c
    if clip:
        gi, gf, gc = (torch.clamp(v, -clip, clip) for v in (gi, gf, gc))
    i_, f_ = f[0](gi), f[0](gf)
    if input_forget:
        f_ = 1 - i_
    cn = f_ * c + i_ * f[1](gc)
    if pd is not None:
        go = go + po * cn
    if clip:
        go = torch.clamp(go, -clip, clip)
    return f[0](go) * f[2](cn), cn


def recurrent(kind: str, x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, bias: torch.Tensor | None,
              seq_lens: torch.Tensor | None, h0: torch.Tensor | None, c0: torch.Tensor | None, p: torch.Tensor | None,
              hidden: int, direction: str, activations: list[str] | None, alphas: list[float] | None,
              betas: list[float] | None, clip: float | None, layout: int, linear_before_reset: int,
              input_forget: int) -> tuple[torch.Tensor, ...]:
    """ONNX RNN / GRU / LSTM, all directions, gate orders as ONNX defines them (LSTM i,o,f,c; GRU
    z,r,h), optional sequence lengths, peepholes and clip.

    Without ``sequence_lens`` (every sequence spans all steps) the steps run as one
    ``torch._higher_order_ops.scan``: ``torch.export`` captures it with a dynamic sequence length
    (a Python loop would be unrolled at the example's length, and ``torch.nn.LSTM`` is too: both
    specialise it). With lengths, the steps are a Python loop (per-sample lengths are data)."""
    if layout:
        x = x.transpose(0, 1)
        h0 = h0.transpose(0, 1) if h0 is not None else None
        c0 = c0.transpose(0, 1) if c0 is not None else None
    seq, batch = x.shape[0], x.shape[1]
    ndir = 2 if direction == "bidirectional" else 1
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[kind]
    per = {"RNN": 1, "GRU": 2, "LSTM": 3}[kind]
    names = activations or {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}[kind] * ndir
    if len(names) == per and ndir == 2:
        names = names * 2
    al = list(alphas or [])
    be = list(betas or [])
    fns = [_act(nm, al[i] if i < len(al) else None, be[i] if i < len(be) else None) for i, nm in enumerate(names)]
    ys, hs, cs = [], [], []
    for d in range(ndir):
        reverse = direction == "reverse" or d == 1
        f = fns[d * per:(d + 1) * per]
        # copies, not views: scan refuses operands that alias one another (two slices of one bias)
        wd, rd = w[d].clone(), r[d].clone()
        bd = bias[d] if bias is not None else torch.zeros(2 * gates * hidden, dtype=x.dtype)
        wb, rb = bd[:gates * hidden].clone(), bd[gates * hidden:].clone()
        h = h0[d].clone() if h0 is not None else x.new_zeros(batch, hidden)
        c = c0[d].clone() if c0 is not None else x.new_zeros(batch, hidden)
        pd = p[d].clone() if p is not None else None

        def step(hc: tuple[torch.Tensor, torch.Tensor], xt: torch.Tensor, f: list[Any] = f, wd: torch.Tensor = wd,
                 rd: torch.Tensor = rd, wb: torch.Tensor = wb, rb: torch.Tensor = rb,
                 pd: torch.Tensor | None = pd) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
            hn, cn = _cell(kind, xt, hc[0], hc[1], wd, rd, wb, rb, pd, f, hidden, clip, linear_before_reset,
                           input_forget)
            return (hn, cn if kind == "LSTM" else cn.clone()), hn.clone()  # RNN/GRU carry c through unchanged

        if seq_lens is None:
            from torch._higher_order_ops.scan import scan

            xs = x.flip(0) if reverse else x
            (h, c), y = scan(step, (h, c), xs)
            ys.append(y.flip(0) if reverse else y)
            hs.append(h)
            cs.append(c)
            continue
        lens = seq_lens.long()
        out = [torch.zeros(batch, hidden, dtype=x.dtype) for _ in range(seq)]
        for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
            if reverse:  # each sequence runs backward over its own valid length
                xt = torch.stack([x[int(lens[bi]) - 1 - (seq - 1 - t), bi] if seq - 1 - t < int(lens[bi])
                                  else torch.zeros_like(x[0, bi]) for bi in range(batch)])
            else:
                xt = x[t]
            valid = (seq - 1 - t if reverse else t) < lens
            (hn, cn), _ = step((h, c), xt)
            m = valid.unsqueeze(1)
            h = torch.where(m, hn, h)
            c = torch.where(m, cn, c)
            if reverse:
                for bi in range(batch):
                    k = seq - 1 - t
                    if k < int(lens[bi]):
                        out[int(lens[bi]) - 1 - k] = out[int(lens[bi]) - 1 - k].clone()
                        out[int(lens[bi]) - 1 - k][bi] = hn[bi]
            else:
                out[t] = torch.where(m, hn, torch.zeros_like(hn))
        ys.append(torch.stack(out))
        hs.append(h)
        cs.append(c)
    y = torch.stack(ys, 1)  # seq, dir, batch, hidden
    yh, yc = torch.stack(hs), torch.stack(cs)
    if layout:
        return y.permute(2, 0, 1, 3), yh.transpose(0, 1), yc.transpose(0, 1)
    return y, yh, yc


# -- sequences (Python lists of tensors) and optionals (None or a value) ------------------
def seq_at(s: list[torch.Tensor], pos: Any) -> torch.Tensor:
    return s[int(pos)]


def seq_insert(s: list[torch.Tensor], t: torch.Tensor, pos: Any = None) -> list[torch.Tensor]:
    out = list(s)
    if pos is None:
        out.append(t)
    else:
        p = int(pos)
        out.insert(p if p >= 0 else len(out) + p, t)
    return out


def seq_erase(s: list[torch.Tensor], pos: Any = None) -> list[torch.Tensor]:
    out = list(s)
    del out[int(pos) if pos is not None else -1]
    return out


def seq_length(s: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor(len(s), dtype=torch.int64)


def concat_from_seq(s: list[torch.Tensor], axis: int, new_axis: int) -> torch.Tensor:
    return torch.stack(s, axis) if new_axis else torch.cat(s, axis)


def split_to_seq(x: torch.Tensor, split: torch.Tensor | None, axis: int, keepdims: int) -> list[torch.Tensor]:
    axis = axis % x.dim()
    if split is None:
        parts = list(torch.split(x, 1, dim=axis))
        return parts if keepdims else [p.squeeze(axis) for p in parts]
    if split.dim() == 0:
        return list(torch.split(x, int(split), dim=axis))
    return list(torch.split(x, [int(v) for v in split.tolist()], dim=axis))


def make_list(*xs: torch.Tensor) -> list[torch.Tensor]:
    return list(xs)


def optional_has(v: Any) -> torch.Tensor:
    return torch.tensor(v is not None)


def optional_get(v: Any) -> Any:
    if v is None:
        raise ValueError("OptionalGetElement on an empty optional")
    return v


def grid_sample(x: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str, align_corners: int) -> torch.Tensor:
    m = {"linear": "bilinear", "bilinear": "bilinear", "nearest": "nearest", "cubic": "bicubic", "bicubic": "bicubic"}[mode]
    if m == "bicubic" and x.dim() != 4:
        raise NotImplementedError("GridSample cubic on volumes")
    return F.grid_sample(x, grid.to(x.dtype), mode=m, padding_mode=padding_mode, align_corners=bool(align_corners))


def affine_grid(theta: torch.Tensor, size: IntsLike, align_corners: int) -> torch.Tensor:
    return F.affine_grid(theta, ints(size), align_corners=bool(align_corners))


def window(kind: str, size: Any, periodic: int, dtype: torch.dtype) -> torch.Tensor:
    n = int(size.item()) if isinstance(size, torch.Tensor) else int(size)
    fn = {"hann": torch.hann_window, "hamming": torch.hamming_window, "blackman": torch.blackman_window}[kind]
    if kind == "hamming":  # ONNX uses alpha 25/46, beta 21/46 (not torch's 0.54/0.46)
        k = torch.arange(n, dtype=torch.float64)
        denom = n if periodic else n - 1
        w = 25 / 46 - 21 / 46 * torch.cos(2 * math.pi * k / denom)
        return w.to(dtype)
    return fn(n, periodic=bool(periodic), dtype=torch.float64).to(dtype)


def center_crop_pad(x: torch.Tensor, shape: IntsLike, axes: list[int] | None) -> torch.Tensor:
    target = ints(shape)
    ax = [a % x.dim() for a in (axes if axes else range(x.dim()))]
    for a, t in zip(ax, target, strict=True):
        n = x.shape[a]
        if n > t:  # crop: start at (n - t) // 2
            x = x.narrow(a, (n - t) // 2, t)
        elif n < t:  # pad: the smaller half before
            before = (t - n) // 2
            pads = [0, 0] * (x.dim() - 1 - a) + [before, t - n - before]
            x = F.pad(x, pads)
    return x


def col2im(x: torch.Tensor, image_shape: IntsLike, block_shape: IntsLike, dilations: list[int] | None,
           pads: list[int] | None, strides: list[int] | None) -> torch.Tensor:
    img, blk = ints(image_shape), ints(block_shape)
    if len(img) != 2:
        raise NotImplementedError("Col2Im beyond 2-D images")
    p = pads or [0, 0, 0, 0]
    if p[:2] != p[2:]:
        raise NotImplementedError("Col2Im with asymmetric pads")
    return F.fold(x, img, blk, dilation=dilations or 1, padding=p[:2], stride=strides or 1)


def bitcast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.contiguous().view(dtype)


# -- control flow: bodies are imported GraphModules, run eagerly ---------------------------
class IfModule(torch.nn.Module):
    """ONNX ``If`` on a data-dependent condition: a Python ``if`` when run eagerly, ``torch.cond``
    under ``torch.export`` (both branches are captured; the exported program picks at run time).
    ``torch.cond`` needs both branches to return the same number of tensors of the same dtypes."""

    def __init__(self, then_gm: torch.nn.Module, else_gm: torch.nn.Module, n_then: int) -> None:
        super().__init__()
        self.then_branch, self.else_branch, self.n_then = then_gm, else_gm, n_then

    def forward(self, cond: torch.Tensor, *outer: Any) -> Any:
        if torch.compiler.is_exporting() or torch.compiler.is_compiling():
            n = self.n_then
            try:
                return torch.cond(cond.reshape(-1)[0].bool(), lambda *a: tuple(self.then_branch(*a[:n])),
                                  lambda *a: tuple(self.else_branch(*a[n:])), tuple(outer))
            except Exception as exc:
                from ...errors import UnsupportedError

                raise UnsupportedError("its condition is only known at run time, and torch.cond cannot take its "
                                       f"branches: {_innermost_line(exc)}") from None
        if bool(cond.reshape(-1)[0]):
            return self.then_branch(*outer[:self.n_then])
        return self.else_branch(*outer[self.n_then:])


def _innermost_line(exc: BaseException) -> str:
    """The first non-empty line of the innermost cause of ``exc`` (torch wraps the real reason)."""
    seen: set[int] = set()
    while id(exc) not in seen and (exc.__cause__ or exc.__context__) is not None:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return " ".join(line.split())[:240]


class LoopModule(torch.nn.Module):
    """ONNX ``Loop`` run eagerly (a Python loop). ``torch.export`` cannot capture it (the trip count
    and the condition are read as numbers); the importer unrolls the loops it can, and this one
    raises ``UnsupportedError`` saying why not (``why_not_unrolled``) when it is exported."""

    def __init__(self, body: torch.nn.Module, n_carried: int, why_not_unrolled: str = "") -> None:
        super().__init__()
        self.body, self.n_carried, self.why_not_unrolled = body, n_carried, why_not_unrolled

    def forward(self, trip: Any, cond: Any, *rest: Any) -> Any:
        if torch.compiler.is_exporting() or torch.compiler.is_compiling():
            from ...errors import UnsupportedError

            raise UnsupportedError(f"{self.why_not_unrolled or 'it is not unrolled'}; torch.export has no loop "
                                   "construct, and only a Loop with a constant trip count is unrolled")
        carried, outer = list(rest[:self.n_carried]), rest[self.n_carried:]
        max_trip = int(trip.reshape(-1)[0]) if trip is not None else None
        keep = bool(cond.reshape(-1)[0]) if cond is not None else True
        scans: list[list[Any]] = []
        i = 0
        while keep and (max_trip is None or i < max_trip):
            out = self.body(torch.tensor(i, dtype=torch.int64), torch.tensor(keep), *carried, *outer)
            keep = bool(out[0].reshape(-1)[0]) if cond is not None or True else True
            carried = list(out[1:1 + self.n_carried])
            for k, v in enumerate(out[1 + self.n_carried:]):
                if len(scans) <= k:
                    scans.append([])
                scans[k].append(v)
            i += 1
        n_scan = len(scans)
        return (*carried, *[torch.stack(s) for s in scans]) if n_scan else tuple(carried)


class ScanModule(torch.nn.Module):
    def __init__(self, body: torch.nn.Module, n_state: int, n_scan_in: int, in_axes: list[int], in_dirs: list[int],
                 out_axes: list[int], out_dirs: list[int]) -> None:
        super().__init__()
        self.body, self.n_state, self.n_in = body, n_state, n_scan_in
        self.in_axes, self.in_dirs, self.out_axes, self.out_dirs = in_axes, in_dirs, out_axes, out_dirs

    def forward(self, *args: Any) -> Any:
        states = list(args[:self.n_state])
        seqs = list(args[self.n_state:self.n_state + self.n_in])
        outer = args[self.n_state + self.n_in:]
        seqs = [torch.movedim(s, (self.in_axes[k] if k < len(self.in_axes) else 0) % s.dim(), 0) for k, s in enumerate(seqs)]
        seqs = [torch.flip(s, [0]) if k < len(self.in_dirs) and self.in_dirs[k] else s for k, s in enumerate(seqs)]
        steps = seqs[0].shape[0] if seqs else 0
        outs: list[list[torch.Tensor]] = []
        for t in range(steps):
            res = self.body(*states, *[s[t] for s in seqs], *outer)
            states = list(res[:self.n_state])
            for k, v in enumerate(res[self.n_state:]):
                if len(outs) <= k:
                    outs.append([])
                outs[k].append(v)
        stacked = []
        for k, o in enumerate(outs):
            y = torch.stack(o)
            if k < len(self.out_dirs) and self.out_dirs[k]:
                y = torch.flip(y, [0])
            ax = self.out_axes[k] if k < len(self.out_axes) else 0
            stacked.append(torch.movedim(y, 0, ax % y.dim()))
        return (*states, *stacked)


# -- integer / QLinear ops, emulated exactly in int64 / float64 ------------------------------
def _per_axis(v: torch.Tensor, rank: int, axis: int) -> torch.Tensor:
    if v.numel() == 1:
        return v.reshape(())
    shp = [1] * rank
    shp[axis] = -1
    return v.reshape(shp)


def _requant(acc: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    lo, hi = _Q_RANGE[like.dtype]
    q = torch.round(acc) + zero.to(torch.float64)
    return q.clamp(lo, hi).to(like.dtype)


def matmul_integer(a: torch.Tensor, b: torch.Tensor, za: torch.Tensor | None, zb: torch.Tensor | None) -> torch.Tensor:
    ai = a.to(torch.int64) - (za.to(torch.int64).reshape(-1, 1) if za is not None and za.numel() > 1 else
                              (za.to(torch.int64) if za is not None else 0))
    bi = b.to(torch.int64) - (zb.to(torch.int64) if zb is not None else 0)
    return torch.matmul(ai.double(), bi.double()).round().to(torch.int32)


def qlinear_matmul(a: torch.Tensor, sa: torch.Tensor, za: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                   zb: torch.Tensor, sy: torch.Tensor, zy: torch.Tensor) -> torch.Tensor:
    af = (a.to(torch.float64) - za.to(torch.float64)) * sa.to(torch.float64)
    zb_ = zb.to(torch.float64)
    sb_ = sb.to(torch.float64)
    if sb.numel() > 1:  # per-column
        zb_, sb_ = zb_.reshape(1, -1), sb_.reshape(1, -1)
    bf = (b.to(torch.float64) - zb_) * sb_
    return _requant(torch.matmul(af, bf) / sy.to(torch.float64), sy, zy, zy)


def conv_integer(x: torch.Tensor, w: torch.Tensor, zx: torch.Tensor | None, zw: torch.Tensor | None,
                 strides: list[int] | None, pads: list[int] | None, dilations: list[int] | None, group: int,
                 auto_pad: str) -> torch.Tensor:
    xf = x.to(torch.float64) - (zx.to(torch.float64) if zx is not None else 0.0)
    wz = _per_axis(zw.to(torch.float64), w.dim(), 0) if zw is not None else 0.0
    wf = w.to(torch.float64) - wz
    return conv(xf, wf, None, strides, pads, dilations, group, auto_pad).round().to(torch.int32)


def qlinear_conv(x: torch.Tensor, sx: torch.Tensor, zx: torch.Tensor, w: torch.Tensor, sw: torch.Tensor,
                 zw: torch.Tensor, sy: torch.Tensor, zy: torch.Tensor, bias: torch.Tensor | None,
                 strides: list[int] | None, pads: list[int] | None, dilations: list[int] | None, group: int,
                 auto_pad: str) -> torch.Tensor:
    xf = (x.to(torch.float64) - zx.to(torch.float64)) * sx.to(torch.float64)
    wf = (w.to(torch.float64) - _per_axis(zw.to(torch.float64), w.dim(), 0)) * _per_axis(sw.to(torch.float64), w.dim(), 0)
    bf = None
    if bias is not None:
        bf = bias.to(torch.float64) * sx.to(torch.float64) * sw.to(torch.float64).reshape(-1)
    y = conv(xf, wf, bf, strides, pads, dilations, group, auto_pad)
    return _requant(y / sy.to(torch.float64), sy, zy, zy)


def dynamic_quantize_linear(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xf = x.to(torch.float32)
    lo = torch.clamp(xf.min(), max=0.0)
    hi = torch.clamp(xf.max(), min=0.0)
    scale = (hi - lo) / 255.0
    zero = torch.clamp(torch.round(-lo / scale), 0, 255) if float(scale) != 0 else torch.tensor(0.0)
    q = torch.clamp(torch.round(xf / scale) + zero, 0, 255) if float(scale) != 0 else torch.clamp(zero + 0 * xf, 0, 255)
    return q.to(torch.uint8), scale.to(torch.float32), zero.to(torch.uint8)


def rotary_embedding(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor | None,
                     interleaved: int, rot_dim: int, num_heads: int) -> torch.Tensor:
    """RotaryEmbedding (opset 23): rotate the first ``rot_dim`` features of each head by the
    cached angles, halves or interleaved pairs; 4-D input is (B, H, S, D), 3-D is (B, S, H*D)."""
    shape = x.shape
    y = x.transpose(1, 2) if x.dim() == 4 else x.reshape(shape[0], shape[1], num_heads, -1)
    d = rot_dim or y.shape[3]
    rot, keep = y[..., :d], y[..., d:]
    if pos is not None:
        cos, sin = cos[pos.long()], sin[pos.long()]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if interleaved else rot.chunk(2, -1)
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    rot = torch.stack([real, imag], -1).reshape(rot.shape) if interleaved else torch.cat([real, imag], -1)
    out = torch.cat([rot, keep], -1)
    return out.reshape(shape) if x.dim() == 3 else out.transpose(1, 2)


def unique(x: torch.Tensor, axis: int | None, sorted_: int) -> tuple[torch.Tensor, ...]:
    """Unique with ONNX's four outputs; unsorted keeps first-occurrence order."""
    flat = x.reshape(-1) if axis is None else torch.movedim(x, axis, 0)
    vals, inverse, counts = torch.unique(flat, sorted=True, return_inverse=True, return_counts=True, dim=0)
    n = flat.shape[0]
    first = torch.full((vals.shape[0],), n, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(n), reduce="amin")
    if not sorted_:
        order = torch.argsort(first)
        remap = torch.empty_like(order)
        remap[order] = torch.arange(order.numel())
        vals, first, counts, inverse = vals[order], first[order], counts[order], remap[inverse]
    out_vals = vals if axis is None else torch.movedim(vals, 0, axis)
    return out_vals, first, inverse, counts


def dft(x: torch.Tensor, dft_length: Any, axis: Any, inverse: int, onesided: int) -> torch.Tensor:
    """DFT over one axis; the last input dim holds (real) or (real, imaginary)."""
    r = x.dim()
    axis = int(axis.reshape(-1)[0]) if isinstance(axis, torch.Tensor) else int(axis)
    a = axis + r if axis < 0 else axis
    c = torch.complex(x[..., 0].double(), x[..., 1].double()) if x.shape[-1] == 2 else x[..., 0].double().to(torch.complex128)
    given = int(dft_length.reshape(-1)[0]) if isinstance(dft_length, torch.Tensor) else dft_length
    if inverse and onesided:  # half spectrum in, real signal out
        n = given or 2 * (c.shape[a] - 1)
        return torch.fft.irfft(c, n=n, dim=a).unsqueeze(-1).to(x.dtype)
    n = given or c.shape[a]
    out = torch.fft.ifft(c, n=n, dim=a) if inverse else torch.fft.fft(c, n=n, dim=a)
    if onesided:
        out = out.narrow(a, 0, n // 2 + 1)
    return torch.stack([out.real, out.imag], -1).to(x.dtype)


def _corners(b: torch.Tensor, center: int) -> torch.Tensor:
    if center:
        x, y, w, h = b.unbind(-1)
        return torch.stack([y - h / 2, x - w / 2, y + h / 2, x + w / 2], -1)
    y1, x1, y2, x2 = b.unbind(-1)
    return torch.stack([torch.minimum(y1, y2), torch.minimum(x1, x2), torch.maximum(y1, y2), torch.maximum(x1, x2)], -1)


def non_max_suppression(boxes: torch.Tensor, scores: torch.Tensor, max_out: Any, iou_thr: Any, score_thr: Any,
                        center: int) -> torch.Tensor:
    """Greedy NMS per batch and class, ONNX order: by score (ties: lower index first), a box is
    dropped when its IoU with a kept one exceeds the threshold; rows are (batch, class, box)."""
    k = int(max_out.reshape(-1)[0]) if isinstance(max_out, torch.Tensor) and max_out.numel() else 0
    iou_t = float(iou_thr.reshape(-1)[0]) if isinstance(iou_thr, torch.Tensor) and iou_thr.numel() else 0.0
    s_t = float(score_thr.reshape(-1)[0]) if isinstance(score_thr, torch.Tensor) and score_thr.numel() else None
    out = []
    for bi in range(boxes.shape[0]):
        c = _corners(boxes[bi].double(), center)
        area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
        for ci in range(scores.shape[1]):
            sc = scores[bi, ci].double()
            cand = [i for i in range(sc.numel()) if s_t is None or float(sc[i]) > s_t]
            cand.sort(key=lambda i: (-float(sc[i]), i))
            kept: list[int] = []
            for i in cand:
                if len(kept) >= k:
                    break
                ok = True
                for j in kept:
                    ih = max(0.0, float(torch.minimum(c[i, 2], c[j, 2]) - torch.maximum(c[i, 0], c[j, 0])))
                    iw = max(0.0, float(torch.minimum(c[i, 3], c[j, 3]) - torch.maximum(c[i, 1], c[j, 1])))
                    inter = ih * iw
                    union = float(area[i]) + float(area[j]) - inter
                    if union > 0 and inter > 0 and inter / union > iou_t:
                        ok = False
                        break
                if ok:
                    kept.append(i)
            out += [[bi, ci, i] for i in kept]
    return torch.tensor(out, dtype=torch.int64).reshape(-1, 3)


# What structured pruning needs to know of these functions to follow channels through an imported graph
# (``deepshrink.prune.structured.graph`` reads ``fn.channel_rule``): "elementwise" (operands broadcast against
# each other; channels pass through, residual adds couple them), "passthrough" (the channel axis comes out as
# it went in: pooling, spatial padding — checked on the shapes), "reshape" (read from the shapes: a flatten of
# the channel axis and what follows), "reduce:A:K" (a reduction whose axes are argument A and keepdims
# argument K: channels pass when their axis is not reduced). Anything without a rule stops the channel sets
# it touches, which are then left unpruned and named.
_ARITHMETIC = {operator.add, operator.sub, operator.mul, div, pow_}
CHANNEL_RULES = {clip: "elementwise", mish: "elementwise", prelu: "elementwise", div: "elementwise",
                 pool: "passthrough", reshape: "reshape", flatten: "reshape", squeeze: "reshape",
                 reduce: "reduce:2:3"}
for _fn, _rule in CHANNEL_RULES.items():
    _fn.channel_rule = _rule  # type: ignore[attr-defined]
reshape.shape_argument = 1  # type: ignore[attr-defined]  # its target shape (ONNX: 0 copies the input's dim)
