"""QAT end to end: fake-quant training in PyTorch, then the same grid deployed as int8 in ORT.

Flow: ``prepare_qat`` → ``calibrate`` → ``train_qat`` (the shared Trainer, STE + learned
steps) → ``finalize`` (plain layers whose weights sit exactly on the learned grid, plus
each layer's scales and zero-points) → export to ONNX → ORT ``quantize_static`` with
``TensorQuantOverrides`` pinning every layer's weight scales (per channel) and input
activation scale / zero-point to the trained values, so ONNX Runtime's integer kernels
compute with exactly the grid QAT learned. Weights below 8 bits are stored as int8 codes
within their narrower range (e.g. [-8, 7] for 4 bits), which int8 kernels run exactly.

Only the overrides are ours: ORT's QDQ writer and its fusion into ``QLinearConv`` /
``QGemm`` do the rest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch

from ...errors import InputError
from ..configs import QATConfig


def qat_quantize(model: Any, config: QATConfig, *, data: Any = None, progress: bool = False, **load_options: Any) -> Any:
    from ...convert.export import export_onnx
    from ...core.data import load_data
    from ...core.handle import ModelHandle
    from ...loading import load
    from ..qat import calibrate, finalize, prepare_qat, train_qat
    from .outcome import QuantizeOutcome

    handle = model if isinstance(model, ModelHandle) else load(model, data=data, **load_options)
    if handle.kind != "torch":
        raise InputError("QAT trains the PyTorch model; pass the torch model (module, .pt2, module:factory), not ONNX")
    training = config.epochs > 0
    if data is None:
        raise InputError("QAT needs labelled training data: pass --data (an .npz with input arrays and 'labels')"
                         if training else "post-training quantization needs calibration data: pass --data")
    ds = load_data(data, handle)
    soft_only = training and config.distill and config.kd_alpha >= 1.0  # the loss never reads the labels
    if training and ds.labels is None and not soft_only:
        raise InputError(f"QAT needs labels in the data ({ds.source} has none); add a 'labels' array, or train on "
                         "the float model's soft targets alone (distill=True, kd_alpha=1)")
    names = handle.input_names
    xs = [torch.from_numpy(np.ascontiguousarray(ds.inputs[n])) for n in names]
    n_rows = len(xs[0])
    if training and not soft_only:  # labels cross-entropy cannot read fail here, not as a traceback mid-training
        from ...backends.torch import probe_output
        from ...core.data import check_class_labels

        check_class_labels(ds.labels, probe_output(handle.model, tuple(x[:2] for x in xs)), ds.source)
    calib = [tuple(x[i:i + 64] for x in xs) for i in range(0, min(n_rows, 512), 64)]
    teacher = None
    if training and config.distill:  # the float model as given teaches its fake-quantized copy
        from ...train.kd import frozen_copy

        teacher = frozen_copy(handle.model)
    prepared = prepare_qat(handle.model, weight_bits=config.weight_bits, act_bits=config.act_bits,
                           include=config.include, exclude=config.exclude, act_observer=config.observer,
                           learn_scales=config.learn_scales, weight_per_channel=config.per_channel)
    calibrate(prepared, calib)
    shifts: dict[str, float] = {}
    if config.bias_correction:
        from ..bias_correction import correct_bias

        shifts = correct_bias(prepared, calib)
    if training:
        y = (torch.zeros(n_rows, dtype=torch.int64) if ds.labels is None  # placeholders the soft-only loss skips
             else torch.from_numpy(np.asarray(ds.labels).astype(np.int64)))
        kd: dict[str, Any] = {}
        if teacher is not None:
            from ...train.kd import kd_step
            from ...train.trainer import default_forward

            kd = {"step_fn": kd_step(teacher, config.kd_temperature, config.kd_alpha), "forward_fn": default_forward}
        train_qat(prepared, (*xs, y), epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                  seed=config.seed, progress=progress, **kd)
    plain, record = finalize(prepared)
    example = {n: ds.inputs[n][:2] for n in names}
    exported = export_onnx(handle.with_model(plain), example)  # the source's input and output names
    q = deploy_qdq(exported.model, record, {n: ds.inputs[n][:256] for n in names}, per_channel=config.per_channel,
                   module=plain)
    from .outcome import Prepared
    from .outcome import result as _result

    prep = Prepared(exported, exported.model, None)
    report: dict[str, Any] = {"scheme": "QATConfig", "layers": sorted(record), "weight_bits": config.weight_bits,
                              "act_bits": config.act_bits, "epochs": config.epochs,
                              **({"distilled": {"temperature": config.kd_temperature, "alpha": config.kd_alpha}}
                                 if teacher is not None else {})}
    if shifts:
        report["bias_correction"] = shifts
    return QuantizeOutcome(_result(prep, q, {}).handle, report)


def deploy_qdq(model: onnx.ModelProto, record: dict[str, Any], calibration: dict[str, np.ndarray], *,
               per_channel: bool = True, module: Any = None) -> onnx.ModelProto:
    """ORT static QDQ int8 with the weight / input grids pinned to ``record`` (``qat.LayerQuant``).

    Of the Conv/Gemm/MatMul layers only those in ``record`` are quantized (the others stay float); ``per_channel`` says whether
    the record's weight scales are one per output channel or one per tensor. A layer's weight is found by its name in
    the export, else (``module``: the trained model that was exported) by its values — a Linear on 3-D inputs
    exports as a MatMul on its transposed weight under a new name (an ONNX model's import names its modules after
    the source's initializers, ``val_53``), whose output channels are then axis 1."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from . import backend as ob

    ob.ensure_node_names(model)
    inits = ob.initializer_map(model)
    consumers = {n.input[1]: n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1}
    overrides: dict[str, list[dict[str, Any]]] = {}
    nodes: list[str] = []
    for layer, lq in record.items():
        wname, axis = _weight_name(layer, inits), 0
        if (wname is None or wname not in consumers) and module is not None:
            wname, axis = _weight_by_value(layer, module, inits, consumers)
        if wname is None or wname not in consumers:
            raise InputError(f"QAT layer {layer!r}: its weight is not found in the exported ONNX graph")
        node = consumers[wname]
        scales = lq.weight_scale.numpy().astype(np.float32)
        if per_channel:
            overrides[wname] = [{"scale": np.array(s, np.float32), "zero_point": np.array(0, np.int8), "axis": axis,
                                 "quant_type": QuantType.QInt8} for s in scales]
        else:
            overrides[wname] = [{"scale": np.array(scales[0], np.float32), "zero_point": np.array(0, np.int8),
                                 "quant_type": QuantType.QInt8}]
        nodes.append(node.name)
        if lq.input_scale is not None:
            qt = QuantType.QInt8 if lq.input_signed else QuantType.QUInt8
            zdt = np.int8 if lq.input_signed else np.uint8
            overrides[node.input[0]] = [{"scale": np.array(float(lq.input_scale.reshape(-1)[0]), np.float32),
                                         "zero_point": np.array(int(lq.input_zero_point.reshape(-1)[0]), zdt),
                                         "quant_type": qt}]
    extra = {"TensorQuantOverrides": overrides, "DefaultTensorType": onnx.TensorProto.FLOAT}
    feeds = ob.split_feeds(calibration, 1)
    return ob._ort_quantize(quantize_static, model, calibration_data_reader=ob._Reader(feeds),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel, activation_type=QuantType.QUInt8,
                            nodes_to_exclude=[n.name for n in model.graph.node
                                              if n.op_type in ("Conv", "Gemm", "MatMul") and n.name not in nodes],
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax, extra_options=extra)


def _weight_by_value(layer: str, module: Any, inits: dict[str, Any], consumers: dict[str, Any]) -> tuple[str | None, int]:
    """The initializer a Conv/Gemm/MatMul reads that holds ``layer``'s weight, as it is (output channels on axis 0)
    or transposed (a MatMul's [in, out]: axis 1); ``(None, 0)`` when none does."""
    from onnx import numpy_helper

    weight = getattr(dict(module.named_modules()).get(layer), "weight", None)
    if weight is None:
        return None, 0
    w = weight.detach().cpu().numpy()
    for name in consumers:
        if name not in inits:
            continue
        a = numpy_helper.to_array(inits[name])
        if a.shape == w.shape and np.array_equal(a, w):
            return name, 0
        if w.ndim == 2 and a.shape == w.T.shape and np.array_equal(a, w.T):
            return name, 1
    return None, 0


def _weight_name(layer: str, inits: dict[str, Any]) -> str | None:
    for cand in (f"{layer}.weight", f"{layer.replace('.', '_')}.weight", f"p_{layer.replace('.', '_')}_weight"):
        if cand in inits:
            return cand
    tails = [n for n in inits if n.endswith(f"{layer}.weight")]
    return tails[0] if len(tails) == 1 else None

