"""The route table: (source format, destination format) → converter function.

A route is ``fn(src, dst, opts) -> (handle | None, parity | None)``: ``src`` is a
:class:`ModelHandle` for torch/onnx sources and a ``Path`` otherwise; it writes ``dst``
(and any side files beside it). It may return its own parity report (routes to runtimes
deepshrink cannot run as a handle, e.g. TFLite); otherwise :func:`deepshrink.convert.convert`
checks parity between the two handles itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import formats
from ..errors import InputError

# the registry's formats a route reads or writes, by the kind of model each holds ("torch" for a
# torch.export archive and for a state dict written from a torch model)
_ROUTE_FORMATS = ("onnx", "pt2", "safetensors", "tflite", "openvino", "keras")
FORMATS_BY_SUFFIX = {s: ("torch" if f.holds == "weights" else f.holds)
                     for f in formats.FORMATS if f.name in _ROUTE_FORMATS for s in f.suffixes}


@dataclass
class ConvertOptions:
    exporter: str = "auto"
    opset: int | None = None
    verify: bool = True
    data: Any = None
    atol: float = 1e-4
    rtol: float = 1e-4
    force: bool = False
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    trust_remote_code: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # route-specific (e.g. int8 for TFLite)


Route = Callable[[Any, Path, ConvertOptions], tuple[Any, Any]]
_ROUTES: dict[tuple[str, str], Route] = {}
_ROUTE_OPTIONS: dict[tuple[str, str], tuple[str, ...]] = {}  # the ConvertOptions.extra keys a route reads
_LAZY_ROUTE_MODULES = (  # modules that register more routes when imported (optional stacks)
    "deepshrink.convert.onnx2torch", "deepshrink.convert.keras_onnx", "deepshrink.convert.tflite",
    "deepshrink.convert.openvino_ir",
)


def register_route(src_format: str, dst_format: str, options: tuple[str, ...] = ()) -> Callable[[Route], Route]:
    """Register a route; ``options``: the route-specific keywords it reads from ``opts.extra``."""
    def deco(fn: Route) -> Route:
        _ROUTES[(src_format, dst_format)] = fn
        _ROUTE_OPTIONS[(src_format, dst_format)] = options
        return fn

    return deco


def check_route_options(plan: list[tuple[str, str]], extra: dict[str, Any], accepted: tuple[str, ...]) -> None:
    """Refuse a route-specific keyword no hop of ``plan`` reads (after :func:`routes` has loaded them):
    one that another route reads is named with that route (unless switched off: ``int8=False``);
    any other is an unknown keyword."""
    from ..core.verbs import check_options

    used = {o for hop in plan for o in _ROUTE_OPTIONS.get(hop, ())}
    for key, value in extra.items():
        readers = [f"{a} → {b}" for (a, b), opts in sorted(_ROUTE_OPTIONS.items()) if key in opts]
        if key in used or (readers and value in (None, False)):
            continue
        if readers:
            raise InputError(f"{key} applies to the {' / '.join(readers)} conversion, not to "
                             f"{', '.join(f'{a} → {b}' for a, b in plan)}")
        every_route_option = {o for opts in _ROUTE_OPTIONS.values() for o in opts}
        check_options("convert", {key: value}, (*accepted, *every_route_option))


def routes() -> dict[tuple[str, str], Route]:
    import importlib

    for mod in _LAZY_ROUTE_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass  # a route module not present (or its optional stack missing at import time)
    return dict(_ROUTES)


def format_of_destination(path: Path) -> str:
    fmt = FORMATS_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(FORMATS_BY_SUFFIX))
        raise InputError(f"output {path}: cannot tell the target format from {path.suffix!r}; use one of {known}")
    if fmt == "keras":
        raise InputError(f"output {path}: Keras is a conversion source only; write .onnx, .pt2, .tflite or .xml")
    return fmt


def format_of_source(src: Any) -> str:
    from ..core.handle import ModelHandle

    if isinstance(src, ModelHandle):
        return src.kind
    if type(src).__name__ == "ModelProto":
        return "onnx"
    if hasattr(src, "state_dict") and hasattr(src, "forward"):
        return "torch"
    if hasattr(src, "save") and hasattr(src, "predict"):
        return "keras"
    fmt = formats.format_of(str(src))
    if fmt is not None and fmt.name == "saved-model":
        return "keras"
    kind = FORMATS_BY_SUFFIX.get(fmt.suffixes[0]) if fmt is not None and fmt.suffixes else None
    if kind in ("keras", "tflite", "openvino", "onnx"):
        return kind
    return "torch"
