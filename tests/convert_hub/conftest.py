"""Fixtures for the conversion-hub tests: digits models exported to ONNX once per session
(TorchScript exporter: a fraction of a second, where dynamo takes seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


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


class TransformerBlock(torch.nn.Module):
    """A pre-LN transformer block written out (attention heads via reshape/transpose)."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.h = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.ff1, self.ff2 = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.h) ** 0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.ff2(torch.nn.functional.gelu(self.ff1(self.ln2(x))))


@pytest.fixture(scope="session")
def transformer_block_cls() -> type[torch.nn.Module]:
    return TransformerBlock
