"""Deep Compression candidates in the search: a sparsity and a k-means bit width per prunable layer.

Quantization choices alone cannot make a file much smaller than a quarter of fp32 (a codebook's
indices are stored one byte each in ONNX). Below that, the search also tries the packed ``.dsz``
form of :func:`deepshrink.codec.pack`: magnitude pruning with fine-tuning, trained k-means weight
sharing and Huffman coding (Han et al., "Deep Compression", ICLR 2016). Each layer gets its own
sparsity and bit width — the paper sets both per layer from a sensitivity analysis (its §3 and
Fig. 6: accuracy against the fraction of one layer pruned, no retraining); here that analysis
seeds the optimiser:

1. **Sensitivity**: every prunable layer (Conv / Linear weight) pruned alone by magnitude at each
   sparsity of :data:`SPARSITY`, ``1 - mean cosine`` of the outputs against the original on
   calibration samples (a torch forward each; cheap).
2. **Warm starts**: for a few file sizes just under the budget and each bit width of
   :data:`WARM_BITS`, the pruning is spread over the layers greedily — the step that costs the least
   sensitivity per byte saved first (:func:`allocate`) — and checked by packing it one-shot (no
   fine-tuning: pruning and k-means are exact, the Huffman code nearly so).
3. **Optimiser**: optuna's multivariate TPE (seeded) over the per-layer sparsity and bits,
   minimising (quality loss, size) under the same fidelity and budget constraints as the
   quantization trials. A proposal whose one-shot size estimate is over the size budget by more
   than 5 % is told the estimate without fine-tuning (it counts as a proposal, not a build).

Each built candidate is exactly what a ``pack: {method: deep-compression, ...}`` recipe step of
``deepshrink compress`` writes — same calibration samples, seed 0, single-threaded deterministic
fine-tuning — so ``compress --recipe best.yaml`` reproduces the chosen ``.dsz`` byte for byte. Its
size is the ``.dsz`` file; its fidelity and latency are measured on the decoded model exported to
ONNX (the float graph the file unpacks to), like every other candidate. The fine-tuning schedule
is issue 16's best for the digits CNN (cosine lr 1e-2 while pruning over ``pack_epochs[0]`` epochs,
centroids over ``pack_epochs[1]``, distilled from the original at alpha 0.9, BatchNorm folded where
the model has convolutions followed by BatchNorm).

Fine-tuning needs labelled data. An ONNX model (what other toolchains ship) is fine-tuned as ``pack``
fine-tunes it: through its PyTorch import, the BatchNorms its exporter folded put back for training
(when it trains 100 steps or more) and folded again before the weights are shared; the per-layer
choices, the sensitivity and the size estimates then name the import's modules (the ``.dsz`` of an ONNX
source also carries its weight-stripped graph, added to the import's estimate), and the pack step of
``best.yaml`` imports the same ``.onnx`` the same way. Without labels (or when the import fails) an ONNX
model gets the one-shot form — each weight initializer of two or more dimensions pruned by magnitude
and k-means-shared with no training — with the same allocation and optimiser (its sensitivity runs
the ONNX model once per layer and sparsity); without fine-tuning only mild settings keep a tight
target. These candidates run in the driver process, one after another (also when the quantization
trials ran on Ray).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.data import Dataset
from ..errors import DeepshrinkError, first_line
from .config import SearchConfig
from .objective import Candidate, Evaluator

SPARSITY = (0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95)  # fraction of a layer's weights set to zero
BITS = (3, 4, 5, 6, 8)  # k-means bits of a layer's non-zero weights
WARM_BITS = (5, 4, 3)
ONE_SHOT_BITS = (4, 5, 6, 8)  # k-means without centroid fine-tuning: 3 bits loses too much
ONE_SHOT_WARM_BITS = (6, 5, 4)
ONNX_SENSITIVITY_SAMPLES = 32  # the one-shot sensitivity runs the whole ONNX model per layer and sparsity
MIN_ONNX_ELEMENTS = 256  # smaller ONNX weights keep the config's default bits (not searched)
ONE_SHOT_SPARSITY = (0.0, 0.3, 0.5, 0.7)  # without fine-tuning, pruning beyond this costs too much
OVER_ESTIMATE = 1.05  # proposals estimated this far over a size budget are not fine-tuned
SCHEDULE: dict[str, Any] = {"lr": 0.01, "lr_schedule": "cosine", "distill": True, "kd_alpha": 0.9, "other_bits": 4}


@dataclass(frozen=True)
class PackLayer:
    """A prunable layer: a torch module with a Conv or Linear weight."""

    name: str  # the module's name, as DeepCompressionConfig's layer patterns match it
    kind: str  # "conv" or "fc"
    numel: int


def label(sparsity: float, bits: int) -> str:
    """The per-layer choice as a report shows it: ``"pruned 90% at 4-bit"`` (no comma: the reports
    list the choices comma-separated with a count each, ``"2 pruned 50% at 3-bit, 1 4-bit"``)."""
    return f"pruned {round(100 * sparsity)}% at {bits}-bit" if sparsity else f"{bits}-bit"


def wanted(config: SearchConfig, source: Any, data: Dataset, say: Any) -> bool:
    """Whether this search tries Deep Compression candidates (``config.pack``).

    ``"auto"``: with a size budget, for a PyTorch model with labelled data (fine-tuned) or an ONNX
    model (fine-tuned through its import with labelled data, one-shot without). ``"on"``: always, and a model or data that cannot have them is refused
    (:class:`InputError`) before any work.
    """
    from .config import family_wanted

    if config.pack == "off":
        return False
    why = None
    if source.kind not in ("torch", "onnx"):
        why = f"the model is {source.kind}; Deep Compression takes a PyTorch or an ONNX model"
    elif source.kind == "torch" and data.labels is None:
        why = (f"the data {data.source} has no labels to fine-tune the PyTorch model on (an ONNX export of it "
               "gets one-shot Deep Compression)")
    elif not layers_of(source):
        why = "the model has no weight layer to prune"
    return family_wanted(config.pack, "--pack", why, config, "size", "Deep Compression", say)


def layers_of(source: Any) -> list[PackLayer]:
    """The prunable layers of a model handle in definition order: Conv / Linear modules of a torch model,
    float initializers of two or more dimensions of an ONNX one (as ``pack`` names and kinds them)."""
    if source.kind == "onnx":
        from onnx import numpy_helper

        out = []
        for init in source.model.graph.initializer:
            if len(init.dims) >= 2 and init.data_type in (1, 10, 11):  # float, float16, double
                n = int(np.prod(init.dims))
                if n >= MIN_ONNX_ELEMENTS and np.isfinite(numpy_helper.to_array(init)).all():
                    out.append(PackLayer(init.name, "fc" if len(init.dims) == 2 else "conv", n))
        return out
    from torch import nn

    from ..codec.compress import _kind

    return [PackLayer(n, _kind(m, "weight"), int(m.weight.numel())) for n, m in source.model.named_modules()
            if isinstance(getattr(m, "weight", None), nn.Parameter) and _kind(m, "weight") in ("conv", "fc")]


def _has_conv_bn(module: Any) -> bool:
    from torch import nn

    mods = list(module.modules())
    return any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in mods) and \
        any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) for m in mods)


def params_of(layers: list[PackLayer], assign: dict[str, tuple[float, int]], config: SearchConfig, fold_bn: bool,
              *, one_shot: bool = False) -> dict[str, Any]:
    """The ``pack`` recipe step's parameters (``DeepCompressionConfig`` fields) for a per-layer assignment.

    ``one_shot``: no fine-tuning (an ONNX model, or the size estimate of a torch candidate)."""
    from .space import _literal

    sparsity = {_literal(lay.name): float(assign[lay.name][0]) for lay in layers if assign[lay.name][0] > 0}
    bits = {_literal(lay.name): int(assign[lay.name][1]) for lay in layers}
    head = {"method": "deep-compression", "fc_sparsity": 0.0, "layer_sparsity": sparsity, "layer_bits": bits}
    if one_shot:
        return {**head, "prune_epochs": 0, "finetune_epochs": 0, "fold_bn": fold_bn}
    return {**head, **SCHEDULE, "prune_epochs": config.pack_epochs[0], "finetune_epochs": config.pack_epochs[1],
            "fold_bn": fold_bn}


class PackEvaluator:
    """Builds Deep Compression candidates the way ``compress``'s pack step does and measures them with ``ev``.

    An ONNX source with labelled calibration data is fine-tuned as ``pack`` does it, through its PyTorch import
    (:attr:`imported`: its layers, sensitivity and size estimates use the import's module names, which the pack
    step's import of the same file gives again); without labels (or when the import fails) it is packed one-shot.
    """

    def __init__(self, ev: Evaluator, source: Any, factory: str | None, config: SearchConfig,
                 say: Any = None) -> None:
        self.ev, self.source, self.factory, self.config = ev, source, factory, config
        self.imported = self._import(say) if source.kind == "onnx" else None
        self.layers = layers_of(self.imported or source)
        self.one_shot = source.kind == "onnx" and self.imported is None
        self.fold_bn = source.kind == "torch" and _has_conv_bn(source.model)
        # a .dsz of an ONNX source carries its weight-stripped graph, the import's estimate does not
        self.graph_bytes = self._graph_bytes() if self.imported is not None else 0
        self.sparsity = ONE_SHOT_SPARSITY if self.one_shot else SPARSITY
        self.bits = ONE_SHOT_BITS if self.one_shot else BITS
        self.warm_bits = ONE_SHOT_WARM_BITS if self.one_shot else WARM_BITS
        self.estimates: dict[str, int] = {}
        # the last one-shot pack: for an ONNX model a proposal's size estimate *is* the candidate it then builds
        self._last: tuple[str, Any, bytes] | None = None

    def _import(self, say: Any) -> Any:
        """The ONNX source's PyTorch import, when the calibration data has labels to fine-tune on; else None."""
        from ..convert.onnx2torch.route import trainable_handle

        if self.ev.calibration is None or self.ev.calibration.labels is None or not any(self.config.pack_epochs):
            return None
        try:
            return trainable_handle(self.source)
        except DeepshrinkError as exc:
            if say is not None:
                say(f"Deep Compression candidates packed one-shot: the ONNX model's PyTorch import, which "
                    f"fine-tuning needs, failed ({first_line(exc, 160)})")
            return None

    def _graph_bytes(self) -> int:
        """How much bigger the ONNX source's ``.dsz`` is than its import's at the same weights (the graph it
        carries), measured once with every weight kept at the config's default bits."""
        from ..codec import DeepCompressionConfig, pack

        cfg = DeepCompressionConfig.build(fc_sparsity=0.0, conv_sparsity=0.0, prune_epochs=0, finetune_epochs=0)
        return max(0, pack(self.source, cfg).nbytes - pack(self.imported, cfg).nbytes)

    def _pack(self, params: dict[str, Any], *, data: Any) -> Any:
        from ..codec import DeepCompressionConfig, pack
        from ..train import deterministic_training

        memo = json.dumps(params, sort_keys=True)
        if data is None and self._last is not None and self._last[0] == memo:
            return self._last[1], self._last[2]
        cfg = DeepCompressionConfig.build(**{k: v for k, v in params.items() if k != "method"})
        # a size estimate (no data) of an imported ONNX model packs the import: the layer names are its modules'
        model = self.imported if data is None and self.imported is not None else self.source
        with deterministic_training(), tempfile.TemporaryDirectory() as tmp:
            res = pack(model, cfg, output=Path(tmp) / "model.dsz", data=data, factory=self.factory)
            blob = (Path(tmp) / "model.dsz").read_bytes()
        if data is None:
            self._last = (memo, res, blob)
        return res, blob

    def estimate(self, assign: dict[str, tuple[float, int]]) -> int:
        """The ``.dsz`` size of ``assign`` packed one-shot (no fine-tuning), bytes; cached."""
        params = params_of(self.layers, assign, self.config, self.fold_bn, one_shot=True)
        k = json.dumps(params, sort_keys=True)
        if k not in self.estimates:
            res, _blob = self._pack(params, data=None)
            self.estimates[k] = res.nbytes + self.graph_bytes
        return self.estimates[k]

    def evaluate(self, assign: dict[str, tuple[float, int]], *, trial: int, origin: str) -> Candidate:
        """Fine-tune, pack, decode, export and measure ``assign``; served from ``ev``'s cache when built before."""
        from ..backends.onnx import save_onnx
        from ..quantize.api import to_onnx_handle
        from .space import key

        shown = {lay.name: label(*assign[lay.name]) for lay in self.layers}
        params = params_of(self.layers, assign, self.config, self.fold_bn, one_shot=self.one_shot)
        k = "pack:" + key(shown)
        if k in self.ev.cache:
            return self.ev.cache[k]
        cand = Candidate(trial, shown, k, origin=origin, family="pack", recipe={"steps": [{"pack": params}]})
        t0 = time.perf_counter()
        try:
            res, blob = self._pack(params, data=None if self.one_shot else self.ev.calibration)
            decoded = (res.model.model if self.source.kind == "onnx"  # an ONNX source packs to ONNX, tuned or not
                       else to_onnx_handle(self.source.with_model(res.model.model)).model)
            with tempfile.TemporaryDirectory() as tmp:
                save_onnx(decoded, Path(tmp) / "model.onnx")
                onnx_bytes = (Path(tmp) / "model.onnx").read_bytes()
        except (DeepshrinkError, RuntimeError, ValueError) as exc:  # one candidate failing ends only that trial
            cand.error = first_line(exc, 300)
            return self.ev.add(cand)
        self.ev.measure(cand, onnx_bytes, size_bytes=len(blob), sha_of=blob)
        cand.build_s = time.perf_counter() - t0
        return self.ev.add(cand)


def prune_sensitivity(pe: PackEvaluator, inputs: dict[str, np.ndarray]) -> dict[str, dict[float, float]]:
    """``{layer: {sparsity: 1 - mean cosine}}`` with only that layer pruned by magnitude, no fine-tuning."""
    from ..convert.parity import compare_outputs

    if pe.one_shot:
        return _onnx_sensitivity(pe, {k: v[:ONNX_SENSITIVITY_SAMPLES] for k, v in inputs.items()})
    import torch

    torch_source = pe.imported or pe.source
    model = torch_source.model
    names = [spec.name for spec in torch_source.inputs]
    feed = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in names]

    def run() -> np.ndarray:
        with torch.no_grad():
            out = model(*feed)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.detach().float().numpy()

    was_training = model.training
    model.eval()
    ref = run()
    mods = dict(model.named_modules())
    out: dict[str, dict[float, float]] = {}
    try:
        for lay in pe.layers:
            w = mods[lay.name].weight
            keep = w.detach().clone()
            order = torch.argsort(keep.abs().reshape(-1), stable=True)
            out[lay.name] = {}
            for s in pe.sparsity:
                if not s:
                    out[lay.name][s] = 0.0
                    continue
                with torch.no_grad():
                    flat = keep.clone().reshape(-1)
                    flat[order[:int(round(s * flat.numel()))]] = 0.0
                    w.copy_(flat.reshape(w.shape))
                out[lay.name][s] = float(1.0 - compare_outputs(ref, run()).cos_mean)
            with torch.no_grad():
                w.copy_(keep)
    finally:
        model.train(was_training)
    return out


