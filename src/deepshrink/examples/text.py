"""Deterministic English text from docstrings: the Python standard library's, and installed packages' (no download)."""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Iterator

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
        _split(doc, seen, out, min_words, max_words)


def _split(doc: str, seen: set[str], out: list[str], min_words: int, max_words: int, strict: bool = False) -> None:
    """Append ``doc``'s new sentences of ``min_words``..``max_words`` words to ``out``. ``strict``: also leave out
    what is not prose (numpydoc section rules ``----``, ``====``, reST roles and directives, no final stop)."""
    text = re.sub(r"\s+", " ", doc)
    for sent in re.split(r"(?<=[.!?])\s+", text):
        sent = sent.strip()
        words = sent.split()
        if not (min_words <= len(words) <= max_words) or not sent[0].isalpha() or ">>>" in sent:
            continue
        if strict and (not sent.endswith((".", "!", "?")) or _NOT_PROSE.search(sent)):
            continue
        if sent in seen:
            continue
        seen.add(sent)
        out.append(sent)


_NOT_PROSE = re.compile(r"---|===|~~~|\.\. |:[a-z]+:`|::|\$|\\[a-z]")

# the packages whose docstrings extend the training text, in this order (those not installed are skipped)
DOC_PACKAGES = ("numpy", "scipy", "sklearn", "torch", "transformers")


def training_sentences(n: int | None = None, *, packages: tuple[str, ...] = DOC_PACKAGES, min_words: int = 6,
                       max_words: int = 40) -> list[str]:
    """A large deterministic training text for distillation (``sentences:wide``): the wide stdlib list without
    its sentences 1000 onwards of the narrow list (those ``sentences:N`` evaluates on, so the two stay disjoint),
    then prose sentences from the docstrings of the installed ``packages`` (source files read with ``ast``, in
    sorted path order, nothing imported; tests left out). Each sentence once, never one of the held-out ones.

    About 5,800 stdlib + 87,500 package sentences (93,326 here) with numpy, scipy, scikit-learn, torch and transformers
    installed (the count follows the installed versions). Stops reading as soon as ``n`` are gathered.
    """
    return list(_training_sentences(n, tuple(packages), min_words, max_words))


@functools.lru_cache(maxsize=4)
def _training_sentences(n: int | None, packages: tuple[str, ...], min_words: int, max_words: int) -> tuple[str, ...]:
    held_out = set(stdlib_sentences(offset=1000, min_words=min_words, max_words=max_words))
    out = [s for s in stdlib_sentences(wide=True, min_words=min_words, max_words=max_words) if s not in held_out]
    seen = set(out) | held_out
    for pkg in packages:
        if n is not None and len(out) >= n:
            break
        for doc in _package_docstrings(pkg):
            _split(doc, seen, out, min_words, max_words, strict=True)
            if n is not None and len(out) >= n:
                break
    return tuple(out if n is None else out[:n])


def _package_docstrings(pkg: str) -> Iterator[str]:
    """Every module, class and function docstring of an installed package, parsed (not imported), files sorted."""
    import ast
    import importlib.util
    from pathlib import Path

    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        return
    if spec is None or not spec.origin:
        return
    root = Path(spec.origin).parent
    for path in sorted(root.rglob("*.py")):
        rel = "/" + path.relative_to(root).as_posix()
        if "/tests/" in rel or "/test_" in rel or "/testing/" in rel:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]:
            doc = ast.get_docstring(node)
            if doc:
                yield doc
