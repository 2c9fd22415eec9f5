"""Per-layer quantization sensitivity measured on the ONNX model with the user's data.

``layer_sensitivity`` quantizes one layer at a time (every other layer stays float) with
the scheme's own ONNX Runtime pass and scores ``1 - mean cosine`` of the outputs against
the float model — so the score is what that layer alone costs in the deployed runtime,
not in a simulation. Plain data (``{layer_name: score}``) so search/auto can reuse it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from ...convert.parity import compare_outputs

QuantizeFn = Callable[[onnx.ModelProto, Sequence[str]], onnx.ModelProto]


class OutputView(np.ndarray):
    """Several floating-point outputs of a model side by side, ``(N, D_1 + D_2 + ...)`` float64, each flattened
    per sample; ``widths``: the ``D_k``. :func:`deepshrink.convert.parity.per_sample_cosines` reads a view output
    by output and gives each sample its worst output's cosine (an output with one value per sample — a
    presence score — by its cosine over all the samples, where one sample's would be only its sign).
    ``first_shape``: the first output's own shape; its block comes first, so its argmax (accuracy) is the
    output's own."""

    first_shape: tuple[int, ...] = ()
    widths: tuple[int, ...] = ()

    def __array_finalize__(self, obj: Any) -> None:
        self.first_shape = getattr(obj, "first_shape", ())
        self.widths = getattr(obj, "widths", ())


def output_view(outputs: list[np.ndarray]) -> np.ndarray:
    """The first output as it is when it is the only one; else an :class:`OutputView` of all of them."""
    if len(outputs) == 1:
        return outputs[0]
    n = len(outputs[0])
    blocks = [out.reshape(n, -1).astype(np.float64) for out in outputs]
    view = np.concatenate(blocks, axis=1).view(OutputView)
    view.first_shape, view.widths = tuple(outputs[0].shape), tuple(b.shape[1] for b in blocks)
    return view


def run_outputs(model: onnx.ModelProto, inputs: dict[str, np.ndarray], *, batch: int = 16, threads: int = 2) -> np.ndarray:
    """What fidelity is measured on: ``model``'s first output on ``inputs``, run in batches — or, when the model
    has further floating-point outputs with a sample axis (a detector's boxes and landmarks beside its
    scores), an :func:`output_view` of all of them, so a cosine target must hold for every output, not for the
    first alone."""
    from ...backends.onnx import make_session

    sess = make_session(model, threads=threads)
    names = [i.name for i in sess.get_inputs()]
    from ...core.shapes import fixed_batch, join_batches

    batch = fixed_batch(sess.get_inputs()) or batch  # a graph fixed at batch B (zoo CNNs, ddddocr: 1): B at a time
    n = len(next(iter(inputs.values())))
    first, *rest = join_batches([sess.run(None, _trim({k: inputs[k][i:i + batch] for k in names}))
                                 for i in range(0, n, batch)])
    if first is None or first.ndim == 0:
        raise ValueError("the model's first output cannot be joined over batches (no sample axis)")
    if len(first) != n or not np.issubdtype(first.dtype, np.floating):
        return first
    # further floating-point outputs with a sample axis; a recurrent state (layers, batch, hidden) is left out
    more = [o for o in rest if o is not None and np.issubdtype(o.dtype, np.floating) and len(o) == n]
    return output_view([first, *more])


def _trim(feed: dict[str, np.ndarray], mask_name: str = "attention_mask") -> dict[str, np.ndarray]:
    """Drop trailing padding of a tokenized batch (as a real single request would have none)."""
    mask = feed.get(mask_name)
    if mask is None or mask.ndim != 2:
        return feed
    keep = int(mask.sum(1).max())
    if keep == 0 or not (mask[:, keep:] == 0).all():
        return feed
    return {k: (v[:, :keep] if v.ndim >= 2 and v.shape[:2] == mask.shape else v) for k, v in feed.items()}


def fidelity(reference: np.ndarray, model: onnx.ModelProto, inputs: dict[str, np.ndarray], *,
             batch: int = 1) -> tuple[float, float]:
    """(mean, worst) per-sample cosine of ``model``'s first output against ``reference``.

    Batch 1 by default: dynamic int8 picks one activation range per batch, so the batch a
    sample is run in changes its result; one at a time is the deployment case we target.
    """
    d = compare_outputs(reference, run_outputs(model, inputs, batch=batch))
    return d.cos_mean, d.cos_min


def deployed_fidelity(reference: tuple[np.ndarray, np.ndarray], model: onnx.ModelProto,
                      inputs: dict[str, np.ndarray], *, batch: int = 16) -> tuple[float, float]:
    """Worse of one-at-a-time and batched fidelity; ``reference`` = (float outputs at batch 1, at ``batch``).

    Dynamic int8 picks one activation range per batch, so a model that is fine one request
    at a time can lose fidelity in padded batches (and the reverse); both are checked.
    """
    a = compare_outputs(reference[0], run_outputs(model, inputs, batch=1))
    b = compare_outputs(reference[1], run_outputs(model, inputs, batch=batch))
    return min(a.cos_mean, b.cos_mean), min(a.cos_min, b.cos_min)


def layer_sensitivity(model: onnx.ModelProto, layers: Sequence[str], inputs: dict[str, np.ndarray],
                      quantize_fn: QuantizeFn, *, reference: np.ndarray | None = None,
                      progress: bool = False) -> dict[str, float]:
    """``{layer: 1 - mean cosine}`` with only that layer quantized; higher = more sensitive."""
    ref = run_outputs(model, inputs, batch=1) if reference is None else reference
    it: Any = layers
    if progress:
        from rich.progress import track

        it = track(layers, description="sensitivity", transient=True)
    scores: dict[str, float] = {}
    for name in it:
        q = quantize_fn(model, [name])
        mean, _ = fidelity(ref, q, inputs)
        scores[name] = float(max(0.0, 1.0 - mean))
    return scores


def dynamic_int8_fn(per_channel: bool = True, reduce_range: bool = False) -> QuantizeFn:
    from .backend import quantize_dynamic_int8

    return lambda m, nodes: quantize_dynamic_int8(m, nodes, per_channel=per_channel, reduce_range=reduce_range)
