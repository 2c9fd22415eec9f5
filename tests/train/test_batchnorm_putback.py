"""BatchNorm put back into an ONNX import for training and folded again (``deepshrink.train.batchnorm``): the
model computes what it did after the insertion and after the fold, and the fold leaves the file's structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture
def imported_cnn(cnn_onnx):
    import deepshrink as ds
    from deepshrink.convert.onnx2torch.route import trainable_handle

    return trainable_handle(ds.load(cnn_onnx)).model


def _call_modules(gm):
    mods = dict(gm.named_modules())
    return [type(mods[str(n.target)]).__name__ for n in gm.graph.nodes if n.op == "call_module"]


def test_inserted_batchnorm_is_the_identity_and_folds_back(imported_cnn, digits):
    from deepshrink.train import Trainer
    from deepshrink.train.batchnorm import fold_batchnorm, insert_batchnorm

    gm = imported_cnn
    x = torch.from_numpy(digits.x_train[:256])
    with torch.no_grad():
        before = gm(x)
    structure = _call_modules(gm)
    pairs = insert_batchnorm(gm, [(x[i:i + 64],) for i in range(0, 256, 64)])
    assert len(pairs) == 4 and _call_modules(gm).count("BatchNorm2d") == 4  # the digits CNN's 4 convolutions
    gm.eval()
    with torch.no_grad():  # set from the data: in eval mode each BatchNorm is exactly the identity
        assert float((gm(x) - before).abs().max()) < 1e-4
    Trainer(gm, epochs=1, lr=1e-3, batch_size=64, seed=0, progress=False).fit((digits.x_train, digits.y_train))
    gm.eval()
    with torch.no_grad():
        trained = gm(x)
    fold_batchnorm(gm, pairs)
    assert _call_modules(gm) == structure  # no BatchNorm left: the structure the file had
    with torch.no_grad():
        assert float((gm(x) - trained).abs().max()) < 1e-4  # the fold keeps what training made
        assert float((trained - before).abs().max()) > 1e-2  # (and training did change it)


def test_only_onnx_imports_training_long_enough_get_batchnorm(imported_cnn, digits_cnn):
    from deepshrink.train.batchnorm import BATCHNORM_MIN_STEPS, batchnorm_for_training

    x = (np.zeros((8, 1, 8, 8), np.float32),)
    assert batchnorm_for_training(digits_cnn, x, 4, steps=10 ** 6) == []  # a PyTorch module keeps its own
    assert batchnorm_for_training(imported_cnn, x, 4, steps=BATCHNORM_MIN_STEPS - 1) == []
    assert len(batchnorm_for_training(imported_cnn, x, 4, steps=BATCHNORM_MIN_STEPS)) == 4


def test_an_import_that_kept_its_batchnorm_gets_none():
    """Paddle2ONNX keeps BatchNormalization; its convolutions without one (squeeze-excite 1×1s) never had one, and a
    BatchNorm put there added parameters and a false "the exporter folded them" line (helper trial 2)."""
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    import deepshrink as ds
    from deepshrink.convert.onnx2torch.route import trainable_handle
    from deepshrink.train.batchnorm import batchnorm_for_training

    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("w", (4, 3, 3, 3)), ("w2", (4, 4, 1, 1)), ("s", (4,)), ("b", (4,)), ("m", (4,)))]
    inits.append(nh.from_array(np.ones(4, np.float32), "v"))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
             helper.make_node("Conv", ["n", "w2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 6, 6])], inits)
    model = trainable_handle(ds.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))).model
    assert batchnorm_for_training(model, (np.zeros((8, 3, 8, 8), np.float32),), 4) == []


def test_fine_tuning_a_softmax_head_takes_the_log_of_its_probabilities():
    """A classifier whose output is already probabilities (most ONNX classifiers end in Softmax): cross-entropy would
    softmax them again and stall (two classes: never below ~0.31); the loss is their negative log-likelihood."""
    from deepshrink.train.trainer import classification_loss

    p = torch.tensor([[0.999, 0.001], [0.002, 0.998]])
    labels = torch.tensor([0, 1])
    assert float(classification_loss(p, labels)) == pytest.approx(-float(torch.log(torch.tensor([0.999, 0.998])).mean()))
    # logits (here log-probabilities, which are logits of p) take cross-entropy as before: the same value
    assert float(classification_loss(p.log(), labels)) == pytest.approx(float(classification_loss(p, labels)), rel=1e-4)
    assert float(torch.nn.functional.cross_entropy(p, labels)) > 0.31  # what a softmax head was trained with
