"""``convert``, ``info``, ``bench`` and ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ._app import (
    DataOpt,
    ForceOpt,
    InputShapeOpt,
    JsonOpt,
    RepeatsOpt,
    ThreadsOpt,
    TrustOpt,
    WeightsOpt,
    app,
    console,
    fmt_bytes,
    print_json,
    warn,
)


def _file_format(path: str, kind: str) -> str:
    """What the user named, for the conversion's first or last hop: the file format (``pt2``, ``hf-folder``,
    ``safetensors``) where the route's model kind (``torch``) would hide it; a ``module:factory`` stays ``torch``."""
    from ..core import formats

    fmt = formats.format_of(path) if ":" not in Path(path).name or Path(path).exists() else None
    return fmt.name if fmt is not None else kind


@app.command("convert")
def convert_cmd(
    src: Annotated[str, typer.Argument(help="model file, Hugging Face folder, or package.module:factory")],
    dst: Annotated[str, typer.Argument(help="output; the format follows the extension (.onnx, .pt2, .tflite, .xml)")],
    weights: WeightsOpt = None, input_shape: InputShapeOpt = None, data: DataOpt = None,
    trust_remote_code: TrustOpt = False, force: ForceOpt = False, json_out: JsonOpt = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="skip the parity check")] = False,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset to target")] = None,
    exporter: Annotated[str, typer.Option("--exporter", help="auto (default: torchscript for models with LSTM/GRU/RNN layers, whose ONNX nodes keep their weights where int8 quantizers find them, and for Hugging Face models, whose graph ONNX Runtime's transformer fusions match; dynamo otherwise) | dynamo | torchscript")] = "auto",
    via: Annotated[str | None, typer.Option("--via", help="go through an intermediate format, e.g. onnx")] = None,
    atol: Annotated[float, typer.Option("--atol", help="parity tolerance: absolute part")] = 1e-4,
    rtol: Annotated[float, typer.Option("--rtol", help="parity tolerance: part relative to the output's scale")] = 1e-4,
    int8: Annotated[bool, typer.Option("--int8", help="TFLite: full-integer int8 with --data as representative set")] = False,
    nchw: Annotated[bool, typer.Option("--nchw", help="Keras source: make the ONNX model take channels-first inputs")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="OpenVINO IR: store weights as fp16 (half the size, ~1e-3 error)")] = False,
) -> None:
    """Convert a model to another format and check that both compute the same thing."""
    from ..convert import convert

    extra: dict[str, Any] = {k: True for k, on in (("int8", int8), ("nchw", nchw), ("fp16", fp16)) if on}
    result = convert(src, dst, via=via, weights=weights, input_shapes=input_shape, data=data,
                     trust_remote_code=trust_remote_code, exporter=exporter, opset=opset, verify=not no_verify,
                     atol=atol, rtol=rtol, force=force, **extra)
    if json_out:
        print_json(result.to_dict())
        return
    for i, hop in enumerate(result.hops):
        how = f" ({hop.exporter} exporter)" if hop.exporter else ""
        a = _file_format(src, hop.src_format) if i == 0 else hop.src_format
        b = _file_format(dst, hop.dst_format) if i == len(result.hops) - 1 else hop.dst_format
        console.print(f"[bold]{a} → {b}[/]{how} in {hop.seconds:.1f} s")
        if hop.parity is not None:
            console.print(hop.parity.summary(), highlight=False, markup=False)
        else:
            console.print("  parity not checked", style="yellow")
    meta = result.handle.metadata if result.handle is not None else {}
    fallback = meta.get("deepshrink.exporter_fallback_reason")
    if fallback:
        used = meta.get("deepshrink.exporter", "torchscript")
        console.print(f"{'torchscript' if used == 'dynamo' else 'dynamo'} exporter failed ({fallback}); used {used}",
                      style="yellow", markup=False, highlight=False, soft_wrap=True)
    if meta.get("deepshrink.static_dims_reason"):
        warn(meta["deepshrink.static_dims_reason"])
    console.print(f"wrote {result.output}")


@app.command("info")
def info_cmd(model: Annotated[str, typer.Argument(help="model file, folder or module:factory")],
             weights: WeightsOpt = None, input_shape: InputShapeOpt = None, data: DataOpt = None,
             trust_remote_code: TrustOpt = False, json_out: JsonOpt = False,
             layers: Annotated[bool, typer.Option("--layers", help="list every weighted layer by module path, "
                                                  "weight name and ONNX node name (any works in --include/--exclude/--protect)")] = False,
             ) -> None:
    """IO spec, parameters, FLOPs, size and op histogram."""
    from ..evaluate.info import info

    res = info(model, weights=weights, input_shapes=input_shape, data=data, trust_remote_code=trust_remote_code,
               layer_names=layers)
    if json_out:
        print_json(res)
        return
    console.print(f"[bold]{res['source']}[/] ({res['kind']})"
                  + (f" with the weights of {Path(res['weights_file']).name}" if res.get("weights_file") else ""))
    for key in ("inputs", "outputs"):
        for s in res[key]:
            console.print(f"  {key[:-1]:7s} {s}", markup=False)
    console.print(f"  parameters {res['parameters']:,} ({res['nonzero']:,} non-zero), weights {fmt_bytes(res['weight_bytes'])}"
                  + (f", {'weights ' if res.get('weights_file') else ''}file {fmt_bytes(res['file_bytes'])}"
                     if res["file_bytes"] else ""))
    if res.get("flops") is not None:
        console.print(f"  FLOPs (batch 1) {res['flops']:,}"
                      + (f", {res['flops_shape']}" if res.get("flops_shape") else ""), markup=False)
    if res.get("flops_note"):
        console.print(f"  note: {res['flops_note']}", style="yellow", markup=False, highlight=False)
    ops = ", ".join(f"{k}×{v}" for k, v in list(res["ops"].items())[:20])
    console.print(f"  ops {ops}", markup=False)
    if layers and not res["layers"]:
        console.print("  no layer reads a stored weight (weights computed by the graph, e.g. ConstantOfShape?): "
                      "`deepshrink optimize` folds them into stored weights", style="yellow", markup=False)
    elif layers:
        t = Table(title="weighted layers (a pattern may use any name column)")
        for col in ("module", "weight", "onnx node", "op", "params", "bits"):
            t.add_column(col, justify="right" if col in ("params", "bits") else "left")
        for r in res["layers"]:
            t.add_row(r["module"] or "-", r["weight"], r["node"] or "-", r["op"], f"{r['params']:,}", str(r["bits"]))
        console.print(t)


