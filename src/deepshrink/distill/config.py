"""``DistillConfig``: what a distillation run optimises and how the student is made."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from ..core.config import Config, Contract

_DERIVE = re.compile(r"^(layers|width)=([0-9.]+)$")


def parse_derive(spec: str) -> tuple[str, float]:
    """``"layers=3"`` → ``("layers", 3)``; ``"width=0.5"`` → ``("width", 0.5)``.

    Raises ``ValueError`` (an :class:`~deepshrink.errors.InputError` through the config) for any
    other spelling, a layer count below 1 or a width outside (0, 1).
    """
    m = _DERIVE.match(spec.strip().replace(" ", ""))
    if not m:
        raise ValueError(f"derive {spec!r}: expected layers=K (keep K transformer layers) or width=F "
                         "(keep a fraction F of every layer's channels, 0 < F < 1)")
    kind, value = m.group(1), float(m.group(2))
    if kind == "layers":
        if value != int(value) or value < 1:
            raise ValueError(f"derive {spec!r} would leave {int(value)} layers; keep at least one (layers=K, K >= 1)")
        return kind, int(value)
    if not 0 < value < 1:
        raise ValueError(f"derive {spec!r}: width is the fraction of channels kept, 0 < F < 1")
    return kind, value


class DistillConfig(Config):
    """Knowledge distillation from a teacher into a student (Hinton et al. 2015; FitNets; TinyBERT).

    Student: given by the caller, or derived from the teacher by ``derive``: ``"layers=K"`` keeps
    K of the teacher's transformer layers with their weights (which ones: ``layer_selection``
    ``"importance"`` — greedy removal of the layer whose absence changes the teacher's output on
    the data least, measured — or ``"uniform"``, evenly spaced, every other layer when keeping
    half); ``"width=F"`` keeps a fraction F of every channel group through structured pruning.

    Loss: an output term, plus optional feature terms.

    - ``loss="kd"``: soft-target KD, ``alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) ·
      CE(s, labels)`` (Hinton et al. 2015); without labels the soft term alone.
    - ``loss="embedding"``: ``metric`` (``mse`` or ``cosine`` = 1 − cos) between the student's and
      the teacher's output vectors (sentence-embedding distillation, Reimers & Gurevych 2020).
    - ``"auto"``: ``embedding`` for an encoder whose output is an embedding (a tokenizer is attached
      or the output is named ``*embedding*``), ``kd`` otherwise.
    - ``hidden_weight`` > 0 adds hidden-state distillation: ``metric`` between each student layer's
      output and its mapped teacher layer's (``layer_map``: a teacher layer per student layer, or
      ``"uniform"`` (the default) — student layer j of M ↔ teacher layer (j+1)·N/M − 1, TinyBERT — or
      ``"kept"`` for a ``layers=K`` student: each student layer ↔ the teacher layer it was copied from,
      e.g. [0, 4, 5]), through a
      learned linear projection when the widths differ (FitNets); a model without a layer stack
      uses the features entering its last linear layer.
    - ``attention_weight`` > 0 adds attention-map distillation: KL divergence from each mapped teacher
      layer's attention distributions to the student layer's, over real tokens' query rows (MiniLM, Wang et
      al. 2020); a student pruned from the teacher compares each kept head with the head it was, other students
      the head-averaged maps when head counts differ (:func:`deepshrink.distill.losses.attention_loss`; needs
      eager attention).

    Training: ``epochs`` over the data with ``optimizer`` at ``lr`` (default 1e-4 for models with
    transformer layers, 1e-3 otherwise), global ``batch_size`` (split over processes), ``seed``;
    ``lr_schedule`` ``constant`` / ``cosine`` / ``linear`` decay after a linear warmup over the first
    ``warmup`` fraction of the steps (:func:`deepshrink.train.trainer.lr_factor`). ``freeze``: globs over
    the student's parameter names kept as they are (``("*word_embeddings*",)``: a copied student keeps the
    teacher's 11.7M-parameter MiniLM vocabulary table, and each step skips its gradient and update).
    ``dropout``: the drop probability of every ``torch.nn.Dropout`` module of the student while it trains,
    and of the functional dropout it calls in training mode (``F.dropout(x, 0.25, training=self.training)``,
    instead of holding ``nn.Dropout`` modules) (``None``: the model's own; the written student keeps its own values). Measured on a pruned MiniLM
    recovered from its teacher, 100 steps at lr 1e-4: 0.9297 cosine with 0, 0.9253 with MiniLM's own 0.1 —
    the student copies a teacher it should match exactly, and dropout's noise works against that.
    ``group_by_length``: batches of sentences of similar length (:class:`deepshrink.train.LengthGroupedSampler`:
    shuffled pools of 50 batches, each pool sorted by length) instead of a plain shuffle, so the padding each
    batch is cut to stays short; needs an ``attention_mask`` input (refused otherwise). Measured on the
    3-layer MiniLM student, up to 128 tokens, 300 steps of 32 on one thread: 217 CPU-s grouped vs 508 with a
    plain shuffle (236 at 32 tokens), held-out cosine 0.9144 vs 0.9151 (``benchmarks/results/distill_minilm.md``).
    ``mixed_precision``: ``"bf16"`` runs the teacher's and the student's forward passes under bfloat16 autocast
    (losses, weights, gradients and optimizer state in float32; :class:`deepshrink.train.Trainer`): about half the
    CPU time per step where the CPU has bfloat16 instructions (:func:`deepshrink.train.native_bf16`); ``"no"``:
    float32 throughout.
    """

    def contract(self) -> Contract:
        """Distillation trains a PyTorch student on samples (labels optional)."""
        return Contract(("torch",), "torch", "data", "distillation")

    derive: str | None = None
    layer_selection: Literal["importance", "uniform"] = "importance"
    loss: Literal["auto", "kd", "embedding"] = "auto"
    temperature: float = Field(default=2.0, gt=0.0)
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    metric: Literal["mse", "cosine"] = "mse"
    hidden_weight: float = Field(default=0.0, ge=0.0)
    attention_weight: float = Field(default=0.0, ge=0.0)
    layer_map: tuple[int, ...] | Literal["uniform", "kept"] | None = None
    epochs: int = Field(default=3, ge=0)
    lr: float | None = Field(default=None, gt=0.0)
    batch_size: int = Field(default=32, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    weight_decay: float = Field(default=0.0, ge=0.0)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup: float = Field(default=0.0, ge=0.0, lt=1.0)
    freeze: tuple[str, ...] = ()
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)
    group_by_length: bool = False
    mixed_precision: Literal["no", "bf16"] = "no"
    seed: int = 0
    checkpoint_every: int = Field(default=0, ge=0)

    @field_validator("derive")
    @classmethod
    def _derive_ok(cls, v: str | None) -> str | None:
        if v is not None:
            parse_derive(v)
        return v
