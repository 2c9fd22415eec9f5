"""The typer app, the options every model-taking command shares, and error handling."""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import DeepshrinkError, first_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="deepshrink: make trained networks smaller and faster, measured on the artifact.")


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"deepshrink {__version__}")
        raise typer.Exit()


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", help="after a one-line error, also print its "
                                                "traceback and what third-party tools wrote (accepted anywhere on "
                                                "the command line; DEEPSHRINK_VERBOSE=1 does the same)")] = False,
          version: Annotated[bool, typer.Option("--version", help="print the version and exit", callback=_version,
                                                is_eager=True)] = False) -> None:
    """deepshrink: make trained networks smaller and faster, measured on the artifact."""


def _console(stderr: bool) -> Console:
    probe = Console(stderr=stderr)
    # piped output (CI logs, `| less`) would otherwise be squeezed to 80 columns
    # and lines of text are not broken at all (soft wrap: a list of ops stays one line for grep); tables keep 160
    return probe if probe.is_terminal else Console(stderr=stderr, width=160, soft_wrap=True)


console = _console(False)
err_console = _console(True)

# Options shared by every command that takes a model.
WeightsOpt = Annotated[str | None, typer.Option("--weights", "-w", help="weights (.safetensors or state-dict .pt) for a module:factory source or a Hugging Face folder (a structurally pruned state dict re-shapes the layers)")]
InputShapeOpt = Annotated[list[str] | None, typer.Option("--input-shape", help="NAME:1x3x224x224 (repeatable) for a model without a fixed signature; a name for a size marks a dynamic axis: x:1xseqx8; a third part gives the element type: ids:1x64:int64 (default float32)")]
DataOpt = Annotated[str | None, typer.Option("--data", "-d", help=".npz, a text file, or a built-in: digits, sentences")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="allow unpickling/executing code from model files")]
ForceOpt = Annotated[bool, typer.Option("--force", help="overwrite an existing output")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON on stdout")]
# Timing options, the same name and default in every command that measures.
RepeatsOpt = Annotated[int, typer.Option("--repeats", help="interleaved timing rounds (each model once per round)")]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="intra-op threads for every runtime while timing")]
# The fidelity gate (deepshrink.evaluate.gate), the same in every command that writes a model.
AllowDegradedOpt = Annotated[bool, typer.Option("--allow-degraded", help="keep the written model even when the fidelity gate fires (it warns instead of exit 3)")]
GateCosOpt = Annotated[float, typer.Option("--gate-min-cos", help="fidelity gate: worst output cosine to the original below this fails (used without labels)")]
GateDropOpt = Annotated[float, typer.Option("--gate-max-drop", help="fidelity gate: accuracy drop in points above this fails (used with labels)")]


def gate_policy(min_cos: float, max_drop_points: float, allow_degraded: bool) -> Any:
    """The fidelity gate's policy from the command-line options (the drop is given in points)."""
    from ..errors import InputError
    from ..evaluate.gate import FidelityPolicy

    if not -1.0 <= min_cos <= 1.0:
        raise InputError(f"--gate-min-cos {min_cos:g}: give a cosine between -1 and 1")
    if not 0.0 <= max_drop_points <= 100.0:
        raise InputError(f"--gate-max-drop {max_drop_points:g}: give accuracy points between 0 and 100")
    return FidelityPolicy(min_cos=min_cos, max_drop=max_drop_points / 100.0, allow_degraded=allow_degraded)


MixedPrecisionOpt = Annotated[str, typer.Option("--mixed-precision", help="no | bf16: training's forward passes in bfloat16 (weights and losses float32); about half the time per step on CPUs with bfloat16 instructions (AVX512-BF16, AMX)")]


def mixed_precision_option(value: str) -> str:
    """``--mixed-precision``: ``no`` (also ``fp32``, ``float32``) or ``bf16`` (also ``bfloat16``), any case;
    raises :class:`InputError` otherwise."""
    from ..errors import InputError

    v = value.strip().lower()
    if v in ("no", "fp32", "float32"):
        return "no"
    if v in ("bf16", "bfloat16"):
        return "bf16"
    raise InputError(f"--mixed-precision {value!r}: use no (float32) or bf16 (bfloat16)")


def warn_without_bf16(mode: str) -> None:
    """A ``warning:`` line when ``mode`` is ``bf16`` on a CPU without bfloat16 instructions (it runs, slower)."""
    from ..train import native_bf16

    if mode == "bf16" and not native_bf16():
        warn("this CPU has no bfloat16 instructions (AVX512-BF16 or AMX): --mixed-precision bf16 runs, but slower "
             "than float32")


