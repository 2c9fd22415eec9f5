"""``ds.search``: per-layer sensitivity, then a seeded multi-objective optuna search, then the outputs.

Flow (issue 14):

1. Load the model and the data. Calibration = what ``deepshrink compress`` would give the
   quantize step (``--data``, less its held-out tail when no ``--eval-data`` is given, as
   :func:`deepshrink.evaluate.gate.split_holdout` splits it). Held-out = ``--eval-data`` or that
   tail; it is split again into a *select* half (the search's objective) and a *test* half (the
   figure reported for the chosen point, which the search never saw).
2. Per-layer sensitivity of every choice (:mod:`.sensitivity`), which seeds the optimiser.
3. optuna's multivariate TPE (seeded; ``enqueue_trial`` for the warm starts) minimises
   (quality loss, cost) under the constraints (fidelity target, budget); cost is the budgeted
   quantity, else latency (else size when timing is off). Proposals come in rounds of
   ``proposal_batch``; each new one is built, written, timed interleaved with the reference and
   scored on the select half (:mod:`.objective`) — by the driver, or side by side on Ray
   workers (:mod:`.parallel`) — and the round is told back in proposal order.
   With a size budget (``pack``), Deep Compression candidates follow: a sparsity and a k-means bit
   width per prunable layer, fine-tuned and packed into ``.dsz`` (:mod:`.pack`); with a latency
   budget (``structured``), channel-pruned candidates (:mod:`.slim`): the pruning ratios timed
   one-shot, the ones around the budget fine-tuned. They join the same Pareto set and choice.
4. The Pareto set over (loss, size, latency) (:mod:`.pareto`); the chosen point: among the
   candidates that meet the fidelity target and the budget, with a latency budget the most
   faithful (held-out loss — a gain counts as none — then mean cosine); otherwise the fastest,
   and of those the most faithful with a size budget, the smallest without one. Finalists are re-timed together with the reference, in the
   driver, after any Ray workers are gone.
5. ``best.yaml`` is replayed through ``deepshrink compress`` to write ``best.onnx`` (``best.dsz`` for a
   Deep Compression point) — so the recipe reproduces the file byte for byte by construction — then ``pareto.json``,
   ``report.json``, ``report.md`` and ``pareto.png``.

When no candidate meets the target and the budget, the reports are written (no ``best.*``) and
:class:`BudgetNotMetError` (exit status 4) names the closest candidate and how far it is.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.data import Dataset
from ..core.fileio import write_text_atomic
from ..errors import BudgetError, InputError
from .config import SearchConfig
from .objective import Candidate, Evaluator, choices_text
from .pareto import front
from .space import Space, build_space

SCHEMA = "deepshrink.search/1"
HOLDOUT_MIN_TEST = 32  # below twice this many held-out samples, select and test are the same samples


class BudgetNotMetError(BudgetError):
    """No candidate met the fidelity target and the budget; the reports are written. Exit status 4."""

    exit_code = 4

    def __init__(self, message: str, result: SearchResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class SearchResult:
    out_dir: Path
    met: bool
    best: Candidate | None
    report: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def search(model: Any, data: Any, config: SearchConfig, output: str | os.PathLike[str], *, eval_data: Any = None,
           force: bool = False, weights: str | None = None, input_shapes: Any = None,
           trust_remote_code: bool = False, progress: bool = False, say: Any = None, replay: bool = True
           ) -> SearchResult:
    """Search per-layer quantization choices of ``model`` for ``config``'s target; write OUT_DIR.

    ``model``: anything :func:`deepshrink.load` takes (a path, ``package.module:factory`` with
    ``weights``, an ``nn.Module`` with ``input_shapes``, a handle). ``data``: calibration (and,
    without ``eval_data``, held-out) samples — a path, a built-in source (``digits:train``,
    ``sentences:256``) or a :class:`Dataset`. Returns a :class:`SearchResult`; OUT_DIR then holds
    ``best.onnx`` (or ``best.dsz``), ``best.yaml``, ``pareto.json``, ``report.json``, ``report.md``, ``pareto.png``.

    ``replay=False`` writes ``best.onnx`` from the chosen candidate's own bytes instead of replaying
    ``best.yaml`` through ``compress`` (the same bytes, by construction, without building it again;
    ``quantize --scheme auto`` uses it). ``input_shapes`` and ``eval_data`` as for :func:`deepshrink.load`
    and ``compress``.

    Raises :class:`InputError` (exit 2, nothing written) for a bad model, data, target (accuracy
    without labels) or output folder; :class:`BudgetNotMetError` (exit 4, reports written, no
    ``best.*``) when no candidate meets the target and the budget.
    """
    from ..core.data import load_data
    from ..evaluate.gate import split_holdout
    from ..loading import load
    from ..quantize.api import to_onnx_handle

    say = say or (lambda *a, **k: None)
    out = Path(output)
    _check_out_dir(out, force)
    if config.ray is not None:  # a missing extra or a bad address fails now, not after the sensitivity pass
        from .parallel import check_address, import_ray

        if not import_ray().is_initialized():
            check_address(config.ray)
    source = load(model, weights=weights, input_shapes=input_shapes, data=data, trust_remote_code=trust_remote_code)
    train = load_data(data, source)
    if eval_data is not None:
        calibration, held = train, load_data(eval_data, source)
    else:
        calibration, held, spared = split_holdout(train, len(train))
        if not spared:
            raise InputError(f"data {train.source} has {len(train)} samples: too few to hold some back for "
                             "evaluation; pass more data or --eval-data")
    held = held.take(min(len(held), config.eval_samples))
    if config.max_drop is not None and held.labels is None:
        raise InputError(f"--max-drop is accuracy points and the held-out data {held.source} has no labels; "
                         "give labelled data (an .npz with a 'labels' array, digits:train) or use --target-cos")
    select, test = _split_select_test(held)
    from .pack import wanted
    from .slim import wanted as wanted_slim

    with_pack = wanted(config, source, calibration, say)  # a model or data --pack on cannot use: refused now
    with_slim = wanted_slim(config, source, calibration, say)
    t_start = time.perf_counter()
    reference = to_onnx_handle(source)
    say(f"calibration: {len(calibration)} samples of {calibration.source}; held-out: {len(select)} to choose on"
        + (f", {len(test)} to report on" if test is not None else " (too few to keep a separate test part)"))
    calib_arrays = calibration.take(min(len(calibration), 256)).inputs
    space = build_space(reference, calib_arrays, config)
    if not space.free:
        from ..quantize.onnx.backend import no_candidates_message

        raise InputError(no_candidates_message(reference.model, ("MatMul", "Gemm", "Conv"), "search"))
    ev = Evaluator(reference, space, calibration, select, test, config)
    from ..core.data import check_class_labels

    shape = getattr(ev.ref_select, "first_shape", None) or tuple(ev.ref_select.shape)
    if config.max_drop is not None:  # labels accuracy cannot count (every model, the original too, at 0 %)
        check_class_labels(held.labels, tuple(shape), held.source)
    if with_pack or with_slim:  # and the fine-tunes' cross-entropy cannot read
        check_class_labels(calibration.labels, tuple(shape), calibration.source)
    from .forms import choose_int8_form

    space, _forms = choose_int8_form(ev, reference, calib_arrays, config, say)  # how int8 layers are built
    say(f"{len(space.free)} layers to choose for; int8 is {space.int8_kind}")

    say("per-layer sensitivity")
    from .sensitivity import choice_sensitivity, warm_starts

    sens_inputs = calibration.take(min(len(calibration), config.sensitivity_samples)).inputs
    sens = choice_sensitivity(ev, sens_inputs, progress=progress)
    speed = None
    if _cost_kind(config) == "latency":  # timed, and latency is what the search lowers: where does int8 pay?
        from .sensitivity import int8_speed

        say("per-layer int8 speed (each layer timed alone)")
        speed = ev.int8_speed = int8_speed(ev, calib_arrays, progress=progress)
    starts = warm_starts(space, sens, None if config.target_cos is None else 1.0 - config.target_cos, speed)
    trials, n_workers, trials_s = _optimise(ev, space, starts, config, progress, say)
    cands = [ev.cache[k] for k in dict.fromkeys(t["key"] for t in trials)]
    pack_info = None
    if with_pack:
        from .pack import search_pack

        budget = _budget_value(config, ev) if config.budget is not None and config.budget.resource == "size" else None
        deadline = None if config.time_s is None else t_start + config.time_s
        from ..recipe.runner import factory_spec  # as compress's pack step records it: the replay's bytes

        built, pack_info = search_pack(ev, source, factory_spec(model), sens_inputs, config, budget, deadline, say,
                                       first_trial=len(trials), progress=progress)
        cands += built
    slim_info = None
    if with_slim:
        from .slim import search_slim

        budget = _budget_value(config, ev) if config.budget is not None and config.budget.resource == "latency" else None
        deadline = None if config.time_s is None else t_start + config.time_s
        build = {"model": model, "data": data, "eval_data": eval_data, "weights": weights,
                 "input_shapes": input_shapes, "trust_remote_code": trust_remote_code}
        built, slim_info = search_slim(ev, source, build, config, budget, deadline, say,
                                       first_trial=len(trials) + (pack_info or {}).get("proposals", 0))
        cands += built
    seconds = time.perf_counter() - t_start

    plain = ev.cache.get(_key(space.uniform("int8")))
    res = _finish(out, source, model, data, eval_data, weights, input_shapes, trust_remote_code, config, space, ev,
                  cands, trials, sens, plain, seconds, say, (n_workers, trials_s), pack_info, slim_info, replay)
    if not res.met:
        raise BudgetNotMetError(res.report["verdict"]["message"], res)
    return res


def _key(assign: dict[str, str]) -> str:
    from .space import key

    return key(assign)


def _split_select_test(held: Dataset) -> tuple[Dataset, Dataset | None]:
    from ..evaluate.gate import _slice

    n = len(held)
    if n < 2 * HOLDOUT_MIN_TEST:
        return held, None
    half = n // 2
    return _slice(held, 0, half), _slice(held, half, n)


def _check_out_dir(out: Path, force: bool) -> None:
    from ..core.fileio import check_writable

    if out.exists() and not out.is_dir():
        raise InputError(f"output folder {out} is a file; give a folder for the search's results")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise InputError(f"output folder {out} is not empty; pass --force to overwrite the search's files in it")
        if not (out / "pareto.json").exists():
            raise InputError(f"output folder {out} holds files search did not write; refusing to overwrite them "
                             "even with --force: choose an empty or new folder")
    blocker = next((p for p in (out, *out.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise InputError(f"cannot create output folder {out}: {blocker} is a file")
    if blocker is not None:
        check_writable(blocker)


# ------------------------------------------------------------------------------------------
# the optimiser

def _optimise(ev: Evaluator, space: Space, starts: list[tuple[str, dict[str, str]]], config: SearchConfig,
              progress: bool, say: Any) -> tuple[list[dict[str, Any]], int, float]:
    """Ask the optimiser for rounds of ``config.proposal_batch`` trials, measure the new ones, tell it back.

    The schedule — which trials are proposed before which results are known — is the same
    whether the driver measures the trials one after another or Ray workers measure them side by
    side, and the results are told in proposal order: with exact objectives (no timing, or a size
    budget) the same seed gives the same trials and the same Pareto set on any number of workers.
    A proposal whose assignment was measured before (or earlier in its round) is served from the
    cache under the number of the trial that first proposed it.
    """
    import warnings

    try:
        import optuna
    except ImportError:
        from ..errors import MissingExtraError

        raise MissingExtraError("optuna", "search", "deepshrink search") from None
    from .parallel import Job, workers

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cost_kind = _cost_kind(config)
    budget = _budget_value(config, ev)

    def cost(c: Candidate) -> float:
        if cost_kind == "latency":
            return c.latency_ratio if c.latency_ratio is not None else float("inf")
        return c.size_ratio

    def constraints(trial: Any) -> list[float]:
        return list(trial.user_attrs.get("constraints", [1.0, 1.0]))

    # optuna 5 takes constraints from the trial (Trial.set_constraint); optuna 4 from a function
    per_trial = hasattr(optuna.trial.Trial, "set_constraint")
    with warnings.catch_warnings():  # constant_liar is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant liar: the proposals of one round see the round's earlier ones as pending
        sampler = optuna.samplers.TPESampler(seed=config.seed, multivariate=True, constant_liar=True,
                                             n_startup_trials=max(len(starts), min(10, config.trials // 2)),
                                             **({} if per_trial else {"constraints_func": constraints}))
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    free = space.free
    for _what, assign in starts[:config.trials]:
        study.enqueue_trial({lay.name: assign[lay.name] for lay in free})
    origins = {_key(a): w for w, a in starts}
    log: list[dict[str, Any]] = []
    best: dict[str, Any] = {"rank": None, "text": "-"}

    def tell(trial: Any, cand: Candidate) -> None:
        c1 = ev.shortfall(cand.select)
        c2 = _over_budget(cand, config, budget)
        trial.set_user_attr("constraints", [min(c1, 1e9), min(c2, 1e9)])
        if per_trial:
            trial.set_constraint("fidelity", min(c1, 1e9))
            trial.set_constraint("budget", min(c2, 1e9))
        values = (min(ev.loss(cand.select), 1e9), min(cost(cand), 1e9))
        study.tell(trial, values)
        log.append({"trial": trial.number, "key": cand.key, "cached": cand.trial != trial.number})
        if c1 <= 0 and c2 <= 0 and (best["rank"] is None or (values[1], values[0]) < best["rank"]):
            best.update(rank=(values[1], values[0]), text=f"trial {cand.trial}: {_point(cand, ev)}")

    bar_ctx: Any = contextlib.nullcontext(None)
    if progress:
        from rich.progress import Progress, TextColumn

        from ..core.progress import progress_bar

        bar_ctx = progress_bar(*Progress.get_default_columns(), TextColumn("best: {task.fields[best]}"))
    t0 = time.perf_counter()
    with workers(ev, config, say) as pool, bar_ctx as bar:  # Ray's start-up lines before the bar
        task = bar.add_task("search", total=config.trials, best="-") if bar is not None else None

        def measured(cand: Candidate) -> None:
            ev.add(cand)
            if bar is not None:
                bar.update(task, advance=1)

        while len(log) < config.trials and (config.time_s is None or time.perf_counter() - t0 < config.time_s):
            batch = []
            for _ in range(min(config.proposal_batch, config.trials - len(log))):
                trial = study.ask()
                assign = {lay.name: trial.suggest_categorical(lay.name, list(lay.options)) for lay in free}
                batch.append((trial, assign, _key(assign)))
            jobs: dict[str, Job] = {}
            for trial, assign, k in batch:
                if k not in ev.cache and k not in jobs:
                    jobs[k] = Job(trial.number, assign, k, origins.get(k, "optimiser"))
            pool.run(list(jobs.values()), measured)
            for trial, _assign, k in batch:
                tell(trial, ev.cache[k])
            if bar is not None:
                bar.update(task, completed=len(log), best=best["text"])
    say(f"{len(log)} trials, {ev.builds} models built (the rest from the cache)"
        + (f"; {pool.workers} Ray workers" if config.ray is not None else ""))
    return log, pool.workers, time.perf_counter() - t0


def _cost_kind(config: SearchConfig) -> str:
    if config.budget is not None:
        return config.budget.resource
    return "latency" if config.repeats else "size"


def _budget_value(config: SearchConfig, ev: Evaluator) -> float | None:
    """The budget as a ratio to the reference (size: of its file; latency: of its median ms)."""
    b = config.budget
    if b is None:
        return None
    if b.relative:
        return b.value
    if b.resource == "size":
        return b.value / ev.ref_size
    if ev.budget_ratio is None:  # timed once: every trial and the final choice use the same figure
        ref_ms = ev.time_against_reference({}, max(config.repeats, 20))["reference"].median_ms
        ev.budget_ratio = b.value / ref_ms
    return ev.budget_ratio


def _over_budget(c: Candidate, config: SearchConfig, budget: float | None, final: dict[str, Any] | None = None
                 ) -> float:
    """How far ``c`` is over the budget, as a ratio to the reference (<= 0: within); a latency from the
    finalists' re-timing (``final``) when ``c`` is one of them."""
    if c.error is not None:
        return float("inf")
    if budget is None or config.budget is None:
        return 0.0
    if config.budget.resource == "size":
        return c.size_ratio - budget
    return _latency(c, final) - budget


