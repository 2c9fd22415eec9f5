"""Char-GPT weight-only: round-to-nearest vs GPTQ at group sizes 32/64/128 (int4, int3).

The cached char-GPT (``deepshrink.examples.chargpt``, trained on the standard library's
source) is quantized with every ``nn.Linear`` of the transformer blocks, asymmetric per
group of input columns (the MatMulNBits layout); the LM head stays fp32
(``--include-head`` quantizes it too). Rows: RTN asymmetric, RTN symmetric, GPTQ (128
calibration windows of 128 characters from the training files, damp 0.01, sequential),
and as the peer ONNX Runtime's own ``MatMulNBitsQuantizer`` (int4, default RTN config)
run on the exported model in ONNX Runtime. Perplexity and KL to fp32 on held-out files.

    .venv/bin/python benchmarks/bench_chargpt.py
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deepshrink.examples.chargpt import VOCAB_SIZE, chargpt_data, trained_chargpt, windows
from deepshrink.quantize.weight_only import gptq_quantize_model, rtn_quantize_model


def cpu_flags() -> str:
    out = subprocess.run("grep -o -w 'avx2\\|avx512f\\|avx512_vnni\\|avx_vnni' /proc/cpuinfo | sort -u", shell=True,
                         capture_output=True, text=True).stdout.split()
    return " ".join(out) or "none of avx2/avx512f/vnni"


def ort_perplexity(path: str, ids: np.ndarray, context: int, max_tokens: int, batch: int = 32) -> float:
    """Perplexity of an ONNX char-GPT under ONNX Runtime (2 threads, no spinning)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    ids = ids[: max_tokens + 1]
    n = (len(ids) - 1) // context
    x = ids[: n * context].astype(np.int64).reshape(n, context)
    y = ids[1: n * context + 1].astype(np.int64).reshape(n, context)
    total = 0.0
    for i in range(0, n, batch):
        logits = sess.run(None, {"ids": x[i:i + batch]})[0].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        total -= np.take_along_axis(logp, y[i:i + batch, :, None], -1).sum()
    return math.exp(total / (n * context))


