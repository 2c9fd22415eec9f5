"""Keras / SavedModel → ONNX (tf2onnx) and the seeds' chain TF → ONNX → PyTorch on a Keras CNN
trained on digits: the imported PyTorch model's accuracy equals the Keras model's."""

from __future__ import annotations

import pytest
import torch

import deepshrink as ds
from deepshrink.cli._app import run_app

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

# Thresholds on figures that depend on the trained models, derived by benchmarks/seed_spread.py (8 seeds, see
# tests/README.md): upper bound max(mean + 3 std, worst + margin), lower bound min(mean - 3 std, worst - margin).
KERAS_ACC_2_EPOCHS = 0.809  # Keras CNN accuracy after 2 epochs, 8 seeds: 0.850-0.928 (mean 0.896, std 0.029)


@pytest.fixture(scope="module")
def keras_cnn(tmp_path_factory, digits, seed):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    m = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.BatchNormalization(momentum=0.8),  # stats settle within 2 epochs
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])
    m.compile(optimizer=keras.optimizers.Adam(3e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(digits.x_train.transpose(0, 2, 3, 1), digits.y_train, epochs=2, batch_size=16, verbose=0)
    path = tmp_path_factory.mktemp("keras") / "digits.keras"
    m.save(path)
    return m, path


@pytest.mark.trains
def test_keras_onnx_torch_chain_keeps_accuracy(keras_cnn, digits, tmp_path, measured):
    model, path = keras_cnn
    acc_keras = float((model.predict(digits.x_test.transpose(0, 2, 3, 1), verbose=0).argmax(1) == digits.y_test).mean())
    measured("Keras CNN accuracy after 2 epochs", acc_keras, "lower")
    res = ds.convert(path, tmp_path / "k.onnx", nchw=True)  # ONNX takes NCHW like the PyTorch world
    assert res.hops[0].parity.max_abs < 1e-4  # 1.9e-06 seen
    res2 = ds.convert(tmp_path / "k.onnx", tmp_path / "k.pt2")
    assert res2.hops[0].parity.max_abs < 1e-4  # 1.9e-06 seen
    from deepshrink.convert.onnx2torch import onnx_to_torch

    gm = onnx_to_torch(tmp_path / "k.onnx")
    with torch.no_grad():
        acc_torch = float((gm(torch.from_numpy(digits.x_test)).argmax(1).numpy() == digits.y_test).mean())
    assert acc_keras > KERAS_ACC_2_EPOCHS
    assert acc_torch == acc_keras  # equal, sample for sample


def test_via_onnx_cli_and_saved_model(keras_cnn, tmp_path, digits):
    model, path = keras_cnn
    out = tmp_path / "k.pt2"
    assert run_app(["convert", str(path), str(out), "--via", "onnx"]) == 0 and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pt2"]  # no intermediate ONNX left
    sm = tmp_path / "saved"
    model.export(str(sm), verbose=False)
    res = ds.convert(sm, tmp_path / "sm.onnx")
    assert res.hops[0].parity.max_abs < 1e-4  # ~2e-06 seen
    h = ds.load(tmp_path / "sm.onnx")
    assert h.inputs[0].shape[1:] == (8, 8, 1)  # Keras' own NHWC layout without nchw=True


def test_bad_keras_inputs(tmp_path, capsys):
    import keras

    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"PK\x03\x04 truncated")
    assert run_app(["convert", str(bad), str(tmp_path / "o.onnx")]) == 2
    assert "not a readable Keras model" in capsys.readouterr().err
    # a Lambda layer is Python code: refused without --trust-remote-code
    m = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2.0)])
    lam = tmp_path / "lam.keras"
    m.save(lam)
    assert run_app(["convert", str(lam), str(tmp_path / "o.onnx")]) == 2
    assert "trust-remote-code" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()
    assert run_app(["convert", str(tmp_path / "nope.keras"), str(tmp_path / "o.onnx")]) == 2
