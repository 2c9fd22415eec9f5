import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file

import deepshrink as ds
from deepshrink.errors import InputError, UnsupportedError
from deepshrink.examples import DigitsMLP
from deepshrink.loading import parse_input_shapes


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        from deepshrink.examples import DigitsMLP
        def mlp():
            return DigitsMLP()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_models:mlp"
    sys.modules.pop("my_models", None)


def test_parse_input_shapes():
    assert parse_input_shapes(["x:1x3x224x224", "m:2,5"]) == {"x": (1, 3, 224, 224), "m": (2, 5)}
    assert parse_input_shapes(["1x64"]) == {"": (1, 64)}
    for bad in ("x:", "x:0x3", "x:a-bx3", "x:seq=0x3", "x:2x?x8"):
        with pytest.raises(InputError, match="--input-shape"):
            parse_input_shapes([bad])


def test_parse_input_shapes_named_axes():
    """A name in place of a size marks a dynamic axis (ONNX named dims); NAME=SIZE sets the traced size;
    commas separate names that contain an 'x'; the API's dict form is checked the same way."""
    assert parse_input_shapes(["x:2xseqx8"]) == {"x": (2, "seq", 8)}
    assert parse_input_shapes(["x:2xseq=12x8"]) == {"x": (2, "seq=12", 8)}
    assert parse_input_shapes(["ids:1,max_len"]) == {"ids": (1, "max_len")}
    assert parse_input_shapes({"x": (2, "seq", 8)}) == {"x": (2, "seq", 8)}
    for bad in ({"x": (2, "s q", 8)}, {"x": "2x8"}, {"x": (0, 3)}, {"x": (2, True)}, {"x": ()}):
        with pytest.raises(InputError, match="input_shapes"):
            parse_input_shapes(bad)


def test_factory_with_safetensors_and_state_dict(tmp_path, factory_module, digits_mlp, rng):
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in digits_mlp.state_dict().items()}, str(st))
    pt = tmp_path / "w.pt"
    torch.save(digits_mlp.state_dict(), pt)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    ref = digits_mlp(torch.from_numpy(x)).detach().numpy()
    for w in (st, pt):
        h = ds.load(factory_module, weights=str(w), input_shapes=["x:1x64"])
        assert h.kind == "torch" and h.input_names == ["x"] and h.inputs[0].shape == ("batch", 64)
        out = h.model(torch.from_numpy(x)).detach().numpy()
        assert np.abs(out - ref).max() == 0.0


def test_weights_that_do_not_fit(tmp_path, factory_module):
    st = tmp_path / "w.safetensors"
    save_file({"fc1.weight": torch.zeros(3, 3), "extra.bias": torch.zeros(2)}, str(st))
    with pytest.raises(InputError, match="does not fit the model") as err:
        ds.load(factory_module, weights=str(st))
    # the shape mismatch first, then what is missing and what is extra, each counted (torch's own message was cut
    # at 300 characters, before the shapes, for a model with many tensors)
    msg = str(err.value)
    assert "1 shape(s) differ (file vs model): fc1.weight (3, 3) vs (" in msg
    assert "of the model's tensors missing: fc1.bias" in msg and "1 tensors the model does not have: extra.bias" in msg
    assert msg.index("shape(s) differ") < msg.index("missing") < msg.index("does not have")


def test_nan_weights_are_refused(tmp_path, factory_module):
    m = DigitsMLP()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    state["fc2.weight"][0, 0] = float("nan")
    st = tmp_path / "nan.safetensors"
    save_file(state, str(st))
    with pytest.raises(InputError, match="fc2.weight.*NaN"):
        ds.load(factory_module, weights=str(st))


def test_truncated_weights_file(tmp_path, factory_module):
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in DigitsMLP().state_dict().items()}, str(st))
    st.write_bytes(st.read_bytes()[:100])
    with pytest.raises(InputError, match="cannot be read"):
        ds.load(factory_module, weights=str(st))


def test_pickled_whole_model_needs_trust(tmp_path, digits_mlp):
    path = tmp_path / "whole.pt"
    torch.save(digits_mlp, path)
    with pytest.raises(InputError, match="--trust-remote-code"):
        ds.load(str(path))
    h = ds.load(str(path), trust_remote_code=True, input_shapes=["x:1x64"])
    assert h.kind == "torch"


