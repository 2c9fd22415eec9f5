"""Structured pruning of ``nn.MultiheadAttention`` heads and ``nn.TransformerEncoderLayer`` heads/FFN:
the swapped attention computes what the original computes (all heads kept, every mask kind), removing
dead heads leaves the output unchanged, the pruned model equals its masked twin and exports to ONNX,
options that cannot apply are refused, and what is left alone is reported once, not as a Python warning."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from deepshrink.backends.pruned_modules import prune_heads
from deepshrink.errors import InputError
from deepshrink.prune import StructuredPruneConfig, prune, prune_with_report
from deepshrink.prune.structured import (
    HeadPrunedAttention,
    apply_plan,
    fit_to_state_dict,
    mask_plan,
    plan_structured,
)
from prune_helpers import exact


def _x(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _rel(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float((ref - got).abs().max() / ref.abs().max())


class MHABlock(nn.Module):
    """Post-norm block on nn.MultiheadAttention(32, 4 heads): the user-report case's model."""

    def __init__(self) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(32, 4, batch_first=True)
        self.ln1 = nn.LayerNorm(32)
        self.ff1, self.ff2 = nn.Linear(32, 64), nn.Linear(64, 32)
        self.ln2 = nn.LayerNorm(32)
        self.proj = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self.att(x, x, x, need_weights=False)
        x = self.ln1(x + a)
        x = self.ln2(x + self.ff2(F.gelu(self.ff1(x))))
        return self.proj(x.mean(1))


def _dead_block() -> MHABlock:
    """Heads 1 and 3 and FFN neurons 32..63 contribute nothing: removing them must not change the output."""
    torch.manual_seed(0)
    m = MHABlock().eval()
    with torch.no_grad():
        for h in (1, 3):
            for i in range(3):
                m.att.in_proj_weight[i * 32 + h * 8: i * 32 + (h + 1) * 8] = 0
                m.att.in_proj_bias[i * 32 + h * 8: i * 32 + (h + 1) * 8] = 0
            m.att.out_proj.weight[:, h * 8:(h + 1) * 8] = 0
        m.ff1.weight[32:] = 0
        m.ff1.bias[32:] = 0
        m.ff2.weight[:, 32:] = 0
    return m


