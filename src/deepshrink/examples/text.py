"""Deterministic English text from the Python standard library's docstrings (no download)."""

from __future__ import annotations

import importlib
import inspect
import re

_MODULES = ("collections", "functools", "itertools", "json", "pathlib", "textwrap", "string", "random",
            "statistics", "fractions", "decimal", "datetime", "calendar", "heapq", "bisect", "argparse",
            "logging", "csv", "shutil", "tempfile", "queue", "threading", "subprocess", "unittest",
            "difflib", "email.message", "html.parser", "http.client", "urllib.parse", "zipfile", "tarfile",
            "gzip", "inspect", "ast", "dis", "pickle", "copy", "enum", "dataclasses", "typing", "abc",
            "contextlib", "operator", "math", "cmath", "os", "io", "sched", "socket", "ssl", "uuid", "hashlib")


# left out of the wide corpus: modules that act on import (antigravity, this) or need a display / network
_NOT_IMPORTED = ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "pydoc_data",
                 "ensurepip", "venv")


def stdlib_sentences(n: int | None = None, *, min_words: int = 6, max_words: int = 40, offset: int = 0,
                     wide: bool = False) -> list[str]:
    """Sentences split from docstrings of stdlib modules, in a fixed order, deduplicated.

    ``offset`` skips that many sentences, so disjoint calibration and evaluation sets can be
    drawn (``stdlib_sentences(64)`` vs ``stdlib_sentences(64, offset=1000)``). ``wide=True``
    continues the same list (its first sentences are exactly the narrow list's) with every other
    importable stdlib module and its classes' method docstrings: about 6,500 sentences instead of
    about 1,900, for training (distillation) where the narrow list is too little text.
    """
    import sys

    seen: set[str] = set()
    out: list[str] = []
    passes: list[tuple[tuple[str, ...], bool]] = [(_MODULES, False)]
    if wide:
        rest = tuple(sorted(m for m in sys.stdlib_module_names
                            if not m.startswith("_") and m not in _NOT_IMPORTED and m not in _MODULES))
        passes += [(_MODULES + rest, True)]
    for modules, methods in passes:
        for mod_name in modules:
            _collect(mod_name, methods, seen, out, min_words, max_words)
    out = out[offset:]
    return out if n is None else out[:n]


def _collect(mod_name: str, methods: bool, seen: set[str], out: list[str], min_words: int, max_words: int) -> None:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = importlib.import_module(mod_name)
    except Exception:
        return
    docs = [inspect.getdoc(mod) or ""]
    for _, obj in sorted(vars(mod).items()):
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", None) == mod.__name__:
            docs.append(inspect.getdoc(obj) or "")
            if methods and inspect.isclass(obj):
                docs += [inspect.getdoc(f) or "" for _, f in sorted(vars(obj).items()) if inspect.isfunction(f)]
    for doc in docs:
        text = re.sub(r"\s+", " ", doc)
        for sent in re.split(r"(?<=[.!?])\s+", text):
            sent = sent.strip()
            words = sent.split()
            if not (min_words <= len(words) <= max_words) or not sent[0].isalpha() or ">>>" in sent:
                continue
            if sent in seen:
                continue
            seen.add(sent)
            out.append(sent)
