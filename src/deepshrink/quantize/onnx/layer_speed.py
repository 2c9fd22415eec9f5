"""Per-layer latency of int8 against float: each weight layer timed alone, at the size it runs at.

``quantize --scheme auto`` chooses among int8 layouts by timing whole models (:mod:`.auto`,
step 4). Whole-model timing splits the layers by op type; whether int8 pays also depends on each
layer's shapes (a 3×3 Conv on a 160×160 map gains from ``QLinearConv``, the same Conv on 5×5 loses
to the quantize/dequantize around it). This module measures that per layer:

1. Run the float model once per sample on a few calibration samples and keep each layer's
   activation input (extra graph outputs; the shapes are the real ones, dynamic dims included).
2. For every layer, a one-node model (the node, its initializer inputs, the captured input's
   shape) in float and in each int8 form asked for (``builders``: name → ``fn(model, [node],
   data)``, the same ORT quantizers the whole-model layouts use), timed interleaved with
   :func:`deepshrink.evaluate.latency.measure_latency` on the captured input at batch 1.
3. ``{layer: {form: ratio}}``: the median per-round int8/float latency ratio of that layer.

A one-node int8 model pays for the quantization of its input and the dequantization of its output;
inside a run of int8 layers these are shared, so the per-layer ratios lean against int8. The
per-layer layout built from them is one more candidate that the whole-model timing judges; it does
not replace it. Layers with the same op, attributes, input shape and weight shape are timed once.

Written here because no library offers it: ORT's profiler reports per-node times of one graph, but
the nodes of a float and a quantized graph do not correspond one to one (fusions rename and merge
them), and the quantization tools (ORT, NNCF, Neural Compressor) choose layers by accuracy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

MAX_LAYERS = 400  # beyond this many weight layers the per-layer pass is skipped (its cost grows linearly)
SAMPLES = 2  # calibration samples captured per layer (static int8 ranges of the one-node models)

LayerBuilder = Callable[[onnx.ModelProto, list[str], dict[str, np.ndarray]], onnx.ModelProto]


def layer_inputs(model: onnx.ModelProto, layers: Sequence[str], data: dict[str, np.ndarray], *,
                 samples: int = SAMPLES) -> dict[str, np.ndarray]:
    """``{layer: its first input}`` over the first ``samples`` samples of ``data``, run one at a time.

    Shape ``[k, *shape[1:]]`` per layer, ``k ≤ samples`` (``arr[i:i+1]`` is sample ``i``'s input at
    batch 1; samples whose input shape differs from the first one's, as trimmed sequences do, are
    left out). Only layers whose first input is a float tensor computed by the graph (not an
    initializer) with a leading batch axis of 1 are returned."""
    from ...backends.onnx import make_session
    from .sensitivity import _trim

    inits = {t.name for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    wanted = {name: by_name[name].input[0] for name in layers if name in by_name
              and by_name[name].input and by_name[name].input[0] not in inits}
    if not wanted:
        return {}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for t in dict.fromkeys(wanted.values()):
        if t not in have:
            m.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    sess = make_session(m, threads=1)
    feeds = [i.name for i in sess.get_inputs()]
    outs = [o.name for o in sess.get_outputs()]
    n = len(next(iter(data.values())))
    got: dict[str, list[np.ndarray]] = {t: [] for t in set(wanted.values())}
    for i in range(min(samples, n)):
        res = dict(zip(outs, sess.run(None, _trim({k: data[k][i:i + 1] for k in feeds})), strict=True))
        for t in got:
            got[t].append(np.asarray(res[t]))
    out = {}
    for layer, t in wanted.items():
        arrs = [a for a in got[t] if a.shape == got[t][0].shape]  # trimmed sequences differ in length: keep the first's
        if arrs and arrs[0].dtype == np.float32 and arrs[0].ndim and arrs[0].shape[0] == 1:  # a batch axis to stack on
            out[layer] = np.concatenate(arrs)
    return out


def single_node_model(model: onnx.ModelProto, layer: str, x: np.ndarray) -> onnx.ModelProto | None:
    """``layer`` alone: input ``x`` (float32, the shape of one captured sample; the batch dim left
    free), its other inputs
    as the initializers they are in ``model``, one float output. ``None`` when another input is
    computed by the graph (it could not be fed the right values)."""
    inits = {t.name: t for t in model.graph.initializer}
    node = next((n for n in model.graph.node if n.name == layer), None)
    if node is None:
        return None
    others = [i for i in node.input[1:] if i]
    if any(i not in inits for i in others):
        return None
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    del copy.output[1:]
    copy.input[0] = "x"
    copy.output[0] = "y"
    shape: list[Any] = ["batch", *x.shape[1:]]  # the batch is left free so calibration can feed several samples
    g = helper.make_graph([copy], "layer", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                          [inits[i] for i in dict.fromkeys(others)])
    m = helper.make_model(g, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    return m


def _signature(model: onnx.ModelProto, layer: str, x: np.ndarray) -> tuple[Any, ...]:
    node = next(n for n in model.graph.node if n.name == layer)
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    attrs = tuple(sorted((a.name, str(helper.get_attribute_value(a))) for a in node.attribute))
    return node.op_type, attrs, tuple(x.shape[1:]), tuple(inits.get(i, ()) for i in node.input[1:])


def time_layers(model: onnx.ModelProto, layers: Sequence[str], data: dict[str, np.ndarray],
                builders: dict[str, LayerBuilder], *, threads: int = 2, repeats: int = 15,
                min_seconds: float = 0.05, progress: bool = False) -> dict[str, dict[str, float]]:
    """``{layer: {form: int8 / float latency ratio}}`` for the layers that could be timed alone.

    ``builders``: ``{form: fn(one_node_model, [layer], {"x": captured inputs})}`` returning the
    int8 one-node model (a form whose builder raises is left out for that layer). Each layer's
    models are timed interleaved, batch 1, ``threads`` intra-op threads, at least ``repeats``
    rounds and ``min_seconds``. Empty when ``layers`` exceeds :data:`MAX_LAYERS`."""
    from ...backends.onnx import make_session
    from ...evaluate.latency import measure_latency

    if not layers or len(layers) > MAX_LAYERS:
        return {}
    captured = layer_inputs(model, layers, data)
    done: dict[tuple[Any, ...], dict[str, float]] = {}
    out: dict[str, dict[str, float]] = {}
    it: Any = list(captured.items())
    if progress:
        from rich.progress import track

        it = track(it, description="timing layers", transient=True)
    for layer, x in it:
        sig = _signature(model, layer, x)
        if sig in done:
            out[layer] = done[sig]
            continue
        one = single_node_model(model, layer, x[:1])
        if one is None:
            continue
        models = {"float": one}
        for form, build in builders.items():
            try:
                models[form] = build(one, [layer], {"x": x})
            except Exception:  # noqa: BLE001 - a form ORT cannot write for this node: not timed
                continue
        if len(models) == 1:
            continue
        feed = {"x": x[:1]}
        try:
            runners = {k: (lambda s=make_session(m, threads=threads), f=feed: s.run(None, f)) for k, m in models.items()}
            stats = measure_latency(runners, warmup=2, repeats=repeats, min_seconds=min_seconds, threads=threads)
        except Exception:  # noqa: BLE001 - a one-node model ORT will not run: the whole-model layouts still decide
            continue
        done[sig] = out[layer] = {k: stats[k].ratio for k in models if k != "float"}
    return out