def test_dead_heads_and_neurons_removed_output_unchanged():
    m = _dead_block()
    x = _x(0, (3, 12, 32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned, report = prune_with_report(m, StructuredPruneConfig(ratio=0.5, heads_ratio=0.5), example_inputs=(x,))
    assert not caught  # prune_with_report reports; it issues no Python warning
    att = pruned.att
    assert isinstance(att, HeadPrunedAttention) and att.num_heads == 2 and att.head_index.tolist() == [0, 2]
    assert [att.q_proj.out_features, att.k_proj.out_features, att.v_proj.out_features] == [16, 16, 16]
    assert att.out_proj.in_features == 16 and pruned.ff1.out_features == 32
    assert (report.params_before, report.params_after) == (8874, 4698)  # the hand-pruned figures
    assert {g["name"]: (g["kind"], g["size"], g["kept"]) for g in report.groups} == {
        "att": ("head", 4, 2), "ff1": ("channel", 64, 32)}
    with torch.no_grad():
        assert _rel(m(x), pruned(x)) < 1e-5  # 1.7e-7 seen: the removed heads/neurons were all-zero
        assert _rel(m(x[:1]), pruned(x[:1])) < 1e-5


@pytest.mark.parametrize("batch_first", [True, False])
def test_swapped_attention_equals_multihead_attention(batch_first):
    """All heads kept: same outputs and weights as nn.MultiheadAttention for every mask kind."""
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(24, 3, batch_first=batch_first, kdim=16, vdim=20).eval()
    new = prune_heads(mha, torch.arange(3)).eval()
    n, tgt, src = 2, 5, 7
    q = _x(1, (n, tgt, 24) if batch_first else (tgt, n, 24))
    k = _x(2, (n, src, 16) if batch_first else (src, n, 16))
    v = _x(3, (n, src, 20) if batch_first else (src, n, 20))
    pad = torch.zeros(n, src, dtype=torch.bool)
    pad[1, -2:] = True
    causal = torch.ones(tgt, src, dtype=torch.bool).triu(1)
    per_head = _x(4, (n * 3, tgt, src))
    cases = [{}, {"key_padding_mask": pad}, {"attn_mask": causal}, {"attn_mask": per_head},
             {"attn_mask": torch.zeros(tgt, src).masked_fill(causal, -1e4),
              "key_padding_mask": torch.zeros(n, src).masked_fill(pad, -1e4)},
             {"average_attn_weights": False}]
    with torch.no_grad():
        for kw in cases:
            ref, ref_w = mha(q, k, v, **kw)
            got, got_w = new(q, k, v, **kw)
            assert (ref - got).abs().max() < 1e-5, kw  # 1e-7 seen
            assert (ref_w - got_w).abs().max() < 1e-6, kw
        assert new(q, k, v, need_weights=False)[1] is None
        unbatched = mha(q[0] if batch_first else q[:, 0], k[0] if batch_first else k[:, 0],
                        v[0] if batch_first else v[:, 0])[0]
        mine = new(q[0] if batch_first else q[:, 0], k[0] if batch_first else k[:, 0],
                   v[0] if batch_first else v[:, 0])[0]
        assert (unbatched - mine).abs().max() < 1e-5


def test_per_head_mask_follows_the_kept_heads():
    """A (N·H, L, S) mask is given in the original head count; the pruned module picks the kept heads'."""
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    q = _x(5, (2, 6, 16))
    mask = torch.zeros(2 * 4, 6, 6)
    mask[1::4] = -1e4  # only head 1 is masked, and head 1 is removed: no effect on the rest
    keep = torch.tensor([0, 2, 3])
    masked = copy.deepcopy(mha)
    with torch.no_grad():
        masked.out_proj.weight[:, 4:8] = 0
        ref = masked(q, q, q, attn_mask=mask, need_weights=False)[0]
        got = prune_heads(mha, keep)(q, q, q, attn_mask=mask, need_weights=False)[0]
    assert (ref - got).abs().max() < 1e-5


class Classifier(nn.Module):
    """The first-use transformer: row embedding, learned positions, TransformerEncoderLayer, mean, head."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.pos = nn.Parameter(torch.randn(1, 8, 32) * 0.1)
        self.layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=128, dropout=0.0, batch_first=batch_first)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer(self.embed(x) + self.pos).mean(1))


_exact = exact


def test_encoder_layer_heads_and_ffn_pruned_exactly(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from deepshrink.convert.export import export_onnx

    torch.manual_seed(3)
    m = Classifier().eval()
    x = (_x(6, (4, 8, 8)),)
    pruned, diff = _exact(m, StructuredPruneConfig(ratio=0.5, heads_ratio=0.5), x)
    assert diff < 1e-5  # 6e-8 seen: removed heads/neurons contribute exactly nothing once masked
    att = pruned.layer.self_attn
    assert isinstance(att, HeadPrunedAttention) and att.num_heads == 2 and att.q_proj.out_features == 16
    assert pruned.layer.linear1.out_features == 64 and pruned.layer.linear2.in_features == 64
    assert (_params(m), _params(pruned)) == (13578, 7322)  # FFN -4,160, attention -2,096; embed/pos/LN stay
    h = export_onnx(pruned, {"x": x[0].numpy()}, tmp_path / "tf.onnx")
    sess = ort.InferenceSession(str(h.path), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        xb = _x(7 + b, (b, 8, 8))
        with torch.no_grad():
            assert _rel(pruned(xb), torch.from_numpy(sess.run(None, {"x": xb.numpy()})[0])) < 1e-5


def test_sequence_first_encoder_with_padding_mask():
    """nn.TransformerEncoder (batch_first=False) with a key padding mask: the fused nested-tensor path is
    switched off once its attention is swapped, and the result equals the masked original."""
    torch.manual_seed(4)

    class Enc(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

        def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
            return self.enc(x, src_key_padding_mask=pad)

    m = Enc().eval()
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[0, -2:] = True
    x = (_x(10, (6, 3, 16)), pad)
    graph = plan_structured(m, StructuredPruneConfig(ratio=0.0, heads_ratio=0.5, ffn_ratio=0.25), x)
    masked, pruned = copy.deepcopy(m), copy.deepcopy(m)
    mask_plan(masked, graph)
    apply_plan(pruned, graph)
    with torch.no_grad():
        ref, got = masked(*x), pruned(*x)
    keep = ~pad.T.unsqueeze(-1).expand_as(ref)  # padded positions are undefined in both
    assert (ref - got)[keep].abs().max() < 1e-5
    assert [lay.self_attn.num_heads for lay in pruned.enc.layers] == [2, 2]
    assert [lay.linear1.out_features for lay in pruned.enc.layers] == [24, 24]


def test_fit_to_state_dict_rebuilds_the_swapped_attention():
    m = _dead_block()
    x = _x(11, (2, 12, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the residual stream left alone
        pruned = prune(m, StructuredPruneConfig(ratio=0.5, heads_ratio=0.5), example_inputs=(x,)).model.model
    fresh = fit_to_state_dict(MHABlock().eval(), pruned.state_dict())
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))


def test_options_that_cannot_apply_are_refused():
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = (_x(12, (2, 8)),)
    with pytest.raises(InputError, match=r"heads_ratio \(--heads-ratio\) 0.5: the model has no attention heads"):
        prune(mlp, StructuredPruneConfig(ratio=0.5, heads_ratio=0.5), example_inputs=x)
    with pytest.raises(InputError, match=r"ffn_ratio \(--ffn-ratio\) 0.5: the model has no transformer FFN"):
        prune(_dead_block(), StructuredPruneConfig(ratio=0.5, ffn_ratio=0.5), example_inputs=(_x(13, (2, 12, 32)),))

    class BiasKV(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.att = nn.MultiheadAttention(16, 4, add_bias_kv=True, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.att(x, x, x)[0]

    with pytest.raises(InputError, match=r"attention heads of this model cannot be removed \(att: unsupported "
                                         r"attention att \(add_bias_kv=True\)\)"):
        prune(BiasKV().eval(), StructuredPruneConfig(ratio=0.0, heads_ratio=0.5), example_inputs=(_x(14, (2, 5, 16)),))


def test_each_left_alone_reason_reported_once():
    """A grouped conv blocks two channel groups: one report line names both; prune() warns once per line,
    prune_with_report not at all (the CLI prints the report's lines)."""

    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.b = nn.Conv2d(8, 16, 1)
            self.fc = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.b(torch.relu(self.g(torch.relu(self.a(x))))).mean((2, 3)))

    x = (_x(15, (2, 3, 8, 8)),)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = prune_with_report(Grouped().eval(), StructuredPruneConfig(ratio=0.5), example_inputs=x)
    assert not caught
    assert report.warnings == ["unsupported grouped convolution g: channel group a, channel group g left unpruned"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prune(Grouped().eval(), StructuredPruneConfig(ratio=0.5), example_inputs=x)
    assert [str(w.message) for w in caught] == report.warnings


def test_a_heads_ratio_below_one_head_is_reported():
    m = _dead_block()
    _, report = prune_with_report(m, StructuredPruneConfig(ratio=0.0, heads_ratio=0.2),
                                  example_inputs=(_x(16, (2, 12, 32)),))
    assert "heads_ratio 0.2 removes no head of att (4 heads): less than one head each" in report.warnings


def test_a_pruned_model_prunes_again_without_touching_the_swapped_attention():
    m = _dead_block()
    x = (_x(17, (2, 12, 32)),)
    once, _ = prune_with_report(m, StructuredPruneConfig(ratio=0.0, heads_ratio=0.5), example_inputs=x)
    twice, report = prune_with_report(once, StructuredPruneConfig(ratio=0.5), example_inputs=x)
    assert twice.att.num_heads == 2 and twice.ff1.out_features == 32  # 64 -> 32: the dead half goes
    assert [g["name"] for g in report.groups] == ["ff1"]
    with torch.no_grad():
        assert _rel(m(*x), twice(*x)) < 1e-5


class _MPNetEncoder(nn.Module):
    """A small random Hugging Face MPNet (q/k/v/o attention, a relative position bias shared by all layers)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import MPNetConfig, MPNetModel

        torch.manual_seed(0)
        cfg = MPNetConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=40)
        self.mpnet = MPNetModel(cfg, add_pooling_layer=False).eval()
        with torch.no_grad():  # a bias that differs a lot per head, so a wrong head's bias shows in the output
            self.mpnet.encoder.relative_attention_bias.weight.normal_(0, 3)
            for p in self.mpnet.encoder.layer.parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.mpnet(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def test_mpnet_heads_prune_with_their_slice_of_the_shared_position_bias(tmp_path):
    pytest.importorskip("transformers")
    model = _MPNetEncoder().eval()
    ids = torch.from_numpy(np.random.default_rng(0).integers(3, 64, (4, 12)))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    x = (ids, mask)
    cfg = StructuredPruneConfig(ratio=0.5, heads_ratio=0.5)
    with warnings.catch_warnings(record=True):
        pruned, diff = exact(model, cfg, x)
    attn = pruned.mpnet.encoder.layer[0].attention.attn
    assert attn.num_attention_heads == 2 and attn.q.out_features == 16 and attn.o.in_features == 16
    assert len(attn.pruned_head_index) == 2 and int(attn.pruned_head_index.max()) < 4
    with torch.no_grad():
        moved = float((model(*x) - pruned(*x)).abs().max())
    assert moved > 1e-2  # the removed heads mattered ...
    assert diff < 1e-4  # ... and the kept ones read their own bias: the masked twin's output (2e-6 seen)
    # pruned again: the kept indices compose to the original heads, one hook
    with warnings.catch_warnings(record=True):
        twice = prune(copy.deepcopy(pruned), StructuredPruneConfig(ratio=0.0, heads_ratio=0.5), example_inputs=x).model.model
    again = twice.mpnet.encoder.layer[0].attention.attn
    assert again.num_attention_heads == 1 and int(again.pruned_head_index[0]) in attn.pruned_head_index.tolist()
    assert len(again._forward_pre_hooks) == 1
    # rebuilt from the pruned state dict: the slicing comes back with it
    fresh = fit_to_state_dict(_MPNetEncoder(), pruned.state_dict())
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(*x), pruned(*x), atol=1e-5)
