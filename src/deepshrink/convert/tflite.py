"""PyTorch or ONNX → TFLite / LiteRT, float32 or full-integer int8 with a representative
dataset, parity-checked in TFLite's interpreter against ONNX Runtime.

Which converter, and why (re-checked against this stack — Python 3.11.7, torch 2.13, tensorflow-cpu
2.21, numpy 2.4, onnx 1.23, onnxruntime 1.32 — on 30 Nov 2026; ``notes/issue-12-session-d-tflite.md``):
- ``onnx2tf`` 2.6.x (2.6.9) requires Python >= 3.12 and pins numpy 2.2.6, onnx 1.20.1,
  onnxruntime 1.26.0, protobuf 7.35.1 (and torch 2.11 in its ``[torch]`` extra): it cannot
  install here, and would downgrade numpy/onnx/onnxruntime where it could. The newest for 3.11,
  1.29.24, would replace tensorflow-cpu 2.21 by tensorflow 2.19, numpy by 1.26, onnx by 1.19,
  onnxruntime by 1.23 and protobuf by 4.25 (``pip install --dry-run``).
- ``litert-torch`` 0.10 installs beside torch 2.13 and TF 2.21 without touching them, but adds
  jax/jaxlib 0.10, torchao, kagglehub, ai-edge-litert and lowers pydantic (2.14 → 2.11),
  typing_extensions (4.16 → 4.12) and anyio (4.16 → 4.14) below our lock. Fed by deepshrink's ONNX →
  PyTorch importer (``benchmarks/onnx_node_litert.py``, run in a side environment) it passed 39 of
  47 node cases of 13 detector/segmenter ops where this table passed 40 (litert-torch: 0/4 Resize,
  a SIGSEGV on a 3-D ConvTranspose; this table: refusals by name), at ~3 s per conversion instead
  of ~0.5 s, with static shapes only; on ``real-graphs`` case4 (``Resize`` by scales) it failed
  ("failed to legalize operation 'tfl.floor'" on the importer's float64 size arithmetic). Not in
  the lock, so not the route; an opt-in fallback for ops this table refuses is the next step.
- TensorFlow's own ``tf.lite.TFLiteConverter`` (TF 2.21, already our ``[tf]`` extra) works
  beside torch 2.13 but needs a TensorFlow graph.

So the route re-expresses the ONNX graph as a ``tf.function`` — a table of op converters like
the ONNX → PyTorch importer, covering what CNNs, detectors, segmenters and transformer blocks use
(Conv/ConvTranspose, Gemm, MatMul, pooling, norms, Resize, element-wise, reshapes; coverage on
the ONNX backend node tests: ``benchmarks/results/onnx_node_suite.md``) — and hands that to TF's
converter. A variant TFLite cannot reproduce exactly (a ``Resize`` whose pixels TFLite's resize
kernels do not pick, say) is refused by name, never converted to other values.
PyTorch sources get there through ONNX (``convert`` plans torch → onnx → tflite). Layout: the
function keeps ONNX's NCHW tensors and transposes to NHWC around each conv/pool, so the
``.tflite`` takes the same inputs as the ONNX model.

int8 (``int8=True``) is full-integer: every op in ``TFLITE_BUILTINS_INT8``, activations
calibrated on ``data`` (required), float32 model inputs/outputs (quantize/dequantize at the
edges) so the file is a drop-in replacement; its parity is judged by top-1 agreement and
cosine rather than max-abs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..core.handle import ModelHandle
from ..errors import InputError, MissingExtraError, UnsupportedError
from .routes import ConvertOptions, register_route


def import_tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from ..core.quiet import native_output_silenced

    try:
        with native_output_silenced():  # TF's native start-up lines (oneDNN notice) ignore the log level
            import tensorflow as tf
    except ImportError:
        raise MissingExtraError("tensorflow-cpu", "tf", "TFLite conversion") from None
    from ..core.quiet import verbose

    if not verbose():  # "WARNING:tensorflow: ... resize_nearest_neighbor is deprecated" on every Resize: TF's own
        tf.get_logger().setLevel("ERROR")  # notes to its developers, three lines before each conversion
    return tf


def bisect_tflite(src: ModelHandle, inputs: dict[str, np.ndarray], *, atol: float = 1e-4, rtol: float = 1e-4) -> Any:
    """Where the TensorFlow re-expression departs from ONNX Runtime, node by node (run eagerly).
    ``None`` means the TF graph matches everywhere: the difference came from TFLite's converter."""
    from .parity import first_divergence, onnx_intermediates

    tf = import_tf()
    order, ref = onnx_intermediates(src.model, inputs)
    got = _TFGraph(src.model).trace(tf, [inputs[n] for n in src.input_names])
    return first_divergence(order, ref, got, atol, rtol)


# ---------------------------------------------------------------- ONNX → tf.function
def _ident(name: str) -> str:
    import re

    s = re.sub(r"\W", "_", name).strip("_") or "x"
    return f"_{s}" if s[0].isdigit() else s


