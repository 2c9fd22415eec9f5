"""The ``quantize`` verb: resolve the model and data, dispatch on the config type.

Every scheme produces an ONNX model (the artifact ONNX Runtime runs); a torch model is
exported first (the TorchScript exporter for Hugging Face encoders, so ORT's BERT
fusions match — see FACTS). Handlers are registered with
``deepshrink.core.config.register`` and return a :class:`QuantizeOutcome`; the verb
returns a :class:`~deepshrink.core.result.Result` built from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.config import handler_for, register
from ..core.handle import ModelHandle
from ..core.result import Result
from ..errors import InputError, UnsupportedError, first_line
from .configs import (
    AutoConfig,
    Int8DynamicConfig,
    Int8StaticConfig,
    KMeansConfig,
    Log2Config,
    MixedPrecisionConfig,
    QATConfig,
    QuantConfig,
    WeightOnlyConfig,
)
from .onnx import backend as ob
from .onnx.normalize import normalize_for_quantization, restore_unquantized_casts
from .onnx.outcome import Prepared, QuantizeOutcome, verb_report
from .onnx.outcome import result as _result
from .onnx.tied import retie, untie


def quantize(model: Any, config: QuantConfig, *, data: Any = None, **options: Any) -> Result:
    """Quantize ``model`` (handle, nn.Module, onnx.ModelProto or path) with ``config``.

    ``options``: ``progress`` and, for a model source, ``deepshrink.load``'s ``weights``,
    ``input_shapes``, ``trust_remote_code``; any other keyword is refused. Returns a
    :class:`~deepshrink.core.result.Result`: ``.model`` (an ONNX handle, in memory), ``.report``
    (``method`` the scheme, ``details`` the scheme's record), ``.save("q.onnx")``. Raises
    ``InputError`` (a config that is not a quantization config, missing or unfit data),
    ``UnsupportedError`` (a scheme the model cannot take)."""
    out = run_quantize(model, config, data=data, **options)
    return Result(out.handle, verb_report(scheme_name(config), out))


def scheme_name(config: QuantConfig) -> str:
    """The CLI/recipe scheme name of ``config`` (``"int8-static"``...), or its class name."""
    from .configs import SCHEMES

    if isinstance(config, QATConfig) and config.epochs == 0:
        return "ptq"
    return next((k for k, v in SCHEMES.items() if type(config) is v), type(config).__name__)


def run_quantize(model: Any, config: QuantConfig, *, data: Any = None, progress: bool = False, say: Any = None,
                 **load_options: Any) -> QuantizeOutcome:
    """``load_options`` (``weights``, ``input_shapes``, ``trust_remote_code``) load a model source;
    any other keyword is refused. ``say``: a callable for one-line progress messages (auto's search).

    :class:`AutoConfig` with ``strategy="search"`` takes the whole ``data``: its first
    ``calibration_size`` samples calibrate and the rest are held out to choose on
    (:mod:`deepshrink.search.preset`)."""
    from ..core.verbs import LOAD_OPTIONS, check_options

    check_options("quantize", load_options, ("data", "progress", *LOAD_OPTIONS))
    if not isinstance(config, QuantConfig):
        raise InputError(f"quantize needs a quantization config, got {type(config).__name__}")
    handler = handler_for(config)
    if isinstance(config, QATConfig):
        return handler(model, config, data=data, progress=progress, **load_options)
    if isinstance(config, AutoConfig) and config.strategy == "search":  # a preset of the per-layer search
        out = _auto_strategy("search")(model, config, data=data, progress=progress, say=say, **load_options)
        out.report.setdefault("scheme", type(config).__name__)
        out.report["config"] = config.to_dict()
        return out
    prep = prepare(model, data, fuse=_wants_fuse(config), calibration_size=_calibration_size(config),
                   gemm_as_matmul=not _is_static(config), **load_options)
    out = handler(prep, config, progress=progress)
    if prep.ties:
        shared, apart = retie(out.handle.model, prep.ties)
        out.report["tied_weights"] = {"shared": [t.to_dict() for t in shared], "two_copies": [t.to_dict() for t in apart]}
    if prep.normalized is not None:
        restore_unquantized_casts(out.handle.model, prep.normalized)
    _check_loads(out.handle.model)
    out.report["float_weights"] = float_weights(prep.handle.model, out.handle.model)
    out.report.setdefault("scheme", type(config).__name__)
    if prep.opset_from is not None:
        out.report["opset_upgraded"] = f"{prep.opset_from} -> {MIN_OPSET}"
    out.report["config"] = config.to_dict()
    if prep.fused:
        out.report["fused"] = prep.fused
    if prep.normalized:
        out.report["normalized"] = prep.normalized.to_dict()
    return out


AUTO_STRATEGIES = "deepshrink.auto_strategies"  # entry-point group: AutoConfig.strategy name -> runner


def _auto_strategy(name: str) -> Any:
    """The runner of an :class:`AutoConfig` strategy other than the built-in ``layouts``, found by entry point
    (``search`` is ``deepshrink.search.preset:auto_by_search``): the search builds on quantize, so quantize
    finds it as a plugin instead of importing it (the import graph stays one-way, as for the data sources).

    Raises :class:`UnsupportedError` when the entry point is missing (a stale install's metadata)."""
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group=AUTO_STRATEGIES)}
    if name not in found:
        raise UnsupportedError(f"auto strategy {name!r} is not registered: the install's metadata is stale; "
                               "reinstall deepshrink (pip install -e .), or use strategy 'layouts'")
    return found[name].load()


def _wants_fuse(config: QuantConfig) -> str:
    """"none", "auto" (fuse a BERT-like encoder when one is found) or "bert" (fuse, or refuse)."""
    if isinstance(config, Int8DynamicConfig):
        return config.fuse
    if isinstance(config, AutoConfig):
        return _wants_fuse(config.base)
    if isinstance(config, MixedPrecisionConfig):
        modes = {_wants_fuse(c) for c in (config.default, *config.overrides.values())}
        return next((m for m in ("bert", "auto") if m in modes), "none")
    return "none"


def _is_static(config: QuantConfig) -> bool:
    if isinstance(config, AutoConfig):
        return isinstance(config.base, Int8StaticConfig)
    if isinstance(config, MixedPrecisionConfig):
        return any(isinstance(c, Int8StaticConfig) for c in (config.default, *config.overrides.values()))
    return isinstance(config, Int8StaticConfig)


def _calibration_size(config: QuantConfig) -> int:
    if isinstance(config, MixedPrecisionConfig):  # each group takes its own share in _mixed
        return max(_calibration_size(c) for c in (config.default, *config.overrides.values()))
    return int(getattr(config, "calibration_size", 256))


# ---------------------------------------------------------------------------------------------
# model + data resolution


def to_onnx_handle(model: Any, **load_options: Any) -> ModelHandle:
    """Load ``model`` and, when it is a torch model, export it to ONNX in memory."""
    from ..loading import load

    handle = model if isinstance(model, ModelHandle) else load(model, **load_options)
    if handle.kind == "onnx":
        return handle
    from ..convert.export import export_onnx

    exporter = "torchscript" if handle.tokenizer_dir is not None else "auto"
    if handle.example_inputs is None and not all(
            all(isinstance(d, int) for d in spec.shape[1:]) and len(spec.shape) > 1 for spec in handle.inputs):
        raise InputError(f"the PyTorch model {handle.source or ''} has no example inputs to export it with: pass "
                         f"input_shapes (CLI --input-shape NAME:1x64) or data")
    if handle.example_inputs is None:
        handle.example_inputs = handle.sample_inputs(batch=2, seed=0)
    return export_onnx(handle, exporter=exporter)


def prepare(model: Any, data: Any, *, fuse: bool | str = False, calibration_size: int = 256, gemm_as_matmul: bool = False,
            **load_options: Any) -> Prepared:
    if data is not None and "data" not in load_options and not isinstance(model, (ModelHandle, onnx.ModelProto)):
        load_options["data"] = data  # a torch model takes its example input shapes from the data
    handle = to_onnx_handle(model, **load_options)
    proto = onnx.ModelProto()
    proto.CopyFrom(handle.model)
    proto, opset_from = _upgrade_opset(proto)
    ob.ensure_node_names(proto)
    # what ORT's quantizers mishandle (Gemm alpha/beta/2-D bias/transA, Cast-fed fp16 weights), rewritten exactly
    normalized = normalize_for_quantization(proto)
    ties = untie(proto)  # a tied embedding/head gets its own projection weight; retie() shares the quantized one
    if gemm_as_matmul:  # ORT's dynamic / weight-only passes and our codebooks see every Linear as MatMul
        ob.gemm_to_matmul(proto)
    arrays, labels = None, None
    if data is not None:
        from ..core.data import load_data

        ds = load_data(data, handle)
        ds = ds.take(min(len(ds), calibration_size))
        arrays, labels = ds.inputs, ds.labels
        _check_runs(proto, arrays, str(ds.source))
    fused: dict[str, int] = {}
    if fuse and fuse != "none":
        dims = ob.detect_bert(proto, handle.tokenizer_dir)
        if dims is not None:
            proto, fused = ob.fuse_transformer(proto, *dims)
        if fuse == "bert" and not fused.get("Attention"):
            raise UnsupportedError("fuse='bert': ONNX Runtime's BERT fusions found no attention block to fuse in this "
                                   "graph" + ("" if dims is not None else " (it is not a BERT-like encoder)")
                                   + "; use fuse='auto' or 'none'")
    return Prepared(handle, proto, arrays, labels, fused, opset_from, normalized, ties)


# quantized ops: the index of their first scale / zero-point input
_QPARAMS_FROM = {"MatMulNBits": 2, "DequantizeLinear": 1, "QuantizeLinear": 1, "MatMulInteger": 2, "ConvInteger": 2,
                 "DynamicQuantizeMatMul": 2, "MatMulIntegerToFloat": 2, "QGemm": 1, "QLinearMatMul": 1,
                 "QLinearConv": 1, "QAttention": 3, "DynamicQuantizeLSTM": 3}  # LSTM: 3 is its float bias


def float_weights(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, Any]:
    """The weight matrices still stored as float after quantization, by consuming node, with their share
    of the float model's weight bytes — so a layer a scheme does not handle (a GRU, an untouched
    embedding) is named, never left float silently."""
    width = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2}

    def matrices(model: onnx.ModelProto) -> dict[str, int]:  # bytes from the dims: no tensor is decoded
        return {t.name: width[t.data_type] * int(np.prod(t.dims)) for t in model.graph.initializer
                if t.data_type in width and sum(1 for d in t.dims if d > 1) >= 2}

    total = sum(matrices(before).values())
    qparams = {n.input[i] for n in after.graph.node for i in range(_QPARAMS_FROM.get(n.op_type, len(n.input)),
                                                                    len(n.input))}
    left = {k: v for k, v in matrices(after).items() if k not in qparams}  # scales are no float weights
    users: dict[str, list[str]] = {}
    for n in after.graph.node:
        for i in n.input:
            if i in left:
                users.setdefault(f"{n.op_type} {n.name}", []).append(i)
    nodes = [{"node": k, "weights": v, "bytes": sum(left[w] for w in v)} for k, v in users.items()]
    nodes.sort(key=lambda r: -r["bytes"])
    return {"share": sum(left.values()) / total if total else 0.0, "nodes": nodes}


