"""Per-layer sensitivity of every choice, the search's warm start.

For each layer and each of its quantized choices, the model with only that layer changed is
built (the same path as every candidate) and scored with
:func:`deepshrink.quantize.onnx.sensitivity.layer_sensitivity`: ``1 - mean cosine`` of the outputs
against the float model on calibration samples. The ranking seeds the optimiser
(:func:`warm_starts`); it is never used to judge a candidate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from .objective import Evaluator
from .space import Space


def _prepared(ev: Evaluator) -> Any:
    """The reference prepared as every candidate is (the int8 form's fusion; Gemm as MatMul unless static)."""
    from ..quantize.api import _wants_fuse, prepare
    from ..quantize.configs import Int8StaticConfig

    calib = ev.calibration.take(min(len(ev.calibration), 128))
    return prepare(ev.reference, calib.inputs, gemm_as_matmul=not isinstance(ev.space.int8, Int8StaticConfig),
                   calibration_size=len(calib), fuse=_wants_fuse(ev.space.int8))


def int8_speed(ev: Evaluator, inputs: dict[str, np.ndarray], *, progress: bool = False) -> dict[str, float]:
    """``{layer: int8 / float latency}`` of each int8-able layer timed alone, in the search's int8 form.

    :func:`deepshrink.quantize.onnx.layer_speed.time_layers` (the per-layer timing of ``quantize
    --scheme auto``): a one-node model of the layer at the shape it runs at, float against int8,
    interleaved, batch 1, the search's thread count. Layers it cannot time alone (a fused
    ``Attention``) are left out. The int8 one-node model pays its own quantize/dequantize, so the
    ratios lean against int8; they only seed the optimiser (:func:`warm_starts`), whose candidates
    are timed whole.
    """
    from ..quantize.configs import Int8StaticConfig
    from ..quantize.onnx import backend as ob
    from ..quantize.onnx import layer_speed
    from ..quantize.onnx.auto import static_int8_fn

    cfg = ev.space.int8
    layers = [lay.name for lay in ev.space.free if "int8" in lay.options]
    if isinstance(cfg, Int8StaticConfig):
        def build(m: onnx.ModelProto, names: list[str], d: dict[str, Any]) -> onnx.ModelProto:
            return static_int8_fn(cfg, d)(m, names)
    else:
        def build(m: onnx.ModelProto, names: list[str], d: dict[str, Any]) -> onnx.ModelProto:
            return ob.quantize_dynamic_int8(m, names, per_channel=cfg.per_channel)  # type: ignore[union-attr]
    timed = layer_speed.time_layers(_prepared(ev).model, layers, inputs, {"int8": build},
                                    threads=ev.config.threads, progress=progress)
    return {name: ratios["int8"] for name, ratios in timed.items() if "int8" in ratios}


def choice_sensitivity(ev: Evaluator, inputs: dict[str, np.ndarray], *, progress: bool = False
                       ) -> dict[str, dict[str, float]]:
    """``{layer: {choice: 1 - mean cosine}}`` with only that layer quantized that way.

    The model is prepared once (:func:`deepshrink.quantize.api.prepare`) and each one-layer model
    is made by the choice's own handler on it — the quantization every candidate gets, without
    re-preparing and re-checking the whole model per layer (a third of a MiniLM build's time).
    """
    from ..quantize.onnx.outcome import Prepared
    from ..quantize.onnx.sensitivity import layer_sensitivity, run_outputs
    from .space import _literal

    space = ev.space
    ref = run_outputs(ev.reference.model, inputs, batch=1, threads=ev.config.threads)
    prep = _prepared(ev)
    out: dict[str, dict[str, float]] = {lay.name: {} for lay in space.free}
    for choice in ("int8", "int4", "codebook"):
        layers = [lay.name for lay in space.free if choice in lay.options]
        if not layers:
            continue
        cfg = space.choice_config(choice)

        def one(_model: onnx.ModelProto, names: Any, cfg: Any = cfg) -> onnx.ModelProto:
            from ..core.config import handler_for

            sub = cfg.model_copy(update={"include": tuple(_literal(n) for n in names), "exclude": ()})
            step = handler_for(sub)(Prepared(prep.handle, prep.model, prep.data, prep.labels, ties=prep.ties), sub)
            return step.handle.model

        for name, score in layer_sensitivity(prep.model, layers, inputs, one, reference=ref,
                                             progress=progress).items():
            out[name][choice] = score
    return out


def warm_starts(space: Space, sens: dict[str, dict[str, float]], allowed: float | None = None,
                speed: dict[str, float] | None = None) -> list[tuple[str, dict[str, str]]]:
    """Assignments to try first, from the sensitivity ranking (most promising first), de-duplicated.

    Plain int8; with per-layer timings (``speed``, :func:`int8_speed`: int8/float latency of each
    layer alone), int8 only on the layers whose int8 ran faster alone, and only on those at least
    1.25x faster, the rest float — where int8 does not pay everywhere (small convolutions, a CNN
    whose plain int8 runs slower than float) the fast corner of the space is otherwise far from every
    start; with a cosine target (``allowed`` = ``1 - target_cos``), the additive estimate:
    int8 on the least sensitive layers while their summed sensitivity stays within 1, 3/4, 1/2
    and 1/4 of ``allowed`` (per-layer losses add up to first order), the rest float; int8 with the 1, 2
    and 3 most int8-sensitive layers kept float; the smallest choice (codebook, else int4, else
    int8) everywhere; the smallest choice on the least sensitive half of the layers with int8 on
    the rest; int4 on every layer that takes it.
    """
    free = space.free
    out: list[tuple[str, dict[str, str]]] = []

    def add(what: str, assign: dict[str, str]) -> None:
        if any(a == assign for _, a in out) or all(c == "float" for c in assign.values()):
            return
        out.append((what, assign))

    int8 = space.uniform("int8")
    add("plain int8", int8)
    for limit, what in ((1.0, "faster"), (0.8, "at least 1.25x faster")):
        if speed:
            add(f"int8 where it ran {what} alone (each layer timed alone), the rest float",
                {lay.name: "int8" if speed.get(lay.name, float("inf")) < limit else "float" for lay in free})
    ranked = sorted((lay for lay in free if "int8" in lay.options), key=lambda lay: -sens[lay.name].get("int8", 0.0))
    if allowed is not None and allowed > 0:
        for frac in (1.0, 0.75, 0.5, 0.25):
            total, assign = 0.0, {lay.name: "float" for lay in free}
            for lay in reversed(ranked):  # least sensitive first
                total += sens[lay.name].get("int8", 0.0)
                if total > allowed * frac:
                    break
                assign[lay.name] = "int8"
            add(f"int8 within {frac:g} of the allowed loss (additive estimate)", assign)
    for k in range(1, min(3, len(ranked) - 1) + 1):
        add(f"int8, {k} most sensitive kept float", {**int8, **{lay.name: "float" for lay in ranked[:k]}})

    def smallest(opts: tuple[str, ...]) -> str:
        return next((c for c in ("codebook", "int4", "int8") if c in opts), "float")

    add("smallest choice everywhere", {lay.name: smallest(lay.options) for lay in free})
    by_small = sorted(free, key=lambda lay: sens[lay.name].get(smallest(lay.options), 0.0))
    half = {lay.name for lay in by_small[:max(1, len(by_small) // 2)]}
    add("smallest choice on the least sensitive half, int8 on the rest",
        {lay.name: smallest(lay.options) if lay.name in half else int8[lay.name] for lay in free})
    if any("int4" in lay.options for lay in free):
        add("int4 where it applies, int8 on the rest",
            {lay.name: "int4" if "int4" in lay.options else int8[lay.name] for lay in free})
    return out
