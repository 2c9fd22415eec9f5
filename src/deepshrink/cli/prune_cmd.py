"""``deepshrink prune IN -o OUT --method ...``: prune, write atomically, then measure the
written file against the original side by side (size, parameters, latency, accuracy)."""

from __future__ import annotations

import dataclasses
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
    MixedPrecisionOpt,
    RepeatsOpt,
    ThreadsOpt,
    TrustOpt,
    WeightsOpt,
    app,
    console,
    gate_policy,
    load_model,
    mixed_precision_option,
    print_gate,
    print_json,
    warn,
    warn_without_bf16,
)
from ._options import options_given, refuse_inapplicable

METHODS = ("magnitude", "gradual", "nm", "structured")

# What each method is, in the words a refusal needs.
METHOD_SUMMARY = {
    "magnitude": "the smallest weights zeroed at once",
    "gradual": "weights zeroed on a schedule while fine-tuning",
    "nm": "N of every M weights zeroed, the pattern sparse kernels take",
    "structured": "whole channels, neurons and heads removed",
}

# The options that only some methods use: given with any other method they are refused, not ignored.
METHOD_OPTIONS = {
    "--threshold": ("magnitude",),
    "--scope": ("magnitude", "gradual", "structured"),
    "--importance": ("structured",),
    "--heads-ratio": ("structured",),
    "--ffn-ratio": ("structured",),
    "--nm": ("nm",),
    "--reconstruct": ("structured",),
    "--reconstruct-ridge": ("structured",),
    "--reconstruct-samples": ("structured",),
    "--round-to": ("structured",),
}


def _config(method: str, *args: Any, given: dict[str, str] | None = None, training: dict[str, Any] | None = None) -> Any:
    """The config for a CLI method (:func:`deepshrink.prune.config.config_from_options`); an option
    the method does not use (``given``) is refused first. ``training``: the fine-tune's fields given."""
    from ..prune.config import config_from_options

    if method not in METHODS:
        raise InputError(f"--method {method!r}: use {', '.join(METHODS)}")
    refuse_inapplicable("--method", method, given or {}, METHOD_OPTIONS, METHOD_SUMMARY)
    return config_from_options(method, *args, training=training)


