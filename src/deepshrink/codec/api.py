"""``pack`` and ``unpack``: a model to a ``.dsz`` file and back, bit-exactly.

A torch model travels as its ``package.module:factory`` string plus its state dict (never
a pickle); an ONNX model as its graph with the initializer data stripped (zlib) plus the
initializers. ``unpack`` needs nothing but the file.
"""

from __future__ import annotations

import copy
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.handle import ModelHandle
from ..core.result import Result, VerbReport
from ..errors import InputError, UnsupportedError
from . import container
from .compress import TensorStats, compress_arrays, compress_torch
from .config import DeepCompressionConfig, PackConfig

_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_PAPER_GAP_BITS = {"fc": 5, "conv": 8}
_TORCH_OK = {torch.float32, torch.float16, torch.float64, torch.int64, torch.int32, torch.int16, torch.int8,
             torch.uint8, torch.bool}  # Han et al.'s relative-index widths, for the "pruned" stage


@dataclass
class PackResult(Result):
    """What :func:`pack` wrote (a :class:`~deepshrink.core.result.Result`: ``output`` the file,
    ``report`` the common record, ``save`` writes the decoded model as .onnx/.pt2/.safetensors). ``nbytes``: the file's size; ``fp32_bytes``: 4 bytes per
    parameter of the original model (for ONNX: per float initializer element);
    ``ratio = fp32_bytes / nbytes``. ``stages``: bytes after each Deep Compression stage
    (``pruned``: computed as the paper counts — fp32 non-zeros plus relative indices of 5
    (FC) / 8 (conv) bits, other tensors fp32; ``quantized``: this container with
    fixed-length codes; ``huffman``: the file). ``model``: the pre-pack quantized model
    (a handle) and ``tensors`` its tensors (name → numpy), which the file decodes to exactly."""

    path: Path | None
    nbytes: int
    fp32_bytes: int
    records: list[container.RecordInfo]
    stats: list[TensorStats] = field(default_factory=list)
    stages: dict[str, int] = field(default_factory=dict)
    model: ModelHandle | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def ratio(self) -> float:
        return self.fp32_bytes / max(self.nbytes, 1)

    @property
    def output(self) -> Path | None:  # type: ignore[override]
        return self.path

    @property
    def report(self) -> VerbReport:  # type: ignore[override]
        lossy = bool(self.stats)
        return VerbReport("pack", "deep-compression" if lossy else "lossless",
                          f"{self.nbytes:,} bytes, {self.ratio:.1f}× smaller than the fp32 weights",
                          layers=[st.to_dict() for st in self.stats],
                          measurements={"nbytes": self.nbytes, "fp32_bytes": self.fp32_bytes, "ratio": self.ratio,
                                        "stages": self.stages},
                          details=self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None, "nbytes": self.nbytes, "fp32_bytes": self.fp32_bytes,
                "ratio": self.ratio, "stages": self.stages, "seconds": self.seconds,
                "records": [r.__dict__ for r in self.records], "stats": [s.to_dict() for s in self.stats]}


@dataclass
class UnpackResult:
    """A decoded file: ``tensors`` (name → numpy array, original dtype and shape) and the
    source — ``"torch"`` with ``factory`` (``package.module:factory``), ``"onnx"`` with
    ``onnx_model`` (a ``ModelProto`` with every initializer filled in), or ``"tensors"``."""

    source_kind: str
    tensors: dict[str, np.ndarray]
    records: list[container.RecordInfo]
    factory: str | None = None
    onnx_model: Any = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.array(v)) for k, v in self.tensors.items()}

    def build(self, *, trust_remote_code: bool = False) -> nn.Module | Any:
        """The runnable model: the ONNX ``ModelProto``, or the torch module built by the
        factory with the decoded state dict. A factory outside ``deepshrink`` is imported
        only with ``trust_remote_code=True`` (importing runs that module's code)."""
        if self.source_kind == "onnx":
            return self.onnx_model
        if self.source_kind != "torch" or self.factory is None:
            raise InputError("this file holds tensors only (no model description); use .state_dict()")
        if not self.factory.startswith("deepshrink.") and not trust_remote_code:
            raise InputError(f"building the model imports {self.factory.split(':')[0]!r}; pass "
                             "trust_remote_code=True (CLI --trust-remote-code) to allow it, or write .safetensors")
        from ..loading import load

        module = load(self.factory).model
        try:
            module.load_state_dict(self.state_dict(), strict=True)
        except RuntimeError as exc:
            raise InputError(f"the file's tensors do not fit {self.factory}: {str(exc).splitlines()[0][:200]}") from None
        return module.eval()

    def save(self, output: str | os.PathLike[str], *, force: bool = False) -> Path:
        """Write ``.onnx`` (ONNX sources) or ``.safetensors`` (any source), atomically."""
        from ..core.fileio import check_output, write_bytes_atomic

        out = check_output(output, force=force)
        suffix = out.suffix.lower()
        if suffix == ".onnx":
            if self.source_kind != "onnx":
                raise InputError(f"this file holds a {self.source_kind} model; write .safetensors (then "
                                 f"`deepshrink convert {self.factory or 'module:factory'} out.onnx -w it.safetensors`)")
            write_bytes_atomic(out, self.onnx_model.SerializeToString())
        elif suffix == ".safetensors":
            from safetensors.numpy import save

            meta = {"deepshrink.factory": self.factory} if self.factory else None
            write_bytes_atomic(out, save({k: np.ascontiguousarray(v) for k, v in self.tensors.items()}, metadata=meta))
        else:
            raise InputError(f"output {out}: unpack writes .onnx or .safetensors, not {suffix!r}")
        return out


