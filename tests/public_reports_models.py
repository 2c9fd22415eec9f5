"""Small inputs rebuilt from situations users reported publicly against other compression and
conversion tools (ONNX Runtime's quantizer, Torch-Pruning, NNI, onnx2torch-style importers,
torch.onnx); used by ``tests/test_public_reports.py``. Every graph and module here is written
from scratch for this project: the reports only describe the situation (an op, an attribute, a
graph shape), never the code.

PyTorch factories are ``package.module:factory`` sources (``public_reports_models:<name>``);
``onnx_*`` functions return an ``onnx.ModelProto`` built with ``onnx.helper`` under a fixed seed.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

OPSET = 17


def _seeded(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def _model(nodes, inputs, outputs, inits, opset: int = OPSET, value_info=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits, value_info=list(value_info))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="public-reports")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _f32(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


# ---------------------------------------------------------------- quantization (ONNX graphs)

def onnx_conv_transpose() -> onnx.ModelProto:
    """x[N,3,8,8] → ConvTranspose(W[3,8,3,3], stride 2) → Relu → Conv(8→4, 1x1): a decoder head.

    ConvTranspose weights are laid out [C_in, C_out/group, kH, kW], so the output channel is
    axis 1, not axis 0 as for Conv.
    """
    r = _seeded(1)
    inits = [_init("Wt", (r.standard_normal((3, 8, 3, 3)) * 0.3).astype(np.float32)),
             _init("Bt", (r.standard_normal(8) * 0.1).astype(np.float32)),
             _init("W2", (r.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32)),
             _init("B2", (r.standard_normal(4) * 0.1).astype(np.float32))]
    nodes = [helper.make_node("ConvTranspose", ["x", "Wt", "Bt"], ["up"], name="up", strides=[2, 2], pads=[1, 1, 1, 1],
                              output_padding=[1, 1]),
             helper.make_node("Relu", ["up"], ["a"], name="act"),
             helper.make_node("Conv", ["a", "W2", "B2"], ["y"], name="head")]
    return _model(nodes, [_f32("x", ["N", 3, 8, 8])], [_f32("y", ["N", 4, 16, 16])], inits)


def onnx_shared_bias(collide: bool = False) -> onnx.ModelProto:
    """Two Convs 8→8 that read the same bias initializer ``b``.

    With ``collide`` the activation between them is named ``b0``, the name a quantizer that copies
    a shared initializer under ``<name><n>`` would pick for the copy.
    """
    r = _seeded(2)
    inits = [_init("W1", (r.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)),
             _init("W0", (r.standard_normal((8, 8, 3, 3)) * 0.15).astype(np.float32)),
             _init("W3", (r.standard_normal((8, 8, 3, 3)) * 0.15).astype(np.float32)),
             _init("b", (r.standard_normal(8) * 0.2).astype(np.float32))]
    mid = "b0" if collide else "h1"
    nodes = [helper.make_node("Conv", ["x", "W1"], ["h0"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h0"], ["r0"], name="act0"),
             helper.make_node("Conv", ["r0", "W0", "b"], [mid], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", [mid], ["r1"], name="act1"),
             helper.make_node("Conv", ["r1", "W3", "b"], ["y"], name="conv_b", pads=[1, 1, 1, 1])]
    return _model(nodes, [_f32("x", ["N", 3, 8, 8])], [_f32("y", ["N", 8, 8, 8])], inits)


def onnx_initializers_as_inputs() -> onnx.ModelProto:
    """An MLP whose weights are initializers *and* graph inputs (``keep_initializers_as_inputs``,
    the IR < 4 convention): legal, the initializer being the input's default value."""
    r = _seeded(3)
    w1 = (r.standard_normal((32, 64)) * 0.2).astype(np.float32)
    b1 = (r.standard_normal(64) * 0.1).astype(np.float32)
    w2 = (r.standard_normal((64, 10)) * 0.2).astype(np.float32)
    inits = [_init("W1", w1), _init("B1", b1), _init("W2", w2)]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "B1"], ["a1"], name="fc1_bias"),
             helper.make_node("Relu", ["a1"], ["r1"], name="act"),
             helper.make_node("MatMul", ["r1", "W2"], ["y"], name="fc2")]
    inputs = [_f32("x", ["N", 32]), _f32("W1", [32, 64]), _f32("B1", [64]), _f32("W2", [64, 10])]
    return _model(nodes, inputs, [_f32("y", ["N", 10])], inits)


