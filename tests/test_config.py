import pytest

from semi3d.config import dump_config, load_config
from semi3d.errors import InputError


def test_overrides_and_roundtrip(tiny_tree, tmp_path):
    cfg = load_config(tree=tiny_tree, overrides=["train.iterations=7", "data.patch_size=[8,8,8]", "model.net3d.options.base=2"])
    assert cfg.train.iterations == 7 and cfg.data.patch_size == (8, 8, 8) and cfg.model.net3d.options["base"] == 2
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


def test_unknown_key_is_named(tiny_tree):
    tiny_tree["train"]["iterashuns"] = 3
    with pytest.raises(InputError, match="train.iterashuns"):
        load_config(tree=tiny_tree)


def test_bad_value_is_named(tiny_tree):
    with pytest.raises(InputError, match="train.selection"):
        load_config(tree=tiny_tree, overrides=["train.selection=best"])


def test_bad_yaml_and_missing_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(InputError, match="bad.yaml"):
        load_config(p)
    with pytest.raises(InputError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="key=value"):
        load_config(tree={}, overrides=["novalue"])
