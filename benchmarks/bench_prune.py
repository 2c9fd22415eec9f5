"""Pruning benchmarks, deepshrink vs Torch-Pruning 1.6 measured in the same run.

Sections (each writes ``benchmarks/results/prune_<section>.md``; no argument runs all):

- ``resnet``: a 9-conv ResNet-like CNN at 3×224×224, batch 8, 50% channels — parameters,
  MACs and ONNX Runtime latency of fp32 / deepshrink / Torch-Pruning, timed interleaved;
  plus dependency-graph build time and group count against Torch-Pruning's.
- ``wide``: a wider CNN at 3×64×64, batch 32 (latency only).
- ``digits-cnn``: digits CNN (residual block + BatchNorm), 50% channels, the same
  fine-tune for both tools, 5 seeds.
- ``onnx-cnn``: the digits CNN as an ONNX file (BatchNorm folded by the exporter), pruned through the
  PyTorch import — against the module with and without its BatchNorm, and Torch-Pruning on the import; 5 seeds.
- ``mlp``: digits MLP 64-300-100-10 at 90% sparsity: naive one-shot + 2 epochs vs gradual
  (Zhu & Gupta) + fine-tune, 5 seeds.
- ``minilm``: all-MiniLM-L6-v2 with 50% of FFN neurons and a quarter of heads removed: ORT
  latency ratio and sentence-embedding cosine before any fine-tune.

Run: ``python benchmarks/bench_prune.py [resnet|wide|digits-cnn|onnx-cnn|mlp|minilm]``.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line, md_table, write_result  # noqa: E402

from deepshrink.prune import StructuredPruneConfig, prune  # noqa: E402

THREADS = 2
warnings.filterwarnings("ignore")


class ResNetLike(nn.Module):
    """Stem + three stages (a stride-2 conv, then a two-conv residual block): 9 convs."""

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 256), stem_stride: int = 2, classes: int = 10) -> None:
        super().__init__()
        w1, w2, w3 = widths

        def cbr(i: int, o: int, s: int = 1, k: int = 3) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU())

        pool = nn.MaxPool2d(3, 2, 1) if stem_stride > 1 else nn.Identity()
        self.stem = nn.Sequential(nn.Conv2d(3, w1, 7 if stem_stride > 1 else 3, stem_stride, 3 if stem_stride > 1 else 1,
                                            bias=False), nn.BatchNorm2d(w1), nn.ReLU(), pool)
        self.b1a, self.b1b = cbr(w1, w1), nn.Sequential(nn.Conv2d(w1, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1))
        self.down2 = cbr(w1, w2, 2)
        self.b2a, self.b2b = cbr(w2, w2), nn.Sequential(nn.Conv2d(w2, w2, 3, 1, 1, bias=False), nn.BatchNorm2d(w2))
        self.down3 = cbr(w2, w3, 2)
        self.b3a, self.b3b = cbr(w3, w3), nn.Sequential(nn.Conv2d(w3, w3, 3, 1, 1, bias=False), nn.BatchNorm2d(w3))
        self.fc = nn.Linear(w3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.b1b(self.b1a(x)))
        x = self.down2(x)
        x = torch.relu(x + self.b2b(self.b2a(x)))
        x = self.down3(x)
        x = torch.relu(x + self.b3b(self.b3a(x)))
        return self.fc(x.mean((2, 3)))


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics so magnitudes differ between channels."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.2)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def tp_prune(model: nn.Module, example: torch.Tensor, ratio: float, ignored: list[nn.Module]) -> nn.Module:
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=ignored)
    pruner.step()
    return model


def ds_prune(model: nn.Module, example: torch.Tensor, ratio: float) -> nn.Module:
    return prune(model, StructuredPruneConfig(ratio=ratio), example_inputs=(example,)).model.model


def params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def macs(m: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as c, torch.no_grad():
        m(x)
    return c.get_total_flops() // 2


def ort_latency(models: dict[str, nn.Module], feed: dict[str, np.ndarray], repeats: int) -> dict[str, object]:
    """Export each model (TorchScript exporter) and time the ORT sessions interleaved."""
    from deepshrink.backends.onnx import make_session
    from deepshrink.evaluate import measure_latency

    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, m in models.items():
            path = Path(tmp) / f"{name}.onnx"
            args = tuple(torch.from_numpy(v) for v in feed.values())
            torch.onnx.export(m, args, str(path), dynamo=False, input_names=list(feed), output_names=["out"],
                              dynamic_axes={k: {0: "batch"} for k in feed})
            sessions[name] = make_session(str(path), threads=THREADS)
    outs = {n: s.run(None, feed)[0] for n, s in sessions.items()}
    stats = measure_latency({n: (lambda s=s: s.run(None, feed)) for n, s in sessions.items()},
                            warmup=3, repeats=repeats, threads=THREADS)
    return {"stats": stats, "outs": outs}


def _ratio(st: object) -> str:
    return f"{st.ratio:.2f}× ±{st.ratio_spread:.2f}"  # type: ignore[attr-defined]


def conv_section(name: str, title: str, widths: tuple[int, int, int], stem_stride: int, shape: tuple[int, ...],
                 repeats: int, graph_timing: bool) -> None:
    torch.manual_seed(0)
    base = _randomise_bn(ResNetLike(widths, stem_stride))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    ex = x[:1]
    t0 = time.perf_counter()
    ds = ds_prune(copy.deepcopy(base), ex, 0.5)
    t_ds = time.perf_counter() - t0
    tpm = copy.deepcopy(base)
    t0 = time.perf_counter()
    tp_prune(tpm, ex, 0.5, [tpm.fc])
    t_tp = time.perf_counter() - t0
    models = {"fp32": base, "deepshrink": ds, "torch-pruning": tpm}
    lat = ort_latency(models, {"x": x.numpy()}, repeats)
    st = lat["stats"]
    rows = []
    for n, m in models.items():
        rows.append([n, f"{params(m):,}", f"{params(m) / params(base):.3f}×", f"{macs(m, x[:1]):,}",
                     f"{macs(m, x[:1]) / macs(base, x[:1]):.3f}×", f"{st[n].median_ms:.1f}", _ratio(st[n]),
                     "-" if n == "fp32" else f"{t_ds if n == 'deepshrink' else t_tp:.2f} s"])
    same = [(a.shape == b.shape) for a, b in zip(ds.state_dict().values(), tpm.state_dict().values(), strict=False)]
    agree = float(np.abs(lat["outs"]["deepshrink"] - lat["outs"]["torch-pruning"]).max())
    body = (f"{title}. 50% of channels of every prunable group (L2 magnitude), classifier outputs kept. "
            f"ORT latency at batch {shape[0]}, {repeats} interleaved rounds, {THREADS} threads, spinning off.\n\n"
            + md_table(["model", "params", "params ratio", "MACs (batch 1)", "MACs ratio", "ORT median ms",
                        "ORT latency ratio", "prune time"], rows)
            + f"\n\nBoth pruned networks have identical layer shapes: {all(same)}; max-abs difference of their "
              f"ORT outputs {agree:.2g} (both keep the same channels under L2 group importance).\n")
    if graph_timing:
        import torch_pruning as tp

        from deepshrink.prune.structured import build_graph

        reps = 5
        t0 = time.perf_counter()
        for _ in range(reps):
            g = build_graph(base, (ex,))
        t_g = (time.perf_counter() - t0) / reps
        t0 = time.perf_counter()
        for _ in range(reps):
            dg = tp.DependencyGraph().build_dependency(base, example_inputs=ex)
            groups = list(dg.get_all_groups(ignored_layers=[base.fc], root_module_types=[nn.Conv2d, nn.Linear]))
        t_t = (time.perf_counter() - t0) / reps
        body += (f"\nDependency analysis (mean of {reps}): deepshrink `build_graph` {t_g * 1e3:.0f} ms, "
                 f"{len(g.prunable())} prunable groups; Torch-Pruning `DependencyGraph.build_dependency` + "
                 f"`get_all_groups` {t_t * 1e3:.0f} ms, {len(groups)} groups.\n")
    body += "\n" + machine_line(THREADS)
    write_result(f"prune_{name}", title, f"python benchmarks/bench_prune.py {name}", body)


def digits_cnn_section(seeds: int = 5, epochs: int = 10, lr: float = 2e-3) -> None:
    from deepshrink.examples import digits_data, trained_digits_cnn
    from deepshrink.train import Trainer, accuracy_of

    torch.set_num_threads(1)  # accuracy only: small models train faster on one thread of a shared machine
    d = digits_data()
    ex = torch.from_numpy(d.x_train[:2])
    rows, acc = [], {"fp32": [], "deepshrink": [], "torch-pruning": [], "deepshrink (no fine-tune)": [],
                     "torch-pruning (no fine-tune)": []}
    for seed in range(seeds):
        base = trained_digits_cnn(seed)
        acc["fp32"].append(accuracy_of(base, d.x_test, d.y_test))
        ds = ds_prune(copy.deepcopy(base), ex, 0.5)
        acc["deepshrink (no fine-tune)"].append(accuracy_of(ds, d.x_test, d.y_test))
        tpm = copy.deepcopy(base)
        tp_prune(tpm, ex, 0.5, [tpm.fc])
        acc["torch-pruning (no fine-tune)"].append(accuracy_of(tpm, d.x_test, d.y_test))
        for name, m in (("deepshrink", ds), ("torch-pruning", tpm)):
            Trainer(m, epochs=epochs, lr=lr, batch_size=64, seed=seed, progress=False).fit((d.x_train, d.y_train))
            acc[name].append(accuracy_of(m, d.x_test, d.y_test))
        ratio = params(ds) / params(base)
        print(seed, {k: v[-1] for k, v in acc.items()}, flush=True)
    for name, v in acc.items():
        rows.append([name, " ".join(f"{100 * a:.2f}" for a in v), f"{100 * np.mean(v):.2f}",
                     "-" if name == "fp32" else f"{100 * (np.mean(v) - np.mean(acc['fp32'])):+.2f}"])
    body = (f"Digits CNN (stem, residual block with BatchNorm, strided conv; trained per seed), 50% of channels "
            f"(L2, every group), parameters {ratio:.3f}× of fp32; both tools' pruned models fine-tuned with the same "
            f"deepshrink Trainer ({epochs} epochs, Adam lr {lr}, batch 64, same seed). Test accuracy (360 images), "
            f"{seeds} seeds.\n\n" + md_table(["model", "accuracy per seed (%)", "mean %", "vs fp32 (pt)"], rows)
            + "\n\n" + machine_line(THREADS))
    write_result("prune_digits_cnn", "Structured pruning: digits CNN at 50% channels, accuracy after fine-tune",
                 "python benchmarks/bench_prune.py digits-cnn", body)


def onnx_cnn_section(seeds: int = 5, epochs: int = 10, lr: float = 2e-3) -> None:
    """The digits CNN given as an ONNX file (exported by torch's dynamo exporter, which folds its BatchNorm into the
    convolutions), pruned through deepshrink's PyTorch import; beside it the PyTorch module itself, the module with
    its BatchNorm folded by hand (the same function as the ONNX file), and Torch-Pruning on the imported graph."""
    from torch.fx.experimental.optimization import fuse

    import deepshrink as dsk
    from deepshrink.convert.onnx2torch.route import trainable_handle
    from deepshrink.examples import digits_data, trained_digits_cnn
    from deepshrink.train import Trainer, accuracy_of

    torch.set_num_threads(1)
    d = digits_data()
    ex = torch.from_numpy(d.x_train[:2])
    from deepshrink.train.batchnorm import batchnorm_for_training, fold_batchnorm

    names = ["fp32", "module (BatchNorm)", "module, BatchNorm folded", "ONNX file: deepshrink",
             "ONNX file: deepshrink, BatchNorm put back while fine-tuning", "ONNX file: torch-pruning on the import"]
    acc: dict[str, list[float]] = {n: [] for n in names}
    kept: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            base = trained_digits_cnn(seed).eval()
            acc["fp32"].append(accuracy_of(base, d.x_test, d.y_test))
            path = Path(tmp) / f"cnn{seed}.onnx"
            dsk.convert(dsk.load(base, input_shapes=["x:1x1x8x8"]), path)
            imported = trainable_handle(dsk.load(path)).model
            tpm = copy.deepcopy(imported)
            tp_prune(tpm, ex, 0.5, [m for n, m in tpm.named_modules() if isinstance(m, nn.Linear)])
            models = {"module (BatchNorm)": ds_prune(copy.deepcopy(base), ex, 0.5),
                      "module, BatchNorm folded": ds_prune(fuse(copy.deepcopy(base)), ex, 0.5),
                      "ONNX file: deepshrink": ds_prune(copy.deepcopy(imported), ex, 0.5),
                      "ONNX file: deepshrink, BatchNorm put back while fine-tuning": ds_prune(imported, ex, 0.5),
                      "ONNX file: torch-pruning on the import": tpm}
            for name, m in models.items():
                kept[name] = params(m) / params(base)
                pairs = batchnorm_for_training(m, (d.x_train,), 64) if "put back" in name else []
                Trainer(m, epochs=epochs, lr=lr, batch_size=64, seed=seed, progress=False).fit((d.x_train, d.y_train))
                fold_batchnorm(m, pairs)  # what prune x.onnx --finetune-epochs does (prune._finetune)
                acc[name].append(accuracy_of(m, d.x_test, d.y_test))
            print(seed, {k: v[-1] for k, v in acc.items()}, flush=True)
    rows = [[n, "-" if n == "fp32" else f"{kept[n]:.3f}", " ".join(f"{100 * a:.2f}" for a in v),
             f"{100 * np.mean(v):.2f}", "-" if n == "fp32" else f"{100 * (np.mean(v) - np.mean(acc['fp32'])):+.2f}"]
            for n, v in acc.items()]
    body = (f"Digits CNN (trained per seed), 50% of the channels of every group (L2), fine-tuned {epochs} epochs "
            f"(Adam lr {lr}, batch 64, same seed) with the deepshrink Trainer; test accuracy (360 images), {seeds} "
            "seeds. The ONNX rows start from the file `deepshrink convert` writes (dynamo exporter: BatchNorm folded "
            "into the convolutions), imported to PyTorch (`convert.onnx2torch.route.trainable_handle`, what `prune "
            "x.onnx` does); Torch-Pruning 1.6 prunes the same imported graph (its Linear head kept). 'BatchNorm put "
            "back': a BatchNorm after each convolution while fine-tuning, set from the first 512 training images so "
            "the model computes what it did, folded into the convolutions after (`deepshrink.train.batchnorm`, what "
            "`prune x.onnx --finetune-epochs N` does); the other rows fine-tune without it.\n\n"
            + md_table(["model", "params vs fp32", "accuracy per seed (%)", "mean %", "vs fp32 (pt)"], rows)
            + "\n\n" + machine_line(1))
    write_result("prune_onnx_cnn", "Structured pruning of an ONNX file (digits CNN) through its PyTorch import",
                 "python benchmarks/bench_prune.py onnx-cnn", body)


def mlp_section(seeds: int = 5) -> None:
    from deepshrink.examples import digits_data, trained_digits_mlp
    from deepshrink.prune import GradualPruneConfig, MagnitudePruneConfig
    from deepshrink.train import accuracy_of

    torch.set_num_threads(1)  # accuracy only
    d = digits_data().flat()
    tr = (d.x_train, d.y_train)
    runs = {
        "fp32": None,
        "one-shot 90% per layer + 2 epochs": MagnitudePruneConfig(sparsity=0.9, finetune_epochs=2),
        "one-shot 90% global + 2 epochs": MagnitudePruneConfig(sparsity=0.9, scope="global", finetune_epochs=2),
        "one-shot 90% global + 30 epochs (same budget as gradual)": MagnitudePruneConfig(
            sparsity=0.9, scope="global", finetune_epochs=30),
        "gradual 90% (cubic, global) + fine-tune, 30 epochs": GradualPruneConfig(final_sparsity=0.9),
        "gradual 90% per layer, 30 epochs": GradualPruneConfig(final_sparsity=0.9, scope="layer"),
    }
    acc: dict[str, list[float]] = {k: [] for k in runs}
    for seed in range(seeds):
        base = trained_digits_mlp(seed)
        for name, cfg in runs.items():
            m = base if cfg is None else prune(copy.deepcopy(base), cfg, data=tr, seed=seed, progress=False).model.model
            acc[name].append(accuracy_of(m, d.x_test, d.y_test))
        print(seed, {k: v[-1] for k, v in acc.items()}, flush=True)
    rows = [[n, " ".join(f"{100 * a:.2f}" for a in v), f"{100 * np.mean(v):.2f}",
             "-" if n == "fp32" else f"{100 * (np.mean(v) - np.mean(acc['fp32'])):+.2f}"] for n, v in acc.items()]
    body = ("Digits MLP 64-300-100-10 (trained 30 epochs per seed), 90% of all Linear weights zeroed; masks held "
            "through fine-tuning (Adam, batch 64) and removed at the end. Gradual: Zhu & Gupta cubic schedule "
            "reaching 90% at 40% of the run, masks updated every 10 steps, cosine learning rate from 2e-3. "
            f"Test accuracy (360 images), {seeds} seeds.\n\n"
            + md_table(["method", "accuracy per seed (%)", "mean %", "vs fp32 (pt)"], rows) + "\n\n" + machine_line(THREADS))
    write_result("prune_unstructured", "Unstructured pruning: digits MLP at 90% sparsity",
                 "python benchmarks/bench_prune.py mlp", body)


def tp_prune_minilm(model: nn.Module, example: tuple[torch.Tensor, ...], ffn: float, heads: float) -> nn.Module:
    """Torch-Pruning on the same MiniLM cut: FFN neurons by ``ffn``, whole heads by ``heads``."""
    import torch_pruning as tp
    from transformers.models.bert.modeling_bert import BertIntermediate, BertSelfAttention

    enc = model.encoder
    num_heads: dict[nn.Module, int] = {}
    ratios: dict[nn.Module, float] = {}
    for mod in enc.modules():
        if isinstance(mod, BertSelfAttention):
            for lin in (mod.query, mod.key, mod.value):
                num_heads[lin] = mod.num_attention_heads
            ratios[mod.query] = heads
        if isinstance(mod, BertIntermediate):
            ratios[mod.dense] = ffn
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.0,
                                  pruning_ratio_dict=ratios, ignored_layers=[enc.embeddings], num_heads=num_heads,
                                  prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=heads)
    pruner.step()
    for mod in enc.modules():
        if isinstance(mod, BertSelfAttention):  # Torch-Pruning leaves the HF head bookkeeping to the user
            mod.num_attention_heads = pruner.num_heads[mod.query]
            mod.all_head_size = mod.query.out_features
    return model


def minilm_section(repeats: int = 20) -> None:
    from transformers import AutoTokenizer

    from deepshrink.examples import minilm, minilm_dir, stdlib_sentences

    base = minilm()
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))

    def enc(texts: list[str]) -> dict[str, np.ndarray]:
        e = tok(texts, padding="max_length", truncation=True, max_length=128, return_tensors="np")
        return {"input_ids": e["input_ids"].astype(np.int64), "attention_mask": e["attention_mask"].astype(np.int64)}

    calib = enc(stdlib_sentences(64, offset=0))
    evalset = enc(stdlib_sentences(64, offset=1000))
    ev = tuple(torch.from_numpy(v) for v in evalset.values())
    with torch.no_grad():
        ref = base(*ev).numpy()
    models, cosines = {"fp32": base}, {}
    variants = {"l2": ("l2", "uniform"), "activation": ("activation", "uniform"), "fisher": ("fisher", "uniform"),
                "fisher global": ("fisher", "global")}
    widths = {}
    for imp, (importance, scope) in variants.items():
        pruned = prune(copy.deepcopy(base), StructuredPruneConfig(ratio=0.5, heads_ratio=0.25, importance=importance,
                                                                  scope=scope),
                       example_inputs=tuple(torch.from_numpy(v) for v in calib.values())).model.model
        layers = pruned.encoder.encoder.layer
        assert sum(x.intermediate.dense.out_features for x in layers) == 768 * len(layers)
        assert sum(x.attention.self.num_attention_heads for x in layers) == 9 * len(layers)
        widths[imp] = ", ".join(f"{x.intermediate.dense.out_features}/{x.attention.self.num_attention_heads}"
                                for x in layers)
        with torch.no_grad():
            out_t = pruned(*ev).numpy()
        cosines[imp] = (ref * out_t).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out_t, axis=1))
        models[imp] = pruned
    tpm = tp_prune_minilm(copy.deepcopy(base), tuple(torch.from_numpy(v[:8]) for v in calib.values()), 0.5, 0.25)
    with torch.no_grad():
        out_t = tpm(*ev).numpy()
    cosines["torch-pruning"] = (ref * out_t).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out_t, axis=1))
    models["torch-pruning"] = tpm
    feed = {k: v[:8] for k, v in evalset.items()}
    st = ort_latency(models, feed, repeats)["stats"]
    rows = [["fp32", f"{params(base):,}", "1.00×", f"{st['fp32'].median_ms:.1f}", _ratio(st["fp32"]), "1", "1"]]
    for imp in (*variants, "torch-pruning"):
        label = "Torch-Pruning 1.6 (L2, num_heads)" if imp == "torch-pruning" else f"deepshrink {imp}"
        shape = "FFN 1536→768, heads 12→9" if imp != "fisher global" else "FFN / heads per layer " + widths[imp]
        rows.append([f"{label}: {shape}", f"{params(models[imp]):,}",
                     f"{params(models[imp]) / params(base):.3f}×", f"{st[imp].median_ms:.1f}", _ratio(st[imp]),
                     f"{cosines[imp].mean():.4f}", f"{cosines[imp].min():.4f}"])
    body = ("all-MiniLM-L6-v2 (sentence embedding, eager attention); every layer loses half of its FFN neurons and 3 of "
            "12 heads (`fisher global`: half of all FFN neurons and a quarter of all heads). Importance `l2`: weight norms over each head's q/k/v rows + output-projection columns (FFN: "
            "up rows + down columns); `activation`: each head's/neuron's contribution ‖x‖·‖W col‖ into the output "
            "projection, observed on 64 calibration sentences (offset 0); `fisher`: the diagonal Fisher information "
            "of a mask on each head/neuron with the model's own output in place of labels (Kwon et al. 2022), on the "
            "same 64 sentences, the same share in every layer or (`fisher global`) ranked across layers — the same "
            "totals, 4,608 neurons and 54 heads. Torch-Pruning: `MetaPruner` with "
            "`num_heads`, `prune_num_heads=True`, `prune_head_dims=False`, the same ratios, embeddings ignored. Cosine of the sentence embeddings against "
            "fp32 on 64 unseen stdlib sentences (offset 1000), **before any fine-tune** (recovery belongs to "
            f"distillation). ORT latency at batch 8 × 128 tokens, {repeats} interleaved rounds, TorchScript exporter, "
            "no fusion.\n\n"
            + md_table(["model", "params", "params ratio", "ORT median ms", "ORT latency ratio", "cos mean", "cos min"],
                       rows) + "\n\n" + machine_line(THREADS))
    write_result("prune_minilm", "Structured pruning: MiniLM heads and FFN neurons",
                 "python benchmarks/bench_prune.py minilm", body)


SECTIONS = {
    "resnet": lambda: conv_section("resnet", "Structured pruning: 9-conv ResNet-like CNN, 3×224×224, batch 8",
                                   (64, 128, 256), 2, (8, 3, 224, 224), 20, True),
    "wide": lambda: conv_section("wide", "Structured pruning: wider CNN (128-256-512), 3×64×64, batch 32",
                                 (128, 256, 512), 1, (32, 3, 64, 64), 6, False),
    "digits-cnn": digits_cnn_section,
    "onnx-cnn": onnx_cnn_section,
    "mlp": mlp_section,
    "minilm": minilm_section,
}


def main() -> None:
    torch.set_num_threads(THREADS)
    names = sys.argv[1:] or list(SECTIONS)
    for n in names:
        if n not in SECTIONS:
            raise SystemExit(f"unknown section {n!r}; choose from {', '.join(SECTIONS)}")
        SECTIONS[n]()


if __name__ == "__main__":
    main()
