"""benchmarks/domains_la.py end to end on a tiny synthetic UA-MT LA: A&D, supervised and M&N in the
UDA and SemiDG settings share the data, the splits and the sealed test split of their setting."""
import json

import pytest
import yaml

from semi3d.data.domain_shift import DOMAINS
from semi3d.data.splits import read_id_list
from semi3d.data.synthetic import write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

SETS = ["train.iterations=2", "train.batch_size=2", "train.progress_bar=false", "train.checkpoint_every=2",
        "data.patch_size=[16,16,16]", "data.preprocess.scale=null", "device=cpu", "threads=1"]
SET_FOR = {
    "ad": ["method.options.width=2", "method.options.depth=3", "method.options.temb_dim=8",
           "method.options.unlabelled_batch=2"],
    "supervised": ["model.net3d.options.n_filters=2"],
    "mn": ["model.net3d.options.levels=3", "model.net3d.options.base=4", "model.net2d.options.pretrained=null",
           "model.net2d.options.decoder_channels=[8,8,8,8,8]", "train.schedule.cycles=[1]",
           "train.schedule.warmup=0", "method.options.warmup_iterations=1", "method.options.epoch_length=1",
           "method.options.guide_every=1"],
}


def test_domains_la_compares_ad_supervised_and_mn(tmp_path, monkeypatch, load_benchmark):
    src = write_dataset(tmp_path / "LA", n_labelled=11, n_unlabelled=0, seed=2, shape=(24, 24, 16), num_classes=2,
                        format="uamt_h5")
    domains_la = load_benchmark("domains_la")
    monkeypatch.chdir(tmp_path)  # run folders and the domain dataset go to tmp_path
    args = ["--la-root", str(src), "--n-dev", "2", "--labelled", "2", "--runs", "runs", "--domains-root", "doms",
            "--results", "results"]
    args += [x for s in SETS for x in ("--set", s)]
    args += [x for m, kvs in SET_FOR.items() for kv in kvs for x in ("--set-for", m, kv)]
    rows = domains_la.main(args)  # the default methods: ad supervised mn

    assert [(r["setting"], r["method"]) for r in rows] == [(s, m) for s in ("uda", "semidg")
                                                           for m in ("ad", "supervised", "mn")]
    by = {(r["setting"], r["method"]): r for r in rows}
    for (setting, method), r in by.items():
        assert (tmp_path / "results" / f"domains_la_{setting}_{method}.json").is_file()
        assert r["test_cases"] == 2 and r["iterations"] == 2 and 0 <= r["dice"] <= 1
        assert r["config"] == ("configs/la_mn_cpu.yaml" if method == "mn" else f"configs/la_ad_{setting}_cpu.yaml")
        assert r["net2d"] == ("unet2d_mobilenet_v2" if method == "mn" else None)
        assert all(kv in r["overrides"] for kv in SET_FOR[method])  # --set-for reaches its method only
        assert not any(kv in r["overrides"] for m in SET_FOR if m != method for kv in SET_FOR[m])
    mn_cfg = yaml.safe_load((tmp_path / "runs" / "domains_la_uda_mn" / "config.yaml").read_text())
    assert mn_cfg["model"]["net2d"]["name"] == "unet2d_mobilenet_v2" and mn_cfg["method"]["name"] == "mn"
    assert mn_cfg["data"]["splits"]["validation"] is None  # la_mn_cpu.yaml's dev split dropped

    # 11 ids: 9 training ids round-robin in A (3), B (3), C (3); the 2 dev ids in B and D
    doms = tmp_path / "doms"
    splits = {k: json.loads((tmp_path / "runs" / f"domains_la_{k[0]}_{k[1]}" / "splits.json").read_text()) for k in by}
    for setting in ("uda", "semidg"):
        ad, sup, mn = (splits[setting, m] for m in ("ad", "supervised", "mn"))
        assert ad["labelled"] == sup["labelled"] == mn["labelled"] and ad["test"] == sup["test"] == mn["test"]
        assert ad["unlabelled"] == mn["unlabelled"] and sup["unlabelled"] == [] and mn["validation"] == []
    uda = splits["uda", "mn"]
    assert uda["labelled"] == read_id_list(doms / "A_train.list") and uda["unlabelled"] == read_id_list(doms / "B_train.list")
    assert uda["test"] == read_id_list(doms / "B_test.list")
    assert by["uda", "mn"]["split_domains"] == {"labelled": ["A"], "unlabelled": ["B"], "test": ["B"]}
    semidg = splits["semidg", "mn"]
    assert semidg["labelled"] == ["A_syn_000", "B_syn_001"] and semidg["test"] == read_id_list(doms / "D_test.list")
    assert (by["semidg", "mn"]["labelled"], by["semidg", "mn"]["unlabelled"]) == (2, 7)
    assert by["semidg", "ad"]["split_domains"] == {"labelled": ["A", "B"], "unlabelled": ["A", "B", "C"], "test": ["D"]}
    assert by["uda", "supervised"]["split_domains"]["unlabelled"] == []
    md = (tmp_path / "results" / "domains_la.md").read_text()
    assert "| semidg | mn |" in md and "| uda | supervised |" in md
    # rerunning reuses the results (and the domain dataset)
    assert [r["dice"] for r in domains_la.main(args)] == [r["dice"] for r in rows]


def test_domains_la_minutes_budget_sets_iterations_from_measured_step_time(tmp_path, monkeypatch, load_benchmark):
    src = write_dataset(tmp_path / "LA", n_labelled=11, n_unlabelled=0, seed=2, shape=(24, 24, 16), num_classes=2,
                        format="uamt_h5")
    domains_la = load_benchmark("domains_la")
    monkeypatch.chdir(tmp_path)
    args = ["--la-root", str(src), "--n-dev", "2", "--labelled", "2", "--runs", "runs", "--domains-root", "doms",
            "--results", "results", "--settings", "uda", "--methods", "ad", "supervised", "--minutes", "0.05",
            "--tag", "_b", "--strength", "2"]
    args += [x for s in SETS + ["train.iterations=100", "train.val_every=50"] for x in ("--set", s)]
    args += [x for m in ("ad", "supervised") for kv in SET_FOR[m] for x in ("--set-for", m, kv)]
    rows = domains_la.main(args)

    book = json.loads((tmp_path / "results" / "domains_la_budget.json").read_text())
    # --strength 2: its own tag and domain data, the shifts scaled
    assert sorted(book) == ["ad_uda_b_x2_0.05min", "supervised_uda_b_x2_0.05min"]
    info = json.loads((tmp_path / "doms_x2" / "domains.json").read_text())
    assert info["domains"]["B"]["gamma"] == pytest.approx(DOMAINS["B"].gamma ** 2) and not (tmp_path / "doms").exists()
    for r in rows:
        assert r["strength"] == 2.0 and r["name"].endswith("_b_x2")
        entry = book[f"{r['method']}_uda_b_x2_0.05min"]
        assert entry["step_s"] > 0 and r["iterations"] == entry["iterations"] >= 1
        assert r["minutes_budget"] == 0.05 and f"train.iterations={entry['iterations']}" in r["overrides"]
        # the schedule is scaled with the iteration count (val_every 50 of 100)
        assert f"train.val_every={max(1, round(50 * entry['iterations'] / 100))}" in r["overrides"]
    # the cheaper step gets more iterations under the same budget
    it = {r["method"]: r["iterations"] for r in rows}
    assert book["supervised_uda_b_x2_0.05min"]["step_s"] < book["ad_uda_b_x2_0.05min"]["step_s"]
    assert it["supervised"] >= it["ad"]
