"""Where built-in trained models are cached: ``$DEEPSHRINK_CACHE`` or the user cache dir."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn


def cache_dir() -> Path:
    root = os.environ.get("DEEPSHRINK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "deepshrink")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
