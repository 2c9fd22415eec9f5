"""``deepshrink pack IN -o OUT.dsz`` (Deep Compression into a ``.dsz`` container, or a
lossless pack with ``--lossless``) and ``deepshrink unpack IN.dsz -o OUT.onnx|.safetensors``.

Parses options, builds the config, calls :func:`deepshrink.codec.pack` /
:func:`deepshrink.codec.unpack`, prints; the written file is decoded again and compared
bit for bit, and measured against the original on ``--data`` when given."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..errors import InputError
from ._app import (
    DataOpt,
    ForceOpt,
    InputShapeOpt,
    JsonOpt,
    RepeatsOpt,
    ThreadsOpt,
    TrustOpt,
    WeightsOpt,
    app,
    console,
    load_model,
    print_json,
)


def _layer_sparsity(items: list[str], option: str = "--layer-sparsity", kind: type = float,
                    example: str = "PATTERN=S such as 'fc3=0.75'") -> dict[str, Any]:
    out = {}
    for item in items:
        pat, sep, val = item.rpartition("=")
        try:
            out[pat] = kind(val)
        except ValueError:
            sep = ""
        if not sep or not pat:
            raise InputError(f"{option} {item!r}: expected {example}")
    return out


def _config(lossless: bool, entropy: str, gap_bits: int | None, **dc: Any) -> Any:
    from ..codec import DeepCompressionConfig, PackConfig

    common = {"entropy": entropy, "gap_bits": gap_bits}
    if lossless:
        return PackConfig.from_dict(common)
    return DeepCompressionConfig.from_dict({**common, **{k: v for k, v in dc.items() if v is not None}})


@app.command("pack")
def pack_cmd(
    src: Annotated[str, typer.Argument(help="model: .onnx, package.module:factory (+ --weights), .pt2")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output .dsz file")],
    lossless: Annotated[bool, typer.Option("--lossless", help="store the tensors as they are (no pruning or weight sharing)")] = False,
    sparsity: Annotated[float | None, typer.Option("--sparsity", "-s", help="fraction of Linear/Embedding weights pruned (2-D ONNX initializers)")] = None,
    conv_sparsity: Annotated[float | None, typer.Option("--conv-sparsity", help="fraction of conv weights pruned (default: --sparsity)")] = None,
    layer_sparsity: Annotated[list[str] | None, typer.Option("--layer-sparsity", help="PATTERN=S per-layer override (fnmatch, repeatable)")] = None,
    fc_bits: Annotated[int | None, typer.Option("--fc-bits", help="k-means bits for Linear/Embedding weights (default 5)")] = None,
    conv_bits: Annotated[int | None, typer.Option("--conv-bits", help="k-means bits for conv weights (default 8)")] = None,
    other_bits: Annotated[int | None, typer.Option("--other-bits", help="k-means bits for biases and norm parameters (default 8)")] = None,
    buffer_bits: Annotated[int | None, typer.Option("--buffer-bits", help="k-means bits for BatchNorm running statistics (default 8)")] = None,
    layer_bits: Annotated[list[str] | None, typer.Option("--layer-bits", help="PATTERN=BITS per-layer (or per-tensor) k-means bits (fnmatch, repeatable)")] = None,
    kernel_sparsity: Annotated[float | None, typer.Option("--kernel-sparsity", help="fraction of conv k×k kernels pruned whole before single weights (cheaper sparse indices)")] = None,
    fold_bn: Annotated[bool, typer.Option("--fold-bn", help="fold BatchNorm into the preceding conv after pruning (fewer stored tensors)")] = False,
    distill: Annotated[bool, typer.Option("--distill", help="fine-tune on soft targets of the original model as well as the labels")] = False,
    keep_other: Annotated[bool, typer.Option("--keep-other", help="leave biases, norms and buffers untouched")] = False,
    init: Annotated[str | None, typer.Option("--init", help="k-means initialisation: linear | density | random")] = None,
    prune_epochs: Annotated[int | None, typer.Option("--prune-epochs", help="epochs of gradual pruning with fine-tuning (needs labelled --data)")] = None,
    finetune_epochs: Annotated[int | None, typer.Option("--finetune-epochs", help="epochs of centroid fine-tuning (needs labelled --data)")] = None,
    entropy: Annotated[str, typer.Option("--entropy", help="huffman | fixed (fixed-length codes)")] = "huffman",
    gap_bits: Annotated[int | None, typer.Option("--gap-bits", help="sparse gap width 1..8 (default: best per tensor)")] = None,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="data for the before/after table (default: --data)")] = None,
    repeats: RepeatsOpt = 30, threads: ThreadsOpt = 2,
    seed: Annotated[int, typer.Option("--seed", help="seed for k-means and fine-tuning")] = 0,
    weights: WeightsOpt = None, input_shape: InputShapeOpt = None, data: DataOpt = None,
    trust_remote_code: TrustOpt = False, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Deep Compression (prune → trained k-means → Huffman) into a .dsz file, verified bit-exactly."""
    from ..codec import pack, tensors_equal, unpack
    from ..core.data import load_data
    from ..core.fileio import check_output

    config = _config(lossless, entropy, gap_bits, fc_sparsity=sparsity, conv_sparsity=conv_sparsity,
                     layer_sparsity=_layer_sparsity(layer_sparsity or []) or None, fc_bits=fc_bits,
                     conv_bits=conv_bits, other_bits=other_bits, buffer_bits=buffer_bits, init=init,
                     prune_epochs=prune_epochs, finetune_epochs=finetune_epochs,
                     layer_bits=_layer_sparsity(layer_bits or [], "--layer-bits", int,
                                                "PATTERN=BITS such as 'stem.*=6'") or None,
                     kernel_sparsity=kernel_sparsity, fold_bn=fold_bn or None, distill=distill or None)
    if keep_other and not lossless:
        config = config.replace(other_bits=None, buffer_bits=None)
    if repeats < 1 or threads < 1:
        raise InputError("--repeats and --threads must be >= 1")
    from ..core import formats

    check_output(output, inputs=(src, weights), force=force)
    if formats.by_suffix(output) is not formats.get("packed"):
        raise InputError(f"output {output}: packed files end in .dsz")
    handle = load_model(src, weights=weights, input_shape=input_shape, data=data, trust_remote_code=trust_remote_code)
    if handle.kind == "torch" and not (handle.source and ":" in handle.source and not Path(handle.source).exists()):
        raise InputError(f"{src}: a PyTorch model is packed with its package.module:factory string so unpack can "
                         "rebuild it; pass the model as package.module:factory --weights W")
    ds = load_data(data, handle) if data is not None else None
    train = None
    if ds is not None and not lossless and ds.labels is not None:  # ONNX: fine-tuned as its PyTorch import
        train = (*ds.inputs.values(), ds.labels)
    trains = [f for f, n in (("--prune-epochs", prune_epochs), ("--finetune-epochs", finetune_epochs)) if n]
    if trains and not lossless and train is None:
        why = "no --data was given" if ds is None else f"the data {ds.source} has no labels"
        raise InputError(f"{' and '.join(trains)} fine-tune on labelled data, but {why}; pass --data with a "
                         "'labels' array (or digits:train), or drop the option")
    res = pack(handle, config, output=output, data=train, force=force, seed=seed, stages=not lossless,
               progress=not json_out)
    back = unpack(output)
    if not tensors_equal(res.tensors, back.tensors):
        raise InputError(f"{output} does not decode to the packed tensors (a bug: please report it)")
    table = _measure(handle, back, eval_data or data, repeats, json_out, threads)
    if json_out:
        print_json({**res.to_dict(), "verified": True, "bench": table.to_dict() if table else None})
        return
    console.print(f"[bold]{type(config).__name__}[/]: {res.fp32_bytes:,} fp32 bytes → {res.nbytes:,} bytes "
                  f"([bold]{res.ratio:.1f}×[/])", highlight=False)
    if res.stages:
        st = res.stages
        console.print("  stages: " + " → ".join(f"{k} {st[k]:,} B ({st['fp32'] / st[k]:.1f}×)"
                                                 for k in ("pruned", "quantized", "huffman")), highlight=False)
    _print_records(res)
    console.print(f"verified: {output} decodes bit-exactly to the packed model ({len(back.tensors)} tensors)")
    if table is not None:
        from .common_cmds import print_bench

        print_bench(table)
    console.print(f"wrote {output}")


