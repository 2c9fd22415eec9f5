"""Pruning configs: one verb (:func:`deepshrink.prune.prune`), one config class per method.

Each is a frozen, validated :class:`~deepshrink.core.config.Config`, so a recipe typo or an
out-of-range sparsity is an :class:`~deepshrink.errors.InputError` before any work starts.

Fine-tuning fields, the same in every method that trains (``finetune_epochs`` > 0, or gradual pruning):
``lr`` and ``lr_schedule`` (``constant``, or ``cosine`` / ``linear`` decay to 0 over the run); ``distill`` fine-tunes on
``kd_alpha`` · the soft targets of the unpruned model at ``kd_temperature`` plus ``1 − kd_alpha`` · the labels'
cross-entropy (Hinton, Vinyals & Dean 2015, :func:`deepshrink.train.kd.kd_loss`) instead of the labels alone;
with ``kd_alpha`` 1 the labels are not read, and unlabelled data is enough.
Measured on the digits CNN with half its channels removed (L2, 30 epochs at lr 1e-2, 5 seeds, 360 test digits the
unpruned model all gets right): labels alone, constant lr, lost 2-4 digits; ``distill`` (alpha 0.9, T 4) with the
cosine schedule lost 0-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from ..core.config import Config, Contract

DEFAULT_LR = 1e-3


def _refuse_unused_lr(cfg: Config) -> None:
    """``lr``, ``lr_schedule`` and ``distill`` only drive fine-tuning: given with ``finetune_epochs=0`` they would
    be ignored; ``kd_temperature`` / ``kd_alpha`` only shape ``distill``'s loss."""
    epochs = getattr(cfg, "finetune_epochs", None)
    if epochs == 0:
        unused = [f"lr {cfg.lr:g}" if cfg.lr != DEFAULT_LR else "",  # type: ignore[attr-defined]
                  f"lr_schedule {cfg.lr_schedule}" if getattr(cfg, "lr_schedule", "constant") != "constant" else "",
                  "distill" if getattr(cfg, "distill", False) else ""]
        if any(unused):
            named = [u for u in unused if u]
            raise ValueError(f"{' and '.join(named)} appl{'y' if len(named) > 1 else 'ies'} only to fine-tuning: set "
                             f"finetune_epochs > 0, or leave {'them' if len(named) > 1 else 'it'} out")
    if not getattr(cfg, "distill", False) and (cfg.kd_temperature, cfg.kd_alpha) != (4.0, 0.5):  # type: ignore[attr-defined]
        raise ValueError("kd_temperature / kd_alpha apply only with distill=True (fine-tuning on the soft targets "
                         "of the unpruned model)")


def soft_targets_only(cfg: Config) -> bool:
    """Whether the config's training reads no labels: ``distill`` with ``kd_alpha`` 1."""
    return bool(getattr(cfg, "distill", False)) and getattr(cfg, "kd_alpha", 0.0) >= 1.0


def trains(cfg: Config) -> bool:
    """Whether pruning with ``cfg`` trains: a fine-tune (``finetune_epochs`` > 0) or gradual pruning."""
    return bool(getattr(cfg, "finetune_epochs", 0)) or isinstance(cfg, GradualPruneConfig)


def _prune_contract(cfg: Config) -> Contract:
    """Pruning takes a PyTorch model (or an ONNX source, pruned as its PyTorch import and written back as ONNX:
    :func:`deepshrink.recipe.steps.check_chain`) and writes the kind it took; fine-tuning (and gradual pruning, Taylor importance) needs labels, activation importance any samples."""
    if trains(cfg):
        if soft_targets_only(cfg):  # the unpruned model's outputs are the targets: any samples
            return Contract(("torch",), None, "data", "fine-tuning on soft targets")
        return Contract(("torch",), None, "labels", "fine-tuning")
    if getattr(cfg, "importance", None) == "taylor":
        return Contract(("torch",), None, "labels", "taylor importance")
    if getattr(cfg, "importance", None) in ("activation", "fisher"):
        return Contract(("torch",), None, "data", f"{cfg.importance} importance")
    return Contract(("torch",), None)

