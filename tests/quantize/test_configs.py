"""Quantization configs: JSON round-trip of every class, validation with one-line errors."""

from __future__ import annotations

import json

import pytest

from deepshrink.core.config import Config
from deepshrink.errors import InputError
from deepshrink.quantize import (
    AutoConfig,
    Int8DynamicConfig,
    Int8StaticConfig,
    KMeansConfig,
    Log2Config,
    MixedPrecisionConfig,
    QATConfig,
    WeightOnlyConfig,
)
from deepshrink.quantize.configs import ALL_CONFIGS

EXAMPLES = [
    Int8DynamicConfig(per_channel=False, exclude=("*output.dense*",), smooth_alpha=0.7),
    Int8StaticConfig(observer="entropy", per_channel=True, format="qoperator", calibration_size=32),
    WeightOnlyConfig(bits=4, group_size=32, method="gptq"),
    KMeansConfig(bits=3, per_channel=True),
    Log2Config(bits=5, include=("fc*",)),
    QATConfig(weight_bits=4, act_bits=8, epochs=2, lr=1e-3, distill=True, kd_alpha=0.9),
    MixedPrecisionConfig(default=Int8StaticConfig(observer="mse"),
                         overrides={"*fc3*": KMeansConfig(bits=6), "*fc1*": WeightOnlyConfig(bits=8, group_size=16)},
                         exclude=("*stem*",)),
    AutoConfig(strategy="layouts", target_cos=0.995, min_cos=0.98, base=Int8DynamicConfig(per_channel=False), smooth_alphas=(0.0, 0.5)),
]


def test_every_config_class_has_an_example():
    assert {type(c) for c in EXAMPLES} == set(ALL_CONFIGS)


@pytest.mark.parametrize("cfg", EXAMPLES, ids=lambda c: type(c).__name__)
def test_json_round_trip(cfg, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    back = Config.from_dict(json.loads(path.read_text()))
    assert back == cfg and type(back) is type(cfg)
    assert back.to_json() == cfg.to_json()


def test_nested_configs_keep_their_type():
    back = Config.from_dict(json.loads(EXAMPLES[6].to_json()))
    assert isinstance(back.default, Int8StaticConfig) and back.default.observer == "mse"
    assert isinstance(back.overrides["*fc3*"], KMeansConfig) and back.overrides["*fc3*"].bits == 6


@pytest.mark.parametrize("data,needle", [
    ({"type": "WeightOnlyConfig", "bits": 9}, "bits"),
    ({"type": "WeightOnlyConfig", "bits": 1}, "bits"),
    ({"type": "WeightOnlyConfig", "group_size": 48}, "power of two"),
    ({"type": "WeightOnlyConfig", "group_size": 8}, "16, 32, 64, 128, 256"),  # MLAS crashes on 8
    ({"type": "KMeansConfig", "bits": 0}, "bits"),
    ({"type": "Int8StaticConfig", "observer": "median"}, "observer"),
    ({"type": "Int8DynamicConfig", "smooth_alpha": 1.5}, "smooth_alpha"),
    ({"type": "Int8DynamicConfig", "per_chanel": True}, "per_chanel"),
    ({"type": "AutoConfig", "target_cos": 1.2}, "target_cos"),
    ({"type": "AutoConfig", "smooth_alphas": [0.5, 2.0]}, "smooth alpha"),
    ({"type": "MixedPrecisionConfig", "default": {"type": "AutoConfig"}}, "cannot be nested"),
    ({"type": "MixedPrecisionConfig", "default": {"type": "Nope"}}, "unknown config type"),
    ({"type": "Log2Config", "exclude": [""]}, "empty layer pattern"),
])
def test_invalid_values_are_one_line_input_errors(data, needle):
    with pytest.raises(InputError) as exc:
        Config.from_dict(data)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_build_gives_input_error():
    with pytest.raises(InputError, match="bits"):
        WeightOnlyConfig.build(bits=12)
    assert WeightOnlyConfig.build(bits=2, group_size=16).bits == 2


def test_describe_says_both_counts_when_auto_stores_float_layers_in_int8():
    """auto computes some layers in float but stores their weights in int8: the one line said "1 layers quantized"
    beside the summary's "0 layers computed in int8" (a new user's RNet)."""
    from deepshrink.quantize.onnx.outcome import describe

    rep = {"quantized_layers": 6, "kept_float": [{"layer": "a"}], "auto": {"quantized_layers": 0}}
    assert describe(rep) == "6 layers' weights in int8, 0 of them computed in int8"
    same = {"quantized_layers": 4, "kept_float": [{"layer": "a"}], "auto": {"quantized_layers": 4}}
    assert describe(same) == "4 layers quantized, 1 kept in float"
