"""`deepshrink optimize` on the digits CNN and MiniLM: op count, size, latency, session-load time.

For each model and each optimisation setting: nodes before → after, serialized bytes, parity
(max-abs, worst cosine), ONNX Runtime inference latency vs the input (``evaluate.bench``: 2
threads, batch 1, interleaved rounds; MiniLM on 64 real sentences padded to 64 tokens; both sessions at ORT_ENABLE_ALL, as a user would run
them) and session-creation time (median of 5; the input is optimised at load, the offline
output much less).

    python benchmarks/bench_optimize.py [--repeats 40] [--models cnn,minilm]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import machine_line, md_table, this_command, write_result  # noqa: E402


def load_ms(path: Path, n: int = 5) -> float:
    from deepshrink.backends.onnx import make_session

    times = []
    for _ in range(n):
        t = time.perf_counter()
        make_session(str(path), threads=2)
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--models", default="cnn,minilm")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from deepshrink.backends.onnx import save_onnx
    from deepshrink.convert.export import export_onnx
    from deepshrink.evaluate.bench import bench
    from deepshrink.examples import trained_digits_cnn
    from deepshrink.loading import load
    from deepshrink.optimize import OptimizeConfig, has_onnxslim, optimize
    from deepshrink.quantize.api import to_onnx_handle

    tmp = Path(tempfile.mkdtemp(prefix="bench_optimize."))
    models: list[tuple[str, Path, str | None, list[tuple[str, OptimizeConfig]]]] = []
    plain = [("basic", OptimizeConfig()), ("extended", OptimizeConfig(level="extended")),
             ("layout", OptimizeConfig(level="layout")), ("basic + fp16", OptimizeConfig(fp16=True))]
    if "cnn" in args.models:
        cnn = tmp / "cnn.onnx"
        export_onnx(trained_digits_cnn(0).eval(), {"x": np.zeros((2, 1, 8, 8), np.float32)}, cnn)
        models.append(("digits CNN (seed 0)", cnn, "digits:test", plain))
    if "minilm" in args.models:
        from transformers import AutoTokenizer

        from deepshrink.examples import minilm_dir, stdlib_sentences

        mini = tmp / "minilm.onnx"
        save_onnx(to_onnx_handle(load(str(minilm_dir()))).model, mini)
        # real sentences, right-padded to 64 tokens (timing at batch 1 takes the first one)
        tok = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
        enc = tok(stdlib_sentences(64), padding="max_length", truncation=True, max_length=64, return_tensors="np")
        sentences = tmp / "sentences.npz"
        np.savez(sentences, **{k: np.asarray(enc[k]).astype(np.int64) for k in ("input_ids", "attention_mask")})
        models.append(("all-MiniLM-L6-v2 (TorchScript export)", mini, str(sentences), [
            *plain, ("fuse transformer", OptimizeConfig(fuse="transformer")),
            ("fuse transformer + fp16", OptimizeConfig(fuse="transformer", fp16=True))]))

    rows = []
    for name, src, data, settings in models:
        base_load = load_ms(src)
        for label, cfg in settings:
            out = tmp / f"{src.stem}.{label.replace(' ', '_').replace('+', '')}.onnx"
            t = time.perf_counter()
            res = optimize(src, cfg, output=out, data=data)
            took = time.perf_counter() - t
            b = bench([str(src), str(out)], data=data, repeats=args.repeats, names=["input", label])
            r0, r1 = b.rows
            p = res.parity
            rows.append([name, label, f"{res.nodes_before} → {res.nodes_after}",
                         f"{res.bytes_before / 1e6:.3f} → {res.bytes_after / 1e6:.3f} MB "
                         f"({res.bytes_after / res.bytes_before:.2f}×)",
                         f"{r0.median_ms:.3f} → {r1.median_ms:.3f} ({r1.ratio:.2f}× ±{r1.ratio_spread:.2f})",
                         f"{base_load:.0f} → {load_ms(out):.0f}",
                         f"{p.max_abs:.2g} / {min(o.cos_min for o in p.outputs):.7f}",
                         "-" if r1.accuracy is None else f"{100 * r0.accuracy:.2f}% → {100 * r1.accuracy:.2f}%",
                         f"{took:.1f}"])
            print(rows[-1], flush=True)
    body = (machine_line() + f"; onnxslim {'installed' if has_onnxslim() else 'not installed'}\n\n"
            + md_table(["model", "setting", "nodes", "size", "median ms, batch 1 (ratio ± spread)",
                        "session load ms", "parity max-abs / worst cos", "accuracy", "optimize s"], rows)
            + f"\n\n{args.repeats} interleaved rounds per pair, both sessions at ORT_ENABLE_ALL: ONNX Runtime "
              "applies its own optimisations to the input at load time, so inference latency barely moves; "
              "the offline graph is what other runtimes see and it loads faster. 'layout' and 'extended' "
              "outputs hold ONNX Runtime-only ops (layout: this CPU's instruction set only).\n")
    if not args.no_write:
        write_result("optimize", "deepshrink optimize: op count, size, latency", this_command(), body)
    else:
        print(body)


if __name__ == "__main__":
    main()
