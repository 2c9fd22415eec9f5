"""How often the fidelity gate fires: every quantize scheme and prune method on the repo's digits
models (it should never fire on a sane default), every conversion route's parity check, and the
commands of the handed user-report / first-use cases (run through a logging wrapper).

    python benchmarks/bench_gate.py [--cases]

Each command runs through the CLI exactly as a user types it, with --json; the verdict is read
from the payload (exit 3 = refused).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line, md_table, this_command, write_result  # noqa: E402

SCHEMES = ["int8-dynamic", "int8-static", "int4-weight", "kmeans", "log2", "auto", "ptq"]
PRUNES = [("magnitude 0.5", ["--method", "magnitude", "--sparsity", "0.5"]),
          ("nm 2:4", ["--method", "nm"]),
          ("structured 0.5 + 2 epochs", ["--method", "structured", "--sparsity", "0.5", "--finetune-epochs", "2"]),
          ("magnitude 0.9, no fine-tune", ["--method", "magnitude", "--sparsity", "0.9"])]
ROUTES = [".onnx", ".pt2", ".tflite", ".xml"]


def _cli(args: list[str], out: Path) -> tuple[int, dict, str]:
    import contextlib
    import io

    from deepshrink.cli import run_app

    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        rc = run_app([*args, "--json"])
    try:
        payload = json.loads(buf_out.getvalue() or "{}")
    except json.JSONDecodeError:
        payload = {}
    return rc, payload, buf_err.getvalue().strip().splitlines()[0] if buf_err.getvalue().strip() else ""


def _verdict(rc: int, payload: dict, err: str) -> tuple[str, str]:
    g = payload.get("gate") or {}
    if rc == 3:
        return "**fires**", err.removeprefix("error: ")[:150]
    if rc != 0:
        return f"error (exit {rc})", err[:150]
    if g.get("reason"):
        return "passes (not judged)", g["reason"][:150]
    acc = (f"accuracy {100 * g['accuracy_before']:.1f}% → {100 * g['accuracy_after']:.1f}%"
           if g.get("accuracy_after") is not None else f"worst cosine {g.get('cos_min', float('nan')):.3f}")
    return "passes", f"{acc} on {g.get('samples')} held-out samples"


def own_examples(tmp: Path) -> tuple[list[list[str]], int, int]:
    from safetensors.torch import save_file

    from deepshrink.convert.writers import save
    from deepshrink.examples import trained_digits_cnn, trained_digits_mlp
    from deepshrink.loading import load

    rows, fired, runs = [], 0, 0
    for name, factory, model in (("digits CNN", "deepshrink.examples:DigitsCNN", trained_digits_cnn(0)),
                                 ("digits MLP", "deepshrink.examples:DigitsMLP", trained_digits_mlp(0))):
        w = tmp / f"{name}.safetensors"
        save_file(model.state_dict(), str(w))
        onnx_path = tmp / f"{name.replace(' ', '_')}.onnx"
        save(load(model, input_shapes={"x": (1, 1, 8, 8)}), onnx_path, force=True)
        data = ["--data", "digits:train", "--eval-data", "digits:test"]
        for scheme in SCHEMES:
            src = [factory, "-w", str(w), "--input-shape", "x:1x1x8x8"] if scheme == "ptq" else [str(onnx_path)]
            out = tmp / f"{name}-{scheme}.onnx"
            rc, payload, err = _cli(["quantize", *src, "-o", str(out), "--scheme", scheme, *data, "--no-bench",
                                     "--force"], out)
            v, detail = _verdict(rc, payload, err)
            rows.append([name, f"quantize --scheme {scheme}", v, detail])
            runs += 1
            fired += rc == 3
        for label, opts in PRUNES:
            out = tmp / f"{name}-prune.onnx"
            rc, payload, err = _cli(["prune", factory, "-w", str(w), "--input-shape", "x:1x1x8x8", "-o", str(out),
                                     *opts, *data, "--repeats", "1", "--force"], out)
            v, detail = _verdict(rc, payload, err)
            rows.append([name, f"prune {label}", v, detail])
            runs += 1
            fired += rc == 3
        for suffix in ROUTES:
            out = tmp / f"{name}-route{suffix}"
            rc, payload, err = _cli(["convert", str(onnx_path), str(out), "--force"], out)
            hops = payload.get("hops") or [{}]
            parity = hops[-1].get("parity") or {}
            if rc == 0:
                worst = max((o.get("max_abs", 0.0) for o in parity.get("outputs", [])), default=None)
                v, detail = "passes", (f"parity max-abs {worst:.2g}" if worst is not None else "no parity check")
            elif rc == 3:
                v, detail = "**fires** (parity)", err[:150]
            else:
                v, detail = f"not run (exit {rc})", err[:150]
            rows.append([name, f"convert → {suffix}", v, detail])
    return rows, fired, runs


WRAPPER = """#!/usr/bin/env bash
# logs each deepshrink call's arguments, exit status and whether the gate fired
"{ds}" "$@" 2> >(tee -a "{log}.err" >&2); rc=$?
printf '%s\\t%s\\n' "$rc" "$*" >> "{log}"
exit $rc
"""


def cases(tmp: Path) -> list[list[str]]:
    ds = Path(sys.executable).with_name("deepshrink")
    rows = []
    for kind in ("user-reports", "first-use"):
        check = Path(__file__).resolve().parents[2] / "shared" / "cases" / kind / "check.sh"
        if not check.exists():
            rows.append([kind, "-", "-", f"{check} not found"])
            continue
        log = tmp / f"{kind}.log"
        wrapper = tmp / f"ds-{kind}"
        wrapper.write_text(WRAPPER.format(ds=ds, log=log))
        wrapper.chmod(0o755)
        res = subprocess.run([str(check)], env={**os.environ, "DS": str(wrapper), "PY": sys.executable},
                             capture_output=True, text=True, check=False)
        calls = [ln.split("\t", 1) for ln in log.read_text().splitlines()] if log.exists() else []
        writes = [c for c in calls if c[1].split(" ")[0] in ("quantize", "prune", "compress")]
        fired = [c for c in writes if c[0] == "3"]
        passed = sum(ln.split(": ", 1)[1].startswith("PASS") for ln in res.stdout.splitlines() if ": " in ln)
        total = sum(1 for ln in res.stdout.splitlines() if ": " in ln)
        rows.append([kind, f"{len(writes)} quantize/prune/compress calls", f"gate fired on {len(fired)}",
                     "; ".join(c[1].split(" -o ")[0][:80] for c in fired) or "-"])
        rows.append([kind, "check.sh verdicts", f"{passed}/{total} PASS", ""])
    return rows


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    with tempfile.TemporaryDirectory(prefix="ds-gate-bench.") as t:
        tmp = Path(t)
        rows, fired, runs = own_examples(tmp)
        body = (f"{machine_line()}\n\nDefaults: worst output cosine 0.9 without labels, 5 accuracy points with "
                "labels (at least 3 samples), measured on held-out data (`--eval-data digits:test`, 360 digits).\n\n"
                f"Own examples: the gate fired on **{fired} of {runs}** quantize/prune runs (the deliberately "
                "destructive magnitude-0.9-without-fine-tune rows are expected to fire).\n\n"
                + md_table(["model", "command", "gate", "measured"], rows))
        if "--cases" in sys.argv:
            body += "\n\nHanded cases (every command of `../shared/cases/*/check.sh`, through a logging wrapper):\n\n"
            body += md_table(["case set", "calls", "gate", "commands it refused"], cases(tmp))
        write_result("gate", "Fidelity gate: how often it fires (issue 13)", this_command(), body)


if __name__ == "__main__":
    main()
