"""A small character-level GPT trained on the Python standard library's own source.

The LLM-shaped case for weight-only quantization (RTN vs GPTQ): 6 pre-norm transformer
blocks, d=128 (so group sizes 32/64/128 divide every input dimension), 4 heads, context 128,
about 1.2 M parameters, every projection an
``nn.Linear`` (``blocks.{i}.attn.qkv / attn.proj / mlp.fc1 / mlp.fc2`` and ``head``).
Text: the ``.py`` files under ``sysconfig.get_paths()['stdlib']`` in sorted order (tests,
idlelib and site-packages left out); a file goes to the held-out split when the CRC32 of
its relative path is divisible by 10, so train and validation never share a file.
Characters outside printable ASCII map to one unknown id. Trained once with
``deepshrink.train.Trainer`` (1000 steps: about 5 minutes on 2 idle cores, held-out
perplexity 8.95) and cached like the digits models. 400 steps (perplexity 11.9) left a model
so smooth that int4 rounding did not move its perplexity at all.
"""

from __future__ import annotations

import math
import shutil
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError
from .cache import cache_dir, cache_key, load_cached, save_cached

_VERSION = 2
_CHARS = "\n\t" + "".join(chr(c) for c in range(32, 127))
VOCAB_SIZE = len(_CHARS) + 1  # + unknown
_UNK = len(_CHARS)
_LUT = np.full(128, _UNK, dtype=np.uint8)
for _i, _c in enumerate(_CHARS):
    _LUT[ord(_c)] = _i
_SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip", "__pycache__",
               "dist-packages"}


def encode(text: str) -> np.ndarray:
    """Characters → uint8 ids (non-ASCII → the unknown id)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    out = np.full(codes.shape, _UNK, dtype=np.uint8)
    ascii_mask = codes < 128
    out[ascii_mask] = _LUT[codes[ascii_mask]]
    return out


def decode(ids: np.ndarray | list[int]) -> str:
    return "".join(_CHARS[i] if i < len(_CHARS) else "?" for i in np.asarray(ids).tolist())


@dataclass(frozen=True)
class CharData:
    """Encoded training and held-out text (uint8 ids) and the files they came from."""

    train: np.ndarray
    val: np.ndarray
    train_files: int
    val_files: int


def chargpt_data(max_train_chars: int = 4_000_000, max_val_chars: int = 400_000) -> CharData:
    """Deterministic train/held-out split of the stdlib's ``.py`` files (split by file)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not (_SKIP_PARTS & set(p.relative_to(root).parts)))
    if not files:
        raise InputError(f"no standard-library .py files found under {root}")
    train: list[str] = []
    val: list[str] = []
    n_train = n_val = 0
    n_tf = n_vf = 0
    for p in files:
        rel = p.relative_to(root).as_posix()
        held_out = zlib.crc32(rel.encode()) % 10 == 0
        if (held_out and n_val >= max_val_chars) or (not held_out and n_train >= max_train_chars):
            if n_val >= max_val_chars and n_train >= max_train_chars:
                break
            continue
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if held_out:
            val.append(text)
            n_val += len(text)
            n_vf += 1
        else:
            train.append(text)
            n_train += len(text)
            n_tf += 1
    tr = encode("\n".join(train))[:max_train_chars]
    va = encode("\n".join(val))[:max_val_chars]
    return CharData(tr, va, n_tf, n_vf)


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(d, 3 * d)
        self.attn.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(d, 4 * d)
        self.mlp.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.attn.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.ln2(x))))


class CharGPT(nn.Module):
    """Decoder-only transformer over characters; ``forward(ids (B, T)) -> logits (B, T, vocab)``."""

    def __init__(self, vocab: int = VOCAB_SIZE, context: int = 128, d: int = 128, layers: int = 6,
                 heads: int = 4) -> None:
        super().__init__()
        if d % heads:
            raise InputError(f"CharGPT: width {d} is not divisible by {heads} heads")
        self.context = context
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for blk in self.blocks:  # GPT-2 style: residual projections scaled by depth
            for lin in (blk.attn.proj, blk.mlp.fc2):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * layers))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        if t > self.context:
            raise InputError(f"CharGPT: sequence length {t} exceeds the context of {self.context}")
        x = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


