"""Keras / TensorFlow SavedModel → ONNX with tf2onnx, parity-checked against the Keras model.

Sources: a ``keras.Model`` object, a ``.keras`` file, a legacy ``.h5`` file, or a SavedModel
folder (``model.export(folder)`` in Keras 3, ``tf.saved_model.save`` in TF). ``.keras``/``.h5``
files load with Keras' ``safe_mode`` (no Lambda-layer code is deserialized) unless the user
passes ``trust_remote_code``; SavedModels hold graphs, not Python code.

Why not ``tf2onnx.convert.from_keras``: with Keras 3 it fails (``KeyError: 'keras_tensor_…'``,
tf2onnx 1.17 reads Keras 2 internals), so the model is wrapped in a ``tf.function`` with an
explicit input signature and converted with ``tf2onnx.convert.from_function``. Keras is
channels-last: with ``nchw=True`` tf2onnx transposes the inputs so the ONNX model takes NCHW
(as PyTorch models and deepshrink's built-in digits data do).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.handle import ModelHandle
from ..errors import InputError, MissingExtraError, UnsupportedError, first_line
from .routes import ConvertOptions, register_route


def import_tf2onnx() -> tuple[Any, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from ..core.quiet import native_output_silenced

    try:
        with native_output_silenced():  # TF's native start-up lines (oneDNN notice) ignore the log level
            import tensorflow as tf
    except ImportError:
        raise MissingExtraError("tensorflow-cpu", "tf", "Keras/TensorFlow conversion") from None
    try:
        import tf2onnx
    except ImportError:
        raise MissingExtraError("tf2onnx", "tf", "Keras/TensorFlow → ONNX conversion") from None
    return tf, tf2onnx


@dataclass
class TFSource:
    """A TF callable with a fixed input signature: ``fn(*arrays) -> list of arrays``."""

    fn: Any  # tf.function
    signature: list[Any]  # tf.TensorSpec, named
    origin: str

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.signature]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.fn(*[inputs[n] for n in self.input_names])
        outs = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o) for o in outs]


def _ident(name: str, i: int) -> str:
    s = re.sub(r"\W", "_", name.split(":")[0]).strip("_")
    if not s or s.startswith("keras_tensor"):
        return "x" if i == 0 else f"x{i}"
    return f"_{s}" if s[0].isdigit() else s


def load_tf_source(src: Any, *, trust_remote_code: bool = False) -> TFSource:
    """A Keras model/file or SavedModel folder as a signed ``tf.function``."""
    tf, _ = import_tf2onnx()
    import keras

    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if not p.exists():
            raise InputError(f"model {p} does not exist")
        if p.is_dir():
            return _saved_model(tf, p)
        if p.suffix.lower() not in (".keras", ".h5", ".hdf5"):
            raise InputError(f"{p}: not a Keras model; use a .keras, .h5 or .hdf5 file or a SavedModel folder")
        try:
            model = keras.saving.load_model(str(p), compile=False, safe_mode=not trust_remote_code)
        except ValueError as exc:
            if "safe_mode" in str(exc) or "lambda" in str(exc).lower():
                raise InputError(f"{p} contains Python code (a Lambda layer); loading it would execute it — "
                                 "pass --trust-remote-code if you trust this file") from None
            raise InputError(f"{p} is not a readable Keras model ({first_line(exc)})") from None
        except Exception as exc:
            raise InputError(f"{p} is not a readable Keras model ({type(exc).__name__}: {first_line(exc)})") from None
        origin = str(p)
    elif hasattr(src, "predict") and hasattr(src, "inputs"):
        model, origin = src, f"<{type(src).__name__}>"
    else:
        raise InputError(f"cannot read a Keras/TensorFlow model from {type(src).__name__}")
    sig = []
    for i, t in enumerate(model.inputs):
        shape = [None if d is None else int(d) for d in t.shape]
        sig.append(tf.TensorSpec(shape, tf.as_dtype(t.dtype), name=_ident(getattr(t, "name", ""), i)))

    @tf.function(input_signature=sig)
    def fn(*args: Any) -> Any:
        out = model(list(args) if len(args) > 1 else args[0], training=False)
        return list(out) if isinstance(out, (list, tuple)) else out

    return TFSource(fn, sig, origin)


def _saved_model(tf: Any, p: Path) -> TFSource:
    if not (p / "saved_model.pb").is_file():
        raise InputError(f"{p} is a folder without saved_model.pb: not a TensorFlow SavedModel")
    try:
        loaded = tf.saved_model.load(str(p))
    except Exception as exc:
        raise InputError(f"{p} is not a readable SavedModel ({first_line(exc)})") from None
    sigs = getattr(loaded, "signatures", {})
    if "serving_default" not in sigs:
        raise InputError(f"SavedModel {p} has no 'serving_default' signature (has: {sorted(sigs)})")
    serve = sigs["serving_default"]
    kw = serve.structured_input_signature[1]
    names = sorted(kw)
    sig = [tf.TensorSpec(kw[n].shape, kw[n].dtype, name=_ident(n, i)) for i, n in enumerate(names)]
    out_keys = sorted(serve.structured_outputs, key=lambda k: (len(k), k))

    @tf.function(input_signature=sig)
    def fn(*args: Any) -> Any:
        out = serve(**dict(zip(names, args, strict=True)))
        res = [out[k] for k in out_keys]
        return res if len(res) > 1 else res[0]

    fn._deepshrink_keep = loaded  # keep the trackables alive
    return TFSource(fn, sig, str(p))


def tf_to_onnx(source: TFSource, dst: Path, *, opset: int | None = None, nchw: bool = False) -> Path:
    """Convert with tf2onnx and write ``dst`` atomically."""
    _, tf2onnx = import_tf2onnx()
    if nchw:
        bad = [s.name for s in source.signature if len(s.shape) != 4]
        if bad:
            raise InputError(f"nchw=True needs 4-D image inputs; input {bad[0]!r} is not")
    try:
        proto, _ = tf2onnx.convert.from_function(
            source.fn, input_signature=source.signature, opset=opset or 17,
            inputs_as_nchw=source.input_names if nchw else None)
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise UnsupportedError(f"tf2onnx cannot convert {source.origin}: {' '.join(msg[-2:])[:300]}; "
                               "try another opset (--opset) or TensorFlow's own TFLite converter") from None
    from ..core.fileio import write_bytes_atomic

    write_bytes_atomic(dst, proto.SerializeToString())
    return dst


def keras_runner(source: TFSource, nchw: bool) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """Run the Keras/TF model on inputs laid out like the ONNX model's (NCHW when ``nchw``)."""

    def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        feed = {k: (np.ascontiguousarray(v.transpose(0, 2, 3, 1)) if nchw else v) for k, v in inputs.items()}
        return source.run(feed)

    return run


