"""``compress``: run a recipe's steps on a model, checkpoint after each, measure every written file.

Layout of ``OUT_DIR`` (every file written atomically; a step's folder appears only when the
step has finished, so a run killed at any point leaves whole steps or nothing)::

    steps/00-original/model.onnx      the source as ONNX fp32: the baseline every step is timed against
    steps/01-prune/model.safetensors  each step's own output (torch: weights, or .pt2; ONNX: .onnx)
    steps/01-prune/measure.onnx       a torch step's output exported for measurement in ONNX Runtime
    steps/NN-verb/step.json           what the step did, its config, and the chain key
    model.onnx                        the final model (a copy of the last step's output)
    report.json / report.md / report.html, recipe.yaml (resolved), environment.json

Every step reads its input back from the previous step's written file — also in an uninterrupted
run — so ``--resume`` after an interruption continues from the last finished step and ends with
a byte-identical model. A step is reused only when its chain key (a digest of the source, the
data and every step up to it) matches, so editing the recipe redoes what changed and what follows.
Training inside steps is deterministic (one thread, seeded; see ``train/trainer.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.fileio import write_text_atomic
from ..core.handle import ModelHandle
from ..errors import DeepshrinkError, InputError, UnsupportedError
from .steps import Recipe, Step, check_chain, check_layer_counts, load_recipe

MARKER = ".deepshrink-compress"
SCHEMA = "deepshrink.report/1"


@dataclass
class StepOutcome:
    """One finished step: where its model is, what it did, and whether it was reused."""

    index: int
    name: str
    verb: str | None
    folder: Path
    artifact: Path
    measure: Path  # the ONNX file measured for this step
    kind: str
    summary: str
    details: dict[str, Any]
    seconds: float
    reused: bool = False


@dataclass
class CompressResult:
    out_dir: Path
    model_path: Path
    steps: list[StepOutcome]
    report: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def compress(model: Any, recipe: Any, out_dir: str | os.PathLike[str], *, data: Any = None, eval_data: Any = None,
             resume: bool = False, force: bool = False, weights: str | None = None,
             input_shapes: list[str] | dict[str, tuple[int, ...]] | None = None, trust_remote_code: bool = False,
             threads: int = 2, repeats: int = 20, measure: bool = True, gate: Any = None,
             say: Any = None) -> CompressResult:
    """Run ``recipe`` (a built-in name, a YAML path, a dict or a :class:`Recipe`) on ``model``.

    ``data``: what steps train / calibrate on (needed when a step says so); ``eval_data``: what
    every written model is measured on (default: the samples of ``data`` the steps can spare — see
    :func:`deepshrink.evaluate.gate.split_holdout`; random inputs when neither is given).
    ``gate``: a :class:`deepshrink.evaluate.gate.FidelityPolicy` (default: its defaults) judging
    the final model against the original; when it fails, ``model.*`` is not written (the steps
    and the reports are, so the run can be read and resumed) and :class:`DegradedError` (exit 3)
    is raised, unless the policy allows degraded results. ``measure=False`` skips both.
    ``resume``: continue in an existing ``out_dir``, reusing finished steps; ``force``: start over
    in an ``out_dir`` a previous compress wrote. Raises :class:`InputError` (one line) for a bad
    recipe, a chain that cannot run, missing data, or an output folder in the way — all before
    any work or write.
    """
    from ..core.data import load_data
    from ..loading import load

    say = say or (lambda *a, **k: None)
    rec = load_recipe(recipe)
    out = Path(out_dir)
    _check_out_dir(out, resume=resume, force=force)
    source = load(model, weights=weights, input_shapes=input_shapes, data=data, trust_remote_code=trust_remote_code)
    train = load_data(data, source) if data is not None else None
    check_chain(rec, source.kind, has_data=train is not None, has_labels=train is not None and train.labels is not None)
    if source.kind == "torch":
        check_layer_counts(rec, source.model)
    evaluation = load_data(eval_data, source) if eval_data is not None else train
    if train is not None and eval_data is None:  # never measure on the samples a step trained on
        from ..evaluate.gate import split_holdout

        train, evaluation, _spared = split_holdout(train, len(train))

    if force and out.exists():
        shutil.rmtree(out)
    fresh = not out.exists() or not any(out.iterdir())  # this run's folder: nothing to keep if step 1 fails
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    (out / "steps").mkdir(exist_ok=True)
    _clean_partial(out / "steps")
    ctx = _Context(source=source, model_spec=model, weights=weights, train=train, trust=trust_remote_code,
                   threads=threads)
    key = _source_key(model, weights, data, source)
    outcomes: list[StepOutcome] = []
    try:
        outcomes.append(_original(out, ctx, key, say))
        for step in rec.steps:
            key = _digest(key, json.dumps({step.verb: step.params}, sort_keys=True, default=str))
            outcomes.append(_run_or_reuse(out, step, outcomes[-1], ctx, key, resume, say))
    except DeepshrinkError as exc:
        if fresh and len(outcomes) <= 1:  # the original's export or step 1 refused it: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
            raise
        if len(outcomes) > 1 and type(exc) in (InputError, UnsupportedError):  # finished steps are checkpoints
            raise type(exc)(f"{exc} (steps 1-{len(outcomes) - 1} are kept in {out}: once fixed, rerun with "
                            "--resume to continue from them)") from None
        raise
    _drop_stale_steps(out, len(rec.steps))

    final = outcomes[-1]
    model_path = out / f"model{final.artifact.suffix}"
    table = verdict = None
    if measure:
        from ..evaluate import gate as fidelity
        from ..evaluate.bench import bench

        say("measuring every step's file side by side")
        table = bench([str(o.measure) for o in outcomes], data=evaluation, threads=threads, repeats=repeats,
                      names=[o.name for o in outcomes], samples=min(len(evaluation), 4096) if evaluation else 64,
                      progress=False)
        policy = gate or fidelity.FidelityPolicy()
        if any(s.verb in ("prune", "distill") for s in rec.steps):  # lossy by design: random inputs cannot judge it
            policy = dataclasses.replace(policy, judge_random=False)
        verdict = fidelity.judge(table, policy)
    report = build_report(rec, source, outcomes, table, evaluation, threads=threads, out_dir=out)
    if verdict is not None:
        report["gate"] = verdict.to_dict()
    if verdict is not None and not verdict.passed and not policy.allow_degraded:
        with contextlib.suppress(FileNotFoundError):
            model_path.unlink()  # a model from an earlier run in this folder is not this run's result
        write_outputs(out, rec, report)
        raise fidelity.DegradedError(f"the compressed model degraded: {fidelity.message(verdict)}; {model_path.name} "
                                     f"not written (steps and report in {out}; --allow-degraded keeps it)", verdict)
    shutil.copyfile(final.artifact, model_path.with_name(f".{model_path.name}.tmp"))
    os.replace(model_path.with_name(f".{model_path.name}.tmp"), model_path)
    files = write_outputs(out, rec, report)
    return CompressResult(out, model_path, outcomes, report, files)


# ------------------------------------------------------------------------------------------
# output folder and chain keys

@contextlib.contextmanager
def _step_folder(folder: Path) -> Iterator[Path]:
    """A temporary sibling folder renamed to ``folder`` once the block completes (one rename: atomic)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; a result folder gets the usual mode
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~mask)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clean_partial(steps: Path) -> None:
    """Temporary folders a killed run left behind."""
    for p in steps.glob(".*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


def _check_out_dir(out: Path, *, resume: bool, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder {out} is a file; give a folder for compress's results")
    if not out.exists():
        if resume:
            raise InputError(f"--resume: {out} does not exist, so there is nothing to resume; drop --resume")
        blocker = next((p for p in out.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise InputError(f"cannot create output folder {out}: {blocker} is a file")
        if blocker is not None:
            from ..core.fileio import check_writable

            check_writable(blocker)
        return  # created (with its parents) once every check has passed
    if not any(out.iterdir()):
        return
    ours = (out / MARKER).exists()
    if resume:
        if not ours:
            raise InputError(f"--resume: {out} was not written by deepshrink compress")
        return
    if force:
        if not ours:
            raise InputError(f"output folder {out} holds files compress did not write; refusing to delete them "
                             "even with --force: choose an empty or new folder")
        return
    raise InputError(f"output folder {out} is not empty; pass --resume to continue the run in it or --force to "
                     "start over")


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_key(model: Any, weights: str | None, data: Any, source: ModelHandle) -> str:
    parts = [str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__]
    for p in (model, weights):
        if isinstance(p, (str, os.PathLike)) and Path(p).is_file():
            parts.append(_file_digest(Path(p)))
    parts.append(str(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__)
    parts.append(__import__("torch").__version__)
    return _digest(*parts)


def _drop_stale_steps(out: Path, n_steps: int) -> None:
    """Folders of steps beyond the recipe's end (a shorter recipe resumed in the same folder)."""
    for folder in (out / "steps").iterdir():
        head = folder.name.split("-", 1)[0]
        if head.isdigit() and int(head) > n_steps:
            shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# steps

@dataclass
class _Context:
    source: ModelHandle
    model_spec: Any
    weights: str | None
    train: Any
    trust: bool
    threads: int = 2  # compress --threads: what auto quantization times its candidates at, unless the step says


def _original(out: Path, ctx: _Context, key: str, say: Any) -> StepOutcome:
    folder = out / "steps" / "00-original"
    record = _read_record(folder)
    if record is not None and record.get("key") == key:
        return _outcome_from(folder, record, reused=True)
    say("step 0: the original model as ONNX fp32 (the baseline)")
    t0 = time.perf_counter()
    if folder.exists():
        shutil.rmtree(folder)
    details: dict[str, Any] = {}
    summary = f"{ctx.source.kind} model from {ctx.source.source or 'memory'}, as ONNX fp32"
    with _step_folder(folder) as tmp:
        if ctx.source.kind == "torch":  # the export is checked like `convert` checks it (ParityError: exit 3)
            from ..convert import convert

            res = convert(ctx.source, tmp / "model.onnx", data=ctx.train, force=True)
            parity = res.hops[0].parity
            if parity is not None:
                details["parity"] = parity.to_dict()
                summary += f"; parity OK, max-abs {parity.max_abs:.2g}"
                say(parity.summary())
        else:
            _write_onnx(ctx.source, tmp / "model.onnx")
        record = {"index": 0, "name": "original", "verb": None, "key": key, "artifact": "model.onnx",
                  "measure": "model.onnx", "kind": "onnx", "summary": summary, "details": details,
                  "seconds": round(time.perf_counter() - t0, 2)}
        write_text_atomic(tmp / "step.json", json.dumps(record, indent=2))
    return _outcome_from(folder, record)


def _run_or_reuse(out: Path, step: Step, prev: StepOutcome, ctx: _Context, key: str, resume: bool,
                  say: Any) -> StepOutcome:
    folder = out / "steps" / f"{step.index:02d}-{step.verb}"
    record = _read_record(folder)
    if resume and record is not None and record.get("key") == key:
        say(f"step {step.index}: {step.describe()} — finished before, reused")
        return _outcome_from(folder, record, reused=True)
    if folder.exists():
        shutil.rmtree(folder)
    say(f"step {step.index}: {step.describe()}")
    from ..train import deterministic_training

    t0 = time.perf_counter()
    handle = _load_artifact(prev, ctx)
    with _step_folder(folder) as tmp:
        if step.verb == "pack":
            with deterministic_training():
                result, summary, details = _pack(step, handle, ctx, tmp / "model.dsz")
            artifact, measure = tmp / "model.dsz", _write_artifact(result, tmp, ctx)[1]
        else:
            with deterministic_training():
                result, summary, details = _apply(step, handle, ctx)
            artifact, measure = _write_artifact(result, tmp, ctx)
        record = {"index": step.index, "name": step.short(), "verb": step.verb, "key": key,
                  "artifact": artifact.name, "measure": measure.name, "kind": result.kind, "summary": summary,
                  "config": step.config.to_dict() if step.config is not None else dict(step.params),
                  "details": details, "seconds": round(time.perf_counter() - t0, 2)}
        write_text_atomic(tmp / "step.json", json.dumps(record, indent=2, default=str))
    say(f"  {summary} ({record['seconds']:.1f} s)")
    return _outcome_from(folder, record)


def _apply(step: Step, handle: ModelHandle, ctx: _Context) -> tuple[ModelHandle, str, dict[str, Any]]:
    """Run one verb; return the new handle, one line of what it did, and the verb's own report.
    Every transforming verb returns the common :class:`~deepshrink.core.result.Result`."""
    import warnings

    result = None
    imported = handle.kind == "onnx" and "onnx" not in step.takes
    if imported:  # a float ONNX model goes through its PyTorch import and is written back as ONNX (check_chain)
        from ..convert.onnx2torch.route import trainable_handle

        handle = trainable_handle(handle, ctx.train)
    with warnings.catch_warnings():  # what a verb left alone is in its report, printed by the step line
        warnings.simplefilter("ignore", UserWarning)
        if step.verb == "prune":
            from ..prune import prune
            from .steps import PRUNE_TRAINING

            result = prune(handle, step.config, data=ctx.train, progress=False,
                           **{k: step.params[k] for k in PRUNE_TRAINING if k in step.params})
        elif step.verb == "distill":
            from ..distill import distill

            # with derive: the student is made from the model so far, which teaches it; without: the model so
            # far (pruned, say) is the student and the recipe's original model the teacher
            teacher, student = (handle, None) if step.config.derive else (ctx.source, handle)
            result = distill(teacher, student, ctx.train, step.config, progress=False)
        elif step.verb == "quantize":
            from ..quantize import quantize
            from ..quantize.configs import AutoConfig

            cfg = step.config
            if isinstance(cfg, AutoConfig) and "threads" not in step.params:
                cfg = cfg.model_copy(update={"threads": ctx.threads})
            result = quantize(handle, cfg, data=ctx.train, progress=False)
    if result is not None:
        if imported and result.model.kind == "torch":
            from ..convert.export import export_onnx

            result.model = export_onnx(result.model, None, None)
        rep = result.report
        name = step.params.get("scheme") or step.params.get("method") or rep.method
        summary = f"{name}: {rep.summary}" if step.verb != "distill" else rep.summary
        # only the verb's own record: ``rep.to_dict()`` would also build the per-layer table, which
        # dequantizes every weight of the step's model, for nothing here
        return result.model, summary, json.loads(json.dumps(rep.details, default=str))
    if step.verb == "convert":
        if step.params["format"] == "onnx" and handle.kind == "torch":
            from ..convert.export import export_onnx

            h = export_onnx(handle, None, None, exporter=step.params.get("exporter", "auto"),
                            **({"opset": step.params["opset"]} if "opset" in step.params else {}))
            return h, "exported to ONNX", {}
        if step.params["format"] == "pt2" and handle.kind == "onnx":
            from ..convert.onnx2torch import onnx_to_torch
            from ..loading import load

            h = load(onnx_to_torch(handle.model), input_shapes={s.name: s.concrete() for s in handle.inputs})
            return h, "imported into PyTorch", {}
        return handle, f"already {handle.kind}", {}
    return handle, "measured", {}


def _pack(step: Step, handle: ModelHandle, ctx: _Context, out: Path) -> tuple[ModelHandle, str, dict[str, Any]]:
    """Pack into ``out`` (.dsz); return the pre-pack model (what the file decodes to, bit for bit) to measure."""
    from ..codec import pack

    res = pack(handle, step.config, output=out, data=ctx.train, factory=_factory_spec(ctx))
    decoded = res.model
    if decoded.kind == "torch":  # the codec's handle carries no IO spec: the source's
        decoded = handle.with_model(decoded.model)
    else:
        decoded = decoded.with_model(decoded.model, inputs=handle.inputs if handle.kind == "onnx" else decoded.inputs)
    d = res.to_dict()
    summary = f"{step.params['method']}: {res.nbytes:,} bytes, {res.ratio:.1f}× smaller than the fp32 weights"
    return decoded, summary, {k: v for k, v in d.items() if k in ("nbytes", "fp32_bytes", "ratio", "stages")}


# ------------------------------------------------------------------------------------------
# artifacts

def _write_onnx(handle: ModelHandle, path: Path) -> None:
    if handle.kind == "onnx":
        from ..backends.onnx import save_onnx

        save_onnx(handle.model, path)
        return
    from ..convert.export import export_onnx

    export_onnx(handle, None, path, force=True)


def _write_artifact(handle: ModelHandle, folder: Path, ctx: _Context) -> tuple[Path, Path]:
    """Write a step's model; a torch model also as ONNX for measurement. Returns (artifact, measured)."""
    if handle.kind == "onnx":
        path = folder / "model.onnx"
        _write_onnx(handle, path)
        return path, path
    measure = folder / "measure.onnx"
    _write_onnx(handle, measure)
    # a student with fewer layers no longer fits the factory's module tree: written as .pt2
    fewer_layers = handle.metadata.get("deepshrink.distilled", "").startswith("layers=")
    if _factory_spec(ctx) is not None and not fewer_layers:
        from safetensors.torch import save_file

        path = folder / "model.safetensors"
        save_file({k: v.detach().contiguous() for k, v in handle.model.state_dict().items()}, str(path))
        return path, measure
    from ..convert.writers import save

    path = folder / "model.pt2"
    save(handle, path, force=True)
    return path, measure


def _factory_spec(ctx: _Context) -> str | None:
    return factory_spec(ctx.model_spec)


def factory_spec(model: Any) -> str | None:
    """``package.module:factory`` when the model was given that way (what a pack step records in the file)."""
    if isinstance(model, str) and ":" in model and not Path(model).exists():
        return model
    return None


def _load_artifact(prev: StepOutcome, ctx: _Context) -> ModelHandle:
    """The previous step's model, read back from its file (so a resumed run sees what a fresh one does)."""
    from ..loading import load

    path = prev.artifact
    if path.suffix == ".safetensors":
        from ..loading import load_weights

        h = load(ctx.model_spec, trust_remote_code=ctx.trust)  # the factory, fresh
        load_weights(h.model, path)  # a pruned step's layers: re-shaped to the file's
        h.model.eval()
        return h.with_model(h.model, inputs=ctx.source.inputs, outputs=ctx.source.outputs,
                            example_inputs=ctx.source.example_inputs)
    if prev.index == 0 and ctx.source.kind in ("torch", "onnx"):
        return ctx.source  # the original model itself (a torch model's baseline is its ONNX export)
    h = load(str(path), trust_remote_code=ctx.trust)
    if ctx.source.tokenizer_dir is not None:
        h.tokenizer_dir = ctx.source.tokenizer_dir
    return h


def _read_record(folder: Path) -> dict[str, Any] | None:
    path = folder / "step.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None


def _outcome_from(folder: Path, record: dict[str, Any], reused: bool = False) -> StepOutcome:
    return StepOutcome(record["index"], record["name"], record.get("verb"), folder, folder / record["artifact"],
                       folder / record["measure"], record["kind"], record.get("summary", ""),
                       record.get("details", {}), float(record.get("seconds", 0.0)), reused)


# ------------------------------------------------------------------------------------------
# report

def environment(threads: int) -> dict[str, Any]:
    """Package versions, CPU flags and threads: what a reader needs to trust or redo the figures."""
    from importlib import metadata

    from ..evaluate import cpu_flags

    pkgs = {}
    for name in ("deepshrink", "torch", "onnx", "onnxruntime", "onnxscript", "numpy", "transformers", "openvino",
                 "tensorflow-cpu"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"deepshrink": pkgs.get("deepshrink", "?"), "python": platform.python_version(),
            "platform": platform.platform(), "cpu": cpu_flags(), "threads": threads, "packages": pkgs}


def build_report(rec: Recipe, source: ModelHandle, outcomes: list[StepOutcome], table: Any, evaluation: Any, *,
                 threads: int, out_dir: Path) -> dict[str, Any]:
    """The JSON record every report format is rendered from (schema ``deepshrink.report/1``)."""
    from datetime import datetime, timezone

    steps = []
    rows = table.rows if table is not None else [None] * len(outcomes)
    for o, row in zip(outcomes, rows, strict=True):
        entry: dict[str, Any] = {
            "index": o.index, "name": o.name, "verb": o.verb, "summary": o.summary, "reused": o.reused,
            "file": str(o.artifact.relative_to(out_dir)), "measured_file": str(o.measure.relative_to(out_dir)),
            "format": o.artifact.suffix.lstrip("."), "seconds": o.seconds, "details": o.details,
            # a packed file is what ships (its measured ONNX is the decoded model); otherwise the ONNX file
            "size_bytes": (o.artifact if o.artifact.suffix == ".dsz" else o.measure).stat().st_size, "flags": []}
        if row is not None:
            entry.update({"runtime": row.runtime, "params": row.params,
                          "latency_ms": {"median": row.median_ms, "p10": row.p10_ms, "p90": row.p90_ms,
                                         "spread": row.spread},
                          "latency_ratio": row.ratio, "latency_ratio_spread": row.ratio_spread,
                          "accuracy": row.accuracy, "cos_mean": row.cos_mean, "cos_min": row.cos_min,
                          "top1_agreement": row.top1_agreement})
        entry.update(_layers_and_histograms(o.measure))
        steps.append(entry)
    _flag(steps, outcomes)
    first, last = steps[0], steps[-1]
    final = {"file": f"model{outcomes[-1].artifact.suffix}", "size_ratio": last["size_bytes"] / first["size_bytes"]}
    if table is not None:
        final["latency_ratio"] = last["latency_ratio"]
        if first.get("accuracy") is not None and last.get("accuracy") is not None:
            final["accuracy_drop"] = first["accuracy"] - last["accuracy"]
        final["cos_mean"], final["cos_min"] = last.get("cos_mean"), last.get("cos_min")
    data_info = None
    if evaluation is not None:
        data_info = {"source": evaluation.source, "samples": table.samples if table is not None else len(evaluation),
                     "labels": evaluation.labels is not None}
    return {"schema": SCHEMA, "title": f"deepshrink compress: {source.source or 'model'} with {rec.name}",
            "source": source.source, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "recipe": rec.to_dict(), "environment": environment(threads), "data": data_info,
            "bench": {"threads": threads, "repeats": table.repeats if table else None,
                      "batch": table.batch if table else None, "warnings": table.warnings if table else []},
            "steps": steps, "final": final}


def _layers_and_histograms(path: Path) -> dict[str, Any]:
    try:
        from ..report.inspect import layer_table, weight_histograms
    except ImportError:  # the report package is optional until it lands
        return {"layers": [], "histograms": []}
    return {"layers": layer_table(path), "histograms": weight_histograms(path)}


def _flag(steps: list[dict[str, Any]], outcomes: list[StepOutcome]) -> None:
    """Mark a step slower, less accurate or bigger than the one before, with the likely reason."""
    for prev, cur, o in zip(steps, steps[1:], outcomes[1:], strict=False):
        if cur.get("latency_ratio") is not None and prev.get("latency_ratio") is not None:
            margin = max(0.05, cur.get("latency_ratio_spread") or 0.0)
            if cur["latency_ratio"] > prev["latency_ratio"] * (1 + margin):
                cur["flags"].append({"kind": "slower", "message": f"slower than the step before "
                                     f"({cur['latency_ratio']:.2f}× vs {prev['latency_ratio']:.2f}× the original): "
                                     f"{_slower_reason(cur, o)}"})
        if cur.get("accuracy") is not None and prev.get("accuracy") is not None:
            if prev["accuracy"] - cur["accuracy"] > 0.005:
                cur["flags"].append({"kind": "less-accurate", "message": f"accuracy {100 * prev['accuracy']:.2f}% → "
                                     f"{100 * cur['accuracy']:.2f}% against the step before"})
        elif cur.get("cos_mean") is not None and prev.get("cos_mean") is not None:
            if prev["cos_mean"] - cur["cos_mean"] > 0.01:
                cur["flags"].append({"kind": "less-accurate", "message": f"output cosine {prev['cos_mean']:.4f} → "
                                     f"{cur['cos_mean']:.4f} against the step before"})
        if cur["size_bytes"] > prev["size_bytes"] * 1.01:
            cur["flags"].append({"kind": "bigger", "message": f"file grew {prev['size_bytes']:,} → "
                                 f"{cur['size_bytes']:,} bytes"})


def _slower_reason(step: dict[str, Any], o: StepOutcome) -> str:
    from ..evaluate import cpu_flags

    if o.verb == "prune" and step["details"].get("method") in ("magnitude", "gradual", "nm"):
        return "ONNX Runtime runs zeroed weights as dense: unstructured sparsity does not make it faster"
    if o.verb == "quantize":
        from ..quantize.onnx.backend import integer_op_counts

        ints = integer_op_counts(o.measure)
        if not ints:
            return "no integer kernel runs in this file (quantization left float compute or unfused QDQ pairs)"
        if "avx512_vnni" not in cpu_flags() and "avx_vnni" not in cpu_flags():
            return f"this CPU has no VNNI int8 dot product ({cpu_flags()})"
        from ..quantize.onnx.backend import float_islands

        islands = float_islands(o.measure)
        if islands:
            listed = ", ".join(f"{k} ×{v}" for k, v in sorted(islands.items(), key=lambda kv: -kv[1]))
            return (f"ops with no int8 kernel run in float between int8 layers ({listed}), each behind a dequantize "
                    "and before a quantize step")
        return "the model is too small for int8 kernels to pay for their quantize/dequantize steps"
    return "timing spread on a shared machine; rerun with more --repeats"


def write_outputs(out: Path, rec: Recipe, report: dict[str, Any]) -> dict[str, Path]:
    """report.json, the resolved recipe, the environment, and the human-readable reports."""
    import yaml

    files = {"report.json": out / "report.json", "recipe.yaml": out / "recipe.yaml",
             "environment.json": out / "environment.json"}
    write_text_atomic(files["report.json"], json.dumps(report, indent=2, default=str))
    write_text_atomic(files["recipe.yaml"], "# resolved: every field of every step, defaults included\n"
                      + yaml.safe_dump(rec.resolved(), sort_keys=False))
    write_text_atomic(files["environment.json"], json.dumps(report["environment"], indent=2))
    try:
        from ..report.render import write_reports
    except ImportError:
        return files
    files.update({p.name: p for p in write_reports(report, out).values()})
    return files