def _lm_step(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    x, y = batch
    logits = model(x.long())
    return F.cross_entropy(logits.flatten(0, 1), y.long().flatten())


def windows(ids: np.ndarray, n: int, context: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random (input, next-char target) windows of length ``context``."""
    if len(ids) <= context + 1:
        raise InputError(f"text of {len(ids)} characters is shorter than the context {context}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - context - 1, size=n)
    idx = starts[:, None] + np.arange(context + 1)[None]
    chunk = ids[idx].astype(np.int64)
    return chunk[:, :-1], chunk[:, 1:]


def train_chargpt(model: CharGPT, data: CharData, *, steps: int, batch_size: int = 32, lr: float = 3e-3,
                  seed: int = 0, progress: bool = True, checkpoint_dir: str | Path | None = None,
                  callbacks: list[Any] | None = None) -> CharGPT:
    """Train on random windows of the training text with the shared Trainer (AdamW, cosine).

    With ``checkpoint_dir`` the run checkpoints every 25 steps and an interrupted run resumes.
    """
    from ..train import Trainer

    x, y = windows(data.train, steps * batch_size, model.context, seed)
    Trainer(model, step_fn=_lm_step, optimizer="adamw", lr=lr, weight_decay=0.01, epochs=1, max_steps=steps,
            batch_size=batch_size, seed=seed, progress=progress, lr_schedule="cosine",
            checkpoint_dir=checkpoint_dir, checkpoint_every=25 if checkpoint_dir else 0,
            callbacks=callbacks or ()).fit((x, y))
    return model.eval()


@torch.no_grad()
def perplexity(model: nn.Module, ids: np.ndarray, *, context: int = 128, max_tokens: int | None = 65_536,
               batch_size: int = 32) -> float:
    """exp(mean next-character cross-entropy) over consecutive non-overlapping windows."""
    ids = np.asarray(ids)
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    n = (len(ids) - 1) // context
    if n < 1:
        raise InputError(f"need more than {context} characters of text to measure perplexity, got {len(ids)}")
    x = torch.from_numpy(ids[: n * context].astype(np.int64)).view(n, context)
    y = torch.from_numpy(ids[1: n * context + 1].astype(np.int64)).view(n, context)
    model.eval()
    total = 0.0
    for i in range(0, n, batch_size):
        logits = model(x[i:i + batch_size])
        total += float(F.cross_entropy(logits.flatten(0, 1), y[i:i + batch_size].flatten(), reduction="sum"))
    return math.exp(total / (n * context))


chargpt_perplexity = perplexity


def trained_chargpt(seed: int = 0, steps: int = 1000, progress: bool = True,
                    callbacks: list[Any] | None = None) -> CharGPT:
    """The char-GPT trained for ``steps`` AdamW steps (batch 32 x 128 chars), cached.

    Training checkpoints into the cache folder, so an interrupted first run resumes.
    """
    stem = cache_key("chargpt", version=_VERSION, seed=seed, steps=steps, batch_size=32, lr=3e-3)
    path = cache_dir() / f"{stem}.safetensors"
    torch.manual_seed(seed)
    model = CharGPT()
    if load_cached(model, path):
        return model.eval()
    ckpt = cache_dir() / f"{stem}.ckpt"
    train_chargpt(model, chargpt_data(), steps=steps, seed=seed, progress=progress, checkpoint_dir=ckpt,
                  callbacks=callbacks)
    save_cached(model, path)
    shutil.rmtree(ckpt, ignore_errors=True)
    return model


__all__ = ["CharData", "CharGPT", "VOCAB_SIZE", "chargpt_data", "chargpt_perplexity", "decode", "encode",
           "perplexity", "train_chargpt", "trained_chargpt", "windows"]
