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

``digits-onnx``: the same teacher given as an ONNX file, a half-width student derived from it and distilled, with
and without the BatchNorm put back while training, beside the same derivation from the PyTorch module; 5 seeds.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_distill.py [minilm|digits|digits-onnx] [--sentences N] [--epochs E]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line, md_table, this_command, write_result  # noqa: E402

THREADS = 1
SPLIT = 32  # held-out cosine is also reported for sentences of ≤ SPLIT and > SPLIT tokens (26% of them are longer)


def _encoder(tok: Any, max_length: int) -> Any:
    """``texts -> (input_ids, attention_mask)``: padded, truncated to ``max_length`` tokens."""

    def enc(texts: list[str]) -> tuple[Any, Any]:
        e = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return e["input_ids"], e["attention_mask"]

    return enc


def _by_length(cos: Any, lengths: Any) -> tuple[float, float]:
    """Mean of ``cos`` over the sentences of ≤ :data:`SPLIT` tokens and over the longer ones."""
    short = lengths <= SPLIT
    return float(cos[short].mean()), float(cos[~short].mean())


def _load_avg() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def held_out_table(models: dict, teacher_name: str, quantize_name: str | None, tok: Any, held_out: list[str],
                   enc: Any, train: tuple, log: dict) -> list[list[str]]:
    """Export every model to ONNX (+ ``quantize_name`` int8 dynamic), embed each held-out sentence alone in ORT,
    and measure cosine / Spearman against ``teacher_name`` and ORT latency (batch 1) against it; rows of the table."""
    import numpy as np
    from scipy.stats import spearmanr

    import deepshrink as ds
    from deepshrink.backends.onnx import make_session
    from deepshrink.convert.export import export_onnx
    from deepshrink.core.data import Dataset
    from deepshrink.evaluate.bench import bench
    from deepshrink.quantize import Int8DynamicConfig

    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        ex = {"input_ids": train[0][:2].numpy(), "attention_mask": train[1][:2].numpy()}
        for name, m in models.items():
            h = ds.load(m)
            h = h.with_model(m, inputs=[ds.TensorSpec(n, ("batch", "sequence"), "int64") for n in ex],
                             example_inputs=ex)
            path = Path(tmp) / f"{len(paths)}.onnx"
            export_onnx(h, None, path, exporter="torchscript", output_names=["sentence_embedding"])
            paths[name] = path
        if quantize_name is not None:
            q = ds.quantize(str(paths[quantize_name]), Int8DynamicConfig())
            qpath = Path(tmp) / "q.onnx"
            ds.save(q, qpath)
            paths[quantize_name + " + int8 dynamic"] = qpath
        # embeddings of each held-out sentence alone (no padding), ORT
        emb = {}
        lengths = np.array([len(ids) for ids in tok(held_out)["input_ids"]])  # untruncated, as embedded below
        for name, path in paths.items():
            sess = make_session(path, threads=THREADS)
            rows = []
            for s in held_out:
                e = tok([s], return_tensors="np")
                rows.append(sess.run(None, {"input_ids": e["input_ids"].astype(np.int64),
                                            "attention_mask": e["attention_mask"].astype(np.int64)})[0][0])
            emb[name] = np.stack(rows)
        ref = emb[teacher_name]
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
            en = e / np.linalg.norm(e, axis=1, keepdims=True)
            rho = spearmanr(sims_t, (en @ en.T)[iu]).statistic
            r = lat[name]
            short, long = _by_length(cos, lengths)
            rows.append([name, f"{path.stat().st_size / 2**20:.1f}", f"{r.params:,}" if r.params else "-",
                         f"{cos.mean():.4f}", f"{cos.min():.4f}", f"{short:.4f} / {long:.4f}", f"{rho:.4f}",
                         f"{r.median_ms:.2f}", f"{r.ratio:.2f}× ±{r.ratio_spread:.2f}"])
            log[name] = {"cos_mean": float(cos.mean()), "cos_worst": float(cos.min()), "cos_short": short,
                         "cos_long": long, "spearman": float(rho), "latency_ratio": r.ratio}
    return rows


