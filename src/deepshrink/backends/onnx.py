"""ONNX / ONNX Runtime adapter: sessions with recorded thread settings, runs, IO specs."""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.handle import TensorSpec
from ..errors import InputError, first_line

_ONNX_TO_NP = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.BOOL: "bool", onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.UINT16: "uint16", onnx.TensorProto.UINT32: "uint32", onnx.TensorProto.UINT64: "uint64",
}


def value_info_specs(values: Any, exclude: set[str] | None = None) -> list[TensorSpec]:
    specs = []
    for v in values:
        if exclude and v.name in exclude:
            continue
        t = v.type.tensor_type
        dims: list[int | str] = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or "?")
        specs.append(TensorSpec(v.name, tuple(dims), _ONNX_TO_NP.get(t.elem_type, "float32")))
    return specs


def index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """Graph inputs used as ``Gather`` indices into a constant table: input name -> the table's rows.

    Follows the indices back through shape-preserving ops (Cast, Identity, Unsqueeze, Squeeze,
    Reshape, Flatten) to a graph input; the smallest table wins when one input indexes several.
    """
    g = model.graph
    inputs = {i.name for i in g.input} - {t.name for t in g.initializer}
    rows = {t.name: int(t.dims[0]) for t in g.initializer if len(t.dims) >= 1}
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and len(a.t.dims) >= 1:
                    rows[n.output[0]] = int(a.t.dims[0])
    producer = {o: n for n in g.node for o in n.output}
    out: dict[str, int] = {}
    for n in g.node:
        if n.op_type != "Gather" or len(n.input) < 2 or n.input[0] not in rows:
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if axis != 0:
            continue
        name = n.input[1]
        while name not in inputs and name in producer and producer[name].op_type in (
                "Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten"):
            name = producer[name].input[0]
        if name in inputs:
            out[name] = min(out.get(name, rows[n.input[0]]), rows[n.input[0]])
    return out


