"""benchmarks/imbalance_synthetic.py in its smoke mode: every method has a Dice for every foreground
class, the supervised run shares A&D's inference network, the ablation runs without difficulty
weights, a rerun reuses the finished runs, and every data plan gets its own folder."""
import json

import pytest
import yaml

from semi3d.data.synthetic import class_names


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("imbalance_synthetic")


def test_imbalance_benchmark_smoke(bench, tmp_path, one_thread):
    res = bench.main(["--smoke", "--runs", str(tmp_path)])
    saved = json.loads((tmp_path / "results" / "imbalance_synthetic.json").read_text())
    assert saved == json.loads(json.dumps(res))
    fg = class_names(5)[1:]
    frac = saved["dataset"]["class_fraction"]
    by_share = saved["classes_by_share"]
    assert sorted(by_share) == sorted(fg) and frac[by_share[-1]] == min(frac[c] for c in fg)  # the rarest last
    assert [r["variant"] for r in saved["runs"]] == ["supervised", "ad", "ad_uniform"]
    for r in saved["runs"]:
        assert set(r["per_class"]) == set(fg)
        assert all(0 <= r["per_class"][c]["dice"] <= 1 for c in fg) and r["hd95"] >= 0
        assert r["iterations"] == 2 and r["labelled"] == 2 and r["test_cases"] == 2
    assert [r["unlabelled"] for r in saved["runs"]] == [0, 2, 2]
    assert saved["commit"] and "--smoke" in saved["command"] and "synthetic" in saved["note"]
    md = (tmp_path / "results" / "imbalance_synthetic.md").read_text()
    assert "synthetic" in md and all(f"Dice {c} (" in md for c in fg) and md.count("\n| ad") == 2

    # like-for-like network; the ablation keeps uniform class weights
    cfg = {v: yaml.safe_load((tmp_path / f"imbalance_synthetic_{v}" / "config.yaml").read_text())
           for v in ("supervised", "ad", "ad_uniform")}
    net = cfg["supervised"]["model"]["net3d"]
    ad = cfg["ad"]["method"]["options"]
    assert net["name"] == "ad_student" and all(ad[k] == v for k, v in net["options"].items())
    assert ad["difficulty"] is True and cfg["ad_uniform"]["method"]["options"]["difficulty"] is False
    log = [json.loads(x) for x in (tmp_path / "imbalance_synthetic_ad_uniform" / "log.jsonl").read_text().splitlines()]
    assert all(r["ad/difficulty_w4"] == 1.0 for r in log if "ad/difficulty_w4" in r)

    # rerun: finished runs are reused, not retrained
    again = bench.main(["--smoke", "--runs", str(tmp_path)])
    assert again["runs"] == saved["runs"]
    # a tagged run writes its own results files, leaving the untagged ones alone
    tagged = bench.main(["--smoke", "--runs", str(tmp_path), "--methods", "supervised", "--tag", "_t"])
    assert json.loads((tmp_path / "results" / "imbalance_synthetic_t.json").read_text())["runs"] == tagged["runs"]
    assert json.loads((tmp_path / "results" / "imbalance_synthetic.json").read_text()) == saved
    # another plan (rarest class size) gets its own dataset folder instead of an error
    bench.main(["--smoke", "--runs", str(tmp_path), "--methods", "supervised", "--tag", "_s8", "--smallest", "0.8"])
    plans = {p.parent.name: json.loads(p.read_text())["smallest"] for p in (tmp_path / "data").glob("*/plan.json")}
    assert sorted(plans.values()) == [0.5, 0.8] and all("_S0.8_" in k for k, v in plans.items() if v == 0.8)
