"""Parity: run two models on the same inputs, compare, and on a mismatch bisect to the
first diverging layer/node.

Bisection works by matching intermediate values rather than names, so it serves every
pair of runtimes the same way (torch↔ONNX, ONNX↔ONNX): the reference's intermediates
(torch leaf-module outputs via forward hooks, or every ONNX node output) are taken in
execution order, and each one is looked for among the candidate's intermediates of the
same shape. A value that exists in a healthy candidate always has a match, except where
the candidate fused it away (a conv folded into its BatchNorm); such a gap is isolated,
while a real divergence spreads downstream. The first unmatched reference value whose
successor is unmatched too is the first diverging layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

from ..backends.onnx import make_session, run_onnx
from ..backends.torch import flatten_outputs, run_torch
from ..core.handle import ModelHandle
from ..errors import ParityError


@dataclass
class OutputDiff:
    name: str
    max_abs: float
    rel: float
    cos_mean: float
    cos_min: float
    top1: float | None = None


@dataclass
class Divergence:
    reference_layer: str
    candidate_node: str | None
    candidate_op: str | None
    max_abs: float


@dataclass
class ParityReport:
    ok: bool
    atol: float
    rtol: float
    outputs: list[OutputDiff] = field(default_factory=list)
    n_inputs: int = 0
    divergence: Divergence | None = None
    note: str = ""
    n_random: int = 0  # of the n_inputs, those drawn at random (the rest came from the user's data)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def rel(self) -> float:
        return max((o.rel for o in self.outputs), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["max_abs"] = self.max_abs
        d["rel"] = self.rel
        return d

    def _samples(self) -> str:
        if self.n_random == self.n_inputs:
            return f"{self.n_inputs} random samples"
        if not self.n_random:
            return f"{self.n_inputs} samples"
        return f"{self.n_inputs} samples ({self.n_inputs - self.n_random} from the data, {self.n_random} random)"

    def summary(self) -> str:
        head = "parity OK" if self.ok else "parity FAILED"
        parts = [f"{head}: max-abs {self.max_abs:.3g}, rel {self.rel:.3g} (atol {self.atol:g}, rtol {self.rtol:g}) "
                 f"over {self._samples()}"]
        for o in self.outputs:
            t = "" if o.top1 is None else f", top-1 agreement {o.top1:.4f}"
            parts.append(f"  {o.name}: max-abs {o.max_abs:.3g}, cosine mean {o.cos_mean:.6f} / min {o.cos_min:.6f}{t}")
        if self.divergence:
            d = self.divergence
            node = f" (candidate node {d.candidate_node!r}, op {d.candidate_op})" if d.candidate_node else ""
            parts.append(f"  first diverging layer: {d.reference_layer!r}{node}, max-abs {d.max_abs:.3g}")
        if self.note:
            parts.append(f"  {self.note}")
        return "\n".join(parts)


def judge_as_int8(report: ParityReport) -> ParityReport:
    """Judge an int8 hop's parity by agreement, not max-abs (two runtimes' int8 kernels round differently):
    top-1 agreement >= 0.90 on every classifier-shaped output, else mean cosine >= 0.98 on every output.
    Sets ``ok`` and adds the rule to ``note``; returns ``report``."""
    top1 = [o.top1 for o in report.outputs if o.top1 is not None]
    report.ok = min(top1) >= 0.9 if top1 else all(o.cos_mean >= 0.98 for o in report.outputs)
    rule = "int8: judged by top-1 agreement >= 0.90 (or cosine >= 0.98), not max-abs"
    report.note = f"{report.note}; {rule}" if report.note else rule
    return report


def per_sample_cosines(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Cosine of each sample's flattened output (axis 0 is the sample; a 1-D array is one sample), float64
    (N,); two all-zero samples count as 1, one all-zero sample as 0. ``ref`` and ``out``: the same shape.
    An output of one value per sample (``(N, 1)``, ``(N, 1, 1)``: a presence score, a regression target) gets
    its cosine over all the samples, repeated N times — one sample's cosine would be only its sign. Several
    outputs side by side (an ``OutputView`` with ``widths``): each sample's worst output's cosine, each output
    read by these rules. One output whose channels are of far-apart magnitudes (:func:`scale_groups`: a
    detector's boxes and scores): each sample's worst group's cosine, as if the groups were outputs."""
    widths = getattr(ref, "widths", ()) or getattr(out, "widths", ())
    if widths and np.ndim(ref) == 2 and sum(widths) == np.shape(ref)[1] and np.shape(ref) == np.shape(out):
        a_all, b_all = np.asarray(ref, np.float64), np.asarray(out, np.float64)
        edges = np.cumsum((0, *widths))
        return np.min([per_sample_cosines(a_all[:, lo:hi], b_all[:, lo:hi])
                       for lo, hi in zip(edges[:-1], edges[1:], strict=True)], axis=0)
    ref64, out64 = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref64.ndim > 1 and ref64.size == len(ref64) > 1 and out64.shape == ref64.shape:
        return np.full(len(ref64), per_sample_cosines(ref64.reshape(-1), out64.reshape(-1))[0])
    split = scale_groups(ref64) if ref64.ndim >= 3 and out64.shape == ref64.shape else None
    if split is not None:  # channels of far-apart scales (a detector's boxes and scores): each group must hold
        axis, groups = split
        return np.min([per_sample_cosines(np.take(ref64, g, axis=axis), np.take(out64, g, axis=axis))
                       for g in groups], axis=0)
    a = ref64.reshape(len(ref64), -1) if ref64.ndim > 1 else ref64.reshape(1, -1)
    b = out64.reshape(len(out64), -1) if out64.ndim > 1 else out64.reshape(1, -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return np.where((na > 0) & (nb > 0), (a * b).sum(1) / np.maximum(na * nb, 1e-30), (na == nb).astype(float))


SCALE_GAP = 32.0  # channels this many times apart in magnitude are judged apart (int8: < 8 of 256 steps shared)
SCALE_AXIS_MAX = 512  # an axis of at most this many entries can be a channel axis (boxes + classes, not anchors)
_DEAD = 1e-6  # channels below this fraction of the largest channel's RMS are noise-level: no group of their own


def scale_groups(ref: np.ndarray) -> tuple[int, list[np.ndarray]] | None:
    """Where one output joins channels of far-apart magnitudes — YOLOv8's ``output0 [N, 4 + classes, anchors]``:
    box coordinates in pixels (RMS ~100) beside class scores (~0.01) — the cosine over the whole output is the
    boxes' alone: a model whose scores are all rounded to 0 keeps 0.9996. The channel axis is the smallest
    non-batch axis of at least 2 entries, when it has at most :data:`SCALE_AXIS_MAX` and a quarter of the other
    non-batch axes' product (YOLOv8's 22 of ``[N, 22, 2100]``, YOLOX's 6 of ``[N, 3549, 6]``; a probability map's
    H and W are never channels). Returns it, if its per-channel RMS over the reference, sorted, has a step of more
    than :data:`SCALE_GAP` between neighbours, with the channel indices of each magnitude group (noise-level
    channels join the smallest group); else None. ``ref``: (N, ...) with ``ndim >= 3``."""
    sizes = {a: ref.shape[a] for a in range(1, ref.ndim) if ref.shape[a] >= 2}
    if not sizes:
        return None
    axis = min(sizes, key=lambda a: (sizes[a], a))  # boxes + classes beside thousands of anchors; a map's H/W are
    if sizes[axis] > SCALE_AXIS_MAX or 4 * sizes[axis] > math.prod(sizes.values()) // sizes[axis]:  # of a size
        return None
    if (ref >= 0).all() and np.allclose(ref.sum(axis=axis), 1.0, atol=1e-3):
        return None  # probabilities over this axis (softmax): rare classes are small, not another kind of value
    other = tuple(a for a in range(ref.ndim) if a != axis)
    rms = np.sqrt(np.mean(np.square(ref), axis=other))
    top = float(rms.max())
    if not top > 0 or not np.isfinite(top):
        return None
    order = np.argsort(rms)
    live = order[rms[order] > top * _DEAD]
    if len(live) < 2:
        return None
    cuts = np.flatnonzero(rms[live[1:]] / rms[live[:-1]] > SCALE_GAP) + 1
    if not len(cuts):
        return None
    groups = np.split(live, cuts)
    groups[0] = np.concatenate([order[rms[order] <= top * _DEAD], groups[0]])  # noise-level: with the smallest
    return axis, [np.sort(g) for g in groups]


def _embedding_rows(rows: np.ndarray) -> bool:
    """Whether (N, D) rows read as embeddings rather than class scores: every row of unit L2 norm (within 1e-3)
    and not a probability distribution (a confident softmax row is near unit norm too)."""
    if not rows.size:
        return False
    unit = np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-3)
    probabilities = bool((rows >= 0).all()) and np.allclose(rows.sum(1), 1.0, atol=1e-3)
    return unit and not probabilities


