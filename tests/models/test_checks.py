"""The option checks every network builder shares (models/checks.py)."""
import pytest

from semi3d.errors import InputError
from semi3d.models.checks import check_io, check_options, choice, positive_int, with_defaults
from semi3d.registry import NETS2D, NETS3D


def test_unknown_options_named_singular_and_plural():
    check_options("model x", {"a": 1}, ("a", "b"))
    with pytest.raises(InputError, match=r"model x: unknown option 'c'; valid: a, b$"):
        check_options("model x", {"c": 1}, ("b", "a"))
    with pytest.raises(InputError, match=r"unknown options 'c', 'd'; valid: a"):
        check_options("model x", {"d": 1, "c": 2}, ("a",))
    assert with_defaults("n", {"a": 5}, {"a": 1, "b": 2}) == {"a": 5, "b": 2}


@pytest.mark.parametrize("value", [0, -1, 1.0, True, "2", None])
def test_positive_int_refuses(value):
    with pytest.raises(InputError, match=r"k=.*: expected a positive integer"):
        positive_int("n", "k", value)


def test_choice_and_io():
    assert positive_int("n", "k", 3) == 3
    assert choice("n", "mode", "b", ("a", "b")) == "b"
    with pytest.raises(InputError, match=r"mode='c': choose one of 'a', 'b'"):
        choice("n", "mode", "c", ("a", "b"))
    with pytest.raises(InputError, match="num_classes=0"):
        check_io("n", 1, 0)


@pytest.mark.parametrize("registry,name", [(NETS3D, "unet3d"), (NETS3D, "vnet"), (NETS2D, "unetpp2d"),
                                           (NETS2D, "unet2d_mobilenet_v2")])
def test_every_builder_words_a_bad_option_and_io_alike(registry, name):
    with pytest.raises(InputError, match=r"unknown option 'nope'"):
        registry.build(name, in_channels=1, num_classes=2, nope=1)
    with pytest.raises(InputError, match=r"in_channels=0: expected a positive integer"):
        registry.build(name, in_channels=0, num_classes=2)
