"""PyTorch adapter: run a module on a dict of numpy arrays."""

from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError, first_line


def forward_arg_names(module: nn.Module) -> list[str]:
    """Names of ``forward``'s positional parameters (what inputs are called)."""
    target = module.forward if not isinstance(module, torch.fx.GraphModule) else module.forward
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return ["x"]
    names = [p.name for p in sig.parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]
    return names or ["x"]


def forward_defaults(module: nn.Module) -> dict[str, Any]:
    """``forward``'s positional parameters that have a default, in order, with it (``{"embed": False}``)."""
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self" and p.default is not p.empty}


def forward_optional_names(module: nn.Module) -> list[str]:
    """Names of ``forward``'s positional parameters that have a default (``embed=False``, ``mask=None``):
    inputs only when ``--input-shape`` or the data name them."""
    return list(forward_defaults(module))


def is_hf_model(module: nn.Module) -> bool:
    """Whether ``module`` is a Hugging Face model: a ``config`` and a ``base_model_prefix`` (what every
    ``transformers.PreTrainedModel`` has), duck-typed so that transformers is not imported."""
    return hasattr(module, "config") and hasattr(module, "base_model_prefix")


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if hasattr(out, "to_tuple"):  # HF ModelOutput
        return [t for v in out.to_tuple() for t in flatten_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in flatten_outputs(v)]
    return []


def first_output(out: Any) -> torch.Tensor:
    """The first tensor of a model's output (a tensor, tuple, dict or Hugging Face ``ModelOutput``,
    whose first field is ``last_hidden_state`` or ``logits``). Raises :class:`InputError` when the
    output holds no tensor."""
    tensors = flatten_outputs(out)
    if not tensors:
        raise InputError(f"the model's output ({type(out).__name__}) holds no tensor")
    return tensors[0]


def probe_output(module: nn.Module, inputs: Any) -> torch.Tensor | None:
    """The first output tensor of ``module`` (put in eval mode) on ``inputs`` (:func:`call_batch`), or None when it
    cannot run on them — for checks that leave the error to the work that follows."""
    try:
        return first_output(call_batch(set_eval(module), inputs))
    except Exception:  # noqa: BLE001 - any failure: nothing to check here
        return None


def used_parameters(m: nn.Module, probe: tuple[torch.Tensor, ...]) -> list[nn.Parameter]:
    """The parameters of ``m`` its output depends on: one backward from the sum of its floating-point outputs on
    ``probe`` (its positional inputs, eval mode). A BERT pooler beside the mean-pooled output a sentence encoder
    returns is left out, as the ONNX export leaves it out, so a summary counts what the written files hold. Every
    parameter when no output carries a gradient; ``m``'s mode and ``requires_grad`` flags are restored (a ``.pt2``
    graph, which has no mode to switch, runs as traced)."""
    params = list(m.parameters())
    flags = [p.requires_grad for p in params]
    was = m.training
    try:  # a module unpacked from a .pt2 refuses eval(): its graph was traced in the mode it runs in
        m.eval()
    except NotImplementedError:
        was = None
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            outs = [o for o in flatten_outputs(m(*probe)) if o.is_floating_point() and o.requires_grad]
            if not outs:
                return params
            grads = torch.autograd.grad(sum(o.float().sum() for o in outs), params, allow_unused=True)
        return [p for p, g in zip(params, grads, strict=True) if g is not None]
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
        if was is not None:
            m.train(was)


def used_parameter_count(m: nn.Module, probe: tuple[torch.Tensor, ...]) -> int:
    """Elements of :func:`used_parameters`."""
    return sum(p.numel() for p in used_parameters(m, probe))


USED_PARAMS_MAX = 200_000_000  # above this, one backward's gradients would cost as much memory as the model


def counted_parameters(module: nn.Module, probe: tuple[torch.Tensor, ...] | None) -> int | None:
    """:func:`used_parameter_count` where it is cheap and possible: None without a probe, for a model of more than
    :data:`USED_PARAMS_MAX` parameters, or when the probe does not run — the caller then counts every
    parameter."""
    used = counted_parameter_list(module, probe)
    return None if used is None else sum(p.numel() for p in used)


def counted_parameter_list(module: nn.Module, probe: tuple[torch.Tensor, ...] | None) -> list[nn.Parameter] | None:
    """:func:`used_parameters` under :func:`counted_parameters`' conditions (None where it returns None)."""
    if probe is None or sum(p.numel() for p in module.parameters()) > USED_PARAMS_MAX:
        return None
    try:
        return used_parameters(module, probe)
    except Exception:  # noqa: BLE001 - a count that cannot be measured falls back to every parameter
        return None


def run_hooked(model: nn.Module, batches: Any, hooks: list[Any], run: Any = None) -> None:
    """Run ``model`` in eval mode on each of ``batches`` (``run(batch)``; by default ``model(*batch)``) for what
    forward ``hooks`` (the handles ``register_forward_*hook`` returned) collect; then remove the hooks and give the
    model back its training mode, also when a batch raises."""
    was = model.training
    model.eval()
    try:
        for b in batches:
            if run is not None:
                run(b)
            else:
                model(*b)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)


def set_eval(module: nn.Module) -> nn.Module:
    """``module.eval()``, tolerating modules unpacked from ``torch.export`` (always in eval)."""
    try:
        module.eval()
    except NotImplementedError:
        pass
    return module


@torch.no_grad()
def call_batch(module: nn.Module, batch: Any) -> Any:
    """Call ``module`` on one batch: a dict of named inputs, a tuple/list of positional inputs,
    or a single input; arrays become tensors. Returns the raw output; errors propagate."""
    def t(v: Any) -> torch.Tensor:
        return v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))

    if isinstance(batch, dict):
        return module(**{k: t(v) for k, v in batch.items()})
    if isinstance(batch, (tuple, list)):
        return module(*[t(v) for v in batch])
    return module(t(batch))


def run_torch(module: nn.Module, inputs: dict[str, np.ndarray], names: list[str] | None = None) -> list[np.ndarray]:
    names = names or list(inputs)
    if any(n not in inputs for n in names):
        # a module imported from ONNX names its inputs as Python identifiers ('gpu_0/data_0' -> 'gpu_0_data_0');
        # data keyed by the ONNX names still reaches them
        alias = {re.sub(r"\W", "_", k).strip("_"): k for k in inputs}
        inputs = {**inputs, **{n: inputs[alias[n]] for n in names if n not in inputs and n in alias}}
    missing = [n for n in names if n not in inputs]
    if missing:
        raise InputError(f"input(s) {missing} missing; the data provides {sorted(inputs)}")
    args = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in names]
    set_eval(module)
    try:
        out = module(*args)
    except Exception as exc:  # shape guards of a torch.export graph, size mismatches, dtype errors
        if isinstance(exc, InputError):
            raise
        shapes = {n: tuple(inputs[n].shape) for n in names}
        floats = [n for n in names if inputs[n].dtype.kind == "f"]
        hint = (f"; if {floats[0]} holds ids, give its element type (--input-shape {floats[0]}:DIMS:int64) or --data "
                "with such arrays" if floats and "'indices'" in str(exc) else "")
        raise InputError(f"the model failed on inputs {shapes}: {first_line(exc)}{hint}") from None
    return [t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy() for t in flatten_outputs(out)]
