"""``ds.search``: adaptive per-layer compression search, measured on the runtime it ships on (issue 14)."""

from __future__ import annotations

from .config import Budget, SearchConfig, parse_budget, parse_duration
from .runner import BudgetNotMetError, SearchResult, search

__all__ = ["Budget", "BudgetNotMetError", "SearchConfig", "SearchResult", "parse_budget", "parse_duration", "search"]

from ..core.verbs import make_callable  # noqa: E402

make_callable(__name__, search)