# -- sources --------------------------------------------------------------------------------
def _strip_onnx(model: Any) -> tuple[bytes, dict[str, np.ndarray]]:
    """Initializers → arrays; the graph keeps each initializer's name, type and dims only."""
    from onnx import numpy_helper

    stripped = copy.deepcopy(model)
    tensors: dict[str, np.ndarray] = {}
    for init in stripped.graph.initializer:
        try:
            arr = numpy_helper.to_array(init)
        except Exception as exc:  # noqa: BLE001 - external data not loaded, odd types
            raise InputError(f"initializer {init.name!r} cannot be read ({type(exc).__name__})") from None
        if not container.supported(arr.dtype) or init.name in tensors:
            continue  # strings, bfloat16, unsigned > 8 bits and duplicates stay in the graph as they are
        tensors[init.name] = arr
        for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            init.ClearField(f)
        init.ClearField("external_data")
        init.data_location = 0
    return stripped.SerializeToString(), tensors


def _fill_onnx(graph_bytes: bytes, tensors: dict[str, np.ndarray], what: str) -> Any:
    import onnx
    from onnx import helper

    try:
        model = onnx.load_from_string(graph_bytes)
    except Exception as exc:  # noqa: BLE001 - a forged description
        raise InputError(f"{what}: the ONNX graph cannot be parsed ({type(exc).__name__})") from None
    from onnx.external_data_helper import uses_external_data

    from ..backends.onnx import _external_tensors

    if _external_tensors(model) or any(uses_external_data(t) for t in model.graph.initializer):
        raise InputError(f"{what}: the ONNX graph refers to external data files; a .dsz carries every tensor itself")
    seen = set()
    for init in model.graph.initializer:
        arr = tensors.get(init.name)
        if arr is None:
            continue
        try:
            want = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type))
        except Exception:  # noqa: BLE001
            raise InputError(f"{what}: initializer {init.name!r} has an unknown data type") from None
        if want != arr.dtype or tuple(init.dims) != arr.shape:
            raise InputError(f"{what}: tensor {init.name!r} is {arr.dtype}{list(arr.shape)} but the graph "
                             f"declares {want}{list(init.dims)}")
        init.raw_data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        seen.add(init.name)
    missing = set(tensors) - seen
    if missing:
        raise InputError(f"{what}: tensor {sorted(missing)[0]!r} is not an initializer of the graph")
    return model


def _source(model: Any) -> tuple[str, Any, str | None]:
    """(kind, model object, factory string) for whatever the caller passed."""
    from ..loading import load

    if isinstance(model, (str, os.PathLike)) or type(model).__name__ == "ModelProto":
        model = load(model)
    if isinstance(model, ModelHandle):
        if model.kind == "onnx":
            return "onnx", model.model, None
        spec = model.source if model.source and _FACTORY.fullmatch(model.source) else None
        return "torch", model.model, spec
    if isinstance(model, nn.Module):
        return "torch", model, None
    raise InputError(f"cannot pack a {type(model).__name__}; pass an nn.Module, a model handle, an ONNX model "
                     "or a path / package.module:factory")