class MagnitudePruneConfig(Config):
    """Unstructured magnitude pruning: zero the smallest weights of every Linear/Conv.

    Give ``sparsity`` (fraction of weights zeroed, 0 <= s < 1) or ``threshold`` (zero
    ``|w| < threshold``). ``scope="layer"`` prunes each layer to the same sparsity,
    ``"global"`` ranks all weights together. ``finetune_epochs`` > 0 retrains with the masks
    held (needs labelled data).
    """

    contract = _prune_contract

    sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)
    threshold: float | None = Field(default=None, ge=0.0)
    scope: Literal["layer", "global"] = "layer"
    protect: tuple[str, ...] = ()
    finetune_epochs: int = Field(default=0, ge=0)
    lr: float = Field(default=DEFAULT_LR, gt=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    distill: bool = False
    kd_temperature: float = Field(default=4.0, gt=0, allow_inf_nan=False)
    kd_alpha: float = Field(default=0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_target(self) -> MagnitudePruneConfig:
        if (self.sparsity is None) == (self.threshold is None):
            raise ValueError("give exactly one of sparsity (0 <= s < 1) or threshold (>= 0)")
        _refuse_unused_lr(self)
        return self


class GradualPruneConfig(Config):
    """Zhu & Gupta (2017) gradual magnitude pruning interleaved with fine-tuning.

    Sparsity rises from ``initial_sparsity`` to ``final_sparsity`` along the cubic schedule
    ``s_t = s_f + (s_i - s_f)(1 - (t - t0) / (t1 - t0))^3`` over the fraction
    ``[begin, end]`` of the ``epochs`` of training, updating masks every ``frequency`` steps;
    the remaining epochs fine-tune at the final sparsity. The defaults (30 epochs, sparsity
    reached at 40%, global ranking, cosine learning rate from 2e-3) are what holds the digits
    MLP at 90% sparsity within 0.5 pt of fp32 (benchmarks/results/prune_unstructured.md).
    """

    contract = _prune_contract

    final_sparsity: float = Field(ge=0.0, lt=1.0)
    initial_sparsity: float = Field(default=0.0, ge=0.0, lt=1.0)
    epochs: int = Field(default=30, ge=1)
    begin: float = Field(default=0.0, ge=0.0, le=1.0)
    end: float = Field(default=0.4, ge=0.0, le=1.0)
    frequency: int = Field(default=10, ge=1)
    scope: Literal["layer", "global"] = "global"
    protect: tuple[str, ...] = ()
    lr: float = Field(default=2e-3, gt=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    distill: bool = False
    kd_temperature: float = Field(default=4.0, gt=0, allow_inf_nan=False)
    kd_alpha: float = Field(default=0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _order(self) -> GradualPruneConfig:
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError("initial_sparsity must not exceed final_sparsity")
        if self.begin >= self.end:
            raise ValueError("begin must be < end (fractions of the training run)")
        _refuse_unused_lr(self)
        return self


class NMPruneConfig(Config):
    """N:M semi-structured sparsity: in every group of ``m`` consecutive input weights keep the
    ``n`` largest (2:4 is what sparse tensor cores accelerate)."""

    contract = _prune_contract

    n: int = Field(default=2, ge=1)
    m: int = Field(default=4, ge=2)
    protect: tuple[str, ...] = ()
    finetune_epochs: int = Field(default=0, ge=0)
    lr: float = Field(default=DEFAULT_LR, gt=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    distill: bool = False
    kd_temperature: float = Field(default=4.0, gt=0, allow_inf_nan=False)
    kd_alpha: float = Field(default=0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _nm(self) -> NMPruneConfig:
        if self.n >= self.m:
            raise ValueError(f"n must be < m (got {self.n}:{self.m})")
        _refuse_unused_lr(self)
        return self


class StructuredPruneConfig(Config):
    """Remove whole channels / neurons / attention heads so the network is physically smaller.

    ``ratio``: fraction of channels removed from every prunable group (conv filters, linear
    neurons; ``ffn_ratio`` overrides it for transformer FFN neurons, ``heads_ratio`` sets the
    fraction of attention heads removed). ``importance``: ``l1``/``l2`` weight norms over the
    whole coupled group, ``bn`` BatchNorm scale, ``taylor`` |w·grad| (needs labelled data),
    ``activation`` each channel's contribution ‖x‖·‖W col‖ to its consumers (Wanda-style; needs
    unlabelled example data), ``fisher`` the diagonal Fisher information of a mask on each channel,
    with the model's own output standing in for labels (Kwon et al., NeurIPS 2022; needs unlabelled
    example data and a backward pass per sample batch; :func:`.structured.importance.fisher_scores`).
    ``scope="uniform"`` removes the same fraction everywhere; ``"global"`` ranks normalised
    importances across groups (each group keeps at least ``min_keep`` of its channels); with
    ``fisher`` it ranks the raw scores (one unit in every layer), heads across layers too, so the
    same total of FFN neurons and heads goes but unevenly, as Kwon et al.'s mask search.
    ``protect``: fnmatch patterns of module names left entirely alone (the model's output
    layer always keeps its outputs).
    ``round_to``: every pruned group keeps a multiple of this many channels (rounded up; heads are
    not rounded). CPU kernels work on channel blocks, so a count between two multiples of the block
    costs as much as the larger one: the digits CNN (width 32, ONNX Runtime, AMD EPYC with AVX-512)
    ran at 0.96-1.0x with 28, 24 or 20 channels and at 0.50-0.60x with 16 — prune to a multiple of
    16 (AVX-512) or 8 (AVX2), as Torch-Pruning's ``round_to`` does for GPU tensor cores.
    ``reconstruct``: after removing, re-fit every pruned layer's consumer (FFN output dense, attention
    output projection, a following Linear) by ridge least squares so it reproduces the unpruned layer's
    output on example data, layer by layer (Kwon et al., NeurIPS 2022; see
    :mod:`deepshrink.prune.structured.reconstruct`); needs unlabelled example data. ``reconstruct_ridge``
    (> 0): the pull towards the pruned weights, relative to the mean input energy; ``reconstruct_samples``:
    how many example samples it fits on.
    """

    contract = _prune_contract

    ratio: float = Field(ge=0.0, lt=1.0)
    importance: Literal["l1", "l2", "bn", "taylor", "activation", "fisher"] = "l2"
    scope: Literal["uniform", "global"] = "uniform"
    protect: tuple[str, ...] = ()
    heads_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    ffn_ratio: float | None = Field(default=None, ge=0.0, lt=1.0)
    round_to: int = Field(default=1, ge=1)
    min_keep: float = Field(default=0.1, gt=0.0, le=1.0)
    finetune_epochs: int = Field(default=0, ge=0)
    lr: float = Field(default=DEFAULT_LR, gt=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    distill: bool = False
    kd_temperature: float = Field(default=4.0, gt=0, allow_inf_nan=False)
    kd_alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    reconstruct: bool = False
    reconstruct_ridge: float = Field(default=1e-2, gt=0.0)
    reconstruct_samples: int = Field(default=1024, ge=1)

    @model_validator(mode="after")
    def _applies(self) -> StructuredPruneConfig:
        if self.min_keep != 0.1 and self.scope == "uniform":
            raise ValueError(f"min_keep {self.min_keep:g} applies only to scope='global' (uniform removes the same "
                             "fraction from every group)")
        if not self.reconstruct and (self.reconstruct_ridge != 1e-2 or self.reconstruct_samples != 1024):
            raise ValueError("reconstruct_ridge / reconstruct_samples apply only with reconstruct=True")
        _refuse_unused_lr(self)
        return self


PruneConfig = MagnitudePruneConfig | GradualPruneConfig | NMPruneConfig | StructuredPruneConfig

METHODS: dict[str, type[Config]] = {"magnitude": MagnitudePruneConfig, "gradual": GradualPruneConfig,
                                    "nm": NMPruneConfig, "structured": StructuredPruneConfig}
# ``sparsity`` is the one word the CLI and recipes use for every method's target
_SPARSITY_FIELD = {"magnitude": "sparsity", "gradual": "final_sparsity", "structured": "ratio"}


def config_for_method(method: str, params: dict[str, Any] | None = None) -> Config:
    """The config for a pruning method and its fields, e.g. ``("structured", {"sparsity": 0.5})``.

    ``sparsity`` stands for the method's own target field (``ratio`` for structured,
    ``final_sparsity`` for gradual). Raises :class:`InputError` naming an unknown method or
    key (with the valid choices) or a bad value.
    """
    from ..core.config import check_keys
    from ..errors import InputError

    if method not in METHODS:
        raise InputError(f"unknown pruning method {method!r}; use one of {', '.join(METHODS)}")
    params = dict(params or {})
    if "sparsity" in params and method in _SPARSITY_FIELD and _SPARSITY_FIELD[method] != "sparsity":
        params[_SPARSITY_FIELD[method]] = params.pop("sparsity")
    cls = METHODS[method]
    check_keys(params, cls, what=f"method {method}")
    return cls.build(**params)


def config_from_options(method: str, sparsity: float | None = None, threshold: float | None = None,
                        scope: str | None = None, importance: str = "l2", protect: Sequence[str] = (),
                        finetune_epochs: int = 0, lr: float | None = None, nm: str = "2:4", heads_ratio: float = 0.0,
                        ffn_ratio: float | None = None, reconstruct: bool = False,
                        reconstruct_ridge: float | None = None, round_to: int = 1,
                        reconstruct_samples: int | None = None, training: dict[str, Any] | None = None) -> Config:
    """The config of a pruning method from the command line's flat options (``sparsity`` is each
    method's target; ``scope`` None: the method's default; ``training``: fine-tune fields given, such as
    ``lr_schedule``, ``distill``, ``kd_temperature``, ``kd_alpha``). Raises :class:`InputError` (one line)
    for an unknown method, a missing target or a bad value."""
    from ..errors import InputError

    if method not in METHODS:
        raise InputError(f"--method {method!r}: use {', '.join(METHODS)}")
    common: dict[str, Any] = {"protect": list(protect), **({"lr": lr} if lr is not None else {}), **(training or {})}
    if method == "magnitude":
        if sparsity is None and threshold is None:
            raise InputError("--method magnitude needs --sparsity S (0 <= S < 1) or --threshold T")
        return MagnitudePruneConfig.from_dict({**common, "sparsity": sparsity, "threshold": threshold,
                                               "scope": scope or "layer", "finetune_epochs": finetune_epochs})
    if method == "gradual":
        if sparsity is None:
            raise InputError("--method gradual needs --sparsity S (the final sparsity, 0 <= S < 1)")
        return GradualPruneConfig.from_dict({**common, "final_sparsity": sparsity, "scope": scope or "layer",
                                             "epochs": finetune_epochs or 30})
    if method == "nm":
        n, _, m = nm.partition(":")
        if not (n.isdigit() and m.isdigit()):
            raise InputError(f"--nm {nm!r}: expected N:M such as 2:4")
        return NMPruneConfig.from_dict({**common, "n": int(n), "m": int(m), "finetune_epochs": finetune_epochs})
    if sparsity is None:
        raise InputError("--method structured needs --sparsity S (fraction of channels removed, 0 <= S < 1)")
    return StructuredPruneConfig.from_dict({**common, "ratio": sparsity, "importance": importance,
                                            "scope": scope or "uniform", "heads_ratio": heads_ratio,
                                            "ffn_ratio": ffn_ratio, "finetune_epochs": finetune_epochs,
                                            "reconstruct": reconstruct, "round_to": round_to,
                                            **({"reconstruct_ridge": reconstruct_ridge}
                                               if reconstruct_ridge is not None else {}),
                                            **({"reconstruct_samples": reconstruct_samples}
                                               if reconstruct_samples is not None else {})})
