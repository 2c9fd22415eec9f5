"""Auto mode: quantize as much as possible while meeting a fidelity target.

1. Try the base scheme without smoothing, then (when MatMul/Gemm layers SmoothQuant can smooth hold
   at least ``SMOOTH_MIN_SHARE`` of the weights; a Conv network skips it) with each SmoothQuant alpha in
   ``smooth_alphas`` on the activation tensors whose outlier ratio reaches each of
   ``smooth_outlier_ratios`` (most selective first). Stop at the first ratio where a trial
   meets ``target_cos`` (mean) and ``min_cos`` (worst sample) and keep its best alpha:
   fewer smoothed tensors means fewer ``Mul`` nodes at run time.
2. If none does, take the best alpha, measure per-layer sensitivity
   (:mod:`.sensitivity`), and keep the most sensitive layers in float until the target is met
   or ``max_kept_fraction`` of the layers is kept: one more layer per trial up to
   ``LINEAR_KEEP_MAX`` layers, else a bisection on the count (the fewest that meet it, assuming
   fidelity grows with the layers kept; log2 of the trials).
3. Report every trial, the layers kept and why (their sensitivity score).

4. Choose by measuring (``choose_by_speed``): int8 is not faster everywhere — ONNX Runtime's
   static (QDQ → ``QLinearConv``) convs lose to the float kernels on small feature maps, its
   dynamic ``ConvInteger`` is slower than float on every CNN measured here, and on a tiny
   MatMul the run-time quantization costs more than it saves. So the layouts that split the
   layers by op type — static for Conv with dynamic or static or no int8 for MatMul/Gemm, and
   the other base for the MatMul/Gemm layers — are built, each must meet the same fidelity
   target, and all are timed against the float model, interleaved (batch 1, as ``bench``
   does). Among the layouts faster than float (median per-round ratio < 1) the one that
   quantizes the most weight elements wins, unless another runs in at most ``MUCH_FASTER``
   (0.8) of its time, which then wins. When none is faster, int8 arithmetic does not pay on
   this graph, and the layout that stores the weights in int8 but computes in float
   (:func:`.backend.int8_weight_storage`: ONNX Runtime folds the dequantization away when it
   loads the model, so the graph that runs is the float one) is kept if it meets the fidelity
   target and is not slower than float beyond the timing spread: the file shrinks, the speed
   stays. Otherwise the fastest layout is kept and the CLI's speed gate judges the written file
   (exit 3 unless ``--allow-slower``).

Fidelity is measured on the user's data (the calibration set given to ``quantize``), as
the worse of running each sample alone and running padded batches of 16 (dynamic int8 takes
one activation range per batch, so both deployments are checked).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ...errors import BudgetError, InputError, UnsupportedError
from ..configs import AutoConfig, Int8DynamicConfig, Int8StaticConfig
from . import backend as ob
from .sensitivity import QuantizeFn, deployed_fidelity, layer_sensitivity, run_outputs

SPEED_THREADS = 2  # the thread count `bench` and the CLI's speed gate time at, unless `--threads` says otherwise
LINEAR_KEEP_MAX = 4  # up to this many keepable layers the keep-float trials go one by one, beyond it they bisect
SMOOTH_MIN_SHARE = 0.1  # smoothing trials only when smoothable layers hold this share of the weights
MUCH_FASTER = 0.8  # auto prefers the most-quantized layout faster than float unless one is this much faster
STORAGE_WHAT = "int8 weight storage, float compute (dequantized when ONNX Runtime loads the model)"


def _smoothable_share(model: onnx.ModelProto, nodes: Sequence[str]) -> float:
    """The share of ``nodes``' weight elements in layers SmoothQuant can smooth (MatMul/Gemm on an activation)."""
    from .smooth import _targets

    sizes = {w.name: int(np.prod(w.shape)) for w in ob.weight_nodes(model)}
    total = sum(sizes.get(n, 0) for n in nodes)
    smooth = sum(sizes.get(n.name, 0) for group in _targets(model, nodes).values() for n in group)
    return smooth / total if total else 0.0


