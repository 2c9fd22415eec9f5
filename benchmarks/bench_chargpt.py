"""Char-GPT int4 weight-only: round-to-nearest vs GPTQ at group sizes 32/64/128.

The cached char-GPT (``deepshrink.examples.chargpt``, trained on the standard library's
source) is quantized with every ``nn.Linear`` of the transformer blocks at 4 bits,
asymmetric per group of input columns (the MatMulNBits layout); the LM head stays fp32
(``--include-head`` quantizes it too). Rows: fp32, RTN asymmetric, RTN symmetric (the
form ONNX Runtime's default ``MatMul4BitsQuantizer`` writes), and GPTQ (128 calibration
windows of 128 characters from the training files, damp 0.01, sequential). Perplexity on
held-out files the model never saw.

    .venv/bin/python benchmarks/bench_chargpt.py
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deepshrink.examples.chargpt import VOCAB_SIZE, chargpt_data, perplexity, trained_chargpt, windows
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--groups", default="32,64,128")
    ap.add_argument("--calib", type=int, default=128, help="calibration windows of 128 characters")
    ap.add_argument("--eval-tokens", type=int, default=65_536)
    ap.add_argument("--include-head", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quantize_chargpt.md"))
    args = ap.parse_args()
    logging.disable(logging.INFO)  # ORT's quantizer logs every node it skips
    torch.set_num_threads(2)
    t_all = time.time()
    model = trained_chargpt()
    data = chargpt_data()
    exclude = () if args.include_head else ("head",)

    def ppl(m: torch.nn.Module) -> float:
        return perplexity(m, data.val, max_tokens=args.eval_tokens)

    x, _ = windows(data.train, args.calib, model.context, seed=1234)
    calib = [torch.from_numpy(x[i:i + 16]) for i in range(0, len(x), 16)]
    base = ppl(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"fp32 perplexity {base:.4f}", flush=True)
    rows = []
    for g in (int(s) for s in args.groups.split(",")):
        t = time.time()
        rtn, _ = rtn_quantize_model(model, args.bits, g, exclude, progress=False)
        p_rtn = ppl(rtn)
        rtn_s, _ = rtn_quantize_model(model, args.bits, g, exclude, symmetric=True, progress=False)
        p_rtn_s = ppl(rtn_s)
        t_rtn = time.time() - t
        t = time.time()
        gq, rec = gptq_quantize_model(model, calib, args.bits, g, exclude, progress=False)
        t_gptq = time.time() - t
        p_gptq = ppl(gq)
        ratio = (p_gptq - base) / (p_rtn - base) if p_rtn > base else float("nan")
        rows.append((g, p_rtn, p_rtn_s, p_gptq, ratio, t_rtn, t_gptq, rec))
        print(f"group {g}: RTN {p_rtn:.4f} RTN-sym {p_rtn_s:.4f} GPTQ {p_gptq:.4f} ratio {ratio:.3f}", flush=True)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench_chargpt.") as tmp:
        ort_base, ort_q = ort_rows(model, data.val, [r[0] for r in rows], args.bits, args.eval_tokens,
                                   args.include_head, Path(tmp))
    print(f"ORT fp32 {ort_base:.4f}; ORT MatMulNBits RTN {ort_q}", flush=True)
    quantized = sum(r.q.numel() for r in rows[0][7].values())
    lines = [
        f"# Char-GPT int{args.bits} weight-only: RTN vs GPTQ",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_chargpt.py --bits {args.bits} --groups {args.groups} "
        f"--calib {args.calib} --eval-tokens {args.eval_tokens}{' --include-head' if args.include_head else ''}`",
        "",
        f"Machine: {platform.machine()}, CPU flags: {cpu_flags()}, torch threads 2, torch {torch.__version__}; "
        f"wall {time.time() - t_all:.0f} s (shared, loaded machine).",
        f"Model: char-GPT, {n_params / 1e6:.2f} M parameters, {quantized / 1e6:.2f} M of them in the quantized Linear "
        f"layers ({'all' if args.include_head else 'LM head left in fp32'}); {len(data.train):,} training characters "
        f"from {data.train_files} files; perplexity on {min(args.eval_tokens, len(data.val)):,} characters of "
        f"{data.val_files} held-out files. GPTQ calibration: {args.calib} windows x 128 characters from training files.",
        "",
        f"fp32 perplexity: **{base:.4f}**",
        "",
        f"Peer, same run: the model exported to ONNX (TorchScript exporter) and quantized by ONNX Runtime's own "
        f"`MatMulNBitsQuantizer` (DefaultWeightOnlyQuantConfig: round-to-nearest, asymmetric, same block size, "
        f"same layers), perplexity computed from ONNX Runtime's logits; ORT fp32 perplexity {ort_base:.4f}. "
        "(ORT's GPTQ/RTN configs need Intel Neural Compressor, which does not install here.)",
        "",
        "| group | ORT MatMulNBits (RTN) ppl | Δ ORT | deepshrink RTN (asym) ppl | Δ RTN | RTN (sym) ppl "
        "| deepshrink GPTQ ppl | Δ GPTQ | Δ GPTQ / Δ RTN | Δ GPTQ / Δ ORT | GPTQ time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g, p_rtn, p_rtn_s, p_gptq, ratio, _t_rtn, t_gptq, _ in rows:
        d_ort = ort_q[g] - ort_base
        r_ort = (p_gptq - base) / d_ort if d_ort > 0 else float("nan")
        lines.append(f"| {g} | {ort_q[g]:.4f} | {d_ort:+.4f} | {p_rtn:.4f} | {p_rtn - base:+.4f} | {p_rtn_s:.4f} "
                     f"| {p_gptq:.4f} | {p_gptq - base:+.4f} | {ratio:.2f} | {r_ort:.2f} | {t_gptq:.1f} |")
    met = all(r[4] <= 0.5 for r in rows)
    lines += ["", f"Target: GPTQ's perplexity increase ≤ ½ of RTN's at every group size — "
              f"{'met' if met else 'NOT met'} (ratios {', '.join(f'{r[4]:.2f}' for r in rows)}).", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
