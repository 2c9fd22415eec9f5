"""Forward hooks that collect what feature losses compare: each layer's output (hidden states),
the features entering a model's last linear layer (when it has no layer stack), and attention maps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..backends.pruned_modules import KEPT_HEADS
from ..errors import InputError
from .derive import find_layer_stack


def _tensor(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


class Capture:
    """Records, during each forward, the hidden state of every layer in the stack (or the input of the
    last ``nn.Linear``) and, when ``attention`` is set, every layer's attention probabilities (N, H, L, L).

    ``states``/``maps`` are cleared by :meth:`clear`; use as a context manager to remove the hooks.
    """

    def __init__(self, model: nn.Module, *, hidden: bool, attention: bool,
                 probe: Callable[[nn.Module], Any] | None = None) -> None:
        self.states: list[torch.Tensor] = []
        self.maps: list[torch.Tensor] = []
        self.heads: list[list[int] | None] = []  # per layer: the original heads a pruned attention module kept
        self._handles: list[Any] = []
        self._restore: list[tuple[Any, str, Any]] = []  # (object, attribute, value) put back by close()
        self.width: int | None = None
        self.n_layers = 0
        found = find_layer_stack(model)
        if hidden:
            if found is not None:
                for layer in found[2]:
                    self._handles.append(layer.register_forward_hook(lambda _m, _a, out: self.states.append(_tensor(out))))
                self.n_layers = len(found[2])
            else:
                linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
                if not linears:
                    raise InputError("hidden-state distillation needs a stack of layers or a final linear layer "
                                     "to take features from; this model has neither")
                self._handles.append(linears[-1].register_forward_pre_hook(
                    lambda _m, args: self.states.append(args[0])))
                self.n_layers = 1
        try:
            self._attention_hooks(model, found, attention, probe)
        except BaseException:
            self.close()  # the model is left as it was given
            raise

    def _attention_hooks(self, model: nn.Module, found: Any, attention: bool,
                         probe: Callable[[nn.Module], Any] | None) -> None:
        if attention:
            if found is None:
                raise InputError("attention distillation needs a transformer (a stack of attention layers)")
            self.n_layers = len(found[2])
            if probe is None:
                raise InputError("attention distillation needs example inputs to find the attention modules")
            self._ask_for_attentions(model)
            for layer in found[2]:
                mod = _attention_module(layer, probe, model)
                self.heads.append(_kept_heads(mod))
                self._no_attention_dropout(mod)
                self._handles.append(mod.register_forward_hook(lambda _m, _a, out: self.maps.append(_attn(out))))

    def clear(self) -> None:
        self.states.clear()
        self.maps.clear()

    def _set(self, obj: Any, attr: str, value: Any) -> None:
        self._restore.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    def _ask_for_attentions(self, model: nn.Module) -> None:
        """Hugging Face models that return attention probabilities only when asked (MPNet: ``output_attentions``,
        read from the config when the caller does not pass it) are asked, for as long as the capture lasts."""
        seen: set[int] = set()
        for m in model.modules():
            cfg = getattr(m, "config", None)
            if cfg is None or id(cfg) in seen or getattr(cfg, "output_attentions", None) is not False:
                continue
            seen.add(id(cfg))
            try:
                self._set(cfg, "output_attentions", True)
            except (ValueError, AttributeError):  # an attention kernel that cannot return them (SDPA): said later
                pass

    def _no_attention_dropout(self, mod: nn.Module) -> None:
        """The maps an attention module returns in training mode have its dropout applied (rows no longer sum to
        1, a dropped entry's log is −∞), so the captured modules' attention-probability dropout is off for as
        long as the capture lasts: their own ``nn.Dropout`` children and an ``attention_dropout`` rate."""
        for child in mod.children():
            if isinstance(child, nn.Dropout) and child.p > 0:
                self._set(child, "p", 0.0)
        if isinstance(getattr(mod, "attention_dropout", None), float) and mod.attention_dropout > 0:
            self._set(mod, "attention_dropout", 0.0)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for obj, attr, value in reversed(self._restore):
            setattr(obj, attr, value)
        self._restore.clear()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _kept_heads(mod: nn.Module) -> list[int] | None:
    """The original head indices structured pruning recorded on ``mod`` or a module inside it (``KEPT_HEADS``)."""
    for m in mod.modules():
        kept = getattr(m, KEPT_HEADS, None)
        if kept is not None:
            return list(kept)
    return None


def _attn(out: Any) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        for t in out[1:]:
            if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[-1] == t.shape[-2]:
                return t
    raise InputError("attention distillation: the attention module returned no attention probabilities "
                     "(load the model with eager attention)")


@torch.no_grad()
def _attention_module(layer: nn.Module, probe: Callable[[nn.Module], Any], model: nn.Module) -> nn.Module:
    """The first submodule of ``layer`` whose output carries a square 4-D tensor (attention probabilities)."""
    hits: list[nn.Module] = []
    handles = []
    for mod in layer.modules():
        def hook(m: nn.Module, _a: Any, out: Any) -> None:
            if isinstance(out, (tuple, list)) and any(isinstance(t, torch.Tensor) and t.dim() == 4
                                                       and t.shape[-1] == t.shape[-2] for t in out[1:]):
                hits.append(m)
        handles.append(mod.register_forward_hook(hook))
    try:
        probe(model)
    finally:
        for h in handles:
            h.remove()
    if not hits:
        raise InputError("attention distillation: no module in the transformer layer returns attention probabilities "
                         "(its attention kernel does not expose them: SDPA or flash attention; a Hugging Face folder "
                         "loaded here uses eager attention); leave attention out of --loss")
    return hits[0]
