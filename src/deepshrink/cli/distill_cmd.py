"""``deepshrink distill --teacher T (--student S | --derive layers=K | --derive width=F) --data D -o OUT``:
distil, write the student atomically, then measure the written file against the teacher side by side.

``--nproc N`` starts N processes of this same command (environment as ``torchrun`` sets it: RANK,
WORLD_SIZE, MASTER_ADDR/PORT); running the command under ``torchrun`` works the same way. Only rank
0 prints, checkpoints and writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputError
from ._app import (
    AllowDegradedOpt,
    DataOpt,
    ForceOpt,
    InputShapeOpt,
    JsonOpt,
    MixedPrecisionOpt,
    RepeatsOpt,
    ThreadsOpt,
    TrustOpt,
    WeightsOpt,
    app,
    console,
    err_console,
    gate_policy,
    load_model,
    mixed_precision_option,
    print_gate,
    print_json,
    warn,
    warn_without_bf16,
)

LOSSES = ("auto", "kd", "embedding", "hidden", "attention")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def config_for(loss: str, **fields: Any) -> Any:
    """The DistillConfig for the CLI's ``--loss``: one output loss (``auto``, ``kd``, ``embedding``) and/or feature
    terms (``hidden``, ``attention``, at weight 1 or ``W*term`` at weight W > 0), joined by ``+``
    (``embedding+3*hidden+attention``)."""
    from ..distill import DistillConfig

    terms, weights = [], {}
    for raw in loss.split("+"):
        weight, star, name = raw.strip().rpartition("*")
        name = name.strip()
        if star:
            try:
                w = float(weight)
            except ValueError:
                w = float("nan")
            if name not in LOSSES:
                raise InputError(f"--loss {loss!r}: {name!r} is not a loss term; use {', '.join(LOSSES)}")
            if name not in ("hidden", "attention") or not w > 0 or w == float("inf"):
                raise InputError(f"--loss {loss!r}: a weight W*term applies to hidden or attention, W > 0 "
                                 "(embedding+3*hidden)")
            weights[name] = w
        terms.append(name)
    if len(set(terms)) != len(terms):
        raise InputError(f"--loss {loss!r} names a term twice: each of {', '.join(LOSSES)} once at most")
    if not loss.strip() or any(t not in LOSSES for t in terms):
        raise InputError(f"--loss {loss!r}: use {', '.join(LOSSES)}, or an output loss and feature terms joined by + "
                         "(embedding+hidden+attention, a feature term weighted as 3*hidden)")
    outputs = [t for t in terms if t in ("auto", "kd", "embedding")]
    if len(outputs) > 1:
        raise InputError(f"--loss {loss!r}: one output loss at a time ({' or '.join(outputs)})")
    extra: dict[str, Any] = {}
    if outputs and outputs[0] != "auto":
        extra["loss"] = outputs[0]
    if "hidden" in terms:
        extra["hidden_weight"] = weights.get("hidden", 1.0)
    if "attention" in terms:
        extra["attention_weight"] = weights.get("attention", 1.0)
    return DistillConfig.build(**{k: v for k, v in fields.items() if v is not None}, **extra)


def parse_layer_map(spec: str | None) -> str | tuple[int, ...] | None:
    """``--layer-map``: ``uniform`` / ``kept``, or teacher layers separated by commas (``0,4,5``)."""
    if spec is None or spec in ("uniform", "kept"):
        return spec
    parts = [p.strip() for p in spec.split(",")]
    if not all(p.isdigit() for p in parts):
        raise InputError(f"--layer-map {spec!r}: use uniform, kept, or one teacher layer per student layer (0,4,5)")
    return tuple(int(p) for p in parts)


def checkpoint_dir_for(output: Path) -> Path:
    """Where a run writing ``output`` keeps its checkpoint: a hidden sibling folder, removed on success."""
    return output.parent / f".{output.name}.distill-ckpt"


@app.command("distill")
def distill_cmd(
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="the teacher: package.module:factory (+ --weights), HF folder, .onnx (run and derived from its PyTorch import)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="the student: .onnx or .pt2")],
    student: Annotated[str | None, typer.Option("--student", help="your student model (same sources as --teacher)")] = None,
    student_weights: Annotated[str | None, typer.Option("--student-weights", help="weights for a module:factory or Hugging Face folder --student (a structurally pruned .safetensors from `prune`: the layers take its shapes)")] = None,
    derive: Annotated[str | None, typer.Option("--derive", help="layers=K (keep K transformer layers) or width=F (keep fraction F of channels)")] = None,
    layers_from: Annotated[str, typer.Option("--layers-from", help="derive layers: importance (measured) | uniform (every other)")] = "importance",
    loss: Annotated[str, typer.Option("--loss", help="auto | kd | embedding | hidden (+hidden states) | attention (+attention maps); terms join with +, a feature term weighted as W*term, e.g. embedding+3*hidden+attention")] = "auto",
    temperature: Annotated[float, typer.Option("--temperature", help="KD softmax temperature T")] = 2.0,
    alpha: Annotated[float | None, typer.Option("--alpha", help="KD weight of the soft targets; 1 - alpha on the labels (default 0.5 with labels; without labels the soft targets alone)")] = None,
    metric: Annotated[str, typer.Option("--metric", help="embedding / hidden-state distance: mse | cosine")] = "mse",
    layer_map: Annotated[str | None, typer.Option("--layer-map", help="hidden/attention losses: teacher layer per student layer — uniform (TinyBERT) | kept (where a --derive layers=K student's layers came from) | e.g. 0,4,5")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="passes over --data")] = 3,
    lr: Annotated[float | None, typer.Option("--lr", help="learning rate (default 1e-4 for transformers, 1e-3 otherwise)")] = None,
    lr_schedule: Annotated[str, typer.Option("--lr-schedule", help="constant | cosine | linear (decay after the warmup)")] = "constant",
    warmup: Annotated[float, typer.Option("--warmup", help="fraction of the steps with a linear learning-rate warmup")] = 0.0,
    max_length: Annotated[int, typer.Option("--max-length", help="text data: tokens kept per sentence")] = 128,
    freeze: Annotated[list[str] | None, typer.Option("--freeze", help="keep the student's parameters whose names match this glob as they are (repeatable), e.g. '*word_embeddings*'")] = None,
    dropout: Annotated[float | None, typer.Option("--dropout", help="the student's dropout probability while it trains (default: the model's own; 0 helps a student recover its teacher exactly)")] = None,
    group_by_length: Annotated[bool, typer.Option("--group-by-length", help="text data: batch sentences of similar length together (less padding per step)")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="global batch size (split over --nproc)")] = 32,
    mixed_precision: MixedPrecisionOpt = "no",
    seed: Annotated[int, typer.Option("--seed", help="seed of the data order, projections and dropout")] = 0,
    nproc: Annotated[int, typer.Option("--nproc", help="data-parallel processes (DistributedDataParallel)")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run from its checkpoint")] = False,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="steps between checkpoints (0: every epoch)")] = 0,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="data for the fidelity figure and the table (default: --data)")] = None,
    gate_min_cos: Annotated[float | None, typer.Option("--gate-min-cos", help="fidelity gate, off unless given: the student's worst output cosine to the teacher on the evaluation data below this fails (data without labels): exit 3, nothing written")] = None,
    gate_max_drop: Annotated[float | None, typer.Option("--gate-max-drop", help="fidelity gate, off unless given: the student's accuracy drop against the teacher in points above this fails (labelled data): exit 3, nothing written")] = None,
    allow_degraded: AllowDegradedOpt = False,
    repeats: RepeatsOpt = 20, threads: ThreadsOpt = 2,
    weights: WeightsOpt = None, input_shape: InputShapeOpt = None, data: DataOpt = None,
    trust_remote_code: TrustOpt = False, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Distil a teacher into a smaller student and measure the written student against the teacher."""
    from ..core.fileio import check_output

    if student is not None and derive is not None:
        raise InputError("give the student one way: --student S (your model) or --derive layers=K / width=F "
                         "(derived from the teacher), not both")
    if student is None and derive is None:
        raise InputError("give the student: either --student S or --derive layers=K / --derive width=F")
    if student_weights is not None and student is None:
        raise InputError("--student-weights needs --student")
    if student_weights is not None:  # before the teacher loads: its own refusals name --weights
        if Path(student).suffix.lower() in (".onnx", ".pt2"):
            raise InputError(f"--student-weights applies to a module:factory or Hugging Face folder --student, not to "
                             f"{Path(student).name} (its weights are inside it)")
        if not Path(student_weights).is_file():
            raise InputError(f"--student-weights file {student_weights} does not exist")
    if data is None:
        raise InputError("distillation needs --data (inputs for the teacher; labels optional)")
    if nproc < 1:
        raise InputError(f"--nproc {nproc}: give at least 1 process")
    cores = usable_cores()
    if nproc > cores:
        raise InputError(f"--nproc {nproc}: this machine lets this command use {cores} CPU core(s); "
                         f"use --nproc {cores} or fewer")
    if layers_from not in ("importance", "uniform"):
        raise InputError(f"--layers-from {layers_from!r}: use importance or uniform")
    if repeats < 1 or threads < 1:
        raise InputError("--repeats and --threads must be at least 1")
    if max_length < 2:
        raise InputError(f"--max-length {max_length}: keep at least 2 tokens per sentence")
    from ..core import formats

    formats.require(output, ("onnx", "pt2"), what="student output")
    config = config_for(loss, derive=derive, layer_selection=layers_from, temperature=temperature, alpha=0.5 if alpha is None else alpha,
                        metric=metric, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                        checkpoint_every=checkpoint_every, layer_map=parse_layer_map(layer_map),
                        lr_schedule=lr_schedule, warmup=warmup, freeze=tuple(freeze or ()), dropout=dropout,
                        group_by_length=group_by_length, mixed_precision=mixed_precision_option(mixed_precision))
    policy = None
    if gate_min_cos is not None or gate_max_drop is not None:
        import dataclasses

        policy = dataclasses.replace(gate_policy(-1.0 if gate_min_cos is None else gate_min_cos,
                                                 100.0 if gate_max_drop is None else gate_max_drop, allow_degraded),
                                     judge_random=False)
    elif allow_degraded:
        raise InputError("--allow-degraded applies with a fidelity gate: give --gate-min-cos or --gate-max-drop")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if rank == 0:
        check_output(output, inputs=(teacher, weights, student), force=force)
    if rank == 0 and world == 1 and not json_out:
        warn_without_bf16(config.mixed_precision)
    if nproc > 1 and world == 1:
        raise typer.Exit(_launch(nproc))
    if world > 1 and config.batch_size % world:
        raise InputError(f"--batch-size {config.batch_size} does not split evenly over {world} processes")
    ckpt = checkpoint_dir_for(output)
    if resume and not (ckpt / "last.ckpt").exists() and rank == 0 and not json_out:
        console.print(f"no checkpoint at {ckpt}; starting from the beginning", style="yellow", highlight=False)

    from ..convert.onnx2torch.route import trainable_handle
    from ..core.data import load_data
    from ..distill import distill_with_report

    t_handle = load_model(teacher, weights=weights, input_shape=input_shape, data=data,
                          trust_remote_code=trust_remote_code)
    t_original = t_handle  # the file the user gave: what the student is measured against
    t_handle = trainable_handle(t_handle, data)  # an ONNX teacher runs as its PyTorch import
    s_handle = None
    if student is not None:
        import torch

        torch.manual_seed(config.seed)  # a factory student without --student-weights starts from seeded random weights
        try:
            s_handle = load_model(student, weights=student_weights, input_shape=input_shape, data=data,
                                  trust_remote_code=trust_remote_code)
        except InputError as exc:  # the student reads the teacher's --input-shape and --data: say whose inputs
            raise InputError(f"the student {student}: {exc}") from None
        s_handle = trainable_handle(s_handle, data)  # an ONNX student trains as its PyTorch import
    train = load_data(data, t_handle, max_length=max_length)
    if alpha is not None and alpha < 1.0 and train.labels is None:
        raise InputError(f"--alpha {alpha:g} puts weight {1 - alpha:g} on the labels, but {train.source} has none; "
                         "pass labelled data, or --alpha 1 for the soft targets alone")
    evaluation = load_data(eval_data, t_handle, max_length=max_length) if eval_data is not None else None
    if s_handle is not None:
        load_data(train, s_handle)  # the student reads the same arrays: refuse a mismatch in one line now
    judged = evaluation if evaluation is not None else train  # what the table and the gate measure on
    if gate_max_drop is not None and judged.labels is None:
        raise InputError(f"--gate-max-drop judges accuracy, but {judged.source} has no labels; for data without "
                         "labels the gate is --gate-min-cos")
    if gate_min_cos is not None and judged.labels is not None and len(t_handle.outputs) <= 1:
        raise InputError(f"--gate-min-cos judges data without labels; {judged.source} has labels, so the gate judges "
                         "accuracy: use --gate-max-drop")
    result, report = distill_with_report(t_handle, s_handle, train, config, eval_data=evaluation,
                                         checkpoint_dir=ckpt, resume=resume, progress=not json_out and rank == 0)
    if rank != 0:
        return
    result = result.with_model(result.model, inputs=t_handle.inputs, outputs=t_handle.outputs,
                               example_inputs=t_handle.example_inputs, tokenizer_dir=t_handle.tokenizer_dir)
    from ..evaluate import gate
    from .prune_cmd import _measure, _save

    n_eval = min(256, len(train))
    evaluated_on = ("--eval-data" if eval_data is not None else
                    f"the first {n_eval} training sample{'s' * (n_eval != 1)} (no --eval-data)")

    def measure(written: Any, path: Path, _held: Any) -> Any:
        return _measure(t_original, written, path, teacher, eval_data or data, repeats, json_out, name=str(output),
                        threads=threads)

    verdict = None
    try:
        if policy is None:
            table = measure(_save(result, output, force=force, src=teacher), output, None)
        else:  # nothing lands unless the student passes
            table, verdict = gate.write_checked(t_original, result, output, held=None, policy=policy, locate=False,
                                                write=lambda h, path: _save(h, path, force=True, src=teacher),
                                                measure=measure)
    except gate.DegradedError:
        shutil.rmtree(ckpt, ignore_errors=True)
        if not json_out:  # how training went explains the refusal that follows
            print_report(report, evaluated_on)
        raise
    shutil.rmtree(ckpt, ignore_errors=True)  # kept when writing failed: --resume then skips the finished training
    if json_out:
        print_json({"output": str(output), "report": report.to_dict(), "bench": table.to_dict() if table else None,
                    "gate": verdict.to_dict() if verdict is not None else None})
        return
    print_report(report, evaluated_on)
    if table is not None:
        from .common_cmds import print_bench

        print_bench(table, verdict)
    if verdict is not None:
        print_gate(verdict)
    console.print(f"wrote {output}")