def onnx_clip_inputs() -> onnx.ModelProto:
    """MatMul → Clip(min, max given as inputs, opset ≥ 11) → MatMul → Clip(only max: min is the
    empty optional input ``""``)."""
    r = _seeded(4)
    inits = [_init("W1", (r.standard_normal((16, 32)) * 0.4).astype(np.float32)),
             _init("W2", (r.standard_normal((32, 8)) * 0.3).astype(np.float32)),
             _init("lo", np.array(-1.0, np.float32)), _init("hi", np.array(1.5, np.float32)),
             _init("cap", np.array(0.8, np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m1"], name="fc1"),
             helper.make_node("Clip", ["m1", "lo", "hi"], ["c1"], name="clip_both"),
             helper.make_node("MatMul", ["c1", "W2"], ["m2"], name="fc2"),
             helper.make_node("Clip", ["m2", "", "cap"], ["y"], name="clip_max_only")]
    return _model(nodes, [_f32("x", ["N", 16])], [_f32("y", ["N", 8])], inits)


def onnx_tied_gemm() -> onnx.ModelProto:
    """Token ids → Gather(E[V, D]) → mean over the sequence → Gemm(h, E, transB=1): the output
    head reads the embedding table itself (tied weights), one initializer with two consumers."""
    r = _seeded(5)
    v, d = 40, 24
    inits = [_init("E", (r.standard_normal((v, d)) * 0.5).astype(np.float32)),
             _init("axes", np.array([1], np.int64))]
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"], name="embed", axis=0),
             helper.make_node("ReduceMean", ["emb", "axes"], ["h"], name="pool", keepdims=0),
             helper.make_node("Gemm", ["h", "E"], ["y"], name="lm_head", transB=1)]
    model = _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
                   [_f32("y", ["N", v])], inits, opset=18)
    return model


def onnx_weight_also_read_by_float_op() -> onnx.ModelProto:
    """MatMul(x, W) + ReduceSum(W, axis 0): the weight a quantizer replaces is also read by an op
    that stays float, so the float values must still be there (or be dequantized) for it."""
    r = _seeded(14)
    inits = [_init("W", (r.standard_normal((32, 16)) * 0.3).astype(np.float32)),
             _init("ax", np.array([0], np.int64))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="fc"),
             helper.make_node("ReduceSum", ["W", "ax"], ["colsum"], name="colsum", keepdims=0),
             helper.make_node("Add", ["m", "colsum"], ["y"], name="add")]
    return _model(nodes, [_f32("x", ["N", 32])], [_f32("y", ["N", 16])], inits)


# ---------------------------------------------------------------- ONNX → PyTorch (ONNX graphs)

def onnx_slice_negative_step() -> onnx.ModelProto:
    """x[N,12] → Slice(starts=-1, ends=INT64_MIN, steps=-1) on axis 1 (reverse the features) →
    Slice(starts=-2, ends=0, steps=-3) (every third from the end) → MatMul."""
    r = _seeded(6)
    big = np.iinfo(np.int64).min
    inits = [_init("s1", np.array([-1], np.int64)), _init("e1", np.array([big], np.int64)),
             _init("ax", np.array([1], np.int64)), _init("st1", np.array([-1], np.int64)),
             _init("s2", np.array([-2], np.int64)), _init("e2", np.array([0], np.int64)),
             _init("st2", np.array([-3], np.int64)),
             _init("W", (r.standard_normal((16, 5)) * 0.5).astype(np.float32))]
    nodes = [helper.make_node("Slice", ["x", "s1", "e1", "ax", "st1"], ["rev"], name="reverse"),
             helper.make_node("Slice", ["rev", "s2", "e2", "ax", "st2"], ["sub"], name="every_third"),
             helper.make_node("Concat", ["rev", "sub"], ["cat"], name="cat", axis=1),
             helper.make_node("MatMul", ["cat", "W"], ["y"], name="fc")]
    # rev: 12 wide; sub: indices 10, 7, 4, 1 of rev → 4 wide; cat: 16
    return _model(nodes, [_f32("x", ["N", 12])], [_f32("y", ["N", 5])], inits)