def compare_outputs(ref: np.ndarray, out: np.ndarray, name: str = "output") -> OutputDiff:
    """max-abs, relative error, per-sample cosine and top-1 agreement (classifier-shaped outputs: (N, C), C > 1,
    rows that are not unit-norm embeddings — the largest coordinate of a sentence embedding is no class)."""
    ref64, out64 = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref64.shape != out64.shape:
        return OutputDiff(name, float("inf"), float("inf"), 0.0, 0.0, None)
    diff = np.abs(ref64 - out64)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref64).max()) if ref64.size else 0.0
    rel = max_abs / scale if scale > 0 else max_abs
    cos = per_sample_cosines(ref, out)  # the originals: several outputs side by side keep their widths
    top1 = None
    first = getattr(ref, "first_shape", ()) or ref64.shape  # several outputs side by side: the first one's
    if len(first) == 2 and first[1] > 1 and not _embedding_rows(ref64[:, :first[1]]):
        top1 = float((ref64[:, :first[1]].argmax(1) == out64[:, :first[1]].argmax(1)).mean())
    return OutputDiff(name, max_abs, rel, float(cos.mean()), float(cos.min()), top1)


def run_model(handle: ModelHandle, inputs: dict[str, np.ndarray], session: Any = None) -> list[np.ndarray]:
    if handle.kind == "onnx":
        return run_onnx(session or make_session(handle.model, threads=2), inputs)
    return run_torch(handle.model, inputs, handle.input_names)