def quick_figures(models: dict[str, Any], teacher: str, held_out: list[str], tok: Any, settings: str,
                  extra: Any) -> None:
    """``--quick``: each model's held-out cosine to ``teacher`` (mean, worst, ≤ / > :data:`SPLIT` tokens) and the
    Spearman correlation of the pairwise similarities, torch only, each sentence alone and untruncated (as the ORT
    table); one JSON line per model."""
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    enc = _encoder(tok, 512)
    lengths = np.array([len(ids) for ids in tok(held_out)["input_ids"]])
    with torch.no_grad():
        embs = {n: np.stack([m(*enc([x])).numpy()[0] for x in held_out]) for n, m in models.items()}
    ref = embs.pop(teacher)
    iu = np.triu_indices(len(held_out), 1)
    for name, e in embs.items():
        cos = (e * ref).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref, axis=1))
        en = e / np.linalg.norm(e, axis=1, keepdims=True)
        rho = spearmanr((ref @ ref.T)[iu], (en @ en.T)[iu]).statistic
        short, long = _by_length(cos, lengths)
        print(json.dumps({"quick": name, "settings": settings, "cos_mean": round(float(cos.mean()), 4),
                          "cos_worst": round(float(cos.min()), 4), f"cos_le{SPLIT}": round(short, 4),
                          f"cos_gt{SPLIT}": round(long, 4), "spearman": round(float(rho), 4),
                          **extra(name)}))


