"""Quantization: ``quantize(model, config, *, data=None)`` plus the config classes.

The verb dispatches on the config type through ``deepshrink.core.config.handler_for``;
handlers live in ``quantize/onnx_*.py`` (the deployed ONNX Runtime artifact) and are
imported lazily so ``import deepshrink.quantize`` stays light.
"""

from __future__ import annotations

from .configs import (
    AutoConfig,
    Int8DynamicConfig,
    Int8StaticConfig,
    KMeansConfig,
    Log2Config,
    MixedPrecisionConfig,
    QATConfig,
    QuantConfig,
    WeightOnlyConfig,
)

__all__ = [
    "quantize", "QuantConfig", "Int8DynamicConfig", "Int8StaticConfig", "WeightOnlyConfig", "KMeansConfig",
    "Log2Config", "QATConfig", "MixedPrecisionConfig", "AutoConfig",
]


def quantize(model, config, *, data=None, **options):  # type: ignore[no-untyped-def]
    from .api import quantize as _q

    return _q(model, config, data=data, **options)


from ..core.verbs import make_callable  # noqa: E402

make_callable(__name__, quantize)
