"""GPTQ of an ONNX file larger than memory: segment by segment, with layer-by-layer calibration.

GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", §4 and its reference code) quantizes a transformer block by block: the calibration
activations enter block *i* after blocks < *i* were quantized, the Hessians ``H = 2·XᵀX/n`` of the
block's linear layers are collected from those inputs, every layer of the block is quantized with
:func:`deepshrink.quantize.weight_only.gptq_quantize_weight`, and the activations advance through the
quantized block. This module does the same on any ONNX graph, without knowing its layer names:

1. **Segments.** The nodes (in the file's topological order) are cut where the set of live
   activations — tensors computed before the cut and read after it — is smallest. Between the
   blocks of a transformer that set is the residual stream (plus anything every block reads, such
   as an attention mask), so a pre-LayerNorm block falls into two segments (attention, MLP). A cut
   is made only once the segment holds a selected ``MatMul``.
2. **Calibration, segment by segment.** Each segment becomes a small ONNX model of its own nodes,
   fed with the live activations of the calibration batches and holding only its own initializers,
   read from the external data on demand (handed to ONNX Runtime with
   ``SessionOptions.add_external_initializers``; pre-packing off, so there is one copy). Run 1
   computes the inputs of the segment's selected ``MatMul`` layers; their Hessians are accumulated,
   each weight is read alone and quantized by GPTQ (float32, as the reference code), and its codes
   go to the shared streaming writer (:func:`.streaming.stream_matmul_nbits`, the same
   ``MatMulNBits`` layout and atomic output as round-to-nearest). Run 2 evaluates the segment with
   those layers as ``MatMulNBits`` and keeps the outputs later segments read; everything no later
   node reads is dropped.

Memory: one segment's weights (twice at most while a weight is re-read for GPTQ), the live
activations of the calibration set (``samples × tokens × width`` floats per tensor), and GPTQ's
Hessian work space (three ``K × K`` float32 matrices for the widest layer of the segment) — never the
whole fp32 model. Each layer's record carries the output error ``‖XW − XŴ‖ / ‖XW‖`` on its
calibration inputs for GPTQ and, for comparison, for round-to-nearest on the same grid.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...backends.onnx import ExternalRef
from ...errors import InputError, UnsupportedError, first_line
from . import backend as ob
from .streaming import LayerCodes, StreamReport, _cosine, _weight, stream_matmul_nbits

__all__ = ["Segment", "plan_segments", "stream_gptq"]


@dataclass(frozen=True)
class Segment:
    """Nodes ``[start, stop)`` of the graph, the activations it reads and those read after it."""

    start: int
    stop: int
    inputs: tuple[str, ...]  # activations (graph inputs or earlier outputs) the segment reads
    outputs: tuple[str, ...]  # tensors it computes that later nodes or the graph outputs read
    layers: tuple[str, ...]  # selected MatMul nodes inside, in order


def _subgraph_reads(node: onnx.NodeProto) -> list[str]:
    """Names read inside a node's subgraphs (If/Loop/Scan bodies): outer-scope tensors among them."""
    names: list[str] = []

    def graph(g: onnx.GraphProto) -> None:
        for n in g.node:
            names.extend(i for i in n.input if i)
            names.extend(_subgraph_reads(n))

    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            graph(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            for sub in a.graphs:
                graph(sub)
    return names


def _reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor name a node reads: its inputs and the names its subgraphs use."""
    return [i for i in node.input if i] + _subgraph_reads(node)


def plan_segments(graph: onnx.GraphProto, layers: Iterable[str]) -> list[Segment]:
    """Cut ``graph``'s nodes where the fewest activations are live (see the module docstring).

    ``layers``: the names of the selected ``MatMul`` nodes; every segment but the last ends after
    at least one of them, and a cut lies between the first and the last of them. Initializers and
    graph inputs do not count as live (they are at hand for every segment), nor does a tensor live
    across more than half of the cut positions between the first and last selected layer (it is
    carried along). The cuts are where the fewest of the rest are live, once a segment holds a
    selected layer; in a transformer, the residual stream between attention and MLP halves. Raises
    :class:`InputError` when a node reads a tensor no earlier node computes (the nodes are not in
    topological order)."""
    nodes = list(graph.node)
    n = len(nodes)
    layers = set(layers)
    consts = {t.name for t in graph.initializer}
    inputs = {i.name for i in graph.input} - consts
    produced_at: dict[str, int] = {}
    last_read: dict[str, int] = {}
    for idx, nd in enumerate(nodes):
        for name in nd.input:
            if name and name not in consts and name not in inputs and name not in produced_at:
                raise InputError(f"node {nd.name!r} reads {name!r} before any node computes it: the graph is not "
                                 "in topological order")
        for name in _reads(nd):
            if name in produced_at:  # subgraph-local names are not
                last_read[name] = idx
        for o in nd.output:
            if o:
                produced_at[o] = idx
    for o in graph.output:
        if o.name in produced_at:
            last_read[o.name] = n
    at_layer = [i for i, nd in enumerate(nodes) if nd.name in layers]
    cuts = [0, n]
    if at_layer:
        first, last = at_layer[0] + 1, at_layer[-1] + 1  # the cuts with a selected layer on both sides
        span = {name: (at + 1, last_read.get(name, at)) for name, at in produced_at.items()}
        # A tensor live across most of the region (an attention mask every block reads, position ids) is
        # carried from segment to segment like a graph input and not counted: otherwise the fewest live
        # tensors would only be found after its last reader, inside the last block.
        carried = {name for name, (lo, hi) in span.items()
                   if min(hi, last - 1) - max(lo, first) + 1 > (last - first) // 2}
        # live[p]: the other activations computed before node p and read by node p or later
        delta = [0] * (n + 2)
        for name, (lo, hi) in span.items():
            if hi >= lo and name not in carried:
                delta[lo] += 1
                delta[hi + 1] -= 1
        live, run = [], 0
        for p in range(n + 1):
            run += delta[p]
            live.append(run)
        floor = min((live[p] for p in range(first, last)), default=0)
        cuts, seen = [0], False
        for p in range(first, last):
            seen = seen or nodes[p - 1].name in layers
            if seen and live[p] <= floor:
                cuts.append(p)
                seen = False
        cuts.append(n)
    segs = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        inside = {o for nd in nodes[a:b] for o in nd.output if o}
        reads = dict.fromkeys(r for nd in nodes[a:b] for r in _reads(nd)
                              if r not in inside and (r in produced_at or r in inputs))
        outputs = [o for nd in nodes[a:b] for o in nd.output if o and last_read.get(o, -1) >= b]
        segs.append(Segment(a, b, tuple(reads), tuple(outputs), tuple(nd.name for nd in nodes[a:b] if nd.name in layers)))
    return segs


def _needed(nodes: Sequence[onnx.NodeProto], wanted: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes of ``nodes`` that ``wanted`` depends on, in order (the rest is not run)."""
    need = set(wanted)
    keep = []
    for nd in reversed(nodes):
        if any(o in need for o in nd.output):
            keep.append(nd)
            need.update(_reads(nd))
    return keep[::-1]


def _trim() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``) between segments: each segment frees
    hundreds of MB of weights and Hessians in pieces glibc would otherwise keep, and the next segment's
    pieces rarely fit the holes. A no-op where the C library has no ``malloc_trim``."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _Driver:
    """Runs the segments in order and hands the writer each selected weight's codes when it asks."""

    def __init__(self, model: onnx.ModelProto, refs: dict[str, ExternalRef], layers: frozenset[str],
                 feeds: list[dict[str, np.ndarray]], *, what: str, bits: int, group_size: int, symmetric: bool,
                 act_order: bool, damp: float, threads: int, report: StreamReport,
                 on_segment: Callable[[int, int], None] | None) -> None:
        self.model, self.refs, self.layers, self.what = model, refs, layers, what
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric
        self.act_order, self.damp, self.threads = act_order, damp, threads
        self.report, self.on_segment = report, on_segment
        g = model.graph
        self.nodes = list(g.node)
        self.inits = {t.name: t for t in g.initializer}
        self.segments = plan_segments(g, layers)
        self.next = 0
        self.batches = len(feeds)
        inputs = {i.name for i in g.input} - set(self.inits)
        missing = sorted(inputs - set(feeds[0]))
        if missing:
            raise InputError(f"calibration data lacks the model input(s) {missing}")
        self.acts: dict[str, list[np.ndarray]] = {k: [f[k] for f in feeds] for k in inputs}
        self.last_read: dict[str, int] = {}
        for idx, nd in enumerate(self.nodes):
            for name in _reads(nd):
                self.last_read[name] = idx
        self.ready: dict[str, LayerCodes] = {}  # weight -> codes, until the writer takes them
        self.quantized: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}  # for later re-reads
        self.weight_uses: dict[str, int] = {}
        for nd in self.nodes:
            if nd.name in layers:
                self.weight_uses[nd.input[1]] = self.weight_uses.get(nd.input[1], 0) + 1
        report.extra.update(segments=len(self.segments), largest_segment_bytes=max(
            self._weight_bytes(s) for s in self.segments))

    def _weight_bytes(self, seg: Segment) -> int:
        names = {n for nd in self.nodes[seg.start:seg.stop] for n in _reads(nd) if n in self.inits}
        return sum(self.refs[n].length if n in self.refs else len(self.inits[n].raw_data) for n in names)

    def __call__(self, node: str, weight: str) -> LayerCodes:
        while weight not in self.ready:
            if self.next >= len(self.segments):
                raise UnsupportedError(f"GPTQ never reached layer {node!r}")  # not reachable: every layer is in a segment
            self._run(self.segments[self.next], self.next)
            self.next += 1
        return self.ready.pop(weight)

    # -- one segment ------------------------------------------------------------------------------

    def _session(self, nodes: Sequence[onnx.NodeProto], outputs: Sequence[str], quantized: dict[str, Any]) -> Any:
        """An ORT session of ``nodes``; MatMuls whose weight is in ``quantized`` run as ``MatMulNBits``."""
        import onnxruntime as ort

        g_nodes, g_inits, held = [], [], []
        ext_names, ext_values = [], []
        inside = {o for nd in nodes for o in nd.output if o}
        wanted: set[str] = set()
        for nd in nodes:
            w = nd.input[1] if nd.op_type == "MatMul" and len(nd.input) > 1 else None
            if w in quantized:
                packed, scales, zeros = quantized[w]
                k, n = (int(d) for d in self.inits[w].dims)
                names = [w + "_q", w + "_scales"] + ([] if zeros is None else [w + "_zeros"])
                arrays = [packed, scales] if zeros is None else [packed, scales, zeros]
                g_inits.extend(numpy_helper.from_array(np.ascontiguousarray(a), nm) for nm, a in zip(names, arrays,
                                                                                                   strict=True))
                g_nodes.append(helper.make_node("MatMulNBits", [nd.input[0], *names], list(nd.output), name=nd.name,
                                                domain="com.microsoft", K=k, N=n, bits=self.bits,
                                                block_size=self.group_size))
                wanted.add(nd.input[0])
                continue
            g_nodes.append(nd)
            wanted.update(_reads(nd))
        for name in sorted(wanted - inside):
            t = self.inits.get(name)
            if t is None:
                continue
            ref = self.refs.get(name)
            if ref is None:
                g_inits.append(t)
                continue
            arr = ref.read_bytes(self.what).view(helper.tensor_dtype_to_np_dtype(t.data_type)).reshape(
                [int(d) for d in t.dims])
            g_inits.append(t)  # still EXTERNAL: the data comes from the OrtValue below
            ext_names.append(name)
            ext_values.append(ort.OrtValue.ortvalue_from_numpy(arr))
            held.append(arr)
        feeds = [name for name in sorted(wanted - inside) if name in self.acts]
        graph_inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(self.acts[name][0].dtype),
                                                      None) for name in feeds]
        graph = helper.make_graph(g_nodes, "segment", graph_inputs,
                                  [helper.make_empty_tensor_value_info(o) for o in outputs], g_inits)
        opsets = list(self.model.opset_import)
        if quantized and not any(o.domain == "com.microsoft" for o in opsets):
            opsets.append(helper.make_opsetid("com.microsoft", 1))
        m = helper.make_model(graph, opset_imports=opsets)
        m.ir_version = self.model.ir_version
        m.functions.extend(self.model.functions)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 4
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.disable_prepacking", "1")  # one copy of each weight
        so.enable_cpu_mem_arena = False  # the activations are freed with the session, not kept in an arena
        if ext_names:
            so.add_external_initializers(ext_names, ext_values)
        try:
            sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise UnsupportedError(f"{self.what}: nodes {nodes[0].name!r}…{nodes[-1].name!r} do not run as a "
                                   f"segment in ONNX Runtime ({first_line(exc, 200)})") from None
        sess._deepshrink_held = held  # the OrtValues point into these buffers
        return sess, feeds

    def _run_batches(self, sess: Any, feeds: list[str], outputs: Sequence[str]) -> Iterable[list[np.ndarray]]:
        for b in range(self.batches):
            try:
                yield sess.run(list(outputs), {name: self.acts[name][b] for name in feeds})
            except Exception as exc:
                raise InputError(f"{self.what}: ONNX Runtime failed on the calibration data "
                                 f"({first_line(exc, 200)})") from None

    def _run(self, seg: Segment, index: int) -> None:
        import torch

        from ..weight_only import gptq_quantize_weight, rtn_quantize_weight

        nodes = self.nodes[seg.start:seg.stop]
        by_name = {nd.name: nd for nd in nodes}
        new_weights: list[str] = []
        for name in seg.layers:
            w = by_name[name].input[1]
            if w not in self.quantized and w not in new_weights:
                new_weights.append(w)
        taps: dict[str, list[str]] = {}  # activation -> the new weights it multiplies
        for name in seg.layers:
            nd = by_name[name]
            if nd.input[1] in new_weights:
                taps.setdefault(nd.input[0], [])
                if nd.input[1] not in taps[nd.input[0]]:
                    taps[nd.input[0]].append(nd.input[1])
        # run 1: the float segment (earlier layers already quantized), up to the new layers' inputs
        xs: dict[str, np.ndarray] = {}
        if taps:
            tap_names = list(taps)
            sess, feeds = self._session(_needed(nodes, tap_names), tap_names, self.quantized)
            parts: dict[str, list[np.ndarray]] = {t: [] for t in tap_names}
            for outs in self._run_batches(sess, feeds, tap_names):
                for t, o in zip(tap_names, outs, strict=True):
                    parts[t].append(np.asarray(o, np.float32).reshape(-1, o.shape[-1]))
            del sess
            xs = {t: np.concatenate(p) for t, p in parts.items()}
            del parts
        for w in new_weights:
            srcs = [t for t, ws in taps.items() if w in ws]
            x = xs[srcs[0]] if len(srcs) == 1 else np.concatenate([xs[t] for t in srcs])
            self.ready[w] = self._quantize(w, x, gptq_quantize_weight, rtn_quantize_weight, torch)
            del x
            _trim()
            if self.weight_uses.get(w, 0) > sum(1 for nm in seg.layers if by_name[nm].input[1] == w):
                self.quantized[w] = self.ready[w][:3]  # read again by a later segment
        del xs
        # run 2: the segment as it will be written, for the activations later segments read
        quantized = {**self.quantized, **{w: self.ready[w][:3] for w in new_weights}}
        if seg.outputs and seg.stop < len(self.nodes):
            outputs = [o for o in seg.outputs if self.last_read.get(o, -1) >= seg.stop]
            if outputs:
                sess, feeds = self._session(_needed(nodes, outputs), outputs, quantized)
                results: dict[str, list[np.ndarray]] = {o: [] for o in outputs}
                for outs in self._run_batches(sess, feeds, outputs):
                    for o, v in zip(outputs, outs, strict=True):
                        results[o].append(v)
                del sess
                self.acts.update(results)
        for name in [n for n in self.acts if self.last_read.get(n, -1) < seg.stop]:
            del self.acts[name]  # nothing after this segment reads it
        _trim()
        if self.on_segment is not None:
            self.on_segment(index + 1, len(self.segments))

    def _quantize(self, w: str, x: np.ndarray, gptq: Any, rtn: Any, torch: Any) -> LayerCodes:
        """GPTQ of weight ``w`` (K, N) on its inputs ``x`` (rows, K); codes plus the layer's record."""
        weight = _weight(self.inits[w], self.refs, self.what)  # (K, N) float32, read alone
        k, n = weight.shape
        xt = torch.from_numpy(x)
        h = xt.T @ xt
        h.mul_(2.0 / max(1, len(x)))
        wt = torch.from_numpy(weight).T  # (N, K) view: the nn.Linear orientation
        layer = gptq(wt, h, self.bits, self.group_size, damp=self.damp, symmetric=self.symmetric,
                     act_order=self.act_order, name=w, dtype=torch.float32)
        del h
        zeros = None if self.symmetric else layer.zeros.numpy()
        packed, scales, zpack = ob.pack_matmul_nbits(layer.q.numpy(), layer.scales.numpy(), zeros, self.bits,
                                                     self.group_size)
        err = {"gptq": 0.0, "rtn": 0.0}
        norm = 0.0
        for j in range(0, n, 4096):  # output channels a slice at a time: a 50k-wide LM head is never copied whole
            y = xt @ torch.from_numpy(weight[:, j:j + 4096])
            norm += float(y.square().sum())
            ref = rtn(wt[j:j + 4096], self.bits, self.group_size, symmetric=self.symmetric, name=w)  # row-wise
            part = type(layer)(layer.q[j:j + 4096], layer.scales[j:j + 4096], layer.zeros[j:j + 4096], self.bits,
                               layer.group_size)
            for key, res in (("gptq", part), ("rtn", ref)):
                err[key] += float((y - xt @ res.dequantize().T).square().sum())
            del y, ref, part
        del layer
        norm = norm or 1.0
        err_gptq, err_rtn = (err["gptq"] / norm) ** 0.5, (err["rtn"] / norm) ** 0.5
        cos = _cosine(weight, packed, scales, zpack if zpack is not None else np.zeros((n, 1), np.uint8), self.bits,
                      self.symmetric)
        return packed, scales, zpack, {"cosine": cos, "err_gptq": err_gptq, "err_rtn": err_rtn, "rows": len(x)}


