"""``deepshrink optimize IN.onnx -o OUT.onnx [--level basic|extended|layout] [--fp16] [--fuse transformer]``.

Parses options, builds an :class:`~deepshrink.optimize.OptimizeConfig`, calls
:func:`deepshrink.optimize.optimize` (parity-checked, written atomically) and prints the
before/after table: op count by type, size, and latency measured by ``bench``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import InputError
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
    print_json,
    warn,
)


@app.command("optimize")
def optimize_cmd(
    src: Annotated[str, typer.Argument(help="model: .onnx (a PyTorch source is exported to ONNX first)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output .onnx file")],
    level: Annotated[str, typer.Option("--level", help="ONNX Runtime level: basic (portable ONNX) | extended "
                                                        "(ONNX Runtime-only ops) | layout (ONNX Runtime on this CPU type only)")] = "basic",
    fp16: Annotated[bool, typer.Option("--fp16", help="store float tensors as float16 (inputs/outputs stay float32)")] = False,
    fuse: Annotated[str, typer.Option("--fuse", help="none | transformer (ONNX Runtime's BERT fusions)")] = "none",
    simplify: Annotated[str, typer.Option("--simplify", help="auto (onnxslim when installed) | onnxslim | none")] = "auto",
    repeats: RepeatsOpt = 30, threads: ThreadsOpt = 2,
    weights: WeightsOpt = None, input_shape: InputShapeOpt = None, data: DataOpt = None,
    trust_remote_code: TrustOpt = False, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Offline graph optimisation (shape inference, constant folding, fusions, ORT levels), parity-checked."""
    from ..optimize import OptimizeConfig, optimize

    if repeats < 1 or threads < 1:
        raise InputError("--repeats and --threads must be at least 1")
    config = OptimizeConfig.build(level=level, fp16=fp16, fuse=fuse, simplify=simplify)
    res = optimize(src, config, output=output, data=data, force=force, weights=weights, input_shapes=input_shape,
                   trust_remote_code=trust_remote_code)
    from ..evaluate.bench import bench

    table = bench([src, str(output)], data=data, repeats=repeats, threads=threads,  # rows named by their files
                  progress=not json_out, weights=weights, input_shapes=input_shape,
                  trust_remote_code=trust_remote_code)
    if json_out:
        print_json({**res.to_dict(), "bench": table.to_dict()})
        return
    for step in res.steps:
        console.print(f"  {step}", highlight=False, markup=False)
    ops = Table(title=f"op count: {res.nodes_before} → {res.nodes_after} nodes")
    for col in ("op", "before", "after"):
        ops.add_column(col, justify="left" if col == "op" else "right")
    for op in dict.fromkeys([*res.ops_before, *res.ops_after]):
        ops.add_row(op, str(res.ops_before.get(op, 0)), str(res.ops_after.get(op, 0)))
    console.print(ops)
    if res.parity is not None:
        console.print(res.parity.summary(), highlight=False, markup=False)
    from .common_cmds import print_bench

    print_bench(table)
    for w in res.warnings:
        warn(w)
    console.print(f"wrote {output}")
