"""Deep Compression's lossy stages (Han et al., ICLR 2016, §2–3): pruning with fine-tuning,
then trained quantization — per-layer k-means weight sharing whose centroids are
fine-tuned with the cluster assignments fixed (the gradient of a centroid is the sum of
its weights' gradients). Pruned weights stay exactly zero throughout.

Torch models get the full method (gradual pruning and centroid fine-tuning through the
shared :class:`~deepshrink.train.Trainer` when labelled data is given); ONNX initializers
get the one-shot version (magnitude pruning, k-means). The result is a model whose
tensors hold few distinct float16-representable values; the container then stores them
losslessly (:mod:`deepshrink.codec.container`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import InputError, UnsupportedError
from .config import DeepCompressionConfig

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_INIT = {"linear": "linear", "density": "quantile", "random": "kmeans++"}
_FIT_SAMPLE = 1 << 16  # k-means on more values than this fits on a seeded sample


@dataclass
class TensorStats:
    """What the lossy stages did to one tensor: its kind (fc / conv / other), element
    count, non-zeros after pruning, bits of weight sharing (0: untouched; -1: float16)."""

    name: str
    kind: str
    numel: int
    nonzero: int
    sparsity_target: float
    bits: int
    clusters: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sparsity(name: str, kind: str, cfg: DeepCompressionConfig) -> float:
    for pat, s in cfg.layer_sparsity.items():
        if fnmatch.fnmatchcase(name, pat):
            return s
    if kind == "conv":
        return cfg.fc_sparsity if cfg.conv_sparsity is None else cfg.conv_sparsity
    return cfg.fc_sparsity if kind == "fc" else 0.0


def _bits(kind: str, cfg: DeepCompressionConfig) -> int | None:
    return {"fc": cfg.fc_bits, "conv": cfg.conv_bits}.get(kind, cfg.other_bits)


def check_patterns(names: list[str], cfg: DeepCompressionConfig) -> None:
    """A ``layer_sparsity`` pattern that matches no layer is a typo: refuse it."""
    for pat in cfg.layer_sparsity:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise InputError(f"layer_sparsity pattern {pat!r} matches no layer; layers: {', '.join(names[:8])}"
                             + (", ..." if len(names) > 8 else ""))


def share_weights(values: torch.Tensor, bits: int, cfg: DeepCompressionConfig, seed: int, name: str,
                  log_domain: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means over a 1-D float tensor: (sorted float16-representable centroids ``(K,)``
    float32, indices ``(N,)`` int64, each value's nearest centroid). At most 2^bits
    clusters, fitted on at most 2^16 sampled values (plus the minimum and maximum); with
    N ≤ 2^bits the values are only rounded to float16. ``log_domain`` (all values > 0, e.g. BatchNorm variances):
    cluster ``log(values)`` so the error is relative, not absolute."""
    from ..quantize.nonlinear import kmeans_quantize

    if values.numel() <= 2**bits:
        half = values.to(torch.float16).to(torch.float32)
        cent, idx = torch.unique(half, return_inverse=True)
        return cent, idx
    x = values.log() if log_domain else values
    fit = x
    if x.numel() > _FIT_SAMPLE:  # centroids from a sample that keeps the extremes; every value assigned below
        g = torch.Generator().manual_seed(seed)
        pick = torch.randint(0, x.numel(), (_FIT_SAMPLE,), generator=g)
        fit = torch.cat([x[pick], x.min().reshape(1), x.max().reshape(1)])
    cb = kmeans_quantize(fit, bits, init=_INIT[cfg.init], iters=cfg.kmeans_iters, seed=seed, name=name)
    cent = cb.codebook.exp() if log_domain else cb.codebook
    cent = torch.unique(cent.to(torch.float16).to(torch.float32))  # sorted; fp16 may merge neighbours
    xs = values.to(torch.float32)
    idx = torch.searchsorted((cent[1:] + cent[:-1]) / 2, xs.contiguous())  # nearest centroid
    return cent, idx.long()


def _positive_zero(t: torch.Tensor) -> torch.Tensor:
    """-0.0 → +0.0 (the container's sparse "zero" is the all-zero bit pattern)."""
    return torch.where(t == 0, torch.zeros_like(t), t)


