"""``ds.distill`` end to end on small models: a tiny random BERT (layers kept, hidden-state and attention
losses) and the digits MLP (half width by structured pruning, KD with labels)."""

import copy

import pytest
import torch
from torch.nn import functional as F

import deepshrink as ds
from deepshrink.distill import DistillConfig, distill_with_report
from deepshrink.distill.derive import with_layers
from deepshrink.errors import InputError


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import BertConfig, BertModel

    from deepshrink.examples.minilm import SentenceEncoder

    torch.manual_seed(0)
    # initializer_range 0.2 (not BERT's 0.02): random layers that change the output, so dropping them matters
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, attn_implementation="eager",
                     initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return SentenceEncoder(BertModel(cfg)).eval()


def _tokens(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, 12), generator=g)
    mask = torch.ones(n, 12, dtype=torch.int64)
    mask[n // 2:, 8:] = 0
    return ids, mask


def test_layers_kept_with_hidden_and_attention_losses(tiny_bert):
    ids, mask = _tokens(64)
    cfg = DistillConfig(derive="layers=2", hidden_weight=1.0, attention_weight=1.0, epochs=3, lr=1e-3, batch_size=16)
    student, rep = distill_with_report(tiny_bert, None, (ids, mask), cfg, eval_data=_tokens(32, seed=1),
                                       progress=False, deterministic=True)
    assert len(student.encoder.encoder.layer) == 2 and student.encoder.config.num_hidden_layers == 2
    assert len(tiny_bert.encoder.encoder.layer) == 4  # the teacher is left alone
    assert rep.loss == "embedding"  # unit-norm outputs: an encoder
    assert rep.objective == "embedding + 1×hidden (mse) + 1×attention"  # what first/last_loss measure
    assert rep.verb_report(cfg).summary.endswith(f"embedding + 1×hidden (mse) + 1×attention loss "
                                                 f"{rep.first_loss:.4f} → {rep.last_loss:.4f}")
    assert rep.layer_map == [1, 3] and rep.layers["n_layers"] == 4 and len(rep.layers["keep"]) == 2
    assert len(rep.layers["drop_one"]) == 4 and rep.steps == 12
    # fidelity on held-out tokens rises from the copied layers'. 5 init seeds: copied 0.35-0.57, distilled
    # 0.81-0.89, gain 0.27-0.54
    with torch.no_grad():
        before = float(torch.nn.functional.cosine_similarity(
            with_layers(tiny_bert, rep.layers["keep"])(*_tokens(32, 1)), tiny_bert(*_tokens(32, 1))).mean())
    assert rep.evals[-1]["cosine"] > 0.75 and rep.evals[-1]["cosine"] > before + 0.2, (before, rep.evals)
    assert all(p.requires_grad for p in student.parameters())  # the pooler, frozen for the run, is given back


def test_bf16_mixed_precision_distils_as_float32_does(tiny_bert):
    ids, mask = _tokens(64)
    figures = {}
    for mp in ("no", "bf16"):
        cfg = DistillConfig(derive="layers=2", hidden_weight=1.0, attention_weight=1.0, epochs=3, lr=1e-3, batch_size=16,
                            mixed_precision=mp)
        student, rep = distill_with_report(tiny_bert, None, (ids, mask), cfg, eval_data=_tokens(32, seed=1),
                                           progress=False, deterministic=True)
        assert rep.mixed_precision == mp and {p.dtype for p in student.parameters()} == {torch.float32}
        figures[mp] = (rep.evals[-1]["cosine"], rep.last_loss)
    # 5 init seeds of the tiny BERT: held-out cosine bf16 minus float32 -0.0003 to +0.0008 (0.81-0.89 both);
    # the losses differ (it did run in bfloat16)
    assert abs(figures["bf16"][0] - figures["no"][0]) < 0.005, figures
    assert figures["bf16"][1] != figures["no"][1]


@pytest.mark.trains
def test_digits_half_width_kd(digits_mlp, digits, measured):
    from deepshrink.train import accuracy_of

    d = digits.flat()
    cfg = DistillConfig(derive="width=0.5", epochs=2, temperature=4.0, alpha=0.9)
    student, rep = distill_with_report(digits_mlp, None, (d.x_train, d.y_train), cfg, progress=False,
                                       deterministic=True)
    assert student.fc1.out_features == 150 and student.fc2.out_features == 50 and student.fc3.out_features == 10
    assert rep.loss == "kd" and rep.width is not None and rep.student_params < rep.teacher_params / 2
    assert rep.last_loss < rep.first_loss
    acc = measured("half-width MLP accuracy after 2 epochs of KD", accuracy_of(student, d.x_val, d.y_val), "lower")
    assert acc > 0.5  # chance is 0.1; a broken loss leaves it there


def test_bad_api_input(digits_mlp, digits):
    d = digits.flat()
    with pytest.raises(InputError, match="empty"):
        ds.distill(digits_mlp, None, (d.x_train[:0], d.y_train[:0]), DistillConfig(derive="width=0.5"))
    with pytest.raises(InputError, match="no student"):
        ds.distill(digits_mlp, None, (d.x_train, d.y_train), DistillConfig())
    with pytest.raises(InputError, match="not both"):
        ds.distill(digits_mlp, torch.nn.Linear(64, 10), (d.x_train, d.y_train), DistillConfig(derive="width=0.5"))
    with pytest.raises(InputError, match="10 vs 7 classes"):
        ds.distill(digits_mlp, torch.nn.Linear(64, 7), (d.x_train, d.y_train), DistillConfig())
    with pytest.raises(InputError, match="derive layers=K needs a model with a stack"):
        ds.distill(digits_mlp, None, (d.x_train, d.y_train), DistillConfig(derive="layers=1"))


def test_checkpoint_needs_resume_and_the_same_settings(digits_mlp, digits, tmp_path):
    d = digits.flat()
    data = (d.x_train[:128], d.y_train[:128])
    cfg = DistillConfig(derive="width=0.5", epochs=1, batch_size=32)
    ds.distill(digits_mlp, None, data, cfg, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match="resume it"):
        ds.distill(digits_mlp, None, data, cfg, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match="other settings"):
        ds.distill(digits_mlp, None, data, cfg.replace(temperature=3.0), checkpoint_dir=tmp_path, resume=True,
                   progress=False)
    student, rep = distill_with_report(digits_mlp, None, data, cfg, checkpoint_dir=tmp_path, resume=True,
                                       progress=False)
    assert rep.resumed_from == 4 and rep.steps == 4  # finished run: resumed at its end, nothing more to do


def test_kept_layer_map_and_frozen_parameters(tiny_bert):
    ids, mask = _tokens(16)
    cfg = DistillConfig(derive="layers=2", hidden_weight=1.0, layer_map="kept", epochs=1, lr=1e-3, batch_size=16,
                        lr_schedule="linear", warmup=0.5)
    _, rep = distill_with_report(tiny_bert, None, (ids, mask), cfg, progress=False, deterministic=True)
    assert rep.layer_map == rep.layers["keep"] and rep.layer_map != [1, 3] and rep.steps == 1
    cfg = DistillConfig(derive="layers=2", epochs=1, lr=1e-3, batch_size=16, freeze=("*word_embeddings*",))
    student, rep = distill_with_report(tiny_bert, None, (ids, mask), cfg, progress=False, deterministic=True)
    # the counts leave out BERT's pooler (the mean-pooled output does not read it; the ONNX export drops it) and
    # keep the frozen word embeddings (read, not trained)
    def counted(m):
        return sum(p.numel() for n, p in m.named_parameters() if ".pooler." not in n)

    assert (rep.teacher_params, rep.student_params) == (counted(tiny_bert), counted(student))
    assert counted(tiny_bert) < sum(p.numel() for p in tiny_bert.parameters())
    emb = "encoder.embeddings.word_embeddings.weight"
    assert torch.equal(student.state_dict()[emb], tiny_bert.state_dict()[emb])  # frozen: the teacher's table
    pos = "encoder.embeddings.position_embeddings.weight"
    assert not torch.equal(student.state_dict()[pos], tiny_bert.state_dict()[pos])  # the rest trains
    assert all(p.requires_grad for p in student.parameters())  # given back trainable
    with pytest.raises(InputError, match="copied from"):
        distill_with_report(tiny_bert, with_layers(tiny_bert, [0, 1]), (ids, mask),
                            DistillConfig(hidden_weight=1.0, layer_map="kept", epochs=1), progress=False)


def test_dropout_zero_lets_a_copy_match_its_teacher_exactly(digits_mlp, digits):
    from transformers import BertConfig, BertModel

    from deepshrink.examples.minilm import SentenceEncoder

    torch.manual_seed(0)
    teacher = SentenceEncoder(BertModel(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, attn_implementation="eager", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1))).eval()
    ids, mask = _tokens(32)
    losses = {}
    for p in (None, 0.0):
        cfg = DistillConfig(epochs=1, lr=1e-3, batch_size=16, dropout=p)
        student, rep = distill_with_report(teacher, copy.deepcopy(teacher), (ids, mask), cfg, progress=False,
                                           deterministic=True)
        losses[p] = rep.first_loss
        # the written student keeps the model's own dropout
        assert {m.p for m in student.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    # an exact copy: without dropout its first-step loss (1 - cosine) is zero, with the model's own 0.1 it is not
    assert losses[0.0] < 1e-6 < losses[None]
    with pytest.raises(InputError, match="has no dropout"):
        distill_with_report(digits_mlp, None, (digits.flat().x_train[:64], digits.y_train[:64]),
                            DistillConfig(derive="width=0.5", epochs=1, dropout=0.0), progress=False)


class _FunctionalDropoutNet(torch.nn.Module):
    """Dropout called as a function, no ``nn.Dropout`` module, then BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(torch.relu(self.bn(self.fc1(x))), 0.5, training=self.training)
        return self.fc2(h)


def test_dropout_zero_also_switches_off_functional_dropout():
    torch.manual_seed(0)
    teacher = _FunctionalDropoutNet()
    x = torch.randn(64, 16)
    with torch.no_grad():  # running statistics = the statistics of x, so only dropout separates train from eval
        teacher.bn.momentum = None
        teacher.train()(x)
    teacher.eval()
    stats = teacher.bn.running_mean.clone()
    losses = {}
    for p in (None, 0.0):
        cfg = DistillConfig(epochs=1, lr=1e-9, batch_size=64, dropout=p, loss="embedding")
        student, rep = distill_with_report(teacher, copy.deepcopy(teacher), (x,), cfg, progress=False,
                                           deterministic=True)
        losses[p] = rep.first_loss
    # a copy of its teacher: half its units dropped, the first loss is far from 0; dropout 0 reaches F.dropout too
    # (left: BatchNorm's biased batch variance against the running unbiased one, 64/63)
    assert losses[None] > 0.1 and losses[0.0] < 1e-3, losses  # 0.21 and 1e-5 seen
    assert torch.equal(teacher.bn.running_mean, stats)  # the probe for functional dropout changed no statistics
    # the model's own rate asked for: accepted (it has dropout), nothing to change
    _, rep = distill_with_report(teacher, copy.deepcopy(teacher), (x,), DistillConfig(
        epochs=1, lr=1e-9, batch_size=64, dropout=0.5, loss="embedding"), progress=False, deterministic=True)
    assert abs(rep.first_loss - losses[None]) < 1e-6


def test_group_by_length_batches_sentences_of_similar_length(tiny_bert, digits_mlp, digits):
    ids, _ = _tokens(64)
    lengths = torch.randint(2, 13, (64,), generator=torch.Generator().manual_seed(2))
    mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    widths = {}
    for grouped in (False, True):
        seen: list[int] = []
        hook = tiny_bert.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0].shape[1]))
        try:
            cfg = DistillConfig(derive="layers=2", hidden_weight=1.0, epochs=1, lr=1e-3, batch_size=8,
                                group_by_length=grouped)
            _, rep = distill_with_report(tiny_bert, None, (ids, mask), cfg, progress=False, deterministic=True)
        finally:
            hook.remove()
        assert rep.steps == 8
        widths[grouped] = sum(seen[-8:])  # the teacher's input width in the 8 training steps (cut to the longest)
    # 8 batches of 8 (lengths 2-12): a plain shuffle pads nearly every batch to 11-12 tokens (88 in all here),
    # grouped batches to their own longest (57; the sum of the 8 sorted groups' maxima, deterministic)
    assert widths[True] < widths[False] - 20, widths
    with pytest.raises(InputError, match="attention_mask"):
        distill_with_report(digits_mlp, None, (digits.flat().x_train[:64], digits.y_train[:64]),
                            DistillConfig(derive="width=0.5", epochs=1, group_by_length=True), progress=False)


class _TFPortCNN(torch.nn.Module):
    """Conv → BatchNorm(momentum 0, as models ported from TensorFlow) → sigmoid head: torchcrepe's shape."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv1d(1, width, 5, padding=2)
        self.bn1 = torch.nn.BatchNorm1d(width, momentum=0.0)
        self.conv2 = torch.nn.Conv1d(width, width, 5, padding=2)
        self.bn2 = torch.nn.BatchNorm1d(width, momentum=0.0)
        self.head = torch.nn.Linear(width, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn1(torch.relu(self.conv1(x[:, None])))
        h = self.bn2(torch.relu(self.conv2(h)))
        return torch.sigmoid(self.head(h.mean(2)))


def test_frozen_batchnorm_statistics_follow_the_trained_student():
    torch.manual_seed(0)
    teacher = _TFPortCNN().eval()
    x = torch.randn(128, 32)
    cfg = DistillConfig(derive="width=0.5", epochs=4, lr=1e-2, batch_size=32)
    student, rep = distill_with_report(teacher, None, (x,), cfg, progress=False)
    assert rep.loss == "embedding"  # sigmoid outputs are probabilities: matched directly, not softmaxed again
    assert rep.batchnorm_recalibrated == 2
    # bn2's running statistics are the exact mean / variance of what it reads under the trained weights
    with torch.no_grad():
        pre = student.eval().bn1(torch.relu(student.conv1(x[:, None])))
        feed = torch.relu(student.conv2(pre))
    mean = feed.mean((0, 2))
    assert torch.allclose(student.bn2.running_mean, mean, atol=1e-5)
    assert student.bn2.momentum == 0.0 and not student.training
    with torch.no_grad():
        moved = (student.bn2.running_mean - teacher.bn2.running_mean[: len(mean)]).abs().max()
    assert moved > 1e-3  # training moved the weights, so the statistics had to change


class _TwoHeads(torch.nn.Module):
    """A detector-like model: box offsets first (not class logits), class scores second."""

    def __init__(self, width: int = 64, classes: int = 3, heads: int = 2) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                        torch.nn.ReLU())
        self.box, self.cls = torch.nn.Linear(width, 4), torch.nn.Linear(width, classes)
        self.heads = heads

    def forward(self, x):
        h = self.body(x)
        return (self.box(h), self.cls(h)) if self.heads == 2 else self.box(h)


@pytest.mark.parametrize("seed", [0, 1])
def test_every_output_of_a_several_output_model_is_distilled(seed):
    """Not only the first output (MTCNN's ONet: boxes, landmarks, scores): each is matched, scale-free, and the
    second output's fidelity rises from the pruned copy's. 5 seeds, half width, 20 epochs: the second output's
    cosine 0.55–0.88 before, 0.86–0.96 after, gain 0.08–0.31; the first 0.95–0.99 after."""
    from deepshrink.distill import derive_student

    def cos(a, b):
        return float(F.cosine_similarity(a, b, dim=-1).mean())

    torch.manual_seed(seed)
    teacher = _TwoHeads().eval()
    g = torch.Generator().manual_seed(100 + seed)
    x, xe = torch.randn(512, 16, generator=g), torch.randn(128, 16, generator=g)
    cfg = DistillConfig(derive="width=0.5", epochs=20, lr=3e-3, batch_size=64, seed=seed)
    copied = derive_student(teacher, None, cfg, [x])[0]
    student, rep = distill_with_report(teacher, None, (x,), cfg, eval_data=(xe,), progress=False, deterministic=True)
    assert rep.loss == "embedding" and rep.objective == "2-output MSE/variance"  # box offsets first: no softmax KD
    with torch.no_grad():
        (tb, tc), (_, cc), (sb, sc) = teacher(xe), copied(xe), student(xe)
    assert cos(sc, tc) > 0.84 and cos(sc, tc) > cos(cc, tc) + 0.05, (cos(cc, tc), cos(sc, tc))
    assert cos(sb, tb) > 0.93
    assert rep.evals[-1]["cosine"] == pytest.approx(min(cos(sb, tb), cos(sc, tc)), abs=1e-4)  # the worst output's


def test_a_student_whose_outputs_differ_in_number_or_shape_is_refused():
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    teacher = _TwoHeads().eval()
    for student, needle in ((_TwoHeads(heads=1), "the teacher returns 2 floating-point output(s), the student 1"),
                            (_TwoHeads(classes=5), "output 1: teacher (8, 3), student (8, 5)")):
        with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            distill_with_report(teacher, student, (x,), DistillConfig(epochs=1), progress=False)


def test_a_pruned_student_s_heads_are_compared_with_the_heads_they_were(tiny_bert):
    """Structured pruning notes which teacher heads each attention module kept; attention-map distillation
    compares each kept head with that head. Layer 0 reads the unchanged embeddings with the kept heads' own
    query/key weights, so its maps equal the teacher's kept heads exactly."""
    import copy

    from deepshrink.distill.features import Capture
    from deepshrink.distill.losses import attention_loss
    from deepshrink.prune import StructuredPruneConfig
    from deepshrink.prune.structured import structured_prune

    ids, mask = _tokens(16)
    student = copy.deepcopy(tiny_bert)
    structured_prune(student, StructuredPruneConfig(ratio=0.0, heads_ratio=0.5), (ids, mask))
    heads = [m.deepshrink_kept_heads for m in student.modules() if hasattr(m, "deepshrink_kept_heads")]
    assert len(heads) == 4 and all(len(h) == 2 and len(set(h)) == 2 and max(h) < 4 for h in heads)

    def run(m):
        return m(ids, mask)

    with Capture(tiny_bert, hidden=False, attention=True, probe=run) as cap_t, \
            Capture(student, hidden=False, attention=True, probe=run) as cap_s, torch.no_grad():
        assert cap_s.heads == heads and cap_t.heads == [None] * 4
        cap_t.clear()
        cap_s.clear()
        tiny_bert(ids, mask)
        student(ids, mask)
        assert cap_s.maps[0].shape[1] == 2 and cap_t.maps[0].shape[1] == 4
        exact = float(attention_loss(cap_s.maps[:1], cap_t.maps, [0], heads=cap_s.heads[:1], mask=mask))
        averaged = float(attention_loss(cap_s.maps[:1], cap_t.maps, [0], mask=mask))
    assert exact == pytest.approx(0.0, abs=1e-6) and averaged > 1e-3, (exact, averaged)


def test_attention_maps_of_a_model_that_returns_them_only_when_asked_and_without_dropout():
    """MPNet returns attention probabilities only with ``output_attentions`` (a new user's all-mpnet-base-v2 was
    refused); and a model in training mode returns them after its attention dropout. The capture asks for them and
    turns that dropout off while it lasts, so a student identical to its teacher scores 0 in training mode, and
    the models get their own settings back afterwards."""
    import copy

    from transformers import MPNetConfig, MPNetModel

    from deepshrink.distill.features import Capture
    from deepshrink.distill.losses import attention_loss
    from deepshrink.examples.minilm import SentenceEncoder

    torch.manual_seed(0)
    cfg = MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      max_position_embeddings=40, attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.0,
                      attn_implementation="eager")
    teacher = SentenceEncoder(MPNetModel(cfg)).eval()
    student = copy.deepcopy(teacher).train()
    ids, mask = _tokens(8)

    def run(m):
        return m(ids, mask)

    with Capture(teacher, hidden=False, attention=True, probe=run) as cap_t, \
            Capture(student, hidden=False, attention=True, probe=run) as cap_s:
        assert student.encoder.config.output_attentions is True
        cap_t.clear()
        cap_s.clear()
        with torch.no_grad():
            teacher(ids, mask)
        student(ids, mask)  # training mode
        assert len(cap_s.maps) == 2 and cap_s.maps[0].shape == (8, 4, 12, 12)
        rows = cap_s.maps[0].sum(-1)
        assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)  # distributions, not dropped-out rows
        assert float(attention_loss(cap_s.maps, cap_t.maps, [0, 1], mask=mask).detach()) == pytest.approx(0.0, abs=1e-6)
    assert student.encoder.config.output_attentions is False and teacher.encoder.config.output_attentions is False
    drops = [m.p for m in student.modules() if isinstance(m, torch.nn.Dropout)]
    assert 0.5 in drops  # the attention dropout is the model's own again
