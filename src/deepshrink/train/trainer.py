"""A small, seedable training loop with checkpoint/resume, rich progress and DDP.

Written by hand rather than taken from a framework (Lightning, HF Trainer) because the
later capabilities need exactly three things from it — a pluggable loss (``step_fn``),
callbacks around each optimizer step (pruning masks, QAT observers, schedules) and
resumable checkpoints — and nothing else; a framework would add a heavy dependency.

Deterministic mode (``deterministic=True``, or ``DEEPSHRINK_DETERMINISTIC=1`` in the
environment when the argument is left at ``None``) trains on one intra-op thread with
``torch.use_deterministic_algorithms(True)`` and seeded data order, then restores the
caller's settings: the same seed gives the same weights whatever ``OMP_NUM_THREADS`` says.
Float kernels still differ between CPU families (AVX2 vs AVX-512 paths), so "the same" is
bit-exact on one machine and close elsewhere — tests set thresholds from a multi-seed
spread for that reason (see ``tests/README.md``).

Mixed precision (``mixed_precision="bf16"``): each step's forward pass and loss run under
``torch.autocast`` in bfloat16 (matrix products in bfloat16, reductions and losses in float32); the
weights, gradients and optimizer state stay float32, so no loss scaling is needed (bfloat16 has float32's
exponent range — Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training", 2019). On a CPU with
bfloat16 instructions (AVX512-BF16, AMX) a MiniLM training step takes ~0.5–0.6× the float32 time
(AMD EPYC, 1 thread, batch 32 × 48 tokens: 0.98 s against 1.64–2.00 s).

Under ``torchrun`` (``WORLD_SIZE`` > 1) it initialises a process group (gloo on CPU, nccl
when CUDA is present; ``DEEPSHRINK_BACKEND=gloo`` forces gloo), wraps the model in
``DistributedDataParallel`` and shards the data with ``DistributedSampler``; only rank 0
writes checkpoints and draws the progress bar. With ``global_batch=True`` the batch size is
the global one and every world size walks the same permutation, so N processes give the
single-process result up to float summation order (what distillation uses) — exactly so when
the sample count is a multiple of the world size (``DistributedSampler`` pads with repeated
samples otherwise) and the model has no BatchNorm (each rank normalises its own half-batch).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, TensorDataset

from ..core.fileio import atomic_path
from ..errors import InputError

StepFn = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]
ForwardFn = Callable[[nn.Module, Sequence[torch.Tensor]], Any]

DETERMINISTIC_ENV = "DEEPSHRINK_DETERMINISTIC"


def deterministic_default() -> bool:
    """Whether training is deterministic when not said otherwise: ``$DEEPSHRINK_DETERMINISTIC`` is 1/true/yes."""
    return os.environ.get(DETERMINISTIC_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def deterministic_training(enabled: bool = True) -> Iterator[None]:
    """One intra-op thread and deterministic algorithms inside the block; the caller's settings after.

    One thread fixes the order of every float reduction torch splits across threads, so a seeded
    run gives the same weights at any ``OMP_NUM_THREADS``; ``use_deterministic_algorithms`` makes
    torch refuse (``RuntimeError``) an op with no deterministic implementation instead of running it.
    """
    if not enabled:
        yield
        return
    threads = torch.get_num_threads()
    det, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)


class Callback:
    """Hooks around training; override what you need. ``trainer.model`` is the unwrapped model."""

    def on_train_begin(self, trainer: Trainer) -> None: ...
    def on_step_begin(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, loss: float) -> None: ...
    def on_epoch_end(self, trainer: Trainer) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    steps: int
    epochs: int
    losses: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None
    batchnorm_recalibrated: int = 0  # BatchNorm layers with momentum 0 whose statistics were recomputed


def default_step(model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`classification_loss` of ``model(*inputs)`` (its first output) against the last tensor of the batch
    (labels)."""
    *inputs, labels = batch
    out = model(*inputs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return classification_loss(out, labels)


def classification_loss(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of class scores ``out`` (N, C) against integer ``labels`` (N,). A model whose output is
    already probabilities (a softmax head, as most ONNX classifiers end: every value in [0, 1], each row summing to
    1 within 1e-3) gets the negative log-likelihood of those probabilities: cross-entropy would softmax them
    again, and could not go below ~0.31 for two classes (PP-OCR's direction classifier: every fine-tune ended
    at 0.33–0.36)."""
    if are_probabilities(out):
        return nn.functional.nll_loss(out.clamp_min(1e-12).log(), labels)
    return nn.functional.cross_entropy(out, labels)


def are_probabilities(out: torch.Tensor) -> bool:
    """Whether class scores ``out`` (N, C) are probabilities already (every value in [0, 1], each row summing to
    1 within 1e-3): the output of a softmax head."""
    with torch.no_grad():
        return out.dim() == 2 and bool(out.min() >= 0) and bool(out.max() <= 1) and bool(
            (out.sum(1) - 1).abs().max() < 1e-3)


def default_forward(model: nn.Module, batch: Sequence[torch.Tensor]) -> Any:
    """``model(*inputs)`` on a batch whose last tensor is the labels (what :func:`default_step` reads)."""
    return model(*batch[:-1])


BATCHNORM_RECALIBRATION_SAMPLES = 2048


def frozen_batchnorms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` whose running statistics training never updates (``momentum == 0``,
    as models ported from TensorFlow set it, e.g. torchcrepe)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats and m.momentum == 0]


def recalibrate_frozen_batchnorm(model: nn.Module, run: Callable[[Any], Any], batches: Sequence[Any]) -> int:
    """Recompute the running statistics of ``model``'s BatchNorm layers with ``momentum == 0``.

    Such layers never update their running mean/variance while training, so once the weights before them
    move, ``eval()`` normalises with the statistics of the weights training started from and the model's
    outputs drift away from what training optimised (the symptom: a training loss near 0 and a model far
    from it in eval mode). Each layer's statistics are recomputed as an exact average (``momentum=None``)
    over ``batches`` (``run(batch)`` runs the model on one), one layer at a time in the order the forward
    pass reaches them, every other module in ``eval()`` mode and earlier layers already on their new
    statistics, so each layer's statistics are those of what it reads in the model as it will be used —
    the BatchNorm recalibration done after pruning. ``momentum`` stays 0 afterwards and the model's mode is
    restored. Returns how many layers were recalibrated (0 when none has momentum 0 or ``batches`` is empty).
    """
    return _recalibrate_layers(model, frozen_batchnorms(model), run, batches)


@torch.no_grad()
def _recalibrate_layers(model: nn.Module, frozen: list[nn.Module], run: Callable[[Any], Any],
                        batches: Sequence[Any]) -> int:
    """:func:`recalibrate_frozen_batchnorm` on the ``frozen`` layers already found."""
    if not frozen or not batches:
        return 0
    was = model.training
    model.eval()
    order: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _a: order.append(mod) if mod not in order else None)
             for m in frozen]
    try:
        run(batches[0])
    finally:
        for h in hooks:
            h.remove()
    try:
        for m in order:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
            m.train()
            try:
                for b in batches:
                    run(b)
            finally:
                m.momentum = 0.0
                m.eval()
    finally:
        model.train(was)
    return len(order)


def batches_of(data: Any) -> Dataset:
    """Accept a ``Dataset``, a tuple of arrays/tensors ``(x..., y)`` or a ``(x, y)`` pair."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and data:
        tensors = [torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a for a in data]
        n = tensors[0].shape[0]
        if n == 0:
            raise InputError("training data is empty")
        if any(t.shape[0] != n for t in tensors):
            raise InputError(f"training arrays disagree on length: {[t.shape[0] for t in tensors]}")
        return TensorDataset(*tensors)
    raise InputError(f"cannot train on {type(data).__name__}; pass a Dataset or a tuple of arrays")


class LengthGroupedSampler(Sampler[int]):
    """Sample order that puts samples of similar length in the same batch, so padded batches waste little.

    Each epoch: a random permutation seeded by ``(seed, epoch)``, cut into pools of ``pool`` batches of
    ``batch_size`` samples; each pool sorted by ``lengths`` (longest first) and cut into batches; the full
    batches shuffled together, the one short batch (when ``len(lengths)`` is not a multiple of ``batch_size``)
    last. Batches stay random in what they hold apart from length, and every sample is drawn once per epoch.
    ``batch_size`` is the global batch: rank ``r`` of ``world`` yields ``order[r::world]`` (padded with the
    first samples to a multiple of ``world``, as ``DistributedSampler``), so a DataLoader with
    ``batch_size // world`` gives each rank its share of the same global batches. The "sortish" mega-batch
    scheme of fairseq and Hugging Face's ``group_by_length`` (pool 50 there too).

    ``lengths``: one non-negative int per sample (e.g. an attention mask's row sums). Raises
    ``InputError`` for a ``batch_size`` or ``pool`` below 1 or ``world`` not dividing ``batch_size``.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int = 0, world: int = 1, rank: int = 0,
                 pool: int = 50) -> None:
        if batch_size < 1 or pool < 1 or world < 1 or batch_size % world or not 0 <= rank < world:
            raise InputError(f"bad length grouping: batch_size={batch_size}, pool={pool}, world={world}, rank={rank}")
        self.lengths = torch.as_tensor(np.asarray(lengths)).long()
        self.batch_size, self.seed, self.world, self.rank, self.pool = batch_size, seed, world, rank, pool
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> list[int]:
        """This epoch's order of all samples (every rank's batches together), before the rank split."""
        n, b = len(self.lengths), self.batch_size
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(n, generator=g)
        batches: list[torch.Tensor] = []
        for i in range(0, n, b * self.pool):
            idx = perm[i:i + b * self.pool]
            idx = idx[torch.argsort(self.lengths[idx], descending=True, stable=True)]
            batches.extend(idx[j:j + b] for j in range(0, len(idx), b))
        short = [x for x in batches if len(x) < b]
        full = [x for x in batches if len(x) == b]
        order = torch.cat([full[k] for k in torch.randperm(len(full), generator=g).tolist()] + short)
        return order.tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        order += order[: -len(order) % self.world]
        return iter(order[self.rank::self.world])

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.world)


class Trainer:
    """``Trainer(model, epochs=3).fit((x, y))`` — see module docstring.

    ``lengths`` (one int per training sample) groups samples of similar length into the same batches
    (:class:`LengthGroupedSampler`) instead of a plain shuffle; the step function is expected to cut the
    padding off each batch.

    BatchNorm layers with ``momentum == 0`` (TensorFlow ports) are recalibrated on the first
    :data:`BATCHNORM_RECALIBRATION_SAMPLES` training samples before each evaluation and at the end
    (:func:`recalibrate_frozen_batchnorm`), through ``forward_fn(model, batch)`` — a forward pass without
    the loss; ``step_fn`` itself when it is not given. ``TrainResult.batchnorm_recalibrated`` counts them.

    ``mixed_precision``: ``"no"`` (float32) or ``"bf16"`` (bfloat16 autocast around ``step_fn``, see the module
    docstring); the loss it returns is cast to float32 before the backward pass. Raises ``InputError`` for
    another value.
    """

    def __init__(self, model: nn.Module, *, step_fn: StepFn | None = None, optimizer: str = "adam",
                 lr: float = 1e-3, weight_decay: float = 0.0, epochs: int = 1, max_steps: int | None = None,
                 batch_size: int = 64, seed: int = 0, callbacks: Iterable[Callback] = (),
                 eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
                 checkpoint_dir: str | os.PathLike[str] | None = None, checkpoint_every: int = 0,
                 progress: bool = True, lr_schedule: str = "constant", params: Iterable[nn.Parameter] | None = None,
                 deterministic: bool | None = None, global_batch: bool = False,
                 find_unused_parameters: bool = False, warmup_steps: int = 0,
                 lengths: Sequence[int] | None = None, forward_fn: ForwardFn | None = None,
                 mixed_precision: str = "no") -> None:
        if mixed_precision not in MIXED_PRECISION:
            raise InputError(f"unknown mixed_precision {mixed_precision!r}; use {' or '.join(MIXED_PRECISION)}")
        if epochs < 0 or batch_size < 1 or lr <= 0 or warmup_steps < 0:
            raise InputError(f"bad training settings: epochs={epochs}, batch_size={batch_size}, lr={lr}, "
                             f"warmup_steps={warmup_steps}")
        if lr_schedule not in SCHEDULES:
            raise InputError(f"unknown lr_schedule {lr_schedule!r}; use {', '.join(SCHEDULES)}")
        self.model = model
        self.step_fn = step_fn or default_step
        self.optimizer_name = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.seed = seed
        self.callbacks = list(callbacks)
        self.eval_fn = eval_fn
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.lr_schedule = lr_schedule
        self.warmup_steps = warmup_steps
        self._params = list(params) if params is not None else None
        self.deterministic = deterministic_default() if deterministic is None else bool(deterministic)
        self.global_batch = global_batch
        self.find_unused_parameters = find_unused_parameters
        self.lengths = lengths
        # runs the model on a batch without the loss (BatchNorm recalibration); step_fn when not given
        self.forward_fn: ForwardFn = forward_fn or (default_forward if step_fn is None else self.step_fn)
        self.mixed_precision = mixed_precision
        self.step = 0
        self.epoch = 0
        self.total_steps = 0

    # -- distributed -------------------------------------------------------------------
    @staticmethod
    def _maybe_init_distributed() -> tuple[int, int]:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() and os.environ.get("DEEPSHRINK_BACKEND") != "gloo"
                                    else "gloo")
        if dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        raise InputError(f"unknown optimizer {self.optimizer_name!r}; use adam, adamw or sgd")

    # -- checkpoints -------------------------------------------------------------------
    def _ckpt_path(self) -> Path | None:
        return self.checkpoint_dir / "last.ckpt" if self.checkpoint_dir else None

    def save_checkpoint(self, opt: torch.optim.Optimizer) -> None:
        path = self._ckpt_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.model.state_dict(), "optimizer": opt.state_dict(), "step": self.step,
            "epoch": self.epoch, "torch_rng": torch.get_rng_state(),
            "callbacks": [cb.state_dict() for cb in self.callbacks],
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def _maybe_resume(self, opt: torch.optim.Optimizer) -> int | None:
        path = self._ckpt_path()
        if path is None or not path.exists():
            return None
        try:
            state = torch.load(path, weights_only=True)
        except Exception as exc:  # truncated or foreign file
            raise InputError(f"checkpoint {path} cannot be read ({type(exc).__name__}); delete it to start over") from None
        self.model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        torch.set_rng_state(state["torch_rng"])
        for cb, cb_state in zip(self.callbacks, state.get("callbacks", []), strict=False):
            cb.load_state_dict(cb_state)
        return self.step

    # -- loop --------------------------------------------------------------------------
    def fit(self, train_data: Any, val_data: Any = None) -> TrainResult:
        """Train on ``train_data`` (see :func:`batches_of`); deterministic when the trainer says so."""
        with deterministic_training(self.deterministic):
            return self._fit(train_data, val_data)

    def _fit(self, train_data: Any, val_data: Any = None) -> TrainResult:
        rank, world = self._maybe_init_distributed()
        torch.manual_seed(self.seed)
        dataset = batches_of(train_data)
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise InputError("training data is empty")
        batch_size = self.batch_size
        if self.global_batch:
            # batch_size is the global batch: each of the `world` ranks takes batch_size / world samples of
            # one shared permutation (rank r: perm[r::world]), so rank batches j together are exactly the
            # single-process batch j and the averaged DDP gradient equals the one-process gradient
            if self.batch_size % world:
                raise InputError(f"batch size {self.batch_size} does not split evenly over {world} processes; "
                                 f"use a multiple of {world}")
            batch_size = self.batch_size // world
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, seed=self.seed)
        else:
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, seed=self.seed) if world > 1 else None
        if self.lengths is not None:
            if len(self.lengths) != len(dataset):  # type: ignore[arg-type]
                raise InputError(f"{len(self.lengths)} lengths for {len(dataset)} training samples")  # type: ignore[arg-type]
            sampler = LengthGroupedSampler(self.lengths, batch_size * world if not self.global_batch else self.batch_size,
                                           seed=self.seed, world=world, rank=rank)
        gen = torch.Generator().manual_seed(self.seed)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None,
                            sampler=sampler, generator=gen, drop_last=False)
        wrapped: nn.Module = self.model
        device = None
        if world > 1:
            device_ids = None
            if torch.cuda.is_available() and dist.get_backend() == "nccl":
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # batches follow it
                torch.cuda.set_device(device)
                self.model.to(device)
                device_ids = [device.index]
            wrapped = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids,
                                                        find_unused_parameters=self.find_unused_parameters)
        params = self._params if self._params is not None else [p for p in self.model.parameters() if p.requires_grad]
        opt = self._make_optimizer(params)
        steps_per_epoch = len(loader)
        self.total_steps = self.max_steps or steps_per_epoch * self.epochs
        sched = self._make_schedule(opt)
        resumed = self._maybe_resume(opt)
        if resumed is not None and sched is not None:
            for _ in range(self.step):
                sched.step()
        result = TrainResult(steps=self.step, epochs=self.epoch, resumed_from=resumed)
        for cb in self.callbacks:
            cb.on_train_begin(self)
        show = self.progress and rank == 0
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        from ..core.progress import progress_bar

        columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                   TextColumn("{task.fields[metric]}"), TimeRemainingColumn())
        with progress_bar(*columns, show=show) as bar:
            task = bar.add_task("train", total=self.total_steps, completed=self.step, loss="-", metric="")
            self.model.train()
            while self.step < self.total_steps:
                if sampler is not None:
                    sampler.set_epoch(self.epoch)
                gen.manual_seed(self.seed * 100_003 + self.epoch)  # each epoch's order depends only on (seed, epoch): resumable
                skip = self.step - self.epoch * steps_per_epoch  # batches already done in a resumed epoch
                for i, batch in enumerate(loader):
                    if i < skip:
                        continue
                    if self.step >= self.total_steps:
                        break
                    for cb in self.callbacks:
                        cb.on_step_begin(self)
                    if device is not None:
                        batch = [t.to(device) for t in batch]
                    with self._autocast():
                        loss = self.step_fn(wrapped, batch)
                    loss = loss.float()
                    if not torch.isfinite(loss):
                        raise InputError(f"training loss became {loss.item()} at step {self.step}; lower the learning rate")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    self.step += 1
                    value = float(loss.detach())
                    if world > 1:  # the global batch's loss, as one process reports it: the mean of the ranks' losses
                        shared = loss.detach().reshape(1).clone()
                        dist.all_reduce(shared)
                        value = float(shared) / world
                    result.losses.append(value)
                    for cb in self.callbacks:
                        cb.on_step_end(self, value)
                    bar.update(task, advance=1, loss=f"{value:.4f}")
                    if self.checkpoint_every and self.step % self.checkpoint_every == 0 and rank == 0:
                        self.save_checkpoint(opt)
                else:
                    self.epoch += 1
                    for cb in self.callbacks:
                        cb.on_epoch_end(self)
                    if self.eval_fn is not None and rank == 0:
                        self._recalibrate(dataset)  # judged with the statistics it will be used with
                        self.model.eval()
                        result.evals.append(self.eval_fn(self.model))
                        bar.update(task, metric=" ".join(f"{k} {v:.4f}" for k, v in result.evals[-1].items()))
                        self.model.train()
                    continue
                break
        result.batchnorm_recalibrated = self._recalibrate(dataset)
        self.model.eval()
        for cb in self.callbacks:
            cb.on_train_end(self)
        if rank == 0 and self.checkpoint_dir is not None:
            self.save_checkpoint(opt)
        result.steps, result.epochs = self.step, self.epoch
        return result

    def _recalibrate(self, dataset: Any) -> int:
        """:func:`recalibrate_frozen_batchnorm` on the first training samples, in order, at the training
        batch size (the same samples on every process)."""
        frozen = frozen_batchnorms(self.model)
        if not frozen:
            return 0
        n = min(len(dataset), BATCHNORM_RECALIBRATION_SAMPLES)
        batches = list(DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=self.batch_size))
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        if device.type != "cpu":  # the model moved to its GPU under nccl: its batches follow it
            batches = [[t.to(device) for t in b] for b in batches]
        return _recalibrate_layers(self.model, frozen, lambda b: self.forward_fn(self.model, b), batches)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's precision: bfloat16 autocast on the model's device, or nothing (float32)."""
        if self.mixed_precision == "no":
            return contextlib.nullcontext()
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def _make_schedule(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
        if self.lr_schedule == "constant" and not self.warmup_steps:
            return None
        kind, total, warm = self.lr_schedule, self.total_steps, self.warmup_steps
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(kind, s, total, warm))


SCHEDULES = ("constant", "cosine", "linear")
MIXED_PRECISION = ("no", "bf16")


def native_bf16() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (``avx512_bf16`` or ``amx_bf16`` among the
    ``/proc/cpuinfo`` flags; False where that file is absent). Without them ``mixed_precision="bf16"`` still
    runs, on converted float32 kernels, and is slower than float32."""
    from ..core.cpu import cpu_flags

    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """The learning rate at optimizer step ``step`` (0-based) of ``total``, as a fraction of the peak.

    A linear warmup over the first ``warmup`` steps ((step + 1) / warmup), then ``constant`` (1),
    ``cosine`` (½(1 + cos(π·p)), Loshchilov & Hutter, SGDR 2017) or ``linear`` (1 − p) decay, where p is
    the fraction of the steps after the warmup already taken (0 → 1). Raises ``InputError`` for another name.
    """
    if schedule not in SCHEDULES:
        raise InputError(f"unknown lr_schedule {schedule!r}; use {', '.join(SCHEDULES)}")
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    p = min(step - warmup, max(1, total - warmup)) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * p)) if schedule == "cosine" else 1.0 - p


@torch.no_grad()
def accuracy_of(model: nn.Module, x: Any, y: Any, batch_size: int = 512) -> float:
    """Top-1 accuracy (0..1) of a classifier on arrays ``x``, ``y``."""
    model.eval()
    xt, yt = torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(y))
    if len(xt) == 0:
        raise InputError("evaluation data is empty")
    correct = 0
    for i in range(0, len(xt), batch_size):
        out = model(xt[i:i + batch_size])
        if isinstance(out, (tuple, list)):
            out = out[0]
        correct += int((out.argmax(-1) == yt[i:i + batch_size]).sum())
    return correct / len(xt)