def _verdict_of(c: Candidate, ev: Evaluator, config: SearchConfig, budget: float | None,
                final: dict[str, Any] | None) -> dict[str, bool]:
    """Whether a Pareto point keeps the fidelity target on the samples chosen on (and fits the budget):
    the front holds points that miss it (more faithful or smaller than any that keeps it)."""
    out = {"meets_target": ev.shortfall(c.select) <= 0}
    if config.budget is not None:
        out["within_budget"] = _over_budget(c, config, budget, final) <= 0
    return out


def _latency(c: Candidate, final: dict[str, Any] | None = None) -> float:
    """``c``'s latency ratio: the finalists' re-timing when it is one of them, else its trial's timing."""
    t = (final or {}).get(f"trial {c.trial}")
    if t is not None:
        return float(t["latency_ratio"])
    return c.latency_ratio if c.latency_ratio is not None else float("inf")


def _point(c: Candidate, ev: Evaluator, final: dict[str, Any] | None = None) -> str:
    s = c.select
    fid = (f"drop {s.drop:.2f} pt" if ev.config.max_drop is not None and s and s.drop is not None
           else f"cos {s.cos_mean:.4f}/{s.cos_min:.4f}" if s else "-")
    t = (final or {}).get(f"trial {c.trial}")
    lat = (f", {t['latency_ratio']:.2f}x ±{t['latency_spread']:.2f} latency (re-timed)" if t is not None
           else f", {c.latency_ratio:.2f}x latency" if c.latency_ratio is not None else "")
    return f"{fid}, {c.size_ratio:.3f}x size{lat}"