def minilm_section(n_train: int, epochs: int, lr: float, with_uniform: bool, *, text: str = "stdlib",
                   hidden_weight: float = 0.0, layer_map: str = "uniform", schedule: str = "cosine",
                   warmup: float = 0.0, max_length: int = 64, quick: bool = False, batch_size: int = 32,
                   freeze: tuple[str, ...] = (), dropout: float | None = None, group_by_length: bool = False) -> None:
    import torch
    from transformers import AutoTokenizer

    from deepshrink.distill import DistillConfig, distill_with_report
    from deepshrink.distill.derive import choose_layers, uniform_layers, with_layers
    from deepshrink.examples import minilm, minilm_dir
    from deepshrink.examples.text import stdlib_sentences, training_sentences

    torch.set_num_threads(THREADS)
    t_start = time.process_time()
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    wide = stdlib_sentences(wide=True)
    held_out = wide[1745:1945]
    if text == "stdlib":
        train_text = (wide[:1745] + wide[1945:])[:n_train]
    else:  # sentences:wide — the stdlib list without the narrow list's 1000+, then installed packages' docstrings
        train_text = training_sentences(n_train)
    assert not set(held_out) & set(train_text)

    enc = _encoder(tok, max_length)
    train = enc(train_text)
    teacher = minilm()
    targets = None
    if hidden_weight == 0:  # output loss only: the teacher's embeddings once, shared by the students
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
                            epochs=epochs, lr=lr, lr_schedule=schedule, warmup=warmup, batch_size=batch_size,
                            hidden_weight=hidden_weight, layer_map=layer_map if hidden_weight else None, freeze=freeze, dropout=dropout,
                            group_by_length=group_by_length)
        t0 = time.process_time()
        student, rep = distill_with_report(teacher, None, train, cfg, eval_data=enc(held_out[:64]),
                                           targets=targets, progress=False)
        log[f"{label} train"] = {"cpu_s": round(time.process_time() - t0, 1), "steps": rep.steps,
                                 "evals": rep.evals, "loss": [rep.first_loss, rep.last_loss],
                                 "layer_map": rep.layer_map}
        models[f"{label} {keep[label]}, distilled"] = student
    settings = (f"text {text} ({len(train_text)} sentences, max {max_length} tokens), {epochs} epoch(s), batch {batch_size}, lr {lr} "
                f"{schedule} warmup {warmup}, hidden_weight {hidden_weight} layer_map {layer_map} freeze {list(freeze)} "
                f"dropout {dropout} group_by_length {group_by_length}")
    if quick:  # torch only: the held-out figures of the distilled student, no ONNX / latency
        quick_figures({n: m for n, m in models.items() if n.startswith("teacher") or "distilled" in n},
                      "teacher (6 layers)", held_out, tok, settings, lambda name: log[f"{name.split(' [')[0]} train"])
        return
    best = f"importance {keep['importance']}, distilled"
    rows = held_out_table(models, "teacher (6 layers)", best, tok, held_out, enc, train, log)
    cpu = time.process_time() - t_start
    b = log[f"importance {keep['importance']}, distilled"]
    verdict = (f"Issue 15 targets for the distilled importance student: cosine mean ≥ 0.95 "
               f"({'met' if b['cos_mean'] >= 0.95 else 'not met'}: {b['cos_mean']:.4f}), Spearman ≥ 0.9 "
               f"({'met' if b['spearman'] >= 0.9 else 'not met'}: {b['spearman']:.4f}), latency ≤ 0.55× "
               f"({'met' if b['latency_ratio'] <= 0.55 else 'not met'}: {b['latency_ratio']:.2f}×).")
    n_short = sum(len(ids) <= SPLIT for ids in tok(held_out)["input_ids"])
    drop = ", ".join(f"{k}: {v:.3f}" for k, v in choices["importance"].drop_one.items())
    order = ", ".join(f"{i} ({e:.3f})" for i, e in choices["importance"].removal_order)
    body = f"""
Teacher all-MiniLM-L6-v2 (6 layers). Student: 3 layers with the teacher's weights; which 3: measured importance
(greedy: remove the layer whose absence changes the teacher's embedding least on 64 training sentences, relative
squared error; drop-one errors per layer {drop}; removed in order {order}) vs every other layer {keep['every other']}.
Distilled on {len(train_text)} unlabelled sentences ({'`stdlib_sentences(wide=True)` without the held-out ones' if text == 'stdlib' else '`sentences:wide`: `training_sentences()`, the wide stdlib list without the narrow list from 1000 on, then numpy/scipy/sklearn/torch/transformers docstrings'}),
{epochs} epoch(s), batch {batch_size}, AdamW lr {lr} {schedule} schedule (warmup {warmup:g} of the steps), loss 1 − cos(student, teacher
embedding){f' + {hidden_weight:g} × hidden-state MSE (real tokens only), layer map {layer_map}' if hidden_weight else ''}; max {max_length} tokens{f'; frozen {list(freeze)}' if freeze else ''}{f'; student dropout {dropout:g}' if dropout is not None else ''}{'; batches grouped by length (`group_by_length`: shuffled pools of 50 batches, each sorted by length)' if group_by_length else ''}. Held out: the 200 sentences `stdlib_sentences()[1745:1945]`, never trained on; each embedded alone in
ORT, untruncated; "cosine ≤{SPLIT} / >{SPLIT} tokens": the mean over the {n_short} held-out sentences of at most {SPLIT} tokens and over the
{len(held_out) - n_short} longer ones. Spearman: rank correlation of the 19,900 pairwise cosine similarities (teacher vs student). Latency: ORT,
batch 1 at the padded length of 32 held-out sentences, {THREADS} thread, 15 interleaved rounds, ratio to the teacher.

{md_table(["model", "ONNX MB", "params", "cosine mean", "cosine worst", f"cosine ≤{SPLIT} / >{SPLIT} tokens", "Spearman (pairs)", "ORT ms", "latency vs teacher"], rows)}

{verdict}

Training runs: {json.dumps({k: v for k, v in log.items() if k.endswith('train')})}

Benchmark CPU time {cpu:.0f} s (OMP_NUM_THREADS=1; load average {_load_avg()} — other jobs share the 2 cores).
{machine_line(THREADS)}
"""
    write_result("distill_minilm", "Distillation: MiniLM → 3 layers on unlabelled text (issue 15)", this_command(), body)