def _print_records(res: Any) -> None:
    stats = {s.name: s for s in res.stats}
    t = Table()
    for col in ("tensor", "shape", "encoding", "non-zero", "clusters", "gap bits", "bytes"):
        t.add_column(col, justify="left" if col in ("tensor", "encoding") else "right")
    for r in res.records[:40]:
        s = stats.get(r.name)
        t.add_row(r.name, "x".join(map(str, r.shape)) or "scalar", r.encoding,
                  f"{s.nonzero / max(s.numel, 1):.1%}" if s else "", str(r.codebook_size or ""),
                  str(r.gap_bits or ""),
                  "(metadata)" if r.encoding == "constant" and not r.nbytes else f"{r.nbytes:,}")
    console.print(t)
    if len(res.records) > 40:
        console.print(f"  ... {len(res.records) - 40} more tensors")


def _measure(handle: Any, back: Any, data: str | None, repeats: int, quiet: bool, threads: int = 2) -> Any:
    """Original vs the model decoded from the written file, in the same runtime."""
    if data is None:
        return None
    from ..evaluate.compare import compare

    if handle.kind == "torch":
        module = copy.deepcopy(handle.model)
        module.load_state_dict(back.state_dict(), strict=True)
        return compare(handle, handle.with_model(module.eval()), data=data, repeats=repeats, threads=threads,
                       names=("original", "unpacked .dsz"), progress=not quiet)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "unpacked.onnx"
        back.save(path)
        return compare(handle, path, data=data, repeats=repeats, threads=threads, names=("original", "unpacked .dsz"),
                       progress=not quiet)


@app.command("unpack")
def unpack_cmd(
    src: Annotated[Path, typer.Argument(help="a .dsz file written by `deepshrink pack`")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output: .onnx (ONNX sources) or .safetensors")],
    force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Decode a .dsz file (checksums and every length checked) into .onnx or .safetensors."""
    from ..codec import unpack
    from ..codec.container import ENCODINGS

    res = unpack(src, output, force=force)
    info = {"output": str(output), "source": res.source_kind, "factory": res.factory,
            "tensors": len(res.tensors), "encodings": {e: sum(r.encoding == e for r in res.records)
                                                       for e in ENCODINGS}}
    if json_out:
        print_json(info)
        return
    enc = ", ".join(f"{n} {e}" for e, n in info["encodings"].items() if n)
    console.print(f"{src}: {len(res.tensors)} tensors ({enc}), {res.source_kind} model", highlight=False)
    if res.factory:
        console.print(f"  rebuild with: deepshrink.load({res.factory!r}, weights={str(output)!r})", highlight=False)
    console.print(f"wrote {output}")
