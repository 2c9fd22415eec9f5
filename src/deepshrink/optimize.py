"""Offline graph optimisation of an ONNX model (SPEC 7, "Acceleration": graph optimization).

``ds.optimize(model, OptimizeConfig(...), output="out.onnx")`` runs, in order:

1. ONNX shape inference (``onnx.shape_inference.infer_shapes``);
2. constant folding and dead-node removal with `onnxslim <https://github.com/inisis/OnnxSlim>`_
   when it is installed (``pip install 'deepshrink[optimize]'``). Measured on this stack:
   onnxslim 0.1.98 needs onnx, sympy>=1.13.1, packaging, ml-dtypes and colorama only, so it
   installs beside the pinned torch 2.13 / onnx 1.23.2 / onnxruntime 1.32.0 without changing
   them. Without it, ONNX Runtime's *basic* level (step 5) does the constant folding and
   redundant-node elimination alone (``simplify="auto"`` falls back to it, ``"onnxslim"`` refuses);
3. with ``fuse="transformer"``, ONNX Runtime's BERT fusions (Attention, SkipLayerNormalization,
   BiasGelu, EmbedLayerNormalization) — the same pass ``quantize``'s ``fuse="bert"`` uses
   (:func:`deepshrink.quantize.onnx.backend.fuse_transformer`); a graph with no attention block
   to fuse is refused;
4. with ``fp16=True``, float32 weights and activations become float16 with float32 graph inputs
   and outputs (``onnxruntime.transformers.float16.convert_float_to_float16``, keep_io_types);
5. ONNX Runtime's offline optimisation at ``level`` (``SessionOptions.optimized_model_filepath``):
   ``basic`` — constant folding, redundant-node elimination, semantics-preserving fusions into
   standard ONNX ops: the result runs on any ONNX runtime; ``extended`` — adds fusions into
   ONNX Runtime's own ``com.microsoft`` ops (FusedConv, FusedGemm, Gelu...): the result runs only
   on ONNX Runtime; ``layout`` — adds the CPU layout transforms (NCHWc): the result runs only on
   ONNX Runtime *on the same kind of CPU* (same instruction set) it was optimised on.

The optimised graph is then parity-checked against the input
(:func:`deepshrink.convert.parity.check_parity`, random inputs at two batch sizes plus ``data``);
a mismatch raises :class:`~deepshrink.errors.ParityError` and nothing is written. The output is
written atomically (:func:`deepshrink.backends.onnx.save_onnx`).
"""

from __future__ import annotations

import collections
import importlib.util
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from .core.config import Config
from .core.handle import ModelHandle
from .core.result import Result, VerbReport
from .core.verbs import make_callable
from .errors import InputError, ParityError, UnsupportedError, first_line

# ONNX Runtime levels; "layout" output is tied to this machine's CPU instruction set
_LEVELS = ("basic", "extended", "layout")


class OptimizeConfig(Config):
    """Settings of :func:`optimize`.

    ``level``: ONNX Runtime's optimisation level, ``basic`` (portable ONNX), ``extended``
    (ONNX Runtime-only ops), ``layout`` (ONNX Runtime-only, this CPU type only). ``fp16``: store
    float tensors as float16 (half the weight bytes; float32 inputs/outputs kept). ``fuse``:
    ``"transformer"`` applies ONNX Runtime's BERT fusions. ``simplify``: ``"auto"`` uses onnxslim
    when installed, ``"onnxslim"`` requires it, ``"none"`` skips it. ``atol``/``rtol``: the
    parity tolerance (absolute / relative to the reference output's largest magnitude);
    ``None`` takes 1e-4 (float32) or 1e-2 (``fp16``).
    """

    level: Literal["basic", "extended", "layout"] = "basic"
    fp16: bool = False
    fuse: Literal["none", "transformer"] = "none"
    simplify: Literal["auto", "onnxslim", "none"] = "auto"
    atol: float | None = None
    rtol: float | None = None

    def tolerances(self) -> tuple[float, float]:
        default = 1e-2 if self.fp16 else 1e-4
        return (self.atol if self.atol is not None else default, self.rtol if self.rtol is not None else default)