# ------------------------------------------------------------------------------------------
# choosing, re-measuring, writing

def _feasible(cands: list[Candidate], ev: Evaluator, config: SearchConfig, budget: float | None,
              final: dict[str, Any] | None = None) -> list[Candidate]:
    ok = [c for c in cands if c.error is None and c.select is not None]
    return [c for c in ok if ev.shortfall(c.select) <= 0 and _over_budget(c, config, budget, final) <= 0]


def _choose(cands: list[Candidate], ev: Evaluator, config: SearchConfig, budget: float | None,
            final: dict[str, Any] | None, stats: dict[str, Any] | None = None
            ) -> tuple[Candidate | None, Candidate | None, str]:
    """(chosen, closest when none is chosen, why).

    Latency uses the finalists' re-timing (``final``, all in the same rounds) when there is one —
    for a latency budget too, and for the closest point when none meets it. Candidates that are not
    measurably slower than the fastest count as equally fast; among them the smallest file wins
    (``config.tie_break="fidelity"``: the most faithful). Not measurably slower: with the re-timing's
    per-round times (``stats``, :class:`~deepshrink.evaluate.latency.LatencyStats`), a sign test round
    by round against the fastest finds it no more than :data:`SAME_SPEED` slower
    (:func:`~deepshrink.evaluate.latency.measurably_slower`); otherwise the two medians against the
    reference are within :func:`median_tolerance`. Pairing matters on a loaded machine: MiniLM's
    re-timing at load 5 put every finalist within ±0.26-0.36 of its median against float, and the
    median tolerance (±0.11) let a point with 4 float layers (0.57x float) count as fast as the
    all-int8 one (0.49x); timed alone afterwards it was 1.5x the all-int8 model. A standard error from
    the paired ratios' spread did no better there (an 18 % gap within ±0.16): single calls delayed by
    the load widen it, and a sign test ignores how long the delays were.
    """
    feasible = _feasible(cands, ev, config, budget, final)
    if final is not None:  # the finalists only: their latencies come from the same rounds
        feasible = [c for c in feasible if f"trial {c.trial}" in final] or feasible

    def lat(c: Candidate) -> tuple[float, float]:
        """(median ratio, how far another median may sit from it and count as equally fast)."""
        t = (final or {}).get(f"trial {c.trial}")
        if t is not None:
            return t["latency_ratio"], median_tolerance(t["latency_spread"], config.final_repeats)
        return ((c.latency_ratio if c.latency_ratio is not None else float("inf")),
                median_tolerance(c.latency_spread or 0.0, config.repeats))

    size_budget = config.budget is not None and config.budget.resource == "size"

    def faithful(c: Candidate) -> tuple[float, float, int, int]:
        return _faithful(c, ev)

    if feasible:
        if (config.budget is not None and config.budget.resource == "latency") or not config.repeats:
            if config.budget is not None:  # within the budget the budgeted cost has done its part
                return min(feasible, key=faithful), None, ("the most faithful candidate (held-out loss, then mean "
                                                           f"cosine) within the {config.budget.resource} budget")
            best = min(feasible, key=lambda c: (c.size_bytes, ev.loss(c.select), c.trial))
            return best, None, "the smallest candidate that meets the fidelity target" + (
                " and the budget" if config.budget is not None else "")
        fastest = min(feasible, key=lambda c: (lat(c)[0], c.trial))
        band = lat(fastest)[0] + max(lat(fastest)[1], 0.02)
        f_stats = (stats or {}).get(f"trial {fastest.trial}")

        def as_fast(c: Candidate) -> bool:
            c_stats = (stats or {}).get(f"trial {c.trial}")
            if c is fastest:
                return True
            if getattr(f_stats, "rounds_ms", None) and getattr(c_stats, "rounds_ms", None):
                from ..evaluate.latency import measurably_slower

                return not measurably_slower(c_stats, f_stats, SAME_SPEED)
            return lat(c)[0] <= band

        fast = [c for c in feasible if as_fast(c)]
        if size_budget:
            return min(fast, key=faithful), None, (
                "the most faithful (held-out loss, then mean cosine) of the fastest candidates (not measurably "
                "slower than the fastest) that meet the fidelity target and the size budget")
        if config.tie_break == "fidelity":
            return min(fast, key=faithful), None, (
                "the most faithful (held-out loss, then mean cosine) of the fastest candidates (not measurably "
                "slower than the fastest) that meet the fidelity target")
        best = min(fast, key=lambda c: (c.size_bytes, c.trial))
        return best, None, ("the smallest of the fastest candidates (not measurably slower than "
                            "the fastest) that meet the fidelity target")
    ok = [c for c in cands if c.error is None and c.select is not None]
    met_fid = [c for c in ok if ev.shortfall(c.select) <= 0]
    if met_fid:
        closest = min(met_fid, key=lambda c: (_over_budget(c, config, budget, final), c.trial))
    elif ok:
        closest = min(ok, key=lambda c: (ev.shortfall(c.select), c.trial))
    else:
        closest = None
    return None, closest, ""


