"""ONNX → OpenVINO IR (``.xml`` + ``.bin``) with ``openvino.convert_model`` + ``save_model``,
parity-checked by running the written IR in OpenVINO against the ONNX model in ONNX Runtime.

Note: ``openvino.save_model`` halves the weights to fp16 by default (``compress_to_fp16``).
deepshrink keeps fp32 whenever parity is verified (the default), because fp16 weights alone
move outputs by about 1e-3 — far past the 1e-4 parity tolerance; pass ``fp16=True``
(``--fp16`` is not a CLI flag; Python: ``convert(..., fp16=True)``) to get the half-size IR and a
parity report measured on it with the tolerance widened to 1e-2.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.openvino_rt import import_openvino, make_runner
from ..core.handle import ModelHandle
from ..errors import UnsupportedError
from .routes import ConvertOptions, register_route


def onnx_to_openvino(src: ModelHandle, dst: Path, *, compress_to_fp16: bool = False) -> Path:
    """Write ``dst`` (.xml) and its ``.bin`` beside it; both appear only if both were written."""
    ov = import_openvino()
    import onnx

    with tempfile.TemporaryDirectory(prefix=".deepshrink-ov.", dir=dst.parent) as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        from ..backends.onnx import inline_external_data

        onnx.save(inline_external_data(src.model), str(onnx_path))
        try:
            ov_model = ov.convert_model(str(onnx_path))
        except Exception as exc:
            first = str(exc).strip().splitlines()
            raise UnsupportedError(f"OpenVINO cannot convert this ONNX model: {' '.join(first[:3])[:300]}") from None
        staged = Path(tmp) / dst.name
        ov.save_model(ov_model, str(staged), compress_to_fp16=compress_to_fp16)
        # .bin first, .xml last: a reader that finds the .xml finds its weights too
        shutil.move(str(staged.with_suffix(".bin")), str(dst.with_suffix(".bin")))
        shutil.move(str(staged), str(dst))
    return dst


def bisect_openvino(src: ModelHandle, xml: Path, inputs: dict[str, np.ndarray], *, atol: float = 1e-4,
                    rtol: float = 1e-4) -> Any:
    """The first ONNX node whose output differs between ONNX Runtime and the written IR.

    OpenVINO keeps ONNX tensor names, so both sides expose every intermediate by name; the
    first float tensor (in graph order) past the tolerance is reported as a ``Divergence``."""
    from .parity import first_divergence, onnx_intermediates

    ov = import_openvino()
    order, ref = onnx_intermediates(src.model, inputs)
    core = ov.Core()
    model = core.read_model(str(xml))
    ports: dict[str, Any] = {}
    for op in model.get_ordered_ops():
        for port in op.outputs():
            for name in port.get_names():
                ports.setdefault(name, port)
    wanted = [name for name, _, _ in order if name in ports]
    model.add_outputs([ports[n] for n in wanted])
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    feed = {}
    for i, port in enumerate(compiled.inputs):
        key = next((n for n in port.get_names() if n in inputs), None)
        if key is not None:
            feed[i] = np.ascontiguousarray(inputs[key])
    res = req.infer(feed)
    got: dict[str, np.ndarray] = {}
    for port in compiled.outputs:
        for name in port.get_names():
            got.setdefault(name, np.asarray(res[port]))
    return first_divergence(order, ref, got, atol, rtol)


@register_route("onnx", "openvino", options=("fp16",))
def _route(src: ModelHandle, dst: Path, opts: ConvertOptions) -> tuple[None, Any]:
    from .parity import parity_against

    fp16 = bool(opts.extra.get("fp16", False))
    onnx_to_openvino(src, dst, compress_to_fp16=fp16)
    if not opts.verify:
        return None, None
    runner = make_runner(dst, threads=2)
    atol = max(opts.atol, 1e-2) if fp16 else opts.atol
    report = parity_against(src, runner, data=opts.data, atol=atol, rtol=opts.rtol)
    if not report.ok:  # name the first node that diverges
        try:
            from .parity import parity_inputs

            report.divergence = bisect_openvino(src, dst, parity_inputs(src, opts.data)[0], atol=atol, rtol=opts.rtol)
        except Exception as exc:  # a diagnosis aid: never hide the parity result
            report.note = f"bisection could not run: {type(exc).__name__}: {str(exc)[:160]}"
    return None, report
