"""The Pareto set's latency rule: noise never removes a point, and a point that measured slower never
hides one that measured faster."""

from deepshrink.search.objective import Candidate, Scores
from deepshrink.search.pareto import dominates, front


def _cand(trial: int, size: int, lat: float | None, spread: float | None, loss: float) -> Candidate:
    c = Candidate(trial=trial, assign={}, key=str(trial), size_bytes=size, latency_ratio=lat, latency_spread=spread)
    c.select = Scores(samples=1, accuracy=None, drop=None, cos_mean=1.0 - loss, cos_min=1.0 - loss)
    return c


def _loss(c: Candidate) -> float:
    return 1.0 - c.select.cos_mean


def test_smaller_but_slower_point_does_not_hide_the_faster_one():
    small_slow = _cand(0, 100, 0.60, 0.10, 0.001)
    big_fast = _cand(1, 200, 0.52, 0.10, 0.001)
    assert not dominates(small_slow, big_fast, _loss)
    assert [c.trial for c in front([small_slow, big_fast], _loss)] == [0, 1]


def test_a_gap_inside_the_spread_is_not_faster():
    a = _cand(0, 100, 0.50, 0.10, 0.001)
    b = _cand(1, 100, 0.55, 0.10, 0.001)  # same size and loss, 0.05 slower: within ±0.10
    assert not dominates(a, b, _loss) and not dominates(b, a, _loss)
    c = _cand(2, 100, 0.70, 0.10, 0.001)  # 0.20 slower: beyond the spread
    assert dominates(a, c, _loss)
    assert [x.trial for x in front([a, b, c], _loss)] == [0, 1]


def test_size_or_loss_decide_when_latency_is_no_worse():
    a = _cand(0, 100, 0.50, 0.10, 0.001)
    b = _cand(1, 150, 0.50, 0.10, 0.001)
    assert dominates(a, b, _loss) and not dominates(b, a, _loss)
    untimed = _cand(2, 150, None, None, 0.002)
    assert dominates(a, untimed, _loss)  # untimed: latency is not compared
