"""Magnitude and N:M masks, the Zhu & Gupta cubic schedule, and the callback that applies
it during fine-tuning through the shared :class:`~deepshrink.train.Trainer`.

Mask plumbing uses ``torch.nn.utils.prune`` (``custom_from_mask``/``remove``); only the
choice of *which* weights to zero is written here, because torch's own ``l1_unstructured``
cannot rank weights globally by a count and has no N:M method.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from ...train import Callback, Trainer
from .._common import WEIGHTED


def _effective(m: nn.Module) -> torch.Tensor:
    return m.weight.detach()  # with a mask attached this is weight_orig * weight_mask


def _mask_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.ones(scores.numel(), dtype=torch.float32)
    if k > 0:
        idx = torch.argsort(scores.flatten(), stable=True)[:k]
        mask[idx] = 0.0
    return mask.view_as(scores)


def magnitude_masks(layers: dict[str, nn.Module], *, sparsity: float | None = None,
                    threshold: float | None = None, scope: str = "layer") -> dict[str, torch.Tensor]:
    """Masks (1 keep, 0 prune) zeroing the smallest-magnitude weights.

    ``threshold``: zero every ``|w| < threshold``. ``sparsity`` with ``scope="layer"``: each
    layer loses ``round(s * numel)`` weights; with ``"global"``: the ``round(s * total)``
    smallest weights of all layers together.
    """
    if threshold is not None:
        return {n: (_effective(m).abs() >= threshold).float() for n, m in layers.items()}
    assert sparsity is not None
    if scope == "layer":
        return {n: _mask_smallest(_effective(m).abs(), int(round(sparsity * m.weight.numel())))
                for n, m in layers.items()}
    flat = torch.cat([_effective(m).abs().flatten() for m in layers.values()])
    k = int(round(sparsity * flat.numel()))
    mask = _mask_smallest(flat, k)
    out, start = {}, 0
    for n, m in layers.items():
        size = m.weight.numel()
        out[n] = mask[start:start + size].view_as(m.weight)
        start += size
    return out


def nm_masks(layers: dict[str, nn.Module], n: int = 2, m: int = 4) -> dict[str, torch.Tensor]:
    """Keep the ``n`` largest of every ``m`` consecutive weights along the input dimension
    (conv weights are grouped channels-last, as sparse tensor cores read them).
    A layer whose input size is not a multiple of ``m`` is skipped with a warning."""
    out = {}
    for name, layer in layers.items():
        w = _effective(layer)
        wl = w.permute(0, *range(2, w.dim()), 1) if w.dim() > 2 else w  # (out, ..., in)
        if wl.shape[-1] % m:
            warnings.warn(f"N:M pruning skips layer {name!r}: its input size {wl.shape[-1]} is not a multiple of {m}",
                          stacklevel=2)
            continue
        groups = wl.reshape(-1, m).abs()
        keep = torch.topk(groups, n, dim=1).indices
        mask = torch.zeros_like(groups).scatter_(1, keep, 1.0).reshape(wl.shape)
        if w.dim() > 2:
            mask = mask.permute(0, w.dim() - 1, *range(1, w.dim() - 1))
        out[name] = mask.contiguous()
    return out


_DIRECT = "_deepshrink_mask"


def apply_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    """Attach (or update) a ``weight_mask`` reparametrisation on each layer.

    Modules that are never *called* (the parameter holders of a ``.pt2`` graph, whose graph
    reads ``weight`` directly) cannot use torch's forward-pre-hook reparametrisation; their
    weights are zeroed in place and :class:`HoldMasks` re-zeroes them after every step.
    """
    for name, mask in masks.items():
        layer = layers[name]
        if not isinstance(layer, WEIGHTED):
            with torch.no_grad():
                layer.weight.mul_(mask.to(layer.weight.dtype))
            setattr(layer, _DIRECT, mask.to(layer.weight.dtype))
            continue
        if tprune.is_pruned(layer) and hasattr(layer, "weight_mask"):
            layer.weight_mask.copy_(mask.to(layer.weight_mask.dtype))
            layer.weight = layer.weight_orig * layer.weight_mask  # refresh outside forward too
        else:
            tprune.custom_from_mask(layer, "weight", mask.to(layer.weight.dtype))


def remove_masks(model: nn.Module) -> None:
    """Bake masks into the weights and drop the reparametrisation (plain module again)."""
    for m in model.modules():
        if hasattr(m, "weight_mask") and hasattr(m, "weight_orig"):
            tprune.remove(m, "weight")
        if hasattr(m, _DIRECT):
            with torch.no_grad():
                m.weight.mul_(getattr(m, _DIRECT))
            delattr(m, _DIRECT)


class HoldMasks(Callback):
    """Re-zero directly-masked weights after each optimizer step (see :func:`apply_masks`)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        with torch.no_grad():
            for m in self.model.modules():
                mask = getattr(m, _DIRECT, None)
                if mask is not None:
                    m.weight.mul_(mask)


def cubic_sparsity(step: int, *, initial: float, final: float, begin: int, end: int) -> float:
    """Zhu & Gupta: ``s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^3``, clamped to [t0, t1]."""
    if step <= begin:
        return initial
    if step >= end:
        return final
    frac = (step - begin) / max(end - begin, 1)
    return final + (initial - final) * (1.0 - frac) ** 3


class GradualPruneCallback(Callback):
    """Raise sparsity along the cubic schedule while the trainer fine-tunes; masks stay
    attached (pruned weights stay zero) until :func:`remove_masks` at the end."""

    def __init__(self, layers: dict[str, nn.Module], *, initial: float, final: float, begin: float = 0.0,
                 end: float = 0.6, frequency: int = 10, scope: str = "layer") -> None:
        self.layers = layers
        self.initial, self.final = initial, final
        self.begin_frac, self.end_frac = begin, end
        self.frequency = frequency
        self.scope = scope
        self.current = 0.0
        self.history: list[tuple[int, float]] = []

    def _bounds(self, trainer: Trainer) -> tuple[int, int]:
        total = max(trainer.total_steps, 1)
        return int(self.begin_frac * total), max(int(self.end_frac * total), int(self.begin_frac * total) + 1)

    def _update(self, step: int, sparsity: float) -> None:
        apply_masks(self.layers, magnitude_masks(self.layers, sparsity=sparsity, scope=self.scope))
        self.current = sparsity
        self.history.append((step, sparsity))

    def on_train_begin(self, trainer: Trainer) -> None:
        b, e = self._bounds(trainer)
        self._update(trainer.step, cubic_sparsity(trainer.step, initial=self.initial, final=self.final, begin=b, end=e))

    def on_step_begin(self, trainer: Trainer) -> None:
        b, e = self._bounds(trainer)
        t = trainer.step
        due = b <= t <= e and (t - b) % self.frequency == 0
        if due or (t > e and self.current < self.final):
            self._update(t, cubic_sparsity(t, initial=self.initial, final=self.final, begin=b, end=e))

    def on_train_end(self, trainer: Trainer) -> None:
        if self.current < self.final:
            self._update(trainer.step, self.final)

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = float(state.get("current", 0.0))
        if self.current > 0:
            self._update(-1, self.current)
