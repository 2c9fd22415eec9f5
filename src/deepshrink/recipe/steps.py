"""Recipes: an ordered list of steps, each one verb and its config, validated whole before any work.

A recipe is YAML (or the equivalent dict)::

    steps:
      - prune: {method: structured, sparsity: 0.5, finetune_epochs: 3}
      - distill: {epochs: 2}        # recover the pruned model from the original (the teacher)
      - quantize: {scheme: int8-static, observer: mse}

Each step names a verb and its parameters; the parameters are the fields of that verb's config
(``quantize``: a ``scheme`` plus the scheme's config fields, ``prune``: a ``method`` plus that
method's fields, ``sparsity`` standing for each method's target, and how its fine-tune runs: ``batch_size``,
``seed``, ``mixed_precision``, as ``prune``'s options). :func:`parse_recipe` builds
every config, so an unknown step, key or value names itself with the valid choices and the step
number before anything runs; :func:`check_chain` then checks the chain against the model's
format and the data the user gave (a torch-only step after one that emits ONNX; a step that
needs labelled data without any).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import InputError, first_line

Kind = Literal["torch", "onnx", "dsz"]

VERBS = ("prune", "quantize", "distill", "pack", "convert", "evaluate")
# verbs the recipe language reserves for capabilities still to come: named, refused plainly
LATER = {"optimize": "graph optimisation"}


@dataclass(frozen=True)
class Step:
    """One validated step: the verb, its config (or plain options) and what it needs and makes.

    ``takes``: model kinds the step accepts; ``emits``: the kind it writes (None: unchanged);
    ``needs``: "labels" (labelled data), "data" (any data: calibration, importance) or None.
    """

    index: int  # 1-based, as users count
    verb: str
    params: dict[str, Any]
    config: Any = None
    takes: tuple[Kind, ...] = ("torch", "onnx")
    emits: Kind | None = None
    needs: str | None = None
    why: str = ""  # what needs the data, for the error message

    def label(self) -> str:
        return f"step {self.index} ({self.verb})"

    def short(self) -> str:
        """A few words for tables and plots: ``prune structured 0.25``, ``quantize int8-static``."""
        kind = self.params.get("method") or self.params.get("scheme") or self.params.get("format") or ""
        target = self.params.get("sparsity")
        return " ".join(str(p) for p in (self.verb, kind, target) if p not in ("", None))

    def describe(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.verb}({inner})"


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: tuple[Step, ...]
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as written."""
        return {"steps": [{s.verb: dict(s.params)} for s in self.steps]}

    def resolved(self) -> dict[str, Any]:
        """The recipe with every config field spelled out (defaults included); parses back to the same configs."""
        steps = []
        for s in self.steps:
            if s.config is None:
                steps.append({s.verb: dict(s.params)})
                continue
            fields = {k: v for k, v in s.config.to_dict().items() if k != "type"}
            head = {k: s.params[k] for k in ("method", "scheme") if k in s.params}
            training = {k: s.params[k] for k in PRUNE_TRAINING if s.verb == "prune" and k in s.params}
            steps.append({s.verb: {**head, **fields, **training}})
        return {"steps": steps}


# ------------------------------------------------------------------------------------------
# built-in recipes

BUILTIN: dict[str, tuple[str, dict[str, Any]]] = {
    "int8": ("dynamic int8 (weights int8, activations quantized at run time; no data needed)",
             {"steps": [{"quantize": {"scheme": "int8-dynamic"}}]}),
    "int8-static": ("static int8 QDQ calibrated on --data (integer kernels for conv nets)",
                    {"steps": [{"quantize": {"scheme": "int8-static"}}]}),
    "int4-weight": ("4-bit weight-only MatMulNBits (group size 32), for transformer / LLM weights",
                    {"steps": [{"quantize": {"scheme": "int4-weight", "group_size": 32}}]}),
    "auto-int8": ("int8 that searches smoothing / per-channel / kept-float layers to a fidelity target",
                  {"steps": [{"quantize": {"scheme": "auto"}}]}),
    "deep-compression": ("Deep Compression (Han et al.): prune 90% FC / 70% conv, trained k-means sharing, Huffman .dsz; "
                         "BatchNorm folded into convs, fine-tuning distilled from the original",
                         {"steps": [{"pack": {"method": "deep-compression", "fc_sparsity": 0.9,
                                              "conv_sparsity": 0.7, "fold_bn": True, "distill": True}}]}),
    "prune-int8": ("structured pruning of 25% of the channels (kept in multiples of 8) with 5 fine-tune "
                   "epochs, then static int8",
                   {"steps": [{"prune": {"method": "structured", "sparsity": 0.25, "round_to": 8,
                                         "finetune_epochs": 5, "lr": 0.002}},
                              {"quantize": {"scheme": "int8-static"}}]}),
}
DEFAULT_RECIPE = "prune-int8"


