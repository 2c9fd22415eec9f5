"""Building and measuring one candidate: quantize, write, time against the reference, score on held-out data.

Every candidate is built through the same call ``deepshrink compress`` makes for a ``quantize``
step (:func:`deepshrink.quantize.api.run_quantize` on the same calibration samples), written as the
bytes ``compress`` would write, timed on ONNX Runtime interleaved with the float reference
(:func:`deepshrink.evaluate.latency.measure_latency`: per-round ratio, its median and spread),
and scored on the *held-out* samples — never on the calibration ones. Results are cached by the
assignment, so no candidate is built twice.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..convert.parity import per_sample_cosines
from ..core.data import Dataset
from ..errors import DeepshrinkError, first_line
from .config import SearchConfig
from .space import Space, key


@dataclass
class Scores:
    """Fidelity of one model's outputs on one held-out set."""

    samples: int
    accuracy: float | None  # top-1, 0..1 (labelled data only)
    drop: float | None  # accuracy points lost against the reference (0..100)
    cos_mean: float
    cos_min: float
    cos_se: float = 0.0  # standard error of cos_mean: the per-sample cosines' standard deviation / sqrt(samples)

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "accuracy": self.accuracy, "drop_points": self.drop,
                "cos_mean": self.cos_mean, "cos_min": self.cos_min, "cos_se": self.cos_se}


@dataclass
class Candidate:
    """One measured assignment."""

    trial: int
    assign: dict[str, str]
    key: str
    size_bytes: int = 0
    size_ratio: float = 1.0
    sha256: str = ""
    latency_ratio: float | None = None
    latency_spread: float | None = None
    latency_ms: float | None = None
    select: Scores | None = None
    test: Scores | None = None
    error: str | None = None
    build_s: float = 0.0
    origin: str = "optimiser"  # or "warm start: ..."
    model_bytes: bytes | None = field(default=None, repr=False)  # the ONNX model that is scored and timed
    family: str = "quantize"  # or "pack": a Deep Compression .dsz (.pack)
    recipe: dict[str, Any] | None = None  # the recipe that builds it, when not the search space's quantize step

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.assign.values():
            out[c] = out.get(c, 0) + 1
        return out

    def to_dict(self, *, timings: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"trial": self.trial, "origin": self.origin, "family": self.family,
                             "choices": self.counts(),
                             "layers": dict(self.assign), "size_bytes": self.size_bytes,
                             "size_ratio": self.size_ratio, "sha256": self.sha256,
                             "select": self.select.to_dict() if self.select else None,
                             "test": self.test.to_dict() if self.test else None}
        if timings:
            d.update({"latency_ratio": self.latency_ratio, "latency_spread": self.latency_spread,
                      "latency_ms": self.latency_ms, "build_s": round(self.build_s, 2)})
        if self.error:
            d["error"] = self.error
        return d