@register_route("keras", "onnx", options=("nchw",))
def _route(src: Any, dst: Path, opts: ConvertOptions) -> tuple[ModelHandle, Any]:
    from ..loading import load
    from .parity import parity_against

    nchw = bool(opts.extra.get("nchw", False))
    source = load_tf_source(src, trust_remote_code=opts.trust_remote_code)
    tf_to_onnx(source, dst, opset=opts.opset, nchw=nchw)
    handle = load(dst)
    handle.metadata["converted_from"] = source.origin
    if not opts.verify:
        return handle, None
    report = parity_against(handle, keras_runner(source, nchw), data=opts.data, atol=opts.atol, rtol=opts.rtol)
    report.note = "ONNX (ONNX Runtime) compared with the Keras/TF model on the same inputs"
    return handle, report


@register_route("tflite", "onnx")
def _tflite_route(src: Any, dst: Path, opts: ConvertOptions) -> tuple[ModelHandle, Any]:
    """A ``.tflite`` file (MediaPipe's detectors and landmark models, TF's converter output) → ONNX with
    tf2onnx's TFLite reader (``tf2onnx.convert.from_tflite``), parity-checked against TensorFlow's TFLite
    interpreter on the same inputs (outputs matched by tensor name). Custom ops no ONNX runtime has (MediaPipe's
    ``Convolution2DTransposeBias``) are refused by name."""
    from ..backends.tflite_rt import invoke, make_runner
    from ..core.fileio import write_bytes_atomic
    from ..core.quiet import native_output_silenced
    from ..loading import load
    from .parity import judge_as_int8, parity_against

    path = Path(str(getattr(src, "path", None) or src))
    if not path.is_file():
        raise InputError(f"model file {path} does not exist")
    _, tf2onnx = import_tf2onnx()
    import logging

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    try:
        with native_output_silenced():
            proto, _ = tf2onnx.convert.from_tflite(str(path), opset=opts.opset or 17)
    except Exception as exc:
        msg = str(exc).strip().splitlines() or [type(exc).__name__]
        raise UnsupportedError(f"tf2onnx cannot convert {path}: {' '.join(msg[-2:])[:300]}") from None
    import onnx

    # ops tf2onnx passes through unconverted keep their TFLite names (``TFL_Convolution2DTransposeBias``)
    custom = sorted({n.op_type for n in proto.graph.node if n.domain not in ("", "ai.onnx", "com.microsoft")
                     or (n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type))})
    if custom:
        raise UnsupportedError(f"{path} uses TFLite custom op(s) {', '.join(custom)} that no ONNX runtime runs; "
                               "nothing written")
    write_bytes_atomic(dst, proto.SerializeToString())
    handle = load(dst)
    handle.metadata["converted_from"] = str(path)
    if not opts.verify:
        return handle, None
    it = make_runner(path, threads=2).interpreter  # the interpreter alone: its signature runner goes with the rest
    # tf2onnx keeps the subgraph's input and output order and names outputs after their tensors: inputs by
    # position, outputs by name when they match (else by position)
    by_name = sorted(d["name"] for d in it.get_output_details()) == sorted(handle.output_names)

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        got = invoke(it, [feed[n] for n in handle.input_names])
        return [got[n] for n in handle.output_names] if by_name else list(got.values())

    report = parity_against(handle, run, data=opts.data, atol=opts.atol, rtol=opts.rtol)
    report.note = "ONNX (ONNX Runtime) compared with the TFLite interpreter on the same inputs"
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
        judge_as_int8(report)  # an int8 TFLite model: judged as `convert --int8` judges its own output
    return handle, report

