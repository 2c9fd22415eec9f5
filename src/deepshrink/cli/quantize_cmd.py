"""``deepshrink quantize IN -o OUT --scheme ...``: quantize to an ONNX file ONNX Runtime runs
quantized, write it atomically, then measure the written file against the float model
side by side (size, latency, fidelity/accuracy)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputError
from ._app import (
    AllowDegradedOpt,
    DataOpt,
    ForceOpt,
    GateCosOpt,
    GateDropOpt,
    InputShapeOpt,
    JsonOpt,
    RepeatsOpt,
    ThreadsOpt,
    TrustOpt,
    WeightsOpt,
    app,
    console,
    fmt_bytes,
    gate_policy,
    load_model,
    print_gate,
    print_json,
    warn,
)
from ._options import options_given, refuse_inapplicable

SCHEMES = ("int8-dynamic", "int8-static", "int4-weight", "kmeans", "log2", "auto", "ptq")

# What each scheme is, in the words a refusal needs.
SCHEME_SUMMARY = {
    "int8-dynamic": "int8 weights, activations scaled at run time: no calibration",
    "int8-static": "int8 weights and calibrated int8 activations",
    "int4-weight": "group-wise low-bit weights, float activations",
    "kmeans": "a k-means codebook per weight, float activations, no calibration",
    "log2": "power-of-two weights, float activations, no calibration",
    "auto": "int8 or float per layer, chosen by measuring fidelity on held-out samples and latency",
    "ptq": "low-bit weights and 8-bit activations (a PyTorch model, or an ONNX one through its import)",
}

# The options that only some schemes use: given with any other scheme they are refused, not ignored.
SCHEME_OPTIONS = {
    "--group-size": ("int4-weight",),
    "--method": ("int4-weight",),
    "--observer": ("int8-static", "ptq"),
    "--per-channel/--per-tensor": ("int8-dynamic", "int8-static", "kmeans", "auto", "ptq"),
    "--smooth": ("int8-dynamic", "int8-static"),
    "--calibration-size": ("int8-static", "int4-weight", "auto"),
    "--target-cos": ("auto",),
    "--min-cos": ("auto",),
    "--max-kept": ("auto",),
    "--strategy": ("auto",),
    "--trials": ("auto",),
    "--bias-correction/--no-bias-correction": ("ptq",),
}
# Options of the command (not of the scheme's config) that only some schemes use.
COMMAND_SCHEME_OPTIONS = {"--allow-slower": ("auto",)}


def build_config(scheme: str, *, given: dict[str, str] | None = None, **options: Any) -> Any:
    """The config for a CLI scheme (:func:`deepshrink.quantize.configs.config_from_options`); an
    option the scheme does not use (``given``: the SCHEME_OPTIONS the user set) is refused first."""
    from ..quantize.configs import config_from_options

    if scheme not in SCHEMES:
        raise InputError(f"--scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    refuse_inapplicable("--scheme", scheme, given or {}, SCHEME_OPTIONS, SCHEME_SUMMARY)
    return config_from_options(scheme, calibration_size_given="--calibration-size" in (given or {}), **options)


@app.command("quantize")
def quantize_cmd(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(help="an ONNX file, or a PyTorch model (.pt2, module:factory, HF folder)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output .onnx")],
    scheme: Annotated[str, typer.Option("--scheme", "-s", help=" | ".join(SCHEMES))] = "int8-dynamic",
    bits: Annotated[int | None, typer.Option("--bits", help="weight bits for int4-weight / ptq / kmeans / log2 (2–8)")] = None,
    group_size: Annotated[int, typer.Option("--group-size", help="int4-weight: weights per scale group")] = 128,
    method: Annotated[str, typer.Option("--method", help="int4-weight: rtn | gptq")] = "rtn",
    observer: Annotated[str, typer.Option("--observer", help="int8-static and ptq activations: minmax | moving_average | percentile | mse | entropy")] = "minmax",
    per_channel: Annotated[bool | None, typer.Option("--per-channel/--per-tensor", help="weight scales (int8) or codebooks (kmeans) per output channel or per tensor (default: int8-dynamic per channel only where one scale per tensor would leave the median output channel under 25 dB SQNR; int8-static and auto per channel; kmeans per tensor)")] = None,
    smooth: Annotated[float | None, typer.Option("--smooth", help="SmoothQuant alpha (0–1), folded where possible")] = None,
    include: Annotated[list[str] | None, typer.Option("--include", help="quantize only layers matching (repeatable)")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", "-x", help="keep layers matching this pattern float (repeatable)")] = None,
    target_cos: Annotated[float, typer.Option("--target-cos", help="auto: mean cosine to reach")] = 0.997,
    min_cos: Annotated[float, typer.Option("--min-cos", help="auto: worst-sample cosine to reach")] = 0.99,
    max_kept: Annotated[float, typer.Option("--max-kept", help="auto --strategy layouts: largest fraction of layers it may keep float")] = 0.5,
    strategy: Annotated[str, typer.Option("--strategy", help="auto: search (default: the per-layer search's preset, choosing on held-out samples) | layouts (the fixed sequence: smoothing trials, keep-float bisection, per-op-type layouts)")] = "search",
    trials: Annotated[int | None, typer.Option("--trials", help="auto --strategy search: candidates measured (default 12)")] = None,
    calibration_size: Annotated[int, typer.Option("--calibration-size", help="samples of --data used to calibrate")] = 64,
    bias_correction: Annotated[bool | None, typer.Option("--bias-correction/--no-bias-correction", help="ptq: remove each layer's mean output shift from weight rounding (default on)")] = None,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="held-out data for the before/after table and the fidelity gate (default: the samples of --data not used to calibrate)")] = None,
    repeats: RepeatsOpt = 30, threads: ThreadsOpt = 2,
    no_bench: Annotated[bool, typer.Option("--no-bench", help="skip the timed before/after table (the fidelity gate still runs)")] = False,
    allow_slower: Annotated[bool, typer.Option("--allow-slower", help="auto: choose without timing (the smallest candidate that meets the fidelity target) and keep it even when it measures slower than the float model (otherwise auto times its candidates against the float model, keeps the fastest, and exits 3 with nothing written if even that is slower)")] = False,
    allow_degraded: AllowDegradedOpt = False, gate_min_cos: GateCosOpt = 0.9, gate_max_drop: GateDropOpt = 5.0,
    weights: WeightsOpt = None, input_shape: InputShapeOpt = None, data: DataOpt = None,
    trust_remote_code: TrustOpt = False, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Quantize a model to an ONNX file and measure the written file against the float model."""
    from ..core.data import load_data
    from ..core.fileio import check_output
    from ..evaluate import gate
    from ..quantize.api import run_quantize, save_quantized, to_onnx_handle
    from ..quantize.onnx.outcome import describe

    for flag, value in (("--repeats", repeats), ("--calibration-size", calibration_size), ("--threads", threads)):
        if value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}")
    if smooth is not None and not 0.0 <= smooth <= 1.0:
        raise InputError(f"--smooth {smooth} is outside 0–1")
    config = build_config(scheme, bits=bits, group_size=group_size, method=method, observer=observer,
                          per_channel=per_channel, smooth=smooth, include=include or [], exclude=exclude or [],
                          target_cos=target_cos, min_cos=min_cos, calibration_size=calibration_size,
                          max_kept=max_kept, bias_correction=bias_correction, given=options_given(ctx, SCHEME_OPTIONS),
                          **({"strategy": strategy, "trials": trials, "threads": threads} if scheme == "auto" else {}),
                          **({"choose_by_speed": not allow_slower} if scheme == "auto" else {}))
    refuse_inapplicable("--scheme", scheme, options_given(ctx, COMMAND_SCHEME_OPTIONS), COMMAND_SCHEME_OPTIONS,
                        SCHEME_SUMMARY)
    policy = gate_policy(gate_min_cos, gate_max_drop, allow_degraded)
    from ..core import formats

    if formats.by_suffix(output) is not formats.get("onnx"):
        raise InputError(f"output {output}: a quantized model is written as .onnx")
    check_output(output, inputs=(src, weights), force=force)
    if scheme == "int4-weight" and weights is None and _streams(src):
        _stream(src, output, config, policy, json_out, data=data, eval_data=eval_data)
        return
    handle = load_model(src, weights=weights, input_shape=input_shape, data=data, trust_remote_code=trust_remote_code)
    float_handle = to_onnx_handle(handle)
    if scheme == "ptq" and handle.kind == "onnx":  # calibrated on its PyTorch import, as a recipe's ptq step is
        from ..convert.onnx2torch.route import trainable_handle

        handle = trainable_handle(handle, data)
    # the table and the gate measure held-out samples: --eval-data, else those --data can spare
    calib: Any = data
    held: Any = load_data(eval_data, float_handle) if eval_data is not None else None
    if data is not None and eval_data is None:
        calib, held, _spared = gate.split_holdout(load_data(data, float_handle), calibration_size)
    # ptq works on the torch model (fake-quant, bias correction) and exports the result itself
    searched = scheme == "auto" and config.strategy == "search"  # it holds out the same samples itself
    result = run_quantize(handle if scheme == "ptq" else float_handle, config, data=data if searched else calib,
                          progress=not json_out and console.is_terminal,  # no bars in a log: blank lines
                          **({"say": _say} if searched and not json_out else {}))
    source = src if Path(src).is_file() else None
    timed = not no_bench or (scheme == "auto" and not allow_slower)  # auto's speed gate needs real timings
    speed: dict[str, Any] = {}
    table, verdict = gate.write_checked(  # nothing lands unless the gates pass
        float_handle, result.handle, output, held=held, policy=policy,
        write=lambda h, path: save_quantized(h, path, force=True, source=source),
        measure=lambda _written, path, data: _measure(float_handle, result.handle, path, data,
                                                      repeats if timed else 1, json_out, name=str(output),
                                                      warmup=5 if timed else 0, threads=threads),
        also=(lambda t: speed.update(slower=gate.check_speed(t, allow_slower=allow_slower, what=str(output))))
        if scheme == "auto" else None)
    slower = speed.get("slower")
    result.handle.path = output
    if result.handle.tokenizer_dir is not None:
        result.handle.tokenizer_dir = output.parent / (output.name + ".tokenizer")
    if no_bench:
        table = None
    payload = {"output": str(output), "report": result.report, "bench": table.to_dict() if table else None,
               "gate": verdict.to_dict(), "slower": slower}
    if json_out:
        print_json(payload)
        return
    rep = result.report
    console.print(f"[bold]{rep.get('scheme')}[/]: {describe(rep)}", highlight=False)
    if rep.get("conv_integer"):
        warn(rep["conv_integer"])
    fw = _unasked_float(rep.get("float_weights") or {}, include or [], exclude or [])
    if fw.get("share", 0.0) > 0.1 and fw.get("nodes"):
        listed = ", ".join(f"{r['node']} ({', '.join(r['weights'])})" for r in fw["nodes"][:4])
        more = f" and {len(fw['nodes']) - 4} more" if len(fw["nodes"]) > 4 else ""
        warn(f"stayed float: {listed}{more} — {100 * fw['share']:.0f}% of the float model's weight bytes"
             + _why_float(scheme, {r["node"].partition(" ")[0] for r in fw["nodes"]}))
    if "auto" in rep:
        from ..quantize.onnx.auto import summary_from_dict

        console.print(summary_from_dict(rep["auto"]), highlight=False, markup=False)
    if table is not None:
        from .common_cmds import print_bench

        print_bench(table, verdict)
    print_gate(verdict)
    if slower:
        warn(f"{slower} (kept: --allow-slower)")
    console.print(f"wrote {output}")