def _faster_alternative(chosen: Candidate, cands: list[Candidate], final: dict[str, Any], ev: Evaluator,
                        config: SearchConfig, budget: float | None) -> str:
    """A warning when a finalist that meets the target ran at least 5 % faster than the chosen point, round by
    round, although the timing noise counted it as equally fast (the fidelity or size tie-break then chose):
    the written model is not the fastest measured, and the user is told by how much and why."""
    by_trial = {c.trial: c for c in _feasible(cands, ev, config, budget, final)}
    best = None
    for name, t in final.items():
        trial = int(name.split()[-1]) if name.startswith("trial ") else None
        if trial in by_trial and trial != chosen.trial and t.get("vs_chosen", 1.0) <= 0.95:
            if best is None or t["vs_chosen"] < best[1]["vs_chosen"]:
                best = (trial, t)
    if best is None:
        return ""
    trial, t = best
    c = by_trial[trial]
    return (f"trial {trial} ({_choices_text(c)}) also meets the target and ran {t['vs_chosen']:.2f}x this model's "
            f"latency round by round (±{2 * t['vs_chosen_se']:.2f} at two standard errors): within the timing noise, "
            f"so the tie-break chose this one (cosine {chosen.select.cos_mean:.4f} / {chosen.select.cos_min:.4f} "
            f"against {c.select.cos_mean:.4f} / {c.select.cos_min:.4f} on the samples it chose on); time the two on a "
            "quiet machine if speed matters more than the margin")


SAME_SPEED = 0.02  # up to 2 % slower than the fastest, round by round, counts as equally fast


def median_tolerance(spread: float, rounds: int) -> float:
    """How far apart two median latency ratios of ``rounds`` interleaved rounds may be and still be
    counted equal: two standard errors of their difference, at least 0.02, never more than ``spread``.

    ``spread`` is half the 10-90 % range of the per-round ratio (:class:`~deepshrink.evaluate.latency.
    LatencyStats`), about 1.28 standard deviations for a normal spread; a median's standard error is
    about 1.25 sigma / sqrt(rounds), a difference of two sqrt(2) times that. The per-round spread itself
    is far wider than the median's uncertainty once there are more than a few rounds: on a loaded
    machine ppocr-cls's 0.99x and 1.17x medians of 60 rounds were both within ±0.25-0.35 per round.
    """
    if rounds <= 0:
        return max(spread, 0.02)
    se = 1.2533 * (spread / 1.2816) / rounds ** 0.5
    return max(0.02, min(spread, 2.0 * 2 ** 0.5 * se))


def _faithful(c: Candidate, ev: Evaluator) -> tuple[float, float, int, int]:
    """Rank by fidelity: held-out loss — an accuracy *gain* counts as no loss: on a small held-out half it is
    noise, not fidelity — then mean cosine, which breaks the ties of an accuracy counted in whole samples,
    then size."""
    return max(ev.loss(c.select), 0.0), 1.0 - (c.select.cos_mean if c.select else 0.0), c.size_bytes, c.trial


