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
    from deepshrink.prune import BATCHNORM_MIN_STEPS, batchnorm_for_training

    x = (np.zeros((8, 1, 8, 8), np.float32),)
    assert batchnorm_for_training(digits_cnn, x, 4, steps=10 ** 6) == []  # a PyTorch module keeps its own
    assert batchnorm_for_training(imported_cnn, x, 4, steps=BATCHNORM_MIN_STEPS - 1) == []
    assert len(batchnorm_for_training(imported_cnn, x, 4, steps=BATCHNORM_MIN_STEPS)) == 4