def _onnx_sensitivity(pe: PackEvaluator, inputs: dict[str, np.ndarray]) -> dict[str, dict[float, float]]:
    """The ONNX form: one initializer at a time replaced by its pruned copy, the model run, then restored."""
    from onnx import numpy_helper

    from ..convert.parity import compare_outputs
    from ..quantize.onnx.sensitivity import run_outputs

    model = pe.source.model
    threads = pe.config.threads
    ref = run_outputs(model, inputs, threads=threads)
    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, dict[float, float]] = {}
    for lay in pe.layers:
        init = inits[lay.name]
        original = type(init)()
        original.CopyFrom(init)
        arr = numpy_helper.to_array(original)
        order = np.argsort(np.abs(arr.reshape(-1)), kind="stable")
        out[lay.name] = {0.0: 0.0}
        try:
            for s in pe.sparsity[1:]:
                flat = arr.copy().reshape(-1)
                flat[order[:int(round(s * flat.size))]] = 0
                init.CopyFrom(numpy_helper.from_array(flat.reshape(arr.shape), lay.name))
                out[lay.name][s] = float(1.0 - compare_outputs(ref, run_outputs(model, inputs, threads=threads)).cos_mean)
        finally:
            init.CopyFrom(original)
    return out


def allocate(layers: list[PackLayer], sens: dict[str, dict[float, float]], bits: int, target_bytes: float,
             overhead: float, levels: tuple[float, ...] = SPARSITY) -> dict[str, tuple[float, int]]:
    """Per-layer sparsity at ``bits`` for an estimated file of ``target_bytes``: greedy on loss per byte saved.

    Every layer starts dense; the step (to any higher sparsity of ``levels``) that saves bytes
    at the least increase in pruning sensitivity per byte is taken — the least costly one that
    reaches the target, once one does — until the estimate (``overhead`` plus each layer's non-zeros at
    ``bits`` + about 4 bits of Huffman-coded position gap) is within the target, or every layer is
    at the highest sparsity. Small, sensitive layers (a first convolution, a classifier) stay dense
    longest, as the paper's per-layer choices do.
    """
    level = {lay.name: 0 for lay in layers}

    def nbytes(lay: PackLayer, s: float) -> float:
        return lay.numel * (1.0 - s) * (bits + (4 if s > 0 else 0)) / 8.0

    total = overhead + sum(nbytes(lay, 0.0) for lay in layers)
    while total > target_bytes:
        best: tuple[float, PackLayer, int, float] | None = None
        last: tuple[float, PackLayer, int, float] | None = None  # the least costly step that reaches the target
        for lay in layers:  # a step may jump levels: the first ones can save nothing (position codes)
            i = level[lay.name]
            for j in range(i + 1, len(levels)):
                saved = nbytes(lay, levels[i]) - nbytes(lay, levels[j])
                if saved <= 0:
                    continue
                cost = max(sens[lay.name][levels[j]] - sens[lay.name][levels[i]], 1e-9)
                if best is None or cost / saved < best[0]:
                    best = (cost / saved, lay, j, saved)
                if total - saved <= target_bytes and (last is None or cost < last[0]):
                    last = (cost, lay, j, saved)
        if best is None:
            break
        if last is not None:
            level[last[1].name] = last[2]
            break
        level[best[1].name] = best[2]
        total -= best[3]
    return {lay.name: (levels[level[lay.name]], bits) for lay in layers}