@app.command("prune")
def prune_cmd(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(help="the model: .onnx (pruned through its PyTorch import), .pt2, package.module:factory (+ --weights), HF folder")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output: .onnx, .pt2 or .safetensors (weights only, for a module:factory or HF folder source; structured: read back with --weights on that source)")],
    method: Annotated[str, typer.Option("--method", "-m", help="magnitude | gradual | nm | structured")] = "magnitude",
    sparsity: Annotated[float | None, typer.Option("--sparsity", "-s", help="fraction of weights (unstructured) or channels (structured) removed, 0 <= S < 1")] = None,
    threshold: Annotated[float | None, typer.Option("--threshold", help="magnitude: zero every |w| below this instead")] = None,
    scope: Annotated[str | None, typer.Option("--scope", help="layer | global (unstructured); uniform | global (structured)")] = None,
    importance: Annotated[str, typer.Option("--importance", help="structured: l1 | l2 | bn | taylor | activation | fisher")] = "l2",
    protect: Annotated[list[str] | None, typer.Option("--protect", help="fnmatch pattern of module names to leave alone (repeatable)")] = None,
    heads_ratio: Annotated[float, typer.Option("--heads-ratio", help="structured: fraction of attention heads removed")] = 0.0,
    ffn_ratio: Annotated[float | None, typer.Option("--ffn-ratio", help="structured: fraction of FFN neurons removed (default: --sparsity)")] = None,
    nm: Annotated[str, typer.Option("--nm", help="nm: N:M pattern")] = "2:4",
    reconstruct: Annotated[bool, typer.Option("--reconstruct", help="structured: re-fit each pruned layer's consumer by least squares to the unpruned outputs on --data (Kwon et al. 2022)")] = False,
    reconstruct_ridge: Annotated[float | None, typer.Option("--reconstruct-ridge", help="structured --reconstruct: pull towards the pruned weights, > 0 (default 0.01)")] = None,
    reconstruct_samples: Annotated[int | None, typer.Option("--reconstruct-samples", help="structured --reconstruct: samples of --data the layers are re-fitted on (default 1024)")] = None,
    round_to: Annotated[int, typer.Option("--round-to", help="structured: keep a multiple of N channels per group (16 for AVX-512 CPUs, 8 for AVX2: counts between multiples run no faster)")] = 1,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="fine-tune epochs on --data (gradual: total epochs, default 30)")] = 0,
    lr: Annotated[float | None, typer.Option("--lr", help="fine-tune learning rate (default 1e-3; gradual 2e-3)")] = None,
    lr_schedule: Annotated[str | None, typer.Option("--lr-schedule", help="fine-tune learning rate: constant | cosine | linear (decay to 0; default constant, gradual cosine)")] = None,
    distill: Annotated[bool, typer.Option("--distill", help="fine-tune on the soft targets of the unpruned model as well as the labels (knowledge distillation, Hinton et al. 2015)")] = False,
    kd_temperature: Annotated[float | None, typer.Option("--kd-temperature", help="--distill: softmax temperature of the soft targets, > 0 (default 4)")] = None,
    kd_alpha: Annotated[float | None, typer.Option("--kd-alpha", help="--distill: weight of the soft targets against the labels, 0-1 (default 0.5)")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="fine-tune batch size")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="seed of the fine-tune's data order: the same seed gives the same file")] = 0,
    mixed_precision: MixedPrecisionOpt = "no",
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="held-out data for the before/after table and the fidelity gate (default: --data, less the samples fine-tuning uses)")] = None,
    repeats: RepeatsOpt = 30, threads: ThreadsOpt = 2,
    allow_degraded: AllowDegradedOpt = False, gate_min_cos: GateCosOpt = 0.9, gate_max_drop: GateDropOpt = 5.0,
    weights: WeightsOpt = None, input_shape: InputShapeOpt = None, data: DataOpt = None,
    trust_remote_code: TrustOpt = False, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Prune a PyTorch model and measure the written file against the original."""
    from ..convert.onnx2torch.route import trainable_handle
    from ..core.data import load_data
    from ..core.fileio import check_output
    from ..evaluate import gate
    from ..prune import prune_with_report

    given = options_given(ctx, METHOD_OPTIONS)
    if method == "structured" and (reconstruct_ridge is not None or reconstruct_samples is not None) and not reconstruct:
        raise InputError("--reconstruct-ridge and --reconstruct-samples apply only with --reconstruct")
    if method == "structured" and reconstruct and data is None:
        raise InputError("--reconstruct needs --data: the unlabelled samples the pruned layers are re-fitted on")
    if method == "structured" and importance in ("activation", "fisher") and data is None:
        raise InputError(f"--importance {importance} scores channels on real samples: give --data (unlabelled samples "
                         "are enough; random inputs from --input-shape would rank them by noise)")
    trains = finetune_epochs > 0 or method == "gradual"
    if not trains and (distill or lr_schedule is not None):
        raise InputError(f"{'--distill' if distill else '--lr-schedule'} applies to fine-tuning: give "
                         "--finetune-epochs N (or --method gradual)")
    if not distill and (kd_temperature is not None or kd_alpha is not None):
        raise InputError("--kd-temperature and --kd-alpha apply only with --distill")
    if lr_schedule is not None and lr_schedule not in ("constant", "cosine", "linear"):
        raise InputError(f"--lr-schedule {lr_schedule!r}: use constant, cosine or linear")
    if kd_temperature is not None and not 0 < kd_temperature < float("inf"):
        raise InputError(f"--kd-temperature {kd_temperature:g}: the softmax temperature must be a finite number > 0")
    if kd_alpha is not None and not 0 <= kd_alpha <= 1:
        raise InputError(f"--kd-alpha {kd_alpha:g}: the soft targets' weight must be between 0 and 1")
    config = _config(method, sparsity, threshold, scope, importance, protect or [], finetune_epochs, lr, nm,
                     heads_ratio, ffn_ratio, reconstruct, reconstruct_ridge, round_to, reconstruct_samples,
                     given=given, training={k: v for k, v in {"lr_schedule": lr_schedule, "distill": distill or None,
                                                              "kd_temperature": kd_temperature,
                                                              "kd_alpha": kd_alpha}.items() if v is not None})
    # pruning is lossy by design: random inputs cannot tell a usable result from a broken one
    policy = dataclasses.replace(gate_policy(gate_min_cos, gate_max_drop, allow_degraded), judge_random=False)
    from ..core import formats

    suffix = formats.require(output, ("onnx", "pt2", "safetensors")).suffixes[0]
    if batch_size < 1 or finetune_epochs < 0 or repeats < 1 or threads < 1:
        raise InputError("--batch-size, --repeats and --threads must be >= 1, --finetune-epochs >= 0")
    precision = mixed_precision_option(mixed_precision)
    if precision != "no" and not (finetune_epochs > 0 or method == "gradual"):
        raise InputError("--mixed-precision applies to training: give --finetune-epochs N (or --method gradual)")
    check_output(output, inputs=(src, weights), force=force)
    if not json_out:
        warn_without_bf16(precision)
    handle = load_model(src, weights=weights, input_shape=input_shape, data=data, trust_remote_code=trust_remote_code)
    if suffix == ".safetensors" and (handle.kind == "onnx" or handle.path is not None and handle.path.suffix == ".pt2"):
        raise InputError(f"{output.name}: a .safetensors file holds weights for a module:factory source or a Hugging "
                         f"Face folder; write {handle.path.suffix if handle.path else '.onnx'} for {src}")
    original = handle  # what the written model is measured against: the file the user gave
    handle = trainable_handle(handle, data)  # an ONNX file is pruned as its PyTorch import, written back
    ds = load_data(data, handle) if data is not None else None
    held: Any = load_data(eval_data, handle) if eval_data is not None else ds
    from ..prune import ACTIVATION_SAMPLES

    trains = trains or importance == "taylor"
    scores = method == "structured" and importance in ("activation", "fisher")  # ranks channels on the first 256
    if ds is not None and eval_data is None and (trains or reconstruct or scores):  # never measure on what it used
        used = len(ds) if trains else min(len(ds), max(getattr(config, "reconstruct_samples", 0) if reconstruct else 0,
                                                        ACTIVATION_SAMPLES if scores else 0))
        ds, held, _spared = gate.split_holdout(ds, used)
    pruned, report = prune_with_report(handle, config, data=ds, batch_size=batch_size, seed=seed,
                                       progress=not json_out, mixed_precision=precision)
    try:
        table, verdict = gate.write_checked(  # nothing lands unless the gate passes
            original, pruned, output, held=held, policy=policy,
            write=lambda h, path: _save(h, path, force=True, src=src),
            measure=lambda written, path, data: _measure(original, written, path, src, data, repeats, json_out,
                                                         threads=threads, name=str(output)))
    except gate.DegradedError:
        if not json_out:  # what was pruned and how training went explain the refusal that follows
            _print_summary(report)
        raise
    result = {"output": str(output), "report": report.to_dict(), "bench": table.to_dict() if table else None,
              "gate": verdict.to_dict()}
    if json_out:
        print_json(result)
        return
    _print_summary(report)
    if table is not None:
        from .common_cmds import print_bench

        print_bench(table, verdict)
    print_gate(verdict)
    console.print(f"wrote {output}")


def _print_summary(report: Any) -> None:
    """What was pruned (groups, parameters), re-fitted and fine-tuned, and the warnings."""
    console.print(f"[bold]{report.method}[/]: parameters {report.params_before:,} → {report.params_after:,} "
                  f"({report.params_after / max(report.params_before, 1):.2f}×), zero weights "
                  f"{100 * report.sparsity_before:.1f}% → {100 * report.sparsity_after:.1f}%")
    for g in report.groups[:12]:
        console.print(f"  {g['kind']} group {g['name']}: {g['size']} → {g['kept']}", highlight=False)
    if len(report.groups) > 12:
        console.print(f"  ... {len(report.groups) - 12} more groups")
    if report.reconstructed:
        fits = report.reconstructed
        mean = sum(f["before"] for f in fits) / len(fits), sum(f["after"] for f in fits) / len(fits)
        console.print(f"reconstructed {len(fits)} layers on {fits[0]['tokens']:,} calibration vectors (tokens, "
                      "pixels or samples, as the layer reads them): output error vs the "
                      f"unpruned layers {mean[0]:.4f} → {mean[1]:.4f} (mean relative squared error)", highlight=False)
    if report.finetune_loss:
        bf16 = " in bfloat16 mixed precision" if report.mixed_precision == "bf16" else ""
        kd = report.distilled
        how = (f" on the unpruned model's soft targets (temperature {kd['temperature']:g}, alpha {kd['alpha']:g})"
               + (" and the labels" if kd["alpha"] < 1 else "") if kd else "")
        sched = f", {report.lr_schedule} learning-rate decay" if report.lr_schedule != "constant" else ""
        console.print(f"fine-tuned {report.finetune_epochs} epoch(s){how}{bf16}{sched}: training loss "
                      f"{report.finetune_loss[0]:.4f} → {report.finetune_loss[1]:.4f}", highlight=False)
    if report.batchnorm_recalibrated:
        console.print(f"  BatchNorm statistics recomputed on the training data for {report.batchnorm_recalibrated} "
                      "layer(s) whose momentum 0 kept them from following fine-tuning", highlight=False)
    if report.batchnorm_inserted:
        console.print(f"  fine-tuned with a BatchNorm after each of {report.batchnorm_inserted} convolution(s) (the "
                      "ONNX exporter had folded them away), folded back into them after", highlight=False)
    for w in report.warnings:
        warn(w)


def _save(handle: Any, output: Path, *, force: bool, src: str) -> Any:
    from ..convert.writers import save

    if output.suffix.lower() == ".onnx":  # export_onnx directly: convert.writers.save passes the path positionally
        from ..convert.export import export_onnx

        return export_onnx(handle, None, output, force=force)
    return save(handle, output, force=force, source_path=src if Path(src).exists() else None)


def _measure(original: Any, written: Any, output: Path, src: str, data: Any, repeats: int, quiet: bool, *,
             name: str, threads: int = 2) -> Any:
    """Bench the original and the written file in the same runtime (``evaluate.compare``)."""
    from ..evaluate.compare import compare
    from ..loading import load

    if output.suffix.lower() == ".safetensors":  # weights only: the architecture comes from the source
        written = load(src, weights=str(output))
        written.example_inputs = original.example_inputs
        written.inputs = original.inputs
    after = output if output.suffix.lower() == ".onnx" else written.with_model(written.model, path=output)
    return compare(original, after, data=data, repeats=repeats, threads=threads, names=(src, name), progress=not quiet,
                   export_before=lambda h, p: _save(h, p, force=True, src=src))
