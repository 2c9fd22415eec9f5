"""Post-pruning weight reconstruction: re-fit each pruned layer's consumer by ridge least squares.

Structured pruning removes FFN neurons, attention heads or channels; the layer that reads them (the
FFN output dense, the attention output projection, the next Linear) then sums fewer terms and its output
drifts from the unpruned model's. Reconstruction re-fits that consumer's weight and bias, in closed form,
so that on calibration tokens it reproduces the *unpruned* model's output of the same layer — the
layer-wise reconstruction step of Kwon et al., "A Fast Post-Training Pruning Framework for Transformers"
(NeurIPS 2022), which tunes the kept heads'/neurons' mask values by linear least squares; here the whole
output projection is re-fitted (as in ZipLM / FLAP-style weight reconstruction), regularised towards the
pruned weights it starts from.

Layer by layer: consumers are fitted in the order the model calls them, each with its inputs taken from the
already-reconstructed pruned model (so a layer corrects what earlier layers left), its targets from the
unpruned model on the same calibration batches. Per consumer, with ``X`` the kept inputs (tokens × k, a
column of ones appended for the bias), ``Y`` the unpruned layer's outputs (tokens × out) and ``W₀`` the
pruned weights it starts from::

    W = argmin ‖X Wᵀ − Y‖² + λ ‖W − W₀‖²,   λ = ridge · mean(diag(XᵀX))
      = solve(XᵀX + λI, XᵀY + λ W₀ᵀ)           (float64, torch.linalg.solve)

Only ``nn.Linear`` consumers and the output projection of a head-pruned ``nn.MultiheadAttention`` are
re-fitted; convolutions are left as pruned (reported).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...backends.pruned_modules import HeadPrunedAttention
from ...backends.torch import run_hooked
from .apply import _collect, _dim_index
from .graph import DependencyGraph


@dataclass
class Fit:
    """One re-fitted layer: calibration ``tokens``, relative squared error ‖XWᵀ−Y‖²/‖Y‖² of its output
    against the unpruned layer's output, ``before`` (pruned weights) and ``after`` (re-fitted)."""

    module: str
    tokens: int
    before: float
    after: float

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "tokens": self.tokens, "before": self.before, "after": self.after}


class Targets(dict[str, list[torch.Tensor]]):
    """Consumer name → per-batch target outputs; ``residual``: the consumers whose targets include
    their block's residual input (:func:`residual_block`)."""

    residual: set[str]


class _Stop(Exception):
    """Raised by a capture hook once it has what it needs: the rest of the forward pass is skipped."""


def mask_index(model: nn.Module, n_inputs: int, names: list[str] | None = None) -> int | None:
    """Which of the ``n_inputs`` positional inputs is an ``attention_mask`` (padded tokens are left out of
    the fit): by the data's input ``names`` when given, else by the model's ``forward`` signature."""
    if names is None:
        try:
            names = [p for p in inspect.signature(model.forward).parameters][:n_inputs]
        except (TypeError, ValueError):
            return None
    if "attention_mask" in names and len(names) == n_inputs:
        return names.index("attention_mask")
    return None


def _tokens(x: torch.Tensor, mask: torch.Tensor | None, seq_first: bool = False) -> torch.Tensor:
    """``x`` (…, features) as (tokens, features) in (batch, position) order, padded positions dropped."""
    if seq_first and x.dim() == 3:
        x = x.transpose(0, 1)
    if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
        return x[mask.bool()]
    return x.reshape(-1, x.shape[-1])


def residual_block(model: nn.Module, name: str) -> str | None:
    """The Hugging Face BERT-style output block around consumer ``name`` — a module with a ``LayerNorm``
    whose ``forward(hidden_states, input_tensor)`` adds the residual ``input_tensor`` to this layer's
    output — or None. For those, the fit matches the unpruned model's residual sum (layer output plus
    residual stream), so a layer also corrects the drift its residual input carries from earlier layers."""
    parent = name.rpartition(".")[0]
    block = dict(model.named_modules()).get(parent)
    if block is None or not hasattr(block, "LayerNorm"):
        return None
    try:
        params = list(inspect.signature(block.forward).parameters)
    except (TypeError, ValueError):
        return None
    return parent if params[:2] == ["hidden_states", "input_tensor"] else None


