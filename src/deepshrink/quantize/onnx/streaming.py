"""Weight-only round-to-nearest quantization of an ONNX file larger than memory, tensor by tensor.

The graph is loaded without its external data (:func:`deepshrink.backends.onnx.load_onnx_graph`
checks every reference first: the external-data attack class of issue 17). Each ``MatMul``
weight is then read alone from its byte range (``preadv`` into one buffer, no ``mmap``, so
the file's pages never count as the process's memory), quantized with ONNX Runtime's own
``MatMulNBits`` block quantizer — the kernel its ``MatMulNBitsQuantizer`` calls, so the codes,
scales and zero points are byte-identical to the in-memory path
(:func:`deepshrink.quantize.onnx.backend.quantize_weight_only_rtn`) — and appended to the
output's external-data file before the next weight is read. Every other external tensor is
copied across in 64 MiB chunks. Peak memory is about the largest single weight (fp32) plus
its codes, whatever the model's size.

The output lands atomically: ``<out>.onnx`` and ``<out>.onnx.data`` are written in a
temporary folder beside the output, loaded once by ONNX Runtime (the file must run before it
is kept), and moved into place together.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ...backends.onnx import ExternalRef, load_onnx_graph
from ...errors import InputError, UnsupportedError
from . import backend as ob

__all__ = ["STREAM_MIN_BYTES", "LayerCodes", "StreamReport", "external_bytes", "stream_matmul_nbits",
           "stream_weight_only_rtn"]

# An ONNX source whose external data holds at least this many bytes is quantized by streaming
# (``deepshrink quantize --scheme int4-weight``): the in-memory path holds the fp32 model two to
# three times over (the loaded model, ORT's working copy, the float session of the gate).
STREAM_MIN_BYTES = 1 << 30
_ALIGN = 4096  # tensors of the output's data file start on page boundaries (ORT can map them)
_COPY_CHUNK = 64 << 20
_INLINE_BELOW = 1024  # smaller tensors stay inside the .onnx file


@dataclass
class StreamReport:
    """What :func:`stream_weight_only_rtn` did: layers, bytes in/out, worst per-layer fidelity."""

    method: str = "rtn"
    quantized_layers: int = 0
    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    float_bytes_in: int = 0  # bytes of the source's tensors (external and inline)
    bytes_out: int = 0  # bytes of the written .onnx and .data
    worst_layer: str = ""
    worst_cosine: float = 1.0  # cosine between a layer's fp32 weight and its dequantized codes
    float_left: float = 0.0  # share of the source's float weight-matrix bytes still float (Gemm, Gather, excluded)
    float_left_largest: list[str] = field(default_factory=list)  # the largest of those, by name
    layers: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # what the method adds (GPTQ: segments, calibration, errors)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "streamed": True, **self.extra, "quantized_layers": self.quantized_layers,
                "bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric, "float_bytes_in": self.float_bytes_in,
                "bytes_out": self.bytes_out, "worst_layer": self.worst_layer, "worst_cosine": self.worst_cosine,
                "float_left": self.float_left, "float_left_largest": self.float_left_largest}


def external_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes an ONNX file keeps in external data (0 when none); references are checked, nothing read."""
    _, refs = load_onnx_graph(path)
    return sum(r.length for r in refs)


def _block_quant(w: np.ndarray, bits: int, group_size: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ORT's ``MatMulNBits`` block quantizer on a (K, N) float32 weight: packed codes (N, K/g, g·bits/8)
    uint8, scales (N, K/g) float32, packed zero points (N, ⌈(K/g)·bits/8⌉) uint8."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    cfg = DefaultWeightOnlyQuantConfig(block_size=group_size, is_symmetric=symmetric, bits=bits,
                                       op_types_to_quantize=("MatMul",))
    return DefaultWeightOnlyQuantizer(cfg).qbits_block_quant(w)


