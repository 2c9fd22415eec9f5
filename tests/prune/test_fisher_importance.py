"""Fisher importance (``importance="fisher"``): each channel's score is Σ over samples and probes of
(∂ vᵀf / ∂m_c)² for a mask m_c on the channel, checked against an explicit mask parameter; a dead channel
scores 0 and goes first; ``scope="global"`` ranks the raw scores across layers, so a layer that barely
reaches the output gives up more of its channels while the total removed stays the share asked for."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from deepshrink.examples import DigitsCNN
from deepshrink.prune import StructuredPruneConfig, prune
from deepshrink.prune.structured import build_graph, plan_structured
from deepshrink.prune.structured.importance import fisher_scores


def _x(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


class TwoFFN(nn.Module):
    """Two residual FFN-like blocks on a 16-wide stream, then a 4-way head."""

    def __init__(self) -> None:
        super().__init__()
        self.a1, self.a2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.b1, self.b2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.a2(torch.relu(self.a1(x)))
        x = x + self.b2(torch.relu(self.b1(x)))
        return self.head(x)


def _reference(model: nn.Module, groups: list, batches: list, probes: int, seed: int) -> dict[int, torch.Tensor]:
    """The same estimate from an explicit mask parameter per group, one backward per sample."""
    mods = dict(model.named_modules())
    masks = {g.id: torch.ones(g.size, requires_grad=True) for g in groups}

    def pre(member, gid, size):
        def fn(mod, args):
            x = args[0]
            cols = masks[gid].repeat_interleave(member.repeat)
            full = torch.ones(x.shape[1] if not isinstance(mod, nn.Linear) else x.shape[-1])
            full = torch.cat([full[:member.offset], cols, full[member.offset + size * member.repeat:]])
            shape = [1] * x.dim()
            shape[1 if not isinstance(mod, nn.Linear) else -1] = -1
            return (x * full.reshape(shape),) + tuple(args[1:])
        return fn

    hooks = [mods[m.module].register_forward_pre_hook(pre(m, g.id, g.size))
             for g in groups for m in g.members if m.role == "in"]
    gen = torch.Generator().manual_seed(seed)
    out = {g.id: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    try:
        for (xb,) in batches:
            for _ in range(probes):
                v = torch.randn(model(xb).shape, generator=gen)
                for s in range(len(xb)):
                    f = model(xb[s:s + 1])
                    grads = torch.autograd.grad((v[s:s + 1] * f).sum(), [masks[g.id] for g in groups])
                    for g, gr in zip(groups, grads, strict=True):
                        out[g.id] += gr.double() ** 2
    finally:
        for h in hooks:
            h.remove()
    return out


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_scores_equal_the_squared_mask_gradients(which):
    torch.manual_seed(0)
    model = (TwoFFN() if which == "mlp" else DigitsCNN(width=8)).eval()
    x = _x(1, (6, 16) if which == "mlp" else (6, 1, 8, 8))
    graph = build_graph(model, (x[:1],))
    groups = [g for g in graph.prunable()]
    assert groups
    batches = [(x[:4],), (x[4:],)]
    got = fisher_scores(model, groups, batches, probes=3, seed=7)
    want = _reference(model, groups, batches, probes=3, seed=7)
    for g in groups:
        assert torch.allclose(got[g.id], want[g.id], rtol=1e-4, atol=1e-9), g.name
        assert got[g.id].max() > 0  # a ReLU neuron never active on these samples may score 0
    assert all(p.grad is None for p in model.parameters())  # nothing left behind


def test_a_dead_channel_scores_zero_and_goes_first():
    torch.manual_seed(0)
    model = TwoFFN().eval()
    with torch.no_grad():
        model.a2.weight[:, 5] = 0  # neuron 5 of the first block reaches nothing
    x = _x(2, (32, 16))
    cfg = StructuredPruneConfig(ratio=1 / 32, importance="fisher")
    graph = plan_structured(model, cfg, (x[:1],), act_batches=[(x,)])
    first = next(g for g in graph.prunable() if g.name.startswith("a1"))
    assert 5 not in first.keep.tolist() and len(first.keep) == 31


@pytest.mark.filterwarnings("ignore:unsupported operands")  # the residual stream stays whole, as said
def test_global_scope_ranks_raw_scores_across_layers():
    torch.manual_seed(0)
    model = TwoFFN().eval()
    with torch.no_grad():
        model.b2.weight.mul_(0.01)  # the second block barely reaches the output
    x = _x(3, (64, 16))
    cfg = StructuredPruneConfig(ratio=0.5, importance="fisher", scope="global", min_keep=0.1)
    pruned = prune(copy.deepcopy(model), cfg, data=x, example_inputs=(x[:1],)).model.model
    a, b = pruned.a1.out_features, pruned.b1.out_features
    assert a + b == 32  # half of the 64 FFN neurons in all
    assert b < a and b >= 4  # the weak block gives up more, down to its min_keep floor (0.1 of 32 → 4)


class IntOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))).argmax(1)


def test_integer_outputs_are_refused_in_one_line():
    from deepshrink.errors import InputError

    x = _x(6, (16, 8))
    with pytest.raises(InputError, match="floating-point outputs"):
        plan_structured(IntOut().eval(), StructuredPruneConfig(ratio=0.5, importance="fisher"), (x[:1],),
                        act_batches=[(x,)])


def test_a_global_plan_that_falls_short_says_so():
    model = TwoFFN().eval()
    x = _x(7, (32, 16))
    cfg = StructuredPruneConfig(ratio=0.9, importance="fisher", scope="global", min_keep=0.5)
    graph = plan_structured(model, cfg, (x[:1],), act_batches=[(x,)])
    assert sum(len(g.keep) for g in graph.prunable()) == 32  # each of the two 32-neuron groups keeps its floor, 16
    assert any("removed 32 of the 57 channels asked" in w and "min_keep 0.5" in w for w in graph.warnings)