def _target_text(config: SearchConfig) -> str:
    if config.max_drop is not None:
        return f"accuracy drop <= {config.max_drop:g} pt"
    return f"cosine >= {config.target_cos:g} mean / {config.worst_cos:g} worst"


def _not_met_message(closest: Candidate | None, ev: Evaluator, config: SearchConfig, budget: float | None,
                     final: dict[str, Any] | None = None) -> str:
    want = _target_text(config) + (f" and {config.budget.describe()}" if config.budget else "")
    if closest is None:
        return f"no candidate could be built and measured for {want}; see report.json for each trial's error"
    short = ev.shortfall(closest.select)
    if short > 0:
        unit = "pt" if config.max_drop is not None else "in cosine"
        far = f"it misses the fidelity target by {short:.4g} {unit}"
    else:
        assert config.budget is not None and budget is not None
        have = closest.size_ratio if config.budget.resource == "size" else _latency(closest, final)
        far = (f"its {config.budget.resource} is {have:.3f}x the original against a budget of {budget:.3f}x "
               f"({have / budget:.2f}x over)")
    return (f"no candidate meets {want}: the closest is trial {closest.trial} ({_point(closest, ev, final)}; "
            f"{_choices_text(closest)}); {far}. Reports are in the output folder; no best model was written")


def _held_out_warning(chosen: Candidate, config: SearchConfig) -> str:
    """The chosen point misses the target on the samples the search never saw (it chose on the others)."""
    t, s = chosen.test, chosen.select
    assert t is not None and s is not None
    fid = (f"loses {t.drop:.2f} accuracy points" if config.max_drop is not None and t.drop is not None
           else f"keeps cosine {t.cos_mean:.4f} mean / {t.cos_min:.4f} worst")
    return (f"on the {t.samples} held-out samples the search never saw, the chosen model {fid}, outside the "
            f"target ({_target_text(config)}) it met on the {s.samples} it was chosen on: the choice may not "
            "generalise; give more held-out data (--eval-data) or a tighter target")


def _slower_warning(t: dict[str, float], threads: int) -> str | None:
    """The chosen point's final timing is slower than the original's: said, even when the median is
    slower only within a wide spread (a shared machine: ppocr-cls measured 1.12x ±0.80)."""
    ratio, spread = t["latency_ratio"], t["latency_spread"]
    if ratio <= 1.02:
        return None
    noisy = ratio <= 1.0 + spread
    return (f"the chosen model is {'no faster' if noisy else 'slower'} than the original on this machine "
            f"({ratio:.2f}x ±{spread:.2f}, batch 1, {threads} threads"
            f"{': the median is slower, within a wide spread' if noisy else ''}): no quantized candidate that meets "
            "the target ran faster; keep the original if speed matters"
            + ("; time both again on a quiet machine (deepshrink bench)" if noisy else ""))


def _resolution_warning(n_select: int, config: SearchConfig) -> str | None:
    """When one sample of the held-out part the search chooses on is worth more accuracy points than ``--max-drop``,
    the limit can only mean "no sample lost": say so (None otherwise)."""
    if not config.max_drop or n_select == 0 or 100.0 / n_select <= config.max_drop:  # 0 already means "none lost"
        return None
    return (f"the held-out part the search chooses on has {n_select} samples, so one sample is "
            f"{100.0 / n_select:.2f} pt, more than --max-drop {config.max_drop:g}: any candidate that loses a sample "
            f"fails; give at least {2 * math.ceil(100.0 / config.max_drop)} labelled held-out samples (--eval-data; half "
            "are kept back to report on) for a finer figure")


def _one_value_warning(ev: Evaluator) -> str:
    """The cosine target of a model whose first output is one number per sample is a weak check: say so."""
    shape = "x".join(map(str, ev.ref_select.shape[1:])) or "scalar"
    return (f"the model's first output has one value per sample ({shape}): its cosine is taken over the "
            f"{len(ev.ref_select)} held-out samples as one vector, so mean and worst are one figure and "
            "--min-cos checks no single sample; compare the values themselves (deepshrink bench --data) "
            "before trusting the choice")


def _other_families(r: dict[str, Any]) -> str:
    """``" and 6 Deep Compression candidates"``: the candidates built besides the quantization trials."""
    names = {"pack": "Deep Compression", "structured": "channel-pruned"}
    n = {f: sum(1 for c in r.get("candidates", []) if c.get("family") == f) for f in names}
    return "".join(f" and {k} {names[f]} candidate{'s' * (k != 1)}" for f, k in n.items() if k)


def _choices_text(c: Candidate) -> str:
    return choices_text(c.counts())


