"""Where built-in trained models are cached: ``$DEEPSHRINK_CACHE`` or the user cache dir."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("DEEPSHRINK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "deepshrink")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