def warm_starts(pe: PackEvaluator, sens: dict[str, dict[float, float]], budget_bytes: float | None
                ) -> list[tuple[str, dict[str, tuple[float, int]]]]:
    """Per-layer (sparsity, bits) assignments to build first, most promising first.

    For file sizes at 0.95, 0.85 and 0.7 of a size budget (without one: 1/10, 1/20 and 1/40 of
    the original file) and 5, 4 and 3 bits, :func:`allocate` spreads the pruning over the layers by
    sensitivity; each is then sized by packing it one-shot and, while over its target, re-allocated
    for a proportionally smaller one. A target that every layer unpruned at more bits than those
    (the most of :attr:`PackEvaluator.bits` that fits) already packs under gets that point first: a
    size budget that 6-bit weights undershoot by half (ppocr-cls at 0.4x: 0.197x) is no reason to
    drop bits. Order: the largest target first, most bits first.
    """
    fracs = (0.95, 0.85, 0.7)
    targets = [f * budget_bytes for f in fracs] if budget_bytes is not None else \
        [pe.ev.ref_size / d for d in (10, 20, 40)]
    higher = sorted((b for b in pe.bits if b > max(pe.warm_bits)), reverse=True)
    dense_size = {b: pe.estimate({lay.name: (0.0, b) for lay in pe.layers}) for b in higher}
    out: list[tuple[str, dict[str, tuple[float, int]]]] = []
    for target in targets:
        fits = [b for b in higher if dense_size[b] <= target][:1]
        for bits in (*fits, *pe.warm_bits):
            dense = {lay.name: (0.0, bits) for lay in pe.layers}
            overhead = max(pe.estimate(dense) - sum(lay.numel * bits / 8.0 for lay in pe.layers), 0.0)
            goal, assign = target, allocate(pe.layers, sens, bits, target, overhead, pe.sparsity)
            for _ in range(6):  # the analytic estimate is rough: correct it with the real one-shot size
                est = pe.estimate(assign)
                if est <= target:
                    break
                goal *= target / est
                assign = allocate(pe.layers, sens, bits, goal, overhead, pe.sparsity)
            if pe.estimate(assign) <= target * OVER_ESTIMATE and all(a != assign for _w, a in out):
                out.append((f"sensitivity allocation for {target:,.0f} B at {bits} bits", assign))
    return out


