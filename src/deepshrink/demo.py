"""``deepshrink demo``: the main job on the embedded default, offline.

Trains (or loads from cache) the digits CNN, exports it to ONNX with a parity check,
benchmarks PyTorch against ONNX Runtime on the held-out digits, and — where those
capabilities are installed — compresses it and measures the result the same way.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any


def run_demo(out: Path, console: Any = None, *, seed: int = 0) -> dict[str, Any]:
    from .convert import convert
    from .evaluate.bench import bench
    from .examples.digits import trained_digits_cnn
    from .loading import load, save

    say = console.print if console is not None else (lambda *a, **k: None)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    say("[bold]1.[/] digits CNN (scikit-learn's 8×8 digits), trained once and cached")
    model = trained_digits_cnn(seed)
    handle = load(model, input_shapes=["x:1x1x8x8"])
    weights = out / "digits_cnn.safetensors"
    save(handle, weights)
    handle.path = weights  # so the table shows the size of what would ship
    say("[bold]2.[/] export to ONNX with a parity check (dynamo exporter, dynamic batch)")
    result = convert(handle, out / "digits_cnn.onnx", data="digits:val")
    parity = result.hops[0].parity
    if parity is not None:
        say(parity.summary(), highlight=False, markup=False)
    models: list[Any] = [handle, out / "digits_cnn.onnx"]
    names = ["PyTorch fp32", "ONNX fp32"]
    extra = _compress_steps(out, handle, say)
    for name, path in extra:
        models.append(path)
        names.append(name)
    say(f"[bold]{3 + len(extra)}.[/] side-by-side on the test split (batch 1, 2 threads)")
    res = bench([str(m) if isinstance(m, Path) else m for m in models], data="digits:test", names=names,
                repeats=50, progress=console is not None)
    if console is not None:
        from .cli.common_cmds import print_bench

        print_bench(res)
    say(f"files in {out.resolve()}:")
    for f in sorted(out.iterdir()):
        say(f"  {f.name}")
    return {"out": str(out.resolve()), "parity": parity.to_dict() if parity else None, "bench": res.to_dict()}


def _compress_steps(out: Path, torch_handle: Any, say: Any) -> list[tuple[str, Path]]:
    """Prune half the channels (with a short fine-tune), then quantize to static int8."""
    steps: list[tuple[str, Path]] = []
    try:
        from .prune import StructuredPruneConfig, prune
        from .quantize import Int8StaticConfig, quantize
        from .quantize.api import save_quantized
    except ImportError:  # a capability not installed in this build
        return steps
    from .convert import convert
    from .core.data import load_data

    say("[bold]3.[/] structured pruning: 50% of the channels removed (L2 importance), 5 epochs of fine-tuning")
    train = load_data("digits:train", torch_handle)
    pruned = prune(torch_handle.with_model(copy.deepcopy(torch_handle.model)), StructuredPruneConfig(ratio=0.5, finetune_epochs=5), data=train, progress=say is not None)
    pruned_path = out / "digits_cnn.pruned.onnx"
    convert(pruned, pruned_path)
    steps.append(("ONNX pruned 50%", pruned_path))
    say("[bold]4.[/] static int8 quantization of the pruned model, calibrated on the validation split")
    q = quantize(str(pruned_path), Int8StaticConfig(), data="digits:val")
    q_path = out / "digits_cnn.pruned.int8.onnx"
    save_quantized(q, q_path)
    steps.append(("ONNX pruned + int8", q_path))
    return steps
