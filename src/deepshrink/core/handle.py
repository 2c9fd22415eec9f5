"""The model handle: a model plus what deepshrink needs to know to run, convert and
measure it — its IO spec, example inputs, and where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

Dim = int | str  # a fixed size or a symbolic name such as "batch"

ANY_DTYPE = "any"  # a torch model's input dtype before data or --input-shape tells it
_NP_DTYPES = {
    "float32": np.float32, "float16": np.float16, "float64": np.float64,
    "int64": np.int64, "int32": np.int32, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
    "int16": np.int16, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (ints or symbolic names) and dtype (numpy name) of one model input/output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    def concrete(self, batch: int = 1, default: int = 1) -> tuple[int, ...]:
        """A shape with symbolic dims filled in: the first by ``batch``, the rest by ``default``."""
        out = []
        for i, d in enumerate(self.shape):
            out.append(d if isinstance(d, int) and d > 0 else (batch if i == 0 else default))
        return tuple(out)

    @property
    def np_dtype(self) -> Any:
        return _NP_DTYPES.get(self.dtype, np.float32)

    def describe(self) -> str:
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass
class ModelHandle:
    """A loaded model. ``model`` is a ``torch.nn.Module`` (kind ``"torch"``) or an
    ``onnx.ModelProto`` (kind ``"onnx"``)."""

    model: Any
    kind: Literal["torch", "onnx"]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec] = field(default_factory=list)
    example_inputs: dict[str, np.ndarray] | None = None
    source: str | None = None
    path: Path | None = None  # file on disk this handle was read from, if any
    tokenizer_dir: Path | None = None  # HF tokenizer that turns text into this model's inputs
    metadata: dict[str, str] = field(default_factory=dict)
    # integer inputs that index a table (token ids into an embedding): input name -> table rows, so
    # random inputs stay valid ids (filled by the loaders, e.g. from an ONNX Gather's data shape)
    index_bounds: dict[str, int] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        """What the handle does not define is the wrapped model's: a torch handle answers
        ``parameters()``, ``eval()``, ``state_dict()``...; an ONNX handle ``graph``, ``opset_import``...
        (so ``ds.prune(m, cfg).model.parameters()`` reads as it would on the module). Dunder names
        are never forwarded (copying or pickling a handle must copy the handle)."""
        if name.startswith("__") or name == "model":
            raise AttributeError(name)
        model = self.__dict__.get("model")
        if model is None:
            raise AttributeError(name)
        try:
            return getattr(model, name)
        except AttributeError:
            raise AttributeError(f"'ModelHandle' ({self.__dict__.get('kind')} model) has no attribute {name!r}") from None

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def with_model(self, model: Any, kind: Literal["torch", "onnx"] | None = None, **changes: Any) -> ModelHandle:
        return replace(self, model=model, kind=kind or self.kind, **changes)

    def sample_inputs(self, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """Fresh random inputs matching the IO spec (integer inputs stay in a safe id range)."""
        rng = np.random.default_rng(seed)
        if self.example_inputs is not None:
            # reuse the shapes seen in the example (sequence length etc.), re-drawn at `batch`
            out = {}
            for spec in self.inputs:
                ex = self.example_inputs[spec.name]
                shape = list(ex.shape)
                if ex.ndim:
                    shape[_batch_axis(spec)] = batch
                if _is_padding_mask(spec.name, ex) and _batch_axis(spec) == 0:
                    out[spec.name] = _right_padded_mask(rng, tuple(shape), ex.dtype)
                else:
                    out[spec.name] = _random_like(rng, tuple(shape), ex.dtype, ex)
            return out
        return {s.name: _random_for(rng, s, batch, self.index_bounds.get(s.name), self.metadata) for s in self.inputs}

    def random_samples(self, n: int, seed: int = 1) -> dict[str, np.ndarray]:
        """About ``n`` random samples (:meth:`sample_inputs`) even for a graph fixed at batch B (every TFLite-born
        model: B = 1, where one draw is one sample): ``ceil(n / B)`` draws of B, seeds ``seed, seed + 1, …``,
        joined on axis 0."""
        from .shapes import fixed_batch

        b = fixed_batch(self.inputs) if self.example_inputs is None else None
        if not b or b >= n:
            return self.sample_inputs(batch=n, seed=seed)
        draws = [self.sample_inputs(batch=b, seed=seed + i) for i in range(-(-n // b))]
        return {k: np.concatenate([d[k] for d in draws]) for k in draws[0]}

    def describe(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        outs = ", ".join(s.describe() for s in self.outputs)
        return f"{self.kind} model from {self.source or '<memory>'}; inputs {ins}; outputs {outs}"


def _batch_axis(spec: TensorSpec) -> int:
    """Axis 0, unless the spec fixes it and names another axis ``batch`` (a sequence-first model)."""
    if spec.shape and not isinstance(spec.shape[0], str) and "batch" in spec.shape[1:]:
        return spec.shape.index("batch")
    return 0


def _random_for(rng: np.random.Generator, spec: TensorSpec, batch: int, bound: int | None = None,
                metadata: dict[str, str] | None = None) -> np.ndarray:
    """Random values for an input known only by its spec; masks and type ids get their usual values,
    ids into a table of ``bound`` rows stay in ``[0, bound)``. Dynamic image H/W take the size in
    ``metadata`` or 224 × 224 (:func:`deepshrink.core.shapes.assumed_shape`), other dynamic dims 1."""
    from .shapes import assumed_shape

    shape, _ = assumed_shape(spec, metadata, batch=batch)
    if bound is not None and np.dtype(spec.np_dtype).kind in "iu":
        return rng.integers(0, bound, size=shape).astype(spec.np_dtype)
    lowered = spec.name.lower()
    if np.dtype(spec.np_dtype).kind in "iub" and "mask" in lowered:
        return np.ones(shape, dtype=spec.np_dtype)  # attention masks: 1 = attend (some graphs gather with them)
    if np.dtype(spec.np_dtype).kind in "iu" and ("type_ids" in lowered or "segment" in lowered):
        return np.zeros(shape, dtype=spec.np_dtype)
    return _random_like(rng, shape, spec.np_dtype, None)


def _is_padding_mask(name: str, example: np.ndarray) -> bool:
    """An attention/padding mask as tokenizers write it: 2-D ``(batch, sequence)``, 0/1 values, named ``*mask*``."""
    return (example.ndim == 2 and "mask" in name.lower() and np.dtype(example.dtype).kind in "iub"
            and bool(np.isin(example, (0, 1)).all()))


def _right_padded_mask(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """``(batch, sequence)`` masks of ones followed by zeros (each row a random length from 1 to the sequence):
    the padding a tokenizer writes. Independent 0/1 draws put holes inside a sequence, which no tokenizer writes and
    fused attention kernels (ONNX Runtime's ``Attention``) read as a shorter sequence, so they would judge a
    correct model as diverging."""
    n, seq = shape
    lengths = rng.integers(1, seq + 1, size=n) if seq else np.zeros(n, dtype=np.int64)
    return (np.arange(seq)[None, :] < lengths[:, None]).astype(dtype)


def _random_like(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, example: np.ndarray | None) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        if example is not None and example.size:
            lo, hi = int(example.min()), int(example.max())
            if lo == hi:  # e.g. an all-ones attention mask: keep it
                return np.full(shape, lo, dtype=dtype)
            if example.ndim >= 1 and tuple(example.shape[1:]) == tuple(shape[1:]) and len(example):
                # each position takes a value the data has at that position: ids stay valid for the table each
                # channel indexes (attacut's x[:, 0] holds character ids < 139, x[:, 1] syllable ids up to 6,220; a
                # draw over the whole array's range sent character ids past their table)
                flat = example.reshape(len(example), -1)
                rows = rng.integers(0, len(flat), size=(int(shape[0]), flat.shape[1]))
                return flat[rows, np.arange(flat.shape[1])].reshape(shape).astype(dtype)
            return rng.choice(example.reshape(-1), size=shape).astype(dtype)  # values the data holds
        return rng.integers(0, 100, size=shape).astype(dtype)
    if dtype.kind == "b":
        return np.ones(shape, dtype=dtype)
    if example is not None and example.size:
        mean, std = float(example.mean()), float(example.std()) or 1.0
        return (rng.standard_normal(shape) * std + mean).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)
