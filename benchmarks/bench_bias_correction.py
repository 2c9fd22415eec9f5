"""Bias correction on low-bit PTQ: digits CNN at W4/W3/W2 weights, 8-bit activations.

For each seed the cached digits CNN is post-training quantized (BN folded, per-channel MSE
weight steps, min-max activations on 512 training images) with and without bias correction
(the same 512 images), and torch.ao FX PTQ (per-channel symmetric weights, moving-average
min-max) is calibrated on the same images as the peer. Accuracy on the held-out test split
in the float simulation, plus the deployed ONNX Runtime QDQ model for deepshrink at W4A8.

    python benchmarks/bench_bias_correction.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
warnings.filterwarnings("ignore")

from _common import machine_line, md_table, this_command, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--bits", default="4,3,2")
    args = ap.parse_args()
    torch.set_num_threads(2)

    from bench_qat import ao_prepare

    import deepshrink as ds
    from deepshrink.examples import digits_data, trained_digits_cnn
    from deepshrink.quantize import QATConfig
    from deepshrink.quantize.onnx.sensitivity import run_outputs
    from deepshrink.quantize.qat import simulate_ptq
    from deepshrink.train import accuracy_of

    d = digits_data()
    calib = [torch.from_numpy(d.x_train[i:i + 128]) for i in range(0, 512, 128)]
    bits = [int(b) for b in args.bits.split(",")]
    res: dict[str, list[float]] = {}
    t0 = time.time()
    for seed in range(args.seeds):
        m = trained_digits_cnn(seed)
        res.setdefault("fp32", []).append(100 * accuracy_of(m, d.x_test, d.y_test))
        for wb in bits:
            for bc in (False, True):
                q = simulate_ptq(m, calib, weight_bits=wb, act_bits=8, bias_correction=bc)
                res.setdefault(f"ds-w{wb}-bc{int(bc)}", []).append(100 * accuracy_of(q, d.x_test, d.y_test))
            p = ao_prepare(m, wb, 8)
            with torch.no_grad():
                for b in calib:
                    p(b)
            from torch.ao.quantization import disable_observer

            p.apply(disable_observer)
            res.setdefault(f"ao-w{wb}", []).append(100 * accuracy_of(p.eval(), d.x_test, d.y_test))
            if wb == 4:  # the deployed artifact: QDQ int8 kernels in ONNX Runtime
                for bc in (False, True):
                    out = ds.quantize(m, QATConfig(weight_bits=4, act_bits=8, epochs=0, bias_correction=bc),
                                      data={"x": d.x_train[:512], "labels": d.y_train[:512]})
                    logits = run_outputs(out.model.model, {"x": d.x_test}, batch=360)
                    res.setdefault(f"onnx-w4-bc{int(bc)}", []).append(100 * float((logits.argmax(1) == d.y_test).mean()))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in res.items()), flush=True)

    fp = float(np.mean(res["fp32"]))

    def row(label: str, key: str) -> list[object]:
        v = res[key]
        return [label, f"{np.mean(v):.2f}", f"{fp - np.mean(v):+.2f}", ", ".join(f"{x:.2f}" for x in v)]

    rows = []
    for wb in bits:
        rows += [row(f"W{wb}A8 deepshrink PTQ", f"ds-w{wb}-bc0"), row(f"W{wb}A8 deepshrink PTQ + bias correction",
                                                                         f"ds-w{wb}-bc1"),
                 row(f"W{wb}A8 torch.ao PTQ", f"ao-w{wb}")]
        if wb == 4:
            rows += [row("W4A8 deepshrink PTQ, deployed ONNX QDQ", "onnx-w4-bc0"),
                     row("W4A8 deepshrink PTQ + bias correction, deployed ONNX QDQ", "onnx-w4-bc1")]
    body = "\n".join([
        machine_line(2) + f"; wall {time.time() - t0:.0f} s.",
        "",
        f"Digits CNN, {args.seeds} seeds (each its own trained CNN), accuracy on the 360-image test split "
        "(1 image = 0.28 pt). Calibration and bias correction: the same 512 training images. fp32: "
        f"{fp:.2f} %.",
        "",
        md_table(["weights/acts, method", "accuracy % (mean)", "drop vs fp32 (pt)", "per seed"], rows),
    ])
    write_result("quantize_bias_correction", "Quantization: bias correction on low-bit PTQ (issue 3)",
                 this_command(), body)


if __name__ == "__main__":
    main()
