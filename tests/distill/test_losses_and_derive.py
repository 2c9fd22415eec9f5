"""Distillation losses and student derivation on tiny models: exact numbers, no training."""

import math

import pytest
import torch
from torch import nn

from deepshrink.distill import DistillConfig, check_compatible
from deepshrink.distill.derive import choose_layers, find_layer_stack, uniform_layers, with_layers
from deepshrink.distill.losses import (
    attention_loss,
    hidden_loss,
    kd_loss,
    soft_target_loss,
    uniform_layer_map,
)
from deepshrink.errors import InputError


def test_soft_target_loss_is_t_squared_kl():
    s = torch.tensor([[2.0, 0.0, -1.0]])
    t = torch.tensor([[1.0, 1.0, 0.0]])
    temp = 2.0
    p = torch.softmax(t / temp, -1)
    q = torch.softmax(s / temp, -1)
    kl = float((p * (p.log() - q.log())).sum())
    assert math.isclose(float(soft_target_loss(s, t, temp)), temp ** 2 * kl, rel_tol=1e-6)
    assert float(soft_target_loss(t, t, 3.0)) == pytest.approx(0.0, abs=1e-7)
    # (N, L, V) logits: positions count as samples
    assert float(soft_target_loss(s[None].repeat(2, 2, 1), t[None].repeat(2, 2, 1), temp)) == pytest.approx(temp ** 2 * kl, rel=1e-6)


def test_kd_mixes_soft_and_hard_by_alpha():
    s, t, y = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([0])
    soft, hard = float(soft_target_loss(s, t, 1.0)), float(nn.functional.cross_entropy(s, y))
    assert float(kd_loss(s, t, y, 1.0, 0.25)) == pytest.approx(0.25 * soft + 0.75 * hard, rel=1e-6)
    assert float(kd_loss(s, t, None, 1.0, 0.25)) == pytest.approx(soft, rel=1e-6)  # no labels: soft term alone


def test_hidden_and_attention_losses():
    s = [torch.ones(2, 3, 4), torch.zeros(2, 3, 4)]
    t = [torch.zeros(2, 3, 8), torch.ones(2, 3, 8), torch.full((2, 3, 8), 2.0)]
    proj = nn.ModuleList([nn.Linear(4, 8, bias=False) for _ in range(2)])
    for p in proj:
        nn.init.zeros_(p.weight)
    # projections output 0: layer 0 vs teacher 1 (ones) -> 1, layer 1 vs teacher 2 (twos) -> 4
    assert float(hidden_loss(s, t, [1, 2], proj).detach()) == pytest.approx(2.5)
    a_s = [torch.full((1, 2, 3, 3), 1 / 3)]
    a_t = [torch.eye(3).expand(1, 4, 3, 3)]  # other head count: head-averaged
    # KL(one-hot ‖ uniform over 3 keys) = log 3 on every query row
    assert float(attention_loss(a_s, a_t, [0])) == pytest.approx(math.log(3), rel=1e-6)


