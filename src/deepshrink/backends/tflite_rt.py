"""TFLite / LiteRT runtime adapter: ``make_runner(path, threads)`` loads a ``.tflite`` file in
TensorFlow's interpreter (``tf.lite.Interpreter``, XNNPACK delegate, ``threads`` threads) and
returns ``runner(inputs: dict[str, ndarray]) -> list[ndarray]`` with ``input_names``.

Inputs are matched by the model's signature names (deepshrink writes the ONNX input names
there); the batch dimension is resized per call, so one file serves any batch size."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..core.quiet import native_output_silenced
from ..errors import InputError, MissingExtraError, first_line


def _interpreter_cls() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with native_output_silenced():  # TF's native start-up lines (oneDNN notice) ignore the log level
            import tensorflow as tf
    except ImportError:
        try:  # the standalone LiteRT runtime works too
            from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]

            return Interpreter
        except ImportError:
            raise MissingExtraError("tensorflow-cpu", "tf", "Running TFLite models") from None
    return tf.lite.Interpreter


def _ident(name: str) -> str:
    s = re.sub(r"\W", "_", name).strip("_") or "x"
    return f"_{s}" if s[0].isdigit() else s


class TFLiteRunner:
    """One interpreter; call it with a dict of arrays keyed by input name."""

    def __init__(self, path: Path, threads: int) -> None:
        cls = _interpreter_cls()
        try:  # TF 2.21 warns tf.lite.Interpreter moves to ai_edge_litert; its XNNPACK delegate announces itself
            with warnings.catch_warnings(), native_output_silenced():
                warnings.simplefilter("ignore")
                self.interpreter = cls(model_path=str(path), num_threads=int(threads))
        except Exception as exc:
            raise InputError(f"{path} is not a readable TFLite model: {first_line(exc)}") from None
        self._announced = False
        sigs = self.interpreter.get_signature_list()
        self.signature = next(iter(sigs)) if sigs else None
        if self.signature is not None:
            with native_output_silenced():  # allocating applies the XNNPACK delegate, which announces itself
                self.runner = self.interpreter.get_signature_runner(self.signature)
            self.input_names = list(sigs[self.signature]["inputs"])
            self.output_names = list(sigs[self.signature]["outputs"])
        else:
            self.runner = None
            with native_output_silenced():
                self.interpreter.allocate_tensors()
            self.input_names = [d["name"] for d in self.interpreter.get_input_details()]
            self.output_names = [d["name"] for d in self.interpreter.get_output_details()]

    def _feed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        by_ident = {_ident(k): v for k, v in inputs.items()}
        feed = {}
        for n in self.input_names:
            v = inputs.get(n, by_ident.get(n))
            if v is None:
                raise InputError(f"TFLite model input {n!r} missing; the data provides {sorted(inputs)}")
            feed[n] = np.ascontiguousarray(v)
        return feed

    def __call__(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        feed = self._feed(inputs)
        if self.runner is not None:
            if not self._announced:  # a signature runner's first call applies the XNNPACK delegate, which says so
                self._announced = True
                with native_output_silenced():
                    out = self.runner(**feed)
            else:
                out = self.runner(**feed)
            # output_0, output_1, ... : keep their numeric order
            keys = sorted(out, key=lambda k: (len(k), k))
            return [np.array(out[k]) for k in keys]
        return list(invoke(self.interpreter, [feed[n] for n in self.input_names]).values())


def invoke(it: Any, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Run a TFLite interpreter itself (not a signature runner: none may be alive on it) on ``arrays``, one per
    input in the subgraph's order, resizing inputs to their shapes; ``{output tensor name: array}`` in the
    subgraph's output order."""
    ins = it.get_input_details()
    arrays = [np.ascontiguousarray(a) for a in arrays]
    for d, a in zip(ins, arrays, strict=True):
        if tuple(d["shape"]) != a.shape:
            it.resize_tensor_input(d["index"], a.shape)
    it.allocate_tensors()
    for d, a in zip(ins, arrays, strict=True):
        it.set_tensor(d["index"], a)
    it.invoke()
    return {d["name"]: np.array(it.get_tensor(d["index"])) for d in it.get_output_details()}


def make_runner(path: str | os.PathLike[str], threads: int = 2) -> TFLiteRunner:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"model file {p} does not exist")
    return TFLiteRunner(p, threads)
