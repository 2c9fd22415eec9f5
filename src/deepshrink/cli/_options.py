"""Options that only some choices of a command use (``quantize --scheme``, ``prune --method``):
given with another choice they are refused in one line, not silently ignored.

Options are spelled as in ``--help``; a boolean pair as ``--on/--off``. Whether the user set one
is read from the command-line library's parameter source, so the defaults stay in the signature
(and in ``--help``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import typer

from ..errors import InputError


def option_param(option: str) -> str:
    """The parameter name behind an option: ``--per-channel/--per-tensor`` -> ``per_channel``."""
    return option.split("/")[0].removeprefix("--").replace("-", "_")


def options_given(ctx: typer.Context, options: Iterable[str]) -> dict[str, str]:
    """Those of ``options`` set on the command line (not left at their defaults), mapped to the flag
    as typed (``--per-tensor`` for ``--per-channel/--per-tensor`` set off)."""
    given = {}
    for option in options:
        name = option_param(option)
        if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") in ("DEFAULT", "DEFAULT_MAP"):
            continue
        on, _, off = option.partition("/")
        given[option] = off if off and ctx.params[name] is False else on
    return given


def refuse_inapplicable(choice_flag: str, choice: str, given: Mapping[str, str],
                        used_by: Mapping[str, tuple[str, ...]], summary: Mapping[str, str]) -> None:
    """Refuse the first option in ``given`` that ``choice`` (of ``choice_flag``) does not use;
    ``used_by``: option -> the choices that use it; ``summary``: choice -> what it is, briefly."""
    for option, typed in given.items():
        users = used_by[option]
        if choice not in users:
            choices = ", ".join(users[:-1]) + (" or " if len(users) > 1 else "") + users[-1]
            raise InputError(f"{typed} does not apply to {choice_flag} {choice} ({summary[choice]}); "
                             f"it is for {choices}")