def _dequantize(packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int, symmetric: bool,
                k: int) -> np.ndarray:
    """(N, K) float32 from :func:`_block_quant`'s layout (rows of the packed codes: output channels)."""
    n, blocks, _ = packed.shape
    per = 8 // bits
    mask = (1 << bits) - 1
    codes = np.stack([(packed >> (bits * j)) & mask for j in range(per)], axis=-1).reshape(n, blocks, -1)
    if symmetric:
        z = np.full((n, blocks), 1 << (bits - 1), np.float32)
    else:
        zb = np.stack([(zeros >> (bits * j)) & mask for j in range(per)], axis=-1).reshape(n, -1)[:, :blocks]
        z = zb.astype(np.float32)
    w = (codes.astype(np.float32) - z[:, :, None]) * scales.reshape(n, blocks)[:, :, None]
    return w.reshape(n, -1)[:, :k]


def _cosine(w: np.ndarray, packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int,
            symmetric: bool, rows: int = 512) -> float:
    """Cosine between the (K, N) weight and its dequantized codes, ``rows`` output channels at a time
    (a 400 MB LM head is never dequantized whole)."""
    k, n = w.shape
    dot = ww = dd = 0.0
    for i in range(0, n, rows):
        j = min(n, i + rows)
        deq = _dequantize(packed[i:j], scales[i:j], zeros[i:j], bits, symmetric, k).astype(np.float64)
        ref = w[:, i:j].T.astype(np.float64)
        dot += float(np.vdot(ref, deq))
        ww += float(np.vdot(ref, ref))
        dd += float(np.vdot(deq, deq))
    return float(dot / (np.sqrt(ww * dd) + 1e-300))


