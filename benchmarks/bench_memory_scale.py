"""Memory at scale (issue 17): int4 weight-only quantization of a decoder-only transformer larger
than a comfortable share of memory, streamed tensor by tensor, and GPTQ with layer-by-layer calibration.

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
4. ``gptq``: GPTQ (:func:`deepshrink.quantize.weight_only.gptq_quantize_weight`) block by block as
   in the paper's LLM runs: the calibration activations enter block *i* after blocks < *i* were
   quantized; only block *i*'s six weights are read from the external data, each layer's Hessian
   ``2XᵀX/n`` is collected from its inputs, the block is quantized layer by layer (each layer's
   inputs recomputed with the block's earlier layers quantized), and the activations advance
   through the quantized block. Reports the layers' output error ``‖WX − ŴX‖/‖WX‖`` against RTN's.

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


def _read(refs: dict, name: str, what: str):
    import numpy as np

    ref = refs[name]
    return ref.read_bytes(what).view(np.float32).reshape([int(d) for d in ref.tensor.dims])


def child_gptq(src: str, samples: int, seq: int) -> dict:
    """Block-by-block GPTQ of the decoder (see the module docstring); nothing is written."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from deepshrink.backends.onnx import load_onnx_graph
    from deepshrink.quantize.weight_only import gptq_quantize_weight, rtn_quantize_weight

    torch.set_num_threads(1)
    model, ref_list = load_onnx_graph(src)
    refs = {r.tensor.name: r for r in ref_list}
    layers = sum(1 for t in model.graph.initializer if t.name.endswith("attn.q_proj.weight"))
    vocab, d = (int(x) for x in refs["wte"].tensor.dims)
    heads = max(1, d // 128)
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(0, vocab, (samples, seq)))
    x = torch.from_numpy(_read(refs, "wte", src))[ids].clone()  # (S, T, d); the table is freed below
    mask = torch.triu(torch.full((seq, seq), -1e9), 1)
    t0 = time.perf_counter()
    err_g, err_r, done = [], [], 0

    def ln(v, p):
        return F.layer_norm(v, (d,), torch.from_numpy(_read(refs, p + ".weight", src)),
                            torch.from_numpy(_read(refs, p + ".bias", src)))

    def quant(name, inp):
        """GPTQ the (K, N) ONNX weight ``name`` on inputs ``inp`` (S, T, K); returns the dequantized (K, N)."""
        nonlocal done
        w = torch.from_numpy(_read(refs, name, src)).T.contiguous()  # (N, K), the nn.Linear layout
        xx = inp.reshape(-1, inp.shape[-1]).to(torch.float64)
        h = (2.0 / len(xx)) * (xx.T @ xx)
        g = gptq_quantize_weight(w, h.to(torch.float32), 4, 128, symmetric=True, name=name).dequantize()
        r = rtn_quantize_weight(w, 4, 128, symmetric=True, name=name).dequantize()
        xf = xx.to(torch.float32)
        ref = xf @ w.T
        err_g.append(float((ref - xf @ g.T).norm() / ref.norm()))
        err_r.append(float((ref - xf @ r.T).norm() / ref.norm()))
        done += 1
        return g.T.contiguous()

    def attention(h, wq, wk, wv):
        s, t, _ = h.shape
        q, k, v = ((h @ w).reshape(s, t, heads, d // heads).transpose(1, 2) for w in (wq, wk, wv))
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5 + mask, -1) @ v
        return a.transpose(1, 2).reshape(s, t, d)

    with torch.no_grad():
        for i in range(layers):
            p = f"h.{i}."
            h = ln(x, p + "ln_1")
            wq = quant(p + "attn.q_proj.weight", h)
            wk = quant(p + "attn.k_proj.weight", h)
            wv = quant(p + "attn.v_proj.weight", h)
            a = attention(h, wq, wk, wv)
            x = x + a @ quant(p + "attn.o_proj.weight", a)
            h = ln(x, p + "ln_2")
            m = torch.relu(h @ quant(p + "mlp.fc_in.weight", h))
            x = x + m @ quant(p + "mlp.fc_out.weight", m)
        quant("lm_head.weight", ln(x, "ln_f"))
    return {"layers": done, "seconds": time.perf_counter() - t0, "err_gptq": float(np.mean(err_g)),
            "err_rtn": float(np.mean(err_r)), "calibration": f"{samples}x{seq} tokens"}


CHILDREN = {"generate": child_generate, "api-stream": child_api_stream, "api-memory": child_api_memory,
            "gptq": child_gptq}


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
    ap.add_argument("--child", nargs="+")
    ap.add_argument("--work", default="/tmp/deepshrink-memscale")
    ap.add_argument("--big", default="2048,26,50304", help="d_model,layers,vocab of the streamed model")
    ap.add_argument("--small", default="1024,8,32000", help="d_model,layers,vocab for the path comparison and GPTQ")
    ap.add_argument("--gptq-samples", type=int, default=8)
    ap.add_argument("--gptq-seq", type=int, default=128)
    ap.add_argument("--keep", action="store_true", help="keep the generated models")
    ap.add_argument("--no-write", action="store_true", help="print the table, do not write results/")
    a = ap.parse_args()
    if a.child:
        mode, *rest = a.child
        conv = [int(v) if v.lstrip("-").isdigit() else v for v in rest]
        print(json.dumps(CHILDREN[mode](*conv)))
        return

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    figures: dict[str, dict] = {}
    for label, spec in (("small", a.small), ("big", a.big)):
        d, layers, vocab = _size(spec)
        src = work / f"{label}.onnx"
        gen = _child("generate", src, d, layers, vocab)
        fp32 = gen["out"]["bytes"]
        figures[label] = {"params": gen["out"]["params"], "fp32": fp32}
        rows.append([label, f"d={d}, {layers} layers, vocab {vocab}", f"{figures[label]['params'] / 1e9:.3f} B",
                     _gib(fp32), "generate (write_decoder_onnx)", _gib(gen["rss"]),
                     f"{gen['rss'] / fp32:.3f}", f"{gen['wall']:.0f} s", ""])
        cli = ("deepshrink quantize --scheme int4-weight" + (" (streams)" if label == "big" else " (in memory)"),
               ("cli", "quantize", src, "-o", work / f"{label}_cli.onnx", "--scheme", "int4-weight", "--no-bench",
                "--force"))
        runs = [cli]
        if label == "small":
            runs = [("stream_weight_only_rtn (API)", ("api-stream", src, work / "small_stream.onnx")),
                    ("ds.quantize + ds.save (API, in memory)", ("api-memory", src, work / "small_mem.onnx")),
                    cli,
                    (f"GPTQ layer by layer ({a.gptq_samples}x{a.gptq_seq} tokens)",
                     ("gptq", src, a.gptq_samples, a.gptq_seq))]
        for what, (mode, *args) in runs:
            r = _cli(*args) if mode == "cli" else _child(mode, *args)
            note = ""
            out = r["out"]
            if "report" in out and out["report"].get("streamed"):
                note = f"{out['report']['quantized_layers']} layers, worst weight cosine {out['report']['worst_cosine']:.4f}"
            elif "err_gptq" in out:
                note = (f"{out['layers']} layers; output error ‖WX−ŴX‖/‖WX‖ GPTQ {out['err_gptq']:.4f} vs RTN "
                        f"{out['err_rtn']:.4f}")
            rows.append([label, "", "", "", what, _gib(r["rss"]), f"{r['rss'] / fp32:.3f}", f"{r['wall']:.0f} s", note])
            print(rows[-1], flush=True)
        if not a.keep:
            for f in work.glob(f"{label}*"):
                f.unlink() if f.is_file() else shutil.rmtree(f)
    table = md_table(["model", "shape", "parameters", "fp32 size", "step", "peak RSS", "RSS / fp32 size", "time",
                      "notes"], rows)
    body = f"""Each step ran in a fresh process (`OMP_NUM_THREADS=1`); peak RSS is its `ru_maxrss`. The models are
random decoder-only transformers (`deepshrink.examples.decoder_onnx`), written as ONNX with one external-data file.
Machine: 2 shared cores, 24 GB RAM (other jobs were running: times are indicative).

{table}
"""
    print(body)
    if not a.no_write:
        write_result("memory_scale", "Memory at scale: streamed int4 weight-only quantization (issue 17)",
                     this_command(), body)


if __name__ == "__main__":
    main()