def _finish(out: Path, source: Any, model: Any, data: Any, eval_data: Any, weights: Any, input_shapes: Any,
            trust: bool, config: SearchConfig, space: Space, ev: Evaluator, cands: list[Candidate],
            trials: list[dict[str, Any]], sens: dict[str, dict[str, float]], plain: Candidate | None, seconds: float,
            say: Any, runner: tuple[int, float] = (1, 0.0), pack_info: dict[str, Any] | None = None,
            slim_info: dict[str, Any] | None = None, replay: bool = True) -> SearchResult:
    import yaml

    budget = _budget_value(config, ev)

    def loss(c: Candidate) -> float:
        return ev.loss(c.select)

    pareto = front(cands, loss)
    final = None
    stats: dict[str, Any] = {}
    if config.repeats:  # the finalists re-timed together, interleaved with the reference, with more rounds
        feasible = _feasible(cands, ev, config, budget)
        finalists = [c for c in feasible if c in pareto] or feasible
        if config.budget is not None and config.budget.resource == "size":  # the choice ranks these by fidelity
            finalists += [c for c in sorted(feasible, key=lambda c: _faithful(c, ev))[:3] if c not in finalists]
        elif _cost_kind(config) == "latency":  # the fastest medians, though within the front's spread tolerance:
            # on a loaded machine a trial's spread hides a real gap (ppocr-cls: 0.98x vs 1.21x, ±0.3), and the
            # finalists' rounds together are what can tell them apart
            timed = [c for c in feasible if c.latency_ratio is not None]
            finalists += [c for c in sorted(timed, key=lambda c: (c.latency_ratio, c.trial))[:3] if c not in finalists]
        fin = {f"trial {c.trial}": c.model_bytes for c in {id(c): c for c in [*finalists, *pareto, *(
            [plain] if plain is not None else [])]}.values() if c.model_bytes is not None}
        say(f"re-timing {len(fin)} finalists with the reference ({config.final_repeats} interleaved rounds)")
        stats = ev.time_against_reference(fin, config.final_repeats)
        final = {n: {"latency_ratio": s.ratio, "latency_spread": s.ratio_spread, "median_ms": s.median_ms}
                 for n, s in stats.items()}
    chosen, closest, why = _choose(cands, ev, config, budget, final, stats if final is not None else None)
    if final is not None and chosen is not None and getattr(stats.get(f"trial {chosen.trial}"), "rounds_ms", None):
        from ..evaluate.latency import paired_ratio

        for n, t in final.items():  # round by round against the chosen point: what "as fast" was judged on
            if n != "reference" and getattr(stats.get(n), "rounds_ms", None):
                ratio, se = paired_ratio(stats[n], stats[f"trial {chosen.trial}"])
                t["vs_chosen"], t["vs_chosen_se"] = ratio, se
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for stale in ("best.onnx", "best.dsz", "best.yaml"):  # an earlier --force'd run's answer is not this run's
        with contextlib.suppress(FileNotFoundError):
            (out / stale).unlink()
    reproduced = None
    if chosen is not None:
        recipe = chosen.recipe or space.recipe(chosen.assign)
        best = "best.dsz" if chosen.family == "pack" else "best.onnx"
        command = _replay_command(model, data, eval_data, weights, input_shapes, trust, config)
        text = (f"# written by deepshrink search; replay: {command}\n"
                + yaml.safe_dump(recipe, sort_keys=False))
        write_text_atomic(out / "best.yaml", text)
        files["best.yaml"] = out / "best.yaml"
        if replay or chosen.model_bytes is None or chosen.family != "quantize":
            say(f"writing {best} through deepshrink compress --recipe best.yaml")
            reproduced = _replay(model, out / "best.yaml", data, eval_data, weights, input_shapes, trust, out / best)
        else:
            from ..core.fileio import write_bytes_atomic

            write_bytes_atomic(out / best, chosen.model_bytes)
        files[best] = out / best
    warnings = []
    if chosen is not None and final is not None and f"trial {chosen.trial}" in final:
        slow = _slower_warning(final[f"trial {chosen.trial}"], config.threads)
        if slow:
            warnings.append(slow)
    if chosen is not None and chosen.test is not None and ev.shortfall(chosen.test) > 0:
        warnings.append(_held_out_warning(chosen, config))
    if chosen is not None and final is not None:
        faster = _faster_alternative(chosen, cands, final, ev, config, budget)
        if faster:
            warnings.append(faster)
    if config.max_drop is None and ev.one_value_per_sample:
        warnings.append(_one_value_warning(ev))
    if (coarse := _resolution_warning(len(ev.select_set), config)) is not None:
        warnings.append(coarse)
    verdict = {"met": chosen is not None, "warnings": warnings, "target": _target_text(config),
               "budget": config.budget.describe() if config.budget else None, "budget_ratio": budget,
               "why": why, "message": "" if chosen is not None else _not_met_message(closest, ev, config, budget, final)}
    if chosen is None and (pack_info or {}).get("floor_bytes"):
        floor = pack_info["floor_bytes"]  # type: ignore[index]
        verdict["message"] = verdict["message"].replace(
            ". Reports are in", f"; no Deep Compression point packs below {floor:,} B ({floor / ev.ref_size:.4f}x, "
            "every layer at the highest sparsity and the fewest bits, one-shot). Reports are in")
    report = _report(source, config, space, ev, cands, trials, sens, pareto, chosen, closest, plain, final,
                     reproduced, verdict, seconds, runner)
    if pack_info is not None:
        pack_info["chosen"] = dict(chosen.assign) if chosen is not None and chosen.family == "pack" else None
        report["deep_compression"] = pack_info
    if slim_info is not None:
        report["structured_pruning"] = slim_info
    pareto_doc = {"schema": SCHEMA, "objectives": ["loss", "size_bytes", "latency_ratio"],
                  "loss": "accuracy points lost" if config.max_drop is not None else "1 - mean cosine",
                  "chosen": chosen.trial if chosen else None,
                  "front": [{**{k: v for k, v in c.to_dict().items() if k != "build_s"},
                             **_verdict_of(c, ev, config, budget, final),
                             # a finalist's re-timing (what the report and the chosen line quote) beside its trial's
                             **({"final_timing": final[f"trial {c.trial}"]}
                                if final is not None and f"trial {c.trial}" in final else {})} for c in pareto]}
    write_text_atomic(out / "pareto.json", json.dumps(pareto_doc, indent=2))
    write_text_atomic(out / "report.json", json.dumps(report, indent=2, default=str))
    write_text_atomic(out / "report.md", _markdown(report))
    files.update({n: out / n for n in ("pareto.json", "report.json", "report.md")})
    png = _plot(out / "pareto.png", cands, pareto, chosen, plain, ev, budget)
    if png is not None:
        files["pareto.png"] = png
    return SearchResult(out, chosen is not None, chosen, report, files)


def _replay_command(model: Any, data: Any, eval_data: Any, weights: Any, input_shapes: Any = None,
                    trust: bool = False, config: SearchConfig | None = None) -> str:
    """The ``compress`` command line ``best.yaml`` is replayed with: the search's model options, and a fidelity
    gate no stricter than the search's own target (compress's default gate would refuse a choice the user's
    looser ``--max-drop`` / ``--min-cos`` allowed)."""
    from ..evaluate.gate import MAX_DROP, MIN_COS

    def arg(v: Any, name: str) -> str:
        return str(v) if isinstance(v, (str, os.PathLike)) else name

    cmd = f"deepshrink compress {arg(model, 'MODEL')} --recipe best.yaml --data {arg(data, 'DATA')}"
    if weights is not None:
        cmd += f" --weights {arg(weights, 'WEIGHTS')}"
    if isinstance(input_shapes, (list, tuple)):
        cmd += "".join(f" --input-shape {s}" for s in input_shapes if isinstance(s, str))
    if trust:
        cmd += " --trust-remote-code"
    if eval_data is not None:
        cmd += f" --eval-data {arg(eval_data, 'EVAL_DATA')}"
    if config is not None and config.max_drop is not None and config.max_drop > 100 * MAX_DROP:
        cmd += f" --gate-max-drop {config.max_drop:g}"
    if config is not None and config.min_cos is not None and config.min_cos < MIN_COS:
        cmd += f" --gate-min-cos {config.min_cos:g}"
    return cmd + " -o OUT"


