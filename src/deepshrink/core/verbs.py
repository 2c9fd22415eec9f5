"""Verb packages that are also callable: ``ds.convert(...)`` and ``ds.convert.ConvertResult``.

``deepshrink.convert`` (and ``quantize``, ``prune``...) are packages *and* the public
verbs of the same name. Python sets ``deepshrink.<name>`` to the submodule whenever it is
first imported, which would shadow a plain function; giving the module object a
``__call__`` makes the two one thing, whichever is imported first.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Collection, Mapping
from typing import Any

from ..errors import UnknownOptionError

# The keywords of ``deepshrink.load`` that a verb given a model source passes on to it (``data``
# is each verb's own keyword).
LOAD_OPTIONS = ("weights", "input_shapes", "trust_remote_code")


def check_options(verb: str, options: Mapping[str, Any], accepted: Collection[str]) -> None:
    """Refuse a keyword ``verb`` does not take, naming it, instead of passing it on to be ignored."""
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise UnknownOptionError(f"{verb}() got an unexpected keyword argument {unknown[0]!r}; "
                                 f"it takes {', '.join(sorted(accepted))}")


def make_callable(module_name: str, verb: Callable[..., Any]) -> None:
    module = sys.modules[module_name]

    class _VerbModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return verb(*args, **kwargs)

        def __repr__(self) -> str:
            return f"<deepshrink verb {module_name}: {verb.__doc__.splitlines()[0] if verb.__doc__ else ''}>"

    _VerbModule.__doc__ = verb.__doc__
    module.__class__ = _VerbModule
