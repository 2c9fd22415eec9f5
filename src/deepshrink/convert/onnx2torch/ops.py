"""The op table: one small converter per ONNX op type, registered with ``@converter``.

Each converter reads its inputs with ``b.value(name)`` (an fx node, or a tensor known at
import time) and emits torch calls with ``b.call`` (which folds them when every input is
known). Layers with weights become real torch modules where the weights are plain
initializers, so imported models prune, fine-tune and quantize like hand-written ones.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from . import runtime as rt
from .importer import (
    Builder,
    OnnxNode,
    ShapeVal,
    Value,
    converter,
    import_subgraph,
    inline_graph,
    outer_references,
    raw_value,
)


def _inputs(b: Builder, n: OnnxNode) -> list[Value]:
    return [b.value(i) for i in n.inputs]


def _opt(b: Builder, n: OnnxNode, i: int) -> Value:
    return b.value(n.inputs[i]) if len(n.inputs) > i and n.inputs[i] else None


def torch_dtype(onnx_type: int) -> torch.dtype:
    if onnx_type == onnx.TensorProto.BFLOAT16:
        return torch.bfloat16
    if onnx_type == onnx.TensorProto.STRING:
        raise NotImplementedError("string tensors")
    np_dt = onnx.helper.tensor_dtype_to_np_dtype(onnx_type)
    try:
        return torch.from_numpy(np.zeros(0, dtype=np_dt)).dtype
    except TypeError:
        raise NotImplementedError(f"element type {onnx.TensorProto.DataType.Name(onnx_type)}") from None


def _static_ints(b: Builder, n: OnnxNode, attr: str, idx: int) -> Any:
    """An int-list operand given as an attribute (old opsets) or as input ``idx`` (new ones)."""
    if attr in n.attrs:
        return list(n.attrs[attr])
    v = _opt(b, n, idx)
    if v is None:
        return None
    return rt.ints(v) if b.known(v) else v


# ------------------------------------------------------------------ element-wise
_UNARY = {
    "Abs": torch.abs, "Neg": torch.neg, "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
    "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan, "Asin": torch.asin,
    "Acos": torch.acos, "Atan": torch.atan, "Sinh": torch.sinh, "Cosh": torch.cosh, "Asinh": torch.asinh,
    "Acosh": torch.acosh, "Atanh": torch.atanh, "Erf": torch.erf, "Relu": torch.relu,
    "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Softplus": F.softplus, "Softsign": F.softsign,
    "Not": torch.logical_not, "IsNaN": torch.isnan, "HardSwish": F.hardswish, "Mish": rt.mish,
    "BitwiseNot": torch.bitwise_not,
}


@converter(*_UNARY)
def _unary(b: Builder, n: OnnxNode) -> Value:
    return b.call(_UNARY[n.op_type], b.value(n.inputs[0]))


@converter("Identity")
def _identity(b: Builder, n: OnnxNode) -> Value:
    return b.value(n.inputs[0])


_BINARY = {
    "Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": rt.div, "Pow": rt.pow_,
    "Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
    "BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or, "BitwiseXor": torch.bitwise_xor,
}


_SYM_ARITH = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": rt.idiv}


def _sym_equal(b: Builder, n: OnnxNode) -> Value:
    """Equal on shape arithmetic, decided at import where possible: a size is never negative, so
    comparing one with a negative constant (the -1 of torch's ``expand``/``view``) is False."""
    sa, sb = b.sym(n.inputs[0]), b.sym(n.inputs[1])
    if sa is None or sb is None:
        return None
    la, lb = len(sa.items), len(sb.items)
    if not (la == lb or 1 in (la, lb)):
        return None
    m = max(la, lb)
    out = []
    for p, q in zip(sa.items * m if la == 1 else sa.items, sb.items * m if lb == 1 else sb.items, strict=True):
        if isinstance(p, int) and isinstance(q, int):
            out.append(p == q)
        elif (isinstance(p, int) and p < 0) or (isinstance(q, int) and q < 0):
            out.append(False)
        else:
            return None
    t = torch.tensor(out, dtype=torch.bool)
    return t.reshape(()) if sa.scalar and sb.scalar else t


@converter(*_BINARY)
def _binary(b: Builder, n: OnnxNode) -> Value:
    if n.op_type == "Equal" and (n.inputs[0] in b.shapes or n.inputs[1] in b.shapes):
        decided = _sym_equal(b, n)
        if decided is not None:
            return decided
    if n.op_type in _SYM_ARITH and (n.inputs[0] in b.shapes or n.inputs[1] in b.shapes):
        sa, sb = b.sym(n.inputs[0]), b.sym(n.inputs[1])
        if sa is not None and sb is not None:
            la, lb = len(sa.items), len(sb.items)
            if la == lb or 1 in (la, lb):
                m = max(la, lb)
                ia = sa.items * m if la == 1 else sa.items
                ib = sb.items * m if lb == 1 else sb.items
                fn = _SYM_ARITH[n.op_type]
                return ShapeVal([b.call(fn, p, q) for p, q in zip(ia, ib, strict=True)], sa.scalar and sb.scalar)
    x, y = b.value(n.inputs[0]), b.value(n.inputs[1])
    return b.call(rt.widen(_BINARY[n.op_type]), x, y)


@converter("Mod")
def _mod(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.widen(rt.mod), b.value(n.inputs[0]), b.value(n.inputs[1]), n.attr("fmod", 0))


@converter("BitShift")
def _bitshift(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.bitshift, b.value(n.inputs[0]), b.value(n.inputs[1]), n.attr("direction"))


@converter("Sum", "Mean", "Max", "Min")
def _variadic(b: Builder, n: OnnxNode) -> Value:
    fn = {"Sum": rt.sum_of, "Mean": rt.mean_of, "Max": rt.max_of, "Min": rt.min_of}[n.op_type]
    return b.call(rt.widen(fn), *_inputs(b, n))


@converter("Where")
def _where(b: Builder, n: OnnxNode) -> Value:
    if n.inputs[1] in b.shapes or n.inputs[2] in b.shapes:
        c = b.value(n.inputs[0])
        sa, sb = b.sym(n.inputs[1]), b.sym(n.inputs[2])
        if b.known(c) and c.dim() <= 1 and sa is not None and sb is not None:
            cond = [bool(v) for v in c.reshape(-1).tolist()]
            m = max(len(cond), len(sa.items), len(sb.items))
            pick = [(cond * m)[i] if len(cond) == 1 else cond[i] for i in range(m)]
            ia = sa.items * m if len(sa.items) == 1 else sa.items
            ib = sb.items * m if len(sb.items) == 1 else sb.items
            return ShapeVal([ia[i] if pick[i] else ib[i] for i in range(m)])
    return b.call(rt.where, *_inputs(b, n))


@converter("IsInf")
def _isinf(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.is_inf, b.value(n.inputs[0]), n.attr("detect_negative", 1), n.attr("detect_positive", 1))


# ------------------------------------------------------------------ activations
@converter("LeakyRelu")
def _leaky(b: Builder, n: OnnxNode) -> Value:
    return b.call(F.leaky_relu, b.value(n.inputs[0]), n.attr("alpha", 0.01))


@converter("Elu")
def _elu(b: Builder, n: OnnxNode) -> Value:
    return b.call(F.elu, b.value(n.inputs[0]), n.attr("alpha", 1.0))


@converter("Celu")
def _celu(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.celu, b.value(n.inputs[0]), n.attr("alpha", 1.0))


@converter("Selu")
def _selu(b: Builder, n: OnnxNode) -> Value:
    x = b.value(n.inputs[0])
    alpha, gamma = n.attr("alpha", 1.67326319217681884765625), n.attr("gamma", 1.05070102214813232421875)
    e = b.call(F.elu, x, alpha)
    return b.call(operator.mul, e, gamma)


@converter("HardSigmoid")
def _hardsigmoid(b: Builder, n: OnnxNode) -> Value:
    x = b.value(n.inputs[0])
    y = b.call(operator.add, b.call(operator.mul, x, n.attr("alpha", 0.2)), n.attr("beta", 0.5))
    return b.call(torch.clamp, y, 0.0, 1.0)


@converter("ThresholdedRelu")
def _threlu(b: Builder, n: OnnxNode) -> Value:
    x = b.value(n.inputs[0])
    return b.call(F.threshold, x, n.attr("alpha", 1.0), 0.0)


@converter("Shrink")
def _shrink(b: Builder, n: OnnxNode) -> Value:
    x = b.value(n.inputs[0])
    lambd, bias = n.attr("lambd", 0.5), n.attr("bias", 0.0)
    return b.call(_shrink_fn, x, lambd, bias)


def _shrink_fn(x: torch.Tensor, lambd: float, bias: float) -> torch.Tensor:
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))


