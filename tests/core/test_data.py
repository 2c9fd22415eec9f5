import numpy as np
import pytest

import deepshrink as ds
from deepshrink.core.data import load_data
from deepshrink.errors import InputError


@pytest.fixture(scope="module")
def mlp_handle(digits_mlp):
    return ds.load(digits_mlp, input_shapes=["x:1x64"])


def test_npz_named_and_lone_array(tmp_path, mlp_handle, rng):
    x = rng.standard_normal((10, 64))  # float64: cast to the model's float32
    np.savez(tmp_path / "a.npz", x=x, labels=np.arange(10))
    d = load_data(str(tmp_path / "a.npz"), mlp_handle)
    assert d.inputs["x"].dtype == np.float32 and len(d) == 10 and list(d.labels) == list(range(10))
    np.savez(tmp_path / "b.npz", images=x)  # a lone array feeds a lone input whatever its name
    assert load_data(str(tmp_path / "b.npz"), mlp_handle).inputs["x"].shape == (10, 64)


def test_a_lone_array_under_another_name_is_said_once(tmp_path, mlp_handle, rng, caplog):
    np.savez(tmp_path / "k.npz", not_the_input=rng.standard_normal((4, 64)))
    with caplog.at_level("WARNING", logger="deepshrink"):
        for _ in range(2):
            assert load_data(str(tmp_path / "k.npz"), mlp_handle).inputs["x"].shape == (4, 64)
    said = [r.getMessage() for r in caplog.records if "not_the_input" in r.getMessage()]
    assert len(said) == 1 and "input 'x'" in said[0], said
    caplog.clear()
    np.savez(tmp_path / "named.npz", x=rng.standard_normal((4, 64)))
    with caplog.at_level("WARNING", logger="deepshrink"):
        load_data(str(tmp_path / "named.npz"), mlp_handle)
    assert not caplog.records


def test_digits_builtin_reshapes_for_mlp(mlp_handle):
    d = load_data("digits:test", mlp_handle)
    assert d.inputs["x"].shape == (360, 64) and d.labels is not None and len(d.labels) == 360


def test_mismatches_are_one_clear_error(tmp_path, mlp_handle, rng):
    np.savez(tmp_path / "wrong.npz", x=rng.standard_normal((4, 32)).astype(np.float32))
    with pytest.raises(InputError, match=r"shape \[4, 32\].*x: float32\[batchx64\]"):
        load_data(str(tmp_path / "wrong.npz"), mlp_handle)
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 64), np.float32))
    with pytest.raises(InputError, match="empty"):
        load_data(str(tmp_path / "empty.npz"), mlp_handle)
    np.savez(tmp_path / "nan.npz", x=np.full((2, 64), np.nan, np.float32))
    with pytest.raises(InputError, match="NaN"):
        load_data(str(tmp_path / "nan.npz"), mlp_handle)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot be read"):
        load_data(str(tmp_path / "junk.npz"), mlp_handle)
    with pytest.raises(InputError, match="does not exist"):
        load_data(str(tmp_path / "missing.npz"), mlp_handle)
    (tmp_path / "adir.npz").mkdir()
    with pytest.raises(InputError, match="adir.npz is a directory"):
        load_data(str(tmp_path / "adir.npz"), mlp_handle)
    with pytest.raises(InputError, match="no tokenizer"):
        (tmp_path / "t.txt").write_text("hello\n")
        load_data(str(tmp_path / "t.txt"), mlp_handle)
    with pytest.raises(InputError, match="split"):
        load_data("digits:nope", mlp_handle)


def test_text_file_uses_the_models_tokenizer(tmp_path, minilm_dir):
    h = ds.load(str(minilm_dir))
    (tmp_path / "lines.txt").write_text("first sentence here\n\nsecond one, a little longer than the first\n")
    d = load_data(str(tmp_path / "lines.txt"), h)
    assert sorted(d.inputs) == ["attention_mask", "input_ids"] and len(d) == 2
    assert d.inputs["attention_mask"][0].sum() < d.inputs["attention_mask"][1].sum()


