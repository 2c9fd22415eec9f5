"""Deep Compression (Han et al., ICLR 2016) into ``.dsz`` files: a stage-by-stage table like
the paper's (prune → quantize → Huffman, ratio after each) for the digits MLP and CNN over
5 seeds, a naive baseline (one-shot prune 90% + int8 + zlib), MiniLM with 6-bit k-means,
and pack/unpack speed and peak memory on MiniLM.

Ratios are fp32 parameter bytes (4 × parameters; for ONNX, 4 × float initializer
elements) over the bytes of the whole ``.dsz`` file (model description, names, codebooks,
Huffman tables, checksums — everything). Accuracy is top-1 on the held-out digits test
split (360 images), measured on the model decoded from the file.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_deep_compression.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import machine_line, md_table, this_command, write_result  # noqa: E402

# Han et al. Table 2 (LeNet-300-100 on MNIST): weights % kept after pruning, ratio after each stage
PAPER_LENET = {"pruned": 12.0, "quantized": 32.0, "huffman": 40.0, "kept": "8%", "bits": "6 (FC)",
               "err": "1.64% → 1.58%"}

# Table 3 (LeNet-5 on MNIST): 8% of weights kept, 3.05% of the size after P+Q, 2.55% after Huffman
PAPER_LENET5 = {"pruned": 12.0, "quantized": 33.0, "huffman": 39.0, "kept": "8%", "err": "0.80% → 0.74%"}

MLP_CFG = {"fc_sparsity": 0.94, "layer_sparsity": {"fc3": 0.8}, "fc_bits": 4, "other_bits": 4}
_CNN = {"fc_sparsity": 0.6, "layer_sparsity": {"stem.0": 0.5}, "conv_bits": 3, "fc_bits": 3, "other_bits": 4,
        "prune_epochs": 40, "finetune_epochs": 10, "lr_schedule": "cosine", "fold_bn": True, "distill": True,
        "kd_alpha": 0.9}
CNN_CFGS = {  # BatchNorm folded into the convs after pruning; pruning and centroid fine-tuning distilled
    "Deep Compression, 94% conv, pruning lr 1e-2": {**_CNN, "conv_sparsity": 0.94, "lr": 0.01},
    "accuracy-first, 93% conv, pruning lr 1e-2": {**_CNN, "conv_sparsity": 0.93, "lr": 0.01},
    "93% conv, pruning lr 2e-3 (the default)": {**_CNN, "conv_sparsity": 0.93},
}
MINILM_CFG = {"fc_sparsity": 0.0, "fc_bits": 6, "conv_bits": 6, "other_bits": 8, "kmeans_iters": 500, "finetune_epochs": 0,
              "prune_epochs": 0}


def _baseline(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """Naive: one-shot magnitude prune 90% of every Linear/Conv weight, int8 (per-tensor
    symmetric) for every float tensor, zlib level 9 over all int8 bytes + fp32 scales."""
    import copy

    import torch

    from deepshrink.prune.unstructured import apply_masks, magnitude_masks, remove_masks
    from deepshrink.train.trainer import accuracy_of

    m = copy.deepcopy(model)
    layers = {n: mod for n, mod in m.named_modules() if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))}
    apply_masks(layers, magnitude_masks(layers, sparsity=0.9))
    remove_masks(m)
    blobs = []
    with torch.no_grad():
        for t in list(m.parameters()) + [b for b in m.buffers() if b.is_floating_point()]:
            scale = float(t.abs().max()) / 127 or 1.0
            q = torch.clamp(torch.round(t / scale), -127, 127)
            t.copy_(q * scale)
            blobs.append(q.to(torch.int8).numpy().tobytes() + np.float32(scale).tobytes())
    return accuracy_of(m, x, y), len(zlib.compress(b"".join(blobs), 9))


def _one_seed(which: str, label: str, c: dict[str, Any], seed: int) -> dict[str, float]:
    """One seed of one digits config (runs in a worker process): pack to a real file, decode,
    check bit-exactness, measure accuracy on the decoded model, and where the bytes go."""
    import torch

    from deepshrink.codec import DeepCompressionConfig, pack, tensors_equal, unpack
    from deepshrink.examples import digits_data, trained_digits_cnn, trained_digits_mlp
    from deepshrink.train.trainer import accuracy_of

    torch.set_num_threads(1)
    data = digits_data()
    if which == "mlp":
        data = data.flat()
    train = (data.x_train, data.y_train)
    factory = "deepshrink.examples:" + ("DigitsMLP" if which == "mlp" else "DigitsCNN")
    model = (trained_digits_mlp if which == "mlp" else trained_digits_cnn)(seed)
    base = accuracy_of(model, data.x_test, data.y_test)
    blob_path = Path(tempfile.mkdtemp()) / "m.dsz"
    t = time.perf_counter()
    res = pack(model, DeepCompressionConfig(**c), data=train, factory=factory, seed=seed, stages=True,
               output=blob_path)
    secs = time.perf_counter() - t
    assert blob_path.stat().st_size == res.nbytes == res.stages["huffman"]
    back = unpack(blob_path)
    assert tensors_equal(res.tensors, back.tensors), "decode is not bit-exact"
    after = accuracy_of(back.build(), data.x_test, data.y_test)
    st = res.stages
    kinds = {s.name: s.kind for s in res.stats}
    where = {"weights": 0, "other": 0}  # constant tensors have no record (.dsz 3): they sit in the metadata
    for r in res.records:
        where["weights" if kinds.get(r.name) in ("fc", "conv") else "other"] += r.nbytes
    out = {"base": base, "after": after, "pruned": st["fp32"] / st["pruned"],
           "quantized": st["fp32"] / st["quantized"], "huffman": st["fp32"] / st["huffman"],
           "bytes": st["huffman"], "fp32": st["fp32"], "secs": secs,
           "kept": sum(s.nonzero for s in res.stats if s.kind != "other")
           / max(sum(s.numel for s in res.stats if s.kind != "other"), 1),
           **{f"b_{k}": v for k, v in where.items()}, "b_head": st["huffman"] - sum(where.values()),
           "n_const": sum(r.encoding == "constant" for r in res.records), "n_tensors": len(res.records)}
    print(which, label, seed, {k: round(v, 4) for k, v in out.items()}, flush=True)
    return out


def digits_rows(which: str, seeds: int, jobs: int = 1) -> tuple[list[list[Any]], list[str], list[str]]:
    import concurrent.futures as cf
    import multiprocessing as mp

    from deepshrink.examples import digits_data, trained_digits_cnn, trained_digits_mlp

    data = digits_data()
    if which == "mlp":
        data = data.flat()
    cfgs = {"Deep Compression": MLP_CFG} if which == "mlp" else CNN_CFGS
    rows, notes, where = [], [], []
    for seed in range(seeds):  # train (or load) each seed's model once, before the workers read the cache
        (trained_digits_mlp if which == "mlp" else trained_digits_cnn)(seed)
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futs = {label: [pool.submit(_one_seed, which, label, c, seed) for seed in range(seeds)]
                for label, c in cfgs.items()}
        results = {label: [f.result() for f in fs] for label, fs in futs.items()}
    for label, c in cfgs.items():
        per = results[label]
        a = {k: np.array([p[k] for p in per]) for k in per[0]}
        drop = 100 * (a["base"] - a["after"])
        rows.append([f"digits {which.upper()} — {label}", f"{100 * a['kept'].mean():.1f}%",
                     f"{a['pruned'].mean():.1f}×", f"{a['quantized'].mean():.1f}×",
                     f"**{a['huffman'].mean():.1f}×** ({a['huffman'].min():.1f}–{a['huffman'].max():.1f})",
                     f"{int(a['bytes'].mean()):,} / {int(a['fp32'][0]):,}",
                     f"{100 * a['base'].mean():.2f}% → {100 * a['after'].mean():.2f}%",
                     f"{drop.mean():+.2f} (worst {drop.max():+.2f})", f"{a['secs'].mean():.1f} s"])
        notes.append(f"{which} {label}: {json.dumps(c)}")
        where.append([f"digits {which.upper()} — {label}", f"{int(a['bytes'].mean()):,}",
                      f"{int(a['b_weights'].mean()):,}", f"{int(a['b_other'].mean()):,}",
                      f"{int(a['b_head'].mean()):,}", f"{a['n_const'].mean():.0f} of {a['n_tensors'].mean():.0f}",
                      " ".join(f"{100 * (b - x):+.2f}" for b, x in zip(a["base"], a["after"], strict=True))])
    # the naive baseline, same seeds
    bl = []
    for seed in range(seeds):
        model = (trained_digits_mlp if which == "mlp" else trained_digits_cnn)(seed)
        base = accuracy_of_model(model, data)
        acc, nbytes = _baseline(model, data.x_test, data.y_test)
        fp32 = 4 * sum(p.numel() for p in model.parameters())
        bl.append((base, acc, fp32 / nbytes, nbytes))
    b = np.array(bl)
    drop = 100 * (b[:, 0] - b[:, 1])
    rows.append([f"digits {which.upper()} — baseline: prune 90% one-shot + int8 + zlib", "10.0%", "", "",
                 f"{b[:, 2].mean():.1f}×", f"{int(b[:, 3].mean()):,}", f"{100 * b[:, 0].mean():.2f}% → "
                 f"{100 * b[:, 1].mean():.2f}%", f"{drop.mean():+.2f} (worst {drop.max():+.2f})", ""])
    return rows, notes, where


def accuracy_of_model(model: Any, data: Any) -> float:
    from deepshrink.train.trainer import accuracy_of

    return accuracy_of(model, data.x_test, data.y_test)


def _rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it is not inherited
    from the parent across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, path: str, out: str) -> None:
    """Run in a fresh process: time one pack (lossless, of the already-quantized ONNX file)
    or one unpack, and report peak RSS above the process's RSS after imports."""
    import onnx

    from deepshrink.codec import PackConfig, pack, unpack

    onnx.load  # noqa: B018 - imports done
    base = _rss_mb()
    t = time.perf_counter()
    if mode == "pack":
        res = pack(path, PackConfig(), output=out, force=True)
        n = res.fp32_bytes
    else:
        res2 = unpack(path, out, force=True)
        n = sum(a.nbytes for a in res2.tensors.values())
    secs = time.perf_counter() - t
    print(json.dumps({"secs": secs, "bytes": n, "peak_mb": _rss_mb(), "base_mb": base}))