@dataclass
class AutoResult:
    model: onnx.ModelProto
    alpha: float
    cos_mean: float
    cos_min: float
    met: bool
    layers: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)  # [{layer, score, reason}]
    sensitivity: dict[str, float] = field(default_factory=dict)
    smooth: dict[str, Any] = field(default_factory=dict)
    scheme: str = ""  # the base scheme the trials ran (int8-static when auto chose it for a conv network)
    speed: list[dict[str, Any]] = field(default_factory=list)  # the layouts timed (step 4), chosen one marked
    layer_speed: dict[str, dict[str, float]] = field(default_factory=dict)  # {layer: {int8 form: ratio alone}}

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "alpha": self.alpha, "cos_mean": self.cos_mean, "cos_min": self.cos_min,
                "met": self.met,
                "quantized_layers": self.layers - len(self.kept), "kept_float": self.kept, "trials": self.trials,
                "sensitivity": self.sensitivity, "smooth": self.smooth, "speed": self.speed,
                "layer_speed": self.layer_speed}

    def summary(self) -> str:
        return summary_from_dict(self.to_dict())


def _quantize_fn(base: Any) -> QuantizeFn:
    if isinstance(base, Int8DynamicConfig):
        return lambda m, nodes: ob.quantize_dynamic_int8(m, nodes, per_channel=base.per_channel,
                                                         reduce_range=base.reduce_range,
                                                         per_channel_min_db=base.per_channel_min_db)
    raise UnsupportedError(f"auto mode works on top of Int8DynamicConfig or Int8StaticConfig, not {type(base).__name__}")


