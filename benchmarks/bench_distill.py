"""Knowledge distillation (issue 15): MiniLM → 3 layers on unlabelled text, and the digits CNN → half width.

``minilm``: all-MiniLM-L6-v2 → a 3-layer student by layer dropping (weights copied), distilled on
unlabelled standard-library sentences (``stdlib_sentences(wide=True)`` minus the 200 held out for
evaluation: the narrow list's sentences 1745–1944). Rows: the chosen layers (measured importance) and
every other layer, each copied only and distilled; then the distilled student int8-quantized (dynamic).
Cosine to the teacher's embedding per held-out sentence (each alone, ORT), Spearman correlation of the
19,900 pairwise cosine similarities of those 200 sentences (teacher vs student), ORT latency at batch 1
against the teacher in interleaved rounds.

``digits``: the trained digits CNN (width 32) teaches a fresh width-16 CNN: KD (T=4, alpha=0.9) vs the same
student on labels only (alpha=0), same init and data order per seed, 5 seeds each; then the seed-0 KD
student int8-static quantized (the distil-then-quantize row).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_distill.py [minilm|digits] [--sentences N] [--epochs E]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line, md_table, this_command, write_result  # noqa: E402

THREADS = 1


def _load_avg() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def minilm_section(n_train: int, epochs: int, lr: float, with_uniform: bool) -> None:
    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from transformers import AutoTokenizer

    import deepshrink as ds
    from deepshrink.backends.onnx import make_session
    from deepshrink.core.data import Dataset
    from deepshrink.distill import DistillConfig, distill_with_report
    from deepshrink.distill.derive import choose_layers, uniform_layers, with_layers
    from deepshrink.evaluate.bench import bench
    from deepshrink.examples import minilm, minilm_dir
    from deepshrink.examples.text import stdlib_sentences
    from deepshrink.quantize import Int8DynamicConfig

    torch.set_num_threads(THREADS)
    t_start = time.process_time()
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    wide = stdlib_sentences(wide=True)
    held_out = wide[1745:1945]
    train_text = (wide[:1745] + wide[1945:])[:n_train]
    assert not set(held_out) & set(train_text)

    def enc(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        e = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        return e["input_ids"], e["attention_mask"]

    train = enc(train_text)
    teacher = minilm()
    with torch.no_grad():
        targets = torch.cat([teacher(train[0][i:i + 64], train[1][i:i + 64]) for i in range(0, len(train_text), 64)])
    calib = tuple(x[:64] for x in train)
    # the same choice distill makes inside (first 64 training sentences, batches of 32), shown in the table
    choices = {"importance": choose_layers(teacher, 3, [tuple(x[i:i + 32] for x in calib) for i in (0, 32)])}
    keep = {"importance": choices["importance"].keep, "every other": uniform_layers(6, 3)}
    models: dict[str, torch.nn.Module] = {"teacher (6 layers)": teacher}
    for sel, layers in keep.items():
        models[f"{sel} {layers}, copied"] = with_layers(teacher, layers)
    log: dict[str, object] = {"keep": keep, "drop_one": choices["importance"].drop_one}
    runs = [("importance", "importance")] + ([("every other", "uniform")] if with_uniform else [])
    for label, selection in runs:
        cfg = DistillConfig(derive="layers=3", layer_selection=selection, loss="embedding", metric="cosine",
                            epochs=epochs, lr=lr, lr_schedule="cosine", batch_size=32)
        t0 = time.process_time()
        student, rep = distill_with_report(teacher, None, train, cfg, eval_data=enc(held_out[:64]),
                                           targets=targets, progress=False)
        log[f"{label} train"] = {"cpu_s": round(time.process_time() - t0, 1), "steps": rep.steps,
                                 "evals": rep.evals, "loss": [rep.first_loss, rep.last_loss]}
        models[f"{label} {keep[label]}, distilled"] = student
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        ex = {"input_ids": train[0][:2].numpy(), "attention_mask": train[1][:2].numpy()}
        for name, m in models.items():
            h = ds.load(m)
            h = h.with_model(m, inputs=[ds.TensorSpec(n, ("batch", "sequence"), "int64") for n in ex],
                             example_inputs=ex)
            path = Path(tmp) / f"{len(paths)}.onnx"
            from deepshrink.convert.export import export_onnx

            export_onnx(h, None, path, exporter="torchscript", output_names=["sentence_embedding"])
            paths[name] = path
        best = f"importance {keep['importance']}, distilled"
        q = ds.quantize(str(paths[best]), Int8DynamicConfig())
        qpath = Path(tmp) / "q.onnx"
        ds.save(q, qpath)
        paths[best + " + int8 dynamic"] = qpath
        # embeddings of each held-out sentence alone (no padding), ORT
        emb = {}
        for name, path in paths.items():
            sess = make_session(path, threads=THREADS)
            rows = []
            for s in held_out:
                e = tok([s], return_tensors="np")
                rows.append(sess.run(None, {"input_ids": e["input_ids"].astype(np.int64),
                                            "attention_mask": e["attention_mask"].astype(np.int64)})[0][0])
            emb[name] = np.stack(rows)
        ref = emb["teacher (6 layers)"]
        iu = np.triu_indices(len(held_out), 1)
        sims_t = (ref @ ref.T)[iu]
        timing_data = Dataset({k: v.numpy() for k, v in zip(("input_ids", "attention_mask"), enc(held_out[:32]),
                                                             strict=True)}, None, "held-out sentences")
        table = bench([str(p) for p in paths.values()], data=timing_data, threads=THREADS, repeats=15, samples=32,
                      names=list(paths))
        lat = {r.name: r for r in table.rows}
        rows = []
        for name, path in paths.items():
            e = emb[name]
            cos = (e * ref).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref, axis=1))
            rho = spearmanr(sims_t, ((e / np.linalg.norm(e, axis=1, keepdims=True)) @
                                     (e / np.linalg.norm(e, axis=1, keepdims=True)).T)[iu]).statistic
            r = lat[name]
            rows.append([name, f"{path.stat().st_size / 2**20:.1f}", f"{r.params:,}" if r.params else "-",
                         f"{cos.mean():.4f}", f"{cos.min():.4f}", f"{rho:.4f}", f"{r.median_ms:.2f}",
                         f"{r.ratio:.2f}× ±{r.ratio_spread:.2f}"])
            log[name] = {"cos_mean": float(cos.mean()), "spearman": float(rho), "latency_ratio": r.ratio}
    cpu = time.process_time() - t_start
    b = log[f"importance {keep['importance']}, distilled"]
    verdict = (f"Issue 15 targets for the distilled importance student: cosine mean ≥ 0.95 "
               f"({'met' if b['cos_mean'] >= 0.95 else 'not met'}: {b['cos_mean']:.4f}), Spearman ≥ 0.9 "
               f"({'met' if b['spearman'] >= 0.9 else 'not met'}: {b['spearman']:.4f}), latency ≤ 0.55× "
               f"({'met' if b['latency_ratio'] <= 0.55 else 'not met'}: {b['latency_ratio']:.2f}×).")
    drop = ", ".join(f"{k}: {v:.3f}" for k, v in choices["importance"].drop_one.items())
    order = ", ".join(f"{i} ({e:.3f})" for i, e in choices["importance"].removal_order)
    body = f"""