def onnx_where_broadcast() -> onnx.ModelProto:
    """Where(cond[N,1,4], x[N,3,4], fill[1]): all three operands broadcast to [N,3,4]."""
    r = _seeded(7)
    inits = [_init("zero", np.zeros((1,), np.float32)), _init("fill", np.array([-2.5], np.float32)),
             _init("W", (r.standard_normal((4, 4)) * 0.5).astype(np.float32)),
             _init("axes", np.array([1], np.int64))]
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], name="mean", keepdims=1),
             helper.make_node("Greater", ["m", "zero"], ["cond"], name="positive"),
             helper.make_node("Where", ["cond", "x", "fill"], ["w"], name="select"),
             helper.make_node("MatMul", ["w", "W"], ["y"], name="fc")]
    return _model(nodes, [_f32("x", ["N", 3, 4])], [_f32("y", ["N", 3, 4])], inits, opset=18)


def onnx_transpose_batchnorm() -> onnx.ModelProto:
    """x[N,5,6,3] (channels last) → Transpose to NCHW → BatchNormalization(3 channels, non-trivial
    running stats) → Transpose back."""
    r = _seeded(8)
    inits = [_init("scale", (1 + r.standard_normal(3) * 0.3).astype(np.float32)),
             _init("bias", (r.standard_normal(3) * 0.5).astype(np.float32)),
             _init("mean", (r.standard_normal(3) * 0.5).astype(np.float32)),
             _init("var", (0.5 + r.random(3)).astype(np.float32))]
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("BatchNormalization", ["t", "scale", "bias", "mean", "var"], ["bn"], name="bn",
                              epsilon=1e-3),
             helper.make_node("Transpose", ["bn"], ["y"], name="to_nhwc", perm=[0, 2, 3, 1])]
    return _model(nodes, [_f32("x", ["N", 5, 6, 3])], [_f32("y", ["N", 5, 6, 3])], inits)


def onnx_split_expand() -> onnx.ModelProto:
    """Split with the sizes as the second input (opset 13+: [2, 6]) → Expand the first part from
    [N,2,1] to [N,2,5] with a shape input → MatMul on the second part, then Concat."""
    r = _seeded(9)
    inits = [_init("sizes", np.array([2, 6], np.int64)), _init("shape", np.array([1, 2, 5], np.int64)),
             _init("W", (r.standard_normal((1, 5)) * 0.5).astype(np.float32)),
             _init("axes", np.array([2], np.int64))]
    nodes = [helper.make_node("Split", ["x", "sizes"], ["p", "q"], name="split", axis=1),
             helper.make_node("ReduceMax", ["p", "axes"], ["pm"], name="pmax", keepdims=1),
             helper.make_node("Expand", ["pm", "shape"], ["pe"], name="expand"),
             helper.make_node("ReduceMean", ["q", "axes"], ["qm"], name="qmean", keepdims=1),
             helper.make_node("MatMul", ["qm", "W"], ["qw"], name="fc"),
             helper.make_node("Concat", ["pe", "qw"], ["y"], name="cat", axis=1)]
    return _model(nodes, [_f32("x", ["N", 8, 3])], [_f32("y", ["N", 8, 5])], inits, opset=18)


# ---------------------------------------------------------------- PyTorch → ONNX (torch.onnx reports)