def auto_quantize(prep: Any, config: AutoConfig, *, progress: bool = False) -> AutoResult:
    from .smooth import activation_absmax, smooth_model

    data = prep.data
    if data is None:
        raise InputError("auto mode needs data to measure fidelity on: pass --data")
    base = config.base
    scheme = "int8-static" if isinstance(base, Int8StaticConfig) else "int8-dynamic"
    if isinstance(base, Int8DynamicConfig) and base.op_types == Int8DynamicConfig.model_fields["op_types"].default:
        conv = sum(int(np.prod(w.shape)) for w in ob.weight_nodes(prep.model, ("Conv",)))
        other = sum(int(np.prod(w.shape)) for w in ob.weight_nodes(prep.model, base.op_types))
        if conv > other:  # a conv network: ONNX Runtime's fast int8 conv is QLinearConv, i.e. static int8
            base = Int8StaticConfig(per_channel=True, include=base.include, exclude=base.exclude)
            scheme = "int8-static, chosen: most weights are in Conv layers"
    if isinstance(base, Int8StaticConfig):
        qfn = static_int8_fn(base, data)
        op_types: Sequence[str] = base.op_types or ("Conv", "MatMul", "Gemm")
    else:
        qfn = _quantize_fn(base)
        op_types = base.op_types  # type: ignore[attr-defined]
    float_model = prep.model
    cands = ob.weight_nodes(float_model, op_types)
    include = tuple(config.include) + tuple(base.include)
    exclude = tuple(config.exclude) + tuple(base.exclude)
    nodes = ob.select_nodes(cands, include, exclude)
    # Convs the base leaves out (a dynamic base), selected by the same patterns: step 4 may still quantize them
    conv_cands = ob.weight_nodes(float_model, ("Conv",))
    picked = set(ob.select_nodes(list({c.name: c for c in [*cands, *conv_cands]}.values()), include, exclude)) \
        if conv_cands and cands else set()
    convs = [c.name for c in conv_cands if c.name in picked]
    if not nodes:
        if cands:
            raise InputError(f"auto: no layer left to quantize: --include/--exclude removed all {len(cands)} "
                             "candidates")
        raise InputError(ob.no_candidates_message(float_model, op_types, "auto"))
    try:
        ref1 = run_outputs(float_model, data, batch=1)
        ref = (ref1, run_outputs(float_model, data, batch=16))
    except Exception as exc:  # ORT's multi-line message on data that does not fit the model's fixed dims
        from ...errors import first_line

        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in data.items())
        raise InputError(f"auto: the float model does not run on --data ({shapes}; a sample is a slice of "
                         f"the first axis): {first_line(exc, 200)}") from None
    trials: list[dict[str, Any]] = []
    best: tuple[float, float, float, onnx.ModelProto, onnx.ModelProto, dict[str, Any]] | None = None
    absmax = None
    chosen = None
    plan: list[tuple[float, float]] = [(0.0, 0.0)] if 0.0 in config.smooth_alphas else []
    for ratio in config.smooth_outlier_ratios or (0.0,):
        plan += [(a, ratio) for a in config.smooth_alphas if a > 0]
    if plan and plan[0] == (0.0, 0.0) and _smoothable_share(float_model, nodes) < SMOOTH_MIN_SHARE:
        # SmoothQuant moves activation outliers into MatMul/Gemm weights; on a graph whose quantized weights
        # are mostly Conv kernels the trials cannot change much, and each costs a full calibration
        plan = plan[:1]
    steps: Any = plan
    if progress:
        from rich.progress import track

        steps = track(plan, description="auto: smoothing trials", transient=True)
    level: float | None = None  # the outlier ratio whose trials are running
    met_here: tuple[float, float, float, onnx.ModelProto, onnx.ModelProto, dict[str, Any]] | None = None
    for alpha, ratio in steps:
        if level is not None and ratio != level and met_here is not None:
            break  # a narrower smoothing already met the target: fewer Mul nodes
        level = ratio
        if alpha > 0:
            if absmax is None:
                from .smooth import _targets

                absmax = activation_absmax(float_model, list(_targets(float_model, nodes)), data)
            smoothed, rep = smooth_model(float_model, data, alpha=alpha, nodes=nodes, absmax=absmax,
                                         min_outlier_ratio=ratio)
            smooth_info = rep.to_dict()
            smooth_info["min_outlier_ratio"] = ratio
            smooth_info["tensors"] = len(rep.folded)
            what = f"alpha={alpha:g} on {len(rep.folded)} tensors with outlier ratio >= {ratio:g}"
        else:
            smoothed, smooth_info = float_model, {}
            what = "no smoothing"
        q = qfn(smoothed, nodes)
        mean, worst = deployed_fidelity(ref, q, data)
        trials.append({"what": f"{what}, all {len(nodes)} layers", "alpha": alpha, "outlier_ratio": ratio,
                       "cos_mean": mean, "cos_min": worst})
        meets = mean >= config.target_cos and worst >= config.min_cos
        cand = (alpha, mean, worst, smoothed, q, smooth_info)
        if best is None or (mean, worst) > (best[1], best[2]):
            best = cand
        if meets and alpha == 0:  # no smoothing needed: no extra nodes at all
            chosen = cand
            break
        if meets and (met_here is None or (mean, worst) > (met_here[1], met_here[2])):
            met_here = cand
    if hasattr(steps, "close"):  # end the progress display even when the loop stopped early
        steps.close()
    if chosen is None and met_here is not None:
        chosen = met_here
    if best is None:
        raise InputError("auto: smooth_alphas is empty")
    if chosen is None and best[1] >= config.target_cos and best[2] >= config.min_cos:
        chosen = best
    if chosen is not None:
        alpha, mean, worst, sm, q, smooth_info = chosen
        res = AutoResult(q, alpha, mean, worst, True, len(nodes), trials, [], {}, smooth_info, scheme)
        return _by_speed(res, sm, nodes, base, float_model, ref, data, config, progress, convs)

    alpha, mean, worst, smoothed, q, smooth_info = best
    scores = layer_sensitivity(smoothed, nodes, data, qfn, reference=ref1, progress=progress)
    order = sorted(nodes, key=lambda n: scores[n], reverse=True)
    limit = int(len(nodes) * config.max_kept_fraction)

    def probe(k: int) -> tuple[onnx.ModelProto, float, float, bool]:
        """Keep the ``k`` most sensitive layers float; record the trial."""
        q_k = qfn(smoothed, [n for n in nodes if n not in order[:k]])
        m_k, w_k = deployed_fidelity(ref, q_k, data)
        trials.append({"what": f"alpha={alpha:g}, {k} most sensitive kept float", "alpha": alpha,
                       "cos_mean": m_k, "cos_min": w_k})
        return q_k, m_k, w_k, m_k >= config.target_cos and w_k >= config.min_cos

    met, k = False, 0
    if limit <= LINEAR_KEEP_MAX:  # few layers: one more kept per trial, the fewest that meet the target
        for k in range(1, limit + 1):
            q, mean, worst, met = probe(k)
            if met:
                break
    else:  # bisect on the count (fidelity grows with the layers kept): log2(limit) trials instead of limit
        q, mean, worst, met = probe(limit)
        k = limit
        lo = 0  # keeping none missed the target (the trials above)
        while met and k - lo > 1:
            mid = (lo + k) // 2
            q_m, m_m, w_m, ok = probe(mid)
            if ok:
                k, q, mean, worst = mid, q_m, m_m, w_m
            else:
                lo = mid
    kept = order[:k]
    if not met:
        raise BudgetError(f"auto could not reach cosine {config.target_cos} mean / {config.min_cos} worst: best "
                          f"{mean:.6f} / {worst:.6f} with {len(kept)} of {len(nodes)} layers kept float "
                          f"(raise max_kept_fraction or lower the target)")
    total = sum(scores.values()) or 1.0
    kept_info = [{"layer": n, "score": scores[n],
                  "reason": f"sensitivity {scores[n]:.2e} = {100 * scores[n] / total:.0f}% of the summed per-layer loss"}
                 for n in kept]
    res = AutoResult(q, alpha, mean, worst, True, len(nodes), trials, kept_info, scores, smooth_info, scheme)
    return _by_speed(res, smoothed, [n for n in nodes if n not in kept], base, float_model, ref, data, config,
                     progress, convs)


