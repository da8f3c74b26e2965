"""benchmarks/suggest_la.py on its tiny synthetic setting (--smoke): suggest, retrain, evaluate."""
import json
from pathlib import Path

import pytest



@pytest.fixture(scope="module")
def mod(load_benchmark):
    return load_benchmark("suggest_la")


def test_random_picks_and_retrain_tree(mod):
    pool = [f"c{i}" for i in range(10)]
    a = mod.random_picks(pool, 3, 0)
    assert a == mod.random_picks(pool, 3, 0) and len(set(a)) == 3 and a == sorted(a, key=pool.index)
    base = {"name": "b", "data": {"splits": {"labelled": {"first": 2}, "validation": {"last": 1}}}}
    splits = {"labelled": ["c0", "c1"], "validation": ["c9"], "unlabelled": pool[2:9], "test": []}
    tree = mod.retrain_tree(base, splits, ["c5"], "b_x", Path("/tmp/runs"))
    assert tree["data"]["splits"]["labelled"] == {"ids": ["c0", "c1", "c5"]}
    assert tree["data"]["splits"]["validation"] == {"ids": ["c9"]} and tree["data"]["splits"]["unlabelled"] == "rest"
    assert base["data"]["splits"]["labelled"] == {"first": 2}  # the base tree is left alone


def test_smoke_run(mod, tmp_path):
    res = mod.main(["--smoke", "--runs", str(tmp_path)])
    files = list((tmp_path / "results").glob("suggest_smoke_*.json"))
    assert len(files) == 1 and files[0].with_suffix(".md").is_file()
    saved = json.loads(files[0].read_text())
    assert saved["k"] == 2 and set(saved["strategies"]) == {"suggest", "random_s0"}
    sug = saved["strategies"]["suggest"]
    assert sug["labelled"] == 4 and len(sug["added"]) == 2 and 0 <= sug["dice"] <= 1
    splits = json.loads((Path(sug["run"]) / "splits.json").read_text())
    base = json.loads((tmp_path / "smoke_base" / "splits.json").read_text())
    assert splits["labelled"] == base["labelled"] + sug["added"]
    assert splits["validation"] == base["validation"]                  # same dev split
    assert not set(sug["added"]) & set(splits["unlabelled"])
    assert res["dice_gain_vs_random"] == saved["dice_gain_vs_random"]
