"""The format registry: which model file formats exist, how to tell them apart, who reads and writes them.

One table answers "what is this path?" for every part of deepshrink (loading, conversion routes,
the verbs' output checks, sizes on disk, benchmarking), so a suffix is spelled in one place.
A :class:`Format` is plain data: its name, its suffixes (or, for a folder, the file that marks
it), what kind of model it holds and the side files that travel with it. Capabilities register a
*writer* (``fn(handle, path, *, force) -> ModelHandle``) for a format with :func:`register_writer`;
core imports none of them: the modules that register are named by the ``deepshrink.formats``
entry point group (``pyproject.toml``) and imported on the first :func:`write` that needs one.

Errors: :class:`~deepshrink.errors.InputError` for a path whose format is unknown or not one a
caller accepts, naming the accepted suffixes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

ENTRY_POINT_GROUP = "deepshrink.formats"
# a packed (.dsz) file's first bytes: magic, then version (2 bytes), then the kind of model it holds
DSZ_MAGIC = b"\x89DSZ"
DSZ_SOURCE_KINDS: dict[str, int] = {"tensors": 0, "torch": 1, "onnx": 2}
# a .pt2 written by deepshrink carries the model's output names in this entry of torch.export.save's
# extra_files (JSON text, never unpickled): a program names its outputs after graph nodes, so an ONNX file's
# names came back as output_0, output_1 after ONNX → .pt2 → ONNX
PT2_OUTPUT_NAMES = "deepshrink.output_names.json"


def pt2_output_names(text: str) -> list[str] | None:
    """The output names stored in a ``.pt2``'s :data:`PT2_OUTPUT_NAMES` entry (a JSON list of distinct non-empty
    strings), else None (absent, or not such a list)."""
    import json

    try:
        names = json.loads(text) if text else None
    except ValueError:
        return None
    ok = isinstance(names, list) and bool(names) and all(isinstance(n, str) and n for n in names)
    return names if ok and len(set(names)) == len(names) else None


def peek_dsz_source_kind(head: bytes) -> str | None:
    """The source kind (``"tensors"``, ``"torch"``, ``"onnx"``) a ``.dsz`` file's first 7 bytes name, or
    ``None`` when they are not a ``.dsz`` header. Reads the header only, verifies nothing (for messages;
    :func:`deepshrink.codec.container.decode` checks the whole file). Here, not in the codec, so that
    loading can name what a packed file unpacks to without depending on the codec."""
    if len(head) < len(DSZ_MAGIC) + 3 or head[:len(DSZ_MAGIC)] != DSZ_MAGIC:
        return None
    kinds = {v: k for k, v in DSZ_SOURCE_KINDS.items()}
    return kinds.get(head[len(DSZ_MAGIC) + 2])


@dataclass(frozen=True)
class Format:
    """One model file format.

    ``holds``: the kind of model read from it — ``"onnx"`` and ``"torch"`` load into a
    :class:`~deepshrink.core.handle.ModelHandle`; ``"weights"`` is a state dict that needs an
    architecture (``module:factory``); ``"tflite"``, ``"openvino"``, ``"keras"``, ``"tf"`` are
    conversion sources/targets run through their own runtimes; ``"packed"`` is deepshrink's
    Deep Compression container. ``marker``: for a folder format, the file inside that identifies it.
    ``companions``: suffixes of side files that belong to the model (OpenVINO's ``.bin``).
    """

    name: str
    description: str
    holds: str
    suffixes: tuple[str, ...] = ()
    marker: str | None = None
    companions: tuple[str, ...] = ()
    loadable: bool = False  # ``ds.load`` turns it into a handle by itself

    @property
    def label(self) -> str:
        return self.suffixes[0] if self.suffixes else f"folder with {self.marker}"


FORMATS: tuple[Format, ...] = (
    Format("onnx", "ONNX model (external data kept beside it)", "onnx", (".onnx",), loadable=True),
    Format("pt2", "torch.export archive", "torch", (".pt2",), loadable=True),
    Format("safetensors", "PyTorch weights (safetensors)", "weights", (".safetensors",)),
    Format("torch-pickle", "pickled PyTorch weights or model", "weights", (".pt", ".pth", ".bin", ".ckpt")),
    Format("tflite", "TensorFlow Lite flatbuffer", "tflite", (".tflite",)),
    Format("openvino", "OpenVINO IR (.xml graph + .bin weights)", "openvino", (".xml",), companions=(".bin",)),
    Format("keras", "Keras model", "keras", (".keras", ".h5", ".hdf5")),
    Format("packed", "deepshrink Deep Compression container", "packed", (".dsz",)),
    Format("hf-folder", "Hugging Face model folder", "torch", marker="config.json", loadable=True),
    Format("saved-model", "TensorFlow SavedModel folder", "tf", marker="saved_model.pb"),
)
_BY_NAME = {f.name: f for f in FORMATS}
_BY_SUFFIX = {s: f for f in FORMATS for s in f.suffixes}

Writer = Callable[..., Any]
_WRITERS: dict[str, Writer] = {}
_LOADED_ENTRY_POINTS = False


def get(name: str) -> Format:
    """The format called ``name`` (``KeyError`` for a name not in :data:`FORMATS`)."""
    return _BY_NAME[name]


def by_suffix(path: str | os.PathLike[str]) -> Format | None:
    """The format ``path``'s extension names (case-insensitive), or None; the file need not exist."""
    return _BY_SUFFIX.get(Path(path).suffix.lower())


def format_of(path: str | os.PathLike[str]) -> Format | None:
    """The format of an existing folder (by its marker file) or of a path (by its extension); None if neither."""
    p = Path(path)
    if p.is_dir():
        return next((f for f in FORMATS if f.marker and (p / f.marker).is_file()), None)
    return by_suffix(p)


def suffixes_of(names: Collection[str]) -> list[str]:
    """Every suffix of the formats called ``names``, in table order."""
    return [s for f in FORMATS if f.name in names for s in f.suffixes]


def require(path: str | os.PathLike[str], accepted: Collection[str], *, what: str = "output") -> Format:
    """The format of ``path``, which must be one of ``accepted`` (format names); else one line naming
    the accepted suffixes. Raises :class:`InputError`."""
    fmt = by_suffix(path)
    if fmt is None or fmt.name not in accepted:
        p = Path(path)
        known = ", ".join(suffixes_of(accepted))
        found = f"unknown format {p.suffix!r}" if fmt is None else f"{fmt.description} ({p.suffix}) is not accepted here"
        raise InputError(f"{what} {p}: {found}; use {known}")
    return fmt


def files_of(path: str | os.PathLike[str]) -> list[Path]:
    """The companion files a model at ``path`` needs besides itself (those that exist)."""
    p = Path(path)
    fmt = by_suffix(p)
    if fmt is None:
        return []
    return [c for c in (p.with_suffix(s) for s in fmt.companions) if c.is_file()]


def register_writer(name: str, writer: Writer) -> None:
    """Make ``writer(handle, path, *, force=False, **options) -> ModelHandle`` the writer of format ``name``."""
    get(name)
    _WRITERS[name] = writer


def writer_for(path: str | os.PathLike[str]) -> Writer:
    """The registered writer of ``path``'s format. Raises :class:`InputError` when none writes it."""
    global _LOADED_ENTRY_POINTS
    fmt = by_suffix(path)
    if fmt is not None and fmt.name not in _WRITERS and not _LOADED_ENTRY_POINTS:
        _load_entry_points()
        _LOADED_ENTRY_POINTS = True
    if fmt is None or fmt.name not in _WRITERS:
        known = ", ".join(suffixes_of(_WRITERS)) or "none registered"
        what = f"unknown format {Path(path).suffix!r}" if fmt is None else f"deepshrink does not write {fmt.description}"
        raise InputError(f"output {path}: {what}; a model is written as {known}")
    return _WRITERS[fmt.name]


def write(handle: Any, path: str | os.PathLike[str], **options: Any) -> Any:
    """Write ``handle`` to ``path`` with the writer of its format (see :func:`writer_for`)."""
    return writer_for(path)(handle, path, **options)


def _load_entry_points() -> None:
    import importlib
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            importlib.import_module(ep.value.partition(":")[0])
        except ImportError:
            continue  # an optional stack that is not installed