Teacher all-MiniLM-L6-v2 (6 layers). Student: 3 layers with the teacher's weights; which 3: measured importance
(greedy: remove the layer whose absence changes the teacher's embedding least on 64 training sentences, relative
squared error; drop-one errors per layer {drop}; removed in order {order}) vs every other layer {keep['every other']}.
Distilled on {len(train_text)} unlabelled standard-library sentences (`stdlib_sentences(wide=True)` without the
held-out ones), {epochs} epoch(s), batch 32, AdamW lr {lr} cosine schedule, loss 1 − cos(student, teacher
embedding). Held out: the 200 sentences `stdlib_sentences()[1745:1945]`, never trained on; each embedded alone in
ORT. Spearman: rank correlation of the 19,900 pairwise cosine similarities (teacher vs student). Latency: ORT,
batch 1 at the padded length of 32 held-out sentences, {THREADS} thread, 15 interleaved rounds, ratio to the teacher.

{md_table(["model", "ONNX MB", "params", "cosine mean", "cosine worst", "Spearman (pairs)", "ORT ms", "latency vs teacher"], rows)}

{verdict}

Training runs: {json.dumps({k: v for k, v in log.items() if k.endswith('train')})}

Benchmark CPU time {cpu:.0f} s (OMP_NUM_THREADS=1; load average {_load_avg()} — other jobs share the 2 cores).
{machine_line(THREADS)}
"""
    write_result("distill_minilm", "Distillation: MiniLM → 3 layers on unlabelled text (issue 15)", this_command(), body)


def digits_section(seeds: int, epochs: int) -> None:
    import numpy as np
    import torch

    import deepshrink as ds
    from deepshrink.distill import DistillConfig, distill_with_report
    from deepshrink.evaluate.bench import bench
    from deepshrink.examples import DigitsCNN, digits_data, trained_digits_cnn
    from deepshrink.quantize import Int8StaticConfig
    from deepshrink.train import accuracy_of

    torch.set_num_threads(THREADS)
    t_start = time.process_time()
    d = digits_data()
    teacher = trained_digits_cnn(0)
    acc = {"kd": [], "labels": []}
    students = {}
    for seed in range(seeds):
        for mode, alpha in (("kd", 0.9), ("labels", 0.0)):
            torch.manual_seed(seed)
            student = DigitsCNN(width=16)
            cfg = DistillConfig(epochs=epochs, temperature=4.0, alpha=alpha, lr=2e-3, batch_size=64, seed=seed,
                                lr_schedule="cosine")
            out, _ = distill_with_report(teacher, student, (d.x_train, d.y_train), cfg, progress=False,
                                         deterministic=True)
            acc[mode].append(accuracy_of(out, d.x_test, d.y_test))
            students[(mode, seed)] = out
    with tempfile.TemporaryDirectory() as tmp:
        t_path, s_path, q_path = (Path(tmp) / n for n in ("teacher.onnx", "student.onnx", "student.int8.onnx"))
        ex = {"x": d.x_val[:2]}
        ds.save(ds.load(teacher).with_model(teacher, inputs=[ds.TensorSpec("x", ("batch", 1, 8, 8))], example_inputs=ex), t_path)
        s = students[("kd", 0)]
        ds.save(ds.load(s).with_model(s, inputs=[ds.TensorSpec("x", ("batch", 1, 8, 8))], example_inputs=ex), s_path)
        q = ds.quantize(str(s_path), Int8StaticConfig(), data=ds.load_data("digits:train", ds.load(str(s_path))))
        ds.save(q, q_path)
        table = bench([str(t_path), str(s_path), str(q_path)], data="digits:test", threads=THREADS, repeats=30,
                      samples=360, names=["teacher CNN width 32", "student width 16, KD (seed 0)",
                                          "student width 16, KD + int8 static"])
    rows = [[r.name, f"{r.size_bytes / 1024:.1f}", f"{r.params:,}" if r.params else "-", f"{100 * r.accuracy:.2f}%",
             f"{r.median_ms:.3f}", f"{r.ratio:.2f}× ±{r.ratio_spread:.2f}"] for r in table.rows]
    fmt = lambda v: " ".join(f"{100 * a:.2f}" for a in v)  # noqa: E731
    diff = [k - lab for k, lab in zip(acc["kd"], acc["labels"], strict=True)]
    body = f"""