def _layer_forms(smoothed: onnx.ModelProto, nodes: Sequence[str], base: Any, data: dict[str, Any],
                 convs: Sequence[str] = (), progress: bool = False, threads: int = SPEED_THREADS
                 ) -> dict[str, dict[str, float]]:
    """Each layer timed alone (:func:`.layer_speed.time_layers`): Conv as static int8, MatMul/Gemm as
    static and dynamic int8, against float. ``{layer: {form: ratio}}``."""
    from . import layer_speed

    types = {w.name: w.op_type for w in ob.weight_nodes(smoothed, list(ob.WEIGHT_INPUT))}
    conv = [n for n in dict.fromkeys([*nodes, *convs]) if types.get(n) == "Conv"]
    mm = [n for n in nodes if types.get(n) in ("MatMul", "Gemm")]
    static = base if isinstance(base, Int8StaticConfig) else Int8StaticConfig(per_channel=True)
    pc = base.per_channel if isinstance(base, Int8DynamicConfig) else True

    def static_form(m: onnx.ModelProto, names: list[str], d: dict[str, Any]) -> onnx.ModelProto:
        return static_int8_fn(static, d)(m, names)

    def dynamic_form(m: onnx.ModelProto, names: list[str], _d: dict[str, Any]) -> onnx.ModelProto:
        return ob.quantize_dynamic_int8(m, names, per_channel=pc)

    out = layer_speed.time_layers(smoothed, conv, data, {"static": static_form}, threads=threads,
                                  progress=progress) if conv else {}
    if mm:
        out.update(layer_speed.time_layers(smoothed, mm, data, {"static": static_form, "dynamic": dynamic_form},
                                           threads=threads, progress=progress))
    return out


