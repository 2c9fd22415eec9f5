"""Reports for ``deepshrink compress``: ONNX layer introspection (:mod:`.inspect`) and the
report.md / report.html renderer (:mod:`.render`; matplotlib is imported only when a figure is drawn)."""

from __future__ import annotations

from .inspect import layer_table, weight_histograms
from .render import write_reports

__all__ = ["layer_table", "weight_histograms", "write_reports"]