def minilm_rows(n_eval: int) -> tuple[list[list[Any]], list[str]]:
    import onnx
    from transformers import AutoTokenizer

    import deepshrink as ds
    from deepshrink.backends.onnx import make_session
    from deepshrink.codec import DeepCompressionConfig, pack, tensors_equal, unpack
    from deepshrink.examples import minilm_dir, stdlib_sentences
    from deepshrink.quantize.api import to_onnx_handle

    tmp = Path(tempfile.mkdtemp(prefix="bench_dc."))
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    handle = to_onnx_handle(ds.load(str(minilm_dir())))
    fp32_path = tmp / "fp32.onnx"
    onnx.save(handle.model, fp32_path)
    cfg = DeepCompressionConfig(**MINILM_CFG)
    t = time.perf_counter()
    res = pack(handle, cfg, output=tmp / "minilm.dsz", stages=True)
    total = time.perf_counter() - t
    back = unpack(tmp / "minilm.dsz", tmp / "minilm.unpacked.onnx")
    exact = tensors_equal(res.tensors, back.tensors)
    s_ref, s_q = make_session(str(fp32_path), threads=2), make_session(str(tmp / "minilm.unpacked.onnx"), threads=2)
    texts = stdlib_sentences(n_eval, offset=1200)  # unseen: k-means saw no data at all
    cos = []
    for text in texts:
        e = tok([text], truncation=True, max_length=128, return_tensors="np")
        feed = {k: np.asarray(e[k]).astype(np.int64) for k in ("input_ids", "attention_mask")}
        a, b = s_ref.run(None, feed)[0][0], s_q.run(None, feed)[0][0]
        cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    cos_a = np.array(cos)
    st = res.stages
    rows = [["MiniLM (ONNX) — 6-bit k-means, no pruning", "100%", "1.0×", f"{st['fp32'] / st['quantized']:.1f}×",
             f"**{res.ratio:.2f}×**", f"{res.nbytes:,} / {res.fp32_bytes:,}",
             f"cosine vs fp32 mean {cos_a.mean():.4f} / worst {cos_a.min():.4f} ({n_eval} unseen sentences)",
             "bit-exact" if exact else "NOT bit-exact", f"{total:.1f} s"]]
    # pack / unpack speed and peak memory, each in a fresh process
    speed = []
    for mode, src, dst in (("pack", tmp / "minilm.unpacked.onnx", tmp / "again.dsz"),
                           ("unpack", tmp / "minilm.dsz", tmp / "again.onnx")):
        times = []
        for _ in range(3):
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(src), str(dst)], check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            times.append(json.loads(out))
        best = min(times, key=lambda r: r["secs"])
        runs = ", ".join(f"{r['secs']:.2f}" for r in times)
        speed.append([mode, f"{best['bytes'] / 1e6:.1f} MB (fp32 tensors)", f"{best['secs']:.2f} s "
                      f"(runs: {runs})",
                      f"{best['bytes'] / 1e6 / best['secs']:.0f} MB/s",
                      f"{best['peak_mb'] - best['base_mb']:.0f} MB above {best['base_mb']:.0f} MB after imports"])
    notes = [f"MiniLM config: {json.dumps(MINILM_CFG)}; k-means + encoding took {res.seconds['compress']:.1f} s + "
             f"{res.seconds['encode']:.1f} s in the benchmark process",
             "Records: " + ", ".join(f"{e} {sum(r.encoding == e for r in res.records)}"
                                     for e in ("raw", "dense", "sparse"))]
    speed_md = md_table(["direction", "tensors", "time (best of 3, fresh process)", "throughput",
                         "peak memory (VmHWM)"], speed)
    return rows, notes + ["", speed_md]


