"""What every transforming verb returns: :class:`Result` (the new model, a typed report, ``save``).

``quantize``, ``prune``, ``distill``, ``optimize``, ``pack`` and ``convert`` all return a
:class:`Result`; the recipe runner, the command line and the reports read the same fields
whichever verb ran. A verb never mutates the model it was given: ``Result.model`` is a new
:class:`~deepshrink.core.handle.ModelHandle`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from .handle import ModelHandle


class VerbReport:
    """What a verb did, JSON-ready.

    ``verb``: ``"quantize"``, ``"prune"``... ``method``: the scheme or method (``"int8-static"``,
    ``"structured"``). ``summary``: one line for a person. ``config``: the config's fields.
    ``layers``: one record per weighted layer (``{"name", "op", "params", "bits", "sparsity", ...}``
    — what the verb knows; a verb may give a function that computes them, called on first access,
    so a large model pays for the table only when it is read). ``measurements``: figures the verb
    took (parameters before and after, sparsity, bytes, parity). ``warnings``: what was left alone,
    each once. ``details``: the verb's full record (scheme-specific; the stable keys are the fields
    above).
    """

    def __init__(self, verb: str, method: str, summary: str = "", *, config: dict[str, Any] | None = None,
                 layers: list[dict[str, Any]] | Callable[[], list[dict[str, Any]]] | None = None,
                 measurements: dict[str, Any] | None = None, warnings: list[str] | None = None,
                 details: dict[str, Any] | None = None) -> None:
        self.verb = verb
        self.method = method
        self.summary = summary
        self.config = dict(config or {})
        self.measurements = dict(measurements or {})
        self.warnings = list(warnings or [])
        self.details = dict(details or {})
        self._layers = layers

    @property
    def layers(self) -> list[dict[str, Any]]:
        if callable(self._layers):
            self._layers = list(self._layers())
        return self._layers or []

    def to_dict(self) -> dict[str, Any]:
        d = {"verb": self.verb, "method": self.method, "summary": self.summary, "config": self.config,
             "layers": self.layers, "measurements": self.measurements, "warnings": self.warnings,
             "details": self.details}
        return json.loads(json.dumps(d, default=str))

    def __repr__(self) -> str:
        return f"VerbReport({self.verb} {self.method}: {self.summary})"


class Result:
    """A verb's outcome: ``model`` (a new handle, in memory), ``report`` (:class:`VerbReport`) and,
    for verbs that write a file themselves (``convert``, ``pack``, ``optimize`` with ``output=``),
    ``output`` (its path). Verbs with more to say return a subclass (``ConvertResult``,
    ``PackResult``, ``OptimizeResult``) that keeps these three fields."""

    model: ModelHandle
    report: VerbReport
    output: os.PathLike[str] | None = None

    def __init__(self, model: ModelHandle, report: VerbReport, output: os.PathLike[str] | None = None) -> None:
        self.model = model
        self.report = report
        self.output = output

    def save(self, path: str | os.PathLike[str], *, force: bool = False, **options: Any) -> ModelHandle:
        """Write the model to ``path`` (format from the extension, see :mod:`deepshrink.core.formats`)
        atomically; returns the written file's handle. Raises ``InputError`` for an existing file
        without ``force`` or a format no writer takes."""
        from .formats import write

        return write(self.model, path, force=force, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.report.verb} {self.report.method}: {self.report.summary})"