# -- torch --------------------------------------------------------------------------------
class _SharedWeight(nn.Module):
    """Parametrization: the tensor is ``centroids[indices]`` (zero where pruned); only the
    centroids train, and autograd's index backward sums gradients per cluster."""

    def __init__(self, centroids: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor | None,
                 shape: torch.Size) -> None:
        super().__init__()
        self.centroids = nn.Parameter(centroids.clone())
        self.register_buffer("indices", indices)
        self.register_buffer("mask", mask)
        self.shape = shape

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        flat = self.centroids[self.indices]
        if self.mask is None:
            return flat.reshape(self.shape)
        out = torch.zeros(self.mask.numel(), dtype=flat.dtype, device=flat.device)
        return out.masked_scatter(self.mask.reshape(-1), flat).reshape(self.shape)


def _kind(module: nn.Module, pname: str) -> str:
    if pname == "weight" and isinstance(module, _CONV):
        return "conv"
    if pname == "weight" and isinstance(module, (nn.Linear, nn.Embedding)):
        return "fc"
    return "other"


def _prune_torch(model: nn.Module, targets: dict[str, float], cfg: DeepCompressionConfig, data: Any, seed: int,
                 progress: bool) -> None:
    from ..prune.unstructured import (
        GradualPruneCallback,
        HoldMasks,
        apply_masks,
        magnitude_masks,
        remove_masks,
    )
    from ..train import Trainer

    modules = dict(model.named_modules())
    by_s: dict[float, dict[str, nn.Module]] = {}
    for name, s in targets.items():
        if s > 0:
            by_s.setdefault(s, {})[name] = modules[name]
    if not by_s:
        return
    if data is None or cfg.prune_epochs == 0:
        for s, layers in by_s.items():
            apply_masks(layers, magnitude_masks(layers, sparsity=s))
    else:
        cbs = [GradualPruneCallback(layers, initial=0.0, final=s) for s, layers in sorted(by_s.items())]
        Trainer(model, epochs=cfg.prune_epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=seed,
                progress=progress, callbacks=[*cbs, HoldMasks(model)], lr_schedule=cfg.lr_schedule).fit(data)
    remove_masks(model)


def compress_torch(model: nn.Module, cfg: DeepCompressionConfig, *, data: tuple[Any, ...] | None = None,
                   seed: int = 0, progress: bool = False) -> list[TensorStats]:
    """Prune and weight-share ``model`` in place (see module docstring).

    ``data``: ``(inputs..., labels)`` arrays for fine-tuning (classification loss), or
    ``None`` for one-shot pruning and k-means. Returns per-tensor statistics. Raises
    :class:`InputError` for NaN/Inf weights or a pattern that matches no layer, and
    :class:`UnsupportedError` for bfloat16 or tied parameters.
    """
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InputError(f"tensor {name!r} holds NaN or Inf values; Deep Compression needs finite weights")
        if t.dtype == torch.bfloat16:
            raise UnsupportedError(f"tensor {name!r} is bfloat16; convert the model to float32 first")
    owners: dict[int, str] = {}
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if id(p) in owners:
                raise UnsupportedError(f"parameter {full!r} is tied to {owners[id(p)]!r}; Deep Compression of tied "
                                       "weights is not supported (export to ONNX and pack that)")
            owners[id(p)] = full
    weights = {n: _kind(m, "weight") for n, m in model.named_modules()
               if isinstance(getattr(m, "weight", None), nn.Parameter) and _kind(m, "weight") != "other"}
    check_patterns(list(weights), cfg)
    targets = {n: _sparsity(n, k, cfg) for n, k in weights.items()}
    _prune_torch(model, targets, cfg, data, seed, progress)

    stats: list[TensorStats] = []
    shared: list[_SharedWeight] = []
    modules = dict(model.named_modules())
    for mname, module in list(modules.items()):
        for pname, p in list(module.named_parameters(recurse=False)):
            if not p.is_floating_point():
                continue
            full = f"{mname}.{pname}" if mname else pname
            kind = _kind(module, pname)
            bits = _bits(kind, cfg)
            s_target = targets.get(mname, 0.0) if kind != "other" else 0.0
            w = p.detach().reshape(-1).to(torch.float32)
            mask = (w != 0) if s_target > 0 else None
            if bits is None:
                stats.append(TensorStats(full, kind, w.numel(), int((w != 0).sum()), s_target, 0, 0))
                continue
            vals = w[mask] if mask is not None else w
            if vals.numel() == 0:
                stats.append(TensorStats(full, kind, w.numel(), 0, s_target, bits, 0))
                continue
            cent, idx = share_weights(vals, bits, cfg, seed, full)
            param = _SharedWeight(cent, idx, mask, p.shape)
            parametrize.register_parametrization(module, pname, param)
            shared.append(param)
            stats.append(TensorStats(full, kind, w.numel(), int(vals.numel()), s_target,
                                     bits if vals.numel() > 2**bits else -1, len(cent)))
    if shared and data is not None and cfg.finetune_epochs > 0:
        from ..train import Trainer

        Trainer(model, epochs=cfg.finetune_epochs, lr=cfg.centroid_lr, batch_size=cfg.batch_size, seed=seed,
                progress=progress, params=[s.centroids for s in shared], lr_schedule=cfg.lr_schedule).fit(data)
    with torch.no_grad():
        for s in shared:
            s.centroids.copy_(s.centroids.to(torch.float16).to(torch.float32))
    for module in modules.values():
        if parametrize.is_parametrized(module):
            for pname in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, pname, leave_parametrized=True)
    model.eval()
    # buffers (BatchNorm running statistics) are shared one-shot, after fine-tuning moved them
    with torch.no_grad():
        for mname, module in modules.items():
            for bname, b in module.named_buffers(recurse=False):
                if b is None or not b.is_floating_point() or cfg.buffer_bits is None or b.numel() == 0:
                    continue
                full = f"{mname}.{bname}" if mname else bname
                flat = b.reshape(-1).float()
                cent, idx = share_weights(flat, cfg.buffer_bits, cfg, seed, full, log_domain=bool((flat > 0).all()))
                b.copy_(cent[idx].reshape(b.shape).to(b.dtype))
                stats.append(TensorStats(full, "other", b.numel(), int((b != 0).sum()), 0.0,
                                         cfg.buffer_bits if b.numel() > 2**cfg.buffer_bits else -1, len(cent)))
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(_positive_zero(t))
    return stats


