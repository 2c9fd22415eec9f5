import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from deepshrink.errors import InputError
from deepshrink.examples import DigitsMLP
from deepshrink.train import Callback, Trainer, accuracy_of

# Thresholds on figures that depend on the trained models, derived by benchmarks/seed_spread.py (8 seeds, see
# tests/README.md): upper bound max(mean + 3 std, worst + margin), lower bound min(mean - 3 std, worst - margin).
TRAINER_ACC_5_EPOCHS = 0.880  # MLP validation accuracy after 5 epochs, 8 seeds: 0.897-0.930 (mean 0.913, std 0.011)


def _fit(digits, epochs, seed=3, init_seed=0, **kw):
    torch.manual_seed(init_seed)
    m = DigitsMLP()
    d = digits.flat()
    Trainer(m, epochs=epochs, progress=False, seed=seed, **kw).fit((d.x_train, d.y_train))
    return m


@pytest.mark.trains
def test_training_learns(digits, seed, measured):
    m = _fit(digits, 5, seed=seed + 3, init_seed=seed + 3)
    acc = measured("MLP accuracy after 5 epochs", accuracy_of(m, digits.flat().x_val, digits.y_val), "lower")
    assert acc > TRAINER_ACC_5_EPOCHS  # 0.1 by chance


def test_resume_reproduces_an_uninterrupted_run(digits, tmp_path):
    full = _fit(digits, 3)
    # same run, stopped after one epoch (max_steps), then resumed from the checkpoint
    steps_per_epoch = int(np.ceil(len(digits.x_train) / 64))
    torch.manual_seed(0)
    m = DigitsMLP()
    d = digits.flat()
    Trainer(m, epochs=3, max_steps=steps_per_epoch + 5, progress=False, seed=3, checkpoint_dir=tmp_path).fit((d.x_train, d.y_train))
    torch.manual_seed(0)
    m2 = DigitsMLP()
    res = Trainer(m2, epochs=3, progress=False, seed=3, checkpoint_dir=tmp_path).fit((d.x_train, d.y_train))
    assert res.resumed_from == steps_per_epoch + 5 and res.steps == 3 * steps_per_epoch
    for (k, a), b in zip(full.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k


def test_deterministic_training_gives_the_same_weights_at_any_thread_count(digits):
    class Probe(Callback):
        def on_step_begin(self, trainer):
            seen.add((torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()))

    d = digits.flat()
    before = torch.get_num_threads()
    states = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            seen: set = set()
            torch.manual_seed(0)
            m = DigitsMLP()
            Trainer(m, max_steps=25, progress=False, seed=1, deterministic=True, callbacks=[Probe()]).fit(
                (d.x_train, d.y_train))
            assert seen == {(1, True)}  # one thread, deterministic algorithms, inside training
            assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
            states.append(m.state_dict())
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(states[0].values(), states[1].values(), strict=True))
    assert not torch.equal(states[0]["fc1.weight"], DigitsMLP().state_dict()["fc1.weight"])  # it did train


def test_deterministic_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("DEEPSHRINK_DETERMINISTIC", "1")
    assert Trainer(DigitsMLP()).deterministic and not Trainer(DigitsMLP(), deterministic=False).deterministic
    monkeypatch.setenv("DEEPSHRINK_DETERMINISTIC", "0")
    assert not Trainer(DigitsMLP()).deterministic


def test_callbacks_see_every_step(digits):
    class Count(Callback):
        def __init__(self):
            self.steps = 0

        def on_step_end(self, trainer, loss):
            self.steps += 1

    cb = Count()
    d = digits.flat()
    Trainer(DigitsMLP(), max_steps=7, callbacks=[cb], progress=False).fit((d.x_train, d.y_train))
    assert cb.steps == 7