# Per-channel DequantizeLinear (its ``axis``) and the QDQ forms ONNX Runtime's quantizer writes exist
# from opset 13; an older graph quantized as it is gives a file that does not load (FACTS).
MIN_OPSET = 13


def _upgrade_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int | None]:
    """``model`` at opset >= 13 (onnx's version converter), and the opset it had if it was raised."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    if current >= MIN_OPSET:
        return model, None
    from onnx import version_converter

    # onnx's converter resolves every node input among the graph inputs (IR < 4 style): an initializer
    # that is not also a graph input is "undefined" to it. List them as inputs for the conversion only.
    listed = {i.name for i in model.graph.input}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    added = {t.name for t in probe.graph.initializer if t.name not in listed}
    for t in probe.graph.initializer:
        if t.name in added:
            probe.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        upgraded = version_converter.convert_version(probe, MIN_OPSET)
    except Exception as exc:
        raise UnsupportedError(f"the model is at opset {current}, and quantized ONNX needs opset {MIN_OPSET}; onnx's "
                               f"version converter failed: {first_line(exc)}") from None
    if added:
        keep = [i for i in upgraded.graph.input if i.name not in added]
        del upgraded.graph.input[:]
        upgraded.graph.input.extend(keep)
        upgraded.ir_version = max(upgraded.ir_version, 7)  # IR >= 4: initializers need not be inputs
    return upgraded, current


def _check_loads(model: onnx.ModelProto) -> None:
    """The quantized model must load in ONNX Runtime before anything is written (never leave a broken file)."""
    from ..backends.onnx import make_session

    try:
        make_session(model, threads=1, optimize=False)
    except InputError as exc:
        raise UnsupportedError(f"the quantized model would not load in ONNX Runtime, so nothing was written "
                               f"({exc})") from None


def _check_runs(model: onnx.ModelProto, arrays: dict[str, np.ndarray], source: str) -> None:
    """The calibration data must run through the float model; say so in one line if not."""
    from ..backends.onnx import make_session

    sess = make_session(model, threads=2)
    want = {i.name: i for i in sess.get_inputs()}
    extra = sorted(set(arrays) - set(want))
    if extra:
        raise InputError(f"data {source} has arrays {extra} that the model does not take; it wants {sorted(want)}")
    def rows(name: str) -> int:  # a graph fixed at batch 1 (zoo CNNs) takes one sample at a time
        dims = want[name].shape if name in want else None
        return dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else 2

    feed = {k: v[:rows(k)] for k, v in arrays.items()}
    try:
        sess.run(None, feed)
    except Exception as exc:
        shapes = {k: list(v.shape) for k, v in arrays.items()}
        raise InputError(f"data {source} does not fit the model (shapes {shapes}): "
                         f"{first_line(exc)}") from None


def require_data(prep: Prepared, what: str) -> dict[str, np.ndarray]:
    if prep.data is None:
        raise InputError(f"{what} needs calibration data: pass --data (an .npz of inputs, a text file, "
                         f"or a built-in: digits, sentences)")
    return prep.data


def _nodes(prep: Prepared, config: QuantConfig, op_types: Sequence[str]) -> list[str]:
    tied_tables = {g for t in prep.ties for g in t.gathers}  # they read their projection's quantized weight
    cands = [c for c in ob.weight_nodes(prep.model, op_types) if c.name not in tied_tables]
    nodes = ob.select_nodes(cands, config.include, config.exclude)
    if not nodes:
        if cands:
            raise InputError(f"no layer left to quantize: --include/--exclude removed all {len(cands)} candidates "
                             f"of types {list(op_types)}")
        raise InputError(ob.no_candidates_message(prep.model, op_types, type(config).__name__))
    return nodes


# ---------------------------------------------------------------------------------------------
# handlers


@register(Int8DynamicConfig)
def _dynamic(prep: Prepared, config: Int8DynamicConfig, **_: Any) -> QuantizeOutcome:
    op_types = config.op_types
    conv_only = (op_types == Int8DynamicConfig.model_fields["op_types"].default
                 and not ob.weight_nodes(prep.model, op_types) and ob.weight_nodes(prep.model, ("Conv",)))
    if conv_only:  # as ONNX Runtime's quantize_dynamic does: Conv -> ConvInteger (slow; int8-static is the fast path)
        op_types = ("Conv",)
    nodes = _nodes(prep, config, op_types)
    small: set[str] = set()
    if not config.include:  # tables the user named are quantized whatever their size
        small = {w.name for w in ob.weight_nodes(prep.model, ("Gather",))
                 if w.name in nodes and int(np.prod(w.shape)) < config.gather_min_elements}
    if small and len(small) < len(nodes):
        nodes = [n for n in nodes if n not in small]
    else:
        small = set()
    model, report = prep.model, {"quantized_layers": len(nodes)}
    if conv_only:
        report["conv_integer"] = ("a conv-only network: its Conv layers became ConvInteger, whose ONNX Runtime kernel "
                                  "is usually slower than float; --scheme int8-static (QLinearConv) is the fast path")
    if small:
        report["float_small_tables"] = sorted(small)
    if config.smooth_alpha:
        from .onnx.smooth import smooth_model

        model, sm = smooth_model(model, require_data(prep, "smoothing"), alpha=config.smooth_alpha, nodes=nodes,
                                 min_outlier_ratio=config.smooth_min_outlier_ratio)
        report["smooth"] = sm.to_dict()
    q = ob.quantize_dynamic_int8(model, nodes, per_channel=config.per_channel, reduce_range=config.reduce_range,
                                 report=report, per_channel_min_db=config.per_channel_min_db)
    return _result(prep, q, report)


@register(Int8StaticConfig)
def _static(prep: Prepared, config: Int8StaticConfig, **_: Any) -> QuantizeOutcome:
    calib = require_data(prep, "static int8")
    static_ops = config.op_types or ("Conv", "MatMul", "Gemm")
    if not ob.weight_nodes(prep.model, static_ops):  # computed weights: ORT's calibrator fails on them
        raise InputError(ob.no_candidates_message(prep.model, static_ops, type(config).__name__))
    model = ob.preprocess(prep.model)
    normalize_for_quantization(model)  # ORT's pre-processing may fuse MatMul + Add back into a Gemm
    op_types = config.op_types or None
    nodes = _nodes(Prepared(prep.handle, model, calib, ties=prep.ties), config, op_types or ("Conv", "MatMul", "Gemm"))
    report: dict[str, Any] = {"quantized_layers": len(nodes), "observer": config.observer}
    if config.smooth_alpha:
        from .onnx.smooth import smooth_model

        model, sm = smooth_model(model, calib, alpha=config.smooth_alpha, nodes=nodes)
        report["smooth"] = sm.to_dict()
    # explicit include/exclude restrict ORT to those nodes; otherwise ORT also quantizes the ops around them
    selected = nodes if (config.include or config.exclude) else []
    mixed = ob.mixed_range_concats(model, calib) if not selected else []
    if mixed:  # one shared scale would round the small input away: those Concats (and their outputs) stay float
        report["float_concat"] = [{"node": n, "ratio": round(r, 1)} for n, r in mixed]
    q = ob.quantize_static_int8(model, selected, calib, observer=config.observer, percentile=config.percentile,
                                per_channel=config.per_channel, fmt=config.format,
                                symmetric_activations=config.symmetric_activations, op_types=config.op_types,
                                exclude_nodes=[*(g for t in prep.ties for g in t.gathers), *(n for n, _ in mixed)],
                                reduce_range=config.reduce_range)
    return _result(prep, q, report)


@register(WeightOnlyConfig)
def _weight_only(prep: Prepared, config: WeightOnlyConfig, **_: Any) -> QuantizeOutcome:
    nodes = _nodes(prep, config, ("MatMul",))
    ob.check_group_size(prep.model, nodes, config.group_size)
    if config.method == "rtn":
        q = ob.quantize_weight_only_rtn(prep.model, nodes, bits=config.bits, group_size=config.group_size,
                                        symmetric=config.symmetric)
    else:
        from .onnx.gptq import gptq_matmul_nbits

        q = gptq_matmul_nbits(prep.model, nodes, require_data(prep, "GPTQ"), bits=config.bits,
                              group_size=config.group_size, symmetric=config.symmetric, act_order=config.act_order)
    return _result(prep, q, {"quantized_layers": len(nodes), "method": config.method})


def _codebook(prep: Prepared, config: KMeansConfig | Log2Config, make: Callable[[np.ndarray, int | None], Any]) -> QuantizeOutcome:
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(prep.model)
    cands = [w for w in ob.weight_nodes(model, ("MatMul", "Gemm", "Conv"))]
    names = set(ob.select_nodes(cands, config.include, config.exclude))
    inits = ob.initializer_map(model)
    done = 0
    for w in cands:
        if w.name not in names or int(np.prod(w.shape)) < config.min_elements or w.weight not in inits:
            continue
        arr = numpy_helper.to_array(inits[w.weight]).astype(np.float32)
        axis = 0 if w.op_type == "Conv" else 1  # output channels (Gemm was rewritten as MatMul)
        cb = make(arr, axis)
        ob.write_codebook(model, w.weight, cb.codebook.numpy(), cb.indices.numpy().astype(np.uint8),
                          axis=cb.axis)
        inits = ob.initializer_map(model)
        done += 1
    if not done:
        raise InputError(f"no weight with at least {config.min_elements} elements was selected for the codebook")
    return _result(prep, model, {"quantized_layers": done})


@register(KMeansConfig)
def _kmeans(prep: Prepared, config: KMeansConfig, **_: Any) -> QuantizeOutcome:
    from .nonlinear import kmeans_quantize

    return _codebook(prep, config, lambda a, ax: kmeans_quantize(a, config.bits, axis=ax if config.per_channel else None,
                                                                init=config.init, seed=config.seed))


@register(Log2Config)
def _log2(prep: Prepared, config: Log2Config, **_: Any) -> QuantizeOutcome:
    from .nonlinear import pow2_quantize

    return _codebook(prep, config, lambda a, ax: pow2_quantize(a, config.bits, axis=None))


@register(MixedPrecisionConfig)
def _mixed(prep: Prepared, config: MixedPrecisionConfig, **kw: Any) -> QuantizeOutcome:
    """Codebook / weight-only overrides first (they rewrite weights), then int8 on the rest."""
    all_types = ("MatMul", "Gemm", "Conv", "Attention", "LSTM")  # LSTM: int8-dynamic's DynamicQuantizeLSTM
    cands = ob.weight_nodes(prep.model, all_types)
    ob.select_nodes(cands, config.include, config.exclude)  # validates patterns
    for p in config.overrides:
        if not any(ob.node_matches(c, p) for c in cands):
            raise InputError(f"override pattern {p!r} matches no quantizable layer")
    base = ob.select_nodes(cands, config.include, config.exclude)
    assign: dict[str, QuantConfig] = {}
    unhandled: list[str] = []
    for name in base:
        c = next(c for c in cands if c.name == name)
        pattern, cfg = next(((p, v) for p, v in config.overrides.items() if ob.node_matches(c, p)),
                            (None, config.default))
        if not _handles(cfg, c.op_type):
            if pattern is not None:
                raise InputError(f"override {pattern!r} gives {c.op_type} layer {c.name!r} to {type(cfg).__name__}, "
                                 f"which does not quantize {c.op_type}")
            unhandled.append(c.name)  # the default scheme has no kernel for it: it stays float, and is reported
            continue
        assign[name] = cfg
    order = sorted({id(c): c for c in assign.values()}.values(),
                   key=lambda c: 0 if isinstance(c, (KMeansConfig, Log2Config, WeightOnlyConfig)) else 1)
    model, report = prep.model, {"groups": []}
    for cfg in order:
        names = [n for n, c in assign.items() if c is cfg]
        sub = cfg.model_copy(update={"include": tuple(names), "exclude": ()})
        n = getattr(cfg, "calibration_size", None)
        data = prep.data if prep.data is None or n is None else {k: v[:n] for k, v in prep.data.items()}
        step = handler_for(sub)(Prepared(prep.handle, model, data, prep.labels, ties=prep.ties), sub, **kw)
        model = step.handle.model
        report["groups"].append({"scheme": type(cfg).__name__, "layers": names})
    if unhandled:
        report["float_layers"] = unhandled
    return _result(prep, model, report)


def _handles(config: QuantConfig, op_type: str) -> bool:
    """Whether a single scheme's handler quantizes a layer of ``op_type``."""
    if isinstance(config, Int8DynamicConfig):
        return op_type in config.op_types
    if isinstance(config, Int8StaticConfig):
        return op_type in (config.op_types or ("Conv", "MatMul", "Gemm"))
    if isinstance(config, WeightOnlyConfig):
        return op_type == "MatMul"
    return op_type in ("MatMul", "Gemm", "Conv")  # codebooks


