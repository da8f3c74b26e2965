"""Every method's typed options (methods/base.py MethodOptions): defaults, one-line errors."""
from __future__ import annotations

import pytest

from semi3d.errors import InputError
from semi3d.methods.base import method_options
from semi3d.registry import METHODS


@pytest.mark.parametrize("name", METHODS.names())
def test_defaults_validate_and_unknown_keys_are_named(name):
    model = METHODS.get(name).Options
    assert method_options(name, {}, model) == model()
    with pytest.raises(InputError, match=rf"method.options \({name}\): unknown option 'nope'; valid: "):
        method_options(name, {"nope": 1}, model)
    with pytest.raises(InputError, match=rf"method.options \({name}\): unknown options 'nope', 'zz'; valid: "):
        method_options(name, {"zz": 1, "nope": 1}, model)  # every unknown key at once


@pytest.mark.parametrize("name,key,value,message", [
    ("mean_teacher", "ema_decay", 1.5, "less than or equal to 1"),
    ("mean_teacher", "consistency", True, "valid number"),  # a bool is no number
    ("ua_mt", "mc_passes", 0, "greater than or equal to 1"),
    ("cps", "init", "he", "'kaiming_xavier' or 'default'"),
    ("bcp", "mask_ratio", 0, "greater than 0"),
    ("ad", "difficulty_source", "x", "'diffusion' or 'difficulty'"),
    ("mn", "loss_weights", [0, 0], "not both 0"),
    ("mn", "views", [0, 0], "distinct spatial axes"),
    ("supervised2d", "slices_per_step", -1, "greater than or equal to 0"),
])
def test_a_bad_value_is_one_line_naming_the_key(name, key, value, message):
    with pytest.raises(InputError) as e:
        method_options(name, {key: value}, METHODS.get(name).Options)
    text = str(e.value)
    assert text.startswith(f"method.options.{key} ({name}): ") and message in text and "\n" not in text
    assert f"got {value!r}" in text


def test_subclass_options_extend_the_parent():
    mt, ua = METHODS.get("mean_teacher").Options, METHODS.get("ua_mt").Options
    assert set(mt.model_fields) < set(ua.model_fields) and {"mc_passes", "mc_dropout"} <= set(ua.model_fields)
