"""The search space: the quantizable layers of a model and what each may become.

A candidate is an *assignment* ``{layer: choice}`` (choice one of ``float``, ``int8``, ``int4``,
``codebook``). It becomes one :class:`deepshrink.quantize.configs.MixedPrecisionConfig` — float
layers in ``exclude``, int8 the ``default``, the others ``overrides`` keyed by the layer's exact
name — so the chosen point is an ordinary ``quantize: {scheme: mixed, ...}`` recipe step that
``deepshrink compress`` replays.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..quantize.configs import (
    Int8DynamicConfig,
    Int8StaticConfig,
    KMeansConfig,
    MixedPrecisionConfig,
    QuantConfig,
    WeightOnlyConfig,
)
from .config import SearchConfig

LAYER_OPS = ("MatMul", "Gemm", "Conv", "Attention", "LSTM")  # the layers MixedPrecisionConfig assigns
CODEBOOK_MIN_ELEMENTS = KMeansConfig.model_fields["min_elements"].default
# SmoothQuant settings of the dynamic int8 forms, (alpha, smooth only tensors with at least this outlier
# ratio): the paper's default alpha (0.5) and the strong migration models with severe activation outliers
# need (Xiao et al. 2023 use 0.75-0.85 for them; MiniLM, measured: 0.7 -> cosine 0.9978, 0.8 -> 0.9981 on
# held-out sentences, fused, per-channel), the latter also on the outlying tensors only (ratio >= 8, the
# first of `quantize --scheme auto`'s ratios): each unfoldable smoothed tensor costs a Mul at run time
SMOOTHING = ((0.5, 0.0), (0.8, 8.0), (0.8, 0.0))


@dataclass(frozen=True)
class Layer:
    name: str
    op_type: str
    shape: tuple[int, ...]
    options: tuple[str, ...]  # "float" first

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Space:
    """The layers, the int8 kind for this model, and the configs each choice stands for."""

    layers: list[Layer]
    int8: QuantConfig
    int8_kind: str  # "int8-static" or "int8-dynamic", and why
    group_size: int
    codebook_bits: int
    fixed_float: list[str] = field(default_factory=list)  # layers no choice applies to
    fused: dict[str, int] = field(default_factory=dict)  # ORT's transformer fusions this form's graph got

    @property
    def free(self) -> list[Layer]:
        return [lay for lay in self.layers if len(lay.options) > 1]

    def choice_config(self, choice: str) -> QuantConfig:
        if choice == "int8":
            return self.int8
        if choice == "int4":
            return WeightOnlyConfig(bits=4, group_size=self.group_size)
        if choice == "codebook":
            return KMeansConfig(bits=self.codebook_bits)
        raise ValueError(choice)

    def uniform(self, choice: str) -> dict[str, str]:
        """Every layer that can take ``choice`` takes it; the others stay float."""
        return {lay.name: (choice if choice in lay.options else "float") for lay in self.free}

    def config(self, assign: dict[str, str]) -> MixedPrecisionConfig | None:
        """The quantize config of an assignment (None when every layer stays float)."""
        quantized = {n: c for n, c in assign.items() if c != "float"}
        if not quantized:
            return None
        floats = [n for n, c in assign.items() if c == "float"] + self.fixed_float
        overrides = {_literal(n): self.choice_config(c) for n, c in assign.items() if c not in ("float", "int8")}
        return MixedPrecisionConfig(default=self.int8, overrides=overrides,
                                    exclude=tuple(_literal(n) for n in floats))

    def recipe(self, assign: dict[str, str]) -> dict[str, Any]:
        """The recipe (a dict, as YAML holds it) that builds this assignment with ``deepshrink compress``."""
        cfg = self.config(assign)
        if cfg is None:
            return {"steps": ["evaluate"]}
        params: dict[str, Any] = {"default": _compact(cfg.default)}
        if cfg.overrides:
            params["overrides"] = {p: _compact(c) for p, c in cfg.overrides.items()}
        if cfg.exclude:
            params["exclude"] = list(cfg.exclude)
        if MixedPrecisionConfig.from_dict(params) != cfg:  # the recipe must stand for exactly this config
            raise AssertionError("search: the recipe does not rebuild the candidate's config")
        return {"steps": [{"quantize": {"scheme": "mixed", **params}}]}


def _compact(cfg: QuantConfig) -> dict[str, Any]:
    """A nested config as a recipe writes it: its type and the fields that differ from the defaults."""
    return {"type": type(cfg).__name__, **cfg.model_dump(mode="json", exclude_defaults=True)}


def key(assign: dict[str, str]) -> str:
    """The cache key of an assignment: the same choices give the same key whatever the dict order."""
    return json.dumps(sorted(assign.items()), separators=(",", ":"))


def _literal(name: str) -> str:
    """An fnmatch pattern that matches exactly ``name`` (its ``*``, ``?`` and ``[`` escaped)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def int8_forms(model: Any) -> list[tuple[str, QuantConfig]]:
    """The ways int8 layers may be built for ``model``, least transformation first: ``[(label, config)]``.

    A network whose weights are mostly in Conv layers gets static int8 (QLinearConv / QDQ) only:
    ONNX Runtime's fast int8 convolution is the static one (the rule of ``quantize --scheme auto``).
    Otherwise dynamic int8 (``DynamicQuantizeMatMul``, ``DynamicQuantizeLSTM``) as ``quantize --scheme
    int8-dynamic`` builds it,
    then with SmoothQuant (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training
    Quantization for LLMs") at each setting of :data:`SMOOTHING` and per-channel weight scales — the
    activation's outlier channels, which set its one run-time range, move into the weights' rows —
    and, for a BERT-like encoder (``quantize.onnx.backend.detect_bert``), each of these on the graph
    ONNX Runtime's transformer optimizer fused (Attention → ``QAttention``, SkipLayerNormalization,
    BiasGelu, EmbedLayerNormalization: fewer kernels at batch 1). The search builds every form's
    all-int8 model and picks one by measurement (:mod:`.forms`); nothing here is model-specific.
    """
    from ..quantize.onnx import backend as ob

    conv = sum(int(np.prod(w.shape)) for w in ob.weight_nodes(model.model, ("Conv",)))
    dense = sum(int(np.prod(w.shape)) for w in ob.weight_nodes(model.model, ("MatMul", "Gemm")))
    recurrent = sum(int(np.prod(w.shape)) for w in ob.weight_nodes(model.model, ("LSTM",)))
    if conv > dense + recurrent:
        return [("int8-static (most weights are in Conv layers: ONNX Runtime's QLinearConv)",
                 Int8StaticConfig(per_channel=True))]
    kind = ("int8-dynamic (most weights are in LSTM layers: ONNX Runtime's DynamicQuantizeLSTM)" if recurrent > dense
            else "int8-dynamic (most weights are in MatMul/Gemm layers)")
    forms: list[tuple[str, QuantConfig]] = [(kind, Int8DynamicConfig())]
    forms += [(f"{kind}, SmoothQuant alpha {a:g}" + (f" on tensors with outlier ratio >= {r:g}" if r else "")
               + ", per-channel", Int8DynamicConfig(per_channel=True, smooth_alpha=a, smooth_min_outlier_ratio=r))
              for a, r in SMOOTHING]
    if ob.detect_bert(model.model, getattr(model, "tokenizer_dir", None)) is not None:
        forms += [(f"{label}, BERT-fused graph", cfg.model_copy(update={"fuse": "bert"})) for label, cfg in forms]
    return forms


def build_space(model: Any, calibration: dict[str, np.ndarray], config: SearchConfig,
                int8: tuple[str, QuantConfig] | None = None) -> Space:
    """The layers of the ONNX ``model`` (as the quantizer sees them, after the form's fusions) and their options.

    ``int8``: the form int8 layers are built in, ``(label, config)`` (default: the first of
    :func:`int8_forms`). ``int4`` applies to MatMul layers whose input dimension ``group_size``
    divides; ``codebook`` to weights of at least 256 elements.
    """
    from ..quantize.api import _handles, _wants_fuse, prepare
    from ..quantize.onnx import backend as ob

    kind, int8_cfg = int8 if int8 is not None else int8_forms(model)[0]
    prep = prepare(model, calibration, gemm_as_matmul=not isinstance(int8_cfg, Int8StaticConfig),
                   fuse=_wants_fuse(int8_cfg))
    layers, fixed = [], []
    for w in ob.weight_nodes(prep.model, LAYER_OPS):
        opts = ["float"]
        if "int8" in config.choices and _handles(int8_cfg, w.op_type):
            opts.append("int8")
        if "int4" in config.choices and w.op_type == "MatMul" and w.shape[0] % config.group_size == 0:
            opts.append("int4")
        if "codebook" in config.choices and w.op_type in ("MatMul", "Gemm", "Conv") \
                and int(np.prod(w.shape)) >= CODEBOOK_MIN_ELEMENTS:
            opts.append("codebook")
        layer = Layer(w.name, w.op_type, tuple(int(d) for d in w.shape), tuple(opts))
        layers.append(layer)
        if len(opts) == 1:
            fixed.append(w.name)
    return Space(layers, int8_cfg, kind, config.group_size, config.codebook_bits, fixed, dict(prep.fused))
