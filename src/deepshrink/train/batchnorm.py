"""BatchNorm put back for training, folded again after: for models whose exporter folded it away.

An ONNX file (and so its PyTorch import) almost never has BatchNorm: exporters fold each one into the
convolution before it. Fine-tuning such a network after pruning recovers like a network without BatchNorm — the
digits CNN at half its channels, 10 epochs: 94.8 % from its ONNX file against 99.2 % from the module with its
BatchNorm (``benchmarks/results/prune_onnx_cnn.md``). :func:`insert_batchnorm` puts a BatchNorm after every
convolution of an imported ``GraphModule`` that has none, set from the data so that in eval mode it is exactly
the identity (running mean ``μ``, running variance ``σ²`` of the convolution's output per channel, scale
``sqrt(σ² + ε)``, shift ``μ``) — in training mode it normalises by the batch, which is what makes BatchNorm
networks easy to train (Ioffe & Szegedy 2015). :func:`fold_batchnorm` folds each one back into its convolution
(``W ← W·γ/sqrt(σ² + ε)``, ``b ← (b − μ)·γ/sqrt(σ² + ε) + β``), so the written model has the structure of the
file it came from. Hand-written: torch's ``fuse`` folds only ``Conv → BatchNorm`` pairs of modules it traces, and
nothing inserts calibrated identity BatchNorms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..backends.torch import run_hooked

_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}

# Training steps from which an ONNX import trains with its BatchNorm put back. The digits CNN at half its channels
# (3 seeds each): 34 steps mixed (-10.5 to +2.0 points), 68 steps better on every seed (+2.5 to +20.5), 170 steps
# (5 seeds) +1.4 to +7.8 points, 94.8 % -> 98.6 % (benchmarks/results/prune_onnx_cnn.md); a 60-step distillation was
# worse with it (agreement 0.27 against 0.48).
BATCHNORM_MIN_STEPS = 100


def batchnorm_for_training(module: nn.Module, inputs: Any, batch_size: int, samples: int = 512, *,
                           steps: int | None = None) -> list[tuple[str, str]]:
    """For a model imported from ONNX without any BatchNorm (the exporter folded them: torch's, tf2onnx) that trains
    for at least :data:`BATCHNORM_MIN_STEPS` ``steps`` (None: any length): a BatchNorm after each convolution, set from
    the first ``samples`` of ``inputs`` (arrays, one per model input) so the model computes what it did
    (:func:`insert_batchnorm`); fold the returned pairs after training. [] otherwise —
    an import that kept its BatchNorms (Paddle2ONNX) gets none: its convolutions without one never had one."""
    if not (isinstance(module, fx.GraphModule) and module.meta.get("deepshrink.imported_from") == "onnx"):
        return []
    if steps is not None and steps < BATCHNORM_MIN_STEPS:
        return []
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return []  # the exporter kept them (Paddle2ONNX): its convolutions without one never had one
    arrays = [torch.as_tensor(np.asarray(a)[:samples]) for a in inputs]
    n = len(arrays[0]) if arrays else 0
    return insert_batchnorm(module, [tuple(a[i:i + batch_size] for a in arrays) for i in range(0, n, batch_size)])


def _convs_without_batchnorm(gm: fx.GraphModule) -> list[fx.Node]:
    mods = dict(gm.named_modules())
    out = []
    for node in gm.graph.nodes:
        mod = mods.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(
                mods.get(str(users[0].target)), nn.modules.batchnorm._BatchNorm):
            continue
        out.append(node)
    return out


@torch.no_grad()
def insert_batchnorm(gm: fx.GraphModule, batches: Sequence[tuple[torch.Tensor, ...]]) -> list[tuple[str, str]]:
    """Put a BatchNorm after each convolution module of ``gm`` (in place) that is not followed by one, set from
    the convolution's outputs on ``batches`` (tuples of the model's inputs) so that ``gm`` in eval mode computes
    what it did. Returns ``(convolution, BatchNorm)`` module names, for :func:`fold_batchnorm`; [] when there is
    nothing to insert or no batch to set them from."""
    convs = _convs_without_batchnorm(gm)
    if not convs or not batches:
        return []
    sums: dict[str, list[torch.Tensor]] = {str(n.target): [] for n in convs}
    mods = dict(gm.named_modules())
    hooks = []
    for name in sums:
        def grab(_m: nn.Module, _i: object, out: torch.Tensor, name: str = name) -> None:
            x = out.detach().double().transpose(0, 1).reshape(out.shape[1], -1)
            sums[name].append(torch.stack([x.sum(1), (x * x).sum(1), torch.full((x.shape[0],), float(x.shape[1]),
                                                                                 dtype=torch.float64)]))
        hooks.append(mods[name].register_forward_hook(grab))
    run_hooked(gm, batches, hooks)
    pairs = []
    for node in convs:
        name = str(node.target)
        s = torch.stack(sums[name]).sum(0)
        mean = s[0] / s[2]
        var = (s[1] / s[2] - mean * mean).clamp_min(0.0)
        conv = mods[name]
        bn = _BN[conv.weight.dim() - 2](conv.out_channels).to(conv.weight.dtype)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_((var + bn.eps).sqrt())
        bn.bias.copy_(mean)
        bn_name = _free_name(gm, name.replace(".", "_") + "_bn")
        gm.add_submodule(bn_name, bn)
        with gm.graph.inserting_after(node):
            bn_node = gm.graph.call_module(bn_name, (node,))
        node.replace_all_uses_with(bn_node, delete_user_cb=lambda user, bn_node=bn_node: user is not bn_node)
        pairs.append((name, bn_name))
    gm.recompile()
    return pairs


@torch.no_grad()
def fold_batchnorm(gm: fx.GraphModule, pairs: Sequence[tuple[str, str]]) -> None:
    """Fold each BatchNorm of ``pairs`` (from :func:`insert_batchnorm`) into its convolution, with its running
    statistics, and take it out of the graph (in place). The convolutions and BatchNorms may have been pruned
    (sliced together) in between."""
    if not pairs:
        return
    mods = dict(gm.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = mods[conv_name], mods[bn_name]
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1))),
                                   requires_grad=conv.weight.requires_grad)
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=conv.weight.requires_grad)
        node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == bn_name)
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        gm.delete_submodule(bn_name)
    gm.recompile()


def _free_name(gm: nn.Module, base: str) -> str:
    name, k = base, 1
    while hasattr(gm, name):
        name, k = f"{base}_{k}", k + 1
    return name