@converter("Gelu")
def _gelu(b: Builder, n: OnnxNode) -> Value:
    return b.call(F.gelu, b.value(n.inputs[0]), approximate=n.attr("approximate", "none"))


@converter("PRelu")
def _prelu(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.prelu, b.value(n.inputs[0]), b.value(n.inputs[1]))


@converter("Softmax", "LogSoftmax", "Hardmax")
def _softmax(b: Builder, n: OnnxNode) -> Value:
    x = b.value(n.inputs[0])
    kind = {"Softmax": "softmax", "LogSoftmax": "log", "Hardmax": "hardmax"}[n.op_type]
    if n.opset < 13:
        return b.call(rt.softmax_legacy, x, n.attr("axis", 1), kind)
    axis = n.attr("axis", -1)
    if kind == "softmax":
        return b.call(torch.softmax, x, axis)
    if kind == "log":
        return b.call(torch.log_softmax, x, axis)
    return b.call(rt.hardmax, x, axis)


@converter("Clip")
def _clip(b: Builder, n: OnnxNode) -> Value:
    x = b.value(n.inputs[0])
    if n.opset < 11:
        return b.call(rt.clip, x, n.attr("min", float("-inf")), n.attr("max", float("inf")))
    return b.call(rt.clip, x, _opt(b, n, 1), _opt(b, n, 2))


# ------------------------------------------------------------------ linear algebra
def _module_name(init_name: str) -> str:
    for suffix in (".weight", "_weight", ".W", "/weight"):
        if init_name.endswith(suffix):
            return init_name[: -len(suffix)]
    return init_name


def _own_initializer(b: Builder, name: str) -> bool:
    """True when ``name`` is a float initializer read by this node only (safe to move into a module)."""
    return (name in b.initializers and name not in b.env and b.uses.get(name, 0) == 1
            and b.tensor_of(name).dtype == torch.float32)


def _copyable_bias(b: Builder, name: str) -> bool:
    """True when ``name`` is a float32 1-D initializer: a module may take its own copy even when other nodes read it
    too (tf2onnx merges equal constants, so several convolutions can share one bias)."""
    return name in b.initializers and b.tensor_of(name).dtype == torch.float32 and b.tensor_of(name).dim() == 1


@converter("MatMul")
def _matmul(b: Builder, n: OnnxNode) -> Value:
    a_name, w_name = n.inputs[0], n.inputs[1]
    if _own_initializer(b, w_name) and b.tensor_of(w_name).dim() == 2 and not b.known(b.value(a_name)):
        w = b.tensor_of(w_name)
        lin = nn.Linear(w.shape[0], w.shape[1], bias=False)
        lin.weight = nn.Parameter(w.t().contiguous())
        target = b.add_module(_module_name(w_name), lin)
        return b.call_module(target, b.value(a_name))
    return b.call(rt.mat_mul, b.value(a_name), b.value(w_name))


@converter("Gemm")
def _gemm(b: Builder, n: OnnxNode) -> Value:
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)
    ta, tb = n.attr("transA", 0), n.attr("transB", 0)
    w_name = n.inputs[1]
    c_name = n.inputs[2] if len(n.inputs) > 2 else ""
    if (not ta and alpha == 1.0 and beta == 1.0 and _own_initializer(b, w_name) and b.tensor_of(w_name).dim() == 2
            and (not c_name or (_own_initializer(b, c_name) and b.tensor_of(c_name).numel() ==
                                b.tensor_of(w_name).shape[0 if tb else 1]))):
        w = b.tensor_of(w_name)
        w = w if tb else w.t().contiguous()
        lin = nn.Linear(w.shape[1], w.shape[0], bias=bool(c_name))
        lin.weight = nn.Parameter(w)
        if c_name:
            lin.bias = nn.Parameter(b.tensor_of(c_name).reshape(-1).clone())
        target = b.add_module(_module_name(w_name), lin)
        return b.call_module(target, b.value(n.inputs[0]))
    return b.call(rt.gemm, b.value(n.inputs[0]), b.value(w_name), _opt(b, n, 2), alpha, beta, ta, tb)


@converter("Einsum")
def _einsum(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.einsum, n.attr("equation").replace(" ", ""), *_inputs(b, n))


@converter("Conv")
def _conv(b: Builder, n: OnnxNode) -> Value:
    x = b.value(n.inputs[0])
    w_name = n.inputs[1]
    b_name = n.inputs[2] if len(n.inputs) > 2 else ""
    auto_pad = n.attr("auto_pad", "NOTSET")
    strides, dil, group = n.attr("strides"), n.attr("dilations"), n.attr("group", 1)
    pads = n.attr("pads")
    if (_own_initializer(b, w_name) and (not b_name or _copyable_bias(b, b_name)) and auto_pad in ("NOTSET", "VALID")):
        w = b.tensor_of(w_name)
        nsp = w.dim() - 2
        p = [0] * (2 * nsp) if auto_pad == "VALID" or not pads else list(pads)
        if 1 <= nsp <= 3:
            cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nsp]
            even = p[:nsp] == p[nsp:]
            conv = cls(w.shape[1] * group, w.shape[0], tuple(w.shape[2:]), stride=tuple(strides or [1] * nsp),
                       padding=tuple(p[:nsp]) if even else 0, dilation=tuple(dil or [1] * nsp), groups=group,
                       bias=bool(b_name))
            conv.weight = nn.Parameter(w)
            if b_name:
                conv.bias = nn.Parameter(b.tensor_of(b_name).clone())
            if not even:  # TensorFlow's SAME at stride 2 pads one more at the end: a zero-pad module first
                pad = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}[nsp](tuple(rt._torch_pad(p)), 0.0)
                x = b.call_module(b.add_module(_module_name(w_name) + "_pad", pad), x)
            target = b.add_module(_module_name(w_name), conv)
            return b.call_module(target, x)
    return b.call(rt.conv, x, b.value(w_name), _opt(b, n, 2), _list(strides), _list(pads), _list(dil), group, auto_pad)


