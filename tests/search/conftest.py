"""Shared fixtures of the search tests: the digits MLP as an ONNX file (module-scoped, built once)."""

from __future__ import annotations

from pathlib import Path

import pytest

import deepshrink as ds


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory, digits_mlp) -> Path:
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    ds.convert(ds.load(digits_mlp, input_shapes=["x:1x1x8x8"]), path)
    return path
