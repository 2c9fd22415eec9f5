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

LAYER_OPS = ("MatMul", "Gemm", "Conv", "Attention")  # the layers MixedPrecisionConfig assigns
CODEBOOK_MIN_ELEMENTS = KMeansConfig.model_fields["min_elements"].default


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


def build_space(model: Any, calibration: dict[str, np.ndarray], config: SearchConfig) -> Space:
    """The layers of the ONNX ``model`` (as the quantizer sees them) and their options.

    int8 is static (QLinearConv / QDQ) when most weights are in Conv layers and dynamic otherwise —
    ONNX Runtime's fast int8 convolution is the static one (the rule of ``quantize --scheme auto``).
    ``int4`` applies to MatMul layers whose input dimension ``group_size`` divides; ``codebook`` to
    weights of at least 256 elements.
    """
    from ..quantize.api import _handles, prepare
    from ..quantize.onnx import backend as ob

    conv = sum(int(np.prod(w.shape)) for w in ob.weight_nodes(model.model, ("Conv",)))
    other = sum(int(np.prod(w.shape)) for w in ob.weight_nodes(model.model, ("MatMul", "Gemm")))
    if conv > other:
        int8: QuantConfig = Int8StaticConfig(per_channel=True)
        kind = "int8-static (most weights are in Conv layers: ONNX Runtime's QLinearConv)"
    else:
        int8 = Int8DynamicConfig()
        kind = "int8-dynamic (most weights are in MatMul/Gemm layers)"
    prep = prepare(model, calibration, gemm_as_matmul=not isinstance(int8, Int8StaticConfig))
    layers, fixed = [], []
    for w in ob.weight_nodes(prep.model, LAYER_OPS):
        opts = ["float"]
        if "int8" in config.choices and _handles(int8, w.op_type):
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
    return Space(layers, int8, kind, config.group_size, config.codebook_bits, fixed)
