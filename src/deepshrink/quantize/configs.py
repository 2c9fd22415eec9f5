"""Quantization configs: one class per scheme, named for what it does.

``ds.quantize(model, Int8DynamicConfig())`` looks up the handler registered for the
config's type (the torchao pattern). Every config is a frozen pydantic model that rejects
unknown keys, validates its ranges (bits 2–8, sensible group sizes, observer names) with
a message naming the field, and round-trips through JSON (``to_dict``/``from_dict``),
including the nested configs of :class:`MixedPrecisionConfig` and :class:`AutoConfig`.

Layer selection: ``include`` / ``exclude`` are shell-style patterns (``fnmatch``) matched
against ONNX node names (or torch module names for torch-side schemes), and also against
the name of the node's weight initializer, so ``*output.dense*`` works on both exporters.
A pattern that matches no layer is an error at quantize time, not a silent no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from ..core.config import Config, Contract
from ..errors import InputError

Observer = Literal["minmax", "moving_average", "percentile", "mse", "entropy"]
Patterns = tuple[str, ...]
PER_CHANNEL_MIN_DB = 25.0  # int8 granularity "auto": per-channel below this median-channel SQNR (dB)


class QuantConfig(Config):
    """Base of every quantization config: which layers it applies to."""

    def contract(self) -> Contract:
        """Quantization writes ONNX; calibrated schemes need samples, QAT labels and the PyTorch model."""
        if isinstance(self, QATConfig):
            if self.epochs > 0 and self.distill and self.kd_alpha >= 1.0:  # the float model's outputs are the targets
                return Contract(("torch",), "onnx", "data", "quantization-aware training on soft targets")
            if self.epochs > 0:
                return Contract(("torch",), "onnx", "labels", "quantization-aware training")
            return Contract(("torch",), "onnx", "data", "calibration")
        if isinstance(self, MixedPrecisionConfig):
            parts = [c.contract() for c in (self.default, *self.overrides.values())]
            need = next((c for c in parts if c.needs), None)
            return Contract(("torch", "onnx"), "onnx", need.needs if need else None, need.why if need else "")
        calibrated = isinstance(self, (Int8StaticConfig, AutoConfig)) or getattr(self, "method", None) == "gptq"
        return Contract(("torch", "onnx"), "onnx", "data" if calibrated else None, "calibration" if calibrated else "")

    include: Patterns = Field(default=(), description="patterns of layers to quantize (empty: all)")
    exclude: Patterns = Field(default=(), description="patterns of layers to keep in float")

    @field_validator("include", "exclude")
    @classmethod
    def _patterns_nonempty(cls, v: Patterns) -> Patterns:
        for p in v:
            if not p.strip():
                raise ValueError("empty layer pattern")
        return v

    def _refuse_unused(self, fields: tuple[str, ...], unused: bool, why: str) -> None:
        """A field set away from its default where it cannot change the result is refused, never ignored."""
        if not unused:
            return
        for f in fields:
            if getattr(self, f) != type(self).model_fields[f].default:
                raise ValueError(f"{f}={getattr(self, f)!r} has no effect: {why}")


def _coerce_config(value: Any) -> Any:
    if isinstance(value, dict):
        cfg = Config.from_dict(value)
        if not isinstance(cfg, QuantConfig):
            raise ValueError(f"{type(cfg).__name__} is not a quantization config")
        return cfg
    return value


# a nested config field: serialised with its "type" key, rebuilt from it
NestedConfig = Annotated[QuantConfig, BeforeValidator(_coerce_config), PlainSerializer(lambda c: c.to_dict())]


class Int8DynamicConfig(QuantConfig):
    """int8 weights, activations quantized at run time (ORT ``DynamicQuantizeMatMul``/``MatMulIntegerToFloat``).

    Every MatMul/Gemm with a constant weight and the embedding tables (``Gather``) are
    quantized; activation×activation MatMuls (attention scores) stay float.
    ``fuse="auto"`` first applies ONNX Runtime's transformer fusions when the graph is a
    BERT-like encoder (fused Attention becomes ``QAttention``); it is off by default because
    the fused int8 graph measured slower at batch 32 (0.50-0.62x fp32 vs 0.41-0.48x
    unfused) and no faster at batch 1 on this machine (ORT 1.32, MiniLM: fused 0.88-0.99x
    unfused at batch 1, 1.28x at batch 32). ``smooth_alpha`` migrates activation
    outliers into the weights (SmoothQuant), folded into the producer where exact;
    ``smooth_min_outlier_ratio`` smooths only the activation tensors whose largest channel range
    is at least that many times the median one (each unfoldable tensor costs a ``Mul``).
    ``per_channel="auto"`` (the default) gives per-channel weight scales only to the layers
    whose median output channel keeps less than ``per_channel_min_db`` (25 dB) SQNR with one
    scale per tensor (decided from the weights alone); ONNX Runtime's per-column kernels cost
    a fixed time per output column, so the others stay per tensor. ``True``/``False`` force one granularity everywhere.
    ``reduce_range`` (default None: on an x86 CPU without VNNI or AMX, whose ``VPMADDUBSW`` kernels saturate
    uint8 × int8 pair sums at int16 — :func:`deepshrink.quantize.onnx.backend.int8_saturates`) keeps weights to 7 bits.
    ``LSTM`` layers become ONNX Runtime's ``DynamicQuantizeLSTM`` (int8 input and recurrence weights);
    ONNX Runtime has no integer GRU kernel, so a GRU stays float and is named in the float-weights report.
    Embedding tables under ``gather_min_elements`` stay float (unless named by ``include``):
    their run-time ``DequantizeLinear`` costs a kernel call for a few hundred kB saved.
    """

    per_channel: bool | Literal["auto"] = "auto"
    per_channel_min_db: float = Field(default=PER_CHANNEL_MIN_DB, ge=0.0, le=100.0,
                                      description="per_channel=auto: per-channel below this median-channel SQNR")
    gather_min_elements: int = Field(default=262_144, ge=0, description="smaller embedding tables stay float")
    reduce_range: bool | None = Field(default=None, description="7-bit weights; None: where this CPU's uint8 x int8 "
                                      "kernels saturate (x86 without VNNI or AMX)")
    fuse: Literal["auto", "none", "bert"] = "none"
    smooth_alpha: float | None = Field(default=None, ge=0.0, le=1.0)
    smooth_min_outlier_ratio: float = Field(default=0.0, ge=0.0, description="smooth only tensors this outlying")
    op_types: Patterns = ("MatMul", "Gemm", "Attention", "EmbedLayerNormalization", "Gather", "LSTM")

    @model_validator(mode="after")
    def _used(self) -> Int8DynamicConfig:
        self._refuse_unused(("per_channel_min_db",), self.per_channel != "auto",
                            f"it chooses the layers of per_channel='auto', and per_channel is {self.per_channel}")
        self._refuse_unused(("smooth_min_outlier_ratio",), not self.smooth_alpha,
                            "it chooses which tensors smoothing reaches, and smooth_alpha is not set")
        return self


class Int8StaticConfig(QuantConfig):
    """int8 weights and calibrated int8 activations, written as QDQ that ORT fuses into integer kernels.

    ``reduce_range``: 7-bit weights; None (the default) where this CPU's integer kernels saturate (x86 without VNNI
    or AMX: :func:`deepshrink.quantize.onnx.backend.int8_saturates`)."""

    observer: Observer = "minmax"
    percentile: float = Field(default=99.999, gt=50.0, le=100.0)
    per_channel: bool = True
    format: Literal["qdq", "qoperator"] = "qdq"
    calibration_size: int = Field(default=128, ge=1, le=100_000)
    symmetric_activations: bool = False
    smooth_alpha: float | None = Field(default=None, ge=0.0, le=1.0)
    op_types: Patterns = Field(default=(), description="ORT op types to quantize (empty: ORT's default set)")
    reduce_range: bool | None = Field(default=None, description="7-bit weights; None: where this CPU's uint8 x int8 "
                                      "kernels saturate (x86 without VNNI or AMX)")

    @model_validator(mode="after")
    def _used(self) -> Int8StaticConfig:
        self._refuse_unused(("percentile",), self.observer != "percentile",
                            f"it is the percentile observer's clipping point, and the observer is {self.observer!r}")
        return self


MATMUL_NBITS_GROUP_SIZES = (16, 32, 64, 128, 256)  # MLAS block sizes; others crash inside MlasQuantizeBlockwise


class WeightOnlyConfig(QuantConfig):
    """Group-wise low-bit weights, float activations (ORT ``MatMulNBits``); ``rtn`` or ``gptq``."""

    bits: int = Field(default=4, ge=2, le=8)
    group_size: int = Field(default=128)
    method: Literal["rtn", "gptq"] = "rtn"
    symmetric: bool = True
    act_order: bool = Field(default=True, description="GPTQ: columns by decreasing Hessian diagonal, static groups")
    calibration_size: int = Field(default=128, ge=1, le=100_000)

    @field_validator("group_size")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v not in MATMUL_NBITS_GROUP_SIZES:
            raise ValueError(f"group_size must be a power of two from 16 to 256 (the block sizes ONNX Runtime's "
                             f"MatMulNBits kernels take: {', '.join(map(str, MATMUL_NBITS_GROUP_SIZES))}), got {v}")
        return v

    @model_validator(mode="after")
    def _used(self) -> WeightOnlyConfig:
        self._refuse_unused(("act_order", "calibration_size"), self.method == "rtn",
                            "round-to-nearest (method='rtn') uses no calibration data; it is for method='gptq'")
        return self


class KMeansConfig(QuantConfig):
    """Weight sharing: a k-means codebook of 2**bits floats + uint8 indices (ONNX ``Gather``).

    ``init``: the starting centroids of Lloyd's iterations — evenly spaced over the range
    (``linear``), at the quantiles (``quantile``), or k-means++ (Arthur & Vassilvitskii, 2007)
    drawn with ``seed`` (the only init that uses it).
    """

    bits: int = Field(default=4, ge=2, le=8)
    per_channel: bool = False
    min_elements: int = Field(default=256, ge=1, description="smaller weights stay float")
    init: Literal["linear", "quantile", "kmeans++"] = "linear"
    seed: int = 0

    @model_validator(mode="after")
    def _used(self) -> KMeansConfig:
        self._refuse_unused(("seed",), self.init != "kmeans++",
                            f"it seeds init='kmeans++', and init is {self.init!r}")
        return self


class Log2Config(QuantConfig):
    """Power-of-two weights: sign and exponent codebook + uint8 indices (ONNX ``Gather``)."""

    bits: int = Field(default=4, ge=2, le=8)
    min_elements: int = Field(default=256, ge=1, description="smaller weights stay float")


class QATConfig(QuantConfig):
    """Quantization-aware training: fake-quant weights/activations with a straight-through
    estimator, fine-tuned with the shared trainer, then exported as int8 QDQ.

    ``epochs=0`` is post-training quantization on the same path (calibrate, optionally
    bias-correct, deploy; no labels needed). ``bias_correction`` removes the mean output shift
    that weight rounding adds to each layer (:mod:`.bias_correction`), before any training.
    ``distill``: train on ``kd_alpha`` · the soft targets of the float model at ``kd_temperature`` plus
    ``1 − kd_alpha`` · the labels' cross-entropy (Hinton et al. 2015; :func:`deepshrink.train.kd.kd_loss`), the
    loss pruning's fine-tune and Deep Compression take with their ``distill``; with ``kd_alpha`` 1 the labels are
    not read and unlabelled data is enough.
    """

    weight_bits: int = Field(default=8, ge=2, le=8)
    act_bits: int = Field(default=8, ge=2, le=8)
    per_channel: bool = True
    observer: Observer = "minmax"
    learn_scales: bool = False
    bias_correction: bool = False
    epochs: int = Field(default=3, ge=0, le=1000)
    lr: float = Field(default=1e-4, gt=0.0, le=1.0)
    batch_size: int = Field(default=64, ge=1)
    seed: int = 0
    distill: bool = False
    kd_temperature: float = Field(default=4.0, gt=0, allow_inf_nan=False)
    kd_alpha: float = Field(default=0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _used(self) -> QATConfig:
        self._refuse_unused(("learn_scales", "lr", "batch_size", "seed", "distill"), self.epochs == 0,
                            "it applies to training, and epochs=0 trains nothing (post-training quantization)")
        self._refuse_unused(("kd_temperature", "kd_alpha"), not self.distill,
                            "it shapes distill's loss, and distill is off")
        return self


class MixedPrecisionConfig(QuantConfig):
    """Per-layer choice: ``default`` for every selected layer, ``overrides`` = {pattern: config}.

    Layers matched by ``exclude`` (or not by ``include`` when given) stay float; the first
    override pattern that matches a layer wins.
    """

    default: NestedConfig = Field(default_factory=Int8DynamicConfig)
    overrides: dict[str, NestedConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _no_nesting(self) -> MixedPrecisionConfig:
        for c in (self.default, *self.overrides.values()):
            if isinstance(c, (MixedPrecisionConfig, AutoConfig, QATConfig)):
                raise ValueError(f"{type(c).__name__} cannot be nested inside MixedPrecisionConfig")
            if c.include or c.exclude:
                raise ValueError(f"the include/exclude of a nested {type(c).__name__} have no effect: the override "
                                 "patterns and MixedPrecisionConfig's own include/exclude choose its layers")
        for p in self.overrides:
            if not p.strip():
                raise ValueError("empty override pattern")
        return self


class AutoConfig(QuantConfig):
    """Quantize as much as possible while meeting a fidelity target on the user's data.

    Measures per-layer sensitivity (fidelity when only that layer is quantized), then keeps
    the most sensitive layers in float (and/or tries SmoothQuant alphas) until the mean
    cosine against the float model reaches ``target_cos`` and the worst sample reaches
    ``min_cos``. The result lists the layers kept and why.

    Smoothing is tried on the fewest tensors first: those whose channel outlier ratio
    (largest channel range / median) reaches each of ``smooth_outlier_ratios`` in turn,
    because every smoothed tensor that cannot be folded into its producer costs a ``Mul``
    at run time. The base scheme fuses BERT-like encoders (``fuse="auto"``): fewer kernels
    at batch 1.

    ``strategy``: ``"search"`` (default) runs :func:`deepshrink.search.search` as a preset — int8 or
    float per layer, the fidelity target, latency as the cost (size when ``choose_by_speed`` is
    False), ``trials`` candidates, no pruning or Deep Compression — and chooses on samples held
    out of the calibration set (:func:`deepshrink.evaluate.gate.split_holdout` past
    ``calibration_size``), reporting a second held-out part it never chose on; the layers it
    keeps float then store their weights in int8 when the target still holds. ``"layouts"``: the
    older fixed sequence (smoothing trials, keep-float bisection, per-op-type layouts timed; see
    :mod:`deepshrink.quantize.onnx.auto`), which judges fidelity on the calibration samples
    themselves; ``smooth_alphas``, ``smooth_outlier_ratios``, ``max_kept_fraction``, ``base``
    and ``include``/``exclude`` apply to it only (the search measures its own smoothing forms).
    """

    target_cos: float = Field(default=0.997, gt=0.0, le=1.0)
    min_cos: float = Field(default=0.99, gt=0.0, le=1.0)
    strategy: Literal["search", "layouts"] = "search"
    trials: int = Field(default=12, ge=1, le=10_000)
    base: NestedConfig = Field(default_factory=lambda: Int8DynamicConfig(fuse="auto", per_channel=True))
    smooth_alphas: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8)
    smooth_outlier_ratios: tuple[float, ...] = (8.0, 5.0, 4.0, 0.0)
    max_kept_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    calibration_size: int = Field(default=64, ge=2, le=100_000)
    # choose among the layouts that meet the target (static/dynamic int8 per op type) by timing them
    # against the float model at 2 threads, as `bench` does; False keeps the most-quantized layout
    # without timing (the output is then the same on every run)
    choose_by_speed: bool = True
    # intra-op threads of the ONNX Runtime sessions candidates are timed in (``quantize --threads``; 2, as
    # `bench` times): the layout that is fastest at 2 threads need not be at 1
    threads: int = Field(default=2, ge=1, le=1024)

    @field_validator("smooth_alphas")
    @classmethod
    def _alphas(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        for a in v:
            if not 0.0 <= a <= 1.0:
                raise ValueError(f"smooth alpha must be in [0, 1], got {a}")
        return v

    @field_validator("smooth_outlier_ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(r < 0 for r in v):
            raise ValueError(f"smooth outlier ratios must be >= 0, got {list(v)}")
        return tuple(sorted(v, reverse=True))

    @model_validator(mode="after")
    def _base_kind(self) -> AutoConfig:
        if isinstance(self.base, (MixedPrecisionConfig, AutoConfig)):
            raise ValueError(f"base must be a single scheme, not {type(self.base).__name__}")
        if not isinstance(self.base, (Int8DynamicConfig, Int8StaticConfig)):
            raise ValueError(f"base must be Int8DynamicConfig or Int8StaticConfig (the schemes auto keeps layers "
                             f"float from), not {type(self.base).__name__}")
        self._refuse_unused(("smooth_outlier_ratios",), not any(a > 0 for a in self.smooth_alphas),
                            "it chooses which tensors smoothing reaches, and smooth_alphas has no alpha above 0")
        if self.strategy == "search":
            layouts_only = ("smooth_alphas", "smooth_outlier_ratios", "max_kept_fraction", "base", "include",
                            "exclude")
            given = [f for f in layouts_only if f in self.model_fields_set
                     and getattr(self, f) != type(self).model_fields[f].get_default(call_default_factory=True)]
            if given:
                raise ValueError(f"{given[0]} applies to strategy 'layouts' only: strategy 'search' chooses "
                                 "every layer and its smoothing by measuring; set strategy='layouts' to use it")
        elif self.trials != type(self).model_fields["trials"].default:
            raise ValueError("trials is the search's candidate count: it applies to strategy 'search' only")
        base = self.base
        if base.smooth_alpha is not None:
            raise ValueError("base.smooth_alpha has no effect: auto tries its own smoothing alphas (smooth_alphas)")
        if "calibration_size" in type(base).model_fields and \
                base.calibration_size != type(base).model_fields["calibration_size"].default:
            raise ValueError("base.calibration_size has no effect: auto calibrates on its own calibration_size samples")
        if isinstance(base, Int8DynamicConfig) and \
                base.gather_min_elements != Int8DynamicConfig.model_fields["gather_min_elements"].default:
            raise ValueError("base.gather_min_elements has no effect: auto measures every table it may quantize; "
                             "exclude the tables to keep float")
        return self


ALL_CONFIGS: tuple[type[QuantConfig], ...] = (
    Int8DynamicConfig, Int8StaticConfig, WeightOnlyConfig, KMeansConfig, Log2Config, QATConfig,
    MixedPrecisionConfig, AutoConfig,
)

__all__ = [c.__name__ for c in ALL_CONFIGS] + ["QuantConfig", "Observer"]


# The scheme names the CLI and recipes use, beside the configs they stand for.
SCHEMES: dict[str, type[QuantConfig]] = {
    "int8-dynamic": Int8DynamicConfig, "int8-static": Int8StaticConfig, "int4-weight": WeightOnlyConfig,
    "kmeans": KMeansConfig, "log2": Log2Config, "auto": AutoConfig, "qat": QATConfig, "ptq": QATConfig,
    "mixed": MixedPrecisionConfig,
}
# ptq is QAT with no training: low-bit weights, 8-bit activations, bias-corrected (see QATConfig)
_SCHEME_DEFAULTS: dict[str, dict[str, Any]] = {"ptq": {"epochs": 0, "bias_correction": True, "weight_bits": 4}}


def config_for_scheme(scheme: str, params: dict[str, Any] | None = None) -> QuantConfig:
    """The config for a scheme name and its fields, e.g. ``("int8-static", {"observer": "mse"})``.

    Raises :class:`InputError` naming an unknown scheme or key (with the valid choices) or a bad value.
    """
    from ..core.config import check_keys

    if scheme not in SCHEMES:
        raise InputError(f"unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    cls = SCHEMES[scheme]
    params = {**_SCHEME_DEFAULTS.get(scheme, {}), **(params or {})}
    check_keys(params, cls, what=f"scheme {scheme}")
    return cls.build(**params)


def config_from_options(scheme: str, *, bits: int | None = None, group_size: int = 128, method: str = "rtn",
                        observer: str = "minmax", per_channel: bool | None = None, smooth: float | None = None,
                        include: Sequence[str] = (), exclude: Sequence[str] = (), target_cos: float = 0.997,
                        min_cos: float = 0.99, calibration_size: int = 64, max_kept: float = 0.5,
                        bias_correction: bool | None = None, calibration_size_given: bool = False,
                        choose_by_speed: bool = True, strategy: str = "search", trials: int | None = None,
                        threads: int = 2) -> QuantConfig:
    """The config of a scheme from the command line's flat options and their defaults (``bits``
    None: the scheme's own — 4 for low-bit schemes; ``per_channel`` None: the scheme's choice;
    ``choose_by_speed``, ``threads``: auto only, see :class:`AutoConfig`).
    Raises :class:`InputError` (one line) for an unknown scheme or a value out of range."""
    if scheme not in ("int8-dynamic", "int8-static", "int4-weight", "kmeans", "log2", "auto", "ptq"):
        raise InputError(f"--scheme {scheme!r}: use one of int8-dynamic, int8-static, int4-weight, kmeans, log2, "
                         "auto, ptq")
    if bits is not None and not 2 <= bits <= 8:
        raise InputError(f"--bits {bits} is outside 2–8")
    if bits is not None and bits != 8 and scheme in ("int8-dynamic", "int8-static", "auto"):
        raise InputError(f"--scheme {scheme} is 8-bit; for {bits} bits use int4-weight, ptq, kmeans or log2")
    sel = {"include": tuple(include), "exclude": tuple(exclude)}
    int8_pc = True if per_channel is None else per_channel
    if scheme == "int8-dynamic":
        return Int8DynamicConfig.build(per_channel="auto" if per_channel is None else per_channel,
                                       smooth_alpha=smooth, **sel)
    if scheme == "int8-static":
        return Int8StaticConfig.build(per_channel=int8_pc, observer=observer, smooth_alpha=smooth,
                                      calibration_size=calibration_size, **sel)
    if scheme == "int4-weight":
        cal = {"calibration_size": calibration_size} if method == "gptq" or calibration_size_given else {}
        return WeightOnlyConfig.build(bits=bits or 4, group_size=group_size, method=method, **cal, **sel)
    if scheme == "kmeans":
        return KMeansConfig.build(bits=bits or 4, per_channel=bool(per_channel), **sel)
    if scheme == "log2":
        return Log2Config.build(bits=bits or 4, **sel)
    if scheme == "ptq":  # low-bit weights, 8-bit activations, deployed as QDQ int8 kernels
        if per_channel is False:
            raise InputError("--scheme ptq quantizes weights per output channel; drop --per-tensor")
        return QATConfig.build(weight_bits=bits or 4, act_bits=8, epochs=0, observer=observer,
                               bias_correction=True if bias_correction is None else bias_correction, **sel)
    if strategy not in ("search", "layouts"):
        raise InputError(f"--strategy {strategy!r}: use search or layouts")
    if strategy == "search":
        flags = {"--include": bool(include), "--exclude": bool(exclude), "--per-tensor": per_channel is False,
                 "--max-kept": max_kept != AutoConfig.model_fields["max_kept_fraction"].default}
        given = next((f for f, on in flags.items() if on), None)
        if given is not None:
            raise InputError(f"{given} applies to auto's --strategy layouts; the default strategy (search) chooses "
                             "every layer by measuring — add --strategy layouts to use it")
        return AutoConfig.build(target_cos=target_cos, min_cos=min_cos, calibration_size=calibration_size,
                                choose_by_speed=choose_by_speed, threads=threads,
                                **({} if trials is None else {"trials": trials}))
    if trials is not None:
        raise InputError("--trials is the number of candidates auto's search measures; it does not apply to "
                         "--strategy layouts")
    return AutoConfig.build(target_cos=target_cos, min_cos=min_cos, calibration_size=calibration_size,
                            max_kept_fraction=max_kept, choose_by_speed=choose_by_speed, strategy="layouts", threads=threads,
                            base=Int8DynamicConfig.build(per_channel=int8_pc, fuse="auto"), **sel)