@dataclass
class OptimizeResult(Result):
    """What :func:`optimize` did: the optimised model (an ONNX handle; ``.model.model`` the
    ``onnx.ModelProto``), op counts by type and serialized sizes (bytes) before/after, the steps
    applied, fused-op counts and the parity report; ``report`` the common
    :class:`~deepshrink.core.result.VerbReport`."""

    model: ModelHandle
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    bytes_before: int
    bytes_after: int
    steps: list[str] = field(default_factory=list)
    fused: dict[str, int] = field(default_factory=dict)
    parity: Any = None
    warnings: list[str] = field(default_factory=list)
    output: str | None = None

    @property
    def nodes_before(self) -> int:
        return sum(self.ops_before.values())

    @property
    def nodes_after(self) -> int:
        return sum(self.ops_after.values())

    @property
    def report(self) -> VerbReport:  # type: ignore[override]
        level = next((s.rpartition("level ")[2] for s in self.steps if "level " in s), "")
        return VerbReport("optimize", level, f"{self.nodes_before} → {self.nodes_after} nodes, "
                          f"{self.bytes_before:,} → {self.bytes_after:,} bytes",
                          measurements={"nodes_before": self.nodes_before, "nodes_after": self.nodes_after,
                                        "bytes_before": self.bytes_before, "bytes_after": self.bytes_after},
                          warnings=self.warnings, details=self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "steps": self.steps, "fused": self.fused, "warnings": self.warnings,
                "nodes_before": self.nodes_before, "nodes_after": self.nodes_after,
                "ops_before": self.ops_before, "ops_after": self.ops_after,
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "parity": self.parity.to_dict() if self.parity is not None else None}


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Node count by op type of the main graph (``domain::Op`` for non-standard domains)."""
    c = collections.Counter(
        (f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type) for n in model.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def has_onnxslim() -> bool:
    return importlib.util.find_spec("onnxslim") is not None


def _slim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    try:
        out = onnxslim.slim(model)
    except Exception as exc:
        raise UnsupportedError(f"onnxslim could not simplify the model: {first_line(exc)}") from None
    if not isinstance(out, onnx.ModelProto):
        raise UnsupportedError("onnxslim could not simplify the model (it returned no model)")
    return out


def _ort_optimize(model: onnx.ModelProto, level: str) -> onnx.ModelProto:
    import onnxruntime as ort

    from .backends.onnx import inline_external_data

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "layout": ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT}
    with tempfile.TemporaryDirectory(prefix="deepshrink.optimize.") as d:
        path = str(Path(d) / "optimized.onnx")
        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.intra_op_num_threads = 1
        so.graph_optimization_level = levels[level]
        so.optimized_model_filepath = path
        try:
            ort.InferenceSession(inline_external_data(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise InputError(f"ONNX Runtime cannot load the model: {first_line(exc, 300)}") from None
        out = onnx.load(path)
    # ORT declares every domain it knows (com.microsoft, ai.onnx.ml...); keep the ones the graph uses
    used = {n.domain for n in out.graph.node} | {""}
    keep = [o for o in out.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    return out


def _fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    except Exception as exc:
        raise UnsupportedError(f"float16 conversion failed: {first_line(exc)}") from None


SEQ_LEN = 16  # parity sequence length for a transformer whose sequence axis is dynamic


def parity_feeds(handle: ModelHandle, data: Any = None, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Parity inputs: :func:`~deepshrink.convert.parity.parity_inputs`, with 2-D integer (token)
    inputs redrawn as token ids, a *right-padded* attention mask (a prefix
    of ones per row, 1..L long, as tokenizers produce) and zero token types, at batch 2 and 3 with
    a sequence of the example's length or :data:`SEQ_LEN` (a dynamic sequence axis would otherwise
    be drawn at length 1, where attention is trivial), plus ``data``.

    ORT's fused Attention reads the mask through EmbedLayerNormalization's mask index (the count of
    ones per row), so a mask with holes — which random inputs would give — is outside its contract."""
    from .convert.parity import parity_inputs

    sets = parity_inputs(handle, data, seed=seed)
    rng = np.random.default_rng(seed)
    from .core.shapes import fixed_batch

    fixed = fixed_batch(handle.inputs) is not None
    for feed in sets[:1 if fixed else 2]:  # the random sets (one at a fixed batch); the user's data is kept as it is
        for spec in handle.inputs:
            x = feed.get(spec.name)
            if x is None or x.ndim != 2 or np.dtype(x.dtype).kind not in "iu":
                continue
            n = x.shape[0]
            length = x.shape[1] if x.shape[1] > 1 or not isinstance(spec.shape[1], str) else SEQ_LEN
            low = spec.name.lower()
            if "mask" in low:
                ones = rng.integers(1, length + 1, size=n)
                ones[0] = length  # one row unpadded
                feed[spec.name] = (np.arange(length)[None, :] < ones[:, None]).astype(x.dtype)
            elif "type" in low or "segment" in low:
                feed[spec.name] = np.zeros((n, length), x.dtype)
            else:
                bound = handle.index_bounds.get(spec.name, int(x.max()) + 1 if x.size else 100)
                feed[spec.name] = rng.integers(0, max(bound, 1), size=(n, length)).astype(x.dtype)
    return sets


