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
    """``N`` (default 64) sentences from the standard library's docstrings, tokenized by the model's tokenizer."""
    from .text import stdlib_sentences

    if arg and not arg.isdigit():
        raise InputError(f"built-in data 'sentences:{arg}': give a number of sentences, such as sentences:64")
    n = int(arg) if arg else 64
    return tokenize(stdlib_sentences(n, offset=1000), handle, source=f"sentences:{n}", max_length=max_length)