def warn(text: str) -> None:
    """One ``warning:`` line on stderr (stdout keeps the result: a piped summary carries no warnings, and a
    warning is not lost when stdout is redirected)."""
    err_console.print("warning: " + text, style="yellow", markup=False, highlight=False, soft_wrap=True)


def print_gate(verdict: Any) -> None:
    """A failed verdict the user chose to keep (``--allow-degraded``): one warning line."""
    from ..evaluate.gate import message

    if not verdict.passed:
        warn("kept despite the fidelity gate (--allow-degraded): " + message(verdict))
    elif verdict.reason:
        console.print("note: fidelity gate " + verdict.reason, style="dim", markup=False, highlight=False)


def load_model(src: str, *, weights: str | None = None, input_shape: list[str] | None = None,
               data: str | None = None, trust_remote_code: bool = False) -> Any:
    from ..loading import load

    return load(src, weights=weights, input_shapes=input_shape, data=data, trust_remote_code=trust_remote_code)


def fmt_bytes(n: int | None) -> str:
    """A byte count for tables in SI units, as the reports and ``--budget size=2MB`` read them: 512 B, 166.5 kB,
    90.9 MB (1 kB = 1,000 B; a MiB budget is spelled ``MiB``)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(n)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _usage_error_kind(exc: BaseException) -> str | None:
    """'no-args', 'usage', 'click' or None: which of the command-line library's errors ``exc`` is.

    Typer has vendored its own copy of click since 0.2x (``typer._click``), and plain click raises
    its own classes; neither module path is a stable contract. So the classes are found through the
    library's public exception (``typer.BadParameter``, present in every typer) and by name along
    ``exc``'s MRO, which covers typer's copy and click alike.
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    bases: list[type] = []
    for cls in getattr(typer, "BadParameter", type(None)).__mro__:
        if cls.__name__ in ("UsageError", "ClickException"):
            bases.append(cls)
    try:
        import click

        bases += [click.exceptions.UsageError, click.exceptions.ClickException]
    except ImportError:  # typer without a separate click
        pass
    if not (isinstance(exc, tuple(bases)) or names & {"UsageError", "ClickException"}):
        return None
    if "NoArgsIsHelpError" in names:
        return "no-args"
    return "usage" if "UsageError" in names else "click"


# the arguments of the running command (after the program name): `distill --nproc` starts copies of it
current_argv: list[str] = []

# (command, option) -> the value a bare option stands for: `search --ray` means `--ray local`. typer's
# parser has no option with an optional value (click's is_flag=False + flag_value), so the bare form
# is completed here: the option takes the next word unless there is none or it starts with "-".
OPTIONAL_VALUE: dict[tuple[str, str], str] = {}


def _complete_optional_values(argv: list[str]) -> list[str]:
    if not argv or not any(cmd == argv[0] for cmd, _ in OPTIONAL_VALUE):
        return argv
    out: list[str] = []
    for i, word in enumerate(argv):
        if word == "--":
            return out + argv[i:]
        out.append(word)
        bare = OPTIONAL_VALUE.get((argv[0], word))
        if bare is not None and i > 0 and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append(bare)
    return out


def _warning_line(shown: set[str]) -> Any:
    """A ``warnings.showwarning`` that prints each message once as one ``warning:`` line on stderr,
    without Python's source path and code line. Deprecation notices (``DeprecationWarning``,
    ``PendingDeprecationWarning``, ``FutureWarning``) are for the developers of the library that raises them —
    deepshrink raises none — and are shown only with ``--verbose`` (torch's ``LeafSpec is deprecated`` on
    every ``.pt2`` load read like a deepshrink warning)."""
    from ..core import quiet

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if (isinstance(category, type) and issubclass(category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning))
                and not quiet.verbose()):
            return
        text = first_line(str(message), 500)
        if text and text not in shown:
            shown.add(text)
            err_console.print("warning: " + text, style="yellow", markup=False, highlight=False, soft_wrap=True)

    return show