@converter("ConvTranspose")
def _convt(b: Builder, n: OnnxNode) -> Value:
    x, w = b.value(n.inputs[0]), b.value(n.inputs[1])
    return b.call(rt.conv_transpose, x, w, _opt(b, n, 2), _list(n.attr("strides")), _list(n.attr("pads")),
                  _list(n.attr("dilations")), n.attr("group", 1), n.attr("auto_pad", "NOTSET"),
                  _list(n.attr("output_padding")), _list(n.attr("output_shape")))


def _list(v: Any) -> list[int] | None:
    return list(v) if v else None


# ------------------------------------------------------------------ normalization
class _AnyRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over (N, C, ...) of any rank: ONNX does not say which ``BatchNormNd`` it was."""

    def _check_input_dim(self, input: torch.Tensor) -> None:  # noqa: A002
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")


@converter("BatchNormalization")
def _batchnorm(b: Builder, n: OnnxNode) -> Value:
    if n.attr("training_mode", 0) or len([o for o in n.outputs if o]) > 1:
        raise NotImplementedError("BatchNormalization in training mode (export the model in eval mode)")
    x = b.value(n.inputs[0])
    names = n.inputs[1:5]
    eps, momentum = n.attr("epsilon", 1e-5), n.attr("momentum", 0.9)
    if all(nm in b.initializers and nm not in b.env and b.uses.get(nm, 0) == 1 for nm in names):
        scale, bias, mean, var = (b.tensor_of(nm) for nm in names)
        if scale.dtype == torch.float32 and scale.dim() == 1:
            bn = _AnyRankBatchNorm(scale.numel(), eps=eps, momentum=1.0 - momentum)
            bn.weight = nn.Parameter(scale)
            bn.bias = nn.Parameter(bias)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            target = b.add_module(_module_name(names[0]), bn)
            return b.call_module(target, x)
    s, bi, m, v = (b.value(nm) for nm in names)
    return b.call(rt.batch_norm, x, s, bi, m, v, eps)


@converter("InstanceNormalization")
def _instnorm(b: Builder, n: OnnxNode) -> Value:
    x, s, bi = _inputs(b, n)
    return b.call(rt.instance_norm, x, s, bi, n.attr("epsilon", 1e-5))


@converter("LayerNormalization")
def _layernorm(b: Builder, n: OnnxNode) -> Value:
    if len(n.outputs) > 1:
        out = b.call(rt.layer_norm_full, b.value(n.inputs[0]), _opt(b, n, 1), _opt(b, n, 2), n.attr("axis", -1),
                     n.attr("epsilon", 1e-5))
        return tuple(b.getitem(out, i) for i in range(len(n.outputs)))
    return b.call(rt.layer_norm, b.value(n.inputs[0]), _opt(b, n, 1), _opt(b, n, 2), n.attr("axis", -1),
                  n.attr("epsilon", 1e-5))


@converter("GroupNormalization")
def _groupnorm(b: Builder, n: OnnxNode) -> Value:
    x, s, bi = _inputs(b, n)
    return b.call(rt.group_norm, x, s, bi, n.attr("num_groups"), n.attr("epsilon", 1e-5))


@converter("LpNormalization")
def _lpnorm(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.lp_norm, b.value(n.inputs[0]), n.attr("axis", -1), n.attr("p", 2))


@converter("LRN")
def _lrn(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.lrn, b.value(n.inputs[0]), n.attr("size"), n.attr("alpha", 1e-4), n.attr("beta", 0.75),
                  n.attr("bias", 1.0))


@converter("Dropout")
def _dropout(b: Builder, n: OnnxNode) -> Value:
    x = b.value(n.inputs[0])
    mode = _opt(b, n, 2)
    if mode is not None and (not b.known(mode) or bool(mode.reshape(-1)[0])):
        raise NotImplementedError("Dropout with training_mode (random masks); export the model in eval mode")
    if len(n.outputs) > 1 and n.outputs[1]:
        return x, b.call(torch.ones_like, x, dtype=torch.bool)
    return x


# ------------------------------------------------------------------ pooling
@converter("MaxPool", "AveragePool")
def _pool(b: Builder, n: OnnxNode) -> Value:
    k = list(n.attr("kernel_shape"))
    if len(n.outputs) > 1 and n.outputs[1]:
        out = b.call(rt.max_pool_with_indices, b.value(n.inputs[0]), k, _list(n.attr("strides")),
                     _list(n.attr("pads")), _list(n.attr("dilations")), n.attr("auto_pad", "NOTSET"),
                     n.attr("ceil_mode", 0), n.attr("storage_order", 0))
        return b.getitem(out, 0), b.getitem(out, 1)
    kind = "max" if n.op_type == "MaxPool" else "avg"
    return b.call(rt.pool, b.value(n.inputs[0]), kind, k, list(n.attr("strides") or [1] * len(k)),
                  list(n.attr("pads") or []), list(n.attr("dilations") or [1] * len(k)), n.attr("auto_pad", "NOTSET"),
                  n.attr("ceil_mode", 0), n.attr("count_include_pad", 0))


@converter("GlobalAveragePool", "GlobalMaxPool")
def _gpool(b: Builder, n: OnnxNode) -> Value:
    x = b.value(n.inputs[0])
    return b.call(_global_pool, x, n.op_type == "GlobalMaxPool")


def _global_pool(x: torch.Tensor, is_max: bool) -> torch.Tensor:
    dims = tuple(range(2, x.dim()))
    return torch.amax(x, dim=dims, keepdim=True) if is_max else torch.mean(x, dim=dims, keepdim=True)


_global_pool.channel_rule = "passthrough"  # type: ignore[attr-defined]  # (runtime.CHANNEL_RULES)


# ------------------------------------------------------------------ reductions
_REDUCE = {
    "ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min", "ReduceProd": "prod",
    "ReduceL1": "l1", "ReduceL2": "l2", "ReduceSumSquare": "sumsquare", "ReduceLogSum": "logsum",
    "ReduceLogSumExp": "logsumexp",
}


@converter(*_REDUCE)
def _reduce(b: Builder, n: OnnxNode) -> Value:
    axes = _static_ints(b, n, "axes", 1)
    return b.call(rt.reduce, b.value(n.inputs[0]), _REDUCE[n.op_type], axes, n.attr("keepdims", 1),
                  n.attr("noop_with_empty_axes", 0))


@converter("ArgMax", "ArgMin")
def _argext(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.arg_extreme, b.value(n.inputs[0]), "max" if n.op_type == "ArgMax" else "min",
                  n.attr("axis", 0), n.attr("keepdims", 1), n.attr("select_last_index", 0))


@converter("TopK")
def _topk(b: Builder, n: OnnxNode) -> Value:
    k = [n.attr("k")] if "k" in n.attrs else b.value(n.inputs[1])
    out = b.call(rt.topk, b.value(n.inputs[0]), k, n.attr("axis", -1), n.attr("largest", 1), n.attr("sorted", 1))
    return b.getitem(out, 0), b.getitem(out, 1)


@converter("CumSum")
def _cumsum(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.cumsum, b.value(n.inputs[0]), b.value(n.inputs[1]), n.attr("exclusive", 0), n.attr("reverse", 0))


# ------------------------------------------------------------------ shapes and indexing
@converter("Shape")
def _shape(b: Builder, n: OnnxNode) -> Value:
    if n.inputs[0] in b.shapes:  # the shape of shape arithmetic: its length
        sv = b.shapes[n.inputs[0]]
        return ShapeVal(([] if sv.scalar else [len(sv.items)])[n.attr("start", 0):n.attr("end")])
    x = b.value(n.inputs[0])
    rank = b.ranks.get(n.inputs[0])
    if rank is None or b.known(x):
        return b.call(rt.shape, x, n.attr("start", 0), n.attr("end"))
    static = b.static_dims.get(n.inputs[0], [None] * rank)
    idx = list(range(rank))[slice(n.attr("start", 0), n.attr("end"))]
    # the batch axis always comes from the tensor: exports often declare it with the example's size
    return ShapeVal([static[i] if (i > 0 and static[i]) else b.call(rt.dim, x, i) for i in idx])


@converter("Size")
def _size(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.size, b.value(n.inputs[0]))


@converter("Reshape")
def _reshape(b: Builder, n: OnnxNode) -> Value:
    data_sv = b.shapes.get(n.inputs[0])
    target = b.sym(n.inputs[1]) if "shape" not in n.attrs else None
    if data_sv is not None and target is not None and all(isinstance(i, int) for i in target.items) \
            and len(target.items) <= 1:  # reshaping shape arithmetic to 1-D / scalar
        return ShapeVal(data_sv.items, len(target.items) == 0)
    sv = target
    if sv is not None:
        shape: Any = list(sv.items)
    else:
        shape = n.attr("shape") if "shape" in n.attrs else b.value(n.inputs[1])
        if b.known(shape):
            shape = rt.ints(shape)
    if (_own_initializer(b, n.inputs[0]) and isinstance(shape, list) and all(isinstance(d, int) for d in shape)):
        # a weight reshaped for broadcasting (Paddle adds each conv's bias as reshape(b, [1, C, 1, 1])): the
        # parameter is kept in its broadcast shape, so the graph reads it directly and structured pruning can
        # slice it with the channels it belongs to
        t = rt.reshape(b.tensor_of(n.inputs[0]), shape, n.attr("allowzero", 0))
        return b.get_attr(n.inputs[0], nn.Parameter(t), buffer=False)
    return b.call(rt.reshape, b.value(n.inputs[0]), shape, n.attr("allowzero", 0))


@converter("Flatten")
def _flatten(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.flatten, b.value(n.inputs[0]), n.attr("axis", 1))


@converter("Transpose")
def _transpose(b: Builder, n: OnnxNode) -> Value:
    x = b.value(n.inputs[0])
    perm = n.attr("perm")
    if perm is None:
        return b.call(_reverse_dims, x)
    return b.call(torch.permute, x, tuple(perm))


def _reverse_dims(x: torch.Tensor) -> torch.Tensor:
    return x.permute(*reversed(range(x.dim())))


@converter("Squeeze")
def _squeeze(b: Builder, n: OnnxNode) -> Value:
    sv = b.shapes.get(n.inputs[0])
    if sv is not None and len(sv.items) == 1 and not sv.scalar:
        return ShapeVal(sv.items, True)
    return b.call(rt.squeeze, b.value(n.inputs[0]), _static_ints(b, n, "axes", 1))


@converter("Unsqueeze")
def _unsqueeze(b: Builder, n: OnnxNode) -> Value:
    sv = b.shapes.get(n.inputs[0])
    if sv is not None and sv.scalar and _static_ints(b, n, "axes", 1) in ([0], [-1]):
        return ShapeVal(sv.items, False)
    return b.call(rt.unsqueeze, b.value(n.inputs[0]), _static_ints(b, n, "axes", 1))


@converter("Concat")
def _concat(b: Builder, n: OnnxNode) -> Value:
    if any(i in b.shapes for i in n.inputs) and n.attr("axis") in (0, -1):
        parts = [b.sym(i) for i in n.inputs if i]
        if all(p is not None and not p.scalar for p in parts):
            return ShapeVal([it for p in parts for it in p.items])  # type: ignore[union-attr]
    xs = [v for v in _inputs(b, n) if v is not None]
    return b.call(torch.cat, xs, n.attr("axis"))


@converter("Split")
def _split(b: Builder, n: OnnxNode) -> Value:
    sizes = _static_ints(b, n, "split", 1)
    num = n.attr("num_outputs", len(n.outputs))
    out = b.call(rt.split, b.value(n.inputs[0]), sizes, n.attr("axis", 0), num)
    return tuple(b.getitem(out, i) for i in range(len(n.outputs)))


@converter("Slice")
def _slice(b: Builder, n: OnnxNode) -> Value:
    sv = b.shapes.get(n.inputs[0])
    if sv is not None and n.opset >= 10:
        st, en, ax, sp = (b.sym(n.inputs[i]) if len(n.inputs) > i else None for i in range(1, 5))
        static = all(v is None or all(isinstance(i, int) for i in v.items) for v in (st, en, ax, sp))
        if static and st is not None and en is not None and (ax is None or ax.items in ([0], [-1])):
            step = sp.items[0] if sp is not None else 1
            n_items = len(sv.items)
            lo, hi = (max(-n_items - 1, min(n_items, v)) for v in (st.items[0], en.items[0]))
            return ShapeVal(sv.items[slice(lo, hi, step)])
    x = b.value(n.inputs[0])
    if n.opset < 10:
        return b.call(rt.slice_, x, list(n.attr("starts")), list(n.attr("ends")), n.attr("axes"), None)
    args: list[Any] = []
    for i in range(1, 5):
        sv = b.sym(n.inputs[i]) if len(n.inputs) > i else None
        a = list(sv.items) if sv is not None else _opt(b, n, i)
        args.append(rt.ints(a) if b.known(a) else a)
    return b.call(rt.slice_, x, *args)


@converter("Gather")
def _gather(b: Builder, n: OnnxNode) -> Value:
    sv, idx = b.sym(n.inputs[0]), b.sym(n.inputs[1])
    if sv is not None and idx is not None and not sv.scalar and n.attr("axis", 0) == 0 \
            and all(isinstance(i, int) for i in idx.items) and n.inputs[0] in b.shapes:
        return ShapeVal([sv.items[i] for i in idx.items], idx.scalar)
    return b.call(rt.gather, b.value(n.inputs[0]), b.value(n.inputs[1]), n.attr("axis", 0))


@converter("GatherElements")
def _gather_el(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.gather_elements, b.value(n.inputs[0]), b.value(n.inputs[1]), n.attr("axis", 0))


@converter("GatherND")
def _gather_nd(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.gather_nd, b.value(n.inputs[0]), b.value(n.inputs[1]), n.attr("batch_dims", 0))


@converter("ScatterElements", "Scatter")
def _scatter_el(b: Builder, n: OnnxNode) -> Value:
    x, i, u = _inputs(b, n)
    return b.call(rt.scatter_elements, x, i, u, n.attr("axis", 0), n.attr("reduction", "none"))


@converter("ScatterND")
def _scatter_nd(b: Builder, n: OnnxNode) -> Value:
    x, i, u = _inputs(b, n)
    return b.call(rt.scatter_nd, x, i, u, n.attr("reduction", "none"))


@converter("Expand")
def _expand(b: Builder, n: OnnxNode) -> Value:
    sv = b.sym(n.inputs[1])
    s = list(sv.items) if sv is not None else b.value(n.inputs[1])
    return b.call(rt.expand, b.value(n.inputs[0]), rt.ints(s) if b.known(s) else s)


@converter("Tile")
def _tile(b: Builder, n: OnnxNode) -> Value:
    sv = b.sym(n.inputs[1])
    s = list(sv.items) if sv is not None else b.value(n.inputs[1])
    return b.call(rt.tile, b.value(n.inputs[0]), rt.ints(s) if b.known(s) else s)


@converter("Cast")
def _cast(b: Builder, n: OnnxNode) -> Value:
    sv = b.shapes.get(n.inputs[0])
    if sv is not None and n.attr("to") in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
        return sv
    if sv is not None and sv.scalar and n.attr("to") in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        b.float_shapes[n.outputs[0]] = sv
    x = b.value(n.inputs[0])
    if b.known(x) and isinstance(x, torch.Tensor) and x.numel() <= 64:
        # a cast constant (Paddle2ONNX casts every fill_constant of a Reshape target) stays a known value,
        # so shape arithmetic reading it stays symbolic instead of a tensor torch.export must guard on
        return rt.cast(x, torch_dtype(n.attr("to")))
    return b.call(rt.cast, x, torch_dtype(n.attr("to")))


@converter("CastLike")
def _castlike(b: Builder, n: OnnxNode) -> Value:
    return b.call(_cast_like, b.value(n.inputs[0]), b.value(n.inputs[1]))


def _cast_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.to(like.dtype)


@converter("Constant")
def _constant(b: Builder, n: OnnxNode) -> Value:
    a = n.attrs
    if "value" in a:
        return a["value"]
    if "value_float" in a:
        return torch.tensor(a["value_float"], dtype=torch.float32)
    if "value_floats" in a:
        return torch.tensor(a["value_floats"], dtype=torch.float32)
    if "value_int" in a:
        return torch.tensor(a["value_int"], dtype=torch.int64)
    if "value_ints" in a:
        return torch.tensor(a["value_ints"], dtype=torch.int64)
    raise NotImplementedError(f"Constant with {list(a)}")


@converter("ConstantOfShape")
def _const_of_shape(b: Builder, n: OnnxNode) -> Value:
    sv = b.sym(n.inputs[0])
    s = list(sv.items) if sv is not None else b.value(n.inputs[0])
    return b.call(rt.constant_of_shape, rt.ints(s) if b.known(s) else s, n.attr("value"))


@converter("Range")
def _range(b: Builder, n: OnnxNode) -> Value:
    syms = [b.sym(i) for i in n.inputs]
    if any(i in b.shapes for i in n.inputs) and all(v is not None and v.scalar for v in syms):
        dt = b.initializers[n.inputs[0]].data_type if n.inputs[0] in b.initializers else None
        return b.call(rt.arange, *[v.items[0] for v in syms if v is not None],  # type: ignore[union-attr]
                      torch_dtype(dt) if dt else torch.int64)
    if any(i in b.float_shapes for i in n.inputs):  # float bounds from sizes: arange over a symbolic size
        vals: list[Any] = []
        for i in n.inputs:
            c = b.value(i) if i not in b.float_shapes else None
            if i in b.float_shapes:
                vals.append(b.float_shapes[i].items[0])
            elif b.known(c) and isinstance(c, torch.Tensor) and c.numel() == 1:
                vals.append(float(c.reshape(-1)[0]))
            else:
                vals = []
                break
        if vals:
            dt = b.initializers[n.inputs[0]].data_type if n.inputs[0] in b.initializers else onnx.TensorProto.FLOAT
            return b.call(rt.arange, *vals, torch_dtype(dt))
    return b.call(rt.arange, *_inputs(b, n))


@converter("Pad")
def _pad(b: Builder, n: OnnxNode) -> Value:
    x = b.value(n.inputs[0])
    mode = n.attr("mode", "constant")
    if n.opset < 11:
        pads, value, axes = list(n.attr("pads")), n.attr("value", 0.0), None
    else:
        pads = b.value(n.inputs[1])
        fill = n.inputs[2] if len(n.inputs) > 2 else ""  # read an initializer as it is (a float [1] one
        value = b.tensor_of(fill) if fill in b.initializers else _opt(b, n, 2)  # would become a parameter)
        axes = _opt(b, n, 3)
    if isinstance(value, torch.Tensor) and b.known(value):  # a constant fill: a Python number in the graph,
        value = value.reshape(-1)[0].item() if value.numel() else 0.0  # not a tensor read at run time
    if b.known(pads):
        pads = rt.ints(pads)
    if axes is not None and b.known(axes):
        axes = rt.ints(axes)
    return b.call(_pad_fn, x, pads, value, mode, axes)


def _pad_fn(x: torch.Tensor, pads: Any, value: Any, mode: str, axes: Any) -> torch.Tensor:
    p = rt.ints(pads)
    r = x.dim()
    if axes is not None and len(rt.ints(axes)):
        ax = [a % r for a in rt.ints(axes)]
        full = [0] * (2 * r)
        for i, a in enumerate(ax):
            full[a], full[a + r] = p[i], p[i + len(ax)]
        p = full
    tp = rt._torch_pad(p)
    # drop leading dims with no padding (F.pad's non-constant modes pad at most 3 trailing dims)
    while len(tp) > 2 and tp[-1] == 0 and tp[-2] == 0:
        tp = tp[:-2]
    if mode == "constant":
        v = value.item() if isinstance(value, torch.Tensor) and value.numel() else (value or 0.0)
        return F.pad(x, tp, value=v)
    tmode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    k = len(tp) // 2
    lead = x.shape[: r - k]
    y = x.reshape(1, -1, *x.shape[r - k:]) if k < r - 1 or r - k != 2 else x
    if k > 3:
        raise NotImplementedError(f"Pad mode {mode} over {k} dims")
    y = F.pad(y if y.dtype.is_floating_point else y.double(), tp, mode=tmode).to(x.dtype)
    return y.reshape(*lead, *y.shape[-k:])


_pad_fn.channel_rule = "passthrough"  # type: ignore[attr-defined]  # spatial padding (runtime.CHANNEL_RULES)


@converter("Trilu")
def _trilu(b: Builder, n: OnnxNode) -> Value:
    k = _opt(b, n, 1)
    return b.call(rt.trilu, b.value(n.inputs[0]), rt.ints(k) if b.known(k) else k, n.attr("upper", 1))


@converter("OneHot")
def _onehot(b: Builder, n: OnnxNode) -> Value:
    i, d, v = _inputs(b, n)
    return b.call(rt.one_hot, i, d, v, n.attr("axis", -1))


@converter("EyeLike")
def _eyelike(b: Builder, n: OnnxNode) -> Value:
    dt = torch_dtype(n.attr("dtype")) if "dtype" in n.attrs else None
    return b.call(rt.eye_like, b.value(n.inputs[0]), n.attr("k", 0), dt)


@converter("NonZero")
def _nonzero(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.nonzero, b.value(n.inputs[0]))


@converter("DepthToSpace")
def _d2s(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.depth_to_space, b.value(n.inputs[0]), n.attr("blocksize"), n.attr("mode", "DCR"))


@converter("SpaceToDepth")
def _s2d(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.space_to_depth, b.value(n.inputs[0]), n.attr("blocksize"), n.attr("mode", "DCR"))


@converter("Resize")
def _resize(b: Builder, n: OnnxNode) -> Value:
    roi = None
    if n.opset < 11:
        scales, sizes = b.value(n.inputs[1]), None
    else:
        roi, scales, sizes = _opt(b, n, 1), _opt(b, n, 2), _opt(b, n, 3)
    if n.attr("antialias", 0):
        raise NotImplementedError("Resize with antialias")
    scale_name = n.inputs[1] if n.opset < 11 else (n.inputs[2] if len(n.inputs) > 2 else "")
    if scale_name in b.initializers:  # read as it is, not as a buffer torch.export would read at run time
        scales = b.tensor_of(scale_name)
    if scales is not None and b.known(scales):  # constant scales: Python floats in the graph, no tensor read
        scales = [float(v) for v in scales.reshape(-1).tolist()] or None
    sv = b.sym(n.inputs[3]) if n.opset >= 11 and len(n.inputs) > 3 else None
    if sv is not None:  # sizes from shape arithmetic (Shape → Slice → Mul → Concat): symbolic sizes
        sizes = list(sv.items) or None
    elif sizes is not None and b.known(sizes):
        sizes = rt.ints(sizes)
    coord = n.attr("coordinate_transformation_mode", "half_pixel" if n.opset >= 11 else "asymmetric")
    axes = n.attr("axes")
    return b.call(rt.resize, b.value(n.inputs[0]), scales, sizes, n.attr("mode", "nearest"), coord,
                  n.attr("nearest_mode", "round_prefer_floor" if n.opset >= 11 else "floor"),
                  n.attr("cubic_coeff_a", -0.75), n.attr("exclude_outside", 0), roi,
                  list(axes) if axes else None, n.attr("keep_aspect_ratio_policy", "stretch"),
                  n.attr("extrapolation_value", 0.0))


@converter("Compress")
def _compress(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.compress, b.value(n.inputs[0]), b.value(n.inputs[1]), n.attr("axis"))


@converter("ReverseSequence")
def _revseq(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.reverse_sequence, b.value(n.inputs[0]), b.value(n.inputs[1]), n.attr("batch_axis", 1),
                  n.attr("time_axis", 0))



@converter("RMSNormalization")
def _rmsnorm(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.rms_norm, b.value(n.inputs[0]), b.value(n.inputs[1]), n.attr("axis", -1),
                  n.attr("epsilon", 1e-5), n.attr("stash_type", 1))


@converter("DequantizeLinear")
def _dq(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.dequantize_linear, b.value(n.inputs[0]), b.value(n.inputs[1]), _opt(b, n, 2),
                  n.attr("axis", 1), n.attr("block_size", 0))


@converter("QuantizeLinear")
def _q(b: Builder, n: OnnxNode) -> Value:
    dt = torch_dtype(n.attr("output_dtype")) if n.attr("output_dtype") else None
    return b.call(rt.quantize_linear, b.value(n.inputs[0]), b.value(n.inputs[1]), _opt(b, n, 2),
                  n.attr("axis", 1), n.attr("block_size", 0), n.attr("saturate", 1), dt)


@converter("Swish")
def _swish(b: Builder, n: OnnxNode) -> Value:
    x = b.value(n.inputs[0])
    return b.call(operator.mul, x, b.call(torch.sigmoid, b.call(operator.mul, x, n.attr("alpha", 1.0))))


@converter("CumProd")
def _cumprod(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.cumprod, b.value(n.inputs[0]), b.value(n.inputs[1]), n.attr("exclusive", 0), n.attr("reverse", 0))


@converter("MeanVarianceNormalization")
def _mvn(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.mvn, b.value(n.inputs[0]), list(n.attr("axes", [0, 2, 3])))


@converter("Det")
def _det(b: Builder, n: OnnxNode) -> Value:
    return b.call(torch.linalg.det, b.value(n.inputs[0]))


@converter("LpPool")
def _lppool(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.lp_pool, b.value(n.inputs[0]), list(n.attr("kernel_shape")), _list(n.attr("strides")),
                  _list(n.attr("pads")), _list(n.attr("dilations")), n.attr("auto_pad", "NOTSET"),
                  n.attr("ceil_mode", 0), n.attr("p", 2))


@converter("Upsample")
def _upsample(b: Builder, n: OnnxNode) -> Value:
    scales = n.attr("scales")
    sc = torch.tensor(scales, dtype=torch.float32) if scales is not None else b.value(n.inputs[1])
    mode = n.attr("mode", "nearest")
    return b.call(rt.resize, b.value(n.inputs[0]), sc, None, mode, "asymmetric", "floor", -0.75, 0)


@converter("Attention")
def _attention(b: Builder, n: OnnxNode) -> Value:
    ins = [_opt(b, n, i) for i in range(7)]
    out = b.call(rt.attention, *ins, n.attr("scale"), n.attr("is_causal", 0), n.attr("q_num_heads"),
                 n.attr("kv_num_heads"), n.attr("softcap", 0.0), n.attr("qk_matmul_output_mode", 0),
                 (n.attr("left_window_size", -1), n.attr("right_window_size", -1)))
    if n.attr("softmax_precision") not in (None, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
        raise NotImplementedError("Attention softmax_precision other than float/half/double")
    return tuple(b.getitem(out, i) for i in range(len(n.outputs)))


@converter("NegativeLogLikelihoodLoss")
def _nll(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.nll_loss, b.value(n.inputs[0]), b.value(n.inputs[1]), _opt(b, n, 2),
                  n.attr("reduction", "mean"), n.attr("ignore_index"))


@converter("SoftmaxCrossEntropyLoss")
def _sce(b: Builder, n: OnnxNode) -> Value:
    out = b.call(rt.softmax_cross_entropy, b.value(n.inputs[0]), b.value(n.inputs[1]), _opt(b, n, 2),
                 n.attr("reduction", "mean"), n.attr("ignore_index"))
    return tuple(b.getitem(out, i) for i in range(len(n.outputs)))


@converter("RNN", "GRU", "LSTM")
def _recurrent(b: Builder, n: OnnxNode) -> Value:
    ins = [_opt(b, n, i) for i in range(8)]
    x, w, r, bias, lens, h0 = ins[:6]
    c0 = ins[6] if n.op_type == "LSTM" else None
    p = ins[7] if n.op_type == "LSTM" else None
    out = b.call(rt.recurrent, n.op_type, x, w, r, bias, lens, h0, c0, p, n.attr("hidden_size"),
                 n.attr("direction", "forward"), n.attr("activations"), n.attr("activation_alpha"),
                 n.attr("activation_beta"), n.attr("clip"), n.attr("layout", 0), n.attr("linear_before_reset", 0),
                 n.attr("input_forget", 0))
    return tuple(b.getitem(out, i) for i in range(len(n.outputs)))


# ------------------------------------------------------------------ sequences and optionals
@converter("SequenceConstruct")
def _seq_construct(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.make_list, *_inputs(b, n))


@converter("SequenceEmpty")
def _seq_empty(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.make_list)


@converter("SequenceAt")
def _seq_at(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.seq_at, b.value(n.inputs[0]), b.value(n.inputs[1]))


@converter("SequenceInsert")
def _seq_insert(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.seq_insert, b.value(n.inputs[0]), b.value(n.inputs[1]), _opt(b, n, 2))


@converter("SequenceErase")
def _seq_erase(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.seq_erase, b.value(n.inputs[0]), _opt(b, n, 1))


@converter("SequenceLength")
def _seq_len(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.seq_length, b.value(n.inputs[0]))


@converter("ConcatFromSequence")
def _concat_seq(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.concat_from_seq, b.value(n.inputs[0]), n.attr("axis"), n.attr("new_axis", 0))


@converter("SplitToSequence")
def _split_seq(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.split_to_seq, b.value(n.inputs[0]), _opt(b, n, 1), n.attr("axis", 0), n.attr("keepdims", 1))


@converter("Optional")
def _optional(b: Builder, n: OnnxNode) -> Value:
    return _opt(b, n, 0)


@converter("OptionalHasElement")
def _opt_has(b: Builder, n: OnnxNode) -> Value:
    v = _opt(b, n, 0)
    return torch.tensor(False) if v is None else b.call(rt.optional_has, v)


@converter("OptionalGetElement")
def _opt_get(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.optional_get, b.value(n.inputs[0]))


# ------------------------------------------------------------------ sampling, windows, misc
@converter("GridSample")
def _grid_sample(b: Builder, n: OnnxNode) -> Value:
    mode = n.attr("mode", "linear" if n.opset >= 20 else "bilinear")
    return b.call(rt.grid_sample, b.value(n.inputs[0]), b.value(n.inputs[1]), mode, n.attr("padding_mode", "zeros"),
                  n.attr("align_corners", 0))


@converter("AffineGrid")
def _affine_grid(b: Builder, n: OnnxNode) -> Value:
    sv = b.sym(n.inputs[1])
    size = list(sv.items) if sv is not None else b.value(n.inputs[1])
    return b.call(rt.affine_grid, b.value(n.inputs[0]), size, n.attr("align_corners", 0))


@converter("HannWindow", "HammingWindow", "BlackmanWindow")
def _window(b: Builder, n: OnnxNode) -> Value:
    kind = n.op_type.replace("Window", "").lower()
    dt = torch_dtype(n.attr("output_datatype", onnx.TensorProto.FLOAT))
    return b.call(rt.window, kind, b.value(n.inputs[0]), n.attr("periodic", 1), dt)


@converter("CenterCropPad")
def _center_crop_pad(b: Builder, n: OnnxNode) -> Value:
    sv = b.sym(n.inputs[1])
    shape = list(sv.items) if sv is not None else b.value(n.inputs[1])
    axes = n.attr("axes")
    return b.call(rt.center_crop_pad, b.value(n.inputs[0]), shape, list(axes) if axes else None)


@converter("Col2Im")
def _col2im(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.col2im, b.value(n.inputs[0]), b.value(n.inputs[1]), b.value(n.inputs[2]),
                  _list(n.attr("dilations")), _list(n.attr("pads")), _list(n.attr("strides")))


@converter("BitCast")
def _bitcast(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.bitcast, b.value(n.inputs[0]), torch_dtype(n.attr("to")))


# ------------------------------------------------------------------ control flow
def _graph_attr(n: OnnxNode, key: str) -> onnx.GraphProto:
    return n.attrs[key].g


@converter("If")
def _if(b: Builder, n: OnnxNode) -> Value:
    """A condition known at import time picks its branch there (inlined); a data-dependent one
    becomes ``torch.cond`` under ``torch.export`` (``rt.IfModule``), a Python ``if`` when run eagerly."""
    cond = b.value(n.inputs[0])
    where = n.name or n.outputs[0]
    if b.known(cond):
        pick = bool(cond.reshape(-1)[0])
        branch = _graph_attr(n, "then_branch" if pick else "else_branch")
        return tuple(inline_graph(b, branch, f"{where}/{'then' if pick else 'else'}/", []))
    then_gm, then_outer = import_subgraph(b, _graph_attr(n, "then_branch"))
    else_gm, else_outer = import_subgraph(b, _graph_attr(n, "else_branch"))
    target = b.add_module(f"if_{where}", rt.IfModule(then_gm, else_gm, len(then_outer)))
    args = [cond] + [b.value(o) for o in then_outer + else_outer]
    out = b.call_module(target, *args)
    return tuple(b.getitem(out, i) for i in range(len(n.outputs)))


# An unrolled Loop repeats its body this many nodes at most; longer loops stay a LoopModule.
UNROLL_MAX_NODES = 4096


def _known_int(b: Builder, name: str) -> int | None:
    if not name:
        return None
    sv = b.sym(name)
    if sv is not None and len(sv.items) == 1 and isinstance(sv.items[0], int):
        return sv.items[0]
    return None


def _loop_cond_is_static(body: onnx.GraphProto) -> bool:
    """True when the body's condition output is its condition input passed through (``Identity``),
    or a constant: then whether the next iteration runs is known at import time."""
    producer = {o: nd for nd in body.node for o in nd.output}
    name = body.output[0].name
    for _ in range(len(body.node) + 1):
        if name == body.input[1].name or name in {i.name for i in body.initializer}:
            return True
        nd = producer.get(name)
        if nd is None:
            return False
        if nd.op_type == "Constant":
            return True
        if nd.op_type != "Identity":
            return False
        name = nd.input[0]
    return False


@converter("Loop")
def _loop(b: Builder, n: OnnxNode) -> Value:
    """A Loop with a trip count and condition known at import time, whose body passes the condition
    through, is unrolled: the body is inlined once per iteration (its weights shared), so the graph
    has no control flow left and ``torch.export`` captures it. Any other Loop runs eagerly in
    ``rt.LoopModule`` (which ``torch.export`` cannot capture: reported with the node's name)."""
    body = _graph_attr(n, "body")
    trips = _known_int(b, n.inputs[0])
    cond = _opt(b, n, 1)
    cond_known = cond is None or b.known(cond)
    static_cond = _loop_cond_is_static(body)
    if trips is not None and cond_known and static_cond and trips * max(1, len(body.node)) <= UNROLL_MAX_NODES:
        return _unroll_loop(b, n, body, trips, True if cond is None else bool(cond.reshape(-1)[0]))
    if trips is None:
        why = "it has no trip count" if not n.inputs[0] else "its trip count is only known at run time"
    elif not cond_known:
        why = "its start condition is only known at run time"
    elif not static_cond:
        why = "its body computes its own stop condition (a data-dependent early exit)"
    else:
        why = f"{trips} iterations × {len(body.node)} body nodes are over the unrolling limit of {UNROLL_MAX_NODES} nodes"
    body_gm, outer = import_subgraph(b, body)
    carried = [b.value(i) for i in n.inputs[2:]]
    target = b.add_module(f"loop_{n.name or n.outputs[0]}", rt.LoopModule(body_gm, len(carried), why))
    out = b.call_module(target, _opt(b, n, 0), cond, *carried, *[b.value(o) for o in outer])
    return tuple(b.getitem(out, i) for i in range(len(n.outputs)))


def _unroll_loop(b: Builder, n: OnnxNode, body: onnx.GraphProto, trips: int, keep: bool) -> Value:
    where = n.name or n.outputs[0]
    carried = [raw_value(b, i) for i in n.inputs[2:]]
    n_scan = len(body.output) - 1 - len(carried)
    scans: list[list[Value]] = [[] for _ in range(n_scan)]
    for name in outer_references(body):  # read once per iteration: one shared parameter, not a module each
        b.uses[name] = b.uses.get(name, 0) + trips
    i = 0
    while keep and i < trips:
        outs = inline_graph(b, body, f"{where}/iter{i}/", [torch.tensor(i, dtype=torch.int64), torch.tensor(True),
                                                             *carried], init_scope=f"{where}/")
        c = outs[0]
        if not b.known(c) or isinstance(c, ShapeVal):
            raise NotImplementedError(f"Loop '{where}' whose condition becomes data-dependent")
        keep = bool(c.reshape(-1)[0])
        carried = list(outs[1:1 + len(carried)])
        for k, v in enumerate(outs[1 + len(carried):]):
            scans[k].append(_tensor_of(b, v))
        i += 1
    if n_scan and i == 0:
        raise NotImplementedError(f"Loop '{where}' that runs zero times and has scan outputs")
    stacked = [b.call(torch.stack, s) for s in scans]
    return tuple([*carried, *stacked][:len(n.outputs)])


def _tensor_of(b: Builder, v: Value) -> Value:
    """A converter result as a tensor value (shape arithmetic materialized)."""
    if isinstance(v, ShapeVal):
        return b.call(rt.int_tensor, list(v.items), v.scalar)
    return v


@converter("Scan")
def _scan(b: Builder, n: OnnxNode) -> Value:
    if n.opset < 9:
        raise NotImplementedError("Scan-8 (with sequence_lens)")
    body, outer = import_subgraph(b, _graph_attr(n, "body"))
    n_in = n.attr("num_scan_inputs")
    n_state = len(n.inputs) - n_in
    mod = rt.ScanModule(body, n_state, n_in, list(n.attr("scan_input_axes") or []),
                        list(n.attr("scan_input_directions") or []), list(n.attr("scan_output_axes") or []),
                        list(n.attr("scan_output_directions") or []))
    target = b.add_module(f"scan_{n.name or n.outputs[0]}", mod)
    out = b.call_module(target, *[b.value(i) for i in n.inputs], *[b.value(o) for o in outer])
    return tuple(b.getitem(out, i) for i in range(len(n.outputs)))


# ------------------------------------------------------------------ integer / QLinear ops
@converter("MatMulInteger")
def _matmul_int(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.matmul_integer, b.value(n.inputs[0]), b.value(n.inputs[1]), _opt(b, n, 2), _opt(b, n, 3))


@converter("QLinearMatMul")
def _qlinear_matmul(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.qlinear_matmul, *_inputs(b, n))


@converter("ConvInteger")
def _conv_int(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.conv_integer, b.value(n.inputs[0]), b.value(n.inputs[1]), _opt(b, n, 2), _opt(b, n, 3),
                  _list(n.attr("strides")), _list(n.attr("pads")), _list(n.attr("dilations")), n.attr("group", 1),
                  n.attr("auto_pad", "NOTSET"))


@converter("QLinearConv")
def _qlinear_conv(b: Builder, n: OnnxNode) -> Value:
    ins = [_opt(b, n, i) for i in range(9)]
    return b.call(rt.qlinear_conv, *ins, _list(n.attr("strides")), _list(n.attr("pads")), _list(n.attr("dilations")),
                  n.attr("group", 1), n.attr("auto_pad", "NOTSET"))


@converter("DynamicQuantizeLinear")
def _dyn_q(b: Builder, n: OnnxNode) -> Value:
    out = b.call(rt.dynamic_quantize_linear, b.value(n.inputs[0]))
    return tuple(b.getitem(out, i) for i in range(3))


@converter("RotaryEmbedding")
def _rotary(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.rotary_embedding, b.value(n.inputs[0]), b.value(n.inputs[1]), b.value(n.inputs[2]),
                  _opt(b, n, 3), n.attr("interleaved", 0), n.attr("rotary_embedding_dim", 0), n.attr("num_heads", 0))


@converter("Unique")
def _unique(b: Builder, n: OnnxNode) -> Value:
    out = b.call(rt.unique, b.value(n.inputs[0]), n.attr("axis"), n.attr("sorted", 1))
    return tuple(b.getitem(out, i) for i in range(len(n.outputs)))


@converter("DFT")
def _dft(b: Builder, n: OnnxNode) -> Value:
    axis: Any
    if n.opset >= 20:
        ax = _opt(b, n, 2)
        axis = -2 if ax is None else (int(ax.reshape(-1)[0]) if b.known(ax) else ax)
    else:
        axis = n.attr("axis", 1)
    return b.call(rt.dft, b.value(n.inputs[0]), _opt(b, n, 1), axis, n.attr("inverse", 0), n.attr("onesided", 0))


@converter("NonMaxSuppression")
def _nms(b: Builder, n: OnnxNode) -> Value:
    return b.call(rt.non_max_suppression, b.value(n.inputs[0]), b.value(n.inputs[1]), _opt(b, n, 2), _opt(b, n, 3),
                  _opt(b, n, 4), n.attr("center_point_box", 0))