def print_report(report: Any, evaluated_on: str = "the evaluation data") -> None:
    console.print(f"[bold]student[/] {report.student_from}: parameters {report.teacher_params:,} → "
                  f"{report.student_params:,} ({report.student_params / max(report.teacher_params, 1):.2f}×)",
                  highlight=False)
    if report.layers:
        lay = report.layers
        drops = ", ".join(f"{k}: {v:.3f}" for k, v in lay["drop_one"].items())
        console.print(f"  kept layers {lay['keep']} of {lay['n_layers']} ({lay['selection']}); output error of the "
                      f"kept layers before training {lay['error']:.3f}" + (f"; drop-one error per layer {drops}" if drops else ""),
                      highlight=False)
    if report.layer_map:
        console.print(f"  layer map (teacher layer per student layer) {report.layer_map}", highlight=False)
    for w in (report.width or {}).get("warnings", []):  # what the width derivation left unpruned, and why
        warn(w)
    if report.first_loss is not None:
        console.print(f"  {report.objective or report.loss} loss {report.first_loss:.4f} → {report.last_loss:.4f} over {report.steps} steps, "
                      f"{report.epochs} epoch{'s' * (report.epochs != 1)}, {report.world_size} process(es)"
                      + (", bfloat16 mixed precision" if report.mixed_precision == "bf16" else "")
                      + (f", resumed at step {report.resumed_from}" if report.resumed_from else ""), highlight=False)
    elif report.resumed_from:  # the checkpoint held the last step: nothing left to train, said so
        console.print(f"  resumed at step {report.resumed_from} of {report.steps}: the checkpoint holds the finished "
                      "training; no step was left to run", highlight=False)
    elif report.steps == 0:
        console.print("  no training step ran (--epochs 0): the student is written as it started", highlight=False)
    if report.batchnorm_recalibrated:
        console.print(f"  BatchNorm statistics recomputed on the training data for {report.batchnorm_recalibrated} "
                      "layer(s) whose momentum 0 kept them from following training", highlight=False)
    if report.batchnorm_inserted:
        console.print(f"  trained with a BatchNorm after each of {report.batchnorm_inserted} convolution(s) (the ONNX "
                      "exporter had folded them away), folded back into them after", highlight=False)
    if report.evals:
        console.print("  " + ", ".join(f"{k} {v:.4f}" for k, v in report.evals[-1].items())
                      + f" on {evaluated_on} after the last epoch", highlight=False)


def _launch(nproc: int) -> int:
    """Run this same command in ``nproc`` processes (rank 0 talks; the others are quiet); rank 0's exit status.

    A failing process stops the others, and its first error line is shown if rank 0 said nothing.
    """
    import socket
    import tempfile
    import time

    from ._app import current_argv

    argv = _without_nproc(current_argv)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        log = None if rank == 0 else tempfile.TemporaryFile()
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "-m", "deepshrink.cli", *argv], env=env,
                                      stdout=log, stderr=subprocess.STDOUT if log is not None else None))
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed or all(c is not None for c in codes):
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        failed = [0]
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    status = procs[0].returncode
    if status == 0 and failed:
        status = procs[failed[0]].returncode or 1
        log = logs[failed[0]]
        if log is not None:
            log.seek(0)
            lines = [ln for ln in log.read().decode(errors="replace").splitlines() if ln.strip()]
            err_console.print(f"error: process {failed[0]} failed: {lines[-1] if lines else 'no output'}",
                              highlight=False, markup=False)
    for log in logs:
        if log is not None:
            log.close()
    return int(status)


def _without_nproc(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out
