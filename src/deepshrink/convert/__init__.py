"""Conversion between formats, parity-checked at every hop.

``convert(src, dst)`` picks the route from the source kind and the destination's
extension (or goes ``via`` an intermediate format), writes every hop into a staging
folder, checks parity after each, and moves the result into place only when every
check passed — a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.fileio import atomic_dir, check_output
from ..core.handle import ModelHandle
from ..core.result import Result, VerbReport
from ..errors import ParityError, UnsupportedError, first_line
from .export import export_onnx, resolve_exporter
from .parity import ParityReport, check_parity
from .routes import (
    ConvertOptions,
    check_route_options,
    format_of_destination,
    format_of_source,
    register_route,
    routes,
)

__all__ = ["convert", "export_onnx", "check_parity", "ConvertResult", "Hop", "ConvertOptions", "register_route"]


@dataclass
class Hop:
    src_format: str
    dst_format: str
    path: Path
    seconds: float
    parity: ParityReport | None = None
    exporter: str | None = None  # torch → onnx: the exporter that wrote the file

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.src_format, "to": self.dst_format, "path": str(self.path), "seconds": round(self.seconds, 2),
                "parity": self.parity.to_dict() if self.parity else None, "exporter": self.exporter}


@dataclass
class ConvertResult(Result):
    """What :func:`convert` wrote: ``output`` (the file), ``hops`` (each conversion with its time and
    parity report) and ``handle``/``model`` (the written model as a handle; None for a runtime
    format deepshrink runs only through that runtime: TFLite, OpenVINO IR)."""

    output: Path
    hops: list[Hop] = field(default_factory=list)
    handle: ModelHandle | None = None

    @property
    def model(self) -> ModelHandle | None:  # type: ignore[override]
        return self.handle

    @property
    def report(self) -> VerbReport:  # type: ignore[override]
        path = " → ".join([self.hops[0].src_format, *(h.dst_format for h in self.hops)]) if self.hops else ""
        worst = max((h.parity.max_abs for h in self.hops if h.parity is not None), default=None)
        return VerbReport("convert", path, f"wrote {self.output}" + (f" (parity max-abs {worst:.3g})" if worst is not None
                                                                      else ""),
                          measurements={"seconds": sum(h.seconds for h in self.hops), "parity_max_abs": worst},
                          details=self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "hops": [h.to_dict() for h in self.hops]}


def convert(src: Any, dst: str | Path, *, via: str | None = None, weights: str | None = None,
            input_shapes: list[str] | None = None, data: Any = None, trust_remote_code: bool = False,
            exporter: str = "auto", opset: int | None = None, verify: bool = True, atol: float = 1e-4,
            rtol: float = 1e-4, force: bool = False, **extra: Any) -> ConvertResult:
    """Convert ``src`` (file, folder, ``module:factory``, module or handle) to ``dst``.

    ``extra``: the route-specific options (``int8`` for TFLite, ``fp16`` for OpenVINO IR,
    ``nchw`` for a Keras source); one no route of the conversion reads is refused."""
    from ..loading import load, parse_input_shapes

    dst = Path(dst)
    target_fmt = format_of_destination(dst)
    src_path = getattr(src, "path", None) if isinstance(src, ModelHandle) else (
        Path(str(src)) if isinstance(src, (str, Path)) else None)
    check_output(dst, inputs=(src_path,), force=force)
    src_fmt = format_of_source(src)
    resolve_exporter(exporter, None)  # an unknown name is refused before the model loads (an HF folder: ~30 s)
    opts = ConvertOptions(exporter=exporter, opset=opset, verify=verify, data=data, atol=atol, rtol=rtol,
                          force=True, input_shapes=parse_input_shapes(input_shapes), trust_remote_code=trust_remote_code,
                          extra=extra)
    table = routes()
    plan = _plan(src_fmt, target_fmt, via, table)
    check_route_options(plan, extra, _KEYWORDS)
    current: Any = src
    if src_fmt in ("torch", "onnx"):
        current = load(src, weights=weights, input_shapes=input_shapes, data=data, trust_remote_code=trust_remote_code)
    result = ConvertResult(dst)
    scratch = Path(tempfile.mkdtemp(prefix=".deepshrink-hops.", dir=dst.parent))
    try:
        with atomic_dir(dst.parent) as stage:
            for i, (a, b) in enumerate(plan):
                last = i == len(plan) - 1
                out = stage / dst.name if last else scratch / f"hop{i}{_suffix(b)}"
                t0 = time.perf_counter()
                produced, parity = table[(a, b)](current, out, opts)
                seconds = time.perf_counter() - t0
                if (parity is None and verify and isinstance(current, ModelHandle) and isinstance(produced, ModelHandle)):
                    parity = check_parity(current, produced, data=data, atol=atol, rtol=rtol)
                hop = Hop(a, b, dst if last else out, seconds, parity,
                          (produced.metadata.get("deepshrink.exporter") if isinstance(produced, ModelHandle)
                           and a == "torch" and b == "onnx" else None))
                result.hops.append(hop)
                if parity is not None and not parity.ok:
                    raise ParityError(f"conversion {a} → {b} changed the outputs (max-abs {parity.max_abs:.3g}); "
                                      "nothing was written", parity)
                current = produced if produced is not None else out
            result.handle = current if isinstance(current, ModelHandle) else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if result.handle is not None and result.handle.path is not None:
        result.handle.path = dst
    return result


_KEYWORDS = tuple(n for n, p in inspect.signature(convert).parameters.items() if p.kind is p.KEYWORD_ONLY)


def _suffix(fmt: str) -> str:
    return {"onnx": ".onnx", "torch": ".pt2", "tflite": ".tflite", "openvino": ".xml"}.get(fmt, "")


def _plan(src: str, dst: str, via: str | None, table: dict[tuple[str, str], Any]) -> list[tuple[str, str]]:
    if via:
        steps = [(src, via), (via, dst)]
    elif (src, dst) in table:
        return [(src, dst)]
    else:
        steps = [(src, "onnx"), ("onnx", dst)] if src != "onnx" and dst != "onnx" else []
    missing = [s for s in steps if s not in table]
    if not steps or missing:
        have = ", ".join(f"{a}→{b}" for a, b in sorted(table))
        what = missing[0] if missing else (src, dst)
        raise UnsupportedError(f"no conversion route {what[0]} → {what[1]}"
                               f"{' (some routes need an extra: pip install deepshrink[tf] or [openvino])'}; available: {have}")
    return steps


# -- the routes this module provides --------------------------------------------------------

@register_route("torch", "onnx")
def _torch_to_onnx(src: ModelHandle, dst: Path, opts: ConvertOptions) -> tuple[ModelHandle, None]:
    return export_onnx(src, None, dst, exporter=opts.exporter, opset=opts.opset, force=True), None  # type: ignore[arg-type]


@register_route("torch", "torch")
def _torch_to_pt2(src: ModelHandle, dst: Path, opts: ConvertOptions) -> tuple[ModelHandle, None]:
    from .writers import save

    written = save(src, dst, force=True)  # .pt2: atomically, the tokenizer of a HF source copied beside it
    return (src if dst.suffix == ".safetensors" else written), None


@register_route("onnx", "onnx")
def _onnx_to_onnx(src: ModelHandle, dst: Path, opts: ConvertOptions) -> tuple[ModelHandle, None]:
    """Re-save (and, with ``opset``, convert the opset of) an ONNX model."""
    import onnx

    from ..backends.onnx import save_onnx
    from ..loading import load

    model = src.model
    if opts.opset is not None:
        try:
            model = onnx.version_converter.convert_version(model, opts.opset)
        except Exception as exc:
            raise UnsupportedError(f"cannot convert the model to opset {opts.opset}: {first_line(exc)}") from None
    save_onnx(model, dst)
    return load(dst), None


from ..core.verbs import make_callable  # noqa: E402

make_callable(__name__, convert)