class _TFGraph:
    """Evaluates an ONNX graph with TensorFlow ops (NCHW kept; NHWC only inside conv/pool)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type not in _TF_OPS:
                raise UnsupportedError(
                    f"ONNX op '{n.op_type}' in node '{n.name or n.output[0]}' has no TFLite converter in deepshrink; "
                    "the closest routes: keep the model in ONNX (ONNX Runtime), convert it to OpenVINO IR (.xml), "
                    "or convert the original Keras/TF model with TensorFlow's own TFLiteConverter")

    def trace(self, tf: Any, args: list[Any]) -> dict[str, np.ndarray]:
        """Run eagerly and return every value by its ONNX name (for bisection)."""
        env = self._run(tf, [tf.constant(a) for a in args])
        return {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in env.items() if k not in self.consts}

    def __call__(self, tf: Any, *args: Any) -> Any:
        env = self._run(tf, list(args))
        res = [env[o.name] for o in self.model.graph.output]
        return res[0] if len(res) == 1 else tuple(res)

    def _run(self, tf: Any, args: list[Any]) -> dict[str, Any]:
        env: dict[str, Any] = dict(self.consts)
        inputs = [i for i in self.model.graph.input if i.name not in self.consts]
        for vi, a in zip(inputs, args, strict=True):
            env[vi.name] = a
        for n in self.model.graph.node:
            attrs = {a.name: _attr(a) for a in n.attribute}
            ins = [env[i] if i else None for i in n.input]
            if n.op_type == "Split":  # the only op here whose output count is not fixed
                out = _split(tf, ins, attrs, len(n.output))
            else:
                out = _TF_OPS[n.op_type](tf, ins, attrs)
            outs = out if isinstance(out, (list, tuple)) else [out]
            for k, name in enumerate(n.output):
                if name and k >= len(outs):  # e.g. MaxPool's Indices: refused by name, not a KeyError later
                    raise UnsupportedError(f"TFLite route: {n.op_type} output #{k} ('{name}') is not computed "
                                           f"(node '{n.name or n.output[0]}')")
            for name, v in zip(n.output, outs, strict=False):
                env[name] = v
        return env


def _attr(a: onnx.AttributeProto) -> Any:
    if a.type == onnx.AttributeProto.TENSOR:
        return numpy_helper.to_array(a.t)
    v = onnx.helper.get_attribute_value(a)
    return v.decode() if isinstance(v, bytes) else v


def _is_const(v: Any) -> bool:
    return isinstance(v, np.ndarray)


def _nhwc(tf: Any, x: Any) -> Any:
    return tf.transpose(x, [0, 2, 3, 1])


def _nchw(tf: Any, x: Any) -> Any:
    return tf.transpose(x, [0, 3, 1, 2])


def _explicit_pads(p: list[int]) -> list[list[int]]:
    return [[0, 0], [p[0], p[2]], [p[1], p[3]], [0, 0]]


def _conv(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    x, w, b = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    if not _is_const(w) or w.ndim != 4:
        raise UnsupportedError("TFLite route: Conv needs constant 2-D conv weights")
    group = a.get("group", 1)
    strides = a.get("strides", [1, 1])
    dil = a.get("dilations", [1, 1])
    pads = a.get("pads", [0, 0, 0, 0])
    auto = a.get("auto_pad", "NOTSET")
    if auto == "SAME_LOWER":  # the odd pixel at the start (TF's SAME puts it at the end): explicit pads
        k_eff = [(kk - 1) * d + 1 for kk, d in zip(w.shape[2:], dil, strict=True)]
        pads = _pool_pads({"auto_pad": auto}, [x.shape[2], x.shape[3]], k_eff, list(strides))
    padding: Any = "SAME" if auto == "SAME_UPPER" else ("VALID" if auto == "VALID" else _explicit_pads(pads))
    xh = _nhwc(tf, x)
    if group == 1:
        y = tf.nn.conv2d(xh, w.transpose(2, 3, 1, 0), strides=[1, *strides, 1], padding=padding, dilations=[1, *dil, 1])
    elif group == w.shape[0] and w.shape[1] == 1:  # depthwise, multiplier 1
        y = tf.nn.depthwise_conv2d(xh, w.transpose(2, 3, 0, 1), strides=[1, *strides, 1], padding=padding,
                                   dilations=dil)
    else:
        raise UnsupportedError(f"TFLite route: grouped Conv (group={group}) other than depthwise")
    if b is not None:
        y = y + b
    return _nchw(tf, y)


def _conv_transpose(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    """ONNX ``ConvTranspose`` (1-D or 2-D, NCHW) as TFLite's TRANSPOSE_CONV.

    The full, unpadded transposed convolution (``padding="VALID"``: spatial size
    ``(in - 1) * stride + (k - 1) * dilation + 1``) is computed, then the window ONNX's
    reference implementation takes of it (zero-extended where it reaches past it):
    ``pads`` cropped and ``output_padding`` rows appended; with ``output_shape`` its first
    rows/columns; with ``auto_pad=SAME_*`` the centred window of ``output_shape`` (default
    ``input * stride``). Dilations are applied to
    the constant kernel (zeros inserted), groups run as one TRANSPOSE_CONV per group
    (``tf.split`` / ``tf.concat``). Weights must be constant: ``(C_in, C_out / group, kH, kW)``.
    Spatial input sizes must be static. Raises ``UnsupportedError`` for 3-D."""
    x, w, b = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    if not _is_const(w) or w.ndim not in (3, 4):
        raise UnsupportedError("TFLite route: ConvTranspose needs constant 1-D or 2-D weights")
    one_d = w.ndim == 3
    if one_d:  # (N, C, L) -> (N, C, 1, L)
        x, w = tf.expand_dims(x, 2), w[:, :, None, :]

    def two(key: str, default: int) -> list[int]:
        v = list(a.get(key, [default] * (1 if one_d else 2)))
        return [default, *v] if one_d else v

    strides, dil, out_pad = two("strides", 1), two("dilations", 1), two("output_padding", 0)
    group = int(a.get("group", 1))
    if any(d != 1 for d in dil):  # a dilated kernel is the kernel with (d - 1) zeros between taps
        c_in, c_out, kh, kw = w.shape
        wd = np.zeros((c_in, c_out, (kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1), w.dtype)
        wd[:, :, ::dil[0], ::dil[1]] = w
        w = wd
    k = list(w.shape[2:])
    in_hw = [x.shape[2], x.shape[3]]
    if not all(isinstance(d, int) for d in in_hw):
        raise UnsupportedError("TFLite route: ConvTranspose needs static spatial input sizes")
    full = [(i - 1) * s + kk for i, s, kk in zip(in_hw, strides, k, strict=True)]
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):  # ONNX's reference: output = output_shape or input * stride
        target = [int(v) for v in a["output_shape"]][-len(k):] if "output_shape" in a else [
            i * s for i, s in zip(in_hw, strides, strict=True)]
        if one_d:
            target = [1, target[-1]]
        total = [f + op - t for f, op, t in zip(full, out_pad, target, strict=True)]
        begin = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        size = target
    elif "output_shape" in a:  # explicit output size: the first output_shape rows/columns, pads ignored
        size = [int(v) for v in a["output_shape"]][-len(k):]
        if one_d:
            size = [1, size[-1]]
        begin = [0, 0]
    else:
        p = [0] * 4 if auto == "VALID" else list(a.get("pads", [0] * (2 if one_d else 4)))
        pb, pe = ([0, p[0]], [0, p[1]]) if one_d else ([p[0], p[1]], [p[2], p[3]])
        begin = pb
        size = [f + op - b0 - e0 for f, op, b0, e0 in zip(full, out_pad, pb, pe, strict=True)]
    xh = _nhwc(tf, x)
    n = tf.shape(xh)[0]
    c_out_g = w.shape[1]
    xs = tf.split(xh, group, axis=3) if group > 1 else [xh]
    ws = np.split(w, group, axis=0) if group > 1 else [w]
    ys = [tf.nn.conv2d_transpose(xg, wg.transpose(2, 3, 1, 0), tf.stack([n, full[0], full[1], c_out_g]),
                                 strides=[1, *strides, 1], padding="VALID") for xg, wg in zip(xs, ws, strict=True)]
    y = ys[0] if len(ys) == 1 else tf.concat(ys, axis=3)
    # the output is rows [begin, begin + size) of the full result extended with zeros on both sides
    before = [max(0, -b0) for b0 in begin]
    after = [max(0, b0 + sz - f) for b0, sz, f in zip(begin, size, full, strict=True)]
    if any(before) or any(after):
        y = tf.pad(y, [[0, 0], [before[0], after[0]], [before[1], after[1]], [0, 0]])
    st = [b0 + bf for b0, bf in zip(begin, before, strict=True)]
    if st != [0, 0] or [sz + s0 for sz, s0 in zip(size, st, strict=True)] != [f + bf + af for f, bf, af in zip(full, before, after, strict=True)]:
        y = y[:, st[0]:st[0] + size[0], st[1]:st[1] + size[1], :]
    if b is not None:
        y = y + b
    y = _nchw(tf, y)
    return y[:, :, 0, :] if one_d else y


def _pool_pads(a: dict[str, Any], in_hw: list[Any], k: list[int], s: list[int]) -> list[int]:
    """ONNX pooling pads ``[top, left, bottom, right]`` with ``auto_pad`` (SAME_UPPER/LOWER:
    output ``ceil(in / stride)``, the extra pixel at the end / start) and ``ceil_mode`` (extra
    end padding for the last partial window, which must start inside the input or its left
    padding — ONNX's reference rule) resolved; needs static sizes for either."""
    auto = a.get("auto_pad", "NOTSET")
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if auto in ("SAME_UPPER", "SAME_LOWER", "VALID") or a.get("ceil_mode", 0):
        if not all(isinstance(d, int) for d in in_hw):
            raise UnsupportedError("TFLite route: pooling with auto_pad/ceil_mode needs static spatial sizes")
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(0, (-(-i // st) - 1) * st + kk - i) for i, st, kk in zip(in_hw, s, k, strict=True)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        return [*small, *big] if auto == "SAME_UPPER" else [*big, *small]
    if a.get("ceil_mode", 0):
        for ax in range(2):
            span = in_hw[ax] + pads[ax] + pads[ax + 2] - k[ax]
            out = -(-span // s[ax]) + 1
            if (out - 1) * s[ax] >= in_hw[ax] + pads[ax]:
                out -= 1
            pads[ax + 2] += max(0, (out - 1) * s[ax] + k[ax] - (in_hw[ax] + pads[ax] + pads[ax + 2]))
    return pads


def _pool(kind: str) -> Callable[..., Any]:
    """ONNX MaxPool / AveragePool, 1-D (as H = 1) or 2-D, as TFLite's MAX_POOL_2D /
    AVERAGE_POOL_2D on NHWC with explicit padding (``_pool_pads``). Max pads with the dtype's
    lowest value; average with ``count_include_pad=0`` divides the window sums by the number of
    real pixels (a constant map). Raises ``UnsupportedError`` for 3-D, dilations, and
    average pooling with ``ceil_mode``."""

    def f(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
        k = list(a["kernel_shape"])
        one_d = len(k) == 1
        if len(k) not in (1, 2) or any(d != 1 for d in a.get("dilations", [1] * len(k))):
            raise UnsupportedError(f"TFLite route: {kind} pool variant (dilations or 3-D)")
        if kind == "avg" and a.get("ceil_mode", 0):
            raise UnsupportedError("TFLite route: AveragePool with ceil_mode")
        s = list(a.get("strides", [1] * len(k)))
        x = ins[0]
        if one_d:  # (N, C, L) -> (N, C, 1, L)
            x = tf.expand_dims(x, 2)
            k, s = [1, *k], [1, *s]
            p1 = list(a.get("pads", [0, 0]))
            a = {**a, "pads": [0, p1[0], 0, p1[1]]}
        pads = _pool_pads(a, [x.shape[2], x.shape[3]], k, s)
        xh = _nhwc(tf, x)
        if any(pads):
            if kind == "max":
                dt = xh.dtype.as_numpy_dtype
                low = -np.inf if np.issubdtype(dt, np.floating) else np.iinfo(dt).min
                xh = tf.pad(xh, _explicit_pads(pads), constant_values=tf.constant(low, xh.dtype))
            else:
                xh = tf.pad(xh, _explicit_pads(pads))
        fn = tf.nn.max_pool2d if kind == "max" else tf.nn.avg_pool2d
        y = fn(xh, k, [1, *s, 1], "VALID")
        if kind == "avg" and any(pads) and not a.get("count_include_pad", 0):
            ih, iw = x.shape[2], x.shape[3]
            if not (isinstance(ih, int) and isinstance(iw, int)):
                raise UnsupportedError("TFLite route: AveragePool excluding padding needs static spatial sizes")
            ones = np.pad(np.ones((ih, iw), np.float32), [[pads[0], pads[2]], [pads[1], pads[3]]])
            cnt = np.lib.stride_tricks.sliding_window_view(ones, k)[::s[0], ::s[1]].sum(axis=(2, 3))
            y = y * (float(k[0] * k[1]) / cnt)[None, :, :, None].astype(np.float32)
        y = _nchw(tf, y)
        return y[:, :, 0, :] if one_d else y

    return f


def _gemm(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    x, w = ins[0], ins[1]
    if a.get("transA", 0):
        x = tf.transpose(x)
    if a.get("transB", 0):
        w = w.T if _is_const(w) else tf.transpose(w)
    y = tf.matmul(x, w) * a.get("alpha", 1.0) if a.get("alpha", 1.0) != 1.0 else tf.matmul(x, w)
    if len(ins) > 2 and ins[2] is not None:
        y = y + ins[2] * a.get("beta", 1.0)
    return y


def _reshape(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    x, shape = ins[0], ins[1]
    if _is_const(shape):
        dims = [int(d) for d in shape]
        if 0 in dims:
            dyn = tf.shape(x)
            return tf.reshape(x, [dyn[i] if d == 0 else d for i, d in enumerate(dims)])
        return tf.reshape(x, dims)
    shape = tf.cast(shape, tf.int32)
    y = tf.reshape(x, shape)
    # A shape computed at run time (Shape -> Gather -> Concat, as exported under dynamic axes):
    # TF's graph-building shape inference still works out some sizes (YOLOv8's DFL head: N x 4 x 16
    # x A), but TFLite's converter re-infers shapes from the operands alone and would see none,
    # leaving e.g. a Conv2D with unknown input channels as a TF (flex) op it refuses. The sizes
    # known here go into the shape operand as constants.
    known = y.shape.as_list() if y.shape.rank is not None else []
    if tf.executing_eagerly() or not any(d is not None for d in known):
        return y
    if all(d is not None for d in known):
        return tf.reshape(x, known)
    return tf.reshape(x, tf.stack([d if d is not None else shape[i] for i, d in enumerate(known)]))


def _flatten(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    x = ins[0]
    rank = len(x.shape)
    axis = a.get("axis", 1)
    axis = axis + rank if axis < 0 else axis  # may equal the rank: (n, 1)
    if axis == 0:
        return tf.reshape(x, [1, -1])
    shape = tf.shape(x)
    lead = tf.reduce_prod(shape[:axis])
    rest = tf.reduce_prod(shape[axis:])  # 1 when axis == rank
    return tf.reshape(x, tf.stack([lead, rest]))


def _reduce(name: str) -> Callable[..., Any]:
    def f(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
        axes = a.get("axes")
        if axes is None and len(ins) > 1 and ins[1] is not None:
            if not _is_const(ins[1]):
                raise UnsupportedError(f"TFLite route: Reduce{name.capitalize()} with axes computed at run time")
            axes = [int(i) for i in np.asarray(ins[1]).reshape(-1)]
        if not axes:  # absent or empty: every axis, unless noop_with_empty_axes
            if a.get("noop_with_empty_axes", 0):
                return ins[0]
            axes = None
        fn = {"mean": tf.reduce_mean, "sum": tf.reduce_sum, "max": tf.reduce_max, "min": tf.reduce_min,
              "prod": tf.reduce_prod}[name]
        return fn(ins[0], axis=axes, keepdims=bool(a.get("keepdims", 1)))

    return f


def _axes(ins: list[Any], a: dict[str, Any]) -> list[int]:
    if "axes" in a:
        return list(a["axes"])
    return [int(i) for i in ins[1]] if len(ins) > 1 and ins[1] is not None else []


def _squeeze(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    ax = _axes(ins, a)
    x = ins[0]
    if _is_const(x):
        return np.squeeze(x, axis=tuple(ax) or None)
    rank = len(x.shape)
    if ax and any(x.shape[i] is None for i in range(rank)):
        # TFLite's SQUEEZE refuses a tensor with several unknown dims ("squeeze_dims ... at most 8"
        # from the converter, seen on torch's 2-head attention export): a reshape to the kept dims
        drop = {int(i) % rank for i in ax}
        dyn = tf.shape(x)
        keep = [x.shape[i] if x.shape[i] is not None else dyn[i] for i in range(rank) if i not in drop]
        return tf.reshape(x, tf.stack([tf.cast(k, tf.int32) for k in keep]) if keep else [])
    return tf.squeeze(x, axis=ax or None)


def _unsqueeze(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    x = ins[0]
    for ax in sorted(_axes(ins, a)):
        x = np.expand_dims(x, ax) if _is_const(x) else tf.expand_dims(x, ax)
    return x


def _concat(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    vs = [v for v in ins if v is not None]
    if all(_is_const(v) for v in vs):
        return np.concatenate(vs, axis=a["axis"])
    dt = next(v.dtype for v in vs if not _is_const(v))
    return tf.concat([tf.constant(v, dtype=dt) if _is_const(v) else v for v in vs], axis=a["axis"])


def _batchnorm(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    x, s, b, m, v = ins[:5]
    eps = a.get("epsilon", 1e-5)
    scale = s / np.sqrt(v + eps)
    shift = b - m * scale
    shape = [1, -1, 1, 1]
    return x * scale.reshape(shape).astype(np.float32) + shift.reshape(shape).astype(np.float32)


def _softmax(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    return tf.nn.softmax(ins[0], axis=a.get("axis", -1))


def _clip(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    lo = a.get("min", ins[1] if len(ins) > 1 and ins[1] is not None else None)
    hi = a.get("max", ins[2] if len(ins) > 2 and ins[2] is not None else None)
    x = _t(tf, ins[0])
    if not all(v is None or _is_const(v) or isinstance(v, float) for v in (lo, hi)):
        raise UnsupportedError("TFLite route: Clip with bounds computed at run time")
    dt = x.dtype.as_numpy_dtype
    info = np.finfo(dt) if np.issubdtype(dt, np.floating) else np.iinfo(dt)
    lo_v = np.asarray(info.min if lo is None else lo).astype(dt).item()  # absent bound: the dtype's range
    hi_v = np.asarray(info.max if hi is None else hi).astype(dt).item()
    return tf.minimum(tf.maximum(x, tf.constant(lo_v, x.dtype)), tf.constant(hi_v, x.dtype))


def _cast(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    np_dt = onnx.helper.tensor_dtype_to_np_dtype(a["to"])
    return ins[0].astype(np_dt) if _is_const(ins[0]) else tf.cast(ins[0], tf.as_dtype(np_dt))


def _erf(tf: Any, x: Any) -> Any:
    """erf from TFLite builtins (``tf.math.erf`` is not one): Abramowitz & Stegun 7.1.26,
    absolute error below 1.5e-7 — far inside the 1e-4 parity tolerance."""
    p, c = 0.3275911, (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
    ax = tf.abs(x)
    t = 1.0 / (1.0 + p * ax)
    poly = t * (c[0] + t * (c[1] + t * (c[2] + t * (c[3] + t * c[4]))))
    return tf.sign(x) * (1.0 - poly * tf.exp(-ax * ax))


def _split(tf: Any, ins: list[Any], a: dict[str, Any], n_out: int) -> Any:
    sizes = a.get("split")
    if sizes is None and len(ins) > 1 and ins[1] is not None:
        if not _is_const(ins[1]):
            raise UnsupportedError("TFLite route: Split with computed sizes")
        sizes = [int(v) for v in ins[1]]
    axis = a.get("axis", 0)
    if sizes:
        return tf.split(ins[0], [int(v) for v in sizes], axis=axis)
    parts = a.get("num_outputs", n_out)
    dim = ins[0].shape[axis]
    if isinstance(dim, int) and dim % parts:  # ONNX-18 num_outputs: ceil(dim / n) each, the last smaller
        step = -(-dim // parts)
        return tf.split(ins[0], [step] * (parts - 1) + [dim - step * (parts - 1)], axis=axis)
    return tf.split(ins[0], parts, axis=axis)


def _div(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    x, y = ins[0], ins[1]
    if _is_const(x) and _is_const(y):
        return (np.trunc(x / y).astype(x.dtype) if np.asarray(x).dtype.kind in "iu" else x / y)
    dt = (x if not _is_const(x) else _t(tf, y)).dtype
    if dt.is_integer:  # ONNX integer Div (shape arithmetic on sizes >= 0): TFLite's FLOOR_DIV
        q = tf.math.floordiv(tf.cast(_t(tf, x), tf.int32), tf.cast(_t(tf, y), tf.int32))  # TFLite: int32 only
        return tf.cast(q, dt)
    return x / y


def _mod(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    """ONNX ``Mod``: ``fmod=0`` takes the divisor's sign (TFLite FLOOR_MOD), ``fmod=1`` the
    dividend's (C ``fmod``: ``x - trunc(x / y) * y``, built from builtins)."""
    x, y = ins[0], ins[1]
    if _is_const(x) and _is_const(y):
        return (np.fmod(x, y) if a.get("fmod", 0) else np.mod(x, y)).astype(np.asarray(x).dtype)
    x, y = _t(tf, x), tf.cast(_t(tf, y), _t(tf, x).dtype)
    if not a.get("fmod", 0):
        return tf.math.floormod(x, y)
    if x.dtype.is_integer:
        return x - tf.math.sign(x) * tf.math.floormod(tf.abs(x), tf.abs(y))
    return x - tf.math.sign(x / y) * tf.floor(tf.abs(x / y)) * y


def _gather(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    x, idx = ins[0], ins[1]
    axis = a.get("axis", 0)
    if _is_const(x) and _is_const(idx):
        return np.take(x, idx, axis=axis)
    if _is_const(idx) and not (np.asarray(idx) < 0).any():
        return tf.gather(_t(tf, x), idx, axis=axis)
    # ONNX allows negative indices (from the end); TFLite's GATHER does not
    ti = tf.cast(_t(tf, idx), tf.int64)
    n = tf.cast(tf.shape(_t(tf, x), out_type=tf.int64)[axis], tf.int64)
    return tf.gather(_t(tf, x), tf.where(ti < 0, ti + n, ti), axis=axis)


def _t(tf: Any, v: Any) -> Any:
    return tf.constant(v) if _is_const(v) else v


def _slice(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    x = ins[0]
    if "starts" in a:  # opset < 10
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = ins[1], ins[2]
        axes = ins[3] if len(ins) > 3 else None
        steps = ins[4] if len(ins) > 4 else None
    rank = len(x.shape)
    if not all(v is None or _is_const(v) for v in (axes, steps)):
        raise UnsupportedError("TFLite route: Slice with computed axes/steps")
    if not (_is_const(starts) and _is_const(ends)):  # bounds computed from shapes: strided_slice
        n = len(axes) if axes is not None else int(_t(tf, starts).shape[0])
        ax_c = [int(v) % rank for v in (axes if axes is not None else range(n))]

        def clip32(v: Any) -> Any:
            return tf.cast(tf.clip_by_value(tf.cast(_t(tf, v), tf.int64), -(2**31), 2**31 - 1), tf.int32)

        st, en = clip32(starts), clip32(ends)
        begin, end, stride, mask = [], [], [], 0
        for axis in range(rank):
            if axis in ax_c:
                k = ax_c.index(axis)
                begin.append(st[k])
                end.append(en[k])
                stride.append(int(steps[k]) if steps is not None else 1)
            else:
                begin.append(tf.constant(0, tf.int32))
                end.append(tf.constant(0, tf.int32))
                stride.append(1)
                mask |= 1 << axis
        return tf.strided_slice(x, tf.stack(begin), tf.stack(end), tf.constant(stride, tf.int32),
                                begin_mask=mask, end_mask=mask)
    ax = [int(v) % rank for v in (axes if axes is not None else range(len(starts)))]
    idx: list[Any] = [slice(None)] * rank
    for i, axis in enumerate(ax):
        st = int(starts[i])
        en = int(ends[i])
        sp = int(steps[i]) if steps is not None else 1
        big = 2**31 - 1
        n = x.shape[axis]
        if isinstance(n, int) and sp > 0:  # clamp to the known length: TF's partial shape evaluation of a
            st, en = max(min(st, n), -n), max(min(en, n), -n)  # strided slice from -2**31 gives [] (MHA Reshape)
        idx[axis] = slice(max(min(st, big), -big), max(min(en, big), -big - 1), sp)
    return x[tuple(idx)]


def _expand(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    x, shape = ins[0], ins[1]
    ones = tf.ones(tf.cast(shape, tf.int32) if not _is_const(shape) else [int(d) for d in shape], dtype=_t(tf, x).dtype)
    return _t(tf, x) * ones  # ONNX Expand broadcasts both ways, like multiplication


def _layernorm(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    x = ins[0]
    axis = a.get("axis", -1)
    rank = len(x.shape)
    axes = list(range(axis % rank, rank))
    mean, var = tf.nn.moments(x, axes=axes, keepdims=True)
    inv_std = tf.math.rsqrt(var + a.get("epsilon", 1e-5))
    y = (x - mean) * inv_std
    if len(ins) > 1 and ins[1] is not None:
        y = y * ins[1]
    if len(ins) > 2 and ins[2] is not None:
        y = y + ins[2]
    return y, mean, inv_std  # ONNX's optional Mean and InvStdDev outputs


def _range(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    if all(_is_const(v) for v in ins):
        return np.arange(ins[0], ins[1], ins[2]).astype(ins[0].dtype)
    return tf.range(*[_t(tf, v) for v in ins])


def _gather_elements(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    import tensorflow.experimental.numpy as tnp

    return tnp.take_along_axis(_t(tf, ins[0]), _t(tf, ins[1]), axis=a.get("axis", 0))


def _variadic(fn_name: str) -> Callable[..., Any]:
    def f(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
        fn = getattr(tf, fn_name)
        out = _t(tf, ins[0])
        for v in ins[1:]:
            out = fn(out, v)
        return out

    return f


def _onnx_nearest_index(coord: str, rounding: str, n_in: int, n_out: int, scale: float) -> np.ndarray:
    """Source index of each output pixel for ONNX ``Resize`` nearest (the operator spec's
    coordinate transforms and rounding modes), clamped to the input."""
    o = np.arange(n_out, dtype=np.float64)
    if coord == "half_pixel" or (coord == "pytorch_half_pixel" and n_out > 1):
        xo = (o + 0.5) / scale - 0.5
    elif coord == "pytorch_half_pixel":
        xo = np.zeros_like(o)
    elif coord == "align_corners":
        xo = o * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(o)
    elif coord == "asymmetric":
        xo = o / scale
    elif coord == "tf_half_pixel_for_nn":
        xo = (o + 0.5) / scale
    else:
        raise UnsupportedError(f"TFLite route: nearest Resize with coordinate_transformation_mode {coord}")
    idx = {"round_prefer_floor": np.ceil(xo - 0.5), "round_prefer_ceil": np.floor(xo + 0.5),
           "floor": np.floor(xo), "ceil": np.ceil(xo)}[rounding]
    return np.clip(idx, 0, n_in - 1).astype(np.int64)


def _tflite_nearest_index(n_in: int, n_out: int, align: bool, half: bool) -> np.ndarray:
    """Source index TFLite's RESIZE_NEAREST_NEIGHBOR picks (its reference kernel, float32)."""
    sc = np.float32((n_in - 1) / (n_out - 1)) if align and n_out > 1 else np.float32(n_in / n_out)
    v = (np.arange(n_out, dtype=np.float32) + np.float32(0.5 if half else 0.0)) * sc
    idx = np.floor(v + np.float32(0.5)) if align else np.floor(v)  # TfLiteRound: half away from zero (v >= 0)
    idx = np.minimum(idx, n_in - 1)
    return np.maximum(idx, 0).astype(np.int64)


def _resize(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    """ONNX ``Resize`` (and ``Upsample``) of the H/W axes of an NCHW tensor, as TFLite's
    RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR (flags ``align_corners``, ``half_pixel_centers``).

    TFLite maps output to input with the ratio ``in / out``; ONNX with the given ``scales``
    (or ``out / in`` for ``sizes``). Where the two differ (a scale whose ``in × scale`` is not a
    whole number) the result would differ, so the route refuses it, except for
    ``align_corners``, which reads only the sizes. ``axes`` (opset 18) may name H and W in
    either order.

    Nearest, static sizes: the ONNX source index of every output pixel (coordinate mode ×
    rounding mode, per the operator spec) is computed and the TFLite flag setting that picks
    the same pixels is used; if none does, ``UnsupportedError``. Sizes known only at run time:
    ``asymmetric`` + ``floor`` (``nn.Upsample``'s export) and ``half_pixel`` + ``round_prefer_ceil``
    are exact at any scale, ``half_pixel`` + ``round_prefer_floor`` at integer upscales (no
    rounding ties); others are refused. Linear: ``half_pixel`` / ``pytorch_half_pixel`` →
    ``half_pixel_centers``, ``align_corners`` → ``align_corners``, ``asymmetric`` → neither; an
    output of one pixel is refused for ``align_corners`` / ``pytorch_half_pixel`` (ONNX then
    reads pixel 0). Raises ``UnsupportedError`` for cubic, ``tf_crop_and_resize``,
    ``half_pixel_symmetric``, antialias, ``keep_aspect_ratio_policy`` other than ``stretch``,
    and resizing N or C."""
    x = ins[0]
    if _is_const(x) or len(x.shape) != 4:
        raise UnsupportedError("TFLite route: Resize of a non-4-D (NCHW) tensor")
    scales = a.get("scales")
    sizes = None
    if len(ins) == 2:  # Resize-10 / Upsample-9: (X, scales)
        scales = ins[1]
    elif len(ins) > 2:
        scales = ins[2] if ins[2] is not None and (not _is_const(ins[2]) or ins[2].size) else None
        sizes = ins[3] if len(ins) > 3 and ins[3] is not None and (not _is_const(ins[3]) or ins[3].size) else None
    mode = a.get("mode", "nearest")
    coord = a.get("coordinate_transformation_mode", "half_pixel" if len(ins) > 2 else "asymmetric")
    nearest_mode = a.get("nearest_mode", "round_prefer_floor" if len(ins) > 2 else "floor")
    if a.get("antialias", 0) or a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise UnsupportedError("TFLite route: Resize with antialias or keep_aspect_ratio_policy")
    if mode not in ("nearest", "linear"):
        raise UnsupportedError(f"TFLite route: Resize mode {mode}")
    axes = [int(v) % 4 for v in a["axes"]] if a.get("axes") is not None else [0, 1, 2, 3]
    if sorted(axes) not in ([2, 3], [0, 1, 2, 3]):
        raise UnsupportedError(f"TFLite route: Resize over axes {list(a['axes'])} (only H and W resize)")
    in_hw = [x.shape[2], x.shape[3]]
    static_in = all(isinstance(d, int) for d in in_hw)
    sc_hw: list[float] | None = None
    if sizes is not None:
        if _is_const(sizes):
            sz = dict(zip(axes, [int(v) for v in np.asarray(sizes).reshape(-1)], strict=True))
            if any(ax in sz and isinstance(x.shape[ax], int) and sz[ax] != x.shape[ax] for ax in (0, 1)):
                raise UnsupportedError("TFLite route: Resize of the N or C axis")
            hw: Any = [sz[2], sz[3]]
        else:
            if axes != [0, 1, 2, 3]:
                raise UnsupportedError("TFLite route: Resize with axes and sizes computed at run time")
            hw = tf.cast(sizes[2:], tf.int32)
    elif scales is not None:
        if not _is_const(scales):
            raise UnsupportedError("TFLite route: Resize with scales computed at run time")
        sc = dict(zip(axes, [float(v) for v in np.asarray(scales).reshape(-1)], strict=True))
        if sc.get(0, 1.0) != 1.0 or sc.get(1, 1.0) != 1.0:
            raise UnsupportedError("TFLite route: Resize of the N or C axis")
        sc_hw = [sc[2], sc[3]]
        if static_in:
            hw = [int(np.floor(d * v)) for d, v in zip(in_hw, sc_hw, strict=True)]
            ratio_ok = all(d * v == o for d, v, o in zip(in_hw, sc_hw, hw, strict=True))
        else:
            ratio_ok = all(v >= 1 and float(v).is_integer() for v in sc_hw)
            dims = [d if isinstance(d, int) else tf.shape(x)[i + 2] for i, d in enumerate(in_hw)]
            hw = tf.stack([tf.cast(tf.floor(tf.cast(d, tf.float32) * v), tf.int32) for d, v in zip(dims, sc_hw, strict=True)])
        if not ratio_ok and coord != "align_corners":
            raise UnsupportedError(f"TFLite route: Resize by scales {sc_hw} whose output size is not input × scale "
                                   "exactly (TFLite maps pixels by the size ratio); give sizes instead")
    else:
        raise UnsupportedError("TFLite route: Resize without scales or sizes")
    static_out = isinstance(hw, list) and all(isinstance(v, int) for v in hw)
    if static_out and min(hw) == 1 and coord in ("align_corners", "pytorch_half_pixel"):
        raise UnsupportedError(f"TFLite route: Resize to a size of 1 with {coord}")
    xh = _nhwc(tf, x)
    if mode == "nearest":
        if static_in and static_out:
            scale = sc_hw if sc_hw is not None else [o / i for o, i in zip(hw, in_hw, strict=True)]
            want = [_onnx_nearest_index(coord, nearest_mode, i, o, v) for i, o, v in zip(in_hw, hw, scale, strict=True)]
            flags = next(((al, hp) for al, hp in ((False, False), (False, True), (True, False))
                          if all(np.array_equal(w, _tflite_nearest_index(i, o, al, hp))
                                 for w, i, o in zip(want, in_hw, hw, strict=True))), None)
            if flags is None:
                raise UnsupportedError(f"TFLite route: nearest Resize with {coord}/{nearest_mode} from {in_hw} to {hw}: "
                                       "no TFLite resize picks the same pixels")
            align, half = flags
        else:
            int_up = sc_hw is not None and all(v >= 1 and float(v).is_integer() for v in sc_hw)
            if coord == "asymmetric" and nearest_mode == "floor":
                align, half = False, False
            elif coord in ("half_pixel", "pytorch_half_pixel") and (
                    nearest_mode == "round_prefer_ceil" or (nearest_mode == "round_prefer_floor" and int_up)):
                align, half = False, True
            else:
                raise UnsupportedError(f"TFLite route: nearest Resize with {coord}/{nearest_mode} at sizes known only at "
                                       "run time")
        y = tf.compat.v1.image.resize_nearest_neighbor(xh, hw, align_corners=align, half_pixel_centers=half)
    else:
        if coord not in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
            raise UnsupportedError(f"TFLite route: linear Resize with coordinate_transformation_mode {coord}")
        y = tf.compat.v1.image.resize_bilinear(xh, hw, align_corners=coord == "align_corners",
                                               half_pixel_centers=coord in ("half_pixel", "pytorch_half_pixel"))
    return _nchw(tf, tf.cast(y, x.dtype))


def _pad(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    """ONNX ``Pad`` (opset 2 attributes or opset 11+ inputs, opset-18 ``axes``): ``constant``
    → PAD/PADV2, ``reflect`` → MIRROR_PAD (REFLECT), ``edge`` → MIRROR_PAD (SYMMETRIC), which
    repeats the border exactly when no pad exceeds 1. Pads must be constant and >= 0."""
    x = ins[0]
    rank = len(x.shape)
    mode = a.get("mode", "constant")
    if "pads" in a:
        pads, value = list(a["pads"]), float(a.get("value", 0.0))
    else:
        if not _is_const(ins[1]):
            raise UnsupportedError("TFLite route: Pad with pads computed at run time")
        pads = [int(v) for v in np.asarray(ins[1]).reshape(-1)]
        cv = ins[2] if len(ins) > 2 and ins[2] is not None else None
        if cv is not None and not _is_const(cv):
            raise UnsupportedError("TFLite route: Pad with a constant_value computed at run time")
        value = np.asarray(cv).reshape(-1)[0] if cv is not None and np.asarray(cv).size else 0
    axes = list(range(rank))
    if len(ins) > 3 and ins[3] is not None:
        if not _is_const(ins[3]):
            raise UnsupportedError("TFLite route: Pad with axes computed at run time")
        axes = [int(v) % rank for v in np.asarray(ins[3]).reshape(-1)]
    n = len(axes)
    paddings = [[0, 0] for _ in range(rank)]
    for k, ax in enumerate(axes):
        paddings[ax] = [pads[k], pads[k + n]]
    if any(p < 0 for pr in paddings for p in pr):
        raise UnsupportedError("TFLite route: Pad with negative pads (cropping)")
    if mode == "constant":
        return tf.pad(_t(tf, x), paddings, constant_values=tf.constant(value, dtype=_t(tf, x).dtype))
    if mode == "reflect":
        return tf.pad(x, paddings, mode="REFLECT")
    if mode == "edge" and all(p <= 1 for pr in paddings for p in pr):
        return tf.pad(x, paddings, mode="SYMMETRIC")
    raise UnsupportedError(f"TFLite route: Pad mode {mode}" + (" wider than 1" if mode == "edge" else ""))


def _arg(kind: str) -> Callable[..., Any]:
    def f(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
        if a.get("select_last_index", 0):
            raise UnsupportedError(f"TFLite route: Arg{kind.capitalize()} with select_last_index")
        axis = a.get("axis", 0)
        fn = tf.math.argmax if kind == "max" else tf.math.argmin
        y = fn(ins[0], axis=axis, output_type=tf.int64)
        return tf.expand_dims(y, axis) if a.get("keepdims", 1) else y

    return f


def _depth_to_space(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    """ONNX ``DepthToSpace``: ``DCR`` is TFLite's DEPTH_TO_SPACE (NHWC); ``CRD`` (PixelShuffle's
    export) is the reshape/transpose of the operator spec (static C, H, W)."""
    b = int(a["blocksize"])
    x = ins[0]
    if a.get("mode", "DCR") == "DCR":
        return _nchw(tf, tf.nn.depth_to_space(_nhwc(tf, x), b))
    _, c, h, w = x.shape
    if not all(isinstance(d, int) for d in (c, h, w)):
        raise UnsupportedError("TFLite route: DepthToSpace CRD needs static C, H, W")
    n = tf.shape(x)[0]
    y = tf.reshape(x, tf.stack([n, c // (b * b), b, b, h, w]))
    y = tf.transpose(y, [0, 1, 4, 2, 5, 3])
    return tf.reshape(y, tf.stack([n, c // (b * b), h * b, w * b]))


def _space_to_depth(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    if a.get("mode", "DCR") != "DCR":  # TFLite's SPACE_TO_DEPTH orders channels as DCR only
        raise UnsupportedError(f"TFLite route: SpaceToDepth mode {a['mode']}")
    return _nchw(tf, tf.nn.space_to_depth(_nhwc(tf, ins[0]), int(a["blocksize"])))


def _dropout(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    """Inference Dropout: the input, and an all-true mask. ``training_mode`` true (or computed)
    would drop at random: refused, unless the ratio is a constant 0."""
    train = ins[2] if len(ins) > 2 else None
    ratio = ins[1] if len(ins) > 1 else None
    no_drop = ratio is not None and _is_const(ratio) and float(np.asarray(ratio).reshape(-1)[0]) == 0.0
    if train is not None and not no_drop and (not _is_const(train) or bool(np.asarray(train).reshape(-1)[0])):
        raise UnsupportedError("TFLite route: Dropout with training_mode (random masks)")
    return ins[0], tf.ones_like(ins[0], dtype=tf.bool)


def _instance_norm(tf: Any, ins: list[Any], a: dict[str, Any]) -> Any:
    x, scale, bias = ins[0], ins[1], ins[2]
    rank = len(x.shape)
    mean, var = tf.nn.moments(x, axes=list(range(2, rank)), keepdims=True)
    shape = [1, -1] + [1] * (rank - 2)
    y = (x - mean) * tf.math.rsqrt(var + a.get("epsilon", 1e-5))
    return y * tf.reshape(scale, shape) + tf.reshape(bias, shape)


def _softplus(tf: Any, x: Any) -> Any:
    return tf.nn.relu(x) + tf.math.log(1.0 + tf.exp(-tf.abs(x)))  # stable log(1 + e^x)


def _elu_like(tf: Any, x: Any, alpha: float) -> Any:
    return tf.where(x > 0, x, alpha * (tf.exp(x) - 1.0))


_TF_OPS: dict[str, Callable[[Any, list[Any], dict[str, Any]], Any]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda tf, i, a: tf.reduce_mean(i[0], axis=[2, 3], keepdims=True),
    "GlobalMaxPool": lambda tf, i, a: tf.reduce_max(i[0], axis=[2, 3], keepdims=True),
    "Gemm": _gemm,
    "MatMul": lambda tf, i, a: tf.matmul(i[0], i[1]),
    "Add": lambda tf, i, a: i[0] + i[1],
    "Sub": lambda tf, i, a: i[0] - i[1],
    "Mul": lambda tf, i, a: i[0] * i[1],
    "Div": _div,
    "Mod": _mod,
    "Relu": lambda tf, i, a: tf.nn.relu(i[0]),
    "LeakyRelu": lambda tf, i, a: tf.nn.leaky_relu(i[0], a.get("alpha", 0.01)),
    "Sigmoid": lambda tf, i, a: tf.sigmoid(i[0]),
    "Tanh": lambda tf, i, a: tf.tanh(i[0]),
    "Softmax": _softmax,
    "Clip": _clip,
    "Sqrt": lambda tf, i, a: tf.sqrt(i[0]),
    "Exp": lambda tf, i, a: tf.exp(i[0]),
    "Neg": lambda tf, i, a: -i[0],
    "Erf": lambda tf, i, a: _erf(tf, i[0]),
    "Gelu": lambda tf, i, a: tf.nn.gelu(i[0], approximate=a.get("approximate", "none") == "tanh"),
    "BatchNormalization": _batchnorm,
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum"),
    "ReduceMax": _reduce("max"),
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": lambda tf, i, a: tf.transpose(i[0], a.get("perm")),
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Resize": _resize,
    "Upsample": _resize,
    "Identity": lambda tf, i, a: i[0],
    "Dropout": _dropout,
    "Size": lambda tf, i, a: (np.asarray(np.asarray(i[0]).size, dtype=np.int64) if _is_const(i[0]) else
                              tf.cast(tf.size(i[0]), tf.int64)),
    "Shape": lambda tf, i, a: (np.asarray(i[0].shape, dtype=np.int64) if _is_const(i[0]) else
                               tf.cast(tf.shape(i[0]), tf.int64))[a.get("start", 0):a.get("end")],
    "Gather": _gather,
    "Cast": _cast,
    "Split": lambda tf, i, a: _split(tf, i, a, 2),  # dispatched with the real output count in _TFGraph
    "Slice": _slice,
    "Expand": _expand,
    "LayerNormalization": _layernorm,
    "Range": _range,
    "GatherElements": _gather_elements,
    "GatherND": lambda tf, i, a: tf.gather_nd(_t(tf, i[0]), _t(tf, i[1]), batch_dims=a.get("batch_dims", 0)),
    "Where": lambda tf, i, a: tf.where(_t(tf, i[0]), _t(tf, i[1]), _t(tf, i[2])),
    "Abs": lambda tf, i, a: tf.abs(i[0]),
    "Ceil": lambda tf, i, a: tf.math.ceil(i[0]),
    "Floor": lambda tf, i, a: tf.math.floor(i[0]),
    "Round": lambda tf, i, a: tf.math.round(i[0]),  # half to even, as ONNX
    "Log": lambda tf, i, a: tf.math.log(i[0]),
    "Sin": lambda tf, i, a: tf.math.sin(i[0]),
    "Cos": lambda tf, i, a: tf.math.cos(i[0]),
    "Sign": lambda tf, i, a: tf.math.sign(i[0]),
    "Reciprocal": lambda tf, i, a: 1.0 / i[0],
    "Softsign": lambda tf, i, a: i[0] / (1.0 + tf.abs(i[0])),
    "Softplus": lambda tf, i, a: _softplus(tf, i[0]),
    "Mish": lambda tf, i, a: i[0] * tf.tanh(_softplus(tf, i[0])),
    "Elu": lambda tf, i, a: _elu_like(tf, i[0], a.get("alpha", 1.0)),
    "Selu": lambda tf, i, a: a.get("gamma", 1.0507009873554805) * _elu_like(tf, i[0], a.get("alpha", 1.6732632423543772)),
    "Celu": lambda tf, i, a: tf.nn.relu(i[0]) + tf.minimum(0.0, a.get("alpha", 1.0) * (tf.exp(i[0] / a.get("alpha", 1.0)) - 1.0)),
    "ThresholdedRelu": lambda tf, i, a: tf.where(i[0] > a.get("alpha", 1.0), i[0], tf.zeros_like(i[0])),
    "HardSigmoid": lambda tf, i, a: tf.clip_by_value(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda tf, i, a: i[0] * tf.clip_by_value(i[0] / 6.0 + 0.5, 0.0, 1.0),
    "PRelu": lambda tf, i, a: tf.where(i[0] < 0, i[0] * _t(tf, i[1]), i[0]),
    "Pad": _pad,
    "Tile": lambda tf, i, a: tf.tile(i[0], [int(v) for v in np.asarray(i[1]).reshape(-1)] if _is_const(i[1])
                                     else tf.cast(i[1], tf.int32)),
    "ArgMax": _arg("max"),
    "ArgMin": _arg("min"),
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
    "InstanceNormalization": _instance_norm,
    "ReduceMin": _reduce("min"),
    "ReduceProd": _reduce("prod"),
    "Sum": _variadic("add"),
    "Mean": lambda tf, i, a: _variadic("add")(tf, i, a) / float(len(i)),
    "Xor": lambda tf, i, a: tf.math.logical_xor(_t(tf, i[0]), _t(tf, i[1])),
    "And": lambda tf, i, a: tf.logical_and(_t(tf, i[0]), _t(tf, i[1])),
    "Or": lambda tf, i, a: tf.logical_or(_t(tf, i[0]), _t(tf, i[1])),
    "Not": lambda tf, i, a: tf.logical_not(_t(tf, i[0])),
    "Equal": lambda tf, i, a: tf.equal(_t(tf, i[0]), _t(tf, i[1])),
    "Greater": lambda tf, i, a: tf.greater(_t(tf, i[0]), _t(tf, i[1])),
    "GreaterOrEqual": lambda tf, i, a: tf.greater_equal(_t(tf, i[0]), _t(tf, i[1])),
    "Less": lambda tf, i, a: tf.less(_t(tf, i[0]), _t(tf, i[1])),
    "LessOrEqual": lambda tf, i, a: tf.less_equal(_t(tf, i[0]), _t(tf, i[1])),
    "Max": _variadic("maximum"),
    "Min": _variadic("minimum"),
    "Pow": lambda tf, i, a: tf.pow(_t(tf, i[0]), tf.cast(_t(tf, i[1]), _t(tf, i[0]).dtype)),
    "ReduceL2": lambda tf, i, a: tf.sqrt(tf.reduce_sum(tf.square(i[0]), axis=_axes(i, a) or None,
                                                       keepdims=bool(a.get("keepdims", 1)))),
    "ConstantOfShape": lambda tf, i, a: (np.full([int(d) for d in i[0]], a["value"].reshape(-1)[0] if "value" in a else 0.0,
                                                 dtype=a["value"].dtype if "value" in a else np.float32) if _is_const(i[0])
                                         else tf.fill(tf.cast(i[0], tf.int32), tf.constant(
                                             a["value"].reshape(-1)[0] if "value" in a else 0.0))),
    "Constant": lambda tf, i, a: np.asarray(a.get("value", a.get("value_float", a.get("value_floats", a.get("value_ints"))))),
}


def _signature(tf: Any, handle: ModelHandle) -> list[Any]:
    specs = []
    for s in handle.inputs:
        shape = [d if isinstance(d, int) and d > 0 else None for d in s.shape]
        specs.append(tf.TensorSpec(shape, tf.as_dtype(s.np_dtype), name=_ident(s.name)))
    return specs


def onnx_to_tflite(src: ModelHandle, dst: Path, *, int8: bool = False, calibration: dict[str, np.ndarray] | None = None,
                   max_calibration: int = 200) -> Path:
    """Write ``dst`` (.tflite) from an ONNX handle; int8 needs ``calibration`` arrays keyed by input name."""
    if src.kind != "onnx":
        raise InputError("onnx_to_tflite needs an ONNX model handle")
    graph = _TFGraph(src.model)  # refuses unsupported ops before TensorFlow is even imported
    if int8 and not calibration:
        raise InputError("int8 TFLite conversion needs a representative dataset: pass --data (e.g. digits, or an .npz)")
    tf = import_tf()
    sig = _signature(tf, src)

    # autograph off: the graph is straight-line Python, and autograph would wrap a converter's
    # UnsupportedError in a multi-line "in user code: File ..." trace
    @tf.function(input_signature=sig, autograph=False)
    def serve(*args: Any) -> Any:
        return graph(tf, *args)

    cf = serve.get_concrete_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([cf], tf.Module())
    if int8:
        cal = calibration or {}
        names = src.input_names
        missing = [k for k in names if k not in cal]
        if missing:
            raise InputError(f"the representative data has no input {missing[0]!r}; it provides {sorted(cal)}")
        n = min(max_calibration, len(cal[names[0]]))

        def rep() -> Any:
            for i in range(n):
                yield [cal[k][i:i + 1].astype(np.float32) for k in names]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    from ..core.quiet import native_output_silenced

    try:
        with native_output_silenced():  # the converter prints its settings ("fully_quantize: 0, ...") natively
            flat = conv.convert()
    except Exception as exc:
        import re

        errors = re.findall(r"error: ([^\n]+)", str(exc))
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        why = errors[0] if errors else (lines[-1] if lines else "")
        raise UnsupportedError(f"TensorFlow's TFLite converter failed: {why[:300]}; the ONNX model still runs in "
                               "ONNX Runtime and converts to OpenVINO IR (.xml)") from None
    from ..core.fileio import write_bytes_atomic

    write_bytes_atomic(dst, flat)
    return dst


@register_route("onnx", "tflite", options=("int8",))
def _route(src: ModelHandle, dst: Path, opts: ConvertOptions) -> tuple[None, Any]:
    from ..backends.tflite_rt import make_runner

    int8 = bool(opts.extra.get("int8", False))
    calibration = None
    if opts.data is not None:
        from ..core.data import load_data

        calibration = load_data(opts.data, src).inputs
    onnx_to_tflite(src, dst, int8=int8, calibration=calibration)
    if not opts.verify:
        return None, None
    runner = make_runner(dst, threads=2)
    from .parity import judge_as_int8, parity_against

    if int8 and calibration is not None:  # quantized: measured on the real data, not random inputs
        from ..core.shapes import fixed_batch

        fixed = fixed_batch(src.inputs)  # a graph fixed at batch B is fed B samples at a time
        n = min(256, len(next(iter(calibration.values()))))
        step = fixed or n
        sets = [{k: v[i:i + step] for k, v in calibration.items()} for i in range(0, n - n % step, step)]
        report = parity_against(src, runner, inputs=sets, atol=opts.atol, rtol=opts.rtol)
    else:
        report = parity_against(src, runner, data=opts.data, atol=opts.atol, rtol=opts.rtol)
    if not int8 and not report.ok:  # name the first node that diverges
        try:
            from .parity import parity_inputs

            report.divergence = bisect_tflite(src, parity_inputs(src, opts.data)[0], atol=opts.atol, rtol=opts.rtol)
            if report.divergence is None:
                report.note = "the TensorFlow graph matches ONNX node for node: the difference comes from TFLite's converter"
        except Exception as exc:  # a diagnosis aid: never hide the parity result
            report.note = f"bisection could not run: {type(exc).__name__}: {str(exc)[:160]}"
    if int8:  # quantized: judged by agreement, not by max-abs
        report.note = ""  # the rule alone, as before
        judge_as_int8(report)
    return None, report