class PoolToOne(nn.Module):
    """Conv → F.interpolate(size=(1, 1), bilinear, align_corners=False) → broadcast back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x):
        h = self.conv(x)
        g = F.interpolate(h, size=(1, 1), mode="bilinear", align_corners=False)
        return h * torch.sigmoid(g)


class AreaDown(nn.Module):
    """F.interpolate(mode="area") by a scale factor of 1/2 (adaptive average pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return F.interpolate(self.conv(x), scale_factor=0.5, mode="area")


class IntFloorDiv(nn.Module):
    """Float features bucketed into signed integers, floor-divided (Python semantics, rounding
    toward −∞ for negatives), then used as float again."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        k = torch.floor(self.fc(x) * 7).to(torch.int64)
        q = torch.div(k, 3, rounding_mode="floor")
        r = k - q * 3
        return torch.cat([q, r], dim=1).to(torch.float32)


class StridedSlice(nn.Module):
    """x[:, ::2, ::2, :] on a channels-last tensor, then a Linear on the last axis."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(x[:, ::2, ::2, :])


def pool_to_one() -> nn.Module:
    torch.manual_seed(10)
    return PoolToOne().eval()


def area_down() -> nn.Module:
    torch.manual_seed(11)
    return AreaDown().eval()


def int_floor_div() -> nn.Module:
    torch.manual_seed(12)
    return IntFloorDiv().eval()


def strided_slice() -> nn.Module:
    torch.manual_seed(13)
    return StridedSlice().eval()


class DeconvStack(nn.Module):
    """ConvTranspose 4→6 (k4, stride 2) then a depthwise ConvTranspose 6→6 (k3, stride 2, groups 6)."""

    def __init__(self) -> None:
        super().__init__()
        self.up1 = nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, bias=False)
        self.up2 = nn.ConvTranspose2d(6, 6, 3, stride=2, padding=1, output_padding=1, groups=6, bias=False)

    def forward(self, x):
        return self.up2(self.up1(x))


def deconv_stack() -> nn.Module:
    torch.manual_seed(15)
    return DeconvStack().eval()


# multiply-accumulates of DeconvStack on one [4, 8, 8] input: each input element of a ConvTranspose
# meets its group's C_out/groups × kH × kW weights
DECONV_STACK_MACS = 4 * 8 * 8 * (6 * 4 * 4) + 6 * 16 * 16 * (1 * 3 * 3)


def onnx_deconv_stack() -> onnx.ModelProto:
    """DeconvStack written directly as ONNX (no exporter in between), x: [1, 4, 8, 8]."""
    m = deconv_stack()
    inits = [_init("W1", m.up1.weight.detach().numpy()), _init("W2", m.up2.weight.detach().numpy())]
    nodes = [helper.make_node("ConvTranspose", ["x", "W1"], ["h"], name="up1", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["h", "W2"], ["y"], name="up2", strides=[2, 2], pads=[1, 1, 1, 1],
                              output_padding=[1, 1], group=6)]
    return _model(nodes, [_f32("x", [1, 4, 8, 8])], [_f32("y", [1, 6, 32, 32])], inits)


# ---------------------------------------------------------------- structured pruning (Torch-Pruning / NNI reports)

def _bn_stats(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm distinct running statistics and affine terms (so channel importance differs)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


class OneChannelHead(nn.Module):
    """A dense-prediction net whose last conv has a single output channel (groups=1): a layer that
    must not be mistaken for a depthwise conv (out_channels == groups)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.b2 = nn.BatchNorm2d(32)
        self.c3 = nn.Conv2d(32, 1, 3, padding=1)
        self.b3 = nn.BatchNorm2d(1)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.b3(self.c3(x))


class PartialConv(nn.Module):
    """FasterNet-style partial convolution: split the channels [4, 12], convolve only the first
    part, concatenate back, then a pointwise conv and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.partial = nn.Conv2d(4, 4, 3, padding=1)
        self.pw = nn.Conv2d(16, 24, 1)
        self.bn2 = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        a, b = torch.split(x, [4, 12], dim=1)
        x = torch.cat([self.partial(a), b], dim=1)
        x = F.relu(self.bn2(self.pw(x)))
        return self.fc(x.mean(dim=(2, 3)))


class DepthwiseSeparable(nn.Module):
    """Conv → depthwise 3x3 (groups = channels) → pointwise 1x1 → pool → Linear (MobileNet block)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.bn1 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(self.dw(x)))
        x = F.relu(self.bn2(self.pw(x)))
        return self.fc(x.mean(dim=(2, 3)))


def one_channel_head() -> nn.Module:
    torch.manual_seed(20)
    return _bn_stats(OneChannelHead(), 20)


def partial_conv() -> nn.Module:
    torch.manual_seed(21)
    return _bn_stats(PartialConv(), 21)


def depthwise_separable() -> nn.Module:
    torch.manual_seed(22)
    return _bn_stats(DepthwiseSeparable(), 22)
