"""The fidelity gate: a written model whose outputs collapsed is not handed to the user.

Every verb that writes a model (``quantize``, ``prune``, ``compress``; ``distill`` when a limit is given — a
student is a smaller model by design, so its distance to the teacher is the user's call) measures the written
file against the model it came from on held-out inputs, and refuses to keep it when

* its accuracy dropped by more than ``max_drop`` (a fraction: 0.05 = 5 points) — judged only when
  the data has labels, and only once at least ``MIN_FLIPS`` more samples are wrong than before
  (fewer is within the noise of a small evaluation set), or
* without labels, its worst per-sample output cosine to the original fell below ``min_cos``.
  On random inputs (no data given) this is judged only for verbs meant to keep the function
  (quantization: a wrong graph rewrite shows on any input); a pruned model without fine-tuning
  drifts on out-of-distribution inputs by design (measured: magnitude 0.5 on a small transformer
  classifier, worst cosine 0.735 on random inputs while losing 2.7 accuracy points on real ones),
  so there the verdict is "not judged" and says to pass data.

The refusal is a :class:`DegradedError` (exit status 3) naming the first layer whose outputs
fall below ``min_cos`` — found by running both models with every intermediate value exposed and
comparing the values the two graphs share by name (ONNX) or module path (PyTorch). Nothing is
written; ``--allow-degraded`` keeps the file and prints the verdict as a warning instead.

The thresholds follow the issue's defaults (worst cosine 0.9, 5 accuracy points); the gate is a
guard against catastrophes (a wrong graph rewrite, a codebook that lost the signal), not an
accuracy target — ``quantize --scheme auto`` and the search own those.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..core.data import Dataset
from ..errors import DeepshrinkError

MIN_COS = 0.9
MAX_DROP = 0.05
MIN_FLIPS = 3  # an accuracy drop of fewer samples than this is noise, whatever its size in points
HOLDOUT_MIN = 16  # fewest held-out samples worth evaluating on
LOCATE_SAMPLES = 8  # inputs used to find the first broken layer


class DegradedError(DeepshrinkError):
    """The written model's fidelity collapsed; carries the :class:`GateVerdict`. Exit status 3."""

    exit_code = 3

    def __init__(self, message: str, verdict: GateVerdict) -> None:
        super().__init__(message)
        self.verdict = verdict


@dataclass(frozen=True)
class FidelityPolicy:
    """Where the gate fires: worst output cosine below ``min_cos`` (no labels; with labels, that of any output
    after the first) or an accuracy drop above ``max_drop`` (a fraction, labels present). ``allow_degraded``
    keeps the model anyway."""

    min_cos: float = MIN_COS
    max_drop: float = MAX_DROP
    allow_degraded: bool = False
    judge_random: bool = True  # judge the cosine on random inputs when no data is given

    def __post_init__(self) -> None:
        from ..errors import InputError

        if not -1.0 <= self.min_cos <= 1.0:
            raise InputError(f"gate minimum cosine {self.min_cos} is outside -1–1")
        if not 0.0 <= self.max_drop <= 1.0:
            raise InputError(f"gate maximum accuracy drop {self.max_drop} is outside 0–1 (a fraction: 0.05 = 5 points)")


