"""Foundation figures: MiniLM PyTorch → ONNX (both exporters) — conversion time and parity
on 64 real sentences — and `deepshrink bench` latency of ONNX Runtime vs PyTorch with spread,
at batch 1 and 32, 2 threads, measured side by side (interleaved) in one run."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import machine_line, md_table, this_command, write_result  # noqa: E402

import deepshrink as ds  # noqa: E402
from deepshrink.evaluate.bench import bench  # noqa: E402
from deepshrink.examples import minilm_dir  # noqa: E402


def main() -> None:
    folder = str(minilm_dir())
    work = Path(tempfile.mkdtemp(prefix="ds-bench-"))
    conv_rows = []
    paths = {}
    for exporter in ("dynamo", "torchscript"):
        out = work / f"minilm-{exporter}.onnx"
        t0 = time.perf_counter()
        res = ds.convert(folder, out, exporter=exporter, data="sentences:64")
        secs = time.perf_counter() - t0
        p = res.hops[0].parity
        paths[exporter] = out
        conv_rows.append([exporter, f"{secs:.1f} s", f"{p.max_abs:.2e}", f"{p.outputs[0].cos_min:.7f}",
                          f"{p.n_inputs}", "yes" if p.ok else "NO"])
    torch_handle = ds.load(folder)
    lat_rows = []
    for batch in (1, 32):
        r = bench([torch_handle, str(paths["dynamo"]), str(paths["torchscript"])], data="sentences:64", batch=batch,
                  repeats=40 if batch == 1 else 12, names=["PyTorch fp32 (eager)", "ORT fp32, dynamo export",
                                                           "ORT fp32, torchscript export"])
        for row in r.rows:
            lat_rows.append([batch, row.name, f"{row.median_ms:.2f}", f"{row.p90_ms:.2f}", f"{row.spread:.2f}",
                             f"{row.ratio:.2f}× ±{row.ratio_spread:.2f}", f"{row.cos_min:.6f}"])
    body = "\n\n".join([
        "MiniLM (all-MiniLM-L6-v2, 22.7 M parameters) → ONNX, parity on 64 unseen standard-library sentences "
        "plus fresh random inputs at batch 2 and 3 (target: max-abs < 1e-4, conversion < 30 s). Time includes "
        "export, the parity runs and writing the file.",
        md_table(["exporter", "conversion time", "parity max-abs", "cosine min", "samples", "pass"], conv_rows),
        "`deepshrink bench` on the same sentences (latency vs PyTorch, median of per-round ratios ± half the "
        "10–90% range of those ratios; spread = (p90 − p10) / median of each model's own latency):",
        md_table(["batch", "model", "median ms", "p90 ms", "spread", "latency vs PyTorch", "cosine min"], lat_rows),
        machine_line(),
    ])
    write_result("foundation", "Foundation: MiniLM conversion and ORT vs PyTorch latency", this_command(), body)


if __name__ == "__main__":
    main()
