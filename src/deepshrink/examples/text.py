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


def stdlib_sentences(n: int | None = None, *, min_words: int = 6, max_words: int = 40, offset: int = 0) -> list[str]:
    """Sentences split from docstrings of stdlib modules, in a fixed order, deduplicated.

    ``offset`` skips that many sentences, so disjoint calibration and evaluation sets can be
    drawn (``stdlib_sentences(64)`` vs ``stdlib_sentences(64, offset=1000)``).
    """
    seen: set[str] = set()
    out: list[str] = []
    for mod_name in _MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except Exception:
            continue
        docs = [inspect.getdoc(mod) or ""]
        for _, obj in sorted(vars(mod).items()):
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", None) == mod.__name__:
                docs.append(inspect.getdoc(obj) or "")
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
    out = out[offset:]
    return out if n is None else out[:n]
