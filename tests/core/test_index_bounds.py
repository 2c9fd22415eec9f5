"""Random inputs for token ids stay inside the table they index (parity, calibration, timing)."""

import numpy as np
import torch

import deepshrink as ds
from deepshrink.backends.onnx import index_bounds


class _Tok(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(17, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


def test_ids_into_a_17_row_table_are_drawn_below_17(tmp_path):
    x = np.random.default_rng(0).integers(0, 17, (2, 12)).astype(np.int64)
    path = tmp_path / "tok.onnx"
    ds.convert(ds.load(_Tok().eval(), data={"ids": x}), path)
    h = ds.load(path)
    assert h.index_bounds == {"ids": 17} == index_bounds(h.model)
    ids = h.sample_inputs(batch=64, seed=3)["ids"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 17 and len(np.unique(ids)) > 10
    res = ds.convert(path, tmp_path / "tok.pt2")  # the parity check feeds such ids: ORT no longer refuses them
    assert res.hops[0].parity.ok


def test_input_shape_with_data_keeps_the_datas_integer_dtype(tmp_path):
    ids = np.random.default_rng(1).integers(0, 17, (8, 12)).astype(np.int64)
    h = ds.load(_Tok().eval(), input_shapes=["ids:1x12"], data={"ids": ids})
    assert h.inputs[0].dtype == "int64" and h.example_inputs["ids"].dtype == np.int64
    res = ds.convert(h, tmp_path / "tok.onnx")
    assert res.hops[0].parity.ok and ds.load(tmp_path / "tok.onnx").inputs[0].dtype == "int64"


def test_random_attention_masks_are_right_padded_like_a_tokenizer_s():
    """Random inputs drawn after a padded example batch: each mask row is ones then zeros (lengths vary), never
    independent 0/1 draws — those put holes inside a sentence, which a fused attention kernel reads as a shorter
    sentence, and `optimize --fuse transformer` on a Hugging Face folder judged the correct fused MiniLM at cosine
    0.086 without --data."""
    from deepshrink.core.handle import ModelHandle, TensorSpec

    ids = np.array([[101, 7, 8, 102, 0, 0], [101, 5, 6, 7, 8, 102]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    specs = [TensorSpec("input_ids", ("batch", "sequence"), "int64"), TensorSpec("attention_mask", ("batch", "sequence"), "int64")]
    h = ModelHandle(None, "onnx", specs, [], example_inputs={"input_ids": ids, "attention_mask": mask})
    drawn = h.sample_inputs(batch=256, seed=3)["attention_mask"]
    assert drawn.shape == (256, 6) and drawn.dtype == np.int64
    lengths = drawn.sum(1)
    assert (drawn == (np.arange(6)[None, :] < lengths[:, None])).all()  # a prefix of ones in every row
    assert lengths.min() >= 1 and len(np.unique(lengths)) == 6  # every length from 1 to 6 drawn


class _TwoTables(torch.nn.Module):
    """x[:, 0] indexes a 9-row table, x[:, 1] a 500-row one (attacut's characters and syllables)."""

    def __init__(self):
        super().__init__()
        self.small, self.big = torch.nn.Embedding(9, 4), torch.nn.Embedding(500, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head((self.small(x[:, 0]) + self.big(x[:, 1])).mean(1))


def test_random_ids_keep_each_channel_in_the_range_its_data_has(tmp_path):
    """Trial u (attacut, a Thai segmenter): every route from the PyTorch model failed its parity check with "index
    out of range in self" — the random samples drew every position over the whole array's range (0..6,220), so
    character ids ran past their 139-row table. Each position now takes a value the data has there."""
    rng = np.random.default_rng(0)
    x = np.stack([rng.integers(0, 9, (16, 10)), rng.integers(0, 500, (16, 10))], axis=1).astype(np.int64)
    h = ds.load(_TwoTables().eval(), input_shapes=["x:1x2x10"], data={"x": x})
    drawn = h.sample_inputs(batch=64, seed=3)["x"]
    assert drawn.shape == (64, 2, 10) and drawn.dtype == np.int64
    assert drawn[:, 0].max() < 9 and drawn[:, 1].max() > 100  # each channel in its own range, still varied
    res = ds.convert(h, tmp_path / "t.onnx")
    assert res.hops[0].parity.ok


def test_input_shape_gives_an_element_type(tmp_path, capsys, monkeypatch):
    """Trial u: a model whose input is ids had no way to say so without --data (`x:1x2x64:int64` was read as an
    input named 'x:1x2x64'), and the error was torch's FloatTensor line alone."""
    import pytest

    from deepshrink.errors import InputError
    from deepshrink.loading import parse_input_dtypes, parse_input_shapes

    assert parse_input_shapes(["ids:1x12:int64", "m:1x12"]) == {"ids": (1, 12), "m": (1, 12)}
    assert parse_input_dtypes(["ids:1x12:int64", "m:1x12", "1x3:bool"]) == {"ids": "int64", "": "bool"}
    with pytest.raises(InputError, match="'long' is not an element type deepshrink knows"):
        parse_input_shapes(["ids:1x12:long"])
    h = ds.load(_Tok().eval(), input_shapes=["ids:1x12:int64"])
    assert h.inputs[0].dtype == "int64" and h.example_inputs["ids"].max() < 17
    ds.convert(h, tmp_path / "tok.onnx")
    with pytest.raises(InputError, match=r"the ONNX file's input is ids: int64\[batchx12\], not float32"):
        ds.load(tmp_path / "tok.onnx", input_shapes=["ids:1x12:float32"])
    with pytest.raises(InputError, match=r"if ids holds ids, give its element type \(--input-shape ids:DIMS:int64\)"):
        ds.load(_Tok().eval(), input_shapes=["ids:1x12"])
    # bench gives a PyTorch model the data's arrays (and so their dtype) under --input-shape
    from cli_helpers import run_cli

    np.savez(tmp_path / "d.npz", ids=np.random.default_rng(0).integers(0, 17, (8, 12)))
    torch.save(_Tok().state_dict(), tmp_path / "w.pt")
    (tmp_path / "tokmod.py").write_text("import torch\n\n\nclass Tok(torch.nn.Module):\n    def __init__(self):\n"
                                        "        super().__init__()\n        self.emb = torch.nn.Embedding(17, 8)\n"
                                        "        self.head = torch.nn.Linear(8, 3)\n\n    def forward(self, ids):\n"
                                        "        return self.head(self.emb(ids).mean(1))\n")
    monkeypatch.chdir(tmp_path)  # a module:factory is imported from the working folder
    rc, out, err = run_cli(capsys, "bench", "tokmod:Tok", tmp_path / "tok.onnx", "-w", tmp_path / "w.pt",
                           "--input-shape", "ids:1x12", "--data", tmp_path / "d.npz", "--repeats", "1")
    assert rc == 0 and "tok.onnx" in out, err