class _DataWriter:
    """Appends tensors to one external-data file and points their protos at it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = open(path, "wb")  # noqa: SIM115 - closed in close()

    def add(self, tensor: TensorProto, data: np.ndarray | bytes | Callable[[Any], int]) -> None:
        """``data``: the bytes, or a function writing them to the file object and returning their count."""
        offset = -(-self.f.tell() // _ALIGN) * _ALIGN
        self.f.seek(offset)
        if callable(data):
            length = data(self.f)
        else:
            view = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
            self.f.write(view)
            length = view.nbytes
        tensor.ClearField("raw_data")
        del tensor.external_data[:]
        tensor.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
            e = tensor.external_data.add()
            e.key, e.value = k, v

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def _copy_range(ref: ExternalRef, what: str) -> Callable[[Any], int]:
    def write(f: Any) -> int:
        done = 0
        while done < ref.length:  # chunked: a 400 MB embedding never sits in memory whole
            part = ExternalRef(ref.tensor, ref.location, ref.path, ref.offset + done,
                               min(_COPY_CHUNK, ref.length - done), ref.stat)
            f.write(memoryview(part.read_bytes(what)))
            done += part.length
        return done
    return write


def _weight(tensor: TensorProto, refs: dict[str, ExternalRef], what: str) -> np.ndarray:
    """The (K, N) float32 weight of one MatMul, read alone."""
    k, n = (int(d) for d in tensor.dims)
    ref = refs.get(tensor.name)
    if ref is not None:
        w = ref.read_bytes(what).view(np.float32).reshape(k, n)
    else:
        w = numpy_helper.to_array(tensor).astype(np.float32, copy=False).reshape(k, n)
    if not np.isfinite(w).all():
        raise InputError(f"{what}: weight {tensor.name!r} contains NaN or infinite values")
    return w


# One layer's codes in ``MatMulNBits`` layout: packed codes (N, K/g, g·bits/8) uint8, scales (N, K/g) float32,
# packed zero points (N, ⌈(K/g)·bits/8⌉) uint8 or None (symmetric: ORT's default zero point 2^(bits-1)), and
# the layer's record for the report (at least ``cosine``: the weight against its dequantized codes).
LayerCodes = tuple[np.ndarray, np.ndarray, "np.ndarray | None", dict[str, Any]]


def stream_weight_only_rtn(src: str | os.PathLike[str], out: str | os.PathLike[str], *, bits: int = 4,
                           group_size: int = 128, symmetric: bool = False, include: Sequence[str] = (),
                           exclude: Sequence[str] = (), check_loads: bool = True,
                           progress: Callable[[str, int, int], None] | None = None,
                           before_commit: Callable[[StreamReport], None] | None = None) -> StreamReport:
    """Quantize every selected ``MatMul`` with a 2-D float32 constant weight to ``MatMulNBits``, streaming.

    ``src``: an ONNX file (external data allowed, checked before any byte is read); ``out``: the
    ``.onnx`` to write, with ``<out>.data`` beside it (both replaced atomically; the caller has
    checked ``--force``). ``bits``: 2, 4 or 8; ``group_size``: one of 16…256 that divides every
    selected weight's input dimension K. Weight ``(K, N)`` becomes codes ``(N, K/g, g·bits/8)``
    uint8, scales ``(N·K/g,)`` float32 and (asymmetric) packed zero points, exactly as ONNX
    Runtime's ``MatMulNBitsQuantizer`` writes them. ``progress(layer, done, total)`` is called
    per layer; ``before_commit(report)`` runs before the files are moved into place (a gate that
    raises keeps them out). Raises :class:`InputError` for a bad file, a group size that does not divide a
    layer, NaN/inf weights or an unwritable output; :class:`UnsupportedError` for bits ONNX
    Runtime cannot store or a model that does not load after quantization. Nothing is written
    on error.
    """
    what = str(src)

    def rtn(model: Any, refs: dict[str, ExternalRef], nodes: frozenset[str]) -> Callable[[str, str], LayerCodes]:
        inits = {t.name: t for t in model.graph.initializer}

        def codes(node: str, wname: str) -> LayerCodes:
            w = _weight(inits[wname], refs, what)
            packed, scales, zeros = _block_quant(w, bits, group_size, symmetric)
            cos = _cosine(w, packed, scales, zeros, bits, symmetric)
            return packed, scales, None if symmetric else zeros, {"cosine": cos}
        return codes

    return stream_matmul_nbits(src, out, rtn, bits=bits, group_size=group_size, symmetric=symmetric,
                               include=include, exclude=exclude, check_loads=check_loads, progress=progress,
                               before_commit=before_commit)


def stream_matmul_nbits(src: str | os.PathLike[str], out: str | os.PathLike[str],
                        make_codes: Callable[[Any, dict[str, ExternalRef], frozenset[str]],
                                             Callable[[str, str], LayerCodes]], *, bits: int,
                        group_size: int, symmetric: bool, include: Sequence[str] = (), exclude: Sequence[str] = (),
                        check_loads: bool = True, progress: Callable[[str, int, int], None] | None = None,
                        before_commit: Callable[[StreamReport], None] | None = None,
                        report: StreamReport | None = None) -> StreamReport:
    """The streaming writer shared by RTN and GPTQ (:mod:`.streaming_gptq`): checks and selects the
    ``MatMul`` layers as :func:`stream_weight_only_rtn` says, then walks the graph in node order and
    asks ``codes(node, weight)`` for each selected weight's :data:`LayerCodes` (once per weight, in
    graph order), appending them to the output's data file before the next is asked for.

    ``make_codes(model, refs, nodes)`` builds ``codes``: ``model`` is a copy of the graph as loaded
    (external tensors unread; the writer edits its own), ``refs`` the checked external references by
    tensor name, ``nodes`` the selected node names. Errors and atomicity are
    :func:`stream_weight_only_rtn`'s; ``report`` (a fresh :class:`StreamReport` by default) is filled
    and returned."""
    from ...backends.onnx import make_session
    from ...core.fileio import atomic_dir

    src_p, out_p = Path(src), Path(out)
    what = str(src_p)
    if bits not in (2, 4, 8):
        raise UnsupportedError(f"ONNX Runtime's MatMulNBits stores 2, 4 or 8 bits, not {bits}")
    model, ref_list = load_onnx_graph(src_p)
    refs = {r.tensor.name: r for r in ref_list}
    ob.ensure_node_names(model)
    cands = ob.weight_nodes(model, ("MatMul",))
    cands = [c for c in cands if len(c.shape) == 2]
    nodes = set(ob.select_nodes(cands, include, exclude))
    if not nodes:
        raise InputError(f"{what}: no MatMul with a 2-D float constant weight to quantize")
    ob.check_group_size(model, sorted(nodes), group_size)
    if report is None:
        report = StreamReport()
    report.bits, report.group_size, report.symmetric = bits, group_size, symmetric
    report.float_bytes_in = sum(r.length for r in ref_list) + sum(len(t.raw_data) for t in model.graph.initializer)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    snapshot = type(model)()
    snapshot.CopyFrom(model)  # the graph only: external tensors are unread references
    codes_for = make_codes(snapshot, refs, frozenset(nodes))
    del snapshot
    uses: dict[str, int] = {}
    for nd in g.node:
        for i in nd.input:
            uses[i] = uses.get(i, 0) + 1

    with atomic_dir(out_p.parent) as stage:
        writer = _DataWriter(stage / (out_p.name + ".data"))
        try:
            new_inits: list[TensorProto] = []
            done: dict[str, list[str]] = {}  # weight -> its MatMulNBits inputs (a shared weight is quantized once)
            total = len(nodes)
            for idx, nd in enumerate(list(g.node)):
                if nd.name not in nodes:
                    continue
                wname = nd.input[1]
                if wname not in done:
                    k, n = (int(d) for d in inits[wname].dims)
                    packed, scales, zeros, record = codes_for(nd.name, wname)
                    names = [wname + f"_Q{bits}", wname + "_scales"] + ([] if zeros is None else [wname + "_zero_points"])
                    arrays = (packed, scales) if zeros is None else (packed, scales, zeros)
                    for name, arr in zip(names, arrays, strict=True):
                        t = numpy_helper.from_array(np.ascontiguousarray(arr), name)
                        if arr.nbytes >= _INLINE_BELOW:
                            writer.add(t, t.raw_data)
                        new_inits.append(t)
                    del packed, scales, zeros, arrays
                    done[wname] = names
                    report.layers.append({"layer": nd.name, "weight": wname, "shape": [k, n], **record})
                    if record["cosine"] < report.worst_cosine:
                        report.worst_cosine, report.worst_layer = record["cosine"], nd.name
                k, n = (int(d) for d in inits[wname].dims)
                new = helper.make_node("MatMulNBits", [nd.input[0], *done[wname]], list(nd.output),
                                       name=nd.name + f"_Q{bits}", domain="com.microsoft", K=k, N=n, bits=bits,
                                       block_size=group_size)
                g.node.remove(nd)
                g.node.insert(idx, new)
                uses[wname] -= 1
                report.quantized_layers += 1
                if progress is not None:
                    progress(nd.name, report.quantized_layers, total)
            def matrix_bytes(t: TensorProto) -> int:  # float tensors with two or more non-trivial axes
                width = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2}.get(t.data_type, 0)
                n = 1
                for d in t.dims:
                    n *= int(d)
                return width * n if sum(1 for d in t.dims if d > 1) >= 2 else 0

            total = sum(matrix_bytes(t) for t in g.initializer)
            left = sorted(((matrix_bytes(t), t.name) for t in g.initializer
                           if not (t.name in done and uses.get(t.name, 0) == 0) and matrix_bytes(t)), reverse=True)
            report.float_left = sum(b for b, _ in left) / total if total else 0.0
            report.float_left_largest = [name for _, name in left[:4]]
            kept: list[TensorProto] = []
            for t in g.initializer:
                if t.name in done and uses.get(t.name, 0) == 0:
                    continue  # replaced by its codes
                ref = refs.get(t.name)
                if ref is not None:
                    writer.add(t, _copy_range(ref, what))
                kept.append(t)
            del g.initializer[:]
            g.initializer.extend(kept + new_inits)
            for coll in (g.input, g.value_info):  # old IR lists initializers as inputs; the weights are gone
                for v in [v for v in coll if v.name in done and uses.get(v.name, 0) == 0]:
                    coll.remove(v)
            if not any(o.domain == "com.microsoft" for o in model.opset_import):
                model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        finally:
            writer.close()
        staged = stage / out_p.name
        staged.write_bytes(model.SerializeToString())
        report.bytes_out = staged.stat().st_size + writer.path.stat().st_size
        if check_loads:
            try:
                make_session(staged, threads=1, optimize=False)
            except InputError as exc:
                raise UnsupportedError(f"the quantized model would not load in ONNX Runtime, so nothing was "
                                       f"written ({exc})") from None
        if before_commit is not None:
            before_commit(report)
    return report

