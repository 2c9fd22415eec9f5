"""Memory at scale (issue 17): int4 weight-only quantization of a decoder-only transformer larger
than a comfortable share of memory, streamed tensor by tensor (RTN) or segment by segment (GPTQ with
layer-by-layer calibration).

Every measured step runs in a fresh child process; its peak RSS is the child's ``ru_maxrss``
(``os.wait4``), its time the wall clock around it. Steps:

1. ``generate``: :func:`deepshrink.examples.decoder_onnx.write_decoder_onnx` writes the random
   model (ONNX graph + one external-data file, one tensor at a time).
2. ``cli-stream``: ``deepshrink quantize BIG.onnx -o OUT --scheme int4-weight`` — above
   ``STREAM_MIN_BYTES`` of external data the CLI streams (:mod:`deepshrink.quantize.onnx.streaming`).
3. On a smaller model, the same RTN through both paths: ``api-stream``
   (``stream_weight_only_rtn``) and ``api-memory`` (``ds.quantize`` + ``ds.save``: the model, ORT's
   working copy and the result in memory), and ``cli-memory`` (the CLI on a model under the
   streaming threshold: it loads the model, quantizes in memory, and the fidelity gate holds the
   float and quantized sessions).
4. ``gptq``: ``deepshrink quantize BIG.onnx --scheme int4-weight --method gptq --data calib.npz`` streams
   too (:mod:`deepshrink.quantize.onnx.streaming_gptq`): the graph is cut into segments where the
   fewest activations are live, the calibration activations (``--gptq-samples`` × ``--gptq-seq``
   random token ids) enter each segment after the earlier ones were quantized, and only that
   segment's weights are read. On the small model the streaming threshold is set to 0
   (``cli-streamed``) so the same path runs. Reports the layers' output error
   ``‖XW − XŴ‖/‖XW‖`` against round-to-nearest's on the same calibration inputs.

    python benchmarks/bench_memory_scale.py --work /tmp/memscale            # 1.5 B + 167 M models
    python benchmarks/bench_memory_scale.py --work /tmp/ms --big 1024,8,32000 --small 512,4,8192 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import md_table, this_command, write_result  # noqa: E402


def _run_child(args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run a child, return its peak RSS (bytes), wall time and the JSON it printed last."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed ({proc.returncode}): {err.decode()[-2000:]}")
    text = out.decode().strip()
    start = text.rfind("\n{") + 1 if not text.startswith("{") else 0
    return {"rss": usage.ru_maxrss * 1024, "wall": wall, "out": json.loads(text[start:]) if text else {}}


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# ---------------------------------------------------------------------------------------------
# children


def child_generate(path: str, d: int, layers: int, vocab: int) -> dict:
    from deepshrink.examples.decoder_onnx import write_decoder_onnx

    n = write_decoder_onnx(path, d_model=d, layers=layers, heads=max(1, d // 128), vocab=vocab)
    return {"params": n, "bytes": os.path.getsize(path + ".data")}


def child_api_stream(src: str, out: str) -> dict:
    from deepshrink.quantize.onnx.streaming import stream_weight_only_rtn

    return stream_weight_only_rtn(src, out, symmetric=True).to_dict()


def child_api_memory(src: str, out: str) -> dict:
    import deepshrink as ds
    from deepshrink.quantize import WeightOnlyConfig

    h = ds.quantize(src, WeightOnlyConfig.build(bits=4, group_size=128, method="rtn"))
    ds.save(h, out, force=True)
    return {}


def child_cli_streamed(*args: str) -> dict:
    """The CLI with the streaming threshold at 0, so a model under 1 GiB takes the streamed path too."""
    import contextlib
    import io

    from deepshrink.cli import main as cli_main
    from deepshrink.quantize.onnx import streaming

    streaming.STREAM_MIN_BYTES = 0
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli_main([*args, "--json"])
    text = out.getvalue().strip()
    return json.loads(text[text.find("{"):])


def child_calibration(path: str, vocab: int, samples: int, seq: int) -> dict:
    import numpy as np

    ids = np.random.default_rng(0).integers(0, vocab, (samples, seq))
    np.savez(path, input_ids=ids)
    return {"samples": samples, "seq": seq}


CHILDREN = {"generate": child_generate, "api-stream": child_api_stream, "api-memory": child_api_memory,
            "cli-streamed": child_cli_streamed, "calibration": child_calibration}


# ---------------------------------------------------------------------------------------------
# parent


def _child(mode: str, *args: object) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return _run_child([sys.executable, __file__, "--child", mode, *map(str, args)], env=env)


def _cli(*args: object) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return _run_child([sys.executable, "-m", "deepshrink.cli", *map(str, args), "--json"], env=env)


def _size(spec: str) -> tuple[int, int, int]:
    d, layers, vocab = (int(v) for v in spec.split(","))
    return d, layers, vocab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/deepshrink-memscale")
    ap.add_argument("--big", default="2048,26,50304", help="d_model,layers,vocab of the streamed model")
    ap.add_argument("--small", default="1024,8,32000", help="d_model,layers,vocab for the path comparison")
    ap.add_argument("--gptq-samples", type=int, default=8)
    ap.add_argument("--gptq-seq", type=int, default=128)
    ap.add_argument("--sizes", default="small,big", help="which models: small, big or both")
    ap.add_argument("--steps", default="rtn,gptq", help="rtn (the RTN paths), gptq (the streamed GPTQ CLI) or both")
    ap.add_argument("--keep", action="store_true", help="keep the generated models")
    ap.add_argument("--no-write", action="store_true", help="print the table, do not write results/")
    if sys.argv[1:2] == ["--child"]:  # before argparse: a CLI child's own options start with "-"
        mode, *rest = sys.argv[2:]
        conv = rest if mode == "cli-streamed" else [int(v) if v.lstrip("-").isdigit() else v for v in rest]
        print(json.dumps(CHILDREN[mode](*conv)))
        return
    a = ap.parse_args()

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    figures: dict[str, dict] = {}
    steps = set(a.steps.split(","))
    for label, spec in (("small", a.small), ("big", a.big)):
        if label not in a.sizes.split(","):
            continue
        d, layers, vocab = _size(spec)
        src = work / f"{label}.onnx"
        gen = _child("generate", src, d, layers, vocab)
        fp32 = gen["out"]["bytes"]
        figures[label] = {"params": gen["out"]["params"], "fp32": fp32}
        rows.append([label, f"d={d}, {layers} layers, vocab {vocab}", f"{figures[label]['params'] / 1e9:.3f} B",
                     _gib(fp32), "generate (write_decoder_onnx)", _gib(gen["rss"]),
                     f"{gen['rss'] / fp32:.3f}", f"{gen['wall']:.0f} s", ""])
        calib = work / f"{label}_calib.npz"
        _child("calibration", calib, vocab, a.gptq_samples, a.gptq_seq)
        gptq_args = ("quantize", src, "-o", work / f"{label}_gptq.onnx", "--scheme", "int4-weight", "--method", "gptq",
                     "--data", calib, "--calibration-size", a.gptq_samples, "--no-bench", "--force")
        runs = []
        if "rtn" in steps:
            runs.append(("deepshrink quantize --scheme int4-weight" + (" (streams)" if label == "big" else " (in memory)"),
                         ("cli", "quantize", src, "-o", work / f"{label}_cli.onnx", "--scheme", "int4-weight",
                          "--no-bench", "--force")))
            if label == "small":
                runs[:0] = [("stream_weight_only_rtn (API)", ("api-stream", src, work / "small_stream.onnx")),
                            ("ds.quantize + ds.save (API, in memory)", ("api-memory", src, work / "small_mem.onnx"))]
        if "gptq" in steps:
            what = f"deepshrink quantize --method gptq ({a.gptq_samples}x{a.gptq_seq} tokens, streams"
            runs.append((what + (")" if label == "big" else ", threshold set to 0)"),
                         ("cli" if label == "big" else "cli-streamed", *gptq_args)))
        for what, (mode, *args) in runs:
            r = _cli(*args) if mode == "cli" else _child(mode, *args)
            note = ""
            out = r["out"]
            rep = out.get("report") or {}
            if rep.get("method") == "gptq":
                note = (f"{rep['quantized_layers']} layers in {rep['segments']} segments (largest "
                        f"{rep['largest_segment_bytes'] / 2**20:.0f} MiB of weights); output error ‖XW−XŴ‖/‖XW‖ "
                        f"GPTQ {rep['err_gptq_mean']:.4f} vs RTN {rep['err_rtn_mean']:.4f} (mean over layers); "
                        f"worst weight cosine {rep['worst_cosine']:.4f}")
                figures[label]["gptq_layers"] = rep.get("layer_errors", [])
            elif rep.get("streamed"):
                note = f"{rep['quantized_layers']} layers, worst weight cosine {rep['worst_cosine']:.4f}"
            rows.append([label, "", "", "", what, _gib(r["rss"]), f"{r['rss'] / fp32:.3f}", f"{r['wall']:.0f} s", note])
            print(rows[-1], flush=True)
        if not a.keep:
            for f in work.glob(f"{label}*"):
                f.unlink() if f.is_file() else shutil.rmtree(f)
    table = md_table(["model", "shape", "parameters", "fp32 size", "step", "peak RSS", "RSS / fp32 size", "time",
                      "notes"], rows)
    some = []
    for label, fig in figures.items():
        errs = fig.get("gptq_layers") or []
        picks = errs[:6] + errs[len(errs) // 2:len(errs) // 2 + 2] + errs[-3:]  # the first block, a middle one, the end
        some += [[label, name, f"{g:.4f}", f"{r:.4f}", f"{r / g:.1f}×"] for name, g, r in dict.fromkeys(map(tuple, picks))]
    layer_table = md_table(["model", "layer", "GPTQ ‖XW−XŴ‖/‖XW‖", "RTN", "RTN / GPTQ"], some) if some else ""
    body = f"""Each step ran in a fresh process (`OMP_NUM_THREADS=1`); peak RSS is its `ru_maxrss`. The models are
random decoder-only transformers (`deepshrink.examples.decoder_onnx`), written as ONNX with one external-data file.
Machine: 2 shared cores, 24 GB RAM (other jobs were running: times are indicative).

{table}

Output error of single layers after streamed GPTQ (on each layer's calibration inputs, the earlier segments
quantized), against round-to-nearest with the same groups on the same inputs:

{layer_table}
"""
    print(body)
    if not a.no_write:
        write_result("memory_scale", "Memory at scale: streamed int4 weight-only quantization, RTN and GPTQ (issue 17)",
                     this_command(), body)


if __name__ == "__main__":
    main()
