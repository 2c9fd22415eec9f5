"""Three small models for trying `deepshrink search` as a new user (issue 14, session f trial).

conv1d: 1-D CNN with BatchNorm and a residual block, on make_classification features laid out as
        3 channels x 32 steps (4 classes).
mlp:    MLP with LayerNorm and GELU on make_classification (6 classes, 40 features).
gru:    a GRU classifier on the same 3x32 sequences (batch-first, (N, 32, 3)).
`python notes/trial14f/trial_models.py OUTDIR` trains all of them (1 thread, seeded) and writes
OUTDIR/{name}.safetensors, {name}_train.npz, {name}_test.npz.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv1d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(c)
        self.conv2 = nn.Conv1d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(x + y)


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv1d(3, 48, 5, padding=2, bias=False)
        self.bn = nn.BatchNorm1d(48)
        self.block = ResBlock(48)
        self.down = nn.Conv1d(48, 64, 3, stride=2, padding=1)
        self.head = nn.Linear(64 * 16, 128)
        self.out = nn.Linear(128, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block(x)
        x = torch.relu(self.down(x))
        x = torch.relu(self.head(x.flatten(1)))
        return self.out(x)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(40, 256)
        self.ln1 = nn.LayerNorm(256)
        self.fc2 = nn.Linear(256, 256)
        self.ln2 = nn.LayerNorm(256)
        self.fc3 = nn.Linear(256, 6)

    def forward(self, x):
        x = nn.functional.gelu(self.ln1(self.fc1(x)))
        x = nn.functional.gelu(self.ln2(self.fc2(x)))
        return self.fc3(x)


class GRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 64, batch_first=True)
        self.fc = nn.Linear(64, 4)

    def forward(self, x):
        _, h = self.gru(x)
        return self.fc(h[-1])


def conv1d():
    return Conv1dNet()


def mlp():
    return MLP()


def gru():
    return GRUNet()


def _data(name):
    from sklearn.datasets import make_classification
    if name == "mlp":
        x, y = make_classification(n_samples=3000, n_features=40, n_informative=24, n_classes=6,
                                   n_clusters_per_class=2, class_sep=1.5, random_state=7)
    else:
        x, y = make_classification(n_samples=3000, n_features=96, n_informative=30, n_classes=4,
                                   n_clusters_per_class=2, class_sep=1.5, random_state=11)
        x = x.reshape(-1, 3, 32)
        if name == "gru":
            x = x.transpose(0, 2, 1)
    return x.astype(np.float32), y.astype(np.int64)


def train(name, out):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = _data(name)
    n = 2400
    model = globals()[name]()
    opt = torch.optim.Adam(model.parameters(), 2e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x[:n]), torch.from_numpy(y[:n])
    for epoch in range(30):
        model.train()
        perm = torch.randperm(n)
        for i in range(0, n, 64):
            b = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc_tr = (model(xt).argmax(1) == yt).float().mean().item()
        acc = (model(torch.from_numpy(x[n:])).argmax(1).numpy() == y[n:]).mean()
    from safetensors.torch import save_file
    save_file(model.state_dict(), str(out / f"{name}.safetensors"))
    np.savez(out / f"{name}_train.npz", x=x[:n], labels=y[:n])
    np.savez(out / f"{name}_test.npz", x=x[n:], labels=y[n:])
    print(f"{name}: {sum(p.numel() for p in model.parameters())} params, train {acc_tr:.4f}, test {acc:.4f}")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[2:] or ["conv1d", "mlp", "gru"]:
        train(name, out)
