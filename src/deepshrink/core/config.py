"""Config base and the config-type → handler registry.

Configs are frozen pydantic models that reject unknown keys, so a typo in a recipe or a
JSON file is an error before any work starts. Each config serialises with its class
name under ``"type"`` and can be rebuilt with :func:`config_from_dict`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import InputError

_CONFIG_TYPES: dict[str, type[Config]] = {}
_HANDLERS: dict[type, Callable[..., Any]] = {}

C = TypeVar("C", bound="Config")


@dataclass(frozen=True)
class Contract:
    """What a verb run with a config accepts, writes and needs, so a chain of steps (a recipe) can be
    checked before any work. ``takes``: model kinds accepted (``"torch"``, ``"onnx"``); ``emits``:
    the kind written (None: unchanged; ``"dsz"``: a packed file); ``needs``: ``"labels"``
    (labelled data), ``"data"`` (any samples: calibration, importance, distillation) or None;
    ``why``: what needs the data, for the error message."""

    takes: tuple[str, ...] = ("torch", "onnx")
    emits: str | None = None
    needs: str | None = None
    why: str = ""


class Config(BaseModel):
    """Base for every config: frozen, validated, unknown keys rejected, JSON round-trip."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=False)
    kind: ClassVar[str] = "config"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _CONFIG_TYPES[cls.__name__] = cls

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **self.model_dump(mode="json")}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        if not isinstance(data, dict):
            raise InputError(f"a config is a mapping of field names to values, got {type(data).__name__}")
        data = dict(data)
        name = data.pop("type", cls.__name__)
        if not isinstance(name, str):
            raise InputError(f"config type must be a class name such as 'Int8DynamicConfig', got {name!r:.60}")
        target = _CONFIG_TYPES.get(name)
        if target is None or not issubclass(target, cls):
            raise InputError(f"unknown config type {name!r}; known: {', '.join(sorted(_CONFIG_TYPES))}")
        try:
            return target.model_validate(data)  # type: ignore[return-value]
        except ValidationError as exc:
            raise InputError(f"invalid {name}: {format_validation_error(exc)}") from None

    @classmethod
    def build(cls: type[C], **data: Any) -> C:
        """Construct, turning a validation failure into a one-line :class:`InputError` (CLI, recipes)."""
        try:
            return cls(**data)
        except ValidationError as exc:
            raise InputError(f"invalid {cls.__name__}: {format_validation_error(exc)}") from None

    def contract(self) -> Contract:
        """What this config's verb takes, emits and needs (see :class:`Contract`); verbs' configs override it."""
        return Contract()

    def replace(self: C, **changes: Any) -> C:
        return type(self).from_dict({**self.to_dict(), **changes})


def config_from_dict(data: dict[str, Any]) -> Config:
    return Config.from_dict(data)


def config_types() -> dict[str, type[Config]]:
    return dict(_CONFIG_TYPES)


def format_validation_error(exc: ValidationError) -> str:
    """One line naming every bad field and why."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):  # pydantic's wording for our own validators' messages
            msg = msg.removeprefix(prefix)
        parts.append(f"{loc}: {msg}" if loc else msg)  # a check across fields names its fields itself
    return "; ".join(parts)


def check_keys(params: dict[str, Any], cls: type[Config], *, what: str) -> None:
    """Refuse keys ``cls`` does not have, naming the closest valid one and listing them all."""
    import difflib

    valid = list(cls.model_fields)
    for key in params:
        if key not in valid:
            # a CLI option's name where the config's field is spelled otherwise (quantize --bits: weight_bits)
            alias = [f for f in valid if f == f"weight_{key}"]
            close = alias or difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"{what}: unknown key {key!r}{hint}; valid keys: {', '.join(valid)}")


def register(config_type: type[Config]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``@register(Int8DynamicConfig) def _handle(model, config, **kw): ...``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _HANDLERS[config_type] = fn
        return fn

    return deco


def handler_for(config: Config) -> Callable[..., Any]:
    for klass in type(config).__mro__:
        if klass in _HANDLERS:
            return _HANDLERS[klass]
    raise InputError(f"no handler registered for {type(config).__name__}")