def left_alone(model: nn.Module, graph: DependencyGraph) -> list[str]:
    """The consumers of removed channels that reconstruction does not re-fit (convolutions), by name."""
    mods = dict(model.named_modules())
    return [name for name, roles in _collect(graph).items()
            if "in" in roles and not isinstance(mods[name], nn.Linear) and "mha_heads" not in roles]


def consumers(model: nn.Module, graph: DependencyGraph) -> dict[str, torch.Tensor | None]:
    """The layers reconstruction re-fits, named in the *pruned* model: every ``nn.Linear`` whose input
    columns were removed (value: the kept output rows when its outputs were also pruned, else None) and the
    ``out_proj`` of every head-pruned ``nn.MultiheadAttention``. Call after :func:`~.apply.apply_plan` has
    not yet run (sizes are read from the unpruned model)."""
    mods = dict(model.named_modules())
    found: dict[str, torch.Tensor | None] = {}
    for name, roles in _collect(graph).items():
        mod = mods[name]
        if "mha_heads" in roles:
            found[f"{name}.out_proj"] = None
        elif "in" in roles and isinstance(mod, nn.Linear):
            found[name] = _dim_index(mod.weight.shape[0], roles["out"]) if "out" in roles else None
    return found


@torch.no_grad()
def original_outputs(model: nn.Module, targets: dict[str, torch.Tensor | None],
                     batches: list[tuple[torch.Tensor, ...]], mask_at: int | None) -> Targets:
    """Per consumer (named as in :func:`consumers`), per batch: the unpruned layer's outputs as
    (tokens, out) float32 — an ``nn.MultiheadAttention``'s attention output for its ``out_proj``; inside a
    :func:`residual_block`, the output plus the block's residual input."""
    mods = dict(model.named_modules())
    outs = Targets({name: [] for name in targets})
    hooks = []
    mask: list[torch.Tensor | None] = [None]

    def hook(name: str, rows: torch.Tensor | None, seq_first: bool) -> Callable[..., None]:
        def fn(_m: nn.Module, _args: Any, out: Any) -> None:
            y = out[0] if isinstance(out, tuple) else out
            y = _tokens(y.detach(), mask[0], seq_first).float()
            outs[name].append(y if rows is None else y.index_select(1, rows))
        return fn

    def residual(name: str) -> Callable[..., None]:
        def fn(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            r = args[1] if len(args) > 1 else kwargs["input_tensor"]
            res[name].append(_tokens(r.detach(), mask[0]).float())
        return fn

    res: dict[str, list[torch.Tensor]] = {}
    for name, rows in targets.items():
        block = residual_block(model, name) if rows is None else None
        if block is not None:
            res[name] = []
            hooks.append(mods[block].register_forward_pre_hook(residual(name), with_kwargs=True))
        owner = name.removesuffix(".out_proj")
        if name.endswith(".out_proj") and isinstance(mods.get(owner), nn.MultiheadAttention):
            mha = mods[owner]
            hooks.append(mha.register_forward_hook(hook(name, rows, not mha.batch_first)))
        else:
            hooks.append(mods[name].register_forward_hook(hook(name, rows, False)))
    def run(b: tuple[torch.Tensor, ...]) -> None:
        mask[0] = b[mask_at] if mask_at is not None else None
        model(*b)

    run_hooked(model, batches, hooks, run)
    for name, rs in res.items():  # the residual sum the block's LayerNorm reads
        outs[name] = [y + r for y, r in zip(outs[name], rs, strict=True)]
    outs.residual = set(res)
    return outs


@torch.no_grad()
def reconstruct(model: nn.Module, targets: Targets, batches: list[tuple[torch.Tensor, ...]],
                mask_at: int | None, ridge: float = 1e-2) -> list[Fit]:
    """Re-fit, in place and layer by layer, every consumer in ``targets`` of the pruned ``model``.

    ``targets``: from :func:`original_outputs` on the same ``batches`` (tuples of the model's positional
    inputs; ``mask_at``: the index of an attention mask among them, or None). ``ridge`` (> 0): the pull
    towards the pruned weights, relative to the mean input energy. Returns one :class:`Fit` per layer, in
    call order. Raises ``ValueError`` when a consumer is never called on the batches.
    """
    mods = dict(model.named_modules())
    order = _call_order(model, list(targets), batches[0])
    fits = []
    for name in order:
        lin = mods[name]
        owner = mods.get(name.removesuffix(".out_proj"))
        # HeadPrunedAttention calls out_proj on (L, N, H·d) whatever its batch_first
        seq_first = isinstance(owner, HeadPrunedAttention) and name.endswith(".out_proj")
        k = lin.in_features
        nb = 1 if lin.bias is not None else 0  # a column of ones fits the bias
        a = torch.zeros(k + nb, k + nb, dtype=torch.float64)
        bmat = torch.zeros(k + nb, lin.out_features, dtype=torch.float64)
        yy = 0.0
        tokens = 0
        block = residual_block(model, name) if name in targets.residual else None
        for i, batch in enumerate(batches):
            m = batch[mask_at] if mask_at is not None else None
            x, r = _capture(model, lin, batch, mods[block] if block is not None else None)
            x = _tokens(x, m, seq_first).double()
            y = targets[name][i].double()
            if r is not None:  # the pruned model's own residual: the layer makes up the difference
                y = y - _tokens(r, m).double()
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"reconstruction: {name} saw {x.shape[0]} tokens, the unpruned model {y.shape[0]}")
            if nb:
                x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
            a += x.T @ x
            bmat += x.T @ y
            yy += float((y * y).sum())
            tokens += x.shape[0]
        w0 = lin.weight.double()
        if nb:
            w0 = torch.cat([w0, lin.bias.double()[:, None]], 1)
        lam = ridge * float(a.diagonal()[:k].mean())
        reg = torch.eye(k + nb, dtype=torch.float64) * lam
        theta = torch.linalg.solve(a + reg, bmat + reg @ w0.T)  # (k+nb, out)

        def err(t: torch.Tensor, a: torch.Tensor = a, bmat: torch.Tensor = bmat, yy: float = yy) -> float:
            return float((t * (a @ t)).sum() - 2 * (t * bmat).sum() + yy) / max(yy, 1e-30)

        fits.append(Fit(name, tokens, err(w0.T), err(theta)))
        lin.weight.copy_(theta[:k].T.to(lin.weight.dtype))
        if nb:
            lin.bias.copy_(theta[k].to(lin.bias.dtype))
    return fits