def importance_text(importance: str, scope: str, widths: list[list[int]], sentences: int = 0) -> str:
    """How the pruned student's heads and neurons were chosen, for the results text."""
    if importance == "activation":
        how = "activation importance (Wanda-style ‖x‖·‖W col‖)"
    else:
        how = ("Fisher importance (`importance='fisher'`: the diagonal Fisher information of a mask on each head and "
               "neuron, the model's own output standing in for labels, Kwon et al. 2022)")
    where = ("the same share in every layer" if scope == "uniform" else
             "ranked across layers (`scope='global'`), kept FFN neurons / heads per layer: "
             + ", ".join(f"{f}/{h}" for f, h in widths))
    on = f"the first {sentences} training sentences" if sentences else "the narrow list's first 64 sentences"
    return f"{how} on {on}, {where}"


def pruned_section(n_train: int, epochs: int, lr: float, *, hidden_weight: float = 1.0, schedule: str = "cosine",
                   warmup: float = 0.0, max_length: int = 64, batch_size: int = 32, freeze: tuple[str, ...] = (),
                   recon_sentences: int = 4096, student_dropout: float | None = None, quick: bool = False,
                   group_by_length: bool = False, importance: str = "activation", scope: str = "uniform",
                   importance_sentences: int = 0, attention_weight: float = 0.0, stages: int = 1,
                   mixed_precision: str = "no", save_student: str | None = None) -> None:
    """MiniLM structurally pruned (½ of FFN neurons, ¼ of heads, ``importance``/``scope``), its pruned layers
    re-fitted by least squares to the unpruned outputs (``reconstruct``; ``recon_sentences`` 0: not), then
    recovered by distillation from the unpruned teacher (embedding 1 − cos + hidden-state MSE, layer j ↔ j)."""
    import copy

    import torch
    from transformers import AutoTokenizer

    from deepshrink.distill import DistillConfig, distill_with_report
    from deepshrink.examples import minilm, minilm_dir
    from deepshrink.examples.text import stdlib_sentences, training_sentences
    from deepshrink.prune import StructuredPruneConfig
    from deepshrink.prune.structured import structured_prune

    torch.set_num_threads(THREADS)
    t_start = time.process_time()
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    held_out = stdlib_sentences(wide=True)[1745:1945]
    train_text = training_sentences(max(n_train, recon_sentences))
    assert not set(held_out) & set(train_text)

    enc = _encoder(tok, max_length)
    train = enc(train_text[:n_train])
    teacher = minilm()
    calib = enc(stdlib_sentences(64))  # importance as bench_prune.py: the narrow list's first 64 sentences
    act = [calib]
    if importance_sentences:  # importance from the first N training sentences instead, in batches of 64
        it = enc(train_text[:importance_sentences])
        act = [tuple(x[i:i + 64] for x in it) for i in range(0, importance_sentences, 64)]
    log: dict[str, object] = {}

    def pruned_copy(recon: bool) -> torch.nn.Module:
        model = copy.deepcopy(teacher)
        cfg = StructuredPruneConfig(ratio=0.5, heads_ratio=0.25, importance=importance, scope=scope, reconstruct=recon)
        rt = enc(train_text[:recon_sentences]) if recon else None
        t0 = time.process_time()
        graph = structured_prune(model, cfg, calib, act_batches=act, recon_mask=1,
                                 recon_batches=[tuple(x[i:i + 64] for x in rt) for i in range(0, recon_sentences, 64)]
                                 if rt is not None else None)
        if recon:
            log["reconstruct"] = {"cpu_s": round(time.process_time() - t0, 1), "sentences": recon_sentences,
                                  "tokens": graph.fits[0].tokens,
                                  "layer_error": [[f.module.removeprefix("encoder.encoder."), round(f.before, 4),
                                                   round(f.after, 4)] for f in graph.fits]}
        layers = model.encoder.encoder.layer
        assert sum(x.intermediate.dense.out_features for x in layers) == 768 * len(layers)
        assert sum(x.attention.self.num_attention_heads for x in layers) == 9 * len(layers)
        log["widths"] = [[x.intermediate.dense.out_features, x.attention.self.num_attention_heads] for x in layers]
        return model

    pruned = pruned_copy(False)
    models = {"teacher (unpruned)": teacher, "pruned: FFN 1536→768, heads 12→9" + (
        " (mean over layers)" if scope == "global" else ""): pruned}
    start, start_name = pruned, "pruned"
    if recon_sentences and stages == 1:  # (gradual: each stage re-fits its own pruning)
        start = models["pruned + reconstructed (no training)"] = pruned_copy(True)
        start_name = "pruned + reconstructed"
    cfg = DistillConfig(loss="embedding", metric="cosine", hidden_weight=hidden_weight, epochs=epochs, lr=lr,
                        attention_weight=attention_weight, lr_schedule=schedule, warmup=warmup, batch_size=batch_size, freeze=freeze,
                        dropout=student_dropout,  # the student's dropout while it trains (MiniLM's own: 0.1)
                        group_by_length=group_by_length, mixed_precision=mixed_precision)
    student = copy.deepcopy(start)
    t0 = time.process_time()
    if stages > 1:  # gradual: prune a share, re-fit, distil, prune the next share ... (the one-shot rows stay)
        student, rep = _gradual(teacher, train, cfg, stages, enc, train_text, calib, act, importance, scope,
                                recon_sentences, enc(held_out[:64]), log)
        start_name = f"gradual, {stages} stages"
    else:
        student, rep = distill_with_report(teacher, student, train, cfg, eval_data=enc(held_out[:64]), progress=False)
    best = f"{start_name} + distilled"
    models[best] = student
    if save_student:  # the recovered student's weights, readable by `--weights` on the MiniLM folder
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in student.state_dict().items()}, save_student)
    log["train"] = {"cpu_s": round(time.process_time() - t0, 1), "steps": rep.steps, "evals": rep.evals,
                    "loss": [rep.first_loss, rep.last_loss], "layer_map": rep.layer_map}
    settings = (f"{n_train} sentences, max {max_length} tokens, {epochs} epoch(s), batch {batch_size}, lr {lr} "
                f"{schedule} warmup {warmup}, hidden_weight {hidden_weight}, attention_weight {attention_weight}, "
                f"freeze {list(freeze)}, "
                f"reconstruct {recon_sentences}, student dropout {student_dropout}, group_by_length {group_by_length}"
                f"{', mixed precision ' + mixed_precision if mixed_precision != 'no' else ''}")
    if quick:  # torch only: the held-out figures, no ONNX / latency
        quick_figures(models, "teacher (unpruned)", held_out, tok, settings,
                      lambda name: {"train": log["train"]} if "distilled" in name else {})
        return
    rows = held_out_table(models, "teacher (unpruned)", None, tok, held_out, enc, train, log)
    b = log[best]
    verdict = (f"Issue 15 targets for the recovered student: cosine mean ≥ 0.98 "
               f"({'met' if b['cos_mean'] >= 0.98 else 'not met'}: {b['cos_mean']:.4f}), latency ≤ 0.65× "
               f"({'met' if b['latency_ratio'] <= 0.65 else 'not met'}: {b['latency_ratio']:.2f}×).")
    recon = ""
    if recon_sentences:
        recon = f"""
Reconstruction (`StructuredPruneConfig(reconstruct=True)`, `prune --reconstruct`): after the heads and neurons are
removed, each layer's attention output dense and FFN output dense are re-fitted in closed form (ridge least squares,
ridge 0.01, towards the pruned weights) so that, on the real tokens of the first {recon_sentences} training sentences,
the layer's residual sum (output + residual input, what its LayerNorm reads) equals the unpruned model's; layer by
layer, inputs from the already re-fitted pruned model (Kwon et al., NeurIPS 2022). No gradient step.
Relative squared error of each layer's residual sum on the calibration tokens, before → after the fit:
{", ".join(f"{m} {x:.3f}→{y:.3f}" for m, x, y in log["reconstruct"]["layer_error"])}
({log["reconstruct"]["tokens"]:,} tokens, {log["reconstruct"]["cpu_s"]} s CPU).
"""
    body = f"""
Teacher all-MiniLM-L6-v2. Student: the teacher structurally pruned ({"in every layer" if scope == "uniform" else "in all"}: half of the FFN neurons,
3 of 12 heads; {importance_text(importance, scope, log["widths"], importance_sentences)}),
{"re-fitted (below), " if recon_sentences else ""}then distilled from the unpruned teacher on {n_train} unlabelled
`sentences:wide` sentences, {epochs} epoch(s), batch {batch_size}, AdamW lr {lr} {schedule} schedule (warmup
{warmup:g}), loss 1 − cos(embedding) + {hidden_weight:g} × hidden-state MSE (real tokens, layer map {rep.layer_map}){f' + {attention_weight:g} × attention-map KL (each kept head against the teacher head it was, real query tokens)' if attention_weight else ''},
max {max_length} tokens, frozen: {", ".join(f"`{f}`" for f in freeze) or "nothing"}, student dropout
{"0.1 (MiniLM's own)" if student_dropout is None else f"{student_dropout:g} while training"}{"; batches grouped by length (`group_by_length`)" if group_by_length else ""}. Held out and measured as in the
3-layer table (200 sentences each alone in ORT; latency batch 1, {THREADS} thread, ratio to the teacher).
{recon}
{md_table(["model", "ONNX MB", "params", "cosine mean", "cosine worst", f"cosine ≤{SPLIT} / >{SPLIT} tokens", "Spearman (pairs)", "ORT ms", "latency vs teacher"], rows)}

{verdict}

Training: {json.dumps(log["train"])}

Benchmark CPU time {time.process_time() - t_start:.0f} s (OMP_NUM_THREADS=1; load average {_load_avg()}).
{machine_line(THREADS)}
"""
    write_result("distill_minilm_pruned", "Distillation: MiniLM pruned (½ FFN, ¼ heads) recovered from the unpruned "
                 "teacher (issue 15)", this_command(), body)