class Evaluator:
    """Builds and measures candidates against the float reference; caches them by assignment."""

    def __init__(self, reference: Any, space: Space, calibration: Dataset, select: Dataset, test: Dataset | None,
                 config: SearchConfig) -> None:
        from ..backends.onnx import save_onnx

        self.reference, self.space, self.calibration, self.config = reference, space, calibration, config
        self.select_set, self.test_set = select, test
        with tempfile.TemporaryDirectory() as tmp:
            save_onnx(reference.model, Path(tmp) / "ref.onnx")
            self.ref_bytes = (Path(tmp) / "ref.onnx").read_bytes()
        self.ref_size = len(self.ref_bytes)
        self.ref_select = self._outputs(self.ref_bytes, select.inputs)
        self.ref_test = self._outputs(self.ref_bytes, test.inputs) if test is not None else None
        self.ref_acc_select = _accuracy(self.ref_select, select.labels)
        self.ref_acc_test = _accuracy(self.ref_test, test.labels) if test is not None else None
        from ..quantize.onnx.sensitivity import _trim

        # batch 1: one request, without the padding a tokenized batch carries
        self.feed = _trim({k: v[:1] for k, v in select.inputs.items()})
        self.budget_ratio: float | None = None
        self.cache: dict[str, Candidate] = {}
        self.builds = 0
        self.forms: list[dict[str, Any]] = []  # the int8 forms measured before the search (.forms)
        self.int8_speed: dict[str, float] = {}  # {layer: int8/float latency alone} (.sensitivity.int8_speed)

    # -- measuring ---------------------------------------------------------------------------

    def _outputs(self, model_bytes: bytes, inputs: dict[str, np.ndarray], batch: int = 1) -> np.ndarray:
        import onnx

        from ..quantize.onnx.sensitivity import run_outputs

        return run_outputs(onnx.load_from_string(model_bytes), inputs, batch=batch, threads=self.config.threads)

    def _deployed(self, model_bytes: bytes, part: Dataset, ref: np.ndarray, ref_acc: float | None) -> Scores:
        """The worst scores of the model run at each of ``config.score_batches`` (dynamic int8 takes one
        activation range per batch, so a model faithful one request at a time can lose fidelity in
        batches): lowest mean and worst-sample cosine, lowest accuracy, largest drop. The reference
        is run at batch 1 (a float model's outputs do not depend on the batch)."""
        runs = [self.scores(self._outputs(model_bytes, part.inputs, b), ref, part.labels, ref_acc)
                for b in dict.fromkeys(self.config.score_batches)]
        if len(runs) == 1:
            return runs[0]
        accs = [r.accuracy for r in runs if r.accuracy is not None]
        drops = [r.drop for r in runs if r.drop is not None]
        return Scores(runs[0].samples, min(accs) if accs else None, max(drops) if drops else None,
                      min(r.cos_mean for r in runs), min(r.cos_min for r in runs), max(r.cos_se for r in runs))

    @property
    def one_value_per_sample(self) -> bool:
        """The first output holds one number per sample (a VAD's speech probability, a sigmoid score):
        no per-sample cosine exists, so its cosine is taken over the held-out set as one vector."""
        return self.ref_select.ndim >= 1 and self.ref_select.size == len(self.ref_select)

    def scores(self, out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None, ref_acc: float | None) -> Scores:
        # per-sample cosines as every table reads them (compare_outputs): one value per sample gives one cosine
        # over the samples, repeated, so no spread; another shape than the reference's scores 0
        cos = per_sample_cosines(ref, out) if out.shape == ref.shape else np.zeros(1)
        se = float(cos.std(ddof=1) / np.sqrt(len(cos))) if cos.size > 1 else 0.0
        acc = _accuracy(out, labels)
        drop = None if acc is None or ref_acc is None else _drop_points(ref_acc, acc, len(out))
        return Scores(len(out), acc, drop, float(cos.mean()), float(cos.min()), se)

    def time_against_reference(self, models: dict[str, bytes], repeats: int) -> dict[str, Any]:
        """Interleaved timing of the reference and ``models`` (batch 1); the reference comes first."""
        from ..backends.onnx import make_session
        from ..evaluate.latency import measure_latency

        sessions = {"reference": make_session(self.ref_bytes, threads=self.config.threads)}
        sessions.update({n: make_session(b, threads=self.config.threads) for n, b in models.items()})
        feed = self.feed
        runners = {n: (lambda s=s: s.run(None, feed)) for n, s in sessions.items()}
        return measure_latency(runners, warmup=3, repeats=repeats, threads=self.config.threads)

    # -- candidates ---------------------------------------------------------------------------

    def evaluate(self, assign: dict[str, str], *, trial: int, origin: str = "optimiser", timed: bool = True
                 ) -> Candidate:
        """Build, score and (``timed`` and ``repeats`` > 0) time ``assign``; served from the cache when built before."""
        k = key(assign)
        if k in self.cache:
            return self.cache[k]
        cand = Candidate(trial, dict(assign), k, origin=origin)
        t0 = time.perf_counter()
        try:
            data = self.build(assign)
        except DeepshrinkError as exc:
            cand.error = first_line(exc, 300)
            return self.add(cand)
        self.measure(cand, data, timed=timed)
        cand.build_s = time.perf_counter() - t0
        return self.add(cand)

    def measure(self, cand: Candidate, data: bytes, *, timed: bool = True, size_bytes: int | None = None,
                sha_of: bytes | None = None) -> None:
        """Score the ONNX model ``data`` on the select and test halves and (``timed``) time it, into ``cand``.

        ``size_bytes`` / ``sha_of``: the shipped file's size and bytes when it is not ``data`` itself
        (a packed ``.dsz`` whose decoded model is ``data``).
        """
        cand.model_bytes = data
        cand.size_bytes = len(data) if size_bytes is None else size_bytes
        cand.size_ratio = cand.size_bytes / self.ref_size
        cand.sha256 = hashlib.sha256(data if sha_of is None else sha_of).hexdigest()
        cand.select = self._deployed(data, self.select_set, self.ref_select, self.ref_acc_select)
        if self.test_set is not None:
            cand.test = self._deployed(data, self.test_set, self.ref_test, self.ref_acc_test)
        if self.config.repeats and timed:
            st = self.time_against_reference({"candidate": data}, self.config.repeats)["candidate"]
            cand.latency_ratio, cand.latency_spread, cand.latency_ms = st.ratio, st.ratio_spread, st.median_ms

    def add(self, cand: Candidate) -> Candidate:
        """Cache a measured candidate (here or on a Ray worker) and count it if it was built."""
        if cand.key not in self.cache:
            self.cache[cand.key] = cand
            self.builds += cand.error is None
        return self.cache[cand.key]

    def build(self, assign: dict[str, str]) -> bytes:
        """The bytes ``compress`` writes for this assignment's recipe step."""
        from ..backends.onnx import save_onnx
        from ..quantize.api import run_quantize

        cfg = self.space.config(assign)
        if cfg is None:
            return self.ref_bytes
        res = run_quantize(self.reference, cfg, data=self.calibration, progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            save_onnx(res.handle.model, Path(tmp) / "model.onnx")
            return (Path(tmp) / "model.onnx").read_bytes()

    # -- fidelity against the target -----------------------------------------------------------

    def shortfall(self, s: Scores | None) -> float:
        """How far ``s`` is from the fidelity target (<= 0: met). Accuracy: points; cosine: cosine units."""
        if s is None:
            return float("inf")
        c = self.config
        if c.max_drop is not None:
            return (s.drop if s.drop is not None else float("inf")) - c.max_drop
        assert c.target_cos is not None and c.worst_cos is not None
        return max(c.target_cos - (s.cos_mean - c.confidence * s.cos_se), c.worst_cos - s.cos_min)

    def loss(self, s: Scores | None) -> float:
        """The quality objective: accuracy points lost, or 1 - mean cosine."""
        if s is None:
            return float("inf")
        if self.config.max_drop is not None:
            return s.drop if s.drop is not None else float("inf")
        return 1.0 - s.cos_mean


def _drop_points(ref_acc: float, acc: float, n: int) -> float:
    """Accuracy points lost, ``100 * (ref_acc - acc)``, computed from the sample counts so that a drop
    of exactly ``--max-drop`` compares equal to it (``100 * (0.91 - 0.90)`` is 1.0000000000000009)."""
    return 100.0 * (round(ref_acc * n) - round(acc * n)) / n if n else 0.0


def choices_text(counts: dict[str, int]) -> str:
    """A candidate's choices as reports and the CLI print them: ``"4 float, 2 int8"`` (count, choice;
    sorted by choice). A single whole-model choice is printed alone: ``"0.5 of channels removed"``."""
    if len(counts) == 1 and next(iter(counts.values())) == 1:
        return next(iter(counts))
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def _accuracy(out: np.ndarray | None, labels: np.ndarray | None) -> float | None:
    """Top-1 accuracy of the first output (of an :class:`OutputView`: its first block, whose argmax is the
    output's own); None without labels or for an output that is not one score per class (N, C), C ≥ 2."""
    shape = getattr(out, "first_shape", None) or (out.shape if out is not None else ())
    if out is None or labels is None or len(shape) != 2 or shape[1] < 2:
        return None
    return float((np.asarray(out)[:, :shape[1]].argmax(1) == labels[:len(out)]).mean())