def _why_float(scheme: str, ops: set[str]) -> str:
    """Why layers of ``ops`` stay float under ``scheme``, when it is a known gap ("" otherwise)."""
    why = []
    if ops & {"GRU", "RNN"}:
        why.append("ONNX Runtime has no int8 GRU/RNN kernel")
    if "Conv" in ops and scheme == "int8-dynamic":
        why.append("int8-dynamic quantizes MatMul/Gemm/LSTM; convolutions need --scheme int8-static")
    return f" ({'; '.join(why)})" if why else ""


def _unasked_float(fw: dict[str, Any], include: list[str], exclude: list[str]) -> dict[str, Any]:
    """``float_weights`` of the report without the layers the user kept float on purpose (outside
    ``--include``, or matched by ``--exclude``): the warning names only what the scheme left float by itself.
    The share shrinks in proportion to the bytes taken out."""
    if not fw.get("nodes") or not (include or exclude):
        return fw
    from ..core.layers import matches, names_of

    def asked(row: dict[str, Any]) -> bool:
        names = names_of(row["node"].partition(" ")[2], *row["weights"])
        return bool((include and not any(matches(p, names) for p in include))
                    or any(matches(p, names) for p in exclude))

    kept = [r for r in fw["nodes"] if not asked(r)]
    everything = sum(r["bytes"] for r in fw["nodes"])
    share = fw.get("share", 0.0) * (sum(r["bytes"] for r in kept) / everything if everything else 0.0)
    return {**fw, "nodes": kept, "share": share}