def print_bench(result: Any, verdict: Any = None) -> None:
    """The before/after table and its warnings; with the fidelity ``verdict`` of a command that kept a model the
    gate failed (``--allow-degraded``), not the table's own "degraded" warnings: the gate's line says it."""
    from ..evaluate.bench import DEGRADED

    table = Table(title=f"{result.threads} threads, batch {result.batch}, {result.repeats} interleaved rounds, "
                        f"{result.samples} samples of {result.data}")
    for col in ("model", "runtime", "size", "params", "median ms", "p90 ms", "latency vs first", "accuracy", "cos mean/min", "max-abs"):
        table.add_column(col, justify="left" if col in ("model", "runtime") else "right")
    for r in result.rows:
        table.add_row(r.name, r.runtime, fmt_bytes(r.size_bytes), f"{r.params:,}" if r.params else "-",
                      f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.ratio:.2f}× ±{r.ratio_spread:.2f}",
                      "-" if r.accuracy is None else f"{100 * r.accuracy:.2f}%",
                      "-" if r.cos_mean is None else f"{r.cos_mean:.5f} / {r.cos_min:.5f}",
                      "-" if r.max_abs is None else f"{r.max_abs:.2g}")
    console.print(table)
    worst = [f"{r.name}: {r.worst_output}" for r in result.rows[1:] if r.worst_output]
    if worst:
        console.print("cos mean/min and max-abs: the worst over each model's outputs; lowest worst-sample cosine in "
                      "(" + "; ".join(worst) + ")", style="dim", markup=False, highlight=False)
    console.print(f"CPU: {result.cpu}", style="dim", markup=False)
    gated = verdict is not None and not verdict.passed
    for w in result.warnings:
        if not (gated and w.endswith(DEGRADED)):
            warn(w)


@app.command("bench")
def bench_cmd(models: Annotated[list[str], typer.Argument(help="models to compare; the first is the reference")],
              data: DataOpt = None,
              weights: Annotated[list[str] | None, typer.Option("--weights", "-w", help="weights (.safetensors or state-dict .pt) for the module:factory sources (or every model when none is one); repeat once per model, in order, '-' for none, to give each its own (./m ./m -w - -w pruned.safetensors)")] = None,
              input_shape: InputShapeOpt = None,
              trust_remote_code: TrustOpt = False, json_out: JsonOpt = False,
              threads: ThreadsOpt = 2,
              batch: Annotated[int, typer.Option("--batch", help="batch size for timing")] = 1,
              repeats: RepeatsOpt = 30) -> None:
    """Size, latency (median/p90, speed-up vs the first) and accuracy/fidelity, side by side."""
    from ..evaluate.bench import bench

    if threads < 1 or batch < 1 or repeats < 1:
        from ..errors import InputError

        raise InputError("--threads, --batch and --repeats must be at least 1")
    result = bench(models, data=data, threads=threads, batch=batch, repeats=repeats, progress=not json_out,
                   weights=weights, input_shapes=input_shape, trust_remote_code=trust_remote_code)
    if json_out:
        print_json(result.to_dict())
    else:
        print_bench(result)


@app.command("demo")
def demo_cmd(out: Annotated[Path, typer.Option("--out", help="folder for the demo's files (new, empty, or an earlier demo's: replaced)")] = Path("deepshrink-demo"),
             seed: Annotated[int, typer.Option("--seed", help="seed of the digits CNN's training run")] = 0,
             model: Annotated[list[str] | None, typer.Option("--model", help="digits and/or minilm (default: both; minilm when installed)")] = None,
             repeats: RepeatsOpt = 30,
             json_out: JsonOpt = False) -> None:
    """Offline tour: `compress` with the default recipe on the built-in digits CNN (and MiniLM when installed)."""
    from ..demo import MODELS, run_demo
    from .compress_cmd import print_summary

    def show(name: str, res: Any) -> None:
        print_summary(res.report)
        console.print(f"report: {res.files.get('report.html', res.files['report.json'])}", highlight=False)

    quiet = json_out
    summary = run_demo(out, say=None if quiet else (lambda m: console.print(m, highlight=False, markup=False)),
                       on_result=None if quiet else show, seed=seed, models=tuple(model or MODELS), repeats=repeats)
    if json_out:
        print_json(summary)