def _layouts(smoothed: onnx.ModelProto, nodes: Sequence[str], base: Any,
             data: dict[str, Any], convs: Sequence[str] = (),
             per_layer: dict[str, dict[str, float]] | None = None) -> list[tuple[str, list[str], Any]]:
    """The alternatives to the base layout: ``(what, nodes quantized, build() -> model)``.

    Convs: all static int8, only the dense ones (``group`` 1: ONNX Runtime's int8 depthwise and
    grouped kernels are the ones that lose to float most often), or none; MatMul/Gemm: static,
    dynamic or float. Every combination but the base layout itself and "nothing quantized".
    With ``per_layer`` (each layer's int8/float ratio timed alone, :func:`_layer_forms`), one more:
    each timed layer in its fastest int8 form when that form ran faster than float alone, the
    others float — unless that equals a layout above."""
    types = {w.name: w.op_type for w in ob.weight_nodes(smoothed, list(ob.WEIGHT_INPUT))}
    grouped = {n.name for n in smoothed.graph.node if n.op_type == "Conv"
               and any(a.name == "group" and a.i > 1 for a in n.attribute)}
    own = [n for n in nodes if types.get(n) == "Conv"]
    conv = own + [n for n in convs if n not in own]  # a dynamic base leaves Convs out: static ones may still pay
    dense = [n for n in conv if n not in grouped]
    mm = [n for n in nodes if types.get(n) != "Conv"]  # MatMul/Gemm, and what a dynamic base also takes (LSTM...)
    static = isinstance(base, Int8StaticConfig)
    sfn = static_int8_fn(base if static else Int8StaticConfig(per_channel=True), data)

    def dyn(m: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
        pc = base.per_channel if isinstance(base, Int8DynamicConfig) else True
        return ob.quantize_dynamic_int8(m, names, per_channel=pc)

    def build(static_convs: list[str], dynamic_mm: list[str], static_mm: list[str]) -> onnx.ModelProto:
        m = sfn(smoothed, static_convs + static_mm) if static_convs or static_mm else smoothed
        return dyn(m, dynamic_mm) if dynamic_mm else m

    conv_sets: list[tuple[str, list[str]]] = [("static int8 Conv", conv)] if conv else []
    if conv and dense and len(dense) < len(conv):
        conv_sets.append((f"static int8 Conv with group 1 ({len(conv) - len(dense)} grouped/depthwise float)", dense))
    conv_sets.append(("Conv float" if conv else "", []))
    mm_sets: list[tuple[str, list[str]]] = [("static int8 MatMul/Gemm", mm), ("dynamic int8 MatMul/Gemm", mm),
                                            ("MatMul/Gemm float" if mm else "", [])] if mm else [("", [])]
    out: list[tuple[str, list[str], Any]] = []
    for cwhat, cset in conv_sets:
        for mwhat, mset in mm_sets:
            if not cset and not mset:
                continue
            mkind = "static" if mwhat.startswith("static") else "dynamic" if mwhat.startswith("dynamic") else "float"
            if (static and cset == conv and (not mm or mkind == "static")) or \
                    (not static and not cset and not own and mkind == "dynamic"):
                continue  # the base layout
            what = " + ".join(w for w in (cwhat, mwhat) if w)
            out.append((what, cset + mset, functools.partial(build, cset, mset if mkind == "dynamic" else [],
                                                                     [] if mkind == "dynamic" else mset)))
    if per_layer:
        def best(n: str) -> str | None:
            forms = per_layer.get(n) or {}
            f = min(forms, key=lambda k: forms[k], default=None)
            return f if f is not None and forms[f] < 1.0 else None

        pc_conv = [n for n in conv if best(n) == "static"]
        pl_dyn = [n for n in mm if best(n) == "dynamic"]
        pl_static = [n for n in mm if best(n) == "static"]
        same = {(frozenset(c), frozenset(m), k) for _, c in conv_sets for m, k in
                ((mm, "static"), (mm, "dynamic"), ([], "float"))}
        kind = "static" if pl_static and not pl_dyn else "dynamic" if pl_dyn and not pl_static else \
            "float" if not pl_static and not pl_dyn else "mixed"
        key = (frozenset(pc_conv), frozenset(pl_static + pl_dyn), kind)
        is_base = (static and pc_conv == conv and (not mm or kind == "static") and len(pl_static) == len(mm)) or \
                  (not static and not pc_conv and not own and kind == "dynamic" and len(pl_dyn) == len(mm))
        if (pc_conv or pl_dyn or pl_static) and key not in same and not is_base:
            parts = [f"static int8 on {len(pc_conv)} of {len(conv)} Conv" if conv else "",
                     f"static int8 on {len(pl_static)}, dynamic on {len(pl_dyn)} of {len(mm)} MatMul/Gemm" if mm else ""]
            out.append(("per layer (each measured faster in int8 alone): " + ", ".join(p for p in parts if p),
                        pc_conv + pl_static + pl_dyn, functools.partial(build, pc_conv, pl_dyn, pl_static)))
    return out


def _by_speed(res: AutoResult, smoothed: onnx.ModelProto, nodes: Sequence[str], base: Any,
              float_model: onnx.ModelProto, ref: tuple[np.ndarray, np.ndarray], data: dict[str, Any],
              config: AutoConfig, progress: bool, convs: Sequence[str] = ()) -> AutoResult:
    """Step 4 of the module doc: time the base layout against its per-op-type alternatives; keep the fastest."""
    if not config.choose_by_speed or not nodes:
        return res
    sizes = {w.name: int(np.prod(w.shape)) for w in ob.weight_nodes(smoothed, list(ob.WEIGHT_INPUT))}
    cands: list[dict[str, Any]] = [{"what": f"{res.scheme.split(',')[0] or 'base'} on all {len(nodes)} layers",
                                    "model": res.model,
                                    "names": list(nodes),
                                    "int8_weights": sum(sizes.get(n, 0) for n in nodes),
                                    "cos_mean": res.cos_mean, "cos_min": res.cos_min}]
    per_layer = _layer_forms(smoothed, nodes, base, data, convs, progress, config.threads)
    res.layer_speed = per_layer
    for what, names, build in _layouts(smoothed, nodes, base, data, convs, per_layer):
        try:
            q = build()
            mean, worst = deployed_fidelity(ref, q, data)
        except Exception as exc:  # an ORT quantizer that cannot write this layout: not a candidate
            from ...errors import first_line

            res.speed.append({"what": what, "skipped": first_line(exc, 160)})
            continue
        if mean < config.target_cos or worst < config.min_cos:
            res.speed.append({"what": what, "cos_mean": mean, "cos_min": worst, "skipped": "misses the fidelity target"})
            continue
        cands.append({"what": what, "model": q, "names": names, "int8_weights": sum(sizes.get(n, 0) for n in names),
                      "cos_mean": mean, "cos_min": worst})
    stored = list(nodes) + [n for n in convs if n not in nodes]
    try:
        q = ob.int8_weight_storage(smoothed, stored)
        mean, worst = deployed_fidelity(ref, q, data)
    except Exception as exc:  # pragma: no cover - a graph ONNX Runtime cannot fold: not a candidate
        from ...errors import first_line

        res.speed.append({"what": STORAGE_WHAT, "skipped": first_line(exc, 160)})
    else:
        if mean < config.target_cos or worst < config.min_cos:
            res.speed.append({"what": STORAGE_WHAT, "cos_mean": mean, "cos_min": worst,
                              "skipped": "misses the fidelity target"})
        else:
            cands.append({"what": STORAGE_WHAT, "model": q, "names": stored, "storage": True,
                          "int8_weights": sum(sizes.get(n, 0) for n in stored), "cos_mean": mean, "cos_min": worst})
    if len(cands) == 1:
        return res
    timed = time_layouts(float_model, [c["model"] for c in cands], data, progress=progress, threads=config.threads)
    for c, (ratio, spread) in zip(cands, timed, strict=True):
        c["ratio"], c["ratio_spread"] = ratio, spread
    compute = [c for c in cands if not c.get("storage")]
    storage = next((c for c in cands if c.get("storage")), None)
    faster = [c for c in compute if c["ratio"] < 1.0]
    fastest = min(cands, key=lambda c: c["ratio"])
    pick = max(faster, key=lambda c: (c["int8_weights"], -c["ratio"])) if faster else fastest
    if faster and min(faster, key=lambda c: c["ratio"])["ratio"] <= MUCH_FASTER * pick["ratio"]:
        pick = min(faster, key=lambda c: c["ratio"])  # a layout that quantizes less but runs clearly faster
    elif not faster and storage is not None and storage["ratio"] - storage["ratio_spread"] <= 1.0:
        pick = storage  # no int8 arithmetic pays here: keep the float speed, store the weights in int8
    float_left = [n for n in stored if n not in pick["names"]]
    if float_left and pick is not storage:  # what the timing keeps float can still be stored in int8
        try:
            q = ob.int8_weight_storage(pick["model"], float_left)
            mean, worst = deployed_fidelity(ref, q, data)
        except Exception:  # pragma: no cover - same as a layout that cannot be built
            mean = worst = -1.0
        if mean >= config.target_cos and worst >= config.min_cos:
            pick.update(model=q, cos_mean=mean, cos_min=worst, stored_float=float_left, int8_storage=len(float_left))
    for c in cands:
        res.speed.append({k: v for k, v in c.items() if k not in ("model", "names", "stored_float")}
                         | {"chosen": c is pick})
    res.model, res.cos_mean, res.cos_min = pick["model"], pick["cos_mean"], pick["cos_min"]
    if pick is not cands[0]:
        res.layers += len([n for n in pick["names"] if n not in nodes])  # static Convs a dynamic base left out
        why = (f"timed: the layout \"{pick['what']}\" ({pick['ratio']:.2f}× the float latency) keeps it float"
               + ("" if faster else "; no layout was faster than float"))
        res.kept = res.kept + [{"layer": n, "score": 0.0, "reason": why} for n in nodes if n not in pick["names"]]
    return res


def time_layouts(float_model: onnx.ModelProto, models: Sequence[onnx.ModelProto], data: dict[str, Any], *,
                 progress: bool = False, threads: int = SPEED_THREADS) -> list[tuple[float, float]]:
    """``(ratio, spread)`` of each model's latency against ``float_model`` on the first sample of ``data``:
    the median of per-round ratios and half their 10–90 % range, timed interleaved in ONNX Runtime at
    ``threads`` intra-op threads (:func:`deepshrink.evaluate.latency.measure_latency`), at least
    20 rounds and 1 s."""
    from ...backends.onnx import make_session
    from ...evaluate.latency import measure_latency
    from .sensitivity import _trim

    first = {k: v[:1] for k, v in data.items()}
    runners = {}
    for i, m in enumerate([float_model, *models]):
        sess = make_session(m, threads=threads)
        feed = _trim({k: first[k] for k in (x.name for x in sess.get_inputs())})
        runners[str(i)] = (lambda s=sess, f=feed: s.run(None, f))
    stats = measure_latency(runners, warmup=3, repeats=20, min_seconds=1.0, threads=threads, progress=progress)
    return [(stats[str(i + 1)].ratio, stats[str(i + 1)].ratio_spread) for i in range(len(models))]


def static_int8_fn(base: Int8StaticConfig, data: dict[str, Any]) -> QuantizeFn:
    """``fn(model, node names) -> model``: those nodes static int8 as ``base`` says, calibrated on ``data``."""
    return lambda m, nodes: ob.quantize_static_int8(
        m, nodes, data, observer=base.observer, percentile=base.percentile, per_channel=base.per_channel,
        fmt=base.format, symmetric_activations=base.symmetric_activations, op_types=base.op_types)


def summary_from_dict(d: dict[str, Any]) -> str:
    """The CLI's text for an ``AutoResult.to_dict()``: trials, then the layers kept float and why."""
    if d.get("strategy") == "search":
        return _search_summary(d)
    chosen = next((t["what"] for t in d.get("speed") or [] if t.get("chosen")), None)
    base = f" (base {d['scheme']}; timed layout: {chosen})" if chosen else f" ({d['scheme']})" if d.get("scheme") else ""
    lines = [f"auto{base}: smoothing alpha {d['alpha']:g}, {d['quantized_layers']} layers int8, {len(d['kept_float'])} kept float; "
             f"cosine {d['cos_mean']:.4f} mean / {d['cos_min']:.4f} worst on the calibration data"]
    for t in d["trials"]:
        lines.append(f"  trial {t['what']}: cosine {t['cos_mean']:.4f} / {t['cos_min']:.4f}")
    ls = d.get("layer_speed") or {}
    if ls:
        faster = sum(1 for forms in ls.values() if forms and min(forms.values()) < 1.0)
        lines.append(f"  per-layer timing: {faster} of {len(ls)} layers ran faster in int8 than in float alone")
    for t in d.get("speed") or []:
        if "skipped" in t:
            lines.append(f"  layout {t['what']}: not timed ({t['skipped']})")
        else:
            lines.append(f"  layout {t['what']}: {t['ratio']:.2f}× the float latency (±{t['ratio_spread']:.2f}), "
                         f"cosine {t['cos_mean']:.4f} / {t['cos_min']:.4f}{'  <- chosen' if t.get('chosen') else ''}")
            if t.get("int8_storage"):
                n = t["int8_storage"]
                lines.append(f"    + the weights of the {n} layer{'s' if n > 1 else ''} it computes in float stored in int8 "
                             "(dequantized when ONNX Runtime loads the model)")
    by_reason: dict[str, list[str]] = {}
    for k in d["kept_float"]:
        by_reason.setdefault(k["reason"], []).append(k["layer"])
    for reason, layers in by_reason.items():
        if len(layers) <= 3:
            lines += [f"  kept float: {name} ({reason})" for name in layers]
        else:  # a timed layout keeping a whole op type float: one line, not one per layer
            more = f" and {len(layers) - 6} more" if len(layers) > 6 else ""
            lines.append(f"  kept float, {len(layers)} layers: {', '.join(layers[:6])}{more} ({reason})")
    if not d["kept_float"]:
        lines.append("  no layer needed to stay float")
    return "\n".join(lines)


def _search_summary(d: dict[str, Any]) -> str:
    """The CLI's text for auto's search preset (:mod:`deepshrink.search.preset`)."""
    s = d["search"]
    where = (f"{s['test_samples']} held-out samples it never chose on" if s["test_samples"]
             else f"{s['select_samples']} held-out samples (also the ones it chose on: too few to split)"
             if s["held_out"] else f"the {s['calibration_samples']} calibration samples (too few to hold any out)")
    lat = (f", {s['latency_ratio']:.2f}x ±{s['latency_spread']:.2f} the float latency"
           if s.get("latency_ratio") is not None else "")
    slow = s.get("slower_than_float")
    if slow:
        lat = (f" (no int8 point that meets the target ran faster than float: the fastest, trial {slow['trial']}, "
               f"{slow['latency_ratio']:.2f}x ±{slow['latency_spread']:.2f})")
    lines = [f"auto (search; int8 is {d['scheme']}): {d['quantized_layers']} layers computed in int8, "
             f"{len(d['kept_float'])} in float{lat}; cosine {d['cos_mean']:.4f} mean / {d['cos_min']:.4f} worst on {where}",
             f"  {s['trials']} trials, {s['built']} models built, {s['seconds']} s; chosen: trial {s['chosen_trial']} "
             f"({s['why']})" if s.get("why") else
             f"  {s['trials']} trials, {s['built']} models built, {s['seconds']} s; chosen: trial {s['chosen_trial']}"]
    if s.get("int8_storage_layers") or s.get("int8_storage_tables"):
        n, t = s.get("int8_storage_layers", 0), s.get("int8_storage_tables", 0)
        what = " and ".join(x for x in (f"the {n} layer{'s' if n > 1 else ''} it computes in float" if n else "",
                                        f"{t} embedding table{'s' if t > 1 else ''}" if t else "") if x)
        lines.append(f"  + the weights of {what} stored in int8 (dequantized when ONNX Runtime loads the model)")
    elif s.get("int8_storage_tried"):
        t = s["int8_storage_tried"]
        n = t.get("layers", len(d["kept_float"]))
        lines.append(f"  not applied: the weights of the {n} layer{'s' if n > 1 else ''} it computes in float stored in "
                     f"int8 (cosine {t['cos_mean']:.4f} / {t['cos_min']:.4f} on the samples it chose on: below the "
                     "target)")
    for t in d.get("speed") or []:
        paired = (f", {t['vs_chosen']:.2f}x the chosen one round by round (±{2 * t['vs_chosen_se']:.2f})"
                  if "vs_chosen" in t else "")
        lines.append(f"  finalist {t['what']}: {t['ratio']:.2f}x the float latency (±{t['ratio_spread']:.2f}){paired}, "
                     f"cosine {t['cos_mean']:.4f} / {t['cos_min']:.4f}{'  <- chosen' if t.get('chosen') else ''}")
    kept = [k["layer"] for k in d["kept_float"]]
    if kept:
        more = f" and {len(kept) - 6} more" if len(kept) > 6 else ""
        lines.append(f"  computed in float: {', '.join(kept[:6])}{more}")
    lines += [f"  warning: {w}" for w in s.get("warnings") or []]
    return "\n".join(lines)
