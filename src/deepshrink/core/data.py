"""Data sources: ``.npz`` files, text files (via the model's tokenizer) and built-ins.

``load_data(spec, handle)`` returns a :class:`Dataset` whose arrays are named after the
model's inputs and checked against its IO spec, so a mismatch is one clear error before
any work starts. Specs:

- ``path/to/file.npz`` — arrays named after the model inputs, optional ``labels``;
- ``path/to/file.txt`` — one text per line, tokenized by the model's Hugging Face tokenizer;
- ``digits`` / ``digits:train|val|test`` — scikit-learn's digits (validation split by default);
- ``sentences`` / ``sentences:N`` — N sentences from the Python standard library's docstrings; ``sentences:wide[:N]`` —
  the large training text (stdlib and installed packages' docstrings, disjoint from ``sentences:N``).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, first_line
from .handle import ANY_DTYPE, ModelHandle, TensorSpec

LABEL_KEYS = ("labels", "label", "y")
log = logging.getLogger(__name__)
_RENAMES_SAID: set[tuple[str, str, str]] = set()


@dataclass
class Dataset:
    """Named input arrays (equal first dimension) and optional labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if not self.inputs:
            raise InputError(f"data {self.source} holds no input arrays")
        scalars = [k for k, v in self.inputs.items() if np.ndim(v) == 0]
        if scalars:
            raise InputError(f"data {self.source}: array {scalars[0]!r} is a scalar (0-d); inputs need a sample axis "
                             "first — repeat the value once per sample")
        lengths = {k: len(v) for k, v in self.inputs.items()}
        n = next(iter(lengths.values()))
        if n == 0:
            raise InputError(f"data {self.source} is empty (0 samples)")
        if any(v != n for v in lengths.values()):
            raise InputError(f"data {self.source}: arrays disagree on the number of samples (their first axis): "
                             f"{lengths} (deepshrink reads samples on axis 0 of every array; an input whose batch "
                             "axis is not its first cannot be fed from data yet)")
        if self.labels is not None and len(self.labels) != n:
            raise InputError(f"data {self.source}: {len(self.labels)} labels for {n} samples")

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, n: int) -> Dataset:
        return Dataset({k: v[:n] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[:n], self.source)

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self), size):
            yield {k: v[i:i + size] for k, v in self.inputs.items()}


# Named data sources (``digits``, ``sentences:64``): a callable (argument after ':', model handle,
# max_length) -> Dataset, registered in code or found through the ``deepshrink.data_sources`` entry
# point group — so the built-ins in ``deepshrink.examples`` (or a user's package) plug in without
# core importing them.
DataSource = Callable[[str, "ModelHandle | None", int], "Dataset"]
ENTRY_POINT_GROUP = "deepshrink.data_sources"
_SOURCES: dict[str, DataSource] = {}


def register_data_source(name: str, source: DataSource) -> None:
    """Make ``--data NAME[:ARG]`` call ``source(arg, handle, max_length)``."""
    _SOURCES[name] = source


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def data_source(name: str) -> DataSource | None:
    """The registered source called ``name``, loading its entry point on first use; None if none."""
    if name not in _SOURCES:
        ep = _entry_points().get(name)
        if ep is None:
            return None
        _SOURCES[name] = ep.load()
    return _SOURCES[name]


def data_source_names() -> list[str]:
    return sorted(set(_SOURCES) | set(_entry_points()))


def _scalar_inputs(handle: ModelHandle | None) -> list[Any]:
    """The input specs of an ONNX graph declared rank 0 (a ``shape`` with no dims). A spec with an
    empty shape says "unknown" elsewhere — a graph input without shape information, a PyTorch or
    Hugging Face handle before data has fixed its shapes — so only the graph's own declaration counts."""
    graph = getattr(getattr(handle, "model", None), "graph", None)
    if handle is None or handle.kind != "onnx" or graph is None:
        return []
    declared = {v.name for v in graph.input
                if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")
                and len(v.type.tensor_type.shape.dim) == 0}
    return [s for s in handle.inputs if s.name in declared and not s.shape]