def test_fractional_data_for_an_integer_input_and_scalar_arrays_are_refused(tmp_path):
    import numpy as np
    import pytest

    from deepshrink.core.data import Dataset, load_data
    from deepshrink.core.handle import ModelHandle, TensorSpec
    from deepshrink.errors import InputError

    h = ModelHandle(None, "onnx", [TensorSpec("ids", ("batch", 4), "int32")])
    with pytest.raises(InputError, match="'ids' holds fractional values .* casting would change them"):
        load_data({"ids": np.random.default_rng(0).random((3, 4))}, h)
    ok = load_data({"ids": np.arange(12, dtype=np.float64).reshape(3, 4)}, h)  # whole numbers: cast is exact
    assert ok.inputs["ids"].dtype == np.int32 and ok.inputs["ids"][2, 3] == 11
    with pytest.raises(InputError, match="'sr' is a scalar"):
        Dataset({"x": np.zeros((2, 3)), "sr": np.array(16000)})


def test_wide_sentences_are_training_text_apart_from_the_evaluation_sentences(minilm_dir):
    from deepshrink.examples.text import _split, stdlib_sentences, training_sentences

    h = ds.load(str(minilm_dir))
    d = load_data("sentences:wide:300", h, max_length=16)
    assert len(d) == 300 and d.source == "sentences:wide:300" and d.inputs["input_ids"].shape[1] <= 16
    wide = training_sentences(6000)  # the stdlib part, then the first package sentences
    assert not set(wide) & set(stdlib_sentences(offset=1000))  # what sentences:N evaluates on
    assert wide[:300] == training_sentences(300) and len(set(wide)) == 6000
    out: list[str] = []
    _split("Parameters ---------- x : array_like Input data. Compute the mean of the input along the axis. "
           "See :func:`numpy.sum` for the sum of elements.", set(), out, 6, 40, strict=True)
    assert out == ["Compute the mean of the input along the axis."]  # numpydoc rules and reST roles left out
    for bad in ("wider", "wide:x", "wide:0", "many"):
        with pytest.raises(InputError, match="sentences"):
            load_data(f"sentences:{bad}", h)


def test_arrays_as_the_training_verbs_take_them(cnn_onnx):
    """``(x, labels)`` — the form ``prune(..., data=(x, y))`` takes — is data for every verb (helper trial: passing it
    to the ONNX import tried it as a file name and printed the whole array in the error)."""
    h = ds.load(cnn_onnx)
    x, y = np.zeros((5, 1, 8, 8), np.float32), np.arange(5)
    d = load_data((x, y), h)
    assert list(d.inputs) == ["x"] and d.inputs["x"].shape == (5, 1, 8, 8) and list(d.labels) == [0, 1, 2, 3, 4]
    assert load_data((x,), h).labels is None
    with pytest.raises(InputError, match="3 arrays; the model takes 1 input"):
        load_data((x, y, y), h)


def test_uint8_pixels_for_a_float_input_are_cast_and_said(tmp_path):
    """uint8 images given to a float input usually mean pixels not normalised: cast as they are (some models
    read 0–255), with one warning; arrays of 0 and 1 (masks) pass quietly."""
    import warnings

    from deepshrink.core.handle import ModelHandle, TensorSpec

    h = ModelHandle(None, "onnx", [TensorSpec("images", ("batch", 3, 4, 4), "float32")])
    px = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4)).astype(np.uint8)
    with pytest.warns(UserWarning, match=r"'images' is uint8 \(values \d+–\d+\) .* divided by 255"):
        d = load_data({"images": px}, h)
    assert d.inputs["images"].dtype == np.float32 and np.array_equal(d.inputs["images"], px.astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_data({"images": (px > 127).astype(np.uint8)}, h)
