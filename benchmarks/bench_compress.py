"""``deepshrink compress`` end to end: the built-in recipes on the digits CNN (prune-int8, over seeds)
and on all-MiniLM-L6-v2 (int8), each written file measured; MiniLM beside ONNX Runtime's own
``quantize_dynamic`` of the same fp32 file, timed in the same interleaved rounds.

    python benchmarks/bench_compress.py                 # 5 CNN seeds + MiniLM
    python benchmarks/bench_compress.py --seeds 1 --no-minilm
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line, md_table, this_command, write_result  # noqa: E402


def cnn_rows(seeds: int, repeats: int, work: Path) -> tuple[list[list[object]], str]:
    from safetensors.torch import save_file

    import deepshrink as ds
    from deepshrink.examples import trained_digits_cnn

    rows, drops, size_r, lat = [], [], [], []
    for seed in range(seeds):
        w = work / f"cnn{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in trained_digits_cnn(seed).state_dict().items()}, str(w))
        res = ds.compress("deepshrink.examples:DigitsCNN", "prune-int8", work / f"cnn{seed}", weights=str(w),
                          input_shapes=["x:1x1x8x8"], data="digits:train", eval_data="digits:test", repeats=repeats)
        st = res.report["steps"]
        for s in st:
            rows.append([seed, s["name"], f"{s['size_bytes'] / 1024:.1f}", f"{s['params']:,}",
                         f"{s['latency_ratio']:.2f}× ±{s['latency_ratio_spread']:.2f}", f"{100 * s['accuracy']:.2f}%",
                         "; ".join(f["kind"] for f in s["flags"]) or "-"])
        drops.append(st[0]["accuracy"] - st[-1]["accuracy"])
        size_r.append(st[-1]["size_bytes"] / st[0]["size_bytes"])
        lat.append([s["latency_ratio"] for s in st])
    summary = (f"Over {seeds} seeds: accuracy drop original → final {100 * statistics.fmean(drops):.2f} pt mean "
               f"({100 * min(drops):.2f}–{100 * max(drops):.2f}); final file {statistics.fmean(size_r):.3f}× the "
               f"original; latency vs original, per step (median over seeds): "
               + ", ".join(f"{statistics.median(col):.2f}×" for col in zip(*lat, strict=True)))
    return rows, summary


def minilm_rows(repeats: int, work: Path) -> list[list[object]]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import deepshrink as ds
    from deepshrink.examples import minilm_dir

    res = ds.compress(str(minilm_dir()), "int8", work / "minilm", data="sentences:64", measure=False)
    fp32 = work / "minilm" / "steps" / "00-original" / "model.onnx"
    ours = res.model_path
    peer = work / "ort_dynamic.onnx"
    quantize_dynamic(str(fp32), str(peer), weight_type=QuantType.QInt8)
    eval_data = "sentences:200"
    table = ds.bench([str(fp32), str(ours), str(peer)], data=eval_data, repeats=repeats,
                     names=["ORT fp32 (dynamo export)", "compress int8", "ORT quantize_dynamic (peer)"])
    return [[r.name, f"{r.size_bytes / 2**20:.1f}", f"{r.ratio:.3f}× ±{r.ratio_spread:.3f}",
             f"{r.cos_mean:.4f} / {r.cos_min:.4f}"] for r in table.rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--no-minilm", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows, summary = cnn_rows(args.seeds, args.repeats, work)
        body = ("### Digits CNN, recipe prune-int8 (structured 25% of channels in multiples of 8, 5 fine-tune "
                "epochs, static int8), measured on the 360 test digits\n\n"
                + md_table(["seed", "step", "KB", "params", "latency vs original", "accuracy", "flags"], rows)
                + f"\n\n{summary}\n")
        if not args.no_minilm:
            body += ("\n### all-MiniLM-L6-v2, recipe int8, beside ONNX Runtime's quantize_dynamic (same fp32 file, "
                     "same interleaved rounds, batch 1, 200 sentences not used anywhere else)\n\n"
                     + md_table(["model", "MB", "latency vs fp32", "cosine mean / worst"], minilm_rows(args.repeats, work))
                     + "\n")
        body += "\n" + machine_line()
    write_result("compress", "compress: recipes end to end (issue 11)", this_command(), body)


if __name__ == "__main__":
    main()