class _Drawn(dict):
    """An input set drawn at random (not read from the user's data): parity reports count them apart."""


def parity_inputs(ref: ModelHandle, data: Any = None, *, seed: int = 0, batches: tuple[int, ...] = (2, 3),
                  max_samples: int = 64) -> list[dict[str, np.ndarray]]:
    """Fresh random inputs at two batch sizes (exercising the dynamic batch axis) + the user's data.

    A graph where any input fixes the first dim at B (zoo CNNs at batch 1; silero VAD v6's state
    ``h: [1, 1, 128]`` beside ``input: [n, 576]``) gets B-sample sets only, the data in chunks of B."""
    from ..core.shapes import fixed_batch

    fixed = fixed_batch(ref.inputs)
    if fixed:  # several draws of B: one draw alone is one sample at batch 1
        batches = (fixed,) * max(1, 4 // fixed)
    sets = [_Drawn(ref.sample_inputs(batch=b, seed=seed + i)) for i, b in enumerate(batches)]
    if data is not None:
        from ..core.data import load_data

        ds = load_data(data, ref)
        rng = np.random.default_rng(seed)
        for s in sets:  # a dynamic dim the graph fixes in practice (PP-OCR rec: height 48, drawn as 224)
            for k, v in s.items():  # takes the data's size: the random set is then rows of the data
                d = ds.inputs.get(k)
                if d is not None and len(d) and d.ndim == v.ndim and d.shape[1:] != v.shape[1:]:
                    s[k] = d[rng.integers(0, len(d), len(v))]
        if fixed:
            n = min(len(next(iter(ds.inputs.values()))), 8 * batches[0])
            sets += [{k: v[i:i + batches[0]] for k, v in ds.inputs.items()} for i in range(0, n, batches[0])]
        else:
            sets.append({k: v[:max_samples] for k, v in ds.inputs.items()})
    return sets


def check_parity(ref: ModelHandle, cand: ModelHandle, *, inputs: list[dict[str, np.ndarray]] | None = None,
                 data: Any = None, atol: float = 1e-4, rtol: float = 1e-4, bisect: bool = True,
                 raise_on_fail: bool = False, seed: int = 0) -> ParityReport:
    """Compare ``cand`` against ``ref`` on the same inputs; bisect on failure."""
    input_sets = inputs or parity_inputs(ref, data, seed=seed)
    cand_sess = make_session(cand.model) if cand.kind == "onnx" else None
    per_out, n, n_random = _run_pairs(ref, lambda feed: run_model(cand, feed, cand_sess), input_sets)
    # an ONNX file's own output names; a PyTorch candidate (a .pt2) only has generic ones: the reference's
    names = (cand.output_names or ref.output_names) if cand.kind == "onnx" else (ref.output_names or cand.output_names)
    diffs = [merge_outputs(pairs, names[i] if i < len(names) else f"output_{i}") for i, pairs in per_out.items()]
    ok = all(d.max_abs <= atol + rtol * _scale(per_out[i]) for i, d in enumerate(diffs))
    report = ParityReport(ok, atol, rtol, diffs, n, n_random=n_random)
    report.note = _shape_note(per_out, names)
    if not ok and bisect and not report.note:  # a shape that differs is the diagnosis already
        try:
            report.divergence = bisect_divergence(ref, cand, input_sets[0], atol=atol, rtol=rtol)
            if report.divergence is None:
                report.note = "no single diverging layer found: the error accumulates gradually"
        except Exception as exc:  # bisection is a diagnosis aid; never hide the parity result
            report.note = f"bisection could not run: {type(exc).__name__}: {str(exc)[:160]}"
    if not ok and raise_on_fail:
        raise ParityError(f"outputs differ: max-abs {report.max_abs:.3g} > tolerance", report)
    return report


def _run_pairs(ref: ModelHandle, run_cand: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
               sets: list[dict[str, np.ndarray]], *, conform: bool = False
               ) -> tuple[dict[int, list[tuple[np.ndarray, np.ndarray]]], int, int]:
    """Run ``ref`` and the candidate on every input set: per output index the ``(reference, candidate)``
    pairs, the samples compared (axis 0 of each set) and how many of them were random draws. ``conform``
    (a foreign runtime): outputs are paired by position as far as both go, each candidate output reshaped
    to its reference's shape (TFLite returns some flattened); else a count that differs raises
    :class:`ParityError`."""
    ref_sess = make_session(ref.model) if ref.kind == "onnx" else None
    pairs: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    n = n_random = 0
    for feed in sets:
        r, c = run_model(ref, feed, ref_sess), run_cand(feed)
        if not conform and len(r) != len(c):
            raise ParityError(f"the models disagree on the number of outputs: {len(r)} vs {len(c)}")
        for i, (a, b) in enumerate(zip(r, c, strict=False)):
            pairs.setdefault(i, []).append((np.asarray(a), np.asarray(b).reshape(np.shape(a))) if conform else (a, b))
        rows = len(next(iter(feed.values())))
        n += rows
        n_random += rows if isinstance(feed, _Drawn) else 0
    return pairs, n, n_random


def _rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1) if x.ndim else x.reshape(1, 1)


