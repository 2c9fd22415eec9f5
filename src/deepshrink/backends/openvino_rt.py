"""OpenVINO runtime adapter: ``make_runner(path, threads)`` compiles an IR (``.xml`` + ``.bin``)
or ONNX file for the CPU with a fixed thread count and f32 inference precision (so a timing
or parity figure is not silently taken in bf16 on CPUs that have it), and returns a callable
``runner(inputs: dict[str, ndarray]) -> list[ndarray]`` carrying ``input_names``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MissingExtraError, first_line


def import_openvino() -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise MissingExtraError("openvino", "openvino", "OpenVINO IR conversion and benchmarking") from None
    return ov


class OpenVINORunner:
    """A compiled OpenVINO model; call it with a dict of arrays keyed by input name."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        # a tensor can carry several names (e.g. the graph input and a no-op Flatten's output)
        self._names = [set(p.get_names()) or {p.get_any_name()} for p in compiled.inputs]
        self.input_names = [_pick(names) for names in self._names]
        self.output_names = [p.get_any_name() for p in compiled.outputs]

    def __call__(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        feed = {}
        for i, names in enumerate(self._names):
            key = next((n for n in names if n in inputs), None)
            if key is None:
                raise InputError(f"OpenVINO model input {self.input_names[i]!r} missing; the data provides {sorted(inputs)}")
            feed[i] = np.ascontiguousarray(inputs[key])
        res = self.request.infer(feed)
        return [np.array(res[o]) for o in self.compiled.outputs]


def _pick(names: set[str]) -> str:
    """The most user-facing of a tensor's names: graph inputs rarely contain '/' or ':'."""
    return sorted(names, key=lambda n: (("/" in n) or (":" in n), len(n), n))[0]


def make_runner(path: str | os.PathLike[str] | Any, threads: int = 2) -> OpenVINORunner:
    """Compile ``path`` (an IR ``.xml``, an ONNX file, or an ``ov.Model``) for the CPU."""
    ov = import_openvino()
    core = ov.Core()
    model = path
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        if not p.is_file():
            raise InputError(f"model file {p} does not exist")
        if p.suffix == ".xml" and not p.with_suffix(".bin").is_file():
            raise InputError(f"OpenVINO IR {p} has no weights file {p.with_suffix('.bin').name} beside it")
        try:
            model = core.read_model(str(p))
        except Exception as exc:
            raise InputError(f"OpenVINO cannot read {p}: {first_line(exc)}") from None
    config = {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32",
              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    return OpenVINORunner(core.compile_model(model, "CPU", config))
