"""Post-pruning reconstruction (``StructuredPruneConfig.reconstruct``, ``prune --reconstruct``): the pruned
layers' consumers re-fitted by ridge least squares to the unpruned outputs, layer by layer."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from deepshrink.cli._app import run_app
from deepshrink.examples import trained_digits_mlp
from deepshrink.prune import StructuredPruneConfig, prune_with_report
from deepshrink.prune.structured.reconstruct import mask_index, residual_block


def _tiny_bert(seed: int) -> nn.Module:
    from transformers import BertConfig, BertModel

    from deepshrink.examples.minilm import SentenceEncoder

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, attn_implementation="eager",
                     initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return SentenceEncoder(BertModel(cfg), normalize=False).eval()


def _tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, 12), generator=g)
    mask = torch.ones(n, 12, dtype=torch.int64)
    mask[n // 2:, 8:] = 0
    return ids, mask


def _rel(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float((ref - got).pow(2).sum() / ref.pow(2).sum())


def _bert_case(seed: int) -> tuple[float, float, list[dict]]:
    """Held-out relative error of the pruned tiny BERT's output without and with reconstruction."""
    from deepshrink.core.data import Dataset

    model = _tiny_bert(seed)
    calib = _tokens(256, seed)
    data = Dataset({"input_ids": calib[0].numpy(), "attention_mask": calib[1].numpy()})
    held = _tokens(64, seed + 100)
    with torch.no_grad():
        ref = model(*held)
    errs, fits = [], []
    for rec in (False, True):
        cfg = StructuredPruneConfig(ratio=0.5, heads_ratio=0.25, importance="activation", reconstruct=rec)
        pruned, rep = prune_with_report(copy.deepcopy(model), cfg, data=data, example_inputs=calib, batch_size=64,
                                        progress=False)
        with torch.no_grad():
            errs.append(_rel(ref, pruned(*held)))
        fits = rep.reconstructed
    return errs[0], errs[1], fits


def test_bert_reconstruction_reduces_every_layer_error_and_the_output_error():
    before, after, fits = _bert_case(0)
    # per layer: 2 blocks × (attention output dense, FFN output dense), in call order, each on the 1,664 real
    # tokens of the 256 calibration sequences (half of them padded from position 8)
    assert [f["module"] for f in fits] == [f"encoder.encoder.layer.{i}.{m}.dense" for i in (0, 1)
                                           for m in ("attention.output", "output")]
    assert all(f["tokens"] == 128 * 12 + 128 * 8 for f in fits)
    # calibration error of each layer after/before, 5 seeds × 4 layers: 0.142–0.709
    assert all(f["after"] < 0.8 * f["before"] for f in fits), fits
    # held-out output error (relative squared error to the unpruned model's embedding, 64 other sequences),
    # 5 seeds: pruned 0.163–0.305 → reconstructed 0.020–0.049, ratio after/before 0.089–0.217
    assert before > 0.1
    assert after < 0.35 * before


@pytest.mark.parametrize("seed", [1, 2])
def test_bert_reconstruction_helps_other_seeds(seed):
    before, after, _ = _bert_case(seed)
    assert after < 0.35 * before  # 5 seeds: ratio 0.089–0.217 (see above)


def test_mlp_with_scaled_twin_neurons_is_recovered_exactly():
    # hidden neurons 4..7 are 0.5× copies of 0..3 (ReLU is positively homogeneous), so removing them loses
    # nothing a refit of the output layer cannot give back: error → ~0, while plain removal loses their share
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        net[0].weight[4:] = 0.5 * net[0].weight[:4]
        net[0].bias[4:] = 0.5 * net[0].bias[:4]
        net[2].weight[:, 4:] = 0.5 * net[2].weight[:, :4]
    x = torch.randn(512, 6, generator=torch.Generator().manual_seed(1))
    held = torch.randn(128, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = net(held)
    errs = {}
    for rec in (False, True):
        cfg = StructuredPruneConfig(ratio=0.5, importance="l2", reconstruct=rec,
                                    **({"reconstruct_ridge": 1e-9} if rec else {}))
        pruned, rep = prune_with_report(copy.deepcopy(net), cfg, data=(x, torch.zeros(512)), example_inputs=(x,),
                                        progress=False)
        assert pruned[0].out_features == 4
        with torch.no_grad():
            errs[rec] = _rel(ref, pruned(held))
    (fit,) = rep.reconstructed
    assert fit["module"] == "2" and fit["tokens"] == 512
    assert errs[False] > 5e-3  # the twins' share of the output (measured 0.0138)
    assert errs[True] < 1e-10 and fit["after"] < 1e-10  # measured 1.6e-15 and 1.1e-15


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_out_proj_refitted(batch_first):
    # nn.MultiheadAttention's heads move into a HeadPrunedAttention whose out_proj reads (L, N, H·d) either way;
    # the targets come from the unpruned attention's (N, L, E) or (L, N, E) output: token order must agree
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=batch_first).eval()
    shape = (64, 6, 16) if batch_first else (6, 64, 16)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    held = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = layer(held)
    errs = {}
    for rec in (False, True):
        cfg = StructuredPruneConfig(ratio=0.0, heads_ratio=0.5, ffn_ratio=0.5, importance="activation", reconstruct=rec)
        pruned, rep = prune_with_report(copy.deepcopy(layer), cfg, example_inputs=(x,), progress=False)
        with torch.no_grad():
            errs[rec] = _rel(ref, pruned(held))
    assert [f["module"] for f in rep.reconstructed] == ["self_attn.out_proj", "linear2"]
    assert all(f["tokens"] == 384 and f["after"] < 0.8 * f["before"] for f in rep.reconstructed), rep.reconstructed
    # held-out relative error after/before, 5 seeds × both layouts: 0.526–0.631 (per layer 0.311–0.734)
    assert errs[True] < 0.8 * errs[False], errs