def merge_outputs(pairs: list[tuple[np.ndarray, np.ndarray]], name: str = "output") -> OutputDiff:
    """One output compared over several input sets: each set ``(reference, candidate)`` is compared
    on its own (shape first), then combined — max-abs and min cosine over all sets, mean cosine and
    top-1 agreement weighted by rows (axis 0), rel = max-abs / max|reference|. This equals comparing
    the concatenated sets where they concatenate, and also serves outputs whose length depends on
    the data (``NonZero``, ``Unique``, NMS: ``[2, count]``), which do not."""
    # each output in its own shape (a 0-d one as one row): flattened, a detector's [1, 3549, 6] read as a
    # classifier's rows ("top-1 agreement") and its boxes hid its scores (scale groups need the channel axis)
    per = [compare_outputs(*((a, b) if np.ndim(a) >= 2 else (_rows(a), _rows(b))), name) for a, b in pairs]
    if any(not np.isfinite(d.max_abs) for d in per):  # a shape differs in some set
        return OutputDiff(name, float("inf"), float("inf"), 0.0, 0.0, None)
    rows = [len(_rows(a)) for a, _ in pairs]
    max_abs = max(d.max_abs for d in per)
    scale = max((float(np.abs(a).max()) if a.size else 0.0) for a, _ in pairs)
    total = max(sum(rows), 1)
    top1 = None if any(d.top1 is None for d in per) else sum(d.top1 * r for d, r in zip(per, rows, strict=True)) / total
    return OutputDiff(name, max_abs, max_abs / scale if scale > 0 else max_abs,
                      sum(d.cos_mean * r for d, r in zip(per, rows, strict=True)) / total,
                      min(d.cos_min for d in per), top1)


