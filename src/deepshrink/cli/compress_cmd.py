"""``deepshrink compress`` (a recipe's steps with checkpoints and reports) and ``deepshrink recipes``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    gate_policy,
    print_gate,
    print_json,
    warn,
)


@app.command("compress")
def compress_cmd(
    src: Annotated[str, typer.Argument(help="the model: .onnx, .pt2, package.module:factory (+ --weights), HF folder")],
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="a built-in recipe name (see `deepshrink recipes`) or a YAML file")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output folder: step checkpoints, model, reports")],
    data: DataOpt = None,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="held-out data every written model is measured on (default: the samples of --data the steps can spare)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run in OUTPUT, reusing finished steps")] = False,
    weights: WeightsOpt = None, input_shape: InputShapeOpt = None, trust_remote_code: TrustOpt = False,
    force: ForceOpt = False, json_out: JsonOpt = False,
    threads: ThreadsOpt = 2,
    repeats: RepeatsOpt = 30,
    allow_degraded: AllowDegradedOpt = False, gate_min_cos: GateCosOpt = 0.9, gate_max_drop: GateDropOpt = 5.0,
) -> None:
    """Run a recipe (prune, quantize, ...) on a model; measure every step's file; write reports."""
    from ..errors import InputError
    from ..recipe import compress

    if threads < 1 or repeats < 1:
        raise InputError("--threads and --repeats must be at least 1")
    say = (lambda *a, **k: None) if json_out else (lambda msg: console.print(msg, highlight=False, markup=False))
    res = compress(src, recipe, output, data=data, eval_data=eval_data, resume=resume, force=force, weights=weights,
                   input_shapes=input_shape, trust_remote_code=trust_remote_code, threads=threads, repeats=repeats,
                   gate=gate_policy(gate_min_cos, gate_max_drop, allow_degraded), say=say)
    if json_out:
        print_json({"output": str(res.out_dir), "model": str(res.model_path), "report": res.report,
                    "files": {k: str(v) for k, v in res.files.items()}})
        return
    print_summary(res.report)
    if res.report.get("gate"):
        from ..evaluate.gate import GateVerdict

        print_gate(GateVerdict(**res.report["gate"]))
    console.print(f"wrote {res.model_path}; report: {res.files.get('report.html', res.files['report.json'])}")


def print_summary(report: dict) -> None:
    """The steps as one table, then every flag as a warning line."""
    from rich.table import Table

    from ._app import fmt_bytes

    env = report["environment"]
    table = Table(title=f"measured on {report['data']['source'] if report.get('data') else 'random inputs'}, "
                        f"{env['threads']} threads, {env['cpu']}")
    for col in ("step", "size", "params", "latency vs original", "accuracy", "cos mean/min"):
        table.add_column(col, justify="left" if col == "step" else "right")
    for s in report["steps"]:
        ratio = s.get("latency_ratio")
        table.add_row(s["name"], fmt_bytes(s["size_bytes"]), f"{s['params']:,}" if s.get("params") else "-",
                      "-" if ratio is None else f"{ratio:.2f}× ±{s.get('latency_ratio_spread') or 0:.2f}",
                      "-" if s.get("accuracy") is None else f"{100 * s['accuracy']:.2f}%",
                      "-" if s.get("cos_mean") is None else f"{s['cos_mean']:.4f} / {s['cos_min']:.4f}")
    console.print(table)
    for s in report["steps"]:
        for f in s["flags"]:
            warn(f"{s['name']}: {f['message']}")


@app.command("recipes")
def recipes_cmd(name: Annotated[str | None, typer.Argument(help="print this built-in recipe as YAML")] = None) -> None:
    """List the built-in recipes (one line each), or print one as YAML."""
    import yaml

    from ..errors import InputError
    from ..recipe.steps import BUILTIN, builtin_recipes

    if name is None:
        width = max(len(n) for n in BUILTIN)
        for n, desc in builtin_recipes().items():
            console.print(f"{n:<{width}}  {desc}", highlight=False, markup=False, soft_wrap=True)
        return
    if name not in BUILTIN:
        raise InputError(f"no built-in recipe {name!r}; built-ins: {', '.join(BUILTIN)}")
    console.print(yaml.safe_dump(BUILTIN[name][1], sort_keys=False).rstrip(), highlight=False, markup=False)