def test_pt2_round_trip_and_pickle_refusal(tmp_path, digits_cnn, rng):
    h = ds.load(digits_cnn, input_shapes=["x:1x1x8x8"])
    path = tmp_path / "cnn.pt2"
    back = ds.save(h, path)
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    ref = digits_cnn(torch.from_numpy(x)).detach().numpy()
    out = back.model(torch.from_numpy(x)).detach().numpy()
    assert back.input_names == ["x"] and np.abs(out - ref).max() < 1e-5  # dynamic batch: 4 ≠ export's 1
    # an archive whose weights are pickles would run code on load
    import json
    import zipfile

    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(evil, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item.endswith("model_weights_config.json"):
                cfg = json.loads(data)
                next(iter(cfg["config"].values()))["use_pickle"] = True
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    with pytest.raises(InputError, match="pickle"):
        ds.load(str(evil))
    truncated = tmp_path / "trunc.pt2"
    truncated.write_bytes(path.read_bytes()[:500])
    with pytest.raises(InputError, match="truncated|not a torch.export"):
        ds.load(str(truncated))


def test_onnx_external_data_inside_and_escaping(tmp_path, cnn_onnx):
    model = onnx.load(str(cnn_onnx))
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save_model(model, str(folder / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=0)
    h = ds.load(str(folder / "ext.onnx"))
    assert h.kind == "onnx" and h.input_names == ["x"]
    from deepshrink.evaluate import file_size

    assert file_size(folder / "ext.onnx") > (folder / "ext.onnx").stat().st_size  # side file counted
    # a location that climbs out of the model's folder is refused
    evil = onnx.load(str(folder / "ext.onnx"), load_external_data=False)
    for t in evil.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../etc/passwd"
    onnx.save_model(evil, str(folder / "evil.onnx"))
    with pytest.raises(InputError, match="escapes the model's folder"):
        ds.load(str(folder / "evil.onnx"))


def test_onnx_truncated_and_missing(tmp_path, cnn_onnx):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(cnn_onnx.read_bytes()[: cnn_onnx.stat().st_size // 3])
    with pytest.raises(InputError, match="bad.onnx"):
        ds.load(str(bad))
    with pytest.raises(InputError, match="does not exist"):
        ds.load(str(tmp_path / "nope.onnx"))


def test_unknown_sources(tmp_path):
    with pytest.raises(InputError, match="not found"):
        ds.load(str(tmp_path / "model.bin2"))
    (tmp_path / "w.safetensors").write_bytes(b"x")
    with pytest.raises(InputError, match="module:factory"):
        ds.load(str(tmp_path / "w.safetensors"))
    with pytest.raises(InputError, match="cannot import"):
        ds.load("no_such_pkg_xyz:factory")
    (tmp_path / "k.keras").write_bytes(b"x")
    with pytest.raises(UnsupportedError, match="deepshrink convert"):
        ds.load(str(tmp_path / "k.keras"))


def test_hf_folder_loads_offline_with_tokenizer(minilm_dir):
    h = ds.load(str(minilm_dir))
    assert h.input_names == ["input_ids", "attention_mask"]
    assert h.inputs[0].shape == ("batch", "sequence")
    assert h.output_names == ["sentence_embedding"]
    assert h.tokenizer_dir == minilm_dir
    out = h.model(*(torch.from_numpy(h.example_inputs[n]) for n in h.input_names))
    assert out.shape == (2, 384) and abs(float(out.detach().norm(dim=1).mean()) - 1.0) < 1e-5  # normalised


def test_a_pruned_hf_model_s_weights_load_back_on_its_folder(tmp_path, minilm_dir):
    """``save(x.safetensors)`` of a structurally pruned Hugging Face model, then ``load(folder, weights=x)``:
    the folder's model re-shaped to the pruned layers, the same outputs, and each attention module's kept
    heads as the pruning noted them (attention-map distillation reads them). The folder's own checkpoint and a
    pruned state dict saved by hand load too; a state dict of another model is refused, naming what differs."""
    import copy

    from safetensors.torch import save_file

    from deepshrink.prune import StructuredPruneConfig
    from deepshrink.prune.structured import structured_prune

    h = ds.load(str(minilm_dir))
    ids, mask = (torch.from_numpy(h.example_inputs[n]) for n in h.input_names)
    pruned = copy.deepcopy(h.model)
    structured_prune(pruned, StructuredPruneConfig(ratio=0.5, heads_ratio=0.25), (ids, mask))
    kept = {n: m.deepshrink_kept_heads for n, m in pruned.named_modules() if hasattr(m, "deepshrink_kept_heads")}
    assert len(kept) == 6 and all(len(v) == 9 for v in kept.values())
    ds.save(pruned, tmp_path / "p.safetensors")
    back = ds.load(str(minilm_dir), weights=str(tmp_path / "p.safetensors"))
    assert sum(p.numel() for p in back.model.parameters()) == sum(p.numel() for p in pruned.parameters())
    assert {n: m.deepshrink_kept_heads for n, m in back.model.named_modules()
            if hasattr(m, "deepshrink_kept_heads")} == kept
    with torch.no_grad():
        assert torch.allclose(back.model(ids, mask), pruned.eval()(ids, mask), atol=1e-6)
    # the same tensors saved by hand (no deepshrink header): re-shaped as well, the kept heads unknown
    save_file({k: v.contiguous() for k, v in pruned.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    plain = ds.load(str(minilm_dir), weights=str(tmp_path / "plain.safetensors"))
    assert not any(hasattr(m, "deepshrink_kept_heads") for m in plain.model.modules())
    with torch.no_grad():
        assert torch.allclose(plain.model(ids, mask), pruned(ids, mask), atol=1e-6)
    # the folder's own Hugging Face checkpoint: its names lack the wrapper's prefix, it holds position_ids
    own = ds.load(str(minilm_dir), weights=str(minilm_dir / "model.safetensors"))
    with torch.no_grad():
        assert torch.allclose(own.model(ids, mask), h.model(ids, mask), atol=1e-6)
    mlp = tmp_path / "mlp.safetensors"
    save_file({"fc1.weight": torch.zeros(4, 4)}, str(mlp))
    with pytest.raises(InputError, match="does not fit the model: .*missing"):
        ds.load(str(minilm_dir), weights=str(mlp))


def test_save_as_onnx_and_pt2_guard_errors(tmp_path, digits_mlp, rng):
    h = ds.load(digits_mlp, input_shapes=["x:1x64"])
    back = ds.save(h, tmp_path / "m.onnx")
    assert back.kind == "onnx" and back.input_names == ["x"]
    ds.save(h, tmp_path / "m.pt2")
    np.savez(tmp_path / "wrong.npz", x=rng.standard_normal((3, 32)).astype(np.float32))
    with pytest.raises(InputError, match="failed on inputs"):
        ds.load(str(tmp_path / "m.pt2"), data=str(tmp_path / "wrong.npz"))


def test_torch_model_input_dtype_comes_from_the_data(tmp_path):
    """A bare module's input dtype is unknown until data arrives: integer token ids stay integers
    (from a file and from a dict), float data becomes float32."""
    import torch
    from torch import nn

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 8)
            self.out = nn.Linear(8, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.out(self.emb(ids).mean(1))

    ids = np.random.default_rng(0).integers(0, 50, (6, 12)).astype(np.int64)
    np.savez(tmp_path / "ids.npz", ids=ids)
    for data in (str(tmp_path / "ids.npz"), {"ids": ids}):
        h = ds.load(Tagger(), data=data)
        assert h.inputs[0].dtype == "int64" and h.inputs[0].shape == ("batch", 12)
        assert h.example_inputs["ids"].dtype == np.int64
    bare = ds.load(Tagger())
    assert bare.inputs[0].dtype == "any"
    from deepshrink.core.data import load_data

    assert load_data({"ids": ids}, bare).inputs["ids"].dtype == np.int64  # kept, not cast to float32
    assert load_data({"ids": ids.astype(np.float64)}, bare).inputs["ids"].dtype == np.float32


def test_forward_parameters_with_defaults_are_inputs_only_when_given(tmp_path, monkeypatch):
    # trial 15i: torchcrepe's forward(x, embed=False) made `embed` a required input that no shape can describe
    (tmp_path / "opt_models.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(16, 4)
            def forward(self, x, scale=None, embed=False):
                y = self.fc(x)
                return y if scale is None else y * scale
        def net():
            return Net()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        h = ds.load("opt_models:net", input_shapes={"x": (1, 16)})
        assert h.input_names == ["x"]
        ds.convert(h, tmp_path / "a.onnx")
        assert [i.name for i in onnx.load(str(tmp_path / "a.onnx")).graph.input] == ["x"]
        np.savez(tmp_path / "d.npz", x=np.ones((4, 16), np.float32))
        assert ds.load("opt_models:net", data=str(tmp_path / "d.npz")).input_names == ["x"]
        # named: an input again, and the one before it stays (inputs are passed by position)
        h2 = ds.load("opt_models:net", input_shapes={"x": (1, 16), "scale": (1, 4)})
        assert h2.input_names == ["x", "scale"]
    finally:
        sys.modules.pop("opt_models", None)