# -- arrays (ONNX initializers) -------------------------------------------------------------
def compress_arrays(tensors: dict[str, np.ndarray], cfg: DeepCompressionConfig, *, seed: int = 0
                    ) -> tuple[dict[str, np.ndarray], list[TensorStats]]:
    """One-shot Deep Compression of named float arrays (ONNX initializers): 2-D tensors are
    "fc", ≥ 3-D "conv", the rest "other". Magnitude pruning per tensor, then k-means.
    Returns new arrays (same dtypes/shapes) and per-tensor statistics."""
    kinds = {n: ("fc" if a.ndim == 2 else "conv" if a.ndim >= 3 else "other")
             for n, a in tensors.items() if a.dtype.kind == "f"}
    check_patterns([n for n, k in kinds.items() if k != "other"], cfg)
    out = dict(tensors)
    stats = []
    for name, kind in kinds.items():
        a = tensors[name]
        if a.size == 0:
            continue
        if not np.isfinite(a).all():
            raise InputError(f"initializer {name!r} holds NaN or Inf values; Deep Compression needs finite weights")
        w = torch.from_numpy(a.astype(np.float32).reshape(-1))
        s = _sparsity(name, kind, cfg) if kind != "other" else 0.0
        bits = _bits(kind, cfg)
        if s > 0:
            k = int(round(s * w.numel()))
            if k:
                w = w.clone()
                w[torch.argsort(w.abs(), stable=True)[:k]] = 0.0
        mask = (w != 0) if s > 0 else None
        if bits is None:
            out[name] = w.numpy().astype(a.dtype).reshape(a.shape)
            stats.append(TensorStats(name, kind, w.numel(), int((w != 0).sum()), s, 0, 0))
            continue
        vals = w[mask] if mask is not None else w
        q = torch.zeros_like(w)
        n_clusters = 0
        if vals.numel():
            cent, idx = share_weights(vals, bits, cfg, seed, name)
            n_clusters = len(cent)
            if mask is not None:
                q[mask] = cent[idx]
            else:
                q = cent[idx]
        out[name] = _positive_zero(q).numpy().astype(a.dtype).reshape(a.shape)
        stats.append(TensorStats(name, kind, w.numel(), int(vals.numel()), s,
                                 bits if vals.numel() > 2**bits else -1, n_clusters))
    return out, stats
