"""The built-in data sources ``digits[:train|val|test]`` and ``sentences[:N]``.

Registered through the ``deepshrink.data_sources`` entry point group (``pyproject.toml``), so
``deepshrink.core.data.load_data`` finds them without importing this package.
"""

from __future__ import annotations

from ..core.data import Dataset, tokenize
from ..core.handle import ModelHandle
from ..errors import InputError


def digits(arg: str, handle: ModelHandle | None, max_length: int = 128) -> Dataset:
    """scikit-learn's 8×8 digits, split ``train`` / ``val`` (default) / ``test``; images (N, 1, 8, 8) in [0, 1]."""
    from .digits import digits_data

    split = arg or "val"
    if split not in ("train", "val", "test"):
        raise InputError(f"built-in data 'digits:{split}': split must be train, val or test")
    d = digits_data()
    x, y = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
    name = handle.inputs[0].name if handle is not None and handle.inputs else "x"
    return Dataset({name: x}, y, f"digits:{split}")


def sentences(arg: str, handle: ModelHandle | None, max_length: int = 128) -> Dataset:
    """Text tokenized by the model's tokenizer.

    ``sentences:N`` (default 64): N sentences from the standard library's docstrings (the narrow list from
    its sentence 1000: evaluation and calibration text). ``sentences:wide`` / ``sentences:wide:N``: the
    large training text of :func:`~deepshrink.examples.text.training_sentences` (the wide stdlib list, then
    installed packages' docstrings; ~93,000 sentences, disjoint from every ``sentences:N``), all or the first N.
    """
    from .text import stdlib_sentences, training_sentences

    kind, _, count = arg.partition(":") if arg.startswith("wide") else ("", "", arg)
    if kind not in ("", "wide") or (count and not count.isdigit()):
        raise InputError(f"built-in data 'sentences:{arg}': give a number of sentences (sentences:64), or "
                         "sentences:wide / sentences:wide:N for the large training text")
    if kind == "wide":
        n = int(count) if count else None
        if n == 0:
            raise InputError("built-in data 'sentences:wide:0' has no sentences; give N >= 1")
        texts = training_sentences(n)
        return tokenize(texts, handle, source=f"sentences:wide:{len(texts)}", max_length=max_length)
    n = int(arg) if arg else 64
    return tokenize(stdlib_sentences(n, offset=1000), handle, source=f"sentences:{n}", max_length=max_length)