def _say(line: str) -> None:
    """One line of auto's search progress, dimmed."""
    console.print(line, style="dim", markup=False, highlight=False)


def _streams(src: str) -> bool:
    """An ONNX file whose external data is too large to hold two or three times: quantized by streaming."""
    from ..quantize.onnx import streaming

    p = Path(src)
    return p.suffix.lower() == ".onnx" and p.is_file() and streaming.external_bytes(p) >= streaming.STREAM_MIN_BYTES


def _calibration(src: str, data: str, size: int) -> dict[str, Any]:
    """The first ``size`` samples of ``--data``, checked against the ONNX graph's inputs (its weights unread)."""
    from ..backends.onnx import index_bounds, io_specs, load_onnx_graph
    from ..core.data import load_data
    from ..core.handle import ModelHandle

    model, _ = load_onnx_graph(src)
    inputs, outputs = io_specs(model)
    handle = ModelHandle(None, "onnx", inputs, outputs, source=src, path=Path(src), index_bounds=index_bounds(model))
    ds = load_data(data, handle)
    return {k: v[:size] for k, v in ds.inputs.items()}


def _stream(src: str, output: Path, config: Any, policy: Any, json_out: bool, *, data: str | None,
            eval_data: str | None) -> None:
    """int4-weight tensor by tensor (RTN, :mod:`deepshrink.quantize.onnx.streaming`) or segment by segment
    (GPTQ on --data, :mod:`deepshrink.quantize.onnx.streaming_gptq`). The before/after table and the end-to-end
    fidelity gate need the float model in memory, so the gate judges each layer's weight instead: the worst
    cosine between a float weight and its dequantized codes must reach --gate-min-cos."""
    from ..evaluate.gate import DegradedError, GateVerdict
    from ..quantize.onnx.streaming import stream_weight_only_rtn
    from ..quantize.onnx.streaming_gptq import stream_gptq

    gptq = config.method == "gptq"
    if gptq and data is None:
        raise InputError("GPTQ needs calibration data: pass --data (an .npz of the model's inputs, a text file, "
                         "or a built-in: digits, sentences)")
    calib = _calibration(src, data, config.calibration_size) if gptq and data is not None else None

    def gate(rep: Any) -> None:
        if rep.worst_cosine < policy.min_cos and not policy.allow_degraded:
            verdict = GateVerdict(False, f"layer {rep.worst_layer}'s weight cosine {rep.worst_cosine:.4f} is below "
                                  f"{policy.min_cos}", 0, "weights", cos_min=rep.worst_cosine,
                                  first_broken_layer=rep.worst_layer, first_broken_cos=rep.worst_cosine)
            raise DegradedError(f"{output} degraded: {verdict.reason}; nothing written (--allow-degraded keeps it)",
                                verdict)

    from ..quantize.weight_only import _progress

    with _progress(0, "GPTQ (streamed)" if gptq else "RTN (streamed)", not json_out) as bar:
        task = bar.add_task(config.method, total=None, layer="")

        def step(layer: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, layer=layer)

        common = dict(bits=config.bits, group_size=config.group_size, symmetric=config.symmetric,
                      include=config.include, exclude=config.exclude, progress=step, before_commit=gate)
        if calib is not None:
            rep = stream_gptq(src, output, calib, act_order=config.act_order, **common)
        else:
            rep = stream_weight_only_rtn(src, output, **common)
    payload = {"output": str(output), "report": {"scheme": "WeightOnlyConfig", **rep.to_dict(),
                                                  "config": config.to_dict()}, "bench": None, "gate": None}
    if json_out:
        print_json(payload)
        return
    how = (f"GPTQ streamed in {rep.extra['segments']} segments on {rep.extra['calibration_samples']} calibration "
           f"samples" if gptq else "streamed tensor by tensor")
    console.print(f"[bold]WeightOnlyConfig[/]: {rep.quantized_layers} layers quantized, {how} "
                  f"({fmt_bytes(rep.float_bytes_in)} float in, {fmt_bytes(rep.bytes_out)} out)", highlight=False)
    if gptq:
        console.print(f"output error ‖XW−XŴ‖/‖XW‖ on the calibration inputs, mean over layers: GPTQ "
                      f"{rep.extra['err_gptq_mean']:.4f}, round-to-nearest {rep.extra['err_rtn_mean']:.4f}",
                      highlight=False, markup=False)
    console.print(f"weight fidelity: worst layer {rep.worst_layer} cosine {rep.worst_cosine:.4f} (the end-to-end "
                  "table and gate are skipped: they would hold the float model in memory)", highlight=False,
                  markup=False)
    if rep.float_left > 0.1:
        warn(f"stayed float: {', '.join(rep.float_left_largest)} — {100 * rep.float_left:.0f}% of the float model's "
             "weight bytes (streaming quantizes MatMul weights only)")
    unused = [flag for flag, given in (("--data", data is not None and not gptq), ("--eval-data", eval_data is not None))
              if given]
    if unused:
        console.print(f"note: {' / '.join(unused)} not used: a streamed model is judged by its weights",
                      style="dim", markup=False, highlight=False)
    if rep.worst_cosine < policy.min_cos:
        warn(f"kept despite the fidelity gate (--allow-degraded): layer {rep.worst_layer}'s weight cosine "
             f"{rep.worst_cosine:.4f} is below {policy.min_cos}")
    console.print(f"wrote {output}")


def _measure(float_handle: Any, quant_handle: Any, output: Path, data: Any, repeats: int, quiet: bool, *,
             name: str, warmup: int = 5, threads: int = 2) -> Any:
    """Bench the float ONNX model and the written file in ONNX Runtime, side by side (``evaluate.compare``)."""
    from ..evaluate.compare import compare

    return compare(float_handle, quant_handle.with_model(quant_handle.model, path=output), data=data, repeats=repeats,
                   warmup=warmup, threads=threads, names=("float (onnx)", name),
                   progress=not quiet and console.is_terminal)  # a bar in a log leaves a blank line
