"""Channel-pruned candidates in the search, for a latency budget quantization cannot meet.

On a small network ONNX Runtime's int8 kernels often run little or no faster than float (per-node
overhead dominates: the digits CNN's static int8 ran at 1.1-1.5x its float latency on an Intel Xeon,
0.8-0.98x on an AMD EPYC), so a latency budget such as 0.5x is out of reach of quantization choices. Removing whole channels makes every convolution
smaller (the float graph keeps its shape and fusions), so the search also tries structured pruning
(:class:`deepshrink.prune.config.StructuredPruneConfig`, L2-norm importance, the same fraction in
every prunable group) fine-tuned on the labelled data:

1. **Latency first**: the model pruned one-shot at each ratio of :data:`RATIOS` is exported and
   timed in the same interleaved rounds as the original — a pruned network's latency does not
   depend on its weights' values, so no fine-tuning is spent on a ratio too slow for the budget.
   Latency falls in steps, not smoothly: CPU convolution kernels work on blocks of channels (the
   digits CNN on AVX-512: 20-28 of 32 channels as slow as 32, 16 about half), which is why the
   ratios are timed rather than assumed.
2. **Fine-tuned candidates**: the smallest ratio whose median latency meets the budget, and its
   neighbours on the ratio ladder (``structured_trials`` in all, closest to that ratio first), are
   built by running the recipe ``prune: {method: structured, ...}`` → ``convert: {format: onnx}``
   through :func:`deepshrink.recipe.compress` itself — so ``compress --recipe best.yaml`` reproduces
   the chosen ``best.onnx`` byte for byte — then scored and timed like every candidate.

Fine-tuning: ``structured_epochs`` epochs at lr 1e-2 with a cosine decay, on the soft targets of the
unpruned model (alpha 0.9, temperature 4) and the labels (measured on the digits CNN, half the channels
removed, 30 epochs: 99.72 % test accuracy at lr 1e-2 against 98.61 % at the default 2e-3; then, 5 seeds
on the 360 test digits the original all gets right, labels alone at a constant lr 1e-2 lost 1-4 digits
— mean 2.4 — and the soft targets with the cosine decay 0-2, mean 1.0). Needs labelled data and a PyTorch
model built from Python modules or an ONNX model (pruned through its PyTorch import and written back as ONNX,
as ``prune`` does).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import DeepshrinkError, first_line
from .config import SearchConfig
from .objective import Candidate, Evaluator

RATIOS = (0.25, 0.375, 0.5, 0.625, 0.75)  # fraction of every prunable group's channels removed
LR = 1e-2
KD_ALPHA = 0.9  # weight of the unpruned model's soft targets in the fine-tune (module docstring)


def wanted(config: SearchConfig, source: Any, data: Any, say: Any) -> bool:
    """Whether this search tries channel-pruned candidates (``config.structured``).

    ``"auto"``: with a latency budget, a PyTorch or ONNX model and labelled data. ``"on"``: always, and a
    model or data that cannot have them, or ``repeats=0`` (no timing), is refused (:class:`InputError`)
    before any work.
    """
    from .config import family_wanted

    why = None
    if source.kind not in ("torch", "onnx"):
        why = f"the model is {source.kind}, and channel pruning with fine-tuning needs a PyTorch or ONNX model"
    elif data.labels is None:
        why = f"the data {data.source} has no labels to fine-tune on"
    elif config.repeats == 0:  # chosen by measured latency: nothing to choose by when nothing is timed
        why = ("channel-pruned candidates are chosen by their measured latency, and --repeats 0 times nothing; "
               "give --repeats 1 or more")
    return family_wanted(config.structured, "--structured", why, config, "latency", "channel-pruned", say)


def recipe_of(ratio: float, config: SearchConfig) -> dict[str, Any]:
    """The recipe a channel-pruned candidate is built by (and ``best.yaml`` holds)."""
    tune = ({"finetune_epochs": config.structured_epochs, "lr": LR, "lr_schedule": "cosine", "distill": True,
             "kd_alpha": KD_ALPHA} if config.structured_epochs else {})
    return {"steps": [{"prune": {"method": "structured", "ratio": ratio, **tune}},
                      {"convert": {"format": "onnx"}}]}


def _one_shot_onnx(source: Any, ratio: float, data: Any) -> bytes:
    """The model with ``ratio`` of its channels removed, no fine-tuning, as ONNX bytes (for timing only)."""
    import warnings

    from ..backends.onnx import save_onnx
    from ..prune import prune
    from ..prune.config import StructuredPruneConfig
    from ..quantize.api import to_onnx_handle

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = prune(source, StructuredPruneConfig(ratio=ratio), data=data, progress=False)
    handle = source.with_model(res.model.model)
    with tempfile.TemporaryDirectory() as tmp:
        save_onnx(to_onnx_handle(handle).model, Path(tmp) / "m.onnx")
        return (Path(tmp) / "m.onnx").read_bytes()


def search_slim(ev: Evaluator, source: Any, build: dict[str, Any], config: SearchConfig,
                budget_ratio: float | None, deadline: float | None, say: Any, *, first_trial: int = 0
                ) -> tuple[list[Candidate], dict[str, Any]]:
    """Time every pruning ratio one-shot, then fine-tune and measure the ones around the budget.

    ``build``: what :func:`deepshrink.recipe.compress` needs to rebuild the model as the user gave
    it (``model``, ``data``, ``eval_data``, ``weights``, ``input_shapes``, ``trust_remote_code``).
    ``budget_ratio``: the latency budget as a fraction of the original's (``None``: no latency
    budget — the ratios 0.25 and 0.5 are built). Returns the candidates and the report's section.
    """
    say(f"channel-pruned candidates: timing {len(RATIOS)} pruning ratios one-shot")
    timing: dict[str, Any] = {}
    models: dict[str, bytes] = {}
    errors: dict[str, str] = {}
    from ..convert.onnx2torch.route import trainable_handle

    try:  # an ONNX model is pruned as its PyTorch import, as `prune` takes it
        torch_source = trainable_handle(source, ev.calibration)
    except DeepshrinkError as exc:
        torch_source, errors = None, {f"{r:g}": first_line(exc, 200) for r in RATIOS}
    for r in RATIOS if torch_source is not None else ():
        try:
            models[f"{r:g}"] = _one_shot_onnx(torch_source, r, ev.calibration)
        except DeepshrinkError as exc:
            errors[f"{r:g}"] = first_line(exc, 200)
    if models:
        stats = ev.time_against_reference(models, max(config.repeats, config.final_repeats))
        timing = {k: {"latency_ratio": s.ratio, "latency_spread": s.ratio_spread} for k, s in stats.items()
                  if k != "reference"}
    timed = [r for r in RATIOS if f"{r:g}" in timing]
    info: dict[str, Any] = {"ratios": list(RATIOS), "one_shot_timing": timing, "errors": errors, "lr": LR,
                            "finetune_epochs": config.structured_epochs, "built": []}
    if not timed:
        say("no channel-pruned candidate: " + errors_text(errors))
        return [], info
    if budget_ratio is None:
        order = [r for r in (0.25, 0.5) if r in timed]
    else:
        meeting = [r for r in timed if timing[f"{r:g}"]["latency_ratio"] <= budget_ratio]
        pivot = meeting[0] if meeting else timed[-1]
        order = sorted(timed, key=lambda r: (abs(timed.index(r) - timed.index(pivot)), -r))
    built: list[Candidate] = []
    for i, r in enumerate(order[:config.structured_trials]):
        if deadline is not None and time.perf_counter() > deadline:
            say("channel-pruned candidates stopped by --time")
            break
        built.append(_candidate(ev, r, build, config, first_trial + i))
        c = built[-1]
        say(f"  channel-pruned trial {c.trial} ({r:g} of channels removed): "
            + (c.error or f"{_fid(c)}, {c.size_ratio:.3f}x size, {c.latency_ratio or 0:.2f}x latency"))
    info["built"] = [c.trial for c in built]
    return built, info


def errors_text(errors: dict[str, str]) -> str:
    """Why pruning ratios could not be built, one reason each; a reason shared by every ratio said once."""
    if not errors:
        return ""
    reasons = set(errors.values())
    if len(reasons) == 1:
        which = "every ratio" if len(errors) == len(RATIOS) else "ratios " + ", ".join(errors)
        return f"{which}: {next(iter(reasons))}"
    return "; ".join(f"ratio {k}: {v}" for k, v in errors.items())


def _fid(c: Candidate) -> str:
    s = c.select
    if s is None:
        return "-"
    return f"drop {s.drop:+.2f} pt" if s.drop is not None else f"cos {s.cos_mean:.4f}/{s.cos_min:.4f}"


def _candidate(ev: Evaluator, ratio: float, build: dict[str, Any], config: SearchConfig, trial: int) -> Candidate:
    """Build one ratio through ``compress`` (the bytes ``best.yaml`` replays to) and measure it."""
    from ..recipe import compress
    from .space import key

    shown = {"channels removed": f"{ratio:g}"}
    k = "slim:" + key(shown)
    if k in ev.cache:
        return ev.cache[k]
    recipe = recipe_of(ratio, config)
    cand = Candidate(trial, {"structured pruning": f"{ratio:g} of channels removed"}, k,
                     origin="one-shot timing of the pruning ratios", family="structured", recipe=recipe)
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            res = compress(build["model"], recipe, Path(tmp) / "run", data=build["data"],
                           eval_data=build["eval_data"], weights=build["weights"],
                           input_shapes=build["input_shapes"], trust_remote_code=build["trust_remote_code"],
                           measure=False)
            data = Path(res.model_path).read_bytes()
    except DeepshrinkError as exc:
        cand.error = first_line(exc, 300)
        return ev.add(cand)
    ev.measure(cand, data)
    cand.build_s = time.perf_counter() - t0
    return ev.add(cand)
