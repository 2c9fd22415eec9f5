"""The search's config and the parsers of its budget and time options.

``SearchConfig`` is a frozen pydantic model (:class:`deepshrink.core.config.Config`): unknown keys
are refused and every range is checked with a message naming the field, so a bad request fails
before any work or write.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..core.config import Config
from ..errors import InputError

Choice = Literal["float", "int8", "int4", "codebook"]
CHOICES: tuple[str, ...] = ("float", "int8", "int4", "codebook")
LOCAL_RAY = "local"  # SearchConfig.ray: start a local Ray cluster for the run

_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


class Budget(Config):
    """A cap on one cost of the chosen model: its file size or its latency.

    ``resource="size"``: ``value`` is bytes (``relative=False``) or a fraction of the original file's
    size (``relative=True``, written ``size=0.1x``). ``resource="latency"``: ``value`` is a fraction of
    the original model's latency measured in the same rounds (``latency=0.5x``) or milliseconds
    (``relative=False``, written ``latency=2ms``).
    """

    resource: Literal["size", "latency"]
    value: float = Field(gt=0.0)
    relative: bool = False

    def describe(self) -> str:
        if self.resource == "size":
            return f"size <= {self.value:g}x the original" if self.relative else f"size <= {self.value:,.0f} bytes"
        return f"latency <= {self.value:g}x the original" if self.relative else f"latency <= {self.value:g} ms"


def parse_budget(text: str) -> Budget:
    """``size=2MB``, ``size=1.5MiB``, ``size=0.1x``, ``latency=0.5x`` or ``latency=2ms`` → :class:`Budget`.

    Decimal units (kB = 1000 B) and binary ones (KiB = 1024 B). Raises :class:`InputError` (one
    line, with the accepted forms) for anything else.
    """
    forms = "size=2MB, size=512KiB, size=0.1x (of the original), latency=0.5x (of the original) or latency=2ms"
    m = re.fullmatch(r"\s*(size|latency)\s*=\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([a-zA-Z]*)\s*", text or "")
    if m is None:
        raise InputError(f"budget {text!r} cannot be parsed; use {forms}")
    kind, num, unit = m.group(1), float(m.group(2)), m.group(3).lower()
    if num <= 0:
        raise InputError(f"budget {text!r}: the value must be above 0")
    if unit == "x":
        return Budget(resource=kind, value=num, relative=True)
    if kind == "size" and unit in _UNITS:
        return Budget(resource="size", value=num * _UNITS[unit])
    if kind == "latency" and unit == "ms":
        return Budget(resource="latency", value=num)
    raise InputError(f"budget {text!r}: unit {m.group(3) or '(none)'!r} does not fit {kind}; use {forms}")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1h`` → seconds. Raises :class:`InputError` for anything else."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|h|)\s*", text or "")
    if m is None or float(m.group(1)) <= 0:
        raise InputError(f"time {text!r} cannot be parsed; use a positive duration such as 90s, 10m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


class SearchConfig(Config):
    """What the per-layer search may choose, what it must keep, and how long it may take.

    Fidelity target (exactly one): ``max_drop`` — top-1 accuracy points the chosen model may lose
    against the original on held-out labelled data; or ``target_cos`` (mean) with ``min_cos``
    (worst sample; default ``min(0.99, target_cos)``) — cosine of the first output to the
    original's, for unlabelled data. ``budget``: an optional cap on size or latency (see
    :class:`Budget`). ``choices``: what a layer may become — ``float``, ``int8`` (static int8
    QDQ for a network whose weights are mostly in Conv layers, dynamic int8 otherwise, in the
    form — SmoothQuant, per-channel, BERT-fused — measured best first: :mod:`.forms`), ``int4`` (MatMulNBits weight-only, group size
    ``group_size``; MatMul layers only), ``codebook`` (k-means, ``codebook_bits`` bits).
    ``trials``: candidates the optimiser proposes (the sensitivity warm start included);
    ``time_s``: a wall-clock cap on the trials (checked between rounds of proposals: a round
    started is finished). ``repeats``: interleaved timing rounds per candidate (0: no timing — the
    search then optimises size, and a latency budget is refused).

    ``proposal_batch``: trials the optimiser proposes together (``study.ask()`` that many times,
    with TPE's constant liar) before it is told their results, in proposal order. The sequential
    and the Ray run follow this same schedule, so the same seed gives the same trials however
    many workers measure them. ``ray``: run the trials on Ray — ``"local"`` (or ``True``) starts
    a local cluster for the run and shuts it down after; ``"auto"``, ``"HOST:PORT"`` or
    ``"ray://HOST:PORT"`` connects to a running one (deepshrink must be installed on its nodes);
    when the calling process has already called ``ray.init``, that cluster is used as it is.
    ``ray_workers``: trials measured at once (default: the cluster's CPUs // ``threads``); each
    worker reserves ``threads`` CPUs and runs with that many intra-op threads.

    ``score_batches``: the batch sizes every candidate's outputs are computed at on the held-out
    samples; its fidelity is the worst over them (default batch 1 only; ``quantize --scheme auto``
    scores at 1 and 32, the batch ``bench`` measures fidelity in, as dynamic int8's per-batch
    activation range can lose fidelity in batches).

    ``tie_break``: without a budget, among the candidates as fast as the fastest (not measurably
    slower round by round), the smallest file (``"size"``) or the most faithful on the samples
    chosen on (``"fidelity"``: held-out loss, then mean cosine).

    ``confidence``: a cosine target's mean must hold this many standard errors (of the per-sample
    cosines on the samples chosen on) below the measured mean — a point whose mean only just reaches
    the target on 96 samples misses it on unseen ones about half the time (MiniLM: 0.9971 chosen on,
    0.9965 on new sentences). 0: the measured mean (default); ``quantize --scheme auto`` uses 2.

    ``pack``: also search Deep Compression candidates (:mod:`.pack`: per-layer sparsity and k-means
    bits, fine-tuned, packed into ``.dsz``) — ``"auto"`` with a size budget when the model is
    PyTorch and the data labelled, ``"on"`` always (refused without both), ``"off"`` never.
    ``pack_trials``: Deep Compression candidates fine-tuned and built; ``pack_epochs``: (pruning,
    centroid fine-tuning) epochs of each.

    ``structured``: also search channel-pruned candidates (:mod:`.slim`: a fraction of every
    prunable group's channels removed, fine-tuned ``structured_epochs`` epochs; the ratios timed
    one-shot first) — ``"auto"`` with a latency budget when the model is PyTorch and the data
    labelled, ``"on"`` always (refused without both), ``"off"`` never. ``structured_trials``:
    ratios fine-tuned and built.
    """

    max_drop: float | None = Field(default=None, ge=0.0, le=100.0, description="accuracy points")
    target_cos: float | None = Field(default=None, gt=0.0, le=1.0)
    min_cos: float | None = Field(default=None, gt=0.0, le=1.0)
    budget: Budget | None = None
    choices: tuple[Choice, ...] = CHOICES
    group_size: int = Field(default=32, ge=16, le=256)
    codebook_bits: int = Field(default=4, ge=2, le=8)
    trials: int = Field(default=24, ge=1, le=100_000)
    time_s: float | None = Field(default=None, gt=0.0)
    seed: int = 0
    threads: int = Field(default=2, ge=1, le=256)
    repeats: int = Field(default=20, ge=0, le=100_000)
    final_repeats: int = Field(default=60, ge=1, le=100_000)
    sensitivity_samples: int = Field(default=64, ge=2, le=100_000)
    eval_samples: int = Field(default=1000, ge=2, le=1_000_000)
    score_batches: tuple[int, ...] = (1,)
    tie_break: Literal["size", "fidelity"] = "size"
    confidence: float = Field(default=0.0, ge=0.0, le=5.0)
    proposal_batch: int = Field(default=4, ge=1, le=1024)
    ray: str | None = None
    ray_workers: int | None = Field(default=None, ge=1, le=4096)
    pack: Literal["auto", "on", "off"] = "auto"
    pack_trials: int = Field(default=6, ge=1, le=10_000)
    pack_epochs: tuple[int, int] = (40, 10)
    structured: Literal["auto", "on", "off"] = "auto"
    structured_trials: int = Field(default=3, ge=1, le=100)
    structured_epochs: int = Field(default=30, ge=0, le=100_000)

    @field_validator("pack_epochs")
    @classmethod
    def _pack_epochs(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 0:
            raise ValueError("pack_epochs are (pruning, centroid fine-tuning) epochs, each 0 or more")
        return v

    @field_validator("score_batches")
    @classmethod
    def _score_batches(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or min(v) < 1:
            raise ValueError("score_batches are batch sizes (at least one, each 1 or more)")
        return v

    @field_validator("ray", mode="before")
    @classmethod
    def _ray(cls, v: object) -> object:
        if v is True:
            return LOCAL_RAY
        if v is False or v == "":
            return None
        return v

    @model_validator(mode="after")
    def _target(self) -> SearchConfig:
        if self.ray_workers is not None and self.ray is None:
            raise ValueError("ray_workers is the number of Ray workers; give ray too (ray='local' starts a local "
                             "cluster)")
        if self.max_drop is not None and self.target_cos is not None:
            raise ValueError("give either max_drop (accuracy points, with labels) or target_cos (output cosine), not both")
        if self.max_drop is None and self.target_cos is None:
            raise ValueError("give a fidelity target: max_drop (accuracy points, with labels) or target_cos")
        if self.min_cos is not None and self.target_cos is None:
            raise ValueError("min_cos is the worst-sample cosine that goes with target_cos; give target_cos too")
        if self.min_cos is not None and self.target_cos is not None and self.min_cos > self.target_cos:
            raise ValueError(f"min_cos {self.min_cos} is above target_cos {self.target_cos}: the worst sample "
                             "cannot beat the mean")
        if "float" not in self.choices or len(set(self.choices)) < 2:
            raise ValueError("choices must hold 'float' and at least one quantized kind")
        if self.budget is not None and self.budget.resource == "latency" and self.repeats == 0:
            raise ValueError("a latency budget needs timing: repeats must be at least 1")
        return self

    @property
    def metric(self) -> str:
        return "accuracy" if self.max_drop is not None else "cosine"

    @property
    def worst_cos(self) -> float | None:
        if self.target_cos is None:
            return None
        return self.min_cos if self.min_cos is not None else min(0.99, self.target_cos)


def family_wanted(setting: str, flag: str, why_not: str | None, config: SearchConfig, auto_budget: str,
                  family: str, say: object) -> bool:
    """The rule of an ``auto | on | off`` candidate family (``--pack``, ``--structured``).

    ``why_not``: why this model/data cannot have the family (``None``: it can). ``"on"`` refuses a
    model that cannot (:class:`InputError`, before any work); ``"auto"`` takes the family only under a
    budget on ``auto_budget`` (``"size"`` / ``"latency"``) and says in one line when it cannot.
    """
    if setting == "off":
        return False
    if setting == "on" and why_not is not None:
        raise InputError(f"{flag} on: {why_not}; use {flag} off (quantization choices only)")
    if setting == "auto" and (config.budget is None or config.budget.resource != auto_budget):
        return False
    if why_not is not None:
        say(f"no {family} candidates: {why_not}")  # type: ignore[operator]
        return False
    return True