def io_specs(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inits = {i.name for i in model.graph.initializer}
    return value_info_specs(model.graph.input, inits), value_info_specs(model.graph.output)


def make_session(model: str | os.PathLike[str] | onnx.ModelProto | bytes, *, threads: int = 2,
                 optimize: bool = True, optimized_path: str | None = None, spin: bool = False) -> Any:
    """An ORT CPU session with ``threads`` intra-op threads and thread spinning off.

    Spinning is off by default: two sessions in one process otherwise steal the same
    cores from each other while idle, which distorts side-by-side timings. External data is
    checked first (:func:`check_external_data`); a bad reference raises :class:`InputError`.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # run-time warnings (a declared output shape the graph does not keep) are
    # ORT's coloured log lines on the user's terminal, once per run; errors still come back as exceptions
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # failures come back as exceptions (one line); the log repeats them in colour
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    if isinstance(model, onnx.ModelProto):
        # ORT would resolve EXTERNAL tensors of serialized bytes against the current folder
        model = inline_external_data(model, what="the model given to ONNX Runtime").SerializeToString()
    elif not isinstance(model, bytes):
        load_onnx(model, load_external=False)  # ORT reads the external data itself: check it first
        model = str(model)
    try:
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InputError(f"ONNX Runtime cannot load the model: {first_line(exc, 300)}") from None


def run_onnx(session: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a session on a dict of arrays; extra keys are ignored, missing ones are an error."""
    feed = {}
    for i in session.get_inputs():
        if i.name not in inputs:
            raise InputError(f"input {i.name!r} missing; the data provides {sorted(inputs)}")
        feed[i.name] = inputs[i.name]
    try:
        return list(session.run(None, feed))
    except Exception as exc:
        raise InputError(f"ONNX Runtime failed to run the model: {first_line(exc, 300)}") from None


def intermediate_values(model: onnx.ModelProto, names: Sequence[str], feeds: list[dict[str, np.ndarray]], *,
                        threads: int = 2) -> dict[str, list[np.ndarray]]:
    """The values of tensors ``names`` (intermediate ones, graph inputs or outputs; any dtype) in one run of
    ``model`` per feed, graph optimisations off so every tensor keeps its name: ``{name: [value per feed]}``.
    Raises what :func:`make_session` and ONNX Runtime raise (a feed missing an input: ``KeyError``)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph_inputs = {i.name for i in probe.graph.input}
    declared = {o.name for o in probe.graph.output}
    wanted = [n for n in dict.fromkeys(names) if n not in graph_inputs]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted if n not in declared)  # untyped: any dtype
    sess = make_session(probe, threads=threads, optimize=False)
    in_names = [i.name for i in sess.get_inputs()]
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for f in feeds:
        for n, v in zip(wanted, sess.run(wanted, {k: f[k] for k in in_names}) if wanted else [], strict=True):
            out[n].append(v)
        for n in names:
            if n in graph_inputs:
                out[n].append(f[n])
    return out


def load_onnx(path: str | os.PathLike[str], *, load_external: bool = True) -> onnx.ModelProto:
    """Load an ONNX file; its external data is checked before a byte of it is read.

    Every tensor stored outside the ``.onnx`` file must name, with only the keys the ONNX spec
    defines (``location``, ``offset``, ``length``, ``checksum``; ``docs/ExternalData.md`` of the
    ONNX repository), a regular file inside the model's folder: no absolute path, no ``..``, no
    symbolic link, no file with other hard links, no device, FIFO or folder, and an offset and
    length that lie inside the file and agree with the tensor's shape and dtype. These are the
    forms of CVE-2022-25882, CVE-2024-27318, CVE-2026-27489, CVE-2026-34445 and CVE-2026-34446,
    refused whatever the installed ``onnx`` guards. The bytes are then read by deepshrink itself
    (``O_NOFOLLOW``, the file re-checked after opening), never by ``onnx.load_external_data``.

    Raises :class:`InputError` (one line naming the file, tensor and problem) for a missing,
    unreadable or hostile file. ``load_external=False`` checks the references but leaves them
    unread (the tensors stay ``EXTERNAL``).
    """
    model, refs = load_onnx_graph(path)
    if load_external:
        for ref in refs:
            ref.read_into_tensor(str(path))
    return model


def load_onnx_graph(path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, list[ExternalRef]]:
    """The graph of an ONNX file with its external tensors left unread, and their checked references.

    The checks are :func:`load_onnx`'s; each :class:`ExternalRef` reads one tensor's bytes on
    demand (:meth:`ExternalRef.read_bytes`), which is how a model larger than memory is
    processed tensor by tensor. Raises :class:`InputError` as :func:`load_onnx` does."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"model file {p} does not exist")
    if not p.is_file():
        raise InputError(f"model {p} is not a regular file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise InputError(f"{p} is not a readable ONNX model ({type(exc).__name__}: {first_line(exc, 120)})") from None
    if not model.graph.node and not model.graph.output:
        raise InputError(f"{p} is not a readable ONNX model (empty graph)")
    check_text(model, what=str(p))
    refs = check_external_data(model, p.resolve().parent, what=str(p))
    check_tensor_data(model, what=str(p))
    return model, refs


def check_text(model: onnx.ModelProto, *, what: str) -> None:
    """Every name of the model is text: protobuf returns ``bytes`` for a string field that is not valid
    UTF-8, which later code would trip on. Raises :class:`InputError` naming the first such field."""

    def bad(values: Any, field: str) -> None:
        for v in values:
            if not isinstance(v, str):
                raise InputError(f"{what}: a {field} is not valid UTF-8 text ({bytes(v)[:40]!r})")

    def graph(g: Any) -> None:
        bad([g.name], "graph name")
        bad([v.name for v in (*g.input, *g.output, *g.value_info)], "graph value name")
        bad([t.name for t in g.initializer], "initializer name")
        for n in g.node:
            bad([n.op_type, n.name, n.domain, *n.input, *n.output], "node field")
            for a in n.attribute:
                bad([a.name], "attribute name")
                if a.HasField("g"):
                    graph(a.g)
                for sub in a.graphs:
                    graph(sub)

    bad([o.domain for o in model.opset_import], "opset domain")
    bad([v for p in model.metadata_props for v in (p.key, p.value)], "metadata entry")
    graph(model.graph)
    for f in model.functions:
        bad([f.name, f.domain, *f.input, *f.output], "function field")
        for n in f.node:
            bad([n.op_type, n.name, n.domain, *n.input, *n.output], "node field")
    for t in all_tensors(model):
        bad([t.name, *(v for e in t.external_data for v in (e.key, e.value))], "tensor name or external-data entry")


def normalize_onnx(model: onnx.ModelProto) -> list[str]:
    """Normalise a graph written by another toolchain, in place; returns what was changed, as words.

    1. Floating-point ``Constant`` nodes of the main graph (how Paddle2ONNX and others store
       weights) become initializers, so parameter counts, quantizers and pruners see them as
       weights; the computation is unchanged (ONNX IR: a Constant and an initializer are the same
       value). Below IR version 4 each new initializer is also declared a graph input, as that IR
       requires.
    2. Then (only when step 1 changed something) ONNX shape inference
       (``onnx.shape_inference.infer_shapes``) fills ``value_info`` where it can; a graph it
       rejects, or one past protobuf's 2 GB, is kept as it was.

    ORT's offline graph optimisations (constant folding, Conv+BN fusion) are not applied here:
    they change what ``info`` reports as the file's parameters; quantization runs them in its own
    pre-processing.
    """
    notes: list[str] = []
    g = model.graph
    graph_outputs = {o.name for o in g.output}
    keep, moved = [], []
    for n in g.node:
        val = next((a.t for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if (n.op_type == "Constant" and n.domain in ("", "ai.onnx") and not n.input and len(n.output) == 1
                and val is not None and n.output[0] not in graph_outputs
                and val.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                                      onnx.TensorProto.BFLOAT16)):
            t = onnx.TensorProto()
            t.CopyFrom(val)
            t.name = n.output[0]
            moved.append(t)
        else:
            keep.append(n)
    if moved:
        del g.node[:]
        g.node.extend(keep)
        g.initializer.extend(moved)
        if model.ir_version < 4:
            g.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in moved)
        elems = sum(int(np.prod(t.dims)) for t in moved)
        notes.append(f"{len(moved)} Constant nodes holding weights ({elems:,} elements) read as initializers")
    if moved and model.ByteSize() < 1_800_000_000:  # a graph that needed no change is left as it is (and fast)
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:
            inferred = None
        if inferred is not None:
            model.graph.CopyFrom(inferred.graph)
    return notes


# The keys of an external-data entry the ONNX spec defines (onnx/docs/ExternalData.md); any other key is
# refused: onnx < 1.21 set each key as an attribute of its reader object (CVE-2026-34445).
EXTERNAL_DATA_KEYS = frozenset({"location", "offset", "length", "checksum", "basepath"})
# Beyond this size a model is written with its tensors in a side file (protobuf's limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


class ExternalRef:
    """One tensor's external data, checked: a regular file inside the model's folder and a byte range in it."""

    def __init__(self, tensor: onnx.TensorProto, location: str, path: Path, offset: int, length: int,
                 stat: os.stat_result) -> None:
        self.tensor, self.location, self.path = tensor, location, path
        self.offset, self.length, self.stat = offset, length, stat

    def read_into_tensor(self, what: str) -> None:
        """Read the range into ``tensor.raw_data`` and make the tensor self-contained.

        Opened with ``O_NOFOLLOW | O_NONBLOCK`` and re-checked (same inode, a regular file, one
        link) so a file swapped after the check is refused, not read."""
        self.tensor.raw_data = self.read_bytes(what).tobytes()
        del self.tensor.external_data[:]
        self.tensor.data_location = onnx.TensorProto.DEFAULT

    def read_bytes(self, what: str) -> np.ndarray:
        """The range's bytes as a new uint8 array of ``length`` (the tensor is left as it is).

        One buffer of exactly ``length`` bytes is allocated (checked against the file before),
        filled with ``preadv``; the file is opened and re-checked as in :meth:`read_into_tensor`."""
        import stat as st

        name = self.tensor.name
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags)
        except OSError as exc:
            raise InputError(f"{what}: external data file {self.location!r} (tensor {name!r}) cannot be opened "
                             f"({type(exc).__name__}: {exc.strerror})") from None
        try:
            now = os.fstat(fd)
            if (not st.S_ISREG(now.st_mode) or now.st_nlink != 1 or now.st_ino != self.stat.st_ino
                    or now.st_dev != self.stat.st_dev or now.st_size < self.offset + self.length):
                raise InputError(f"{what}: external data file {self.location!r} (tensor {name!r}) changed "
                                 "while it was being loaded")
            buf = np.empty(self.length, np.uint8)
            view = memoryview(buf)
            done = 0
            while done < self.length:
                got = os.preadv(fd, [view[done:done + (1 << 28)]], self.offset + done)
                if got <= 0:
                    raise InputError(f"{what}: external data file {self.location!r} (tensor {name!r}) "
                                     "ended early")
                done += got
        finally:
            os.close(fd)
        return buf


def all_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every TensorProto of a model: initializers, sparse initializers (values and indices), node
    attributes (``t``, ``tensors``, sparse ones) in the graph, its subgraphs and the model's functions."""
    out: list[onnx.TensorProto] = []

    def sparse(s: Any) -> None:
        out.extend((s.values, s.indices))

    def nodes(ns: Any) -> None:
        for n in ns:
            for a in n.attribute:
                if a.HasField("t"):
                    out.append(a.t)
                out.extend(a.tensors)
                if a.HasField("sparse_tensor"):
                    sparse(a.sparse_tensor)
                for s in a.sparse_tensors:
                    sparse(s)
                if a.HasField("g"):
                    graph(a.g)
                for g in a.graphs:
                    graph(g)

    def graph(g: Any) -> None:
        out.extend(g.initializer)
        for s in g.sparse_initializer:
            sparse(s)
        nodes(g.node)

    graph(model.graph)
    for f in model.functions:
        nodes(f.node)
    return out


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Tensors that refer to external data (marked ``EXTERNAL`` or carrying external-data entries)."""
    return [t for t in all_tensors(model)
            if (t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL) or len(t.external_data)]


def _entries(tensor: onnx.TensorProto, what: str) -> dict[str, str]:
    """A tensor's external-data entries as a dict; unknown or repeated keys refused."""
    name = tensor.name
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        raise InputError(f"{what}: tensor {name!r} carries external-data entries but is not marked EXTERNAL")
    entries: dict[str, str] = {}
    for e in tensor.external_data:
        if not isinstance(e.key, str) or not isinstance(e.value, str):  # protobuf hands back bytes for invalid UTF-8
            raise InputError(f"{what}: tensor {name!r} has an external-data entry that is not valid UTF-8 text")
        if e.key not in EXTERNAL_DATA_KEYS:
            raise InputError(f"{what}: tensor {name!r} has an unknown external-data key {e.key[:40]!r} "
                             f"(allowed: {', '.join(sorted(EXTERNAL_DATA_KEYS))})")
        if e.key in entries:
            raise InputError(f"{what}: tensor {name!r} repeats the external-data key {e.key!r}")
        entries[e.key] = e.value
    return entries


def check_location(location: str | None, tensor: str, what: str) -> str:
    """A safe relative file name for external data, or one-line :class:`InputError` saying why not.

    Refused: missing/empty, NUL or control characters, absolute paths (POSIX, Windows drive or
    UNC), any ``..`` component (both separators)."""
    if location is None or not location.strip():
        raise InputError(f"{what}: tensor {tensor!r} is stored externally but names no location")
    if any(ord(c) < 32 for c in location):
        raise InputError(f"{what}: external data location of tensor {tensor!r} contains control characters")
    shown = location[:80]
    parts = location.replace("\\", "/").split("/")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
        raise InputError(f"{what}: external data location {shown!r} of tensor {tensor!r} is an absolute path; "
                         "it must be a file inside the model's folder")
    if ".." in parts:
        raise InputError(f"{what}: external data location {shown!r} of tensor {tensor!r} escapes the model's "
                         "folder ('..')")
    return location


def _int_entry(entries: dict[str, str], key: str, tensor: str, what: str) -> int | None:
    raw = entries.get(key)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise InputError(f"{what}: external data {key} {raw[:40]!r} of tensor {tensor!r} is not a "
                         "non-negative integer")
    return int(raw)


# Sub-byte element types, packed several to a byte (ONNX IR spec): elements per byte.
_PACKED = {"INT4": 2, "UINT4": 2, "FLOAT4E2M1": 2, "INT2": 4, "UINT2": 4}
# Element types stored as whole bytes, itemsize each.
_WHOLE_BYTES = ("FLOAT", "UINT8", "INT8", "UINT16", "INT16", "INT32", "INT64", "BOOL", "FLOAT16", "DOUBLE", "UINT32",
                "UINT64", "COMPLEX64", "COMPLEX128", "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
                "FLOAT8E5M2FNUZ", "FLOAT8E8M0")


def _expected_bytes(tensor: onnx.TensorProto, what: str) -> int | None:
    """Bytes the tensor's dims and dtype need; None for strings, UNDEFINED and types not known here
    (callers refuse those as raw or external data)."""
    if any(d < 0 for d in tensor.dims):
        raise InputError(f"{what}: tensor {tensor.name!r} has a negative dimension {list(tensor.dims)}")
    n = 1
    for d in tensor.dims:
        n *= int(d)
    try:
        type_name = onnx.TensorProto.DataType.Name(tensor.data_type)
    except ValueError:
        return None
    if type_name == "UNDEFINED":
        return None
    if type_name in _PACKED:
        return -(-n // _PACKED[type_name])
    if type_name in ("FLOAT6E2M3", "FLOAT6E3M2"):  # 6-bit elements, packed
        return -(-6 * n // 8)
    if type_name not in _WHOLE_BYTES:
        return None
    return n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


# The typed field a tensor without raw_data keeps its values in (ONNX IR, onnx.proto's TensorProto), and
# how many entries of it one element takes (complex: two) or how many elements one entry packs (4/2-bit).
_TYPED_FIELD = {"FLOAT": "float_data", "COMPLEX64": "float_data", "DOUBLE": "double_data", "COMPLEX128": "double_data",
                "INT64": "int64_data", "UINT32": "uint64_data", "UINT64": "uint64_data", "STRING": "string_data"}


def _typed_entries(type_name: str, n: int) -> tuple[str, int]:
    """The typed field and the entry count ``n`` elements of ``type_name`` need without raw_data."""
    field = _TYPED_FIELD.get(type_name, "int32_data")  # int8..int32, bool, float16, bfloat16, float8, 4-/2-bit
    if type_name.startswith("COMPLEX"):
        return field, 2 * n
    if type_name in _PACKED:
        return field, -(-n // _PACKED[type_name])
    return field, n


def check_tensor_data(model: onnx.ModelProto, *, what: str) -> None:
    """Every tensor of the model that is not external holds exactly the data its dims and dtype need.

    Refused (:class:`InputError`, one line): an undefined or unknown data type, a negative
    dimension, ``raw_data`` whose byte count is not ``prod(dims) × itemsize`` (packed for
    4-/2-bit types), or a typed field (``float_data``, ``int32_data``, ...) with the wrong number
    of entries. Counts are Python integers: a huge dimension is refused, never allocated.
    External tensors are checked by :func:`check_external_data`."""
    for tensor in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        name = tensor.name[:60]
        try:
            type_name = onnx.TensorProto.DataType.Name(tensor.data_type)
        except ValueError:
            type_name = ""
        if not type_name or type_name == "UNDEFINED":
            raise InputError(f"{what}: tensor {name!r} has an unknown data type {tensor.data_type}")
        if any(d < 0 for d in tensor.dims):
            raise InputError(f"{what}: tensor {name!r} has a negative dimension {list(tensor.dims)[:8]}")
        n = 1
        for d in tensor.dims:
            n *= int(d)
        if tensor.HasField("raw_data"):
            want = _expected_bytes(tensor, what)
            if want is None:
                raise InputError(f"{what}: tensor {name!r} stores {type_name} values as raw bytes, which that type "
                                 "does not allow")
            if want != len(tensor.raw_data):
                raise InputError(f"{what}: tensor {name!r} of shape {list(tensor.dims)[:8]} ({type_name}) needs "
                                 f"{want} bytes but holds {len(tensor.raw_data)}")
            continue
        field, entries = _typed_entries(type_name, n)
        have = len(getattr(tensor, field))
        if have != entries:
            raise InputError(f"{what}: tensor {name!r} of shape {list(tensor.dims)[:8]} ({type_name}) needs "
                             f"{entries} values but holds {have}")


def check_external_data(model: onnx.ModelProto, base: str | os.PathLike[str], *, what: str) -> list[ExternalRef]:
    """Check every external-data reference of ``model`` against the folder ``base``, reading nothing.

    Only ``lstat`` is called on the paths (no ``open``), so a FIFO or a device is refused without
    blocking. Returns one :class:`ExternalRef` per external tensor; raises :class:`InputError`
    for the first bad one (see :func:`load_onnx` for the rules)."""
    import stat as st

    base_p = Path(base)
    refs = []
    for tensor in _external_tensors(model):
        name = tensor.name
        entries = _entries(tensor, what)
        location = check_location(entries.get("location"), name, what)
        if entries.get("basepath"):
            raise InputError(f"{what}: tensor {name!r} sets an external-data basepath "
                             f"({entries['basepath'][:60]!r}); external data is read only from the model's folder")
        offset = _int_entry(entries, "offset", name, what) or 0
        length = _int_entry(entries, "length", name, what)
        path = base_p
        info = None
        for part in (p for p in location.replace("\\", "/").split("/") if p not in ("", ".")):
            path = path / part
            try:
                info = os.lstat(path)
            except OSError:
                raise InputError(f"{what}: external data file {location!r} (tensor {name!r}) is missing") from None
            if st.S_ISLNK(info.st_mode):
                raise InputError(f"{what}: external data location {location!r} of tensor {name!r} goes through a "
                                 f"symbolic link ({path.name}); it must be a plain file inside the model's folder")
        if info is None:
            raise InputError(f"{what}: tensor {name!r} is stored externally but names no file")
        if not st.S_ISREG(info.st_mode):
            kind = ("a folder" if st.S_ISDIR(info.st_mode) else "a FIFO" if st.S_ISFIFO(info.st_mode)
                    else "a device" if st.S_ISCHR(info.st_mode) or st.S_ISBLK(info.st_mode)
                    else "a socket" if st.S_ISSOCK(info.st_mode) else "not a regular file")
            raise InputError(f"{what}: external data location {location!r} of tensor {name!r} is {kind}, "
                             "not a regular file")
        if info.st_nlink != 1:
            raise InputError(f"{what}: external data file {location!r} of tensor {name!r} has {info.st_nlink} hard "
                             "links; a hard link can reach a file outside the model's folder")
        size = info.st_size
        if offset > size:
            raise InputError(f"{what}: external data offset {offset} of tensor {name!r} is past the end of "
                             f"{location!r} ({size} bytes)")
        available = size - offset
        if length is not None and length > available:
            raise InputError(f"{what}: external data of tensor {name!r} ({length} bytes from offset {offset}) runs "
                             f"past the end of {location!r} ({size} bytes)")
        nbytes = available if length is None else length
        want = _expected_bytes(tensor, what)
        if want is None:
            raise InputError(f"{what}: tensor {name!r} of data type {tensor.data_type} cannot be stored externally "
                             "(an undefined, unknown or string type)")
        if want != nbytes:
            raise InputError(f"{what}: tensor {name!r} needs {want} bytes for shape {list(tensor.dims)}, but its "
                             f"external data holds {nbytes}")
        refs.append(ExternalRef(tensor, location, path, offset, nbytes, info))
    return refs


def external_files(path: str | os.PathLike[str]) -> list[Path]:
    """The external-data files an ONNX file on disk refers to (each checked as by :func:`load_onnx`)."""
    p = Path(path)
    model = onnx.load(str(p), load_external_data=False)
    refs = check_external_data(model, p.resolve().parent, what=str(p))
    return sorted({p.parent / r.location for r in refs})


def inline_external_data(model: onnx.ModelProto, *, what: str = "the model") -> onnx.ModelProto:
    """Make a model in memory self-contained before it is written or handed to a runtime.

    A tensor marked ``EXTERNAL`` whose bytes are already loaded (``raw_data``) is turned back into
    an ordinary tensor, so ``onnx.save_model`` never writes it to the ``location`` it names (the
    write form, CVE-2025-51480); one whose bytes are not loaded, or with a location that is
    absolute, has ``..`` or unknown keys, is refused (:class:`InputError`): its data cannot be
    carried, and its location is not deepshrink's to trust. Changes ``model`` in place; returns it.
    """
    for tensor in _external_tensors(model):
        entries = _entries(tensor, what) if tensor.data_location == onnx.TensorProto.EXTERNAL else {}
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            check_location(entries.get("location"), tensor.name, what)
            if not tensor.HasField("raw_data"):
                raise InputError(f"{what}: tensor {tensor.name!r} refers to external data "
                                 f"{entries.get('location', '')[:80]!r} that is not loaded; load the model "
                                 "from its file (deepshrink.load(path)) so the data is checked and read")
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    return model


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write a self-contained ONNX file atomically (external data only past protobuf's 2 GB).

    Tensors the model marks ``EXTERNAL`` are first made ordinary (:func:`inline_external_data`):
    the only external-data file ever written is ``<name>.data`` beside the output, chosen here.
    Raises :class:`InputError` for a tensor whose external data is not loaded or names an unsafe
    location."""
    from ..core.fileio import atomic_path

    target = Path(path)
    inline_external_data(model, what=f"writing {target}")
    big = model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    if big:
        from onnx.external_data_helper import set_external_data

        from ..core.fileio import atomic_dir

        with atomic_dir(target.parent) as tmp:
            # set the entries here: onnx's convert_model_to_external_data refuses a location that exists
            # relative to the current directory (not the model's), which has nothing to do with this write
            for tensor in model.graph.initializer:
                if tensor.HasField("raw_data") and len(tensor.raw_data) >= 1024:
                    set_external_data(tensor, target.name + ".data")
            onnx.save_model(model, str(tmp / target.name))
        return
    with atomic_path(target) as tmp:
        onnx.save_model(model, str(tmp))


def symbolic_shapes(m: onnx.ModelProto) -> onnx.ModelProto | None:
    """``m`` with shapes inferred: ONNX Runtime's symbolic shape inference, which follows
    Shape → Gather → Concat → Reshape chains that ``onnx.shape_inference`` loses (FLOPs at a given
    size, the ONNX → PyTorch importer's ranks); else ONNX's own (``data_prop``); None if both fail."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference, get_opset

        # SymbolicShapeInference.infer_shapes' own loop, minus its last step: when inference is incomplete it
        # saves "sym_shape_infer_temp.onnx" and a data file per tensor into the current directory (ORT 1.2x)
        opset = get_opset(m)
        if opset and opset >= 7:
            sym = SymbolicShapeInference(2**31 - 1, True, False, 0)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                sym._preprocess(m)
                complete = False
                while sym.run_:
                    complete = sym._infer_impl()
                sym._update_output_from_vi()
            if complete:
                return sym.out_mp_
    except Exception:  # an op it does not know, a custom domain, another ORT version: fall back
        pass
    try:
        return onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:
        return None