def builtin_recipes() -> dict[str, str]:
    """Name → one-line description of every built-in recipe."""
    return {name: desc for name, (desc, _) in BUILTIN.items()}


# ------------------------------------------------------------------------------------------
# parsing

def load_recipe(spec: str | os.PathLike[str] | dict[str, Any] | Recipe) -> Recipe:
    """A recipe from a built-in name, a YAML file or a dict; every step validated.

    Raises :class:`InputError` (one line) for a missing/unreadable file, bad YAML, an unknown
    step or key, or a bad value — naming the step number.
    """
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, dict):
        return parse_recipe(spec, name="<dict>")
    text_spec = str(spec)
    if text_spec in BUILTIN:
        return parse_recipe(BUILTIN[text_spec][1], name=text_spec)
    path = Path(text_spec)
    if not path.exists():
        close = difflib.get_close_matches(text_spec, list(BUILTIN), n=1)
        hint = f" (did you mean the built-in {close[0]!r}?)" if close else ""
        raise InputError(f"recipe {text_spec}: no such file and no built-in recipe of that name{hint}; "
                         f"built-ins: {', '.join(BUILTIN)}")
    if path.is_dir():
        raise InputError(f"recipe {path} is a directory; give a YAML file")
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        why = first_line(getattr(exc, "problem", None) or str(exc))  # a ReaderError names the place on a 2nd line
        raise InputError(f"recipe {path} is not valid YAML{at}: {why}") from None
    return parse_recipe(raw, name=path.name)


def parse_recipe(raw: Any, *, name: str = "recipe") -> Recipe:
    if not isinstance(raw, dict) or "steps" not in raw:
        raise InputError(f"recipe {name}: expected a mapping with a 'steps' list, such as "
                         "steps: [{quantize: {scheme: int8-dynamic}}]")
    extra = [k for k in raw if k not in ("steps", "name", "description")]
    if extra:
        raise InputError(f"recipe {name}: unknown top-level key {extra[0]!r}; valid: steps, name, description")
    items = raw["steps"]
    if not isinstance(items, list) or not items:
        raise InputError(f"recipe {name}: 'steps' must be a non-empty list")
    steps = []
    for i, item in enumerate(items, start=1):
        if isinstance(item, str):  # a bare verb: `- evaluate`
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise InputError(f"recipe {name}: step {i} must be one verb with its parameters, such as "
                             "{quantize: {scheme: int8-dynamic}}")
        verb, params = next(iter(item.items()))
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise InputError(f"recipe {name}: step {i} ({verb}): parameters must be a mapping, got {params!r}")
        steps.append(_build_step(i, str(verb), dict(params), name))
    return Recipe(name=str(raw.get("name", name)), steps=tuple(steps), raw=raw)