def load_data(spec: str | Path | Dataset | dict[str, np.ndarray] | tuple[np.ndarray, ...], handle: ModelHandle | None = None,
              *, max_length: int = 128) -> Dataset:
    """Load ``spec`` (see module docstring) and check it against ``handle``'s inputs.

    Raises :class:`InputError` for data that cannot feed the model — among them a model with a
    scalar (rank-0) input, such as silero VAD v5's sample rate ``sr``: every array has a sample
    axis first, and a scalar input cannot take one (neither a 0-d array nor one value per sample)."""
    scalar = _scalar_inputs(handle)
    if scalar:
        where = spec.source if isinstance(spec, Dataset) else "<dict>" if isinstance(spec, dict) else str(spec)
        raise InputError(f"data {where}: the model's input {scalar[0].describe()} is a scalar (0-d), and data "
                         "gives every input a sample axis first (a value per sample does not fit it either); "
                         "make that input a constant of the graph first")
    if isinstance(spec, (tuple, list)) and spec and all(hasattr(a, "shape") for a in spec):
        # arrays as the training verbs take them, (x1, ..., xk[, labels]): inputs in the model's order, then labels
        names = handle.input_names if handle is not None else [f"input_{i}" for i in range(len(spec))]
        arrays = [np.asarray(a) for a in spec]
        if len(arrays) not in (len(names), len(names) + 1):
            raise InputError(f"data given as {len(arrays)} arrays; the model takes {len(names)} input(s) "
                             f"({', '.join(names)}): pass one array per input, then the labels if any")
        spec = {**dict(zip(names, arrays, strict=False)), **({"labels": arrays[-1]} if len(arrays) > len(names) else {})}
    if isinstance(spec, Dataset):
        ds = spec
    elif isinstance(spec, dict):
        arrays = {k: np.asarray(v) for k, v in spec.items()}
        labels = next((arrays.pop(k) for k in LABEL_KEYS if k in arrays), None)
        ds = Dataset(arrays, labels, "<dict>")
    else:
        text = str(spec)
        name, _, arg = text.partition(":")
        source = data_source(name) if not Path(text).exists() else None
        if source is not None:
            ds = source(arg, handle, max_length)
        else:
            path = Path(text)
            builtins = ", ".join(data_source_names()) or "none installed"
            if path.is_dir():
                raise InputError(f"data {path} is a directory; pass an .npz file, a text file of lines, "
                                 f"or a built-in: {builtins}")
            if not path.is_file():
                raise InputError(f"data file {path} does not exist (or use a built-in: {builtins})")
            if path.suffix == ".npz":
                ds = _npz(path)
            elif path.suffix in (".txt", ".text", ""):
                lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
                ds = tokenize([ln for ln in lines if ln], handle, source=str(path), max_length=max_length)
            else:
                raise InputError(f"data file {path}: unknown format {path.suffix!r}; use .npz or a .txt of lines")
    return conform(ds, handle) if handle is not None else ds


def _npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InputError(f"data file {path} cannot be read as .npz ({type(exc).__name__}: {first_line(exc, 100)})") from None
    labels = next((arrays.pop(k) for k in LABEL_KEYS if k in arrays), None)
    return Dataset(arrays, labels, str(path))


def tokenize(texts: list[str], handle: ModelHandle | None, *, source: str, max_length: int = 128) -> Dataset:
    if not texts:
        raise InputError(f"data {source} holds no text")
    tok_dir = handle.tokenizer_dir if handle is not None else None
    if tok_dir is None:
        raise InputError(f"data {source} is text, but the model has no tokenizer; pass an .npz of input arrays")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    arrays = {k: np.asarray(v).astype(np.int64) for k, v in enc.items()}
    if handle is not None:
        arrays = {k: v for k, v in arrays.items() if k in handle.input_names}
    return Dataset(arrays, None, source)


def conform(ds: Dataset, handle: ModelHandle) -> Dataset:
    """Rename/cast/check arrays against the model's inputs; one clear error on mismatch."""
    arrays = dict(ds.inputs)
    specs = handle.inputs
    if len(specs) == 1 and specs[0].name not in arrays and len(arrays) == 1:
        # a lone array feeds a lone input whatever its name; said once per data source
        [(lone, array)] = arrays.items()
        said = (ds.source, lone, specs[0].name)
        if said not in _RENAMES_SAID:
            _RENAMES_SAID.add(said)
            log.warning("data %s: its only array %r is used as the model's input %r", *said)
        arrays = {specs[0].name: array}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise InputError(f"data {ds.source} does not match the model: input(s) {missing} missing; "
                         f"the data has {sorted(arrays)}, the model wants "
                         # a spec without a shape is one not known yet (checked before --input-shape applies)
                         f"{[s.describe() if s.shape else s.name for s in specs]}")
    out = {}
    for s in specs:
        out[s.name] = _check_array(arrays[s.name], s, ds.source)
    return Dataset(out, ds.labels, ds.source)