def test_bf16_mixed_precision_runs_the_forward_pass_in_bfloat16_and_keeps_float32_weights(digits):
    d = digits.flat()
    runs = {}
    for mp in ("no", "bf16", "bf16"):
        torch.manual_seed(0)
        m = DigitsMLP()
        seen: set = set()
        hooks = [mod.register_forward_hook(lambda _m, _i, out, seen=seen: seen.add(out.dtype))
                 for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
        res = Trainer(m, epochs=5, progress=False, seed=0, mixed_precision=mp, deterministic=True).fit(
            (d.x_train, d.y_train))
        for h in hooks:
            h.remove()
        assert seen == ({torch.bfloat16} if mp == "bf16" else {torch.float32})
        assert {p.dtype for p in m.parameters()} == {torch.float32}
        assert all(isinstance(v, float) for v in res.losses)
        runs.setdefault(mp, []).append((m, accuracy_of(m, d.x_val, digits.y_val)))
    (fp32, acc32), = runs["no"]
    (a, acc_a), (b, _) = runs["bf16"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    # it trained differently from float32 (bfloat16 rounding), to the same accuracy: 5 seeds, 5 epochs, bf16 minus
    # float32 validation accuracy 0.000-+0.003
    assert (a.fc1.weight - fp32.fc1.weight).abs().max() > 1e-4
    assert abs(acc_a - acc32) < 0.02, (acc_a, acc32)
    with pytest.raises(InputError, match="mixed_precision 'fp16'"):
        Trainer(DigitsMLP(), mixed_precision="fp16")


def test_bad_settings_and_data():
    with pytest.raises(InputError, match="empty"):
        Trainer(DigitsMLP(), progress=False).fit((np.zeros((0, 64), np.float32), np.zeros(0, np.int64)))
    with pytest.raises(InputError, match="optimizer"):
        Trainer(DigitsMLP(), optimizer="lion", progress=False).fit((np.zeros((4, 64), np.float32), np.zeros(4, np.int64)))
    with pytest.raises(InputError, match="bad training settings"):
        Trainer(DigitsMLP(), lr=-1)


def test_runs_unchanged_under_torchrun(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent("""
        import sys, torch, torch.distributed as dist
        from deepshrink.examples import DigitsMLP, digits_data
        from deepshrink.train import Trainer, accuracy_of
        d = digits_data().flat()
        torch.manual_seed(0)
        m = DigitsMLP()
        Trainer(m, epochs=3, progress=False, seed=0, checkpoint_dir=sys.argv[1]).fit((d.x_train, d.y_train))
        acc = accuracy_of(m, d.x_val, d.y_val)
        w = m.fc1.weight.detach().clone()
        gathered = [torch.zeros_like(w) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, w)
        same = all(torch.equal(gathered[0], g) for g in gathered)
        print(f"RANK {dist.get_rank()} WORLD {dist.get_world_size()} ACC {acc:.4f} SAME {same}", flush=True)
        dist.barrier()  # neither rank tears gloo down while its peer still talks to it
        dist.destroy_process_group()
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    import socket

    with socket.socket() as sock:  # a free port: a fixed one can still be held by an earlier run
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                           str(script), str(tmp_path / "ckpt")], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the two ranks share one stdout pipe and their writes may interleave: find records, not lines
    lines = re.findall(r"RANK \d+ WORLD \d+ ACC \d\.\d{4} SAME (?:True|False)", proc.stdout)
    assert len(lines) == 2 and all("WORLD 2" in ln and "SAME True" in ln for ln in lines)  # replicas stay in sync
    accs = [float(ln.split("ACC ")[1].split()[0]) for ln in lines]
    # each rank saw half the data for 3 epochs: 0.816 seen on both (one model, kept in sync)
    assert min(accs) > 0.7 and accs[0] == accs[1], lines
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()  # written once, by rank 0


def test_cache_key_names_the_whole_recipe(monkeypatch):
    from deepshrink.examples.cache import cache_key

    a = cache_key("m", seed=0, epochs=30, lr=1e-3)
    assert a.startswith("m-seed0-") and a == cache_key("m", lr=1e-3, epochs=30, seed=0)
    others = {cache_key("m", seed=0, epochs=31, lr=1e-3), cache_key("m", seed=1, epochs=30, lr=1e-3),
              cache_key("m", seed=0, epochs=30, lr=2e-3)}
    monkeypatch.setattr(torch, "__version__", "0.0.0")  # another torch build: another file
    others.add(cache_key("m", seed=0, epochs=30, lr=1e-3))
    assert a not in others and len(others) == 4


def test_length_grouped_sampler_batches_similar_lengths_and_splits_ranks_like_one_process():
    from deepshrink.train import LengthGroupedSampler

    lengths = np.random.default_rng(0).integers(1, 129, 1000)  # 1000 = 31 batches of 32 + a short one of 8
    s = LengthGroupedSampler(lengths, 32, seed=3, pool=10)
    order = list(s)
    assert sorted(order) == list(range(1000))  # every sample once per epoch
    batches = [order[i:i + 32] for i in range(0, 1000, 32)]
    assert len(batches[-1]) == 8  # the short batch last: the others are full global batches
    # padded tokens per batch (longest × size) against a plain shuffle of the same data
    padded = sum(lengths[b].max() * len(b) for b in batches)
    perm = np.random.default_rng(1).permutation(1000)
    plain = sum(lengths[perm[i:i + 32]].max() * len(perm[i:i + 32]) for i in range(0, 1000, 32))
    assert padded < 0.6 * plain, (padded, plain, lengths.sum())
    assert list(LengthGroupedSampler(lengths, 32, seed=3, pool=10)) == order  # (seed, epoch) fixes the order
    s.set_epoch(1)
    assert list(s) != order
    s.set_epoch(0)
    # two ranks with the global batch 32: rank batches j of 16 together are exactly global batch j
    ranks = [list(LengthGroupedSampler(lengths, 32, seed=3, pool=10, world=2, rank=r)) for r in (0, 1)]
    assert all(len(r) == 500 for r in ranks)
    for j, b in enumerate(batches):
        assert sorted(ranks[0][16 * j:16 * j + 16] + ranks[1][16 * j:16 * j + 16]) == sorted(b)
    with pytest.raises(InputError, match="length grouping"):
        LengthGroupedSampler(lengths, 32, world=3)


def test_trainer_with_lengths_takes_every_sample_once(digits):
    d = digits.flat()
    seen = []

    def step(model, batch):
        seen.append(batch[0])
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    x, y = d.x_train[:100], d.y_train[:100]
    Trainer(DigitsMLP(), step_fn=step, batch_size=16, progress=False, lengths=list(range(100))).fit((x, y))
    got = torch.cat(seen).numpy()
    assert len(seen) == 7 and sorted(map(bytes, got)) == sorted(map(bytes, np.asarray(x)))
    with pytest.raises(InputError, match="lengths for"):
        Trainer(DigitsMLP(), progress=False, lengths=[1, 2]).fit((x, y))


class _TFPortClassifier(torch.nn.Module):
    """Conv → BatchNorm(momentum 0, as models ported from TensorFlow set it) → classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm1d(8, momentum=0.0)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x[:, None]))).mean(2))