def _replay(model: Any, recipe: Path, data: Any, eval_data: Any, weights: Any, input_shapes: Any, trust: bool,
            dest: Path) -> dict[str, Any]:
    """Run ``compress --recipe`` on the chosen recipe in a scratch folder; copy its model to ``dest``."""
    from ..recipe import compress

    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".replay.") as tmp:
        res = compress(model, str(recipe), Path(tmp) / "run", data=data, eval_data=eval_data, weights=weights,
                       input_shapes=input_shapes, trust_remote_code=trust, measure=False)
        tmp_dest = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(res.model_path, tmp_dest)
        os.replace(tmp_dest, dest)
    import hashlib

    return {"sha256": hashlib.sha256(dest.read_bytes()).hexdigest(), "size_bytes": dest.stat().st_size}


def _report(source: Any, config: SearchConfig, space: Space, ev: Evaluator, cands: list[Candidate],
            trials: list[dict[str, Any]], sens: dict[str, dict[str, float]], pareto: list[Candidate],
            chosen: Candidate | None, closest: Candidate | None, plain: Candidate | None,
            final: dict[str, Any] | None, reproduced: dict[str, Any] | None, verdict: dict[str, Any],
            seconds: float, runner: tuple[int, float] = (1, 0.0)) -> dict[str, Any]:
    from datetime import datetime, timezone

    from ..recipe.runner import environment

    def figures(c: Candidate | None) -> dict[str, Any] | None:
        if c is None:
            return None
        d = c.to_dict()
        if final is not None and f"trial {c.trial}" in final:
            d["final_timing"] = final[f"trial {c.trial}"]
        return d

    ref = {"size_bytes": ev.ref_size, "select_accuracy": ev.ref_acc_select, "test_accuracy": ev.ref_acc_test,
           "latency_ms": final["reference"]["median_ms"] if final else None}
    if final is not None and plain is not None and (chosen or closest) is not None:
        mine, peer = final.get(f"trial {(chosen or closest).trial}"), final.get(f"trial {plain.trial}")  # type: ignore[union-attr]
        if mine is not None and peer is not None:
            ref["chosen_vs_plain_int8_latency"] = mine["median_ms"] / peer["median_ms"]
    if chosen is not None and reproduced is not None:
        reproduced["matches_candidate"] = reproduced["sha256"] == chosen.sha256
    return {
        "schema": SCHEMA, "title": f"deepshrink search: {source.source or 'model'}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "source": source.source,
        "config": config.to_dict(), "environment": environment(config.threads),
        "data": {"calibration": ev.calibration.source, "calibration_samples": len(ev.calibration),
                 "select": ev.select_set.source, "select_samples": len(ev.select_set),
                 "test": ev.test_set.source if ev.test_set is not None else None,
                 "test_samples": len(ev.test_set) if ev.test_set is not None else 0},
        "int8": space.int8_kind, "int8_forms": ev.forms,
        "layers": [{"name": lay.name, "op_type": lay.op_type, "shape": list(lay.shape), "options": list(lay.options),
                    "sensitivity": sens.get(lay.name, {}),
                    **({"int8_latency_alone": ev.int8_speed[lay.name]} if lay.name in ev.int8_speed else {}),
                    "chosen": chosen.assign.get(lay.name, "float") if chosen and chosen.family == "quantize" else None}
                   for lay in space.layers],
        "reference": ref, "verdict": verdict,
        "chosen": figures(chosen), "closest": figures(closest) if chosen is None else None,
        "plain_int8": figures(plain), "final_timing": final, "reproduced": reproduced,
        "search": {"trials": len(trials), "built": ev.builds, "seconds": round(seconds, 1),
                   "sampler": "optuna TPESampler(multivariate=True, constant_liar=True)", "seed": config.seed,
                   "proposal_batch": config.proposal_batch, "cost": _cost_kind(config),
                   "runner": "ray" if config.ray is not None else "sequential", "workers": runner[0],
                   "trials_seconds": round(runner[1], 1)},
        "pareto": [c.trial for c in pareto],
        "candidates": [figures(c) for c in sorted(cands, key=lambda c: c.trial)],
    }


