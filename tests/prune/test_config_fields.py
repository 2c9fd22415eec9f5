"""Every field of every pruning config either changes the pruned model or is refused with a line
saying why — never silently ignored (issue 13, kind 2).

Each row sets one field away from a base config and prunes the same seeded digits CNN on the same
256 labelled digits; the weights must differ from the base run's, or the call must raise
:class:`InputError` / :class:`UnsupportedError` (config construction or ``prune``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepshrink.errors import InputError, UnsupportedError
from deepshrink.prune import prune
from deepshrink.prune.config import (
    GradualPruneConfig,
    MagnitudePruneConfig,
    NMPruneConfig,
    StructuredPruneConfig,
)

MAG = (MagnitudePruneConfig, {"sparsity": 0.5})
MAG_FT = (MagnitudePruneConfig, {"sparsity": 0.5, "finetune_epochs": 1})
GRAD = (GradualPruneConfig, {"final_sparsity": 0.5, "epochs": 2, "frequency": 2})
NM = (NMPruneConfig, {})
NM_FT = (NMPruneConfig, {"finetune_epochs": 1})
ST = (StructuredPruneConfig, {"ratio": 0.5})
ST_G = (StructuredPruneConfig, {"ratio": 0.5, "scope": "global"})
ST_FT = (StructuredPruneConfig, {"ratio": 0.5, "finetune_epochs": 1})
ST_R = (StructuredPruneConfig, {"ratio": 0.5, "reconstruct": True})
MAG_KD = (MagnitudePruneConfig, {"sparsity": 0.5, "finetune_epochs": 1, "distill": True})
GRAD_KD = (GradualPruneConfig, {"final_sparsity": 0.5, "epochs": 2, "frequency": 2, "distill": True})
NM_KD = (NMPruneConfig, {"finetune_epochs": 1, "distill": True})
ST_KD = (StructuredPruneConfig, {"ratio": 0.5, "finetune_epochs": 1, "distill": True})


def _training_rows(plain, tuned, kd):
    """The fine-tune fields of a method: refused without training (lr_schedule, distill) or without distill
    (kd_temperature, kd_alpha), each changing the weights where it applies."""
    rows = [(tuned, "distill", True), (tuned, "kd_temperature", 2.0), (tuned, "kd_alpha", 0.9),
            (kd, "kd_temperature", 2.0), (kd, "kd_alpha", 0.9)]
    if plain is not None:
        rows += [(plain, "lr_schedule", "cosine"), (plain, "distill", True), (tuned, "lr_schedule", "cosine")]
    return rows


# (base, field, value): each field of each config at least once
ROWS = [
    (MAG, "sparsity", 0.7), (MAG, "threshold", 0.05), (MAG, "scope", "global"), (MAG, "protect", ("stem.*",)),
    (MAG, "finetune_epochs", 1), (MAG, "lr", 1e-2), (MAG_FT, "lr", 1e-2),
    (GRAD, "final_sparsity", 0.7), (GRAD, "initial_sparsity", 0.3), (GRAD, "epochs", 3), (GRAD, "begin", 0.2),
    (GRAD, "end", 0.8), (GRAD, "frequency", 5), (GRAD, "scope", "layer"), (GRAD, "protect", ("stem.*",)),
    (GRAD, "lr", 1e-2), (GRAD, "lr_schedule", "constant"),
    (NM, "n", 1), (NM, "m", 8), (NM, "protect", ("block_*",)), (NM, "finetune_epochs", 1), (NM, "lr", 1e-2),
    (NM_FT, "lr", 1e-2),
    (ST, "ratio", 0.25), (ST, "importance", "l1"), (ST, "importance", "bn"), (ST, "importance", "taylor"),
    (ST, "importance", "activation"), (ST, "scope", "global"), (ST, "protect", ("stem.*",)),
    (ST, "heads_ratio", 0.5), (ST, "ffn_ratio", 0.25),  # a CNN has neither: refused
    (ST, "round_to", 3), (ST, "min_keep", 0.6),
    (ST_G, "min_keep", 0.6), (ST, "finetune_epochs", 1), (ST, "lr", 1e-2), (ST_FT, "lr", 1e-2),
    (ST, "reconstruct", True), (ST_R, "reconstruct_ridge", 1.0), (ST_R, "reconstruct_samples", 64),
    (ST, "reconstruct_ridge", 1.0),  # without reconstruct: refused
    *_training_rows(MAG, MAG_FT, MAG_KD), *_training_rows(None, GRAD, GRAD_KD), *_training_rows(NM, NM_FT, NM_KD),
    *_training_rows(ST, ST_FT, ST_KD),
]


@pytest.fixture(scope="module")
def setup(digits):
    from deepshrink.examples import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN().eval()
    return model, (np.asarray(digits.x_train[:256], np.float32), np.asarray(digits.y_train[:256]))


def _run(setup, cls, kwargs):
    model, data = setup
    torch.manual_seed(0)
    out = prune(model, cls.build(**kwargs), data=data, progress=False, seed=0).model.model
    return {k: v.detach().clone() for k, v in out.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("base, field, value", ROWS,
                         ids=[f"{b[0].__name__.removesuffix('PruneConfig')}{'+' + ','.join(b[1]) if b[1] else ''}-{f}"
                              for b, f, _v in ROWS])
def test_field_changes_result_or_is_refused(setup, base, field, value):
    cls, kwargs = base
    changed = {**kwargs, field: value}
    if field == "threshold":
        changed.pop("sparsity")
    try:
        after = _run(setup, cls, changed)
    except (InputError, UnsupportedError) as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip(), "a refusal is one line"
        return
    assert not _same(_run(setup, cls, kwargs), after), f"{cls.__name__}.{field}={value!r} was silently ignored"


def test_every_field_is_covered():
    for cls in (MagnitudePruneConfig, GradualPruneConfig, NMPruneConfig, StructuredPruneConfig):
        covered = {f for (c, _k), f, _v in ROWS if c is cls}
        assert covered == set(cls.model_fields), f"{cls.__name__}: untested fields {set(cls.model_fields) - covered}"