Teacher: the cached digits CNN (width 32, {sum(p.numel() for p in teacher.parameters()):,} parameters).
Student: a fresh CNN of half the width (16; {sum(p.numel() for p in students[('kd', 0)].parameters()):,}
parameters), {epochs} epochs on the 1,078 training digits, AdamW lr 2e-3 with a cosine schedule, batch 64, same
init and data order per seed in both arms. KD: T = 4, alpha = 0.9 (0.1 on the labels); labels only: alpha = 0. Accuracy on the 360 test
digits.

| arm | seeds | mean test accuracy | per seed (%) |
|---|---|---|---|
| KD (teacher soft targets + labels) | {seeds} | {100 * np.mean(acc['kd']):.2f}% | {fmt(acc['kd'])} |
| labels only | {seeds} | {100 * np.mean(acc['labels']):.2f}% | {fmt(acc['labels'])} |

KD minus labels, paired by seed (points): {' '.join(f'{100 * x:+.2f}' for x in diff)}; mean {100 * np.mean(diff):+.2f}.

Distil, then quantize (int8 static QDQ, calibrated on the training digits), measured on the written files (ORT,
batch 1, {THREADS} thread, 30 interleaved rounds):

{md_table(["model", "ONNX KB", "params", "test accuracy", "ORT ms", "latency vs teacher"], rows)}

Benchmark CPU time {time.process_time() - t_start:.0f} s (OMP_NUM_THREADS=1; load average {_load_avg()}).
{machine_line(THREADS)}
"""
    write_result("distill_digits", "Distillation: digits CNN → half width, KD vs labels only (issue 15)",
                 this_command(), body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("section", nargs="?", default="all", choices=["all", "minilm", "digits"])
    ap.add_argument("--sentences", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--no-uniform", action="store_true", help="skip distilling the every-other student")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--digits-epochs", type=int, default=30)
    a = ap.parse_args()
    if a.section in ("all", "digits"):
        digits_section(a.seeds, a.digits_epochs)
    if a.section in ("all", "minilm"):
        minilm_section(a.sentences, a.epochs, a.lr, not a.no_uniform)


if __name__ == "__main__":
    main()
