"""Latency measurement that survives a noisy shared machine.

Candidates are timed interleaved — one call of each per round, in rotating order — so
that drift in machine load hits all of them alike, and the speed-up of each against the
first is computed per round; its median and spread are what we report. Thread counts
are set for both torch and ONNX Runtime and recorded with the CPU's SIMD flags.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class LatencyStats:
    median_ms: float
    p90_ms: float
    p10_ms: float
    mean_ms: float
    repeats: int
    threads: int
    ratio: float = 1.0  # median of per-round (this / baseline)
    ratio_spread: float = 0.0  # half the 10–90% range of the per-round ratio
    # the per-round times (ms), in round order: two candidates timed in the same rounds are compared
    # round by round (:func:`paired_ratio`); not part of ``to_dict``
    rounds_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @property
    def spread(self) -> float:
        """(p90 − p10) / median: the run-to-run spread of this figure."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["rounds_ms"]
        return {**d, "spread": self.spread}


def _round_ratios(a: LatencyStats, b: LatencyStats) -> np.ndarray:
    """``a``'s time over ``b``'s, round by round; ``ValueError`` unless they were timed in the same rounds."""
    if not a.rounds_ms or len(a.rounds_ms) != len(b.rounds_ms):
        raise ValueError("comparing round by round needs two callables timed in the same rounds")
    return np.asarray(a.rounds_ms) / np.asarray(b.rounds_ms)


def measurably_slower(a: LatencyStats, b: LatencyStats, margin: float = 0.02, z: float = 1.645) -> bool:
    """Whether ``a`` is slower than ``b`` by more than ``margin`` (a fraction) in the rounds they shared:
    a one-sided sign test — ``a`` took more than ``(1 + margin)`` times ``b``'s time in significantly more
    than half the rounds (normal approximation to the binomial, ``z`` = 1.645: 5 %). It uses only each
    round's sign, so the long delays a loaded machine puts on single calls do not widen it (a standard
    error from the ratios' spread did: MiniLM at load 5, an 18 % gap within ±0.16). Raises ``ValueError``
    when the two were not timed in the same rounds."""
    r = _round_ratios(a, b)
    n = len(r)
    return int((r > 1.0 + margin).sum()) > n / 2 + z * np.sqrt(n) / 2


def paired_ratio(a: LatencyStats, b: LatencyStats) -> tuple[float, float]:
    """(median, standard error of the median) of the per-round ratio ``a / b`` of two callables timed
    in the same interleaved rounds (:func:`measure_latency`).

    Pairing by round removes what the rounds share — a load burst slows both calls of a round — so
    the ratio's uncertainty is far smaller than either one's spread against a third model. The
    standard error: 1.2533 sigma / sqrt(rounds), sigma from half the 10-90 % range / 1.2816 (normal
    quantiles; the median's asymptotic efficiency). Raises ``ValueError`` when the two were not
    timed in the same rounds.
    """
    r = _round_ratios(a, b)
    sigma = (np.percentile(r, 90) - np.percentile(r, 10)) / 2 / 1.2816
    return float(np.median(r)), float(1.2533 * sigma / len(r) ** 0.5)


def cpu_flags() -> str:
    """The SIMD flags that change int8 and bfloat16 speed-ups (AVX2, AVX-512, VNNI, AVX512-BF16, AMX), and the
    CPU model."""
    from ..core.cpu import cpuinfo

    info = cpuinfo()
    if info is None:
        return "unknown"
    model, all_flags = info
    flags = sorted(all_flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"})
    return f"{model or 'cpu'} [{' '.join(flags) or 'no avx2'}]"


def measure_latency(runners: dict[str, Callable[[], Any]], *, warmup: int = 5, repeats: int = 30,
                    threads: int = 2, min_seconds: float = 0.0, progress: bool = False) -> dict[str, LatencyStats]:
    """Time each zero-argument callable, interleaved; the first is the baseline for ratios."""
    import torch

    torch.set_num_threads(threads)
    names = list(runners)
    for _ in range(warmup):
        for n in names:
            runners[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    rounds = 0
    from ..core.progress import progress_bar

    with progress_bar(show=progress) as bar:
        task = bar.add_task("timing", total=repeats)
        while rounds < repeats or time.perf_counter() - start < min_seconds:
            order = names[rounds % len(names):] + names[:rounds % len(names)]
            for n in order:
                t0 = time.perf_counter()
                runners[n]()
                times[n].append((time.perf_counter() - t0) * 1e3)
            rounds += 1
            bar.update(task, advance=1)
    base = np.asarray(times[names[0]])
    out = {}
    for n in names:
        t = np.asarray(times[n])
        ratios = t / base
        out[n] = LatencyStats(float(np.median(t)), float(np.percentile(t, 90)), float(np.percentile(t, 10)),
                              float(t.mean()), len(t), threads, float(np.median(ratios)),
                              float((np.percentile(ratios, 90) - np.percentile(ratios, 10)) / 2),
                              tuple(float(x) for x in t))
    return out
