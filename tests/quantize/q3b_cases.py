"""Shared, cached test cases for the quantize part-B tests (MiniLM in ONNX, calibration text)."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def minilm_float():
    """(ONNX handle of MiniLM exported with the TorchScript exporter, tokenizer)."""
    from transformers import AutoTokenizer

    from deepshrink.examples import minilm_dir
    from deepshrink.loading import load
    from deepshrink.quantize.api import to_onnx_handle

    h = to_onnx_handle(load(str(minilm_dir())))
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    return h, tok


def tokenized(tok, texts: list[str]) -> dict[str, np.ndarray]:
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    return {k: np.asarray(enc[k]).astype(np.int64) for k in ("input_ids", "attention_mask")}


def embed_one_by_one(model, tok, texts: list[str]) -> np.ndarray:
    """Embeddings at batch 1 without padding (one request per sentence)."""
    from deepshrink.backends.onnx import make_session

    sess = make_session(model, threads=2)
    return np.concatenate([sess.run(None, tokenized(tok, [t]))[0] for t in texts])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)
