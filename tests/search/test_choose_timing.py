"""The search's choice among equally fast finalists: judged round by round against the fastest, not by
two medians against the reference whose per-round spread a loaded machine widens."""

import numpy as np
import pytest

from deepshrink.evaluate.latency import LatencyStats, paired_ratio
from deepshrink.search.config import SearchConfig
from deepshrink.search.objective import Candidate, Evaluator, Scores
from deepshrink.search.runner import _choose


class _Ev:  # the two Evaluator methods the choice reads, without building a reference model
    def __init__(self, config: SearchConfig) -> None:
        self.config = config

    shortfall = Evaluator.shortfall
    loss = Evaluator.loss


def _stats(t: np.ndarray, ref: np.ndarray) -> LatencyStats:
    r = t / ref
    return LatencyStats(float(np.median(t)), float(np.percentile(t, 90)), float(np.percentile(t, 10)),
                        float(t.mean()), len(t), 2, float(np.median(r)),
                        float((np.percentile(r, 90) - np.percentile(r, 10)) / 2), tuple(float(x) for x in t))


def _cand(trial: int, cos_mean: float) -> Candidate:
    c = Candidate(trial=trial, assign={}, key=str(trial), size_bytes=1000)
    c.select = Scores(samples=96, accuracy=None, drop=None, cos_mean=cos_mean, cos_min=cos_mean - 0.003)
    return c


def _timings(slower: float, seed: int = 0) -> dict[str, LatencyStats]:
    """60 rounds on a loaded machine: a load factor every call of a round shares, and the reference's
    own bursts (±40 %) that widen every ratio against it; trial 1 is ``slower`` times trial 0."""
    rng = np.random.default_rng(seed)
    load = rng.uniform(1.0, 3.0, 60)
    ref = 10.0 * load * rng.uniform(0.6, 1.4, 60)
    fast = 4.9 * load * rng.normal(1.0, 0.01, 60)
    other = slower * 4.9 * load * rng.normal(1.0, 0.01, 60)
    return {"reference": _stats(ref, ref), "trial 0": _stats(fast, ref), "trial 1": _stats(other, ref)}


def _final(stats: dict[str, LatencyStats]) -> dict[str, dict[str, float]]:
    return {n: {"latency_ratio": s.ratio, "latency_spread": s.ratio_spread} for n, s in stats.items()}


@pytest.fixture
def setup():
    cfg = SearchConfig(target_cos=0.99, min_cos=0.98, tie_break="fidelity", repeats=20, final_repeats=60)
    return cfg, _Ev(cfg), [_cand(0, 0.9950), _cand(1, 0.9990)]  # trial 1: more faithful


def test_a_consistently_slower_finalist_is_not_as_fast(setup):
    cfg, ev, cands = setup
    stats = _timings(1.16)
    final = _final(stats)
    # against the reference both medians sit inside each other's tolerance: the old rule took the
    # more faithful, slower one
    assert abs(final["trial 1"]["latency_ratio"] - final["trial 0"]["latency_ratio"]) < final["trial 0"]["latency_spread"]
    assert _choose(cands, ev, cfg, None, final)[0].trial == 1
    ratio, se = paired_ratio(stats["trial 1"], stats["trial 0"])
    assert ratio == pytest.approx(1.16, abs=0.01) and se < 0.01
    chosen, _, why = _choose(cands, ev, cfg, None, final, stats)
    assert chosen.trial == 0 and "not measurably slower" in why


def test_a_finalist_within_two_percent_counts_as_fast(setup):
    cfg, ev, cands = setup
    stats = _timings(1.01)
    assert _choose(cands, ev, cfg, None, _final(stats), stats)[0].trial == 1  # the more faithful of the two


def test_paired_ratio_needs_the_same_rounds():
    a = LatencyStats(1.0, 1.0, 1.0, 1.0, 2, 1, rounds_ms=(1.0, 1.0))
    b = LatencyStats(1.0, 1.0, 1.0, 1.0, 3, 1, rounds_ms=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="same rounds"):
        paired_ratio(a, b)
    assert "rounds_ms" not in a.to_dict()


def test_a_faster_finalist_the_tie_break_passed_over_is_named(setup):
    from deepshrink.search.runner import _faster_alternative

    cfg, ev, (fast, faithful) = setup
    final = {"reference": {"latency_ratio": 1.0}, "trial 0": {"latency_ratio": 0.45, "vs_chosen": 0.82, "vs_chosen_se": 0.07},
             "trial 1": {"latency_ratio": 0.59}}
    text = _faster_alternative(faithful, [fast, faithful], final, ev, cfg, None)
    assert text.startswith("trial 0") and "0.82x this model's latency round by round (±0.14" in text
    final["trial 0"]["vs_chosen"] = 0.97  # within 5 %: nothing to say
    assert _faster_alternative(faithful, [fast, faithful], final, ev, cfg, None) == ""


def test_confidence_asks_the_mean_to_clear_the_target_by_its_standard_errors():
    cfg = SearchConfig(target_cos=0.997, min_cos=0.99, confidence=2.0)
    edge = Scores(samples=96, accuracy=None, drop=None, cos_mean=0.9971, cos_min=0.9931, cos_se=0.0002)
    clear = Scores(samples=96, accuracy=None, drop=None, cos_mean=0.9978, cos_min=0.9966, cos_se=0.0002)
    assert _Ev(cfg).shortfall(edge) == pytest.approx(0.0003) and _Ev(cfg).shortfall(clear) <= 0
    assert _Ev(SearchConfig(target_cos=0.997, min_cos=0.99)).shortfall(edge) <= 0  # default: the measured mean