@register(AutoConfig)
def _auto(prep: Prepared, config: AutoConfig, **kw: Any) -> QuantizeOutcome:
    from .onnx.auto import auto_quantize

    result = auto_quantize(prep, config, progress=kw.get("progress", False))
    return _result(prep, result.model, {"auto": result.to_dict()})


@register(QATConfig)
def _qat(model: Any, config: QATConfig, *, data: Any = None, progress: bool = False, **load_options: Any) -> QuantizeOutcome:
    try:
        from .onnx.qat_export import qat_quantize
    except ImportError:
        raise UnsupportedError("QAT is not available in this build") from None
    return qat_quantize(model, config, data=data, progress=progress, **load_options)


def save_quantized(handle: ModelHandle, path: str | Path, *, force: bool = False, source: str | Path | None = None) -> Path:
    """Write the quantized model atomically (self-contained .onnx; tokenizer copied beside it)."""
    from ..backends.onnx import save_onnx
    from ..core.fileio import check_output

    out = check_output(path, inputs=(source,), force=force)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"output {out}: a quantized model is written as .onnx")
    save_onnx(handle.model, out)
    if handle.tokenizer_dir is not None:
        from ..convert.export import copy_tokenizer

        tok = out.parent / (out.name + ".tokenizer")
        if Path(handle.tokenizer_dir).resolve() != tok.resolve():
            copy_tokenizer(Path(handle.tokenizer_dir), tok)
        handle.tokenizer_dir = tok
    handle.path = out
    return out