def test_mask_and_residual_found_by_signature():
    bert = _tiny_bert(0)
    assert mask_index(bert, 2) == 1
    assert mask_index(bert, 2, ["attention_mask", "input_ids"]) == 0
    assert mask_index(nn.Linear(2, 2), 1) is None
    layer = "encoder.encoder.layer.0"
    assert residual_block(bert, f"{layer}.output.dense") == f"{layer}.output"
    assert residual_block(bert, f"{layer}.intermediate.dense") is None


def test_reconstruct_on_a_model_with_nothing_to_prune_says_so():
    """Nothing prunable (one Linear, the output layer): the refusal says that, not that only convolutions read the
    removed channels (a new user's LSTM speaker encoder read "here only convolutions do ()")."""
    from deepshrink.errors import InputError

    x = torch.randn(16, 8)
    with pytest.raises(InputError, match="^structured pruning found no prunable channel group"):
        prune_with_report(nn.Sequential(nn.Linear(8, 4)), StructuredPruneConfig(ratio=0.5, reconstruct=True),
                          example_inputs=(x,), data=(x,))


def test_config_refuses_ridge_without_reconstruct():
    with pytest.raises(ValueError, match="only with reconstruct=True"):
        StructuredPruneConfig(ratio=0.5, reconstruct_ridge=0.1)


@pytest.fixture(scope="module")
def mlp_weights(tmp_path_factory, seed) -> str:
    path = tmp_path_factory.mktemp("w") / "mlp.safetensors"
    save_file({k: v.contiguous() for k, v in trained_digits_mlp(seed).state_dict().items()}, str(path))
    return str(path)


MLP = "deepshrink.examples:DigitsMLP"


def test_cli_reconstruct_reports_each_layer(mlp_weights, tmp_path, capsys):
    out = tmp_path / "mlp.pt2"
    rc = run_app(["prune", MLP, "-w", mlp_weights, "-o", str(out), "--method", "structured", "--sparsity", "0.5",
                  "--data", "digits:train", "--reconstruct", "--allow-degraded", "--repeats", "2", "--json"])
    assert rc == 0, capsys.readouterr().err
    fits = json.loads(capsys.readouterr().out)["report"]["reconstructed"]
    # fc2 (its inputs and outputs pruned: fitted to the kept outputs) then fc3, on the first 1,024 digits
    assert [f["module"] for f in fits] == ["fc2", "fc3"]
    assert all(f["tokens"] == 1024 and f["after"] < f["before"] for f in fits)
    out.unlink()
    rc = run_app(["prune", MLP, "-w", mlp_weights, "-o", str(out), "--method", "structured", "--sparsity", "0.5",
                  "--data", "digits:train", "--reconstruct", "--reconstruct-samples", "300", "--allow-degraded",
                  "--repeats", "2", "--json"])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads(capsys.readouterr().out)["report"]
    assert [f["tokens"] for f in rep["reconstructed"]] == [300, 300] and not rep["warnings"]
    out.unlink()
    rc = run_app(["prune", MLP, "-w", mlp_weights, "-o", str(out), "--method", "structured", "--sparsity", "0.5",
                  "--data", "digits:val", "--reconstruct", "--reconstruct-samples", "5000", "--allow-degraded",
                  "--repeats", "2", "--json"])  # more than the data holds: said, not silent
    assert rc == 0, capsys.readouterr().err
    rep = json.loads(capsys.readouterr().out)["report"]
    got = rep["reconstructed"][0]["tokens"]
    assert got < 5000 and rep["warnings"] == [f"reconstruct_samples 5000: the data holds {got} samples for it, so "
                                              f"the layers were re-fitted on {got}"]


@pytest.mark.parametrize(("args", "says"), [
    (["--method", "structured", "--sparsity", "0.5", "--reconstruct"], "--reconstruct needs --data"),
    (["--method", "structured", "--sparsity", "0.5", "--data", "digits:train", "--reconstruct-ridge", "0.1"],
     "apply only with --reconstruct"),
    (["--method", "structured", "--sparsity", "0.5", "--data", "digits:train", "--reconstruct-samples", "64"],
     "apply only with --reconstruct"),
    (["--method", "structured", "--sparsity", "0.5", "--data", "digits:train", "--reconstruct",
      "--reconstruct-samples", "0"], "reconstruct_samples"),
    (["--method", "structured", "--sparsity", "0.5", "--data", "digits:train", "--reconstruct",
      "--reconstruct-ridge", "0"], "reconstruct_ridge"),
    (["--method", "magnitude", "--sparsity", "0.5", "--data", "digits:train", "--reconstruct"], "--reconstruct"),
])
def test_cli_bad_reconstruct_input(mlp_weights, tmp_path, capsys, args, says):
    out = tmp_path / "mlp.pt2"
    assert run_app(["prune", MLP, "-w", mlp_weights, "-o", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and "Traceback" not in err, err
    assert not out.exists()
