"""Fixtures for the conversion-hub tests: digits models exported to ONNX once per session
(TorchScript exporter: a fraction of a second, where dynamo takes seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def hub_onnx(tmp_path_factory, digits_cnn, digits_mlp) -> dict[str, Path]:
    from deepshrink.convert import export_onnx

    folder = tmp_path_factory.mktemp("hub")
    out = {}
    import numpy as np

    for name, model, shape in (("cnn", digits_cnn, (2, 1, 8, 8)), ("mlp", digits_mlp, (2, 64))):
        path = folder / f"{name}.onnx"
        export_onnx(model, {"x": np.zeros(shape, np.float32)}, path, exporter="torchscript")
        out[name] = path
    return out
