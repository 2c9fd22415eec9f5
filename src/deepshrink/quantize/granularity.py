"""How many quantization parameters a tensor gets: one, one per channel, or one per group.

Small frozen dataclasses in the torchao style (``PerTensor()``, ``PerChannel(axis)``,
``PerGroup(size, axis)``). Each carries a ``kind`` literal so that pydantic configs can
hold ``Granularity`` as a discriminated union and round-trip it through JSON; outside
pydantic use :meth:`to_dict` / :func:`granularity_from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from ..errors import InputError


@dataclass(frozen=True)
class PerTensor:
    """One scale / zero-point for the whole tensor."""

    kind: Literal["per_tensor"] = "per_tensor"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}


@dataclass(frozen=True)
class PerChannel:
    """One scale / zero-point per index of ``axis`` (weights: the output channel, axis 0)."""

    axis: int = 0
    kind: Literal["per_channel"] = "per_channel"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "axis": self.axis}


@dataclass(frozen=True)
class PerGroup:
    """One scale / zero-point per run of ``size`` consecutive elements along ``axis``.

    For a linear weight ``(out, in)`` with ``axis=-1`` this is the usual weight-only
    layout: parameters of shape ``(out, in // size)``. ``size`` must divide the dimension.
    """

    size: int = 128
    axis: int = -1
    kind: Literal["per_group"] = "per_group"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise InputError(f"group size must be a positive integer, got {self.size!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size, "axis": self.axis}


Granularity = Annotated[PerTensor | PerChannel | PerGroup, Field(discriminator="kind")]
"""Use as a pydantic field type: ``granularity: Granularity = PerChannel()``."""

_KINDS: dict[str, type] = {"per_tensor": PerTensor, "per_channel": PerChannel, "per_group": PerGroup}


def granularity_from_dict(data: dict[str, Any] | str) -> PerTensor | PerChannel | PerGroup:
    """Rebuild a granularity from :meth:`to_dict` output, or parse a short string.

    Strings: ``"per_tensor"``, ``"per_channel"`` / ``"per_channel:1"`` (axis),
    ``"per_group:32"`` (size, axis -1).
    """
    if isinstance(data, str):
        name, _, arg = data.partition(":")
        if name not in _KINDS:
            raise InputError(f"unknown granularity {data!r}; use per_tensor, per_channel[:axis] or per_group:SIZE")
        if name == "per_tensor":
            return PerTensor()
        try:
            if name == "per_channel":
                return PerChannel(axis=int(arg) if arg else 0)
            return PerGroup(size=int(arg)) if arg else PerGroup()
        except ValueError:
            raise InputError(f"bad granularity {data!r}: the part after ':' must be an integer") from None
    if not isinstance(data, dict):
        raise InputError(f"granularity must be a dict or string, got {type(data).__name__}")
    fields = dict(data)
    kind = fields.pop("kind", None)
    if kind not in _KINDS:
        raise InputError(f"unknown granularity kind {kind!r}; use one of {sorted(_KINDS)}")
    cls = _KINDS[kind]
    allowed = {"per_tensor": set(), "per_channel": {"axis"}, "per_group": {"size", "axis"}}[kind]
    unknown = set(fields) - allowed
    if unknown:
        raise InputError(f"unknown key(s) {sorted(unknown)} for granularity {kind}; allowed: {sorted(allowed)}")
    for k, v in fields.items():
        if not isinstance(v, int) or isinstance(v, bool):
            raise InputError(f"granularity {kind}.{k} must be an integer, got {v!r}")
    return cls(**fields)  # type: ignore[no-any-return]