def _markdown(r: dict[str, Any]) -> str:
    v = r["verdict"]
    lines = [f"# {r['title']}", "", f"Target: {v['target']}" + (f"; budget: {v['budget']}" if v["budget"] else ""),
             "", f"**{'met' if v['met'] else 'not met'}**: {v['why'] or v['message']}", ""]
    lines += [f"**warning**: {w}" for w in v.get("warnings", [])] + ([""] if v.get("warnings") else [])
    d = r["data"]
    lines += [f"Calibration: {d['calibration_samples']} samples of {d['calibration']}; chosen on "
              f"{d['select_samples']} held-out samples ({d['select']})"
              + (f", reported on {d['test_samples']} more ({d['test']}) the search never saw." if d["test"] else "."),
              f"int8 here is {r['int8']}. {r['search']['trials']} quantization trials{_other_families(r)}, "
              f"{r['search']['built']} models built in all, {r['search']['seconds']} s.", ""]
    if r.get("int8_forms"):  # how int8 layers are built: measured before the per-layer search (.forms)
        lines += ["| int8 form (all layers int8) | select | latency vs original | size | |", "|---|---|---|---|---|"]
        for f in r["int8_forms"]:
            sel = f.get("select")
            lat = f"{f['latency_ratio']:.2f}x ±{f['latency_spread']:.2f}" if f.get("latency_ratio") is not None else "-"
            lines.append(f"| {f['form']} | " + (f"cos {sel['cos_mean']:.4f}/{sel['cos_min']:.4f} | {lat} | "
                                                f"{f['size_ratio']:.3f}x" if sel else f"{f.get('error')} | - | -")
                         + f" | {'chosen: ' + f['why'] if f.get('chosen') else ''} |")
        lines.append("")
    lines += ["| point | trial | choices | size | latency vs original | select | test |", "|---|---|---|---|---|---|---|"]

    def fid(s: dict[str, Any] | None) -> str:
        if not s:
            return "-"
        acc = f"{100 * s['accuracy']:.2f}% ({s['drop_points']:+.2f} pt drop), " if s.get("accuracy") is not None else ""
        return f"{acc}cos {s['cos_mean']:.4f}/{s['cos_min']:.4f}"

    def row(name: str, c: dict[str, Any] | None) -> None:
        if c is None:
            return
        t = c.get("final_timing") or {"latency_ratio": c.get("latency_ratio"), "latency_spread": c.get("latency_spread")}
        lat = "-" if t.get("latency_ratio") is None else f"{t['latency_ratio']:.2f}x ±{t['latency_spread']:.2f}"
        ch = choices_text(c["choices"])
        lines.append(f"| {name} | {c['trial']} | {ch} | {c['size_bytes']:,} B ({c['size_ratio']:.3f}x) | {lat} | "
                     f"{fid(c['select'])} | {fid(c['test'])} |")

    row("chosen", r["chosen"])
    row("closest (not met)", r["closest"])
    row("plain int8", r["plain_int8"])
    by_trial = {c["trial"]: c for c in r["candidates"]}
    for t in r["pareto"]:
        row("Pareto", by_trial[t])
    lines += ["", f"Reference: {r['reference']['size_bytes']:,} B" + (
        f", {r['reference']['latency_ms']:.3f} ms median" if r["reference"]["latency_ms"] else ""), ""]
    lines += ["## Per-layer choices and sensitivity (1 - mean cosine with only that layer changed)", "",
              "| layer | op | shape | chosen | " + " | ".join(("int8", "int4", "codebook")) + " | int8/float latency alone |",
              "|---|---|---|---|---|---|---|---|"]
    for lay in r["layers"]:
        s = lay["sensitivity"]
        alone = f"{lay['int8_latency_alone']:.2f}x" if "int8_latency_alone" in lay else "-"
        lines.append(f"| {lay['name']} | {lay['op_type']} | {'x'.join(map(str, lay['shape']))} | {lay['chosen'] or '-'} | "
                     + " | ".join(f"{s[k]:.2e}" if k in s else "-" for k in ("int8", "int4", "codebook"))
                     + f" | {alone} |")
    dc = r.get("deep_compression")
    if dc:
        sp = sorted({float(k) for lay in dc["layers"] for k in lay["sensitivity"]})
        sch = dc["schedule"]
        lines += ["", "## Deep Compression candidates (per-layer sparsity and k-means bits, packed into .dsz)", "",
                  f"{dc['built']} built of {dc['proposals']} proposals ({dc['not_built_over_budget']} estimated over "
                  "the size budget, not built); " + (
                      "one-shot (an ONNX model: pruned and weight-shared without training)." if sch.get("one_shot") else
                      f"each fine-tuned {sch['prune_epochs']} pruning + {sch['finetune_epochs']} centroid epochs, "
                      f"distilled from the original (alpha {sch['kd_alpha']:g})"
                      + (", BatchNorm folded" if sch["fold_bn"] else "") + ".")
                  + (f" The smallest packing of this model (every layer at the highest sparsity and the fewest "
                     f"bits, one-shot) is {dc['floor_bytes']:,} B ({dc['floor_bytes'] / r['reference']['size_bytes']:.4f}x "
                     "the original)." if dc.get("floor_bytes") else ""), "",
                  "Sensitivity: 1 - mean cosine with only that layer pruned by magnitude, no fine-tuning.", "",
                  "| layer | kind | weights | chosen | " + " | ".join(f"{100 * x:g}%" for x in sp if x) + " |",
                  "|---|---|---|---|" + "---|" * sum(1 for x in sp if x)]
        for lay in dc["layers"]:
            ch = (dc.get("chosen") or {}).get(lay["name"], "-")
            lines.append(f"| {lay['name']} | {lay['kind']} | {lay['weights']:,} | {ch} | "
                         + " | ".join(f"{lay['sensitivity'][f'{x:g}']:.2e}" for x in sp if x) + " |")
    sp = r.get("structured_pruning")
    if sp:
        lines += ["", "## Channel-pruned candidates (structured pruning, fine-tuned)", "",
                  f"Every ratio timed one-shot (no fine-tuning; latency does not depend on the weights' values), "
                  f"then trials {', '.join(map(str, sp['built'])) or 'none'} fine-tuned {sp['finetune_epochs']} "
                  f"epochs at lr {sp['lr']:g}.", "", "| channels removed | one-shot latency vs original |", "|---|---|"]
        for k, t in sp["one_shot_timing"].items():
            lines.append(f"| {k} | {t['latency_ratio']:.2f}x ±{t['latency_spread']:.2f} |")
        if sp.get("errors"):
            from .slim import errors_text

            lines += ["", f"Not built: {errors_text(sp['errors'])}."]
    if r.get("reproduced"):
        rp = r["reproduced"]
        best = "best.dsz" if (r.get("chosen") or {}).get("family") == "pack" else "best.onnx"
        lines += ["", f"{best} was written by replaying best.yaml through `deepshrink compress` "
                      f"(sha256 {rp['sha256'][:16]}…, {'identical to' if rp.get('matches_candidate') else 'DIFFERENT from'}"
                      " the candidate the search measured)."]
    lines += ["", "![Pareto set](pareto.png)", ""]
    return "\n".join(lines)


def _plot(path: Path, cands: list[Candidate], pareto: list[Candidate], chosen: Candidate | None,
          plain: Candidate | None, ev: Evaluator, budget: float | None = None) -> Path | None:
    """Loss against the budgeted cost (latency, or size under a size budget or when untimed); the budget drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [c for c in cands if c.error is None and c.select is not None]
    if not ok:
        return None
    use_lat = _cost_kind(ev.config) == "latency" and all(c.latency_ratio is not None for c in ok)
    x = (lambda c: c.latency_ratio) if use_lat else (lambda c: c.size_ratio)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.scatter([x(c) for c in ok], [ev.loss(c.select) for c in ok], s=[10 + 90 * c.size_ratio for c in ok],
               c="#bbbbbb", label="candidates (marker area ~ size)")
    ax.scatter([x(c) for c in pareto], [ev.loss(c.select) for c in pareto], c="#1f77b4", label="Pareto set")
    if plain is not None and plain.select is not None:
        ax.scatter([x(plain)], [ev.loss(plain.select)], marker="s", c="#ff7f0e", label="plain int8")
    if chosen is not None:
        ax.scatter([x(chosen)], [ev.loss(chosen.select)], marker="*", s=200, c="#d62728", label="chosen")
    if budget is not None and (ev.config.budget is not None) and (ev.config.budget.resource == "latency") == use_lat:
        ax.axvline(budget, color="#d62728", linestyle="--", linewidth=1, label="budget")
    cfg = ev.config
    ax.axhline(cfg.max_drop if cfg.max_drop is not None else 1.0 - (cfg.target_cos or 1.0), color="#2ca02c",
               linestyle=":", linewidth=1, label="fidelity target")
    if not use_lat and max(x(c) for c in ok) > 10 * min(x(c) for c in ok):  # Deep Compression points: 0.03x beside 0.3x
        ax.set_xscale("log")
    ax.set_xlabel("latency / original (batch 1)" if use_lat else "size / original")
    ax.set_ylabel("accuracy points lost" if ev.config.max_drop is not None else "1 - mean cosine")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)
    return path