@dataclass
class GateVerdict:
    """The gate's measurement of one written model against its original."""

    passed: bool
    reason: str  # why it failed, or why it was not judged; empty when it passed
    samples: int
    data: str
    cos_mean: float | None = None
    cos_min: float | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    first_broken_layer: str | None = None
    first_broken_cos: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_holdout(ds: Dataset, used: int) -> tuple[Dataset, Dataset, bool]:
    """Split ``ds`` into (samples a verb may use for calibration or fine-tuning, held-out samples).

    ``used``: how many samples the verb wants. Samples past ``used`` are held out when there are at
    least ``HOLDOUT_MIN`` of them; otherwise the last quarter is held out (the verb gets the rest);
    with fewer than ``2 * HOLDOUT_MIN`` samples nothing can be spared and both parts are the whole
    set — the third value is then ``False`` and the measurement says so."""
    n = len(ds)
    if n - used >= HOLDOUT_MIN:
        return ds.take(used), _slice(ds, used, n), True
    if n >= 2 * HOLDOUT_MIN:
        cut = n - max(HOLDOUT_MIN, n // 4)
        return ds.take(cut), _slice(ds, cut, n), True
    return ds, ds, False


def _slice(ds: Dataset, start: int, stop: int) -> Dataset:
    return Dataset({k: v[start:stop] for k, v in ds.inputs.items()},
                   None if ds.labels is None else ds.labels[start:stop], f"{ds.source}[{start}:{stop}]")


def judge(table: Any, policy: FidelityPolicy) -> GateVerdict:
    """The verdict on the last row of a :func:`deepshrink.evaluate.bench.bench` table against its
    first row (the original), by ``policy``."""
    first, row = table.rows[0], table.rows[-1]
    n = table.samples
    v = GateVerdict(True, "", n, table.data, row.cos_mean, row.cos_min, first.accuracy, row.accuracy)
    if first.accuracy is not None and row.accuracy is not None:
        drop = first.accuracy - row.accuracy
        if drop > policy.max_drop and round(drop * n) >= MIN_FLIPS:
            v.passed = False
            v.reason = (f"accuracy fell {100 * first.accuracy:.1f}% → {100 * row.accuracy:.1f}% "
                        f"({100 * drop:.1f} points, limit {100 * policy.max_drop:g}) on {n} samples of {table.data}")
        elif row.worst_output and row.cos_min is not None and row.cos_min < policy.min_cos:
            # the labels judge the first output; another output (boxes, landmarks) is judged by its fidelity
            v.passed = False
            v.reason = (f"output {row.worst_output!r}: worst cosine to the original {row.cos_min:.3f} (mean "
                        f"{row.cos_mean:.3f}, limit {policy.min_cos:g}) on {n} samples of {table.data}")
    elif table.data == "random" and not policy.judge_random:
        v.reason = ("not judged: outputs on random inputs say little about a lossy model "
                    f"(worst cosine {row.cos_min:.3f}, mean {row.cos_mean:.3f}); pass --data or --eval-data")
    elif row.cos_min is not None and row.cos_min < policy.min_cos:
        v.passed = False
        v.reason = (f"worst output cosine to the original {row.cos_min:.3f} (mean {row.cos_mean:.3f}, limit "
                    f"{policy.min_cos:g}) on {n} samples of {table.data}"
                    + (f" (output {row.worst_output!r})" if row.worst_output else ""))
    return v


def _per_sample_cos_min(a: np.ndarray, b: np.ndarray) -> float:
    a2 = a.reshape(a.shape[0], -1).astype(np.float64) if a.ndim else a.reshape(1, 1).astype(np.float64)
    b2 = b.reshape(b.shape[0], -1).astype(np.float64) if b.ndim else b.reshape(1, 1).astype(np.float64)
    num = (a2 * b2).sum(1)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-30), np.where(np.abs(a2 - b2).max(1) == 0, 1.0, 0.0))
    return float(cos.min())


def first_broken_layer(original: Any, written: Any, inputs: dict[str, np.ndarray], min_cos: float
                       ) -> tuple[str, float] | None:
    """The first value, in the original's execution order, whose worst per-sample cosine between
    ``original`` and ``written`` falls below ``min_cos``; both ONNX graphs (values matched by tensor
    name) or both PyTorch modules (leaf modules matched by path). ``None`` when no shared value is
    that far off (the collapse is in the final layers, or the graphs share no names)."""
    from ..convert.parity import onnx_intermediates, trace_torch

    if original.kind == "onnx" and written.kind == "onnx":
        order, ref = onnx_intermediates(original.model, inputs)
        _order2, cand = onnx_intermediates(written.model, inputs)
        seq = [(node, op, ref[v], cand.get(v)) for v, node, op in order if v in ref]
    elif original.kind == "torch" and written.kind == "torch":
        ref_t = trace_torch(original.model, inputs, original.input_names)
        cand_t = {name: val for name, _op, val in trace_torch(written.model, inputs, written.input_names)}
        seq = [(name, op, val, cand_t.get(name)) for name, op, val in ref_t]
    else:
        return None
    for name, op, a, b in seq:
        if b is None or a.shape != b.shape or not np.issubdtype(a.dtype, np.floating) or a.size == 0:
            continue
        cos = _per_sample_cos_min(a, b)
        if cos < min_cos:
            return f"{name} ({op})" if op else name, cos
    return None


