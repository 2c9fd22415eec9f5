"""The digits case: data split and two small classifiers, trained once and cached."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .cache import cache_dir, cache_key, load_cached, save_cached

_VERSION = 2  # 2: trained deterministically (one thread), cache keyed by the whole recipe


@dataclass(frozen=True)
class DigitsSplit:
    """Images scaled to [0, 1]; ``x_*`` are (N, 1, 8, 8) float32, ``y_*`` int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def flat(self) -> DigitsSplit:
        """The same split with images flattened to (N, 64) for the MLP."""
        f = lambda a: a.reshape(len(a), -1)  # noqa: E731
        return DigitsSplit(f(self.x_train), self.y_train, f(self.x_val), self.y_val, f(self.x_test), self.y_test)


def digits_data(seed: int = 0) -> DigitsSplit:
    """scikit-learn's 1,797 digits, stratified 60/20/20 with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.4, random_state=seed, stratify=y)
    x_val, x_te, y_val, y_te = train_test_split(x_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest)
    return DigitsSplit(x_tr, y_tr, x_val, y_val, x_te, y_te)


class DigitsMLP(nn.Module):
    """64-300-100-10, the LeNet-300-100 shape on 8×8 inputs. Input ``x``: (N, 64)."""

    def __init__(self, hidden: tuple[int, int] = (300, 100)) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class DigitsCNN(nn.Module):
    """Stem conv, one residual block, a strided conv, global pool, linear. Input (N, 1, 8, 8)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.block_conv1 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.block_bn1 = nn.BatchNorm2d(w)
        self.block_conv2 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.block_bn2 = nn.BatchNorm2d(w)
        self.down = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU())
        self.fc = nn.Linear(2 * w, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.relu(self.block_bn1(self.block_conv1(x)))
        y = self.block_bn2(self.block_conv2(y))
        x = torch.relu(x + y)
        x = self.down(x)
        return self.fc(x.mean(dim=(2, 3)))


def _train_or_load(name: str, model: nn.Module, data: DigitsSplit, epochs: int, seed: int, lr: float) -> nn.Module:
    from ..train import Trainer

    stem = cache_key(name, version=_VERSION, seed=seed, epochs=epochs, lr=lr, batch_size=64, deterministic=True)
    path = cache_dir() / f"{stem}.safetensors"
    if load_cached(model, path):
        return model.eval()
    Trainer(model, epochs=epochs, lr=lr, batch_size=64, seed=seed, progress=False,
            deterministic=True).fit((data.x_train, data.y_train))
    save_cached(model, path)
    return model.eval()


def trained_digits_mlp(seed: int = 0) -> nn.Module:
    """The digits MLP trained for 30 epochs (about 97-98% test accuracy), cached."""
    torch.manual_seed(seed)
    return _train_or_load("digits-mlp", DigitsMLP(), digits_data().flat(), epochs=30, seed=seed, lr=1e-3)


def trained_digits_cnn(seed: int = 0) -> nn.Module:
    """The digits CNN trained for 20 epochs (about 98-99% test accuracy), cached."""
    torch.manual_seed(seed)
    return _train_or_load("digits-cnn", DigitsCNN(), digits_data(), epochs=20, seed=seed, lr=2e-3)
