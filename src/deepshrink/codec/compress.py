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


def _bits(kind: str, cfg: DeepCompressionConfig, *names: str) -> int | None:
    for pat, b in cfg.layer_bits.items():
        if any(fnmatch.fnmatchcase(n, pat) for n in names):
            return b
    return {"fc": cfg.fc_bits, "conv": cfg.conv_bits}.get(kind, cfg.other_bits)


def check_patterns(names: list[str], cfg: DeepCompressionConfig, tensor_names: list[str] | None = None) -> None:
    """A ``layer_sparsity`` / ``layer_bits`` pattern that matches no layer (``layer_bits``: nor
    tensor) is a typo: refuse it."""
    for field, pats, pool in (("layer_sparsity", cfg.layer_sparsity, names),
                              ("layer_bits", cfg.layer_bits, names + (tensor_names or []))):
        for pat in pats:
            if not any(fnmatch.fnmatchcase(n, pat) for n in pool):
                raise InputError(f"{field} pattern {pat!r} matches no layer; layers: {', '.join(names[:8])}"
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


def _check_labels(model: nn.Module, data: tuple[Any, ...]) -> None:
    """Refuse labels the fine-tune's cross-entropy cannot read (:func:`deepshrink.core.data.check_class_labels`),
    from the model's output on the first two samples, before any training."""
    from ..backends.torch import probe_output
    from ..core.data import check_class_labels

    out = probe_output(model, tuple(np.asarray(x)[:2] for x in data[:-1]))
    check_class_labels(data[-1], out, "given for fine-tuning")


def _kind(module: nn.Module, pname: str) -> str:
    if pname == "weight" and isinstance(module, _CONV):
        return "conv"
    if pname == "weight" and isinstance(module, (nn.Linear, nn.Embedding)):
        return "fc"
    return "other"


def fold_batchnorm(model: nn.Module) -> list[nn.Module]:
    """Fold each BatchNorm whose input is a Conv1d/2d/3d output used by nothing else into
    that convolution, in place (Jacob et al., CVPR 2018, §3.2): per output channel
    ``s = γ / sqrt(var + ε)``, ``W ← W · s · sqrt(1 + ε)``, conv bias ← 0, and the norm
    becomes ``γ = 1``, ``mean = 0``, ``var = 1``, ``β ← β + (b − mean) · s``, so in
    inference mode the model computes the same function (to float rounding). A module
    called more than once is left alone. Returns the folded norms (the caller keeps them
    in inference mode and their scale frozen). Raises :class:`UnsupportedError` when
    the model has a BatchNorm and ``torch.fx`` cannot trace it."""
    import math

    import torch.fx

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return []  # nothing to fold: no need to trace
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: cannot fold
        raise UnsupportedError(f"fold_bn needs a model torch.fx can trace ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}); pack without fold_bn") from None
    mods = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded: list[nn.Module] = []
    for node in graph.nodes:
        bn = mods.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or calls[node.target] != 1:
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv = mods.get(src.target)
        if type(conv) not in (nn.Conv1d, nn.Conv2d, nn.Conv3d) or calls[src.target] != 1:
            continue
        if not bn.affine or bn.running_mean is None or bn.running_var is None:
            continue
        with torch.no_grad():
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * s
            if conv.bias is not None:
                shift += conv.bias * s
                conv.bias.zero_()
            conv.weight.mul_((s * math.sqrt(1.0 + bn.eps)).reshape(-1, *[1] * (conv.weight.dim() - 1)))
            bn.weight.fill_(1.0)
            bn.bias.copy_(shift)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
        bn.weight.requires_grad_(False)
        folded.append(bn)
    return folded


def _hold_eval(modules: list[nn.Module]) -> Any:
    """A Trainer callback that keeps ``modules`` (folded BatchNorms) in inference mode."""
    from ..train.trainer import Callback

    class HoldEval(Callback):
        def on_train_begin(self, trainer: Any) -> None:
            self.on_step_begin(trainer)

        def on_step_begin(self, trainer: Any) -> None:
            for m in modules:
                m.eval()

    return HoldEval()


def kernel_masks(layers: dict[str, nn.Module], sparsity: float, kernel_sparsity: float) -> dict[str, torch.Tensor]:
    """Masks (1 keep, 0 prune) that first zero whole convolution kernels (the ``k×k`` slice
    of one input channel of one filter), the ``round(kernel_sparsity · kernels)`` of
    smallest L2 norm, then the smallest-magnitude remaining weights up to
    ``round(sparsity · numel)`` zeros per layer (Mao et al., "Exploring the Granularity of
    Sparsity in CNNs", CVPRW 2017: coarse groups need fewer index bits). Layers whose
    kernels are single weights (1×1, Linear) get plain magnitude masks."""
    out = {}
    for name, m in layers.items():
        w = m.weight.detach()
        k = int(round(sparsity * w.numel()))
        score = w.abs().reshape(-1).clone()
        if w.dim() > 2 and w[0, 0].numel() > 1 and kernel_sparsity > 0:
            ker = w.reshape(-1, w[0, 0].numel())
            nk = int(round(kernel_sparsity * ker.shape[0]))
            if nk:
                dead = torch.argsort(ker.norm(dim=1), stable=True)[:nk]
                score.view(ker.shape)[dead] = -1.0  # ranked first
                k = max(k, nk * ker.shape[1])
        mask = torch.ones(w.numel(), dtype=torch.float32)
        if k:
            mask[torch.argsort(score, stable=True)[:k]] = 0.0
        out[name] = mask.view_as(w)
    return out


def _kernel_callback(layers: dict[str, nn.Module], final: float, kernel_sparsity: float) -> Any:
    """Gradual pruning (Zhu & Gupta's schedule) with :func:`kernel_masks`: the kernel share
    grows in proportion to the sparsity."""
    from ..prune.unstructured import GradualPruneCallback, apply_masks

    class KernelPrune(GradualPruneCallback):
        def _update(self, step: int, sparsity: float) -> None:
            ks = kernel_sparsity * sparsity / final if final > 0 else 0.0
            apply_masks(self.layers, kernel_masks(self.layers, sparsity, ks))
            self.current = sparsity
            self.history.append((step, sparsity))

    return KernelPrune(layers, initial=0.0, final=final)


def _prune_torch(model: nn.Module, targets: dict[str, float], cfg: DeepCompressionConfig, data: Any, seed: int,
                 progress: bool, extra: tuple[Any, ...] = (), step_fn: Any = None) -> None:
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
    ks = {s: (cfg.kernel_sparsity if 0 < cfg.kernel_sparsity <= s else 0.0) for s in by_s}
    if data is None or cfg.prune_epochs == 0:
        for s, layers in by_s.items():
            apply_masks(layers, kernel_masks(layers, s, ks[s]) if ks[s] else magnitude_masks(layers, sparsity=s))
    else:
        cbs = [_kernel_callback(layers, s, ks[s]) if ks[s] else GradualPruneCallback(layers, initial=0.0, final=s)
               for s, layers in sorted(by_s.items())]
        Trainer(model, epochs=cfg.prune_epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=seed, step_fn=step_fn,
                progress=progress, callbacks=[*cbs, HoldMasks(model), *extra], lr_schedule=cfg.lr_schedule).fit(data)
    remove_masks(model)


def compress_torch(model: nn.Module, cfg: DeepCompressionConfig, *, data: tuple[Any, ...] | None = None,
                   seed: int = 0, progress: bool = False, after_pruning: Any = None) -> list[TensorStats]:
    """Prune and weight-share ``model`` in place (see module docstring).

    ``data``: ``(inputs..., labels)`` arrays for fine-tuning (classification loss), or
    ``None`` for one-shot pruning and k-means. ``after_pruning``: called with ``model`` between pruning and
    weight sharing (an ONNX import folds the BatchNorms it trained with there). Returns per-tensor statistics. Raises
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
    if data is not None and (cfg.prune_epochs or cfg.finetune_epochs) and not (cfg.distill and cfg.kd_alpha >= 1):
        _check_labels(model, data)
    weights = {n: _kind(m, "weight") for n, m in model.named_modules()
               if isinstance(getattr(m, "weight", None), nn.Parameter) and _kind(m, "weight") != "other"}
    check_patterns(list(weights), cfg, [n for n, _ in model.named_parameters()])
    targets = {n: _sparsity(n, k, cfg) for n, k in weights.items()}
    step_fn = None  # cross-entropy; with distill, Hinton et al.'s KD loss against the uncompressed model
    if cfg.distill and data is not None:
        from ..train.kd import frozen_copy, kd_step

        step_fn = kd_step(frozen_copy(model), cfg.kd_temperature, cfg.kd_alpha)
    _prune_torch(model, targets, cfg, data, seed, progress, (), step_fn)
    if after_pruning is not None:
        after_pruning(model)
    # folded after pruning: pruning's fine-tuning keeps batch statistics (folded first, it lost 3.6 pt on seed 0)
    folded = fold_batchnorm(model) if cfg.fold_bn else []
    frozen = {id(bn.weight) for bn in folded}
    hold = (_hold_eval(folded),) if folded else ()

    stats: list[TensorStats] = []
    shared: list[_SharedWeight] = []
    modules = dict(model.named_modules())
    for mname, module in list(modules.items()):
        for pname, p in list(module.named_parameters(recurse=False)):
            if not p.is_floating_point():
                continue
            full = f"{mname}.{pname}" if mname else pname
            kind = _kind(module, pname)
            bits = None if id(p) in frozen else _bits(kind, cfg, mname if kind != "other" else full, full)
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
                step_fn=step_fn, callbacks=hold, progress=progress, params=[s.centroids for s in shared],
                lr_schedule=cfg.lr_schedule).fit(data)
    with torch.no_grad():
        for s in shared:
            s.centroids.copy_(s.centroids.to(torch.float16).to(torch.float32))
    for module in modules.values():
        if parametrize.is_parametrized(module):
            for pname in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, pname, leave_parametrized=True)
    model.eval()
    # buffers (BatchNorm running statistics) are shared one-shot, after fine-tuning moved them
    folded_ids = {id(bn) for bn in folded}  # their statistics are the constants 0 and 1
    with torch.no_grad():
        for mname, module in modules.items():
            for bname, b in module.named_buffers(recurse=False):
                if (b is None or not b.is_floating_point() or cfg.buffer_bits is None or b.numel() == 0
                        or id(module) in folded_ids):
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
    An "other" tensor holding NaN or Inf (a graph constant such as the ``-inf`` a Max starts from) is
    kept as it is. Returns new arrays (same dtypes/shapes) and per-tensor statistics. Raises
    :class:`InputError` for an "fc"/"conv" weight holding NaN or Inf."""
    kinds = {n: ("fc" if a.ndim == 2 else "conv" if a.ndim >= 3 else "other")
             for n, a in tensors.items() if a.dtype.kind == "f"}
    check_patterns([n for n, k in kinds.items() if k != "other"], cfg, list(kinds))
    out = dict(tensors)
    stats = []
    for name, kind in kinds.items():
        a = tensors[name]
        if a.size == 0:
            continue
        if not np.isfinite(a).all():
            if kind == "other":  # a constant such as jax2tf's -inf that starts a Max: no weight, kept as it is
                stats.append(TensorStats(name, kind, a.size, int(np.count_nonzero(a)), 0.0, 0, 0))
                continue
            raise InputError(f"initializer {name!r} holds NaN or Inf values; Deep Compression needs finite weights")
        w = torch.from_numpy(a.astype(np.float32).reshape(-1))
        s = _sparsity(name, kind, cfg) if kind != "other" else 0.0
        bits = _bits(kind, cfg, name)
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
