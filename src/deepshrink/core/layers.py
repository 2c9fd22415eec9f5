"""Layer names and layer selection, one way for every command.

A layer has up to three names: its PyTorch module path (``blocks.0.fc1``), the name of its
weight tensor (``blocks.0.fc1.weight`` — the initializer name the exporters keep) and, in an
ONNX graph, its node name (``node_Gemm_12``, ``/blocks.0/fc1/Gemm``). ``info --layers`` lists all
three; an ``--include`` / ``--exclude`` / ``--protect`` pattern (shell-style, ``fnmatch``) may
use any of them. A pattern that selects nothing is an error naming a few valid names, never a
silent no-op.

Errors: :class:`~deepshrink.errors.InputError`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from ..errors import InputError

_WEIGHT_SUFFIXES = (".weight", "_weight", ".weight_orig", ".W")
# what quantizers append to a weight's name (ONNX Runtime: QDQ and QOperator initializers)
_QUANT_SUFFIXES = ("_quantized", "_DequantizeLinear_Output", "_Q4", "_Q8")


def module_path(weight_name: str) -> str | None:
    """The module path a weight tensor's name points at (``fc1.weight`` → ``fc1``), or None when
    the name does not look like a module's parameter (``onnx::MatMul_123``, ``W``). A quantizer's
    suffix is dropped first (``fc1.weight_quantized`` → ``fc1``)."""
    for q in _QUANT_SUFFIXES:
        if weight_name.endswith(q):
            weight_name = weight_name[: -len(q)]
            break
    for suffix in _WEIGHT_SUFFIXES:
        if weight_name.endswith(suffix) and len(weight_name) > len(suffix):
            path = weight_name[: -len(suffix)]
            if ":" not in path and "/" not in path:
                return path
    return None


def names_of(*names: str | None) -> tuple[str, ...]:
    """The non-empty names of one layer, plus the module path derived from any weight name."""
    out = [n for n in names if n]
    out += [p for n in names if n and (p := module_path(n))]
    return tuple(dict.fromkeys(out))


def matches(pattern: str, names: Iterable[str]) -> bool:
    """``pattern`` (fnmatch, case-sensitive) matches one of a layer's ``names``."""
    return any(fnmatch.fnmatchcase(n, pattern) for n in names)


def select(layers: Sequence[tuple[str, tuple[str, ...]]], include: Sequence[str] = (), exclude: Sequence[str] = (),
           *, what: str = "layer") -> list[str]:
    """The keys of ``layers`` (``[(key, names), ...]``) matched by ``include`` (all when empty) and
    not by ``exclude``. Raises :class:`InputError` for a pattern that matches no layer, listing a
    few valid names."""
    for kind, patterns in (("include", include), ("exclude", exclude)):
        for p in patterns:
            if not any(matches(p, names) for _, names in layers):
                shown = ", ".join(k for k, _ in layers[:6]) + (" ..." if len(layers) > 6 else "")
                raise InputError(f"--{kind} pattern {p!r} matches no {what}; layers are: {shown or '(none)'} "
                                 "(`deepshrink info MODEL --layers` lists every name a pattern may use)")
    return [k for k, names in layers if (not include or any(matches(p, names) for p in include))
            and not any(matches(p, names) for p in exclude)]