def _check_array(a: np.ndarray, spec: TensorSpec, source: str) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise InputError(f"data {source}: array {spec.name!r} has dtype {a.dtype}, not numeric")
    want_rank = len(spec.shape) if spec.dtype != ANY_DTYPE else 0  # a placeholder spec: shape unknown too
    if want_rank and a.ndim != want_rank:
        # a flat MLP input given images (or the reverse) is a common, harmless mismatch
        fixed = [d for d in spec.shape[1:] if isinstance(d, int)]
        if len(fixed) == want_rank - 1 and int(np.prod(fixed)) == int(np.prod(a.shape[1:])):
            a = a.reshape(len(a), *fixed)
        else:
            raise InputError(f"data {source}: array {spec.name!r} has shape {list(a.shape)}, "
                             f"the model wants {spec.describe()}")
    for i, (have, want) in enumerate(zip(a.shape, spec.shape if want_rank else (), strict=False)):
        if i > 0 and isinstance(want, int) and want > 0 and have != want:
            raise InputError(f"data {source}: array {spec.name!r} has shape {list(a.shape)}, "
                             f"the model wants {spec.describe()}")
    if spec.dtype != ANY_DTYPE:
        target = np.dtype(spec.np_dtype)
        if a.dtype.kind == "f" and target.kind in "iub" and a.size:
            if not np.isfinite(a).all() or not np.array_equal(a, np.round(a)):
                raise InputError(f"data {source}: array {spec.name!r} holds fractional values ({a.dtype}), but the "
                                 f"model wants {spec.describe()}; casting would change them (save integer arrays)")
        if a.dtype == np.uint8 and target.kind == "f" and a.size and int(a.max()) > 1:
            import warnings

            warnings.warn(f"data {source}: array {spec.name!r} is uint8 (values {int(a.min())}–{int(a.max())}) and the "
                          f"model reads {target}: cast as they are; a model that reads pixels in 0–1 wants them "
                          "divided by 255 first", UserWarning, stacklevel=2)
        a = a.astype(target, copy=False)
    elif a.dtype.kind == "f":  # unknown dtype: integer ids stay integers, floats become float32
        a = a.astype(np.float32, copy=False)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InputError(f"data {source}: array {spec.name!r} contains NaN or infinity")
    return a


def as_arrays(data: Any) -> dict[str, np.ndarray]:
    """Accept a Dataset or a dict and return the input arrays."""
    return data.inputs if isinstance(data, Dataset) else dict(data)


def check_class_labels(labels: Any, output: Any, source: str) -> None:
    """Refuse labels that cannot be class ids of a classifier whose output is ``output``.

    ``labels``: shape (N,) (or (N, 1)), any numeric dtype (integral floats such as ``1.0`` pass); ``output``: the model's
    (first) output for a batch, a numpy array or tensor of shape (batch, ..., C) — C classes — or that shape as a
    tuple. Nothing is checked when ``labels`` is None or empty, or the output has no class axis (fewer than 2
    dimensions, or C < 2). Raises
    :class:`InputError` naming ``source`` for labels of more than one value per sample, non-integral or
    non-finite labels and for ids outside 0..C-1 —
    what cross-entropy (and accuracy) read — before any work spends time on them.
    """
    if labels is None:
        return
    y = np.asarray(labels)
    if y.size == 0:
        return
    if y.dtype.kind not in "biuf":
        raise InputError(f"data {source}: labels must be integer class ids (got {y.dtype})")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        bad = y[~(np.isfinite(y) & (y == np.round(y)))].reshape(-1)[0]
        raise InputError(f"data {source}: labels must be integer class ids (found {bad:g})")
    if y.ndim > 1 and y.size != len(y):
        raise InputError(f"data {source}: labels have shape {list(y.shape)}; accuracy reads one class id per sample "
                         "(shape [N]) against the output's top class — per-position labels (sequence labelling) are "
                         "not scored: leave the labels out to judge by fidelity to the original")
    shape = output if isinstance(output, tuple) else tuple(getattr(output, "shape", ()))
    if len(shape) < 2 or not isinstance(shape[-1], int) or shape[-1] < 2:  # one score per sample: no class axis
        return
    classes = int(shape[-1])
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= classes:
        raise InputError(f"data {source}: labels run from {lo} to {hi}, but the model's output has {classes} "
                         f"classes (labels 0..{classes - 1})")