def test_attention_loss_compares_kept_heads_with_the_heads_they_were():
    torch.manual_seed(0)
    t = torch.softmax(torch.randn(2, 4, 5, 5), -1)  # a teacher layer with 4 heads
    s = t[:, [3, 1]].clone()  # a student pruned to the teacher's heads 3 and 1, unchanged
    assert float(attention_loss([s], [t], [0], heads=[[3, 1]])) == pytest.approx(0.0, abs=1e-6)
    assert float(attention_loss([s], [t], [0], heads=[[1, 3]])) > 0.05  # the other order is another pairing
    assert float(attention_loss([s], [t], [0])) > 0.01  # unknown origin: head-averaged maps differ
    # padded query rows do not count: a student wrong only on the last (padded) row scores 0
    s2 = s.clone()
    s2[:, :, -1] = torch.softmax(torch.randn(2, 2, 5), -1)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    assert float(attention_loss([s2], [t], [0], heads=[[3, 1]], mask=mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(attention_loss([s2], [t], [0], heads=[[3, 1]])) > 0.01


def test_uniform_maps():
    assert uniform_layer_map(3, 6) == [1, 3, 5]  # TinyBERT g(m) = m N / M, 0-based
    assert uniform_layer_map(4, 12) == [2, 5, 8, 11]
    assert uniform_layer_map(2, 2) == [0, 1]
    assert uniform_layers(6, 3) == [0, 2, 4]  # every other layer
    assert uniform_layers(12, 4) == [0, 3, 6, 9]


class Block(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        with torch.no_grad():
            self.fc.weight.mul_(scale)
            self.fc.bias.mul_(scale)

    def forward(self, x):
        return x + self.fc(x)


class Stack(nn.Module):
    def __init__(self, scales) -> None:
        super().__init__()

        class Cfg:
            num_hidden_layers = len(scales)

        self.config = Cfg()
        self.layers = nn.ModuleList([Block(s) for s in scales])
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def test_layer_choice_drops_the_layers_that_change_the_output_least():
    torch.manual_seed(0)
    # layers 1 and 3 are almost identities (weights scaled by 1e-4): measured importance drops them first
    model = Stack([1.0, 1e-4, 1.0, 1e-4])
    x = torch.randn(16, 4)
    choice = choose_layers(model, 2, [(x,)])
    assert choice.keep == [0, 2]
    assert choice.drop_one[1] < 1e-6 and choice.drop_one[3] < 1e-6 and choice.drop_one[0] > 1e-3
    assert [i for i, _ in choice.removal_order] == [1, 3] and choice.error < 1e-6
    student = with_layers(model, choice.keep)
    assert len(student.layers) == 2 and student.config.num_hidden_layers == 2 and len(model.layers) == 4
    assert torch.allclose(student(x), model(x), atol=1e-3)
    assert choose_layers(model, 2, [(x,)], selection="uniform").keep == [0, 2]
    model2 = Stack([1e-4, 1.0, 1e-4, 1.0])
    assert choose_layers(model2, 2, [(x,)]).keep == [1, 3]  # every other would keep the two near-identities
    assert choose_layers(model2, 2, [(x,)], selection="uniform").keep == [0, 2]


def test_bad_derivations_are_refused():
    model = Stack([1.0, 1.0])
    x = torch.randn(4, 4)
    with pytest.raises(InputError, match="zero of the teacher's 2 layers"):
        choose_layers(model, 0, [(x,)])
    with pytest.raises(InputError, match="only 2 layers"):
        choose_layers(model, 3, [(x,)])
    with pytest.raises(InputError, match="width=F"):
        choose_layers(nn.Sequential(nn.Linear(4, 4)), 1, [(x,)])
    assert find_layer_stack(nn.Sequential(nn.Linear(4, 4))) is None
    for bad in ("layers=0", "layers=1.5", "width=1.0", "width=0", "depth=3"):
        with pytest.raises(InputError):
            DistillConfig.build(derive=bad)


def test_outputs_that_do_not_line_up_are_refused():
    x = (torch.randn(4, 8),)
    teacher = nn.Linear(8, 10)
    with pytest.raises(InputError, match="10 vs 12 classes"):
        check_compatible(teacher, nn.Linear(8, 12), x, "kd")
    with pytest.raises(InputError, match=r"teacher \(4, 10\), student \(4, 2, 10\)"):
        check_compatible(teacher, nn.Sequential(nn.Linear(8, 20), nn.Unflatten(1, (2, 10))), x, "embedding")
    with pytest.raises(InputError, match="cannot run on the teacher's inputs"):
        check_compatible(teacher, nn.Linear(5, 10), x, "kd")
    check_compatible(teacher, nn.Sequential(nn.Linear(8, 3), nn.Linear(3, 10)), x, "kd")  # lines up: no error


def test_hidden_loss_counts_only_real_tokens():
    s = [torch.zeros(2, 3, 4)]
    t = [torch.ones(2, 3, 4)]
    t[0][1, 2] = 10.0  # a padded position: masked out it does not count
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert float(hidden_loss(s, t, [0], None, mask=mask)) == pytest.approx(1.0)
    assert float(hidden_loss(s, t, [0], None)) == pytest.approx((5 * 4 + 100 * 4) / 24)


def test_learning_rate_schedules():
    from deepshrink.train.trainer import lr_factor

    # warmup 2 of 10 steps: 1/2, 1, then the decay over the remaining 8
    assert [lr_factor("constant", s, 10, 2) for s in (0, 1, 5)] == [0.5, 1.0, 1.0]
    assert [lr_factor("linear", s, 10, 2) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    assert lr_factor("cosine", 6, 10, 2) == pytest.approx(0.5) and lr_factor("cosine", 4, 10, 2) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 10, 10) == pytest.approx(0.0)
    with pytest.raises(InputError, match="step"):
        lr_factor("step", 0, 10)
    with pytest.raises(InputError):
        DistillConfig.build(warmup=1.0)
