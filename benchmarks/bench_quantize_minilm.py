"""MiniLM (all-MiniLM-L6-v2) int8 in ONNX Runtime: deepshrink vs ORT, NNCF and torch.ao, same run.

Calibration: the first 64 standard-library sentences; evaluation: sentences from offset 1200
on (never seen in calibration). ``ds-auto`` (``quantize --scheme auto``, the search preset) is given
the 64 calibration sentences and the next ``--holdout`` ones, which it holds out to choose on;
``ds-auto-layouts`` (``--strategy layouts``, the fixed sequence) the 64 only. Fidelity = per-sentence cosine of the embedding against the
ORT fp32 model, each sentence run alone (batch 1, no padding). Latency: 2 intra-op threads,
thread spinning off, every model timed in interleaved rounds; batch 1 = 16 different
sentences one by one per round, batch 32 = one padded batch of 32 sentences.

    python benchmarks/bench_quantize_minilm.py [--passes 2] [--rows ort-fp32,ds-auto,...]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# torch's OpenMP workers otherwise spin between ops and steal the 2 cores from the ORT sessions
# timed in the same process (the ORT sessions run with spinning off for the same reason)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _common import machine_line, md_table, this_command, write_result  # noqa: E402

ROWS = ["ort-fp32", "ort-dynamic", "ort-dynamic-per-channel", "nncf", "torch-ao-dynamic", "ds-default", "ds-auto",
        "ds-auto-layouts"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--holdout", type=int, default=192, help="ds-auto: sentences after the calibration ones it "
                    "holds out to choose on")
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--name", default="quantize_minilm", help="results/<name>.md to write")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]

    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoTokenizer

    import deepshrink as ds
    from deepshrink.backends.onnx import make_session
    from deepshrink.examples import minilm, minilm_dir, stdlib_sentences
    from deepshrink.quantize import AutoConfig, Int8DynamicConfig
    from deepshrink.quantize.api import run_quantize, to_onnx_handle
    from deepshrink.quantize.onnx.auto import summary_from_dict

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)

    def enc(texts: list[str]) -> dict[str, np.ndarray]:
        e = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
        return {k: np.asarray(e[k]).astype(np.int64) for k in ("input_ids", "attention_mask")}

    calib_texts = stdlib_sentences(args.calib, offset=0)
    eval_texts = stdlib_sentences(args.eval, offset=1200)
    lat_texts = eval_texts[:16]
    batch32 = enc(eval_texts[16:48])
    calib = enc(calib_texts)
    holdout_texts = stdlib_sentences(args.calib + args.holdout, offset=0)[args.calib:]
    assert args.calib + args.holdout <= 1200, "the held-out sentences must not reach the evaluation ones"
    tmp = Path(tempfile.mkdtemp(prefix="bench_q_minilm."))
    notes: list[str] = []
    info: dict[str, dict[str, Any]] = {}

    t0 = time.time()
    float_handle = to_onnx_handle(ds.load(str(minilm_dir())))
    fp32 = tmp / "fp32.onnx"
    onnx.save(float_handle.model, fp32)
    paths: dict[str, Path] = {"ort-fp32": fp32}
    build_s: dict[str, float] = {"ort-fp32": time.time() - t0}
    if "ort-dynamic" in rows:
        t = time.time()
        quantize_dynamic(str(fp32), str(tmp / "ort_dyn.onnx"), weight_type=QuantType.QInt8)
        paths["ort-dynamic"], build_s["ort-dynamic"] = tmp / "ort_dyn.onnx", time.time() - t
    if "ort-dynamic-per-channel" in rows:
        t = time.time()
        quantize_dynamic(str(fp32), str(tmp / "ort_dyn_pc.onnx"), weight_type=QuantType.QInt8, per_channel=True)
        paths["ort-dynamic-per-channel"], build_s["ort-dynamic-per-channel"] = tmp / "ort_dyn_pc.onnx", time.time() - t
    if "nncf" in rows:
        t = time.time()
        try:
            import nncf

            model = onnx.load(str(fp32))
            items = [{k: v[i:i + 1, : int(calib["attention_mask"][i].sum())] for k, v in calib.items()}
                     for i in range(len(calib_texts))]
            with _quiet():
                q = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), model_type=nncf.ModelType.TRANSFORMER)
            onnx.save(q, str(tmp / "nncf.onnx"))
            paths["nncf"], build_s["nncf"] = tmp / "nncf.onnx", time.time() - t
        except Exception as exc:  # a peer that fails here is reported, not hidden
            notes.append(f"NNCF failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            traceback.print_exc()
    for row, cfg, data in (("ds-default", Int8DynamicConfig(), calib),
                           ("ds-auto", AutoConfig(calibration_size=len(calib_texts)), enc(calib_texts + holdout_texts)),
                           ("ds-auto-layouts", AutoConfig(strategy="layouts"), calib)):
        if row in rows:
            t = time.time()
            out = run_quantize(float_handle, cfg, data=data)
            onnx.save(out.handle.model, str(tmp / f"{row}.onnx"))
            paths[row], build_s[row] = tmp / f"{row}.onnx", time.time() - t
            info[row] = out.report
    torch_ao = None
    if "torch-ao-dynamic" in rows:
        torch.set_num_threads(2)
        t = time.time()
        torch_ao = torch.ao.quantization.quantize_dynamic(minilm(), {torch.nn.Linear}, dtype=torch.qint8).eval()
        build_s["torch-ao-dynamic"] = time.time() - t

    sessions = {name: make_session(p, threads=2) for name, p in paths.items()}

    def onnx_runner(sess: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        return lambda feed: sess.run(None, feed)[0]

    def torch_runner(model: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        def run(feed: dict[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])).numpy()
        return run

    runners = {name: onnx_runner(s) for name, s in sessions.items()}
    if torch_ao is not None:
        runners["torch-ao-dynamic"] = torch_runner(torch_ao)
    order = [r for r in ROWS if r in runners]

    # fidelity: each sentence alone, against ORT fp32
    singles = [enc([t]) for t in eval_texts]
    emb = {name: np.concatenate([runners[name](f) for f in singles]) for name in order}
    ref = emb["ort-fp32"]
    fid, fid32 = {}, {}
    padded = [enc(eval_texts[i:i + 32]) for i in range(0, len(eval_texts), 32)]
    for name in order:
        fid[name] = _cos(ref, emb[name])
        fid32[name] = _cos(ref, np.concatenate([runners[name](f) for f in padded]))

    lat_feeds = [enc([t]) for t in lat_texts]
    passes = []
    # phase 1: every ORT row interleaved; phase 2: torch.ao against ORT fp32 on its own, so torch's
    # thread pool cannot distort the ORT rows (ratios of the torch row come from phase 2)
    ort_order = [n for n in order if n != "torch-ao-dynamic"]
    phases = [ort_order] + ([["ort-fp32", "torch-ao-dynamic"]] if "torch-ao-dynamic" in runners else [])
    rounds: dict[str, list[float]] = {}  # per-round b1 times of the ORT rows over all passes
    for p in range(args.passes):
        res: dict[str, dict[str, float]] = {"b1": {}, "b32": {}, "b1_ref": {}, "b32_ref": {}}
        for ph in phases:
            raw: dict[str, list[float]] = {}
            b1 = _interleaved(runners, ph, lambda r: [r(f) for f in lat_feeds], args.repeats, len(lat_feeds), raw)
            if ph is ort_order:
                for n, v in raw.items():
                    rounds.setdefault(n, []).extend(v)
            b32 = _interleaved(runners, ph, lambda r: r(batch32), max(5, args.repeats // 3), 1)
            for n in ph:
                if n == "ort-fp32" and n in res["b1"]:
                    continue
                res["b1"][n], res["b32"][n] = b1[n], b32[n]
                res["b1_ref"][n], res["b32_ref"][n] = b1["ort-fp32"], b32["ort-fp32"]
        passes.append(res)
        print(f"pass {p + 1}: " + ", ".join(f"{n} {res['b1'][n]:.2f} ms" for n in order), flush=True)

    sizes = {name: paths[name].stat().st_size for name in paths}
    if torch_ao is not None:
        buf = io.BytesIO()
        torch.save(torch_ao.state_dict(), buf)
        sizes["torch-ao-dynamic"] = buf.tell()
    header = ["row", "runtime", "size MB"]
    for p in range(args.passes):
        header += [f"b1 ms (pass {p + 1})", f"b1 vs fp32 (pass {p + 1})", f"b32 vs fp32 (pass {p + 1})"]
    header += ["b1 vs fp32, all rounds (IQR)", "b1 vs ORT dynamic, all rounds (IQR)"]
    header += ["cosine mean", "cosine worst", "cosine in padded batches of 32 (mean / worst)"]

    def per_round(name: str, ref: str) -> str:
        if name not in rounds or ref not in rounds:
            return "—"
        r = np.asarray(rounds[name]) / np.asarray(rounds[ref])
        q1, med, q3 = np.percentile(r, [25, 50, 75])
        return f"{med:.3f}× ({q1:.2f}–{q3:.2f})"
    table = []
    for name in order:
        row: list[Any] = [name, "torch" if name.startswith("torch") else "onnxruntime", f"{sizes[name] / 1e6:.1f}"]
        for ps in passes:
            row += [f"{ps['b1'][name]:.2f}", f"{ps['b1'][name] / ps['b1_ref'][name]:.2f}×",
                    f"{ps['b32'][name] / ps['b32_ref'][name]:.2f}×"]
        row += [per_round(name, "ort-fp32"), per_round(name, "ort-dynamic")]
        row += [f"{fid[name][0]:.4f}", f"{fid[name][1]:.4f}", f"{fid32[name][0]:.4f} / {fid32[name][1]:.4f}"]
        table.append(row)
    held_line = f"; ds-auto also the next {len(holdout_texts)}, held out to choose on" if "ds-auto" in rows else ""
    body = [machine_line(2) + f"; load average {os.getloadavg()[0]:.1f} (other jobs share these 2 cores)", "",
            f"{len(eval_texts)} evaluation sentences (stdlib_sentences offset 1200), each run alone for the cosine "
            f"columns (and in padded batches of 32 for the last one), calibration: {len(calib_texts)} "
            f"sentences (offset 0){held_line}. b1: median over {args.repeats} interleaved rounds of 16 single-sentence calls "
            f"(per call); b32: one padded batch of 32. Ratios are against ORT fp32 timed in the same interleaved rounds; "
            f"the 'all rounds' columns are the median (and quartiles) of the per-round ratios over every pass; "
            f"the torch.ao row is timed in its own rounds against ORT fp32 (OMP_WAIT_POLICY=PASSIVE), because torch's "
            f"thread pool in the same rounds slowed every ORT session. One row alone (with its fp32 reference): "
            f"`python benchmarks/bench_quantize_minilm.py --rows ort-fp32,ROW`.", "",
            md_table(header, table), ""]
    for row in ("ds-auto", "ds-auto-layouts"):
        auto = info.get(row, {}).get("auto")
        if auto:  # what `deepshrink quantize --scheme auto` prints, as a block
            body += [f"{row} (`quantize --scheme auto`{' --strategy layouts' if row.endswith('layouts') else ''}):",
                     "", "```", summary_from_dict(auto), "```", ""]
    body.append("Build times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in build_s.items()) + ".")
    body += [f"Note: {n}" for n in notes]
    text = "\n".join(body)
    if args.no_write:
        print(text)
    else:
        title = "Quantization: MiniLM int8 (issue 3)" + ("" if args.name == "quantize_minilm" else
                                                          f", rows {', '.join(rows)} only")
        write_result(args.name, title, this_command(), text)


def _cos(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    a = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    b = out / np.linalg.norm(out, axis=1, keepdims=True)
    c = (a * b).sum(1)
    return float(c.mean()), float(c.min())


def _interleaved(runners: dict[str, Any], order: list[str], fn: Callable[[Any], Any], repeats: int, per: int,
                 raw: dict[str, list[float]] | None = None) -> dict[str, float]:
    for name in order:  # warm-up
        fn(runners[name])
    times: dict[str, list[float]] = {n: [] for n in order}
    for r in range(repeats):
        seq = order if r % 2 == 0 else order[::-1]
        for name in seq:
            t = time.perf_counter()
            fn(runners[name])
            times[name].append((time.perf_counter() - t) * 1000 / per)
    if raw is not None:
        raw.update(times)
    return {n: float(np.median(v)) for n, v in times.items()}


class _quiet:
    def __enter__(self) -> None:
        import logging

        logging.getLogger("nncf").setLevel(logging.ERROR)

    def __exit__(self, *a: Any) -> None:
        return None


if __name__ == "__main__":
    main()
