"""``deepshrink info``: IO spec, parameters, FLOPs, size and an op histogram."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..core.handle import ModelHandle
from .size import counted_tensors, file_size, weight_bytes


def layers(handle: ModelHandle) -> list[dict[str, Any]]:
    """Every weighted layer under each of its names (see :mod:`deepshrink.core.layers`), in order.

    Rows: ``module`` (PyTorch module path, or the one the weight's name points at; None when the
    graph's names say nothing), ``weight`` (the weight tensor's name), ``node`` (ONNX node name;
    None for a PyTorch model, whose node names depend on the export), ``op`` (op or module type),
    ``params`` (weight elements), ``bits`` (stored bits per weight). Any of the three names works
    in ``--include`` / ``--exclude`` (quantize) and ``--protect`` (prune)."""
    from ..core.layers import module_path

    rows: list[dict[str, Any]] = []
    if handle.kind == "onnx":
        from ..report.inspect import weighted_nodes

        dq = {n.output[0]: n.input[0] for n in handle.model.graph.node if n.op_type == "DequantizeLinear"}
        for node, name, w, bits in weighted_nodes(handle.model):
            weight = next((i for i in node.input[1:] if i), "") if node.op_type != "Gather" else node.input[0]
            weight = dq.get(weight, weight)  # QDQ: the stored integer tensor behind the DequantizeLinear
            rows.append({"module": module_path(weight), "weight": weight, "node": name, "op": node.op_type,
                         "params": int(w.size), "bits": int(bits)})
        # recurrent nodes (float, or int8 as DynamicQuantizeLSTM): W and R, by the node's name
        inits = {t.name: t for t in handle.model.graph.initializer}
        for i, node in enumerate(handle.model.graph.node):
            if node.op_type not in ("LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"):
                continue
            ws = [inits[n] for n in node.input[1:3] if n in inits]
            if ws:
                rows.append({"module": module_path(ws[0].name), "weight": ws[0].name,
                             "node": node.name or f"{node.op_type}_{i}", "op": node.op_type,
                             "params": sum(int(np.prod(t.dims)) for t in ws),
                             "bits": 8 if node.op_type == "DynamicQuantizeLSTM" else 32})
        order = {n.name or f"{n.op_type}_{i}": i for i, n in enumerate(handle.model.graph.node)}
        return sorted(rows, key=lambda r: order.get(r["node"], len(order)))
    import torch

    for path, mod in handle.model.named_modules():
        if path and isinstance(mod, torch.nn.RNNBase):  # weight_ih_l0, weight_hh_l0, ...: one row, all counted
            ws = [(n, p) for n, p in mod.named_parameters(recurse=False) if p.dim() >= 2]
            if ws:
                rows.append({"module": path, "weight": f"{path}.{ws[0][0]}", "node": None, "op": type(mod).__name__,
                             "params": sum(int(p.numel()) for _, p in ws), "bits": 8 * ws[0][1].element_size()})
            continue
        w = getattr(mod, "weight", None)
        if path and w is not None and hasattr(w, "dim") and w.dim() >= 2:
            rows.append({"module": path, "weight": f"{path}.weight", "node": None, "op": type(mod).__name__,
                         "params": int(w.numel()), "bits": 8 * w.element_size()})
    return rows


def _torch_ops(model: Any) -> Counter:
    """Leaf module types of an ``nn.Module``; for a module unpacked from ``torch.export`` (``.pt2``), whose
    leaves are generic graph modules, the ATen operators its graphs call (``aten.convolution``...)."""
    calls: Counter = Counter()
    for m in model.modules():
        graph = getattr(m, "graph", None)
        for node in getattr(graph, "nodes", ()):
            if node.op == "call_function":
                name = str(node.target)
                calls[name[: -len(".default")] if name.endswith(".default") else name] += 1
    if calls and type(model).__module__.startswith("torch."):  # a graph module: its calls are the ops
        return calls
    return Counter(type(m).__name__ for _, m in model.named_modules() if not list(m.children()))


def info(model: Any, *, layer_names: bool = False, **load_options: Any) -> dict[str, Any]:
    """What a model is: IO spec, parameters, FLOPs, sizes, op histogram (``layer_names``: also
    :func:`layers`). ``file_bytes``: the model file's (folder's) size in bytes, or the weights file's when
    ``weights`` is given (``weights_file``). ``load_options`` go to ``deepshrink.load``; raises what it raises."""
    from ..loading import load

    handle: ModelHandle = load(model, **load_options)
    weights_file = Path(load_options["weights"]) if load_options.get("weights") else None
    counted = counted_tensors(handle)  # what the output depends on (bench and prune count the same)
    if handle.kind == "onnx":
        ops = Counter(n.op_type for n in handle.model.graph.node)
        opset = {o.domain or "ai.onnx": o.version for o in handle.model.opset_import}
    else:
        ops = _torch_ops(handle.model)
        opset = {}
    result: dict[str, Any] = {
        "source": handle.source, "kind": handle.kind,
        "inputs": [s.describe() for s in handle.inputs], "outputs": [s.describe() for s in handle.outputs],
        "parameters": int(sum(t.size for t in counted)), "nonzero": int(sum(np.count_nonzero(t) for t in counted)), "weight_bytes": weight_bytes(handle),
        # weights read from another file (--weights): that file's size, not the folder's or module's
        "file_bytes": (file_size(weights_file) if weights_file is not None and weights_file.is_file() else
                       file_size(handle.path) if weights_file is None and handle.path is not None and handle.path.exists()
                       else None),
        "weights_file": str(weights_file) if weights_file is not None else None,
        "ops": dict(ops.most_common()), "opset": opset, "metadata": handle.metadata,
    }
    # a .pt2 with a dynamic batch axis and fixed others runs at batch 1 (its recorded shapes say so)
    can_run = handle.kind == "onnx" or handle.example_inputs is not None or all(
        isinstance(d, int) for s in handle.inputs for d in s.shape[1:])
    if can_run:
        from .flops import flops_at

        assumed_image: list[str] = []
        try:
            result["flops"], assumed_image = flops_at(handle)
        except Exception as exc:  # FLOPs are informative; a model we can't count is still valid
            result["flops"] = None
            result["flops_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
        from ..core.shapes import image_axes

        dynamic = [s for s in handle.inputs if image_axes(s) is None
                   and any(not (isinstance(d, int) and d > 0) for d in s.shape[1:])]
        given = bool(load_options.get("input_shapes") or load_options.get("data") is not None)
        if assumed_image:
            result["flops_shape"] = "; ".join(assumed_image)
        elif dynamic and handle.example_inputs is not None and not given:
            # sizes the model came with (a Hugging Face folder's sample text, a .pt2's recorded example): say which
            sample = handle.sample_inputs(batch=1)
            result["flops_shape"] = "; ".join(f"{s.name} at {'x'.join(map(str, sample[s.name].shape))}"
                                              for s in dynamic) + " (the model's example inputs)"
        if handle.example_inputs is None and dynamic:  # other dynamic non-batch dims were filled with 1: say so
            first = dynamic[0]
            like = "x".join(str(d) if isinstance(d, int) and d > 0 else "1" if i == 0 else "128"
                            for i, d in enumerate(first.shape))
            result["flops_note"] = (f"dynamic dims of {', '.join(s.name for s in dynamic)} counted as 1; pass "
                                    f"--input-shape {first.name}:{like} (the sizes you run) to count those")
    if layer_names:
        result["layers"] = layers(handle)
    return result
