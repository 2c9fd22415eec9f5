"""Pack configs: :class:`PackConfig` (lossless: store the tensors as they are) and
:class:`DeepCompressionConfig` (prune → trained k-means weight sharing → Huffman, Han et
al., "Deep Compression", ICLR 2016). Frozen pydantic models that reject unknown keys."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from ..core.config import Config, Contract, format_validation_error
from ..errors import InputError


class PackConfig(Config):
    """Write the model's tensors losslessly (bit-exact) into a ``.dsz`` container.

    ``entropy``: ``"huffman"`` (default) or ``"fixed"`` (fixed-length codes — the
    "quantized, not entropy-coded" stage of the paper's table). ``gap_bits``: width of a
    sparse tensor's relative position gaps, 1–8 bits (default: the smallest file per
    tensor; the paper uses 5 for FC and 8 for conv layers).
    """

    def contract(self) -> Contract:
        """Packing takes either kind and writes the final ``.dsz`` file."""
        return Contract(("torch", "onnx"), "dsz")

    entropy: Literal["huffman", "fixed"] = "huffman"
    gap_bits: int | None = Field(default=None, ge=1, le=8)

    @classmethod
    def build(cls, **data: Any) -> Any:
        """Construct, turning a validation failure into a one-line :class:`InputError`."""
        try:
            return cls(**data)
        except ValidationError as exc:
            raise InputError(f"invalid {cls.__name__}: {format_validation_error(exc)}") from None


class DeepCompressionConfig(PackConfig):
    """Prune, share weights by k-means with centroid fine-tuning, then pack.

    Sparsity (fraction of weights zeroed, 0 ≤ s < 1): ``fc_sparsity`` for Linear /
    Embedding weights (2-D ONNX initializers), ``conv_sparsity`` for convolutions
    (default: ``fc_sparsity``), ``layer_sparsity`` maps fnmatch patterns of layer names to
    a sparsity and wins over both (first match). With labelled data pruning is gradual
    (Zhu & Gupta's cubic schedule over ``prune_epochs`` of fine-tuning at ``lr`` with a
    ``lr_schedule``), else one-shot magnitude.

    Weight sharing: ``fc_bits`` / ``conv_bits`` (paper: 5 and 8) bits of k-means clusters
    per layer over its non-zero weights, so zeros stay zero; ``other_bits`` for biases and
    norm scales/shifts, ``buffer_bits`` for BatchNorm running statistics (shared after
    fine-tuning; all-positive ones such as variances are clustered on a log scale).
    ``None``: leave them untouched; a tensor with at most 2^bits elements is rounded to
    float16 instead. ``init``:
    ``"linear"`` (the paper's choice), ``"density"`` or ``"random"``. Centroids are float16
    values. With labelled data the centroids are fine-tuned for ``finetune_epochs``
    (gradients summed per cluster, assignments fixed).

    ``kernel_sparsity``: conv layers whose sparsity is at least this first lose this fraction of
    their k×k kernels whole (smallest L2 norm), then single weights up to their sparsity:
    clustered zeros cost the sparse encoding fewer gap bits (Mao et al., CVPRW 2017).

    ``fold_bn``: fold every BatchNorm that directly follows a convolution into that
    convolution's weights before pruning (Jacob et al., CVPR 2018, §3.2): the norm's scale
    becomes 1, its running mean 0 and variance 1 (constants that cost a few bytes), its
    shift carries the folded bias, and it stays in inference mode while fine-tuning. Needs
    a model ``torch.fx`` can trace. ``distill``: fine-tune (pruning and centroids) on
    ``kd_alpha`` · soft targets of the uncompressed model at ``kd_temperature`` plus
    ``1 − kd_alpha`` · cross-entropy (Hinton et al., 2015). ``layer_bits`` maps fnmatch
    patterns of layer names (for their weights) or tensor names (``"fc.bias"``) to k-means
    bits and wins over ``fc_bits`` / ``conv_bits`` / ``other_bits`` (first match).
    """

    fc_sparsity: float = Field(default=0.0, ge=0.0, lt=1.0)
    conv_sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)
    layer_sparsity: dict[str, float] = Field(default_factory=dict)
    fc_bits: int = Field(default=5, ge=1, le=8)
    conv_bits: int = Field(default=8, ge=1, le=8)
    other_bits: int | None = Field(default=8, ge=1, le=8)
    buffer_bits: int | None = Field(default=8, ge=1, le=8)
    init: Literal["linear", "density", "random"] = "linear"
    kmeans_iters: int = Field(default=50, ge=1, le=1000)
    prune_epochs: int = Field(default=30, ge=0)
    finetune_epochs: int = Field(default=10, ge=0)
    lr: float = Field(default=2e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    centroid_lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=64, ge=1)
    kernel_sparsity: float = Field(default=0.0, ge=0.0, lt=1.0)
    fold_bn: bool = False
    distill: bool = False
    kd_temperature: float = Field(default=4.0, gt=0, allow_inf_nan=False)
    kd_alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    layer_bits: dict[str, int] = Field(default_factory=dict)

    @field_validator("layer_bits")
    @classmethod
    def _layer_bits(cls, v: dict[str, int]) -> dict[str, int]:
        for pat, b in v.items():
            if not pat.strip():
                raise ValueError("empty layer pattern")
            if not 2 <= b <= 8:  # k-means needs at least 2 bits
                raise ValueError(f"bits {b} for {pat!r} is outside 2..8")
        return v

    @field_validator("layer_sparsity")
    @classmethod
    def _sparsities(cls, v: dict[str, float]) -> dict[str, float]:
        for pat, s in v.items():
            if not pat.strip():
                raise ValueError("empty layer pattern")
            if not 0.0 <= s < 1.0:
                raise ValueError(f"sparsity {s} for {pat!r} is outside [0, 1)")
        return v