def _previous_minilm() -> tuple[list[list[Any]], str]:
    """Without ``minilm`` in ``--only``: carry the MiniLM row and speed table over from the
    results file this script wrote last (marked as such), so a digits-only rerun keeps them."""
    path = Path(__file__).parent / "results" / "deep_compression.md"
    if not path.exists():
        return [], ""
    text = path.read_text()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| MiniLM")]
    for r in rows:
        r[0] = r[0].split(" (carried over")[0] + " (carried over from the previous full run)"
    at = text.find("MiniLM config:")
    extra = text[at:].split("\n\nReproduce", 1)[0] if at >= 0 else ""
    return rows, ("MiniLM figures carried over from the previous full run (`--only` without minilm); "
                  + extra if extra else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--only", default="mlp,cnn,minilm")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes for the digits seeds")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "IN", "OUT"))
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    header = ["model", "weights kept", "after pruning", "after quantization", "after Huffman (file)",
              "file bytes / fp32 bytes", "accuracy before → after (mean)", "drop, pt (mean of seeds)",
              "time per run"]
    rows: list[list[Any]] = [["LeNet-300-100 (paper, MNIST)", PAPER_LENET["kept"], f"{PAPER_LENET['pruned']:.0f}×",
                              f"{PAPER_LENET['quantized']:.0f}×", f"{PAPER_LENET['huffman']:.0f}×", "",
                              f"top-1 error {PAPER_LENET['err']}", "", ""]]
    rows.append(["LeNet-5 (paper, MNIST)", PAPER_LENET5["kept"], f"{PAPER_LENET5['pruned']:.0f}×",
                 f"{PAPER_LENET5['quantized']:.0f}×", f"{PAPER_LENET5['huffman']:.0f}×", "",
                 f"top-1 error {PAPER_LENET5['err']}", "", ""])
    notes: list[str] = []
    where: list[list[str]] = []
    only = args.only.split(",")
    for which in ("mlp", "cnn"):
        if which in only:
            r, n, w = digits_rows(which, args.seeds, args.jobs)
            rows += r
            notes += n
            where += w
    extra = ""
    if "minilm" in only:
        r, n = minilm_rows(args.eval)
        rows += r
        extra = "\n".join(n)
    else:
        kept_rows, extra = _previous_minilm()
        rows += kept_rows
    body = (
        f"{machine_line(1)}; digits rows: mean of {args.seeds} seeds (each seed its own trained model), "
        "fine-tuning single-threaded.\n\n"
        "\"after pruning\" is computed as the paper counts it (fp32 non-zeros plus relative indices of 5 bits for "
        "FC / 8 for conv layers, with filler entries; other tensors fp32); \"after quantization\" is a real `.dsz` "
        "file with fixed-length codes; \"after Huffman\" is the real file `pack` writes. Every ratio counts "
        "the whole file. Accuracy is measured on the model decoded from the file (bit-exact with the "
        "pre-pack quantized model, checked on every run). \"time per run\" is wall-clock in one worker; with "
        f"--jobs {args.jobs} on a shared machine it is contended, not a speed figure.\n\n"
        + md_table(header, rows) + "\n\nConfigs: " + "; ".join(notes) + "\n\n"
        + "Where the bytes go (mean over seeds; header + metadata: magic, counts, file CRC and the deflated "
        "metadata — model description, tensor names, dtypes, shapes, encodings and the values of constant tensors "
        "such as folded BatchNorm scales, means and variances, which have no record of their own in `.dsz` "
        "version 3):\n\n"
        + md_table(["model", "file", "conv/fc weights", "biases, norm shifts, other", "header + metadata",
                    "constant tensors", "accuracy drop per seed, pt"], where) + "\n\n" + extra
    )
    write_result("deep_compression", "Deep Compression: prune → trained quantization → Huffman into .dsz (issue 16)",
                 this_command(), body)


if __name__ == "__main__":
    main()