def stream_gptq(src: str | os.PathLike[str], out: str | os.PathLike[str], calibration: dict[str, np.ndarray], *,
                bits: int = 4, group_size: int = 128, symmetric: bool = False, act_order: bool = True,
                damp: float = 0.01, batch: int = 8, include: Sequence[str] = (), exclude: Sequence[str] = (),
                threads: int | None = None, check_loads: bool = True,
                progress: Callable[[str, int, int], None] | None = None,
                on_segment: Callable[[int, int], None] | None = None,
                before_commit: Callable[[StreamReport], None] | None = None) -> StreamReport:
    """GPTQ of every selected ``MatMul`` of ``src`` to ``MatMulNBits``, segment by segment (module docstring).

    ``calibration``: the model's inputs, each an array whose first axis is the sample (e.g.
    ``input_ids`` int64 ``(samples, tokens)``), run ``batch`` samples at a time. ``bits``,
    ``group_size``, ``symmetric``, ``include``/``exclude``, ``check_loads``, ``progress`` and
    ``before_commit`` are :func:`.streaming.stream_weight_only_rtn`'s; ``act_order`` and ``damp`` are
    :func:`deepshrink.quantize.weight_only.gptq_quantize_weight`'s; ``threads``: ONNX Runtime's
    intra-op threads (default: torch's thread count, which follows ``OMP_NUM_THREADS``).
    ``on_segment(done, total)`` is called after each segment. The report's ``extra`` holds the
    segment count, the largest segment's weight bytes, the calibration size, the mean output
    errors of GPTQ and round-to-nearest and each layer's (``layer_errors``: [layer, GPTQ, RTN]). Raises :class:`InputError` for
    a bad file or bad calibration data (empty, missing inputs, not running), and what the RTN
    path raises; nothing is written on error."""
    import torch

    if not calibration:
        raise InputError("GPTQ needs calibration data: pass --data (an .npz of the model's inputs)")
    arrays = {k: np.asarray(v) for k, v in calibration.items()}
    samples = {len(v) for v in arrays.values() if v.ndim}
    if len(samples) != 1 or 0 in samples:
        raise InputError("calibration data: every input needs the same, non-zero number of samples")
    feeds = ob.split_feeds(arrays, batch)
    report = StreamReport(method="gptq")
    total = samples.pop()
    tokens = int(np.prod(next(iter(arrays.values())).shape[:2])) if next(iter(arrays.values())).ndim >= 2 else total
    report.extra.update(calibration_samples=total, calibration_rows=tokens, act_order=act_order)
    what = str(src)
    threads = threads or torch.get_num_threads()

    def make(model: onnx.ModelProto, refs: dict[str, ExternalRef], layers: frozenset[str]) -> _Driver:
        return _Driver(model, refs, layers, feeds, what=what, bits=bits, group_size=group_size, symmetric=symmetric,
                       act_order=act_order, damp=damp, threads=threads, report=report, on_segment=on_segment)

    def gate(rep: StreamReport) -> None:
        if rep.layers:
            rep.extra["err_gptq_mean"] = float(np.mean([r["err_gptq"] for r in rep.layers]))
            rep.extra["err_rtn_mean"] = float(np.mean([r["err_rtn"] for r in rep.layers]))
            rep.extra["layer_errors"] = [[r["layer"], r["err_gptq"], r["err_rtn"]] for r in rep.layers]
        if before_commit is not None:
            before_commit(rep)

    return stream_matmul_nbits(src, out, make, bits=bits, group_size=group_size, symmetric=symmetric,
                               include=include, exclude=exclude, check_loads=check_loads, progress=progress,
                               before_commit=gate, report=report)

