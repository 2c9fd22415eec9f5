"""Sizes for dims a model leaves dynamic, when nobody said which size to use.

A 4-D input with a fixed channel dim of 1, 3 or 4 (first or last) and dynamic height/width is
taken as an image. Its size comes from the model's metadata (Ultralytics' ``imgsz``, or
``image_size``/``input_size``) or else is 224 × 224, the size of the ImageNet-style networks most
vision exports come from: large enough for the pooling, striding and reflect padding of real
networks, where the 1 × 1 or 7 × 7 that a generic filler gives makes them fail or count a few
FLOPs for a GFLOPs model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

DEFAULT_IMAGE_SIZE = (224, 224)
_SIZE_KEYS = ("imgsz", "image_size", "input_size", "img_size")


def metadata_image_size(metadata: Mapping[str, str] | None) -> tuple[int, int] | None:
    """``(H, W)`` stated in model metadata (``imgsz: [320, 320]`` or ``imgsz: 640``), else None."""
    for key in _SIZE_KEYS:
        raw = (metadata or {}).get(key)
        if raw is None:
            continue
        try:
            val = json.loads(raw)
        except ValueError:
            val = [int(v) for v in re.findall(r"\d+", raw)]
        if isinstance(val, int):
            val = [val, val]
        if isinstance(val, list) and len(val) == 1:
            val = val * 2
        if isinstance(val, list) and len(val) == 2 and all(isinstance(v, int) and v > 0 for v in val):
            return int(val[0]), int(val[1])
    return None


def _fixed(d: object) -> bool:
    return isinstance(d, int) and d > 0


def image_axes(spec: Any) -> tuple[int, int] | None:
    """The (H, W) axes of an image-like input with a dynamic H or W (or both; a text-line
    recogniser declares ``[1, 1, 64, width]``): NCHW or NHWC, channels fixed at 1, 3 or 4. None
    for any other input."""
    s = spec.shape
    if len(s) != 4 or spec.dtype not in ("float32", "float16", "float64", "uint8"):
        return None
    nchw = _fixed(s[1]) and s[1] in (1, 3, 4) and not (_fixed(s[2]) and _fixed(s[3]))
    nhwc = _fixed(s[3]) and s[3] in (1, 3, 4) and not (_fixed(s[1]) and _fixed(s[2]))
    if nchw:  # both readings possible ([n, 3, h, 3]): channels first, the common export layout
        return 2, 3
    if nhwc:
        return 1, 2
    return None


def assumed_shape(spec: Any, metadata: Mapping[str, str] | None, *, batch: int = 1,
                  default: int = 1) -> tuple[tuple[int, ...], str | None]:
    """A concrete shape for ``spec`` and, when an image size was assumed, the reason in words.

    Dynamic H/W of an image-like input get the metadata size or 224 × 224; other dynamic dims
    get ``batch`` (first) or ``default``."""
    shape = list(spec.concrete(batch=batch, default=default))
    axes = image_axes(spec)
    if axes is None:
        return tuple(shape), None
    meta = metadata_image_size(metadata)
    h, w = meta or DEFAULT_IMAGE_SIZE
    for axis, size in zip(axes, (h, w), strict=True):
        if not _fixed(spec.shape[axis]):  # a fixed H (a text line's 64 pixels) stays as declared
            shape[axis] = size
    why = "the model's metadata" if meta else "the default for image inputs"
    return tuple(shape), f"{spec.name} at {'x'.join(map(str, shape))} ({why})"


def fixed_batch(specs: Any) -> int | None:
    """The batch a graph is fixed at: the smallest first dim that any input declares as a fixed size
    (zoo CNNs at 1; silero VAD v6's state ``h: [1, 1, 128]`` beside ``input: [n, 576]``), or ``None``
    when every input's first dim is free. ``specs``: :class:`TensorSpec`-like objects with ``shape``."""
    fixed = [s.shape[0] for s in specs if s.shape and _fixed(s.shape[0])]
    return min(fixed) if fixed else None


def join_batches(runs: list[list[Any]]) -> list[Any]:
    """Each output of a model run batch by batch (``runs[b][k]``: output ``k`` of batch ``b``, numpy arrays),
    the batches joined on axis 0 — or None for an output that cannot be joined (a scalar, or a shape that
    varies between batches on another axis). Length: the fewest outputs any run returned."""
    import numpy as np

    joined: list[Any] = []
    for k in range(min(len(r) for r in runs)):
        parts = [np.asarray(r[k]) for r in runs]
        try:
            joined.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
        except ValueError:
            joined.append(None)
    return joined
