import json

import pytest
from pydantic import ValidationError

from deepshrink.core.config import Config, config_from_dict, handler_for, register
from deepshrink.errors import InputError


class _DemoConfig(Config):
    bits: int = 8
    name: str = "x"


class _ChildConfig(_DemoConfig):
    extra_flag: bool = False


def test_round_trip_through_json():
    c = _ChildConfig(bits=4, name="y", extra_flag=True)
    back = config_from_dict(json.loads(c.to_json()))
    assert back == c and type(back) is _ChildConfig


def test_unknown_key_is_an_error():
    with pytest.raises(InputError, match="typo"):
        _DemoConfig.from_dict({"type": "_DemoConfig", "typo": 1})
    with pytest.raises(ValidationError):
        _DemoConfig(typo=1)  # type: ignore[call-arg]


def test_unknown_type_is_an_error():
    with pytest.raises(InputError, match="unknown config type 'Nope'"):
        config_from_dict({"type": "Nope"})


def test_frozen_and_replace():
    c = _DemoConfig()
    with pytest.raises(ValidationError):
        c.bits = 3  # type: ignore[misc]
    assert c.replace(bits=3).bits == 3 and c.bits == 8


def test_registry_falls_back_to_base_class_handler():
    @register(_DemoConfig)
    def handle(model, config):
        return ("handled", config.bits)

    assert handler_for(_ChildConfig(bits=2))(None, _ChildConfig(bits=2)) == ("handled", 2)

    class _Lonely(Config):
        pass

    with pytest.raises(InputError, match="no handler"):
        handler_for(_Lonely())