def _compress_imported(model: Any, config: DeepCompressionConfig, data: Any, *, seed: int, progress: bool
                       ) -> tuple[bytes, dict[str, np.ndarray], list[TensorStats]]:
    """Deep Compression of an ONNX model with fine-tuning: its PyTorch import
    (:func:`deepshrink.convert.onnx2torch.route.trainable_handle`) is pruned and weight-shared with training
    (:func:`compress_torch`), then exported back to ONNX — export moves weights without changing their values, so
    each tensor keeps its zeros and shared values and is coded as compactly as a PyTorch source's. Returns the
    weight-stripped graph, its tensors and the per-tensor statistics."""
    from ..convert.export import export_onnx
    from ..convert.onnx2torch.route import trainable_handle
    from ..loading import load
    from ..train.batchnorm import batchnorm_for_training, fold_batchnorm

    handle = model if isinstance(model, ModelHandle) else load(model)
    imported = trainable_handle(handle)
    module = copy.deepcopy(imported.model)
    train = _train_data(data)
    # the exporter folded the BatchNorms away: put back for pruning's training (as prune's fine-tune does) and
    # folded into the convolutions again before the weights are shared, so the file has the source's structure
    steps = config.prune_epochs * -(-len(train[-1]) // config.batch_size)
    pairs = batchnorm_for_training(module, train[:-1], config.batch_size, steps=steps)
    stats = compress_torch(module, config, data=train, seed=seed, progress=progress,
                           after_pruning=lambda m: fold_batchnorm(m, pairs))
    exported = export_onnx(imported.with_model(module.eval()), None, None).model
    graph, tensors = _strip_onnx(exported)
    return graph, tensors, stats


def _train_data(data: Any) -> tuple[Any, ...] | None:
    if data is None:
        return None
    if isinstance(data, (tuple, list)):
        return tuple(data)
    inputs, labels = getattr(data, "inputs", None), getattr(data, "labels", None)
    if inputs is None or labels is None:
        raise InputError("fine-tuning needs labelled data ((x, y) arrays or a dataset with labels)")
    return (*[np.asarray(v) for v in inputs.values()], np.asarray(labels))


def _pruned_bytes(tensors: dict[str, np.ndarray], kinds: dict[str, str]) -> int:
    """The paper's "after pruning" accounting: fp32 non-zeros + relative indices with fillers."""
    total = 0
    for name, a in tensors.items():
        kind = kinds.get(name, "other")
        if kind in _PAPER_GAP_BITS and a.dtype.kind == "f" and a.size and (a == 0).mean() > 0.5:
            w = _PAPER_GAP_BITS[kind]
            nz = np.flatnonzero(a.reshape(-1))
            g, _ = container._sparse_entries(nz, np.zeros(len(nz), np.int64), a.size, 0, w)
            total += (len(g) * (32 + w) + 7) // 8
        else:
            total += a.size * (4 if a.dtype.kind == "f" else a.dtype.itemsize)
    return total


# -- verbs ----------------------------------------------------------------------------------
def pack(model: Any, config: PackConfig | None = None, *, output: str | os.PathLike[str] | None = None,
         data: Any = None, factory: str | None = None, force: bool = False, seed: int = 0,
         progress: bool = False, stages: bool = False) -> PackResult:
    """Compress ``model`` per ``config`` and write it as a ``.dsz`` container.

    ``model``: an ``nn.Module`` (with ``factory="package.module:factory"`` so unpack can
    rebuild it; otherwise only its tensors travel), a torch handle from
    ``package.module:factory``, an ONNX ``ModelProto``/handle, or a path. ``config``:
    :class:`PackConfig` (lossless, default) or :class:`DeepCompressionConfig` (prune →
    trained quantization → Huffman; Han et al., ICLR 2016). ``data``: ``(x..., y)``
    arrays or a labelled dataset for fine-tuning (an ONNX model: as its PyTorch import, exported back to ONNX;
    without labelled ``data`` or with no training epochs, pruned and weight-shared one-shot on its initializers,
    whose names the config's layer patterns then match). The input model is never
    modified. ``output`` ``None``: nothing is written (sizes are still measured).
    ``stages=True`` also measures the paper's per-stage sizes (a second, fixed-length
    encoding). Raises :class:`InputError` for bad input; writes atomically.
    """
    config = config or PackConfig()
    if not isinstance(config, PackConfig):
        raise InputError(f"pack takes a PackConfig or DeepCompressionConfig, not {type(config).__name__}")
    out = None
    if output is not None:
        from ..core.fileio import check_output

        src_path = model if isinstance(model, (str, os.PathLike)) and Path(str(model)).exists() else None
        out = check_output(output, inputs=(src_path,), force=force)
        if out.suffix.lower() != ".dsz":
            raise InputError(f"output {out}: packed files end in .dsz")
    kind, obj, spec = _source(model)
    spec = factory or spec
    if factory is not None and not _FACTORY.fullmatch(factory):
        raise InputError(f"factory {factory!r} is not package.module:function")
    t0 = time.perf_counter()
    stats: list[TensorStats] = []
    kinds: dict[str, str] = {}
    if kind == "torch":
        module = copy.deepcopy(obj)
        if isinstance(config, DeepCompressionConfig):
            stats = compress_torch(module, config, data=_train_data(data), seed=seed, progress=progress)
        fp32 = 4 * sum(p.numel() for p in obj.parameters())
        state = module.state_dict()
        for k, v in state.items():
            if v.dtype not in _TORCH_OK:
                raise UnsupportedError(f"tensor {k!r} is {v.dtype}; .dsz holds float16/32/64, int8–64, uint8 and bool")
        order = [k for k in obj.state_dict() if k in state] + [k for k in state if k not in obj.state_dict()]
        tensors = {k: state[k].detach().cpu().numpy() for k in order}  # the original's order
        source_kind, source = ("torch", spec.encode()) if spec else ("tensors", b"")
        handle = ModelHandle(module, "torch", [], source=spec)
    else:
        graph, tensors = _strip_onnx(obj)
        fp32 = 4 * sum(a.size for a in tensors.values() if a.dtype.kind == "f")
        if fp32 == 0:
            raise UnsupportedError("the ONNX model has no float initializers to compress (its weights are probably "
                                   "Constant nodes, as Paddle2ONNX and some TF exports write them)")
        trains = isinstance(config, DeepCompressionConfig) and (config.prune_epochs or config.finetune_epochs)
        labelled = isinstance(data, (tuple, list)) or getattr(data, "labels", None) is not None
        if trains and labelled:  # fine-tuned as its PyTorch import; otherwise one-shot on the arrays
            graph, tensors, stats = _compress_imported(model, config, data, seed=seed, progress=progress)
        elif isinstance(config, DeepCompressionConfig):
            tensors, stats = compress_arrays(tensors, config, seed=seed)
        source_kind, source = "onnx", graph
        handle = ModelHandle(_fill_onnx(graph, tensors, "packed model"), "onnx", [], source="<packed>")
    for s in stats:
        kinds[s.name] = s.kind
    t1 = time.perf_counter()
    blob, records = container.encode(tensors, source_kind=source_kind, source=source,  # type: ignore[arg-type]
                                     entropy=config.entropy, gap_bits=config.gap_bits)
    t2 = time.perf_counter()
    stage_sizes: dict[str, int] = {}
    if stages:
        fixed, _ = container.encode(tensors, source_kind=source_kind, source=source,  # type: ignore[arg-type]
                                    entropy="fixed", gap_bits=config.gap_bits)
        stage_sizes = {"fp32": fp32, "pruned": _pruned_bytes(tensors, kinds), "quantized": len(fixed),
                       "huffman": len(blob)}
    if out is not None:
        from ..core.fileio import write_bytes_atomic

        write_bytes_atomic(out, blob)
    return PackResult(out, len(blob), fp32, records, stats, stage_sizes, handle,
                      {"compress": t1 - t0, "encode": t2 - t1}, tensors)


def unpack(src: str | os.PathLike[str] | bytes, output: str | os.PathLike[str] | None = None, *,
           force: bool = False, max_ratio: int = container.MAX_RATIO) -> UnpackResult:
    """Decode a ``.dsz`` file (a path or its bytes); with ``output``, also write ``.onnx``
    (ONNX sources) or ``.safetensors``. The file is treated as hostile: any damage —
    truncation, a flipped bit, a forged length — raises one :class:`InputError`, as do
    tensors that would decode to more than ``max_ratio`` × the file size + 16 MiB."""
    if isinstance(src, (bytes, bytearray)):
        data, what = bytes(src), "packed data"
    else:
        p = Path(src)
        if not p.is_file():
            raise InputError(f"packed file {p} does not exist")
        data, what = p.read_bytes(), str(p)
    if output is not None:
        from ..core.fileio import check_output

        check_output(output, inputs=(None if isinstance(src, bytes) else src,), force=force)
    c = container.decode(data, what=what, max_ratio=max_ratio)
    res = UnpackResult(c.source_kind, c.tensors, c.records)
    if c.source_kind == "torch":
        try:
            res.factory = c.source.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{what}: the factory string is not UTF-8") from None
        if not _FACTORY.fullmatch(res.factory):
            raise InputError(f"{what}: {res.factory[:80]!r} is not a package.module:factory string")
    elif c.source_kind == "onnx":
        res.onnx_model = _fill_onnx(c.source, c.tensors, what)
    if output is not None:
        res.save(output, force=force)
    return res


def tensors_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Bit-exact equality of two tensor dicts (names, dtypes, shapes and bytes)."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a)