def optimize(model: Any, config: OptimizeConfig | None = None, *, output: str | Path | None = None,
             data: Any = None, force: bool = False, parity: bool = True, **load_options: Any) -> OptimizeResult:
    """Optimise an ONNX graph offline (see the module docstring for the steps and their sources).

    ``model``: an ``.onnx`` path, ``onnx.ModelProto`` or ONNX :class:`ModelHandle` (a PyTorch
    source is exported to ONNX first). ``output``: where to write the result (atomically, after
    the parity check); ``None`` writes nothing. ``data``: extra parity inputs. Raises
    :class:`InputError` (bad model / output path), :class:`UnsupportedError` (no attention block
    for ``fuse="transformer"``, onnxslim required but missing, a step failing),
    :class:`ParityError` (the optimised graph disagrees beyond the tolerance; nothing written).
    """
    from .backends.onnx import save_onnx
    from .core.verbs import LOAD_OPTIONS, check_options
    from .quantize.api import to_onnx_handle
    from .quantize.onnx import backend as ob

    check_options("optimize", load_options, LOAD_OPTIONS)
    config = config or OptimizeConfig()
    if not isinstance(config, OptimizeConfig):
        raise InputError(f"optimize takes an OptimizeConfig, not {type(config).__name__}")
    if config.simplify == "onnxslim" and not has_onnxslim():
        from .errors import MissingExtraError

        raise MissingExtraError("onnxslim", "optimize", "simplify='onnxslim'")
    if output is not None:
        from .core.fileio import check_output

        check_output(output, inputs=(model if isinstance(model, (str, Path)) else None,), force=force)
        if Path(output).suffix.lower() != ".onnx":
            raise InputError(f"output {output}: the optimised model is written as .onnx")
    handle: ModelHandle = to_onnx_handle(model, **load_options)
    src = onnx.ModelProto()
    src.CopyFrom(handle.model)
    res = OptimizeResult(handle.with_model(src), op_counts(src), {}, src.ByteSize(), 0)

    m = onnx.ModelProto()
    m.CopyFrom(src)
    try:
        m = onnx.shape_inference.infer_shapes(m)
        res.steps.append("onnx shape inference")
    except Exception as exc:  # a model ORT runs may still defeat onnx's inference: go on without it
        res.warnings.append(f"onnx shape inference skipped: {first_line(exc)}")
    if config.fuse == "transformer":
        ob.ensure_node_names(m)
        dims = ob.detect_bert(m, handle.tokenizer_dir)
        fused: dict[str, int] = {}
        if dims is not None:
            m, fused = ob.fuse_transformer(m, *dims)
        if not fused.get("Attention"):
            meta = {p.key: p.value for p in src.metadata_props}
            hint = (" (it is not a BERT-like encoder)" if dims is None else
                    " (it was written by torch's dynamo exporter, whose attention graph ORT's fusions do not match: "
                    "export it with --exporter torchscript, or give the Hugging Face folder)"
                    if meta.get("deepshrink.exporter") == "dynamo" else
                    f" (it reads as {dims[0]} heads over a hidden size of {dims[1]}, but its attention block is not a "
                    "layout ORT's BERT fusions recognise; MPNet's, for one, is not)")
            raise UnsupportedError("--fuse transformer: ONNX Runtime's BERT fusions found no attention block to fuse "
                                   "in this graph" + hint)
        res.fused = fused
        res.warnings.append("the fused attention reads attention_mask as right-padded (a prefix of ones per row, as "
                            "tokenizers write it); a mask with holes gives different outputs")
        res.steps.append("ONNX Runtime BERT fusions (" + ", ".join(f"{k} {v}" for k, v in fused.items()) + ")")
    slim = config.simplify == "onnxslim" or (config.simplify == "auto" and has_onnxslim())
    fused_model, steps_before = m, list(res.steps)
    m, late = _simplify_and_optimize(fused_model, config, slim)
    res.steps = steps_before + late
    if config.level != "basic" or config.fuse == "transformer":
        where = "on ONNX Runtime" + (" on a CPU with the same instruction set as this one" if config.level == "layout"
                                     else "")
        res.warnings.append(f"the optimised model contains ONNX Runtime-specific ops and runs only {where}")
    if parity:
        from .convert.parity import check_parity

        atol, rtol = config.tolerances()
        feeds = parity_feeds(handle, data)
        rep = check_parity(handle, handle.with_model(m), inputs=feeds, data=data, atol=atol, rtol=rtol)
        if not rep.ok and slim and config.simplify == "auto":
            # onnxslim trusts declared shapes: a file that declares its output wrongly (ddddocr's OCR model:
            # [1, seqlen] for [seqlen, 1, 8210]) gets a Reshape to the declaration. The rest may still hold.
            without, late = _simplify_and_optimize(fused_model, config, False)
            rep2 = check_parity(handle, handle.with_model(without), inputs=feeds, data=data, atol=atol, rtol=rtol)
            if rep2.ok:
                res.warnings.append("onnxslim left out: with it the outputs disagreed with the input ("
                                    + (rep.note or f"max-abs {rep.max_abs:.3g}") + ")")
                m, rep, res.steps = without, rep2, steps_before + late
        res.parity = rep
        if not rep.ok:
            why = rep.note if rep.note and not np.isfinite(rep.max_abs) else f"max-abs {rep.max_abs:.3g}"
            raise ParityError(f"the optimised model disagrees with the input: {why} (atol {atol:g}, rtol {rtol:g}); "
                              "nothing written", rep)
    res.model = handle.with_model(m, path=None)
    res.ops_after = op_counts(m)
    res.bytes_after = m.ByteSize()
    if output is not None:
        save_onnx(m, output)
        res.output = str(output)
        res.model.path = Path(output)
    return res


def _simplify_and_optimize(m: onnx.ModelProto, config: OptimizeConfig, slim: bool) -> tuple[onnx.ModelProto, list[str]]:
    """The passes after the fusions — onnxslim (``slim``), float16, ONNX Runtime's offline optimisation — and
    what each did, in words, for the result's ``steps``."""
    steps = []
    if slim:
        import onnxslim

        m = _slim(m)
        steps.append(f"onnxslim {onnxslim.__version__} (constant folding, dead-node removal)")
    if config.fp16:
        m = _fp16(m)
        steps.append("float16 (inputs/outputs kept float32)")
    return _ort_optimize(m, config.level), [*steps, f"ONNX Runtime offline optimisation, level {config.level}"]


make_callable(__name__, optimize)  # ``ds.optimize(...)`` and ``ds.optimize.OptimizeConfig`` are one thing

__all__ = ["OptimizeConfig", "OptimizeResult", "optimize", "op_counts", "has_onnxslim", "parity_feeds"]