def run_app(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status. Errors we raise become one line, no traceback; a Python
    warning becomes one ``warning:`` line, printed once."""
    args = list(sys.argv[1:] if argv is None else argv)
    from ..core import quiet

    # --verbose is accepted anywhere on the line (users type it after the command, as with --force)
    quiet.set_verbose("--verbose" in args)
    args = [a for a in args if a != "--verbose"]
    argv = args
    current_argv[:] = args
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # TensorFlow's C++ start-up lines (oneDNN notice, absl preamble) would land on the user's terminal
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # a command's options in click's plain layout when the terminal is narrow (see RICH_HELP_MIN_WIDTH)
    narrow = bool(args) and not args[0].startswith("-") and _help_width() < RICH_HELP_MIN_WIDTH
    app.rich_markup_mode = None if narrow else "rich"
    quiet.take_notes()
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line(set())
        status = _run(argv)
    for note in quiet.take_notes() if status == 0 else ():
        err_console.print("note: " + note, style="dim", markup=False, highlight=False, soft_wrap=True)
    return status


# Typer's rich help lays each option out in six columns that rich sizes by itself; below about 100
# columns it cuts the long option names (`--calibration-size`, `--no-bias-correction`,
# `--trust-remote-code` in `quantize --help` at 80). click's plain layout wraps the help text instead
# and keeps every name whole, so a command's help on a narrower terminal (or a pipe, which rich reads
# as 80) gets that. The top-level help stays rich: its command list wraps there, where click's cuts
# each description to one line.
RICH_HELP_MIN_WIDTH = 100


def _help_width() -> int:
    """The width Typer's help console would use: ``TERMINAL_WIDTH`` (Typer's override), else rich's
    reading of the terminal (``COLUMNS``, the tty's size, 80 for a pipe)."""
    forced = os.environ.get("TERMINAL_WIDTH", "")
    if forced.isdigit():
        return int(forced)
    return Console().width


def _with_flags(message: str, argv: list[str] | None) -> str:
    """A config's validation message (``invalid StructuredPruneConfig: finetune_epochs: ...``) names Python
    fields; each field that is also an option of the command being run gets its flag beside it
    (``finetune_epochs (--finetune-epochs): ...``)."""
    import re

    if not re.match(r"invalid \w+Config: ", message):
        return message
    args = list(sys.argv[1:] if argv is None else argv)
    name = next((a for a in args if not a.startswith("-")), None)
    try:
        import typer.main

        command = typer.main.get_command(app).commands.get(name or "")  # type: ignore[attr-defined]
    except Exception:  # the message stays as it is
        return message
    if command is None:
        return message
    flags = {p.name: p.opts[0] for p in command.params if getattr(p, "opts", None) and p.opts[0].startswith("--")}
    head, _, rest = message.partition(": ")
    parts = [f"{field} ({flags[field]}): {why}" if sep and field in flags else field + sep + why
             for field, sep, why in (part.partition(": ") for part in rest.split("; "))]
    return f"{head}: " + "; ".join(parts)


def _run(argv: list[str] | None) -> int:
    try:
        status = app(args=_complete_optional_values(list(sys.argv[1:] if argv is None else argv)),
                     standalone_mode=False)
        # typer turns Ctrl-C into Exit(130), which click hands back as a return value here
        if isinstance(status, int) and status != 0:
            if status == 130:
                err_console.print("interrupted")
            return status
    except DeepshrinkError as exc:
        from ..core.quiet import detail

        detail("".join(traceback.format_exception(exc)), what="traceback (--verbose)")
        err_console.print(f"[bold red]error:[/] {escape(_with_flags(str(exc), argv))}", highlight=False, soft_wrap=True)
        report = getattr(exc, "report", None)
        if report is not None and hasattr(report, "summary"):
            err_console.print(report.summary(), highlight=False, soft_wrap=True, markup=False)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return 1
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as exc:
        kind = _usage_error_kind(exc)
        if kind == "no-args":  # bare `deepshrink` or a bare command group: the help, not an error
            ctx = getattr(exc, "ctx", None)
            console.print(ctx.get_help() if ctx is not None else app.info.help, highlight=False, markup=False)
            return 0
        if kind == "usage":
            # one line, the help hint at its end (click's own two-line form broke the one-line rule)
            message = (first_line(exc.format_message(), 500) or "(no message)").rstrip(".")
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            err_console.print(f"[bold red]usage error:[/] {escape(message + hint)}", highlight=False, soft_wrap=True)
            return 2
        if kind == "click":
            err_console.print(f"[bold red]error:[/] {escape(first_line(exc.format_message(), 500) or '(no message)')}", highlight=False,
                              soft_wrap=True)
            return int(getattr(exc, "exit_code", 1) or 1)
        raise
    return 0