def _build_step(index: int, verb: str, params: dict[str, Any], recipe: str) -> Step:
    where = f"recipe {recipe}: step {index} ({verb})"
    if verb in LATER:
        raise InputError(f"{where}: {LATER[verb]} is not available in this version of deepshrink; "
                         f"steps available: {', '.join(VERBS)}")
    if verb not in VERBS:
        close = difflib.get_close_matches(verb, list(VERBS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"recipe {recipe}: step {index}: unknown step {verb!r}{hint}; valid steps: "
                         f"{', '.join(VERBS)}")
    try:
        return _BUILDERS[verb](index, params)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


# how a prune step's training runs, beside what its config prunes: passed to ``prune()`` as the CLI's
# --batch-size, --seed and --mixed-precision are
PRUNE_TRAINING = ("batch_size", "seed", "mixed_precision")


def _prune_step(index: int, params: dict[str, Any]) -> Step:
    from ..prune.config import METHODS, config_for_method, trains
    from ..train.trainer import MIXED_PRECISION

    method = params.pop("method", "structured")
    training = {k: params.pop(k) for k in PRUNE_TRAINING if k in params}
    for key, low in (("batch_size", 1), ("seed", 0)):
        value = training.get(key, low)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{key} must be an integer >= {low}, got {value!r}")
    if training.get("mixed_precision", "no") not in MIXED_PRECISION:
        raise InputError(f"mixed_precision {training['mixed_precision']!r}: use {' or '.join(MIXED_PRECISION)}")
    cfg = config_for_method(str(method), params)
    assert method in METHODS
    if training and not trains(cfg):
        named = " and ".join(training)
        raise InputError(f"{named} appl{'y' if len(training) > 1 else 'ies'} to fine-tuning: set finetune_epochs > 0 "
                         f"(or method gradual), or leave {'them' if len(training) > 1 else 'it'} out")
    return _step(index, "prune", {"method": method, **params, **training}, cfg)


def _step(index: int, verb: str, params: dict[str, Any], cfg: Any) -> Step:
    """A step whose accepted/written kinds and data needs are what its config declares (``Config.contract``)."""
    c = cfg.contract()
    return Step(index, verb, params, cfg, takes=c.takes, emits=c.emits, needs=c.needs,  # type: ignore[arg-type]
                why=c.why)


def _quantize_step(index: int, params: dict[str, Any]) -> Step:
    from ..quantize.configs import SCHEMES, config_for_scheme

    if "scheme" not in params:
        raise InputError(f"needs a scheme: one of {', '.join(SCHEMES)}")
    scheme = str(params.pop("scheme"))
    cfg = config_for_scheme(scheme, params)
    return _step(index, "quantize", {"scheme": scheme, **params}, cfg)


def _distill_step(index: int, params: dict[str, Any]) -> Step:
    """``distill: {derive: layers=3, epochs: 3}`` distils the model so far into a student derived from it;
    ``distill: {epochs: 3}`` after a prune step recovers the pruned model from the recipe's original model."""
    from ..core.config import check_keys
    from ..distill.config import DistillConfig

    check_keys(params, DistillConfig, what="distill")
    cfg = DistillConfig.build(**params)
    if cfg.derive is None and index == 1:
        raise InputError("without derive, distill recovers the model of an earlier step (such as prune) from the "
                         "original; as the first step give derive: layers=K or derive: width=F")
    return _step(index, "distill", dict(params), cfg)


def _pack_step(index: int, params: dict[str, Any]) -> Step:
    from ..codec.config import DeepCompressionConfig, PackConfig
    from ..core.config import check_keys

    method = params.pop("method", "deep-compression")
    classes = {"deep-compression": DeepCompressionConfig, "lossless": PackConfig}
    if not isinstance(method, str) or method not in classes:
        raise InputError(f"method {method!r}: use deep-compression or lossless")
    check_keys(params, classes[method], what=f"method {method}")
    cfg = classes[method].build(**params)
    return _step(index, "pack", {"method": method, **params}, cfg)


def _convert_step(index: int, params: dict[str, Any]) -> Step:
    allowed = {"format", "exporter", "opset"}
    bad = [k for k in params if k not in allowed]
    if bad:
        raise InputError(f"unknown key {bad[0]!r}; valid keys: {', '.join(sorted(allowed))}")
    fmt = params.get("format", "onnx")
    if fmt not in ("onnx", "pt2"):
        raise InputError(f"format {fmt!r}: a recipe converts to onnx or pt2 (use `deepshrink convert` for "
                         "tflite / OpenVINO after the recipe)")
    if params.get("exporter", "auto") not in ("auto", "dynamo", "torchscript"):
        raise InputError(f"exporter {params['exporter']!r}: use auto, dynamo or torchscript")
    return Step(index, "convert", {"format": fmt, **{k: v for k, v in params.items() if k != "format"}},
                takes=("torch", "onnx"), emits="torch" if fmt == "pt2" else "onnx")


def _evaluate_step(index: int, params: dict[str, Any]) -> Step:
    if params:
        raise InputError(f"takes no parameters (got {', '.join(map(str, params))}); every step is measured on "
                         "--eval-data anyway")
    return Step(index, "evaluate", {})


_BUILDERS = {"prune": _prune_step, "quantize": _quantize_step, "distill": _distill_step, "pack": _pack_step,
             "convert": _convert_step, "evaluate": _evaluate_step}


def check_chain(recipe: Recipe, source_kind: Kind, *, has_data: bool, has_labels: bool) -> list[Kind]:
    """Check every step accepts what the one before emits and has the data it needs.

    Returns the model kind after each step. Raises :class:`InputError` naming the first step
    that cannot run.
    """
    kinds: list[Kind] = []
    kind = source_kind
    for step in recipe.steps:
        if kind == "dsz":
            raise InputError(f"recipe {recipe.name}: {step.label()} comes after step {step.index - 1} (pack), which "
                             "writes the final .dsz file; pack must be the last step")
        # a float ONNX model (no quantize step before) is taken by the PyTorch-only steps (prune, distill, QAT)
        # as its PyTorch import, and they write it back as ONNX (recipe.runner._apply), as their commands do
        imported = (kind == "onnx" and "torch" in step.takes and "onnx" not in step.takes
                    and not any(s.verb == "quantize" for s in recipe.steps[:len(kinds)]))
        traced = [s for s in recipe.steps[:len(kinds)] if s.verb == "convert" and s.emits == "torch"]
        if traced and "onnx" not in step.takes:
            raise InputError(f"recipe {recipe.name}: {step.label()} needs the model's Python modules, but "
                             f"{traced[-1].label()} writes a traced .pt2 graph; drop that step (an ONNX model goes "
                             f"through its PyTorch import by itself)")
        if kind not in step.takes and kind != "dsz" and not imported:
            raise InputError(f"recipe {recipe.name}: {step.label()} needs a PyTorch model or a float ONNX one, but "
                             f"step {step.index - 1} emits a quantized ONNX model; put {step.verb} before it")
        if step.needs == "labels" and not has_labels:
            raise InputError(f"recipe {recipe.name}: {step.label()}: {step.why} needs labelled data; pass --data "
                             "with labels (an .npz with a 'labels' array, or digits:train)")
        if step.needs == "data" and not has_data:
            raise InputError(f"recipe {recipe.name}: {step.label()}: {step.why} needs data; pass --data")
        kind = "onnx" if imported else step.emits or kind
        kinds.append(kind)
    return kinds


def check_layer_counts(recipe: Recipe, model: Any) -> None:
    """Check each ``distill: {derive: layers=K}`` step against the layer stack it will drop from, before any work:
    ``model`` is the recipe's PyTorch source (``nn.Module``), and a ``layers=K`` step leaves K for the next one.
    Raises :class:`InputError` naming the step when the model has no stack of repeated layers (an MLP or CNN:
    ``width=F`` is its derivation) or fewer than K."""
    from ..distill.config import parse_derive
    from ..distill.derive import stack_depth

    depth = stack_depth(model)
    for step in recipe.steps:
        derive = step.params.get("derive") if step.verb == "distill" else None
        if not derive:
            continue
        kind, value = parse_derive(str(derive))
        if kind != "layers":
            continue
        if depth is None:
            raise InputError(f"recipe {recipe.name}: {step.label()}: derive {derive} needs a model with a stack of "
                             "transformer layers (an nn.ModuleList of blocks), and this one has none; for an MLP or "
                             "CNN use derive: width=F")
        if value > depth:
            raise InputError(f"recipe {recipe.name}: {step.label()}: derive {derive}: the model has only {depth} "
                             "layers at that step")
        depth = int(value)