def search_pack(ev: Evaluator, source: Any, factory: str | None, inputs: dict[str, np.ndarray], config: SearchConfig,
                budget_ratio: float | None, deadline: float | None, say: Any, *, first_trial: int = 0,
                progress: bool = False) -> tuple[list[Candidate], dict[str, Any]]:
    """Run the Deep Compression trials; return the built candidates and what the report shows of them.

    ``inputs``: calibration inputs for the pruning sensitivity. ``budget_ratio``: a size budget as
    a fraction of the reference file (``None``: no size budget). ``deadline``:
    ``time.perf_counter()`` value after which no new build starts. Trials are numbered from
    ``first_trial`` on (after the quantization trials).
    """
    import warnings

    import optuna

    pe = PackEvaluator(ev, source, factory, config, say)
    say(f"Deep Compression candidates: {len(pe.layers)} prunable layers; sensitivity to pruning")
    sens = prune_sensitivity(pe, inputs)
    budget_bytes = None if budget_ratio is None else budget_ratio * ev.ref_size
    starts = warm_starts(pe, sens, budget_bytes)
    per_trial = hasattr(optuna.trial.Trial, "set_constraint")
    n_warm = min(len(starts), max(1, config.pack_trials // 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=config.seed, multivariate=True, n_startup_trials=n_warm,
            **({} if per_trial else {"constraints_func": lambda t: list(t.user_attrs.get("constraints", [1.0, 1.0]))}))
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for _what, assign in starts[:n_warm]:
        study.enqueue_trial({**{f"{n}:sparsity": s for n, (s, _b) in assign.items()},
                             **{f"{n}:bits": b for n, (_s, b) in assign.items()}})
    origins = {json.dumps(sorted(a.items())): w for w, a in starts}
    built: list[Candidate] = []
    proposals, skipped = 0, 0
    bar_ctx: Any = None
    if progress:
        from ..core.progress import progress_bar

        bar_ctx = progress_bar()
        bar_ctx.start()
        task = bar_ctx.add_task("Deep Compression trials", total=config.pack_trials)
    try:
        while len(built) < config.pack_trials and proposals < 10 * config.pack_trials:
            if deadline is not None and time.perf_counter() > deadline:
                say("Deep Compression trials stopped by --time")
                break
            trial = study.ask()
            proposals += 1
            assign = {lay.name: (float(trial.suggest_categorical(f"{lay.name}:sparsity", list(pe.sparsity))),
                                 int(trial.suggest_categorical(f"{lay.name}:bits", list(pe.bits)))) for lay in pe.layers}
            est = pe.estimate(assign)
            if budget_bytes is not None and est > budget_bytes * OVER_ESTIMATE:
                over = est / budget_bytes - 1.0
                _tell(study, trial, per_trial, (1e3, est / ev.ref_size), (0.0, over))
                skipped += 1
                continue
            origin = origins.get(json.dumps(sorted(assign.items())), "optimiser")
            cand = pe.evaluate(assign, trial=first_trial + trial.number, origin=f"Deep Compression {origin}")
            if cand not in built:
                built.append(cand)
                if bar_ctx is not None:
                    bar_ctx.update(task, advance=1)
            short = ev.shortfall(cand.select)
            over = 0.0 if budget_bytes is None else cand.size_bytes / budget_bytes - 1.0
            loss = ev.loss(cand.select) if cand.error is None else 1e3
            _tell(study, trial, per_trial, (min(loss, 1e3), cand.size_ratio), (min(short, 1e9), over))
            say(f"  Deep Compression trial {cand.trial}: " + (cand.error or _point(cand, ev)))
    finally:
        if bar_ctx is not None:
            bar_ctx.stop()
    floor = None
    if not built and skipped and budget_bytes is not None:
        # every proposal was over the budget: say how small this model packs at all (every layer at the
        # highest sparsity and the fewest bits), so the user sees how far the budget is out of reach
        floor = pe.estimate({lay.name: (pe.sparsity[-1], pe.bits[0]) for lay in pe.layers})
        say(f"  no Deep Compression candidate fine-tuned: all {skipped} proposals were estimated over the budget "
            f"({budget_bytes:,.0f} B); the smallest packing of this model (every layer pruned "
            f"{round(100 * pe.sparsity[-1])}% at {pe.bits[0]}-bit, one-shot) is {floor:,} B, {floor / ev.ref_size:.4f}x "
            "the original")
    info = {"layers": [{"name": lay.name, "kind": lay.kind, "weights": lay.numel,
                        "sensitivity": {f"{s:g}": v for s, v in sens[lay.name].items()}} for lay in pe.layers],
            "schedule": ({"one_shot": True} if pe.one_shot else
                         {**SCHEDULE, "prune_epochs": config.pack_epochs[0], "finetune_epochs": config.pack_epochs[1],
                          "fold_bn": pe.fold_bn}),
            "proposals": proposals, "built": len(built), "not_built_over_budget": skipped, "floor_bytes": floor,
            "warm_starts": [w for w, _a in starts[:n_warm]]}
    return built, info


def _point(c: Candidate, ev: Evaluator) -> str:
    s = c.select
    fid = (f"drop {s.drop:+.2f} pt" if s is not None and s.drop is not None
           else f"cos {s.cos_mean:.4f}/{s.cos_min:.4f}" if s is not None else "-")
    return f"{fid}, {c.size_bytes:,} B ({c.size_ratio:.4f}x)"


def _tell(study: Any, trial: Any, per_trial: bool, values: tuple[float, float], constraints: tuple[float, float]
          ) -> None:
    trial.set_user_attr("constraints", list(constraints))
    if per_trial:
        trial.set_constraint("fidelity", constraints[0])
        trial.set_constraint("budget", constraints[1])
    study.tell(trial, values)
