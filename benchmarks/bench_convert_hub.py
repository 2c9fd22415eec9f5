"""Conversion hub on the digits models: every route's parity, size and accuracy, TFLite int8
accuracy drop, the Keras → ONNX → PyTorch chain against the Keras model, Keras → TFLite
through ONNX against TensorFlow's own Keras converter (the peer), and the latency of each
runtime at batch 1 timed side by side (interleaved, 2 threads, ORT spinning off).

    python benchmarks/bench_convert_hub.py      # about 2 minutes on 2 cores
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import machine_line, md_table, this_command, write_result  # noqa: E402

import deepshrink as ds  # noqa: E402
from deepshrink.backends.onnx import make_session, run_onnx  # noqa: E402
from deepshrink.backends.openvino_rt import make_runner as ov_runner  # noqa: E402
from deepshrink.backends.tflite_rt import make_runner as tfl_runner  # noqa: E402
from deepshrink.convert.onnx2torch import onnx_to_torch  # noqa: E402
from deepshrink.evaluate import measure_latency  # noqa: E402
from deepshrink.examples import digits_data, trained_digits_cnn, trained_digits_mlp  # noqa: E402

THREADS = 2


def accuracy(run, x: np.ndarray, y: np.ndarray, key: str = "x") -> float:
    logits = np.concatenate([np.asarray(run({key: x[i:i + 60]})[0]) for i in range(0, len(x), 60)])
    return float((logits.argmax(1) == y).mean())


def torch_run(module: torch.nn.Module):
    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return [module(torch.from_numpy(next(iter(feed.values())))).numpy()]
    return run


def keras_cnn(d):
    import keras

    keras.utils.set_random_seed(0)
    m = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.BatchNormalization(momentum=0.8),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])
    m.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(d.x_train.transpose(0, 2, 3, 1), d.y_train, epochs=15, batch_size=32, verbose=0)
    return m


def main() -> None:
    warnings.simplefilter("ignore")
    d = digits_data()
    work = Path(tempfile.mkdtemp(prefix="ds-hub-"))
    route_rows, lat_rows, int8_rows = [], [], []
    for name, model, x_test in (("MLP 64-300-100-10", trained_digits_mlp(), d.flat().x_test),
                                ("CNN (residual, BN)", trained_digits_cnn(), d.x_test)):
        tag = "mlp" if "MLP" in name else "cnn"
        shape = "x:2x64" if tag == "mlp" else "x:2x1x8x8"
        h = ds.load(model, input_shapes=[shape])
        src_acc = accuracy(torch_run(model), x_test, d.y_test)
        runs = {}
        targets = [("PyTorch → ONNX (dynamo)", h, f"{tag}.onnx", {}),
                   ("ONNX → PyTorch (.pt2, our importer)", work / f"{tag}.onnx", f"{tag}.pt2", {}),
                   ("ONNX → TFLite float32", work / f"{tag}.onnx", f"{tag}.tflite", {}),
                   ("ONNX → TFLite int8 (calib: digits val)", work / f"{tag}.onnx", f"{tag}.int8.tflite",
                    {"int8": True, "data": "digits"}),
                   ("ONNX → OpenVINO IR fp32", work / f"{tag}.onnx", f"{tag}.xml", {}),
                   ("ONNX → OpenVINO IR fp16 weights", work / f"{tag}.onnx", f"{tag}.fp16.xml", {"fp16": True})]
        for label, src, out, kw in targets:
            t0 = time.perf_counter()
            res = ds.convert(src, work / out, **kw)
            secs = time.perf_counter() - t0
            p = res.hops[-1].parity
            path = work / out
            size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
            if out.endswith(".onnx"):
                sess = make_session(str(path), threads=THREADS)
                run = runs["ORT fp32"] = (lambda f, s=sess: run_onnx(s, f))
            elif out.endswith(".pt2"):
                gm = onnx_to_torch(work / f"{tag}.onnx")
                run = runs["PyTorch, imported GraphModule"] = torch_run(gm)
            elif out.endswith(".tflite"):
                run = runs["TFLite int8" if "int8" in out else "TFLite float32"] = tfl_runner(path, threads=THREADS)
            else:
                run = ov_runner(path, threads=THREADS)
                if "fp16" not in out:
                    runs["OpenVINO fp32"] = run
            acc = accuracy(run, x_test, d.y_test)
            judged = p.note.split(":")[0] if p.note.startswith("int8") else "max-abs"
            route_rows.append([name, label, f"{p.max_abs:.1e}", judged, "yes" if p.ok else "NO", f"{secs:.1f} s",
                               f"{size / 1024:.0f} KiB", f"{acc:.4f}", f"{(acc - src_acc) * 100:+.2f}"])
            if "int8" in out:
                int8_rows.append([name + " — deepshrink TFLite int8", f"{src_acc:.4f}", f"{acc:.4f}", f"{(src_acc - acc) * 100:.2f}",
                                  f"{p.outputs[0].top1:.4f}"])
        # peer for int8: ONNX Runtime's static QDQ quantization of the same ONNX, same calibration data
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

        calib = (d.flat() if tag == "mlp" else d).x_val

        class Reader(CalibrationDataReader):
            def __init__(self, data: np.ndarray = calib) -> None:
                self.it = iter([{"x": data[i:i + 1]} for i in range(200)])

            def get_next(self):  # noqa: ANN202
                return next(self.it, None)

        qdq = work / f"{tag}.qdq.onnx"
        quantize_static(str(work / f"{tag}.onnx"), str(qdq), Reader(), quant_format=QuantFormat.QDQ)
        qsess = make_session(str(qdq), threads=THREADS)
        runs["ORT int8 QDQ (peer quantizer)"] = lambda f, s=qsess: run_onnx(s, f)
        acc_q = accuracy(runs["ORT int8 QDQ (peer quantizer)"], x_test, d.y_test)
        int8_rows.append([name + " — ORT quantize_static QDQ (peer)", f"{src_acc:.4f}", f"{acc_q:.4f}",
                          f"{(src_acc - acc_q) * 100:.2f}", "—"])
        imported_q = onnx_to_torch(qdq)
        acc_iq = accuracy(torch_run(imported_q), x_test, d.y_test)
        route_rows.append([name, "ORT-quantized QDQ ONNX → PyTorch (our importer)", "—", "—", "—", "—",
                           f"{qdq.stat().st_size / 1024:.0f} KiB", f"{acc_iq:.4f}", f"{(acc_iq - src_acc) * 100:+.2f}"])
        runs["PyTorch, original module"] = torch_run(model)
        feed = {"x": x_test[:1]}
        stats = measure_latency({k: (lambda r=r, f=feed: r(f)) for k, r in runs.items()}, warmup=20, repeats=300,
                                threads=THREADS)
        for k, s in stats.items():
            lat_rows.append([name, k, f"{s.median_ms:.3f}", f"{s.spread:.2f}", f"{s.ratio:.2f}× ±{s.ratio_spread:.2f}"])

    # Keras chain and the TF-converter peer
    import tensorflow as tf

    km = keras_cnn(d)
    x_nhwc = d.x_test.transpose(0, 2, 3, 1)
    acc_keras = float((km.predict(x_nhwc, verbose=0).argmax(1) == d.y_test).mean())
    kpath = work / "kcnn.keras"
    km.save(kpath)
    t0 = time.perf_counter()
    r1 = ds.convert(kpath, work / "kcnn.onnx", nchw=True)
    t_k2o = time.perf_counter() - t0
    t0 = time.perf_counter()
    r2 = ds.convert(work / "kcnn.onnx", work / "kcnn.pt2")
    t_o2t = time.perf_counter() - t0
    gm = onnx_to_torch(work / "kcnn.onnx")
    sess = make_session(str(work / "kcnn.onnx"), threads=THREADS)
    kin = sess.get_inputs()[0].name  # the Keras input layer's name
    acc_onnx = accuracy(lambda f: run_onnx(sess, f), d.x_test, d.y_test, key=kin)
    acc_torch = accuracy(torch_run(gm), d.x_test, d.y_test)
    with torch.no_grad():
        same = int((gm(torch.from_numpy(d.x_test)).argmax(1).numpy() == km.predict(x_nhwc, verbose=0).argmax(1)).sum())
    chain_rows = [
        ["Keras (source, 15 epochs)", "—", "—", f"{acc_keras:.4f}", "—"],
        ["→ ONNX (tf2onnx, NCHW inputs)", f"{r1.hops[0].parity.max_abs:.1e}", f"{t_k2o:.1f} s", f"{acc_onnx:.4f}", "—"],
        ["→ PyTorch (our importer, .pt2)", f"{r2.hops[0].parity.max_abs:.1e}", f"{t_o2t:.1f} s", f"{acc_torch:.4f}",
         f"{same}/{len(d.y_test)}"],
    ]
    # peer: TF's own converter straight from the Keras model, vs ours through ONNX
    t0 = time.perf_counter()
    conv = tf.lite.TFLiteConverter.from_keras_model(km)
    (work / "kcnn_tf.tflite").write_bytes(conv.convert())
    t_peer = time.perf_counter() - t0
    t0 = time.perf_counter()
    r3 = ds.convert(work / "kcnn.onnx", work / "kcnn_ours.tflite")
    t_ours = time.perf_counter() - t0
    peer_run, ours_run = tfl_runner(work / "kcnn_tf.tflite", THREADS), tfl_runner(work / "kcnn_ours.tflite", THREADS)
    ref = km.predict(x_nhwc, verbose=0)
    out_peer = np.concatenate([peer_run({peer_run.input_names[0]: x_nhwc[i:i + 60]})[0] for i in range(0, 360, 60)])
    out_ours = np.concatenate([ours_run({kin: d.x_test[i:i + 60]})[0] for i in range(0, 360, 60)])
    lat = measure_latency({"TF converter (Keras → TFLite, peer)": lambda: peer_run({peer_run.input_names[0]: x_nhwc[:1]}),
                           "deepshrink (Keras → ONNX → TFLite)": lambda: ours_run({kin: d.x_test[:1]})},
                          warmup=20, repeats=300, threads=THREADS)
    peer_rows = []
    for label, out, secs, path in (("TF converter (Keras → TFLite, peer)", out_peer, t_peer, "kcnn_tf.tflite"),
                                   ("deepshrink (Keras → ONNX → TFLite)", out_ours, t_ours, "kcnn_ours.tflite")):
        s = lat[label]
        peer_rows.append([label, f"{float(np.abs(out - ref).max()):.1e}", f"{float((out.argmax(1) == d.y_test).mean()):.4f}",
                          f"{(work / path).stat().st_size / 1024:.0f} KiB", f"{secs:.1f} s", f"{s.median_ms:.3f}",
                          f"{s.ratio:.2f}× ±{s.ratio_spread:.2f}"])
    _ = r3

    # a real transformer: MiniLM (dynamo export) imported back to PyTorch and re-exported as .pt2
    from deepshrink.examples import minilm_dir

    mini_rows = []
    ml_onnx = work / "minilm.onnx"
    t0 = time.perf_counter()
    ds.convert(str(minilm_dir()), ml_onnx, data="sentences:32")
    t_exp = time.perf_counter() - t0
    t0 = time.perf_counter()
    rm = ds.convert(ml_onnx, work / "minilm.pt2", data="sentences:32")
    t_imp = time.perf_counter() - t0
    pm = rm.hops[0].parity
    mini_rows.append(["ONNX → PyTorch .pt2 (our importer; export + re-load + parity)", f"{t_imp:.1f} s",
                      f"{pm.max_abs:.1e}", f"{pm.outputs[0].cos_min:.7f}", pm.n_inputs,
                      f"{(work / 'minilm.pt2').stat().st_size / 2**20:.1f} MiB"])
    for label, out in (("ONNX → TFLite float32", "minilm.tflite"), ("ONNX → OpenVINO IR fp32", "minilm.xml")):
        t0 = time.perf_counter()
        rr = ds.convert(ml_onnx, work / out, data="sentences:32")
        pp = rr.hops[0].parity
        size = (work / out).stat().st_size + ((work / out).with_suffix(".bin").stat().st_size if out.endswith(".xml") else 0)
        mini_rows.append([label, f"{time.perf_counter() - t0:.1f} s", f"{pp.max_abs:.1e}", f"{pp.outputs[0].cos_min:.7f}",
                          pp.n_inputs, f"{size / 2**20:.1f} MiB"])
    from deepshrink.core.data import load_data

    mh = ds.load(ml_onnx)
    sent = load_data("sentences:8", mh).inputs
    feed1 = {k: v[:1] for k, v in sent.items()}
    msess = make_session(str(ml_onnx), threads=THREADS)
    mgm = onnx_to_torch(ml_onnx)
    mtfl = tfl_runner(work / "minilm.tflite", THREADS)
    mov = ov_runner(work / "minilm.xml", THREADS)
    names = mh.input_names

    def mini_torch() -> None:
        with torch.no_grad():
            mgm(*[torch.from_numpy(feed1[n]) for n in names])

    from deepshrink.examples import minilm as minilm_module

    morig = minilm_module().eval()

    def mini_orig() -> None:
        with torch.no_grad():
            morig(*[torch.from_numpy(feed1[n]) for n in names])

    mlat = measure_latency({"ORT fp32": lambda: run_onnx(msess, feed1), "PyTorch, imported GraphModule": mini_torch,
                            "PyTorch, original Hugging Face module": mini_orig,
                            "TFLite float32": lambda: mtfl(feed1), "OpenVINO fp32": lambda: mov(feed1)},
                           warmup=5, repeats=40, threads=THREADS)
    for k, st in mlat.items():
        lat_rows.append([f"MiniLM-L6, 1 sentence ({feed1[names[0]].shape[1]} tokens)", k, f"{st.median_ms:.2f}",
                         f"{st.spread:.2f}", f"{st.ratio:.2f}× ±{st.ratio_spread:.2f}"])
    mini_note = f"PyTorch → ONNX (dynamo) took {t_exp:.1f} s."

    body = "\n\n".join([
        machine_line(THREADS) + f". torch {torch.__version__}, tensorflow {tf.__version__}, "
        f"openvino {__import__('openvino').__version__}, onnxruntime {__import__('onnxruntime').__version__}.",
        "### Every route on the trained digits models\n\nParity is measured by `deepshrink convert` on the written "
        "file against the hop's source (fresh random inputs at batch 2 and 3, plus the calibration data for int8); "
        "float routes must reach max-abs < 1e-4. Accuracy is on the 360-image test split; Δ is against the source "
        "PyTorch model. Time includes conversion, parity runs and writing.",
        md_table(["model", "route", "parity max-abs", "judged by", "pass", "time", "size", "test acc", "Δ acc (pt)"],
                 route_rows),
        "### TFLite full-integer int8 (all ops in TFLITE_BUILTINS_INT8, float32 I/O)\n\nTarget: accuracy drop ≤ 1 pt.",
        md_table(["model", "fp32 acc", "int8 acc", "drop (pt)", "top-1 agreement vs fp32 (calib. data)"], int8_rows),
        "### Keras → ONNX → PyTorch (the seeds' TF → ONNX → PyTorch chain) on a Keras CNN trained on digits",
        md_table(["stage", "parity max-abs vs previous hop", "time", "test acc", "same top-1 as Keras"], chain_rows),
        "### A transformer: MiniLM-L6 (22.7 M parameters) ONNX → PyTorch / TFLite / OpenVINO\n\nParity of each "
        "written file (the `.pt2` is torch.export of the imported GraphModule with dynamic batch and sequence) "
        "against the ONNX model in ONNX Runtime, on 32 standard-library sentences plus random inputs at batch 2 "
        "and 3. " + mini_note,
        md_table(["route", "time", "max-abs", "cosine min", "samples", "size"], mini_rows),
        "### Keras → TFLite: TensorFlow's own converter (peer) vs deepshrink through ONNX, same Keras model\n\n"
        "max-abs is against the Keras model on the 360 test images; latency at batch 1, interleaved, ratio vs the peer.",
        md_table(["converter", "max-abs vs Keras", "test acc", "size", "conversion", "median ms", "latency vs peer"],
                 peer_rows),
        "### Runtimes at batch 1 (interleaved, 2 threads; ratio = median of per-round ratios vs ORT ± half the "
        "10–90% range)",
        md_table(["model", "runtime", "median ms", "spread", "latency vs ORT"], lat_rows),
    ])
    write_result("convert_hub", "Conversion hub: routes, parity, TFLite int8, Keras chain, runtimes", this_command(), body)


if __name__ == "__main__":
    main()
