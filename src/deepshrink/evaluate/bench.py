"""``deepshrink bench``: several models side by side, all measured now, on these files.

For each model: size on disk, parameters, latency (median/p90, timed interleaved with
the others), speed-up against the first model with its spread, and — on the same inputs —
accuracy (when the data has labels) and fidelity against the first model. A model that
was meant to be compressed (5 % smaller at least, in file or parameters) but is not faster than the first gets a
warning; another format of the same model (a .pt2 beside its .onnx) gets none, whatever its speed.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.handle import ModelHandle
from ..errors import InputError
from .gate import MAX_DROP, MIN_COS
from .latency import cpu_flags, measure_latency
from .metrics import accuracy
from .size import counted_param_count, file_size

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]

# A model measured this far from the first one gets a warning line (accuracy drop, or without
# labels the worst output cosine): results that collapsed must never pass silently. The same limits
# as the fidelity gate's defaults, which refuse such a model where a command writes one.
DEGRADED_DROP = MAX_DROP
DEGRADED_COS_MIN = MIN_COS
# the ending of those warnings (a command whose fidelity gate already said so leaves them out)
DEGRADED = ": the model degraded"
# ONNX Runtime ops that set an activation's int8 range from the values of the call (dynamic quantization)
RUN_TIME_RANGES = ("DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention",
                   "MatMulIntegerToFloat")


@dataclass
class BenchRow:
    name: str
    runtime: str
    size_bytes: int | None
    params: int | None
    median_ms: float
    p90_ms: float
    spread: float
    speedup: float  # baseline latency / this latency (median over interleaved rounds)
    ratio: float  # this latency / baseline latency
    ratio_spread: float
    accuracy: float | None = None
    cos_mean: float | None = None
    cos_min: float | None = None
    max_abs: float | None = None
    top1_agreement: float | None = None
    p10_ms: float | None = None  # with p90_ms: the spread of this model's own rounds
    # a model with several floating-point outputs: each fidelity column is the worst over its outputs (lowest
    # cosines, largest max-abs); named here, when it is not the first, the output whose worst-sample cosine is
    # lowest (the one the fidelity gate judges); None otherwise
    worst_output: str | None = None


@dataclass
class BenchResult:
    rows: list[BenchRow]
    threads: int
    batch: int
    repeats: int
    cpu: str
    samples: int
    data: str
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _runner_for(handle: ModelHandle, threads: int) -> tuple[str, Runner]:
    if handle.kind == "onnx":
        from ..backends.onnx import make_session, run_onnx

        sess = make_session(handle.model, threads=threads)
        return "onnxruntime", lambda feed: run_onnx(sess, feed)
    from ..backends.torch import run_torch

    return "torch", lambda feed: run_torch(handle.model, feed, handle.input_names)


def _external_runner(path: Path, threads: int) -> tuple[str, Runner, list[str]] | None:
    """TFLite and OpenVINO files, through their adapters when those stacks are installed."""
    import importlib

    from ..core.formats import by_suffix

    modules = {"tflite": "deepshrink.backends.tflite_rt", "openvino": "deepshrink.backends.openvino_rt"}
    fmt = by_suffix(path)
    if fmt is None or fmt.name not in modules:
        return None
    mod_name, runtime = modules[fmt.name], fmt.name
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise InputError(f"benchmarking {path.suffix} files needs the {runtime} adapter: {exc}") from None
    runner = mod.make_runner(path, threads=threads)
    names = list(getattr(runner, "input_names", []))
    return runtime, runner, names


def _weights_per_model(weights: Any, models: list[Any]) -> list[Any]:
    """One weights path (None: none) per model from :func:`bench`'s ``weights``: a list of one per model (``"-"``:
    none); else the one path goes to the ``module:factory`` sources, or to every model when none is a factory."""
    from ..loading import is_factory_source

    if weights is None:
        return [None] * len(models)
    items = [weights] if isinstance(weights, (str, os.PathLike)) else [None if w in ("-", "") else w for w in weights]
    if len(items) == 1:
        has_factory = any(is_factory_source(m) for m in models)
        return [items[0] if is_factory_source(m) or not has_factory else None for m in models]
    if len(items) != len(models):
        raise InputError(f"{len(items)} --weights for {len(models)} models: give one for all, or one per model in "
                         "order ('-' for a model without)")
    return items


def bench(models: list[Any], *, data: Any = None, threads: int = 2, batch: int = 1, repeats: int = 30,
          warmup: int = 5, samples: int = 256, names: list[str] | None = None, progress: bool = False,
          **load_options: Any) -> BenchResult:
    """Measure ``models`` side by side; the first is the reference for speed-up and fidelity.

    ``load_options`` (``deepshrink.load``'s ``weights``, ``input_shapes``, ``trust_remote_code``)
    load the model sources; ``weights`` (one path) go to the ``module:factory`` sources among them (an ONNX
    file exported from that factory is benched as it is), or to every model when none is a factory; a list of
    one path (or None, ``"-"``) per model gives each its own. A row whose weights came from a file is named
    ``SOURCE + FILE`` and sized by that file. Raises :class:`InputError` for a list of another length."""
    from ..core.data import load_data
    from ..core.verbs import LOAD_OPTIONS, check_options
    from ..loading import load

    own = [n for n, p in inspect.signature(bench).parameters.items() if p.kind is p.KEYWORD_ONLY]
    check_options("bench", load_options, (*own, *LOAD_OPTIONS))
    if not models:
        raise InputError("bench needs at least one model")
    without_weights = {k: v for k, v in load_options.items() if k != "weights"}
    per_model = _weights_per_model(load_options.get("weights"), models)
    entries: list[tuple[str, str, Runner, int | None, int | None, list[str]]] = []
    dynamic: set[int] = set()  # entries whose activations are quantized per call
    first_handle: ModelHandle | None = None
    # a file's name labels its row; two files of one name (a/model.onnx, b/model.onnx) keep their paths as given
    base = [Path(str(m)).name if isinstance(m, (str, Path)) else None for m in models]
    for i, m in enumerate(models):
        label = names[i] if names and i < len(names) else (
            (str(m) if base.count(base[i]) > 1 else base[i]) if isinstance(m, (str, Path)) else
            getattr(m, "source", None) or f"model{i}")
        ext = _external_runner(Path(str(m)), threads) if isinstance(m, (str, Path)) else None
        if ext is not None:
            runtime, runner, in_names = ext
            entries.append((label, runtime, runner, file_size(m), None, in_names))
            continue
        weights = per_model[i]
        # the data gives a PyTorch model given --input-shape its example inputs' values and dtypes (token ids)
        opts = {**without_weights, **({"weights": weights} if weights is not None else {}),
                **({"data": data} if data is not None and load_options.get("input_shapes") else {})}
        h = load(m, **opts) if not isinstance(m, ModelHandle) else m
        if first_handle is None:
            first_handle = h
        runtime, runner = _runner_for(h, threads)
        size = file_size(h.path) if h.path is not None and Path(h.path).exists() else None
        if weights is not None and not isinstance(m, ModelHandle):  # the row is the architecture with that file's weights
            if not (names and i < len(names)):
                label = f"{label} + {Path(str(weights)).name}"
            size = file_size(weights) if Path(str(weights)).is_file() else size
        if h.kind == "onnx" and any(node.op_type in RUN_TIME_RANGES for node in h.model.graph.node):
            dynamic.add(len(entries))
        entries.append((label, runtime, runner, size, counted_param_count(h), h.input_names))
    if first_handle is None:
        raise InputError("bench needs at least one ONNX or PyTorch model to take the input spec from")
    if data is not None:
        ds = load_data(data, first_handle)
        eval_inputs, labels, data_name = ds.inputs, ds.labels, ds.source
    else:
        eval_inputs, labels, data_name = first_handle.random_samples(min(samples, 64), seed=1), None, "random"
    n = min(samples, len(next(iter(eval_inputs.values()))))
    eval_inputs = {k: v[:n] for k, v in eval_inputs.items()}
    labels = labels[:n] if labels is not None else None
    feed = {k: v[:batch] for k, v in eval_inputs.items()}
    if len(next(iter(feed.values()))) < batch:
        raise InputError(f"the data holds {n} samples, fewer than --batch {batch}")
    if labels is not None:  # ids the accuracy column can read, or one line before any timing
        from ..core.data import check_class_labels

        probe = entries[0][2](feed)
        check_class_labels(labels, probe[0] if probe else None, data_name)
    timers = {f"{i}:{e[0]}": (lambda r=e[2]: r(feed)) for i, e in enumerate(entries)}
    stats = measure_latency(timers, warmup=warmup, repeats=repeats, threads=threads, progress=progress)
    # a graph fixed at batch B (zoo CNNs: B = 1) is fed B samples at a time
    # (any input's fixed first dim counts: silero VAD v6 declares input [n, 576] but state h [1, 1, 128])
    from ..core.shapes import fixed_batch, join_batches

    step = fixed_batch(first_handle.inputs) or 32
    # a model that quantizes its activations at run time (DynamicQuantizeLinear: one range per call) computes
    # other values in a batch of 32 than alone: it is scored at the batch it is timed at (trial u: cosine 0.99991
    # at 32 against 0.99971 at batch 1 for attacut's int8-dynamic)
    steps = [batch if i in dynamic else step for i in range(len(entries))]
    outputs = [join_batches([runner({k: v[j:j + st] for k, v in eval_inputs.items()}) for j in range(0, n, st)])
               for (_label, _rt, runner, *_), st in zip(entries, steps, strict=True)]
    out_names = [o.name for o in first_handle.outputs]

    rows = []
    for (label, runtime, _r, size, params, _n), key, outs in zip(entries, timers, outputs, strict=True):
        st = stats[key]
        fid, worst = _fidelity(outputs[0], outs, out_names)
        out = outs[0]
        acc = accuracy(out, labels) if labels is not None and out is not None and out.ndim == 2 else None
        rows.append(BenchRow(label, runtime, size, params, st.median_ms, st.p90_ms, st.spread,
                             1.0 / st.ratio if st.ratio > 0 else 0.0, st.ratio, st.ratio_spread, acc,
                             fid.cos_mean, fid.cos_min, fid.max_abs, fid.top1, p10_ms=st.p10_ms, worst_output=worst))
    result = BenchResult(rows, threads, batch, repeats, cpu_flags(), n, data_name)
    first = rows[0]
    for row in rows[1:]:
        if row.accuracy is not None and first.accuracy is not None and first.accuracy - row.accuracy > DEGRADED_DROP:
            result.warnings.append(
                f"{row.name} lost {100 * (first.accuracy - row.accuracy):.1f} accuracy points against {first.name} "
                f"({100 * first.accuracy:.1f}% → {100 * row.accuracy:.1f}%){DEGRADED}")
        elif (row.accuracy is None or row.worst_output) and row.cos_min is not None and row.cos_min < DEGRADED_COS_MIN:
            which = f"output {row.worst_output!r}" if row.worst_output else "outputs"
            result.warnings.append(
                f"{row.name}'s {which} diverge from {first.name}'s: worst cosine fidelity {row.cos_min:.3f} "
                f"(mean {row.cos_mean:.3f}){DEGRADED}")
        # looks compressed: 5 % smaller at least (a .pt2 of the same weights counts 92 fewer parameters than its
        # ONNX file, the shape constants, and was called smaller)
        smaller = (row.size_bytes is not None and first.size_bytes is not None
                   and row.size_bytes <= 0.95 * first.size_bytes) or (
            row.params is not None and first.params is not None and row.params <= 0.95 * first.params)
        if smaller and row.ratio > 0.95:  # it looks compressed, yet it does not run faster
            result.warnings.append(
                f"{row.name} is not faster than {rows[0].name} on this machine ({row.ratio:.2f}× its latency, "
                f"±{row.ratio_spread:.2f}) — a smaller model is not automatically a faster one")
    return result


def _fidelity(ref: list[np.ndarray | None], outs: list[np.ndarray | None], names: list[str]) -> tuple[Any, str | None]:
    """The fidelity of ``outs`` to ``ref`` (:func:`deepshrink.convert.parity.compare_outputs`) over every
    floating-point output both have — each figure the worst over the outputs (lowest mean and worst-sample
    cosine, largest max-abs; top-1 agreement the first output's) — and the name of the output with the lowest
    worst-sample cosine when that is not the first: the first output alone would hide, say, a face detector's
    landmarks drifting while its class scores hold. Models whose output counts differ (a PyTorch module
    returning more than its export) are compared on their first output only. Returns ``(OutputDiff, worst
    name or None)``."""
    from ..convert.parity import compare_outputs

    if len(ref) != len(outs):
        ref, outs = ref[:1], outs[:1]
    pairs = [(i, r, o) for i, (r, o) in enumerate(zip(ref, outs, strict=True))
             if r is not None and o is not None and np.issubdtype(r.dtype, np.floating)]
    if not pairs:  # no floating-point output: the first, as it is
        if ref[0] is None or outs[0] is None:
            raise InputError("bench compares outputs sample by sample; this model's first output has no sample "
                             "axis (a scalar) and it has no other floating-point output")
        return compare_outputs(ref[0], outs[0]), None
    diffs = [(i, compare_outputs(r, o)) for i, r, o in pairs]
    i, worst = min(diffs, key=lambda d: (d[1].cos_min, d[1].cos_mean))
    if len(diffs) == 1:
        return worst, None
    from dataclasses import replace

    combined = replace(worst, cos_mean=min(d.cos_mean for _, d in diffs), max_abs=max(d.max_abs for _, d in diffs),
                       top1=diffs[0][1].top1 if pairs[0][0] == 0 else None)  # top-1 agreement: the first output's
    return combined, (None if i == 0 else names[i] if i < len(names) and names[i] else f"output {i}")