def _gradual(teacher: Any, train: tuple[Any, ...], cfg: Any, stages: int, enc: Any, train_text: list[str], calib: Any,
             act: list[Any], importance: str, scope: str, recon_sentences: int, eval_data: Any,
             log: dict[str, Any]) -> tuple[Any, Any]:
    """Gradual pruning with distillation (Zhu & Gupta 2017's schedule in steps; CoFi, Xia et al. 2022, prunes while
    distilling): ``stages`` equal steps from 1536 FFN neurons / 12 heads per layer (in all) to ½ / ¾, each pruned
    from the current student (re-fitted on ``recon_sentences`` when > 0) and then distilled from the unpruned
    teacher; the earlier stages share half of the training sentences, the last stage (the final widths) has the
    other half. The learning-rate schedule restarts at each stage."""
    import copy

    from deepshrink.distill import distill_with_report
    from deepshrink.prune import StructuredPruneConfig
    from deepshrink.prune.structured import structured_prune

    n = len(train[0])
    cuts = [0] + [round(n / 2 * (k + 1) / (stages - 1)) for k in range(stages - 1)] + [n]
    student = copy.deepcopy(teacher)
    layers = student.encoder.encoder.layer
    ffn0, heads0 = sum(x.intermediate.dense.out_features for x in layers), sum(
        x.attention.self.num_attention_heads for x in layers)
    rt = enc(train_text[:recon_sentences]) if recon_sentences else None
    recon = [tuple(x[i:i + 64] for x in rt) for i in range(0, recon_sentences, 64)] if rt is not None else None
    log["stages"] = []
    rep = None
    for k in range(1, stages + 1):
        layers = student.encoder.encoder.layer  # distillation returns a new student
        ffn_now = sum(x.intermediate.dense.out_features for x in layers)
        heads_now = sum(x.attention.self.num_attention_heads for x in layers)
        ffn_to, heads_to = ffn0 - ffn0 // 2 * k // stages, heads0 - heads0 // 4 * k // stages
        pcfg = StructuredPruneConfig(ratio=1 - ffn_to / ffn_now, heads_ratio=1 - heads_to / heads_now,
                                     importance=importance, scope=scope, reconstruct=bool(recon_sentences))
        structured_prune(student, pcfg, calib, act_batches=act, recon_mask=1, recon_batches=recon)
        layers = student.encoder.encoder.layer
        widths = [[x.intermediate.dense.out_features, x.attention.self.num_attention_heads] for x in layers]
        part = tuple(x[cuts[k - 1]:cuts[k]] for x in train)
        student, rep = distill_with_report(teacher, student, part, cfg, eval_data=eval_data, progress=False)
        log["stages"].append({"widths": widths, "sentences": cuts[k] - cuts[k - 1], "evals": rep.evals})
        print(json.dumps({"stage": k, **log["stages"][-1]}), flush=True)
    ffn, heads = sum(w[0] for w in log["stages"][-1]["widths"]), sum(w[1] for w in log["stages"][-1]["widths"])
    assert (ffn, heads) == (ffn0 // 2, heads0 - heads0 // 4), (ffn, heads)
    return student, rep


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


def digits_onnx_section(seeds: int, epochs: int) -> None:
    """The digits CNN given as an ONNX file (BatchNorm folded by the exporter) teaches a student derived from it
    (``derive="width=0.5"``), with and without the BatchNorm put back while training; beside it the same derivation
    from the PyTorch module (the peer in the same run: what a user with the source would get)."""
    import numpy as np
    import torch

    import deepshrink as ds
    import deepshrink.train.batchnorm as bn
    from deepshrink.distill import DistillConfig, distill_with_report
    from deepshrink.examples import digits_data, trained_digits_cnn
    from deepshrink.train import accuracy_of

    torch.set_num_threads(THREADS)
    t_start = time.process_time()
    d = digits_data()
    arms = ["PyTorch module (its BatchNorm)", "ONNX file, BatchNorm put back", "ONNX file, without"]
    acc: dict[str, list[float]] = {a: [] for a in arms}
    inserted = 0
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            module = trained_digits_cnn(seed).eval()
            path = Path(tmp) / f"cnn{seed}.onnx"
            ds.convert(ds.load(module, input_shapes=["x:1x1x8x8"]), path)
            for arm in arms:
                teacher = module if arm.startswith("PyTorch") else str(path)
                cfg = DistillConfig(derive="width=0.5", epochs=epochs, seed=seed)
                saved = bn.BATCHNORM_MIN_STEPS
                bn.BATCHNORM_MIN_STEPS = 10 ** 9 if arm.endswith("without") else saved
                try:
                    out, rep = distill_with_report(teacher, None, (d.x_train, d.y_train), cfg, progress=False,
                                                   deterministic=True)
                finally:
                    bn.BATCHNORM_MIN_STEPS = saved
                inserted = max(inserted, rep.batchnorm_inserted)
                model = out.model if hasattr(out, "model") else out
                acc[arm].append(accuracy_of(model, d.x_test, d.y_test))
            print(seed, {a: v[-1] for a, v in acc.items()}, flush=True)
    rows = [[a, " ".join(f"{100 * x:.2f}" for x in v), f"{100 * np.mean(v):.2f}%"] for a, v in acc.items()]
    steps = epochs * -(-len(d.x_train) // DistillConfig().batch_size)
    body = f"""
Teacher: the digits CNN (trained per seed), as a PyTorch module and as the ONNX file `deepshrink convert` writes
(dynamo exporter: its BatchNorm folded into the convolutions). Student: derived from the teacher at half width
(`derive="width=0.5"`: structured pruning of the teacher, through its PyTorch import for the ONNX file), distilled
{epochs} epochs ({steps} steps) on the 1,078 training digits with the labels (KD, the default settings). "BatchNorm put
back": {inserted} BatchNorms after the import's convolutions while training, set from the data so the student
computes what it did, folded back after (`deepshrink.train.batchnorm`; on by default from
{bn.BATCHNORM_MIN_STEPS} steps); "without": the threshold raised so none is put back. Test accuracy on the 360 test
digits, {seeds} seeds.

{md_table(["teacher given as", "per seed (%)", "mean"], rows)}

Benchmark CPU time {time.process_time() - t_start:.0f} s (OMP_NUM_THREADS=1; load average {_load_avg()}).
{machine_line(THREADS)}
"""
    write_result("distill_digits_onnx", "Distillation from an ONNX file: digits CNN → half width (issue 15)",
                 this_command(), body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("section", nargs="?", default="all", choices=["all", "minilm", "minilm-pruned", "digits", "digits-onnx"])
    ap.add_argument("--sentences", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--no-uniform", action="store_true", help="skip distilling the every-other student")
    ap.add_argument("--text", choices=["stdlib", "wide"], default="stdlib", help="training text: the wide stdlib list, "
                    "or sentences:wide (stdlib + installed packages' docstrings)")
    ap.add_argument("--hidden-weight", type=float, default=0.0)
    ap.add_argument("--attention-weight", type=float, default=0.0,
                    help="minilm-pruned: weight of the attention-map KL (each kept head against the head it was)")
    ap.add_argument("--stages", type=int, default=1,
                    help="minilm-pruned: prune in this many steps, distilling after each (gradual; 1: one shot)")
    ap.add_argument("--layer-map", default="uniform", choices=["uniform", "kept"])
    ap.add_argument("--schedule", default="cosine", choices=["constant", "cosine", "linear"])
    ap.add_argument("--warmup", type=float, default=0.0)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--freeze", action="append", default=[], help="glob over the student's parameter names")
    ap.add_argument("--quick", action="store_true", help="torch-only held-out figures of the distilled student")
    ap.add_argument("--reconstruct", type=int, default=4096, metavar="N",
                    help="minilm-pruned: re-fit the pruned layers on the first N training sentences (0: not)")
    ap.add_argument("--student-dropout", type=float, default=None,
                    help="minilm-pruned: the student's dropout probability while it trains (default: the model's)")
    ap.add_argument("--group-by-length", action="store_true",
                    help="minilm, minilm-pruned: batch training sentences of similar length together (DistillConfig.group_by_length)")
    ap.add_argument("--importance", default="activation", choices=["activation", "fisher"],
                    help="minilm-pruned: which heads and neurons go (StructuredPruneConfig.importance)")
    ap.add_argument("--scope", default="uniform", choices=["uniform", "global"],
                    help="minilm-pruned: the same share in every layer, or ranked across layers")
    ap.add_argument("--importance-sentences", type=int, default=0, metavar="N",
                    help="minilm-pruned: measure importance on the first N training sentences (0: the narrow list's first 64)")
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16"],
                    help="minilm-pruned: the distillation's forward passes in bfloat16 (DistillConfig.mixed_precision)")
    ap.add_argument("--save-student", metavar="PATH", help="minilm-pruned: write the distilled student's state dict "
                    "(.safetensors) there")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--digits-epochs", type=int, default=30)
    ap.add_argument("--digits-onnx-epochs", type=int, default=10)
    a = ap.parse_args()
    if a.section in ("all", "digits"):
        digits_section(a.seeds, a.digits_epochs)
    if a.section in ("all", "digits-onnx"):
        digits_onnx_section(a.seeds, a.digits_onnx_epochs)
    if a.section == "minilm-pruned":
        pruned_section(a.sentences, a.epochs, a.lr, hidden_weight=a.hidden_weight or 1.0, schedule=a.schedule,
                       warmup=a.warmup, max_length=a.max_length, batch_size=a.batch_size, freeze=tuple(a.freeze),
                       recon_sentences=a.reconstruct, student_dropout=a.student_dropout, quick=a.quick,
                       group_by_length=a.group_by_length, importance=a.importance, scope=a.scope,
                       importance_sentences=a.importance_sentences, attention_weight=a.attention_weight,
                       stages=a.stages, mixed_precision=a.mixed_precision, save_student=a.save_student)
    if a.section in ("all", "minilm"):
        minilm_section(a.sentences, a.epochs, a.lr, not a.no_uniform, text=a.text, hidden_weight=a.hidden_weight,
                       layer_map=a.layer_map, schedule=a.schedule, warmup=a.warmup, max_length=a.max_length,
                       quick=a.quick, batch_size=a.batch_size, freeze=tuple(a.freeze), dropout=a.student_dropout,
                       group_by_length=a.group_by_length)


if __name__ == "__main__":
    main()
