"""``quantize --scheme auto`` as a preset of the per-layer search (issue 14).

The preset is :func:`deepshrink.search.search` with: int8 or float per layer (``choices``),
the auto config's cosine target (``target_cos`` mean, ``min_cos`` worst sample), latency as the
cost (timed at ``config.threads`` threads — 2 unless ``quantize --threads`` says otherwise — batch 1, as ``bench``
and the CLI's speed gate time; size when
``choose_by_speed`` is False), ``trials`` candidates, no channel pruning or Deep Compression.
The search brings what the fixed sequence of :mod:`deepshrink.quantize.onnx.auto` did not have:

- it chooses on samples *held out* of the calibration set and reports a second held-out part it
  never chose on (the first user's MiniLM run with the fixed sequence met cosine 0.997 on the
  calibration sentences while its worst unseen sentence fell to 0.985);
- the int8 form (dynamic, SmoothQuant alphas, per-channel, the BERT-fused graph; static for a
  conv network) is chosen by measuring each form's all-int8 model (:mod:`.forms`), and the per-layer
  float/int8 choice by an optimiser seeded from sensitivity and per-layer timing, every candidate
  timed whole against the original;
- among candidates as fast as the fastest (not measurably slower round by round) it keeps the most
  faithful on the samples it chose on, not the smallest file: the margin is what carries to unseen samples
  (magika, from a PyPI wheel: plain int8 chosen at worst 0.9927 fell to 0.985 on unseen inputs while an
  equally fast finalist stood at 0.9981);
- the original model is one of the candidates, so the chosen point is never slower than the best
  alternative measured without a warning.

After the search, the layers the chosen point computes in float (and the embedding tables of at
least 262,144 elements, which the search's per-layer space does not cover) store their weights in int8
(:func:`deepshrink.quantize.onnx.backend.int8_weight_storage`, dequantized when ONNX Runtime
loads the model: same speed, smaller file) when the held-out fidelity still meets the target — the
fallback of the fixed sequence, kept.

The report keeps the keys of :class:`deepshrink.quantize.onnx.auto.AutoResult` (``scheme``,
``cos_mean``/``cos_min`` — here the held-out figures —, ``trials``, ``kept_float``, ``speed``,
``layer_speed``...) and adds ``search``: where fidelity was measured and the search's own figures.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import BudgetError, InputError

# a point meets the mean-cosine target when its mean on the samples chosen on is 2 standard errors above it:
# MiniLM's plain int8 chosen at 0.9971 on 96 sentences (target 0.997) gave 0.9965 on new ones
CONFIDENCE = 2.0
SCORE_BATCHES = (1, 32)  # one request, and the batch `bench` (the CLI's table and fidelity gate) measures in
LAYER_OPS = ("MatMul", "Gemm", "Conv")
TABLE_OPS = ("Gather", "EmbedLayerNormalization")  # embedding tables: no per-layer choice in the search's space
TABLE_MIN_ELEMENTS = 262_144  # as Int8DynamicConfig.gather_min_elements: smaller tables are not worth a node


def auto_by_search(model: Any, config: Any, *, data: Any, progress: bool = False, say: Any = None,
                   **load_options: Any) -> Any:
    """Run the search preset for an :class:`~deepshrink.quantize.configs.AutoConfig`; return a
    :class:`~deepshrink.quantize.onnx.outcome.QuantizeOutcome` whose report holds ``auto``.

    ``data``: the whole set the user gave (a path, a built-in source or a Dataset): its first
    ``config.calibration_size`` samples calibrate, the rest are held out
    (:func:`deepshrink.evaluate.gate.split_holdout`); with fewer than 32 samples nothing can be
    spared and fidelity is measured on the calibration samples (said in the report).

    Raises :class:`InputError` without data; :class:`BudgetError` when no candidate meets the
    target with any layer in int8 (compute or storage).
    """
    from pydantic import ValidationError

    from ..core.config import format_validation_error
    from ..core.data import load_data
    from ..evaluate.gate import split_holdout
    from ..quantize.api import to_onnx_handle
    from ..quantize.onnx import backend as ob
    from ..quantize.onnx.outcome import Prepared, result, stored_low_bit_weights
    from .config import SearchConfig
    from .runner import BudgetNotMetError, _split_select_test, search

    if data is None:
        raise InputError("auto mode needs data to measure fidelity on: pass --data")
    handle = to_onnx_handle(model, **load_options)
    ds = load_data(data, handle)
    calib, held, spared = split_holdout(ds, config.calibration_size)
    target = f"cosine {config.target_cos} mean / {config.min_cos} worst"
    try:
        scfg = SearchConfig(target_cos=config.target_cos, min_cos=min(config.min_cos, config.target_cos),
                            choices=("float", "int8"), trials=config.trials, pack="off", structured="off",
                            threads=config.threads, repeats=20 if config.choose_by_speed else 0,
                            sensitivity_samples=max(2, min(config.calibration_size, 64)),
                            score_batches=SCORE_BATCHES, tie_break="fidelity", confidence=CONFIDENCE)
    except ValidationError as exc:  # pydantic's last line is a URL: name the field and the reason instead
        raise InputError(f"auto: {format_validation_error(exc)}") from None
    with tempfile.TemporaryDirectory(prefix="deepshrink-auto-") as tmp:
        try:
            res = search(handle, calib, scfg, Path(tmp) / "search", eval_data=held, progress=progress, say=say,
                         replay=False)
        except BudgetNotMetError as exc:
            raise BudgetError(f"auto could not reach {target} on held-out samples: {_closest(exc)}") from None
        best = onnx.load_from_string(res.files["best.onnx"].read_bytes())
    rep = res.report
    chosen = rep["chosen"]
    select, test = _split_select_test(held)
    picked = test if test is not None else select
    fid = chosen["test"] if chosen.get("test") else chosen["select"]
    timing = (rep.get("final_timing") or {}).get(f"trial {chosen['trial']}")
    slower = None
    if timing is not None and timing["latency_ratio"] - timing["latency_spread"] > 1.0:
        # every int8 point that meets the target ran slower than float: int8 arithmetic does not pay here, so
        # the float graph (the weights still stored in int8 below) is the fastest answer measured
        slower = {"trial": chosen["trial"], "latency_ratio": timing["latency_ratio"],
                  "latency_spread": timing["latency_spread"]}
        searched, best = best, handle.model
    # the layers the chosen point computes in float, and the large embedding tables (the search assigns only
    # MatMul/Gemm/Conv layers): their weights stored in int8 when the target still holds
    float_nodes = [w.name for w in ob.weight_nodes(best, LAYER_OPS)]
    tables = [w.name for w in ob.weight_nodes(best, TABLE_OPS) if int(np.prod(w.shape)) >= TABLE_MIN_ELEMENTS]
    storage = None
    if float_nodes or tables:
        storage = _stored(handle.model, best, float_nodes + tables, select, test, config)
        if storage is not None:
            storage["tried"]["layers"] = len(float_nodes)
            if "model" in storage:
                storage["layers"], storage["tables"] = len(float_nodes), len(tables)
                best, fid = storage["model"], storage["fidelity"]
    if slower is not None and (storage is None or "model" not in storage):
        best, slower, storage = searched, None, None  # the search's choice: the CLI's speed gate judges it
        # (exit 3 unless --allow-slower); its own float layers are left float
    if not stored_low_bit_weights(best):  # the preset's choices are float / int8: low bit is int8 here
        raise BudgetError(f"auto could not reach {target} with any layer in int8: the search's best point keeps "
                          f"every layer float, and storing their weights in int8 gives {storage_text(storage)} on "
                          "held-out samples (lower --target-cos / --min-cos)")
    auto = _auto_dict(rep, chosen, fid, storage, config, spared, len(calib), len(select),
                      0 if test is None else len(test), picked.source)
    if slower is not None:
        auto["search"]["slower_than_float"] = slower
        auto["quantized_layers"] = 0
        auto["kept_float"] = [{"layer": w, "score": 0.0,
                               "reason": f"no int8 point that meets the target ran faster than float (the fastest, "
                                         f"trial {slower['trial']}: {slower['latency_ratio']:.2f}x "
                                         f"±{slower['latency_spread']:.2f})"} for w in float_nodes]
    prep = Prepared(handle, handle.model, None)
    from ..quantize.api import float_weights

    # as every other quantize route: the weights still stored float are named (a layer the search cannot
    # choose for, such as an LSTM, stays float silently otherwise)
    return result(prep, best, {"auto": auto, "quantized_layers": auto["quantized_layers"],
                               "float_weights": float_weights(handle.model, best)})


def _closest(exc: Exception) -> str:
    msg = str(exc)
    return msg[0].lower() + msg[1:] if msg else "no candidate met the target"


def storage_text(storage: dict[str, Any] | None) -> str:
    if storage is None or "tried" not in storage:
        return "nothing storable"
    t = storage["tried"]
    return f"cosine {t['cos_mean']:.4f} / {t['cos_min']:.4f}"


def _stored(reference: onnx.ModelProto, best: onnx.ModelProto, nodes: list[str], select: Any, test: Any,
            config: Any) -> dict[str, Any] | None:
    """``best`` with ``nodes``' float weights stored in int8, if its fidelity on the samples the search
    chose on (``select``, alone and in batches of 32) still meets the target; else a record of what it
    reached there. The decision never looks at ``test``: that part is only measured, for the report,
    once the storage is kept — the report says it was never chosen on."""
    from ..quantize.onnx import backend as ob
    from ..quantize.onnx.sensitivity import deployed_fidelity, run_outputs

    try:
        q = ob.int8_weight_storage(best, nodes)
    except Exception:  # a graph the storage rewrite cannot handle: keep the chosen model as it is
        return None

    def measure(part: Any) -> dict[str, Any]:
        ref = (run_outputs(reference, part.inputs, batch=1), run_outputs(reference, part.inputs, batch=SCORE_BATCHES[1]))
        mean, low = deployed_fidelity(ref, q, part.inputs, batch=SCORE_BATCHES[1])
        return {"samples": len(part), "cos_mean": mean, "cos_min": low}

    chose = measure(select)
    tried = {"cos_mean": chose["cos_mean"], "cos_min": chose["cos_min"], "layers": len(nodes)}
    if chose["cos_mean"] < config.target_cos or chose["cos_min"] < config.min_cos:
        return {"tried": tried}
    figures = measure(test) if test is not None else chose
    return {"model": q, "fidelity": {**figures, "accuracy": None, "drop_points": None}, "layers": len(nodes),
            "tried": tried}


def _auto_dict(rep: dict[str, Any], chosen: dict[str, Any], fid: dict[str, Any], storage: dict[str, Any] | None,
               config: Any, spared: bool, n_calib: int, n_select: int, n_test: int, where: str) -> dict[str, Any]:
    """The search's report in the shape of ``AutoResult.to_dict()``, plus ``search``."""
    layers = rep["layers"]
    free = [lay for lay in layers if len(lay["options"]) > 1]
    assign = chosen.get("layers") or {}
    kept = [lay["name"] for lay in free if assign.get(lay["name"], "float") == "float"]
    sens = {lay["name"]: float(lay["sensitivity"].get("int8", 0.0)) for lay in free}
    total = sum(sens.values()) or 1.0
    trial = chosen["trial"]
    why = f"the search's chosen point (trial {trial}) computes it in float"
    kept_info = [{"layer": n, "score": sens.get(n, 0.0),
                  "reason": why + (f"; int8 sensitivity {sens[n]:.2e} = {100 * sens[n] / total:.0f}% of the summed "
                                   "per-layer loss" if sens.get(n) else "")} for n in kept]
    form = next((f for f in rep.get("int8_forms") or [] if f.get("chosen")), None)
    alpha = float((form or {}).get("config", {}).get("smooth_alpha") or 0.0)
    final = rep.get("final_timing") or {}
    speed = []
    for c in rep["candidates"]:
        t = final.get(f"trial {c['trial']}")
        if t is None or c.get("select") is None:
            continue
        speed.append({"what": f"trial {c['trial']} ({c['origin']}): {_choices(c['choices'])}",
                      "ratio": t["latency_ratio"], "ratio_spread": t["latency_spread"],
                      "cos_mean": c["select"]["cos_mean"], "cos_min": c["select"]["cos_min"],
                      "chosen": c["trial"] == trial,
                      **({"vs_chosen": t["vs_chosen"], "vs_chosen_se": t["vs_chosen_se"]}
                         if "vs_chosen" in t and c["trial"] != trial else {}),
                      **({"int8_storage": storage["layers"]} if c["trial"] == trial and storage
                         and "model" in storage else {})})
    trials = [{"what": f"trial {c['trial']} ({c['origin']}): {_choices(c['choices'])}",
               "cos_mean": c["select"]["cos_mean"], "cos_min": c["select"]["cos_min"]}
              for c in rep["candidates"] if c.get("select")]
    layer_speed = {lay["name"]: {"int8": lay["int8_latency_alone"]} for lay in layers if "int8_latency_alone" in lay}
    d = rep["data"]
    return {"strategy": "search", "scheme": rep["int8"], "alpha": alpha, "cos_mean": fid["cos_mean"],
            "cos_min": fid["cos_min"], "met": True, "quantized_layers": len(free) - len(kept),
            "kept_float": kept_info, "trials": trials, "sensitivity": sens, "smooth": {}, "speed": speed,
            "layer_speed": layer_speed,
            "search": {"fidelity_on": where, "held_out": spared, "calibration_samples": n_calib,
                       "select_samples": n_select, "test_samples": n_test,
                       "chosen_trial": trial, "select": chosen["select"], "test": chosen.get("test"),
                       "size_ratio": chosen["size_ratio"],
                       "latency_ratio": (final.get(f"trial {trial}") or {}).get("latency_ratio"),
                       "latency_spread": (final.get(f"trial {trial}") or {}).get("latency_spread"),
                       "int8_storage_layers": storage["layers"] if storage and "model" in storage else 0,
                       "int8_storage_tables": storage.get("tables", 0) if storage and "model" in storage else 0,
                       "int8_storage_tried": (storage or {}).get("tried"),
                       "warnings": rep["verdict"].get("warnings", []), "why": rep["verdict"].get("why"),
                       "trials": rep["search"]["trials"], "built": rep["search"]["built"],
                       "seconds": rep["search"]["seconds"], "int8_forms": rep.get("int8_forms") or [],
                       "calibration": d["calibration"]}}


def _choices(counts: dict[str, int]) -> str:
    from .objective import choices_text

    return choices_text(counts)
