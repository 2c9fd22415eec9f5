"""Assemble benchmarks/RESULTS.md from the sections in benchmarks/results/ (``--run`` reruns
every bench_*.py first — that takes a long time on 2 cores)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ORDER = ["foundation", "quantize_minilm", "quantize_digits", "quantize_qat", "quantize_bias_correction",
         "quantize_chargpt", "prune", "distill", "compress", "deep_compression", "optimize", "pypi_models", "search",
         "codec_fuzz", "fuzz_inputs", "memory_scale",
         "convert_hub", "onnx_node_suite", "public_reports", "gate", "seed_spread"]


def main() -> None:
    if "--run" in sys.argv:
        for script in sorted(HERE.glob("bench_*.py")):
            print(f"== {script.name}", flush=True)
            subprocess.run([sys.executable, str(script)], check=False)
    sections = sorted((HERE / "results").glob("*.md"),
                      key=lambda p: (next((i for i, o in enumerate(ORDER) if p.stem.startswith(o)), 99), p.stem))
    head = ("# Benchmark results\n\nEvery figure below was measured on this project's machines (2 shared cores, "
            "no GPU); ratios are taken side by side in the same run against the peer named in the row. "
            "Absolute times move 14–44% from run to run on these machines; the ratios are what to compare. "
            "Each section names the command that reproduces it. Regenerate this file with "
            "`python benchmarks/run_all.py` (add `--run` to rerun every benchmark).\n")
    body = "\n".join(p.read_text() for p in sections)
    (HERE / "RESULTS.md").write_text(head + "\n" + body)
    print(f"wrote {HERE / 'RESULTS.md'} from {len(sections)} sections")


if __name__ == "__main__":
    main()