def _capture(model: nn.Module, lin: nn.Module, batch: tuple[torch.Tensor, ...],
             block: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The input ``lin`` receives when ``model`` runs ``batch`` (the pass stops there), and the residual
    input of its output ``block`` when given."""
    got: list[torch.Tensor] = []
    res: list[torch.Tensor] = []

    def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        res.append((args[1] if len(args) > 1 else kwargs["input_tensor"]).detach())

    def fn(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        got.append(args[0].detach())
        raise _Stop

    h = lin.register_forward_pre_hook(fn)
    hb = block.register_forward_pre_hook(pre, with_kwargs=True) if block is not None else None
    was = model.training
    model.eval()
    try:
        model(*batch)
    except _Stop:
        pass
    finally:
        h.remove()
        if hb is not None:
            hb.remove()
        model.train(was)
    if not got:
        raise ValueError(f"reconstruction: {type(lin).__name__} was never called by the model")
    return got[0], (res[0] if res else None)


def _call_order(model: nn.Module, names: list[str], batch: tuple[torch.Tensor, ...]) -> list[str]:
    """``names`` in the order ``model`` calls those modules on ``batch``."""
    mods = dict(model.named_modules())
    seen: list[str] = []
    hooks = [mods[n].register_forward_pre_hook(lambda _m, _a, n=n: seen.append(n) if n not in seen else None)
             for n in names]
    with torch.no_grad():
        run_hooked(model, [batch], hooks)
    missing = [n for n in names if n not in seen]
    if missing:
        raise ValueError(f"reconstruction: {missing[0]} is never called by the model")
    return seen