def ort_rows(model: torch.nn.Module, ids: np.ndarray, groups: list[int], bits: int, max_tokens: int,
             include_head: bool, folder: Path) -> tuple[float, dict[int, float]]:
    """The peer: export to ONNX, quantize with ORT's own MatMulNBitsQuantizer (default RTN)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    fp = folder / "chargpt.onnx"
    torch.onnx.export(model, (torch.zeros(1, model.context, dtype=torch.long),), str(fp), input_names=["ids"],
                      output_names=["logits"], dynamic_axes={"ids": {0: "batch"}, "logits": {0: "batch"}},
                      dynamo=False, opset_version=17)
    base = ort_perplexity(str(fp), ids, model.context, max_tokens)
    m = onnx.load(str(fp))
    inits = {i.name: i for i in m.graph.initializer}
    head = [n.name for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in inits
            and list(inits[n.input[1]].dims)[-1] == VOCAB_SIZE]
    out = {}
    for g in groups:
        cfg = DefaultWeightOnlyQuantConfig(block_size=g, is_symmetric=False, bits=bits)
        q = MatMulNBitsQuantizer(onnx.load(str(fp)), bits=bits, block_size=g, is_symmetric=False,
                                 nodes_to_exclude=[] if include_head else head, algo_config=cfg)
        q.process()
        qp = folder / f"chargpt.q{g}.onnx"
        onnx.save(q.model.model, str(qp))
        kinds = {n.op_type for n in onnx.load(str(qp)).graph.node}
        if "MatMulNBits" not in kinds:
            raise RuntimeError("ONNX Runtime's quantizer wrote no MatMulNBits node")
        out[g] = ort_perplexity(str(qp), ids, model.context, max_tokens)
    return base, out


@torch.no_grad()
def logprobs(model: torch.nn.Module, ids: np.ndarray, context: int, max_tokens: int, batch: int = 32) -> torch.Tensor:
    ids = ids[: max_tokens + 1]
    n = (len(ids) - 1) // context
    x = torch.from_numpy(ids[: n * context].astype(np.int64)).view(n, context)
    model.eval()
    return torch.cat([torch.log_softmax(model(x[i:i + batch]).double(), -1) for i in range(0, n, batch)])


def score(logp: torch.Tensor, ref: torch.Tensor, ids: np.ndarray, context: int) -> tuple[float, float]:
    """(perplexity, mean per-character KL(fp32 || quantized) in nats)."""
    n = logp.shape[0]
    y = torch.from_numpy(ids[1: n * context + 1].astype(np.int64)).view(n, context)
    nll = -logp.gather(-1, y[..., None]).mean()
    kl = (ref.exp() * (ref - logp)).sum(-1).mean()
    return math.exp(float(nll)), float(kl)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", default="4,3")
    ap.add_argument("--groups", default="32,64,128")
    ap.add_argument("--calib", type=int, default=128, help="calibration windows of 128 characters")
    ap.add_argument("--eval-tokens", type=int, default=65_536)
    ap.add_argument("--include-head", action="store_true")
    ap.add_argument("--steps", type=int, default=1000, help="training steps of the cached char-GPT")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quantize_chargpt.md"))
    args = ap.parse_args()
    logging.disable(logging.INFO)  # ORT's quantizer logs every node it skips
    torch.set_num_threads(2)
    t_all = time.time()
    model = trained_chargpt(steps=args.steps)
    data = chargpt_data()
    exclude = () if args.include_head else ("head",)
    ctx = model.context
    ref = logprobs(model, data.val, ctx, args.eval_tokens)
    base, _ = score(ref, ref, data.val, ctx)

    def evaluate(m: torch.nn.Module) -> tuple[float, float]:
        return score(logprobs(m, data.val, ctx, args.eval_tokens), ref, data.val, ctx)

    x, _ = windows(data.train, args.calib, ctx, seed=1234)
    calib = [torch.from_numpy(x[i:i + 16]) for i in range(0, len(x), 16)]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"fp32 perplexity {base:.4f}", flush=True)
    groups = [int(g) for g in args.groups.split(",")]
    rows = []
    quantized = 0
    for bits in (int(b) for b in args.bits.split(",")):
        for g in groups:
            rtn, _ = rtn_quantize_model(model, bits, g, exclude, progress=False)
            p_rtn, kl_rtn = evaluate(rtn)
            rtn_s, _ = rtn_quantize_model(model, bits, g, exclude, symmetric=True, progress=False)
            p_rtn_s, kl_rtn_s = evaluate(rtn_s)
            t = time.time()
            gq, rec = gptq_quantize_model(model, calib, bits, g, exclude, progress=False)
            t_gptq = time.time() - t
            p_gptq, kl_gptq = evaluate(gq)
            gq0, _ = gptq_quantize_model(model, calib, bits, g, exclude, act_order=False, progress=False)
            p_gptq0, _ = evaluate(gq0)
            gqs, _ = gptq_quantize_model(model, calib, bits, g, exclude, symmetric=True, progress=False)
            p_gptq_s, _ = evaluate(gqs)
            quantized = sum(r.q.numel() for r in rec.values())
            rows.append(dict(bits=bits, g=g, p_rtn=p_rtn, kl_rtn=kl_rtn, p_rtn_s=p_rtn_s, kl_rtn_s=kl_rtn_s,
                             p_gptq=p_gptq, kl_gptq=kl_gptq, t_gptq=t_gptq, p_gptq0=p_gptq0, p_gptq_s=p_gptq_s))
            print(f"int{bits} group {g}: RTN {p_rtn:.4f} (KL {kl_rtn:.5f}) RTN-sym {p_rtn_s:.4f} "
                  f"GPTQ {p_gptq:.4f} (KL {kl_gptq:.5f}) GPTQ-no-act-order {p_gptq0:.4f} GPTQ-sym {p_gptq_s:.4f}",
                  flush=True)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench_chargpt.") as tmp:
        ort_base, ort_q = ort_rows(model, data.val, groups, 4, args.eval_tokens, args.include_head, Path(tmp))
    print(f"ORT fp32 {ort_base:.4f}; ORT MatMulNBits int4 RTN {ort_q}", flush=True)
    lines = [
        "# Char-GPT weight-only: RTN vs GPTQ (and ONNX Runtime's int4 quantizer)",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_chargpt.py --steps {args.steps} --bits {args.bits} --groups {args.groups} "
        f"--calib {args.calib} --eval-tokens {args.eval_tokens}{' --include-head' if args.include_head else ''}`",
        "",
        f"Machine: {platform.machine()}, CPU flags: {cpu_flags()}, torch threads 2, torch {torch.__version__}; "
        f"wall {time.time() - t_all:.0f} s, load average {os.getloadavg()[0]:.1f} at the end.",
        f"Model: char-GPT trained {args.steps} steps, {n_params / 1e6:.2f} M parameters, {quantized / 1e6:.2f} M of them in the quantized Linear "
        f"layers ({'all' if args.include_head else 'LM head left in fp32'}); {len(data.train):,} training characters "
        f"from {data.train_files} files; evaluated on {min(args.eval_tokens, len(data.val)):,} characters of "
        f"{data.val_files} held-out files. GPTQ: {args.calib} calibration windows x 128 characters from training "
        "files, damp 0.01, sequential, act-order with static groups (the default), asymmetric like RTN; "
        "also without act-order and symmetric. KL = mean per-character KL(fp32 || quantized) in "
        "nats on the same text: more sensitive than perplexity, which quantization noise can move either way.",
        "",
        f"fp32 perplexity: **{base:.4f}** (ONNX Runtime fp32 of the exported model: {ort_base:.4f})",
        "",
        "| bits | group | RTN ppl (Δ) | RTN KL | GPTQ ppl (Δ) | GPTQ KL | KL GPTQ/RTN | Δppl GPTQ/RTN "
        "| GPTQ no act-order (Δ) | RTN sym (Δ) | GPTQ sym (Δ) | Δppl sym GPTQ/RTN | ORT MatMulNBits ppl (Δ) "
        "| GPTQ time s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d_rtn, d_gptq = r["p_rtn"] - base, r["p_gptq"] - base
        ratio = f"{d_gptq / d_rtn:.2f}" if d_rtn > 0.005 else "n/a (Δ RTN ≈ 0)"
        ort = (f"{ort_q[r['g']]:.4f} ({ort_q[r['g']] - ort_base:+.4f})" if r["bits"] == 4 else "—")
        d_rs, d_gs = r["p_rtn_s"] - base, r["p_gptq_s"] - base
        ratio_s = f"{d_gs / d_rs:.2f}" if d_rs > 0.005 else "n/a (Δ RTN ≈ 0)"
        lines.append(f"| {r['bits']} | {r['g']} | {r['p_rtn']:.4f} ({d_rtn:+.4f}) | {r['kl_rtn']:.5f} | "
                     f"{r['p_gptq']:.4f} ({d_gptq:+.4f}) | {r['kl_gptq']:.5f} | "
                     f"{r['kl_gptq'] / r['kl_rtn']:.2f} | {ratio} | {r['p_gptq0']:.4f} ({r['p_gptq0'] - base:+.4f}) | "
                     f"{r['p_rtn_s']:.4f} ({d_rs:+.4f}) | {r['p_gptq_s']:.4f} ({d_gs:+.4f}) | {ratio_s} | {ort} | "
                     f"{r['t_gptq']:.1f} |")
    lines += ["", "Target (issue 3): GPTQ's perplexity increase ≤ ½ of RTN's at the same group size.", ""]
    for r in rows:
        d_rtn, d_gptq = r["p_rtn"] - base, r["p_gptq"] - base
        verdict = ("met" if d_gptq <= 0.5 * d_rtn else "NOT met") if d_rtn > 0.005 else "not measurable (RTN Δ ≈ 0)"
        lines.append(f"- int{r['bits']} g{r['g']}: Δ RTN {d_rtn:+.4f}, Δ GPTQ {d_gptq:+.4f} → {verdict}; "
                     f"KL ratio {r['kl_gptq'] / r['kl_rtn']:.2f}")
    lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
