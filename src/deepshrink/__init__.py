"""deepshrink — make trained networks smaller and faster, and prove it on the artifact.

Public verbs take a model, a config object and keyword-only options::

    import deepshrink as ds
    h = ds.load("model.onnx")
    ds.convert(h, "model.onnx")              # parity-checked conversion
    ds.bench(["a.onnx", "b.onnx"])           # side-by-side size / latency / fidelity
    ds.pack(h, ds.DeepCompressionConfig(fc_sparsity=0.9), output="m.dsz", data=(x, y))
    ds.unpack("m.dsz", "m.onnx")             # bit-exact decode
    ds.distill(h, None, (x, y), ds.DistillConfig(derive="width=0.5"))  # a student, distilled
    ds.optimize("model.onnx", ds.OptimizeConfig(level="extended"), output="opt.onnx")  # ORT graph optimisation
    ds.search("model.onnx", "digits:train", ds.SearchConfig(max_drop=0.5), "out/")  # per-layer search
"""

from __future__ import annotations

from typing import Any

from .core.config import Config, config_from_dict
from .core.handle import ModelHandle, TensorSpec
from .errors import (
    BudgetError,
    DeepshrinkError,
    InputError,
    MissingExtraError,
    ParityError,
    UnsupportedError,
)

__version__ = "0.1.0"

# Verbs are imported lazily so `import deepshrink` stays fast and light.
_LAZY = {
    "load": ("deepshrink.loading", "load"),
    "save": ("deepshrink.convert.writers", "save"),
    "convert": ("deepshrink.convert", "convert"),
    "check_parity": ("deepshrink.convert.parity", "check_parity"),
    "bench": ("deepshrink.evaluate.bench", "bench"),
    "info": ("deepshrink.evaluate.info", "info"),
    "load_data": ("deepshrink.core.data", "load_data"),
    "Trainer": ("deepshrink.train", "Trainer"),
    "quantize": ("deepshrink.quantize", "quantize"),
    "prune": ("deepshrink.prune", "prune"),
    "distill": ("deepshrink.distill", "distill"),
    "DistillConfig": ("deepshrink.distill.config", "DistillConfig"),
    "compress": ("deepshrink.recipe", "compress"),
    "load_recipe": ("deepshrink.recipe", "load_recipe"),
    "pack": ("deepshrink.codec", "pack"),
    "unpack": ("deepshrink.codec", "unpack"),
    "PackConfig": ("deepshrink.codec", "PackConfig"),
    "DeepCompressionConfig": ("deepshrink.codec", "DeepCompressionConfig"),
    "optimize": ("deepshrink.optimize", "optimize"),
    "OptimizeConfig": ("deepshrink.optimize", "OptimizeConfig"),
    "search": ("deepshrink.search", "search"),
    "SearchConfig": ("deepshrink.search", "SearchConfig"),
}
# The config classes of the verbs, also lazy: ``from deepshrink import Int8StaticConfig`` imports
# the configs module on first use (the prune configs bring torch, through deepshrink.prune).
_QUANTIZE_CONFIGS = ("QuantConfig", "Int8DynamicConfig", "Int8StaticConfig", "WeightOnlyConfig", "KMeansConfig",
                     "Log2Config", "QATConfig", "MixedPrecisionConfig", "AutoConfig")
_PRUNE_CONFIGS = ("PruneConfig", "MagnitudePruneConfig", "GradualPruneConfig", "NMPruneConfig",
                  "StructuredPruneConfig")
_LAZY.update({n: ("deepshrink.quantize.configs", n) for n in _QUANTIZE_CONFIGS})
_LAZY.update({n: ("deepshrink.prune.config", n) for n in _PRUNE_CONFIGS})


# Verbs that are also packages (``ds.convert.ConvertResult``): the package is the verb.
_VERB_PACKAGES = {"convert", "quantize", "prune", "distill", "optimize", "search"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if name in _VERB_PACKAGES and callable(mod) else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deepshrink' has no attribute {name!r}")


__all__ = [
    "Config", "config_from_dict", "ModelHandle", "TensorSpec", "BudgetError", "DeepshrinkError",
    "InputError", "MissingExtraError", "ParityError", "UnsupportedError", *_LAZY,
]
