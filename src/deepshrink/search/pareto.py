"""The Pareto set of the measured candidates and the chosen point.

Objectives, all minimised: quality loss (accuracy points lost, or ``1 - mean cosine``), file
size, and latency against the reference. Latency is compared *with its measured spread*, one
way only: a candidate is *faster* than another only when the gap exceeds the larger of the two
spreads (timing noise alone never removes a point), and it is *no slower* only when its measured
ratio is not above the other's (a point that measured slower never hides one that measured faster:
a smaller-but-slower candidate used to dominate a faster one within the spread, and the front then
lost the fast point a latency-minded user came for).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .objective import Candidate


def _lt(a: float, b: float, tol: float = 0.0) -> bool:
    return a < b - tol


def dominates(a: Candidate, b: Candidate, loss: Callable[[Candidate], float]) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in one.

    Latency (when both are timed): no worse means a measured ratio not above ``b``'s; better means
    faster by more than the larger of the two spreads."""
    pairs = [(loss(a), loss(b), 0.0), (float(a.size_bytes), float(b.size_bytes), 0.0)]
    if a.latency_ratio is not None and b.latency_ratio is not None:
        tol = max(a.latency_spread or 0.0, b.latency_spread or 0.0)
        pairs.append((a.latency_ratio, b.latency_ratio, tol))
    return all(x <= y for x, y, _ in pairs) and any(_lt(x, y, t) for x, y, t in pairs)


def front(cands: Sequence[Candidate], loss: Callable[[Candidate], float]) -> list[Candidate]:
    """The candidates no other candidate dominates, by trial number."""
    ok = [c for c in cands if c.error is None and c.select is not None]
    return sorted((c for c in ok if not any(dominates(o, c, loss) for o in ok if o is not c)),
                  key=lambda c: c.trial)
