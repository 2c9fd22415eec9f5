"""Choosing how the int8 layers are built, by measurement, before the per-layer search.

:func:`deepshrink.search.space.int8_forms` lists the ways a model's int8 layers can be built
(dynamic int8 as ``quantize --scheme int8-dynamic`` builds it, with SmoothQuant and per-channel
scales, on the BERT-fused graph...). Their layer sets differ (a fused graph has one ``Attention``
where the plain one has three MatMuls), so the form is one choice for the whole search, made
first: each form's all-int8 model is built through the same path as every candidate, scored on
the select half and — when the search times candidates — timed with the reference and the other
forms in the same interleaved rounds. The form chosen is the cheapest (the search's own cost:
latency, or size with a size budget or no timing) among those whose all-int8 model meets the
fidelity target; when none does, the one closest to it (the per-layer search then buys the rest
back with float layers, whose cost on this hardware is what it is trying to avoid). Ties keep the
earlier form, the one with fewer transformations.

Measured on MiniLM (batch 1, 2 threads, test sentences the search never sees): the plain form
misses cosine 0.997 (0.9927) and the per-layer search had to keep 6 of 36 layers float, each
about 6x slower than its int8 kernel; the BERT-fused form with SmoothQuant alpha 0.8 and
per-channel scales meets it with every layer int8 (0.9981 / 0.9967).
"""

from __future__ import annotations

from typing import Any

from ..errors import DeepshrinkError, first_line
from .config import SearchConfig
from .objective import Candidate, Evaluator
from .space import Space, build_space, int8_forms, key

FORM_TIMING_ROUNDS = 30  # at least this many interleaved rounds for the forms' all-int8 models


def choose_int8_form(ev: Evaluator, reference: Any, calibration: dict[str, Any], config: SearchConfig,
                     say: Any) -> tuple[Space, list[dict[str, Any]]]:
    """Set ``ev.space`` to the chosen form's space; return it and one record per form tried.

    The chosen form's all-int8 candidate goes into ``ev``'s cache as trial 0 (the search's first
    warm start is plain int8, so it is not built again). A form that cannot be built (a fusion that
    finds no attention block, a quantizer error) is recorded with its one-line error and skipped.
    """
    first = ev.space
    forms = int8_forms(reference)
    if "int8" not in config.choices or len(forms) == 1:
        return first, []
    spaces: list[Space] = []
    records: list[dict[str, Any]] = []
    cands: list[Candidate] = []
    for label, cfg in forms:
        rec: dict[str, Any] = {"form": label, "config": cfg.to_dict()}
        records.append(rec)
        try:
            sp = first if (label, cfg) == (first.int8_kind, first.int8) else build_space(
                reference, calibration, config, (label, cfg))
        except DeepshrinkError as exc:
            rec["error"] = first_line(exc, 200)
            continue
        cand = _build(ev, sp, len(spaces))
        if cand.error is not None or cand.select is None:
            rec["error"] = cand.error or "not scored"
            continue
        spaces.append(sp)
        cands.append(cand)
        rec.update({"layers": len(sp.free), "fused": sp.fused, "size_ratio": cand.size_ratio,
                    "select": cand.select.to_dict(), "test": cand.test.to_dict() if cand.test else None})
    ev.forms = records
    if not cands:
        return first, records
    cost_latency = config.repeats > 0 and (config.budget is None or config.budget.resource == "latency")
    if config.repeats:
        stats = ev.time_against_reference({f"form {i}": c.model_bytes for i, c in enumerate(cands)
                                           if c.model_bytes is not None},
                                          max(config.repeats, FORM_TIMING_ROUNDS))
        for i, c in enumerate(cands):
            st = stats[f"form {i}"]
            c.latency_ratio, c.latency_spread, c.latency_ms = st.ratio, st.ratio_spread, st.median_ms
    done = [r for r in records if "error" not in r]
    for rec, c in zip(done, cands, strict=True):
        rec["shortfall"] = ev.shortfall(c.select)
        if c.latency_ratio is not None:
            rec.update({"latency_ratio": c.latency_ratio, "latency_spread": c.latency_spread})

    def cost(i: int) -> float:
        c = cands[i]
        return (c.latency_ratio if cost_latency and c.latency_ratio is not None else c.size_ratio)

    meets = [i for i, c in enumerate(cands) if ev.shortfall(c.select) <= 0]
    if meets:
        pick = min(meets, key=lambda i: (cost(i), i))
        why = "its all-int8 model meets the fidelity target at the lowest " + ("latency" if cost_latency else "size")
    else:
        pick = min(range(len(cands)), key=lambda i: (ev.shortfall(cands[i].select), i))
        why = "no form's all-int8 model meets the target; this one comes closest"
    done[pick]["chosen"] = True
    done[pick]["why"] = why
    chosen, cand = spaces[pick], cands[pick]
    cand.trial, cand.origin = 0, "plain int8"
    ev.space = chosen
    ev.cache = {key(chosen.uniform("int8")): cand}
    ev.builds += 1
    say(f"int8 form: {chosen.int8_kind} ({why}; {len(cands)} forms measured)")
    return chosen, records


def _build(ev: Evaluator, space: Space, index: int) -> Candidate:
    """``space``'s all-int8 candidate, built and scored but not timed, outside the search's cache."""
    saved = ev.space, ev.cache, ev.builds
    ev.space, ev.cache = space, {}
    try:
        return ev.evaluate(space.uniform("int8"), trial=-1 - index, origin="int8 form", timed=False)
    finally:
        ev.space, ev.cache, ev.builds = saved  # only the chosen form's model counts as one of the search's builds
