"""Reports for ``deepshrink compress``: ONNX layer introspection (:mod:`.inspect`) and the
report.md / report.html renderer (:mod:`.render`)."""

from __future__ import annotations

from .inspect import layer_table, weight_histograms

__all__ = ["layer_table", "weight_histograms", "write_reports"]


def write_reports(report, out_dir):  # type: ignore[no-untyped-def]
    """See :func:`deepshrink.report.render.write_reports` (imported lazily: matplotlib is heavy)."""
    from .render import write_reports as _w

    return _w(report, out_dir)