def test_batchnorm_with_momentum_0_is_recalibrated_after_any_training():
    # the shared loop, so pruning's fine-tune and QAT get it too (distillation had it alone before)
    torch.manual_seed(0)
    model = _TFPortClassifier()
    x, y = torch.randn(96, 16), torch.randint(0, 3, (96,))
    res = Trainer(model, epochs=3, lr=1e-2, batch_size=32, progress=False, deterministic=True).fit((x, y))
    assert res.batchnorm_recalibrated == 1
    with torch.no_grad():
        feed = model.conv(x[:, None])  # what the BatchNorm reads under the trained weights
    assert torch.allclose(model.bn.running_mean, feed.mean((0, 2)), atol=1e-5)
    # the variance is the average of the 3 batches' own variances (BatchNorm's estimate), not the pooled one
    batch_vars = torch.stack([feed[i:i + 32].var((0, 2), unbiased=True) for i in range(0, 96, 32)]).mean(0)
    assert torch.allclose(model.bn.running_var, batch_vars, rtol=1e-4)
    assert model.bn.momentum == 0.0 and not model.training
    assert Trainer(DigitsMLP(), epochs=1, progress=False).fit((x.repeat(1, 4), y)).batchnorm_recalibrated == 0


def test_kd_step_reads_a_softmax_head_s_probabilities_as_their_logarithm():
    """A fine-tune's KD step (:func:`deepshrink.train.kd.kd_step`) on a model ending in softmax: the soft targets are
    the teacher's probabilities themselves (log-probabilities as logits), not a second softmax of them, which would
    flatten every row towards uniform."""
    from deepshrink.train.kd import frozen_copy, kd_step, soft_target_loss

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 4), nn.Softmax(dim=1))
    student = nn.Sequential(nn.Linear(6, 4), nn.Softmax(dim=1))
    x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))
    loss = kd_step(frozen_copy(teacher), temperature=2.0, alpha=1.0)(student, (x, y))
    with torch.no_grad():
        ps, pt = student(x), teacher(x)
    assert float(loss) == pytest.approx(float(soft_target_loss(ps.log(), pt.log(), 2.0)), rel=1e-5)
    assert abs(float(loss) - float(soft_target_loss(ps, pt, 2.0))) > 1e-3  # probabilities read as logits: another loss
    assert float(kd_step(frozen_copy(student), 2.0, 1.0)(student, (x, y))) == pytest.approx(0.0, abs=1e-6)