def _shape_note(per_out: dict[int, list[tuple[np.ndarray, np.ndarray]]], names: list[str]) -> str:
    """Which output came back in another shape, for the report (else empty)."""
    for i, pairs in per_out.items():
        for a, b in pairs:
            if a.shape != b.shape:
                name = names[i] if i < len(names) else f"output_{i}"
                return f"output {name!r} has shape {list(b.shape)} where the reference has {list(a.shape)}"
    return ""


def _scale(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    return max(float(np.abs(p[0]).max()) if p[0].size else 0.0 for p in pairs)


# -- bisection ------------------------------------------------------------------------------

Trace = list[tuple[str, str | None, np.ndarray]]  # (layer/value name, op, value) in execution order


def trace_torch(module: torch.nn.Module, inputs: dict[str, np.ndarray], names: list[str]) -> Trace:
    """Outputs of every leaf module, in execution order."""
    trace: Trace = []
    hooks = []
    for name, mod in module.named_modules():
        if name and not list(mod.children()):
            def hook(_m: Any, _i: Any, out: Any, name: str = name, kind: str = type(mod).__name__) -> None:
                tensors = flatten_outputs(out)
                if tensors:
                    trace.append((name, kind, tensors[0].detach().float().numpy().copy()))
            hooks.append(mod.register_forward_hook(hook))
    try:
        run_torch(module, inputs, names)
    finally:
        for h in hooks:
            h.remove()
    return trace


def onnx_intermediates(model: onnx.ModelProto, inputs: dict[str, np.ndarray]
                       ) -> tuple[list[tuple[str, str, str]], dict[str, np.ndarray]]:
    """Every float node output (with a known type) on ``inputs``, run unoptimized, and the
    (tensor name, node name, op type) order they come in."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    types = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    order: list[tuple[str, str, str]] = []
    for node in probe.graph.node:
        for out in node.output:
            vi = types.get(out)
            if not out or vi is None or vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                continue
            order.append((out, node.name or out, node.op_type))
            if out not in existing:
                probe.graph.output.append(vi)
                existing.add(out)
    sess = make_session(probe, optimize=False)
    values = dict(zip([o.name for o in sess.get_outputs()], run_onnx(sess, inputs), strict=True))
    return order, values


def trace_onnx(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> Trace:
    """Every node output (float tensors with a known type), in graph order."""
    order, values = onnx_intermediates(model, inputs)
    return [(node, op, values[v]) for v, node, op in order if v in values]


def _trace(handle: ModelHandle, inputs: dict[str, np.ndarray]) -> Trace:
    if handle.kind == "onnx":
        return trace_onnx(handle.model, inputs)
    return trace_torch(handle.model, inputs, handle.input_names)


def bisect_divergence(ref: ModelHandle, cand: ModelHandle, inputs: dict[str, np.ndarray], *,
                      atol: float = 1e-4, rtol: float = 1e-4) -> Divergence | None:
    ref_trace = _trace(ref, inputs)
    cand_trace = _trace(cand, inputs)
    by_shape: dict[tuple[int, ...], list[tuple[str, str | None, np.ndarray]]] = {}
    for item in cand_trace:
        by_shape.setdefault(item[2].shape, []).append(item)

    def best_match(value: np.ndarray) -> tuple[float, tuple[str, str | None] | None]:
        best, who = float("inf"), None
        for name, op, other in by_shape.get(value.shape, []):
            err = float(np.abs(other.astype(np.float64) - value).max()) if value.size else 0.0
            if err < best:
                best, who = err, (name, op)
        return best, who

    matched = []
    for name, _op, value in ref_trace:
        err, who = best_match(value)
        tol = atol + rtol * (float(np.abs(value).max()) if value.size else 0.0)
        matched.append((name, err <= tol, err, who))
    for i, (name, ok, err, who) in enumerate(matched):
        if ok:
            continue
        if i + 1 < len(matched) and matched[i + 1][1]:
            continue  # an isolated gap: the candidate fused this value away, the next one agrees
        return Divergence(name, who[0] if who else None, who[1] if who else None,
                          err if np.isfinite(err) else float("nan"))
    return None


def parity_against(ref: ModelHandle, runner: Callable[[dict[str, np.ndarray]], list[np.ndarray]], *,
                   data: Any = None, atol: float = 1e-4, rtol: float = 1e-4, inputs: list[dict[str, np.ndarray]] | None = None,
                   batches: tuple[int, ...] = (2, 3)) -> Any:
    """A :class:`ParityReport` of ``runner`` (a runtime deepshrink holds no handle for: TFLite,
    OpenVINO, Keras) against the ONNX/torch ``ref``: ``runner(feed) -> outputs`` on the same
    input sets as :func:`check_parity` (``inputs``, else ``data`` plus fresh random batches)."""
    sets = inputs or parity_inputs(ref, data, batches=batches)
    pairs, n, n_random = _run_pairs(ref, runner, sets, conform=True)
    names = ref.output_names
    diffs = []
    for i, ps in pairs.items():
        try:  # in the output's own shape where the sets join (see merge_outputs), else one row per sample
            a, b = np.concatenate([p[0] for p in ps]), np.concatenate([p[1] for p in ps])
        except ValueError:
            a = np.concatenate([p[0].reshape(len(p[0]), -1) for p in ps])
            b = np.concatenate([p[1].reshape(len(p[1]), -1) for p in ps])
        diffs.append(compare_outputs(a, b, names[i] if i < len(names) else f"output_{i}"))
    scale = max((float(np.abs(p[0]).max()) for ps in pairs.values() for p in ps), default=0.0)
    ok = all(d.max_abs <= atol + rtol * scale for d in diffs)
    return ParityReport(ok, atol, rtol, diffs, n, n_random=n_random)


def first_divergence(order: list[tuple[str, str, str]], ref: dict[str, np.ndarray], got: dict[str, Any],
                     atol: float, rtol: float) -> Any:
    """The first tensor (graph order) where ``got`` leaves the tolerance around ``ref``."""
    for name, node, op in order:
        if name not in got or name not in ref:
            continue
        a, b = np.asarray(ref[name]), np.asarray(got[name])
        if a.shape != b.shape or not a.size:
            continue
        err = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
        if not err <= atol + rtol * float(np.abs(a).max()):
            return Divergence(reference_layer=node, candidate_node=name, candidate_op=op, max_abs=err)
    return None
