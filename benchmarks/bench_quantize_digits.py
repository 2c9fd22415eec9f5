"""Digits CNN static int8: deepshrink vs ORT ``quantize_static`` defaults, 5 seeds, same run.

For each seed: train (cached) → export to ONNX → quantize with the validation split as
calibration → accuracy on the test split, integer kernels in the ORT-optimized graph,
initializer bytes vs fp32, and latency vs fp32 (2 threads, interleaved, batch 1 and 64).

    python benchmarks/bench_quantize_digits.py [--seeds 0,1,2,3,4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import machine_line, md_table, this_command, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    from deepshrink.backends.onnx import make_session
    from deepshrink.convert.export import export_onnx
    from deepshrink.evaluate.size import weight_bytes
    from deepshrink.examples import digits_data, trained_digits_cnn
    from deepshrink.quantize import Int8StaticConfig, quantize
    from deepshrink.quantize.onnx.backend import float_compute_ops, integer_op_counts

    class Reader(CalibrationDataReader):
        def __init__(self, x: np.ndarray) -> None:
            self.items = iter([{"x": x[i:i + 1]} for i in range(len(x))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    def ort_default(model: onnx.ModelProto, x: np.ndarray) -> onnx.ModelProto:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            onnx.save(model, f"{d}/in.onnx")
            quantize_static(f"{d}/in.onnx", f"{d}/out.onnx", Reader(x))
            return onnx.load(f"{d}/out.onnx")

    rows_def: list[tuple[str, Any]] = [
        ("ORT quantize_static (defaults)", None),
        ("deepshrink int8-static (minmax)", Int8StaticConfig()),
        ("deepshrink int8-static (percentile)", Int8StaticConfig(observer="percentile")),
        ("deepshrink int8-static (entropy)", Int8StaticConfig(observer="entropy")),
        ("deepshrink int8-static (mse)", Int8StaticConfig(observer="mse", calibration_size=128)),
    ]
    results: dict[str, dict[str, list[Any]]] = {n: {"drop": [], "ratio": [], "ints": [], "floats": [], "b1": [], "b64": []}
                                                for n, _ in rows_def}
    acc_fp32 = []
    for seed in seeds:
        d = digits_data()
        model = trained_digits_cnn(seed)
        h = export_onnx(model, {"x": d.x_val[:2]})
        fp = h.model
        s_fp = make_session(fp, threads=2)
        acc0 = float((s_fp.run(None, {"x": d.x_test})[0].argmax(1) == d.y_test).mean())
        acc_fp32.append(acc0)
        quantized = {}
        for name, cfg in rows_def:
            t = time.time()
            quantized[name] = ort_default(fp, d.x_val) if cfg is None else quantize(h, cfg, data={"x": d.x_val}).model.model
            print(f"seed {seed} {name}: {time.time() - t:.1f}s", flush=True)
        sessions = {"fp32": s_fp, **{n: make_session(m, threads=2) for n, m in quantized.items()}}
        lat = {b: _interleaved(sessions, {"x": d.x_test[:b]}, args.repeats) for b in (1, 64)}
        for name, m in quantized.items():
            acc = float((sessions[name].run(None, {"x": d.x_test})[0].argmax(1) == d.y_test).mean())
            r = results[name]
            r["drop"].append(100 * (acc0 - acc))
            r["ratio"].append(weight_bytes(m) / weight_bytes(fp))
            r["ints"].append(sum(integer_op_counts(m).values()))
            r["floats"].append(sum(float_compute_ops(m).values()))
            r["b1"].append(lat[1][name] / lat[1]["fp32"])
            r["b64"].append(lat[64][name] / lat[64]["fp32"])
    header = ["row", "acc drop (pt), mean of seeds", "per seed", "integer kernels", "float Conv/Gemm left",
              "initializer bytes vs fp32", "latency b1 vs fp32", "latency b64 vs fp32"]
    table = []
    for name, _ in rows_def:
        r = results[name]
        table.append([name, f"{np.mean(r['drop']):+.2f}", " ".join(f"{v:+.2f}" for v in r["drop"]),
                      f"{min(r['ints'])}–{max(r['ints'])}", f"{max(r['floats'])}", f"{max(r['ratio']):.3f}×",
                      f"{np.median(r['b1']):.2f}×", f"{np.median(r['b64']):.2f}×"])
    body = "\n".join([
        machine_line(2) + f"; load average {os.getloadavg()[0]:.1f} (other jobs share these 2 cores)", "",
        f"Seeds {seeds}; fp32 test accuracy {', '.join(f'{100 * a:.2f}%' for a in acc_fp32)}. Calibration: the "
        f"validation split (360 images); accuracy on the test split (360). Integer kernels are counted in the graph "
        f"ONNX Runtime saves after its optimizations (QLinearConv, QGemm, QLinearAdd...). Latency: median of per-seed "
        f"ratios, {args.repeats} interleaved rounds each. 'drop' > 0 means the int8 model is less accurate. "
        f"One seed: `python benchmarks/bench_quantize_digits.py --seeds N`.", "",
        md_table(header, table)])
    if args.no_write:
        print(body)
    else:
        write_result("quantize_digits", "Quantization: digits CNN static int8 (issue 3)", this_command(), body)


def _interleaved(sessions: dict[str, Any], feed: dict[str, np.ndarray], repeats: int) -> dict[str, float]:
    names = list(sessions)
    for n in names:
        sessions[n].run(None, feed)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            sessions[n].run(None, feed)
            times[n].append(time.perf_counter() - t)
    return {n: float(np.median(v)) for n, v in times.items()}


if __name__ == "__main__":
    main()