def check(table: Any, policy: FidelityPolicy, *, original: Any = None, written: Any = None,
          inputs: dict[str, np.ndarray] | None = None, what: str = "the written model") -> GateVerdict:
    """Judge ``table`` by ``policy``; when it fails, locate the first broken layer (given the two
    models and a few inputs) and raise :class:`DegradedError` — unless ``policy.allow_degraded``,
    in which case the failing verdict is returned for the caller to print as a warning."""
    verdict = judge(table, policy)
    if verdict.passed:
        return verdict
    if original is not None and written is not None and inputs is not None:
        few = {k: v[:LOCATE_SAMPLES] for k, v in inputs.items()}
        try:
            found = first_broken_layer(original, written, few, policy.min_cos)
        except Exception:  # locating is a diagnosis aid; the verdict stands without it
            found = None
        if found is not None:
            verdict.first_broken_layer, verdict.first_broken_cos = found
    if not policy.allow_degraded:
        raise DegradedError(f"{what} degraded: {message(verdict)}; nothing written "
                            "(--allow-degraded keeps it)", verdict)
    return verdict


class SlowerError(DeepshrinkError):
    """The written model runs slower than the float one beyond the measurement's spread. Exit status 3."""

    exit_code = 3


def check_speed(table: Any, *, allow_slower: bool = False, what: str = "the written model") -> str | None:
    """The speed gate of ``quantize --scheme auto``: a model chosen *to be faster* must not be slower.

    ``table``: a :func:`deepshrink.evaluate.bench.bench` result whose first row is the float model
    and last row the written one; ``ratio`` is the median per-round latency ratio (written / float,
    interleaved rounds) and ``ratio_spread`` half its 10–90 % range. Slower *beyond spread* means
    ``ratio - ratio_spread > 1``: a ratio within the noise of the machine is not judged slower.
    Returns ``None`` when not slower, else one line saying by how much — raised as
    :class:`SlowerError` (nothing written) unless ``allow_slower``, in which case the caller prints
    it as a warning."""
    first, row = table.rows[0], table.rows[-1]
    if row.ratio - row.ratio_spread <= 1.0:
        return None
    line = (f"{what} is slower than the float model: {row.ratio:.2f}× its latency (±{row.ratio_spread:.2f}, "
            f"{row.median_ms:.3g} vs {first.median_ms:.3g} ms, {table.repeats} interleaved rounds)")
    if not allow_slower:
        raise SlowerError(line + "; nothing written (--allow-slower keeps it)")
    return line


def message(verdict: GateVerdict) -> str:
    """One line: why the gate fired and, when found, where."""
    where = (f"; first layer below the limit: {verdict.first_broken_layer} (cosine {verdict.first_broken_cos:.3f})"
             if verdict.first_broken_layer else "")
    return verdict.reason + where


def write_checked(original: Any, result: Any, output: Any, *, write: Any, measure: Any, held: Dataset | None,
                  policy: FidelityPolicy, also: Any = None, locate: bool = True) -> tuple[Any, GateVerdict]:
    """Write ``result`` (a handle) to ``output`` only if it passes the gate: ``write(result, staged_path)``
    writes it into a staging folder beside ``output`` (returns the written handle),
    ``measure(written, staged_path, held)`` measures it against ``original`` (a bench table, see
    :func:`deepshrink.evaluate.compare.compare`), :func:`check` judges it on ``held`` (or random
    inputs), then ``also(table)`` when given (a further check that raises to refuse, e.g.
    :func:`check_speed`); the staged file is renamed to ``output`` only when the verdict lets it through.
    ``locate=False``: no first broken layer is looked for (a distilled student's layers are not the original's
    under the same names). Returns ``(table, verdict)``; raises :class:`DegradedError` (nothing written) or what the
    writers raise."""
    from pathlib import Path

    from ..core.fileio import atomic_dir

    output = Path(output)
    with atomic_dir(output.parent) as stage:
        staged = stage / output.name
        written = write(result, staged)
        table = measure(written, staged, held)
        inputs = None if not locate else held.inputs if held is not None else original.random_samples(LOCATE_SAMPLES,
                                                                                                         seed=1)
        verdict = check(table, policy, original=original if locate else None, written=result, inputs=inputs,
                        what=str(output))
        if also is not None:  # a further gate on the same table (auto's speed check); raising keeps nothing
            also(table)
    return table, verdict
