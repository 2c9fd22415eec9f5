"""``deepshrink search``: per-layer quantization choices searched against a fidelity target and a budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import (
    OPTIONAL_VALUE,
    DataOpt,
    ForceOpt,
    InputShapeOpt,
    JsonOpt,
    ThreadsOpt,
    TrustOpt,
    WeightsOpt,
    app,
    console,
    print_json,
    warn,
)

EXIT_BUDGET_NOT_MET = 4
OPTIONAL_VALUE[("search", "--ray")] = "local"  # bare --ray: a local cluster for the run


@app.command("search")
def search_cmd(
    src: Annotated[str, typer.Argument(help="the model: .onnx, .pt2, package.module:factory (+ --weights), HF folder")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output folder: best.onnx (or best.dsz), best.yaml, pareto.json, reports")],
    data: DataOpt = None,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="held-out data the candidates are judged on (default: the last part of --data, never used to calibrate)")] = None,
    max_drop: Annotated[float | None, typer.Option("--max-drop", help="accuracy points the chosen model may lose (needs labels)")] = None,
    target_cos: Annotated[float | None, typer.Option("--target-cos", help="mean output cosine to the original to keep (unlabelled data)")] = None,
    min_cos: Annotated[float | None, typer.Option("--min-cos", help="worst-sample output cosine to keep (default: min(0.99, --target-cos))")] = None,
    confidence: Annotated[float, typer.Option("--confidence", help="--target-cos: standard errors the measured mean must clear it by, so that it holds on unseen samples too (0: the measured mean; quantize --scheme auto uses 2)")] = 0.0,
    budget: Annotated[list[str] | None, typer.Option("--budget", help="size=2MB | size=0.1x | latency=0.5x | latency=2ms (one)")] = None,
    trials: Annotated[int, typer.Option("--trials", help="candidates to build and measure (sensitivity warm starts included)")] = 24,
    time_limit: Annotated[str | None, typer.Option(
        "--time", help="wall-clock cap on the trials: 90s, 10m, 1h (the finalists' re-timing and the replay that "
        "writes best.* come after it)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="the optimiser's seed: the same seed gives the same trials")] = 0,
    choices: Annotated[str, typer.Option("--choices", help="what a layer may become, comma-separated: float,int8,int4,codebook")] = "float,int8,int4,codebook",
    weights: WeightsOpt = None, input_shape: InputShapeOpt = None, trust_remote_code: TrustOpt = False,
    force: ForceOpt = False, json_out: JsonOpt = False,
    threads: ThreadsOpt = 2,
    repeats: Annotated[int, typer.Option("--repeats", help="interleaved timing rounds per candidate (0: no timing; the search then minimises size)")] = 20,
    ray: Annotated[str | None, typer.Option("--ray", metavar="[ADDRESS]", help="measure trials in parallel on Ray (needs the 'ray' extra): --ray alone starts a local cluster for the run and stops it after; HOST:PORT, ray://HOST:PORT or auto joins a running one (deepshrink installed on its nodes). Same seed, same trials as without --ray")] = None,
    ray_workers: Annotated[int | None, typer.Option("--ray-workers", help="trials measured at once on Ray, each with --threads threads (default: the cluster's CPUs // --threads)")] = None,
    proposal_batch: Annotated[int, typer.Option("--proposal-batch", help="trials proposed per round before the optimiser sees their results; with or without --ray, the same value gives the same trials")] = 4,
    pack: Annotated[str, typer.Option("--pack", help="also search Deep Compression (per-layer pruning + k-means bits, fine-tuned, packed into best.dsz): auto (with a size budget, a PyTorch model and labelled data), on, off")] = "auto",
    pack_trials: Annotated[int, typer.Option("--pack-trials", help="Deep Compression candidates to fine-tune and build")] = 6,
    pack_epochs: Annotated[str, typer.Option("--pack-epochs", metavar="P,F", help="epochs of pruning and of centroid fine-tuning per Deep Compression candidate")] = "40,10",
    structured: Annotated[str, typer.Option("--structured", help="also search channel pruning (fine-tuned): auto (with a latency budget, a PyTorch or ONNX model and labelled data), on, off")] = "auto",
    structured_trials: Annotated[int, typer.Option("--structured-trials", help="pruning ratios to fine-tune and build")] = 3,
    structured_epochs: Annotated[int, typer.Option("--structured-epochs", help="fine-tuning epochs of each channel-pruned candidate")] = 30,
) -> None:
    """Search per-layer quantization (float / int8 / int4 / codebook) for the fastest or smallest model that
    keeps the fidelity target; every candidate is built, timed on ONNX Runtime and judged on held-out data.

    With --ray, trials run side by side on Ray workers (--threads threads each); finalists are re-timed alone.
    With a size budget and a PyTorch model on labelled data, Deep Compression candidates (--pack) are searched too;
    with a latency budget, channel-pruned ones (--structured).

    Exit status 4 when no candidate meets the target and the budget (the reports are still written)."""
    from ..errors import InputError
    from ..search import SearchConfig, parse_budget, parse_duration, search
    from ..search.config import CHOICES

    if data is None:
        raise InputError("search needs --data: calibration samples, and held-out ones to judge candidates on")
    if max_drop is not None and max_drop < 0:
        raise InputError(f"--max-drop {max_drop:g} is negative; give the accuracy points the model may lose (>= 0)")
    if max_drop is not None and target_cos is not None:
        raise InputError("give either --max-drop (accuracy points, labelled data) or --target-cos (output cosine), "
                         "not both")
    if max_drop is None and target_cos is None:
        raise InputError("give a fidelity target: --max-drop PT (accuracy points, labelled data) or --target-cos C")
    if budget and len(budget) > 1:
        raise InputError(f"--budget given {len(budget)} times ({', '.join(budget)}); the search meets one budget "
                         "(size or latency) and reports the other resource for every candidate: give one")
    if ray_workers is not None and ray is None:
        raise InputError("--ray-workers is the number of Ray workers; give --ray too (alone: a local cluster)")
    picked = tuple(c.strip() for c in choices.split(",") if c.strip())
    bad = [c for c in picked if c not in CHOICES]
    if bad:
        raise InputError(f"--choices: unknown choice {bad[0]!r}; use {', '.join(CHOICES)}")
    for opt, val in (("--pack", pack), ("--structured", structured)):
        if val not in ("auto", "on", "off"):
            raise InputError(f"{opt} {val!r}: use auto, on or off")
    parts = pack_epochs.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"--pack-epochs {pack_epochs!r}: give two whole numbers, pruning and fine-tuning epochs: 40,10")
    if confidence and target_cos is None:
        raise InputError("--confidence applies to a cosine target: give --target-cos, or leave --confidence out")
    config = SearchConfig.build(max_drop=max_drop, target_cos=target_cos, min_cos=min_cos, confidence=confidence,
                                budget=parse_budget(budget[0]) if budget else None, choices=picked,
                                trials=trials, time_s=parse_duration(time_limit) if time_limit else None,
                                seed=seed, threads=threads, repeats=repeats, ray=ray, ray_workers=ray_workers,
                                proposal_batch=proposal_batch, pack=pack, pack_trials=pack_trials,
                                pack_epochs=tuple(int(p) for p in parts), structured=structured,
                                structured_trials=structured_trials, structured_epochs=structured_epochs)
    say = (lambda *a, **k: None) if json_out else (lambda msg: console.print(msg, highlight=False, markup=False))
    from ..search import BudgetNotMetError
    from ..search.objective import choices_text

    try:
        res = search(src, data, config, output, eval_data=eval_data, force=force, weights=weights,
                     input_shapes=input_shape, trust_remote_code=trust_remote_code,
                     progress=not json_out and console.is_terminal, say=say)  # no bars in a log: blank lines
    except BudgetNotMetError as exc:
        if json_out and exc.result is not None:
            print_json({"output": str(exc.result.out_dir), "met": False, "report": exc.result.report})
        raise
    if json_out:
        print_json({"output": str(res.out_dir), "met": True, "files": {k: str(v) for k, v in res.files.items()},
                    "report": res.report})
        return
    c = res.report["chosen"]
    t = c.get("final_timing") or {}
    lat = f", {t['latency_ratio']:.2f}x ±{t['latency_spread']:.2f} the original's latency" if t else ""
    test = c.get("test") or c["select"]
    fid = (f"accuracy drop {test['drop_points']:.2f} pt" if test.get("drop_points") is not None
           else f"cosine {test['cos_mean']:.4f} mean / {test['cos_min']:.4f} worst")
    where = (f"the {test['samples']} held-out samples it never chose on" if c.get("test")
             else f"the {test['samples']} held-out samples it chose on (too few to keep some back)")
    console.print(f"chosen: trial {c['trial']} ({choices_text(c['choices'])}): "
                  f"{c['size_ratio']:.3f}x the size{lat}; {fid} on {where}", highlight=False, markup=False)
    for w in res.report["verdict"]["warnings"]:
        warn(w)
    best = res.files.get("best.dsz") or res.files["best.onnx"]
    console.print(f"wrote {best}, {res.files['best.yaml']}; report: {res.files['report.md']}",
                  highlight=False, markup=False)
