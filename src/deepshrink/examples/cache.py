"""Where built-in trained models are cached: ``$DEEPSHRINK_CACHE`` or the user cache dir.

A cached model's file name carries a digest of its training recipe and the torch version
(:func:`cache_key`), so a file trained under another setting is never loaded in its place.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn


def cache_dir() -> Path:
    root = os.environ.get("DEEPSHRINK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "deepshrink")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(name: str, **setting: Any) -> str:
    """A file stem for a trained model: its name plus a digest of everything that changes the weights.

    ``setting`` holds the training recipe (seed, epochs, lr, ...); the torch version is added, so a
    cache written by another torch build (whose kernels may round differently) is never reused.
    """
    setting = {**setting, "torch": torch.__version__}
    digest = hashlib.sha256(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()[:12]
    seed = setting.get("seed")
    return f"{name}-seed{seed}-{digest}" if seed is not None else f"{name}-{digest}"


def load_cached(model: nn.Module, path: Path) -> bool:
    """Load cached weights into ``model``; a stale or truncated cache file is deleted (retrain)."""
    from safetensors.torch import load_file

    if not path.exists():
        return False
    try:
        model.load_state_dict(load_file(str(path)))
        return True
    except Exception:
        path.unlink(missing_ok=True)
        return False


def save_cached(model: nn.Module, path: Path) -> None:
    """Write ``model``'s weights to the cache atomically."""
    from safetensors.torch import save_file

    from ..core.fileio import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
