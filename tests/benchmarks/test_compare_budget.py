"""benchmarks/compare_la.py's CPU budget: a wall-time budget becomes an iteration count measured on
this machine, iteration-valued schedule settings scale with it, and the count is kept for reruns."""
import json
from pathlib import Path

import pytest

from semi3d.config import load_config
from semi3d.data.synthetic import write_dataset
from semi3d.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def compare_la(load_benchmark):
    return load_benchmark("compare_la")


def test_budget_sets_scale_the_schedule(compare_la):
    mn = load_config(ROOT / "configs/la_mn_cpu.yaml", compare_la.method_sets("mn", 8, 0)).model_dump(mode="json")
    sets = dict(s.split("=", 1) for s in compare_la.budget_sets(mn, 640))  # a quarter of the 2560 iterations
    assert sets == {"train.iterations": "640", "train.val_every": "160", "train.schedule.warmup": "10",
                    "train.schedule.cycles": "[100]", "method.options.warmup_iterations": "100",
                    "method.options.guide_every": "180"}
    scaled = load_config(ROOT / "configs/la_mn_cpu.yaml", [f"{k}={v}" for k, v in sets.items()])
    assert scaled.method.options["warmup_iterations"] == scaled.train.schedule.cycles[0]  # M&N's stage 1 = cycle 1
    sup = load_config(ROOT / "configs/la_supervised_cpu.yaml").model_dump(mode="json")
    assert compare_la.budget_sets(sup, 600) == ["train.iterations=600", "train.val_every=100", "train.schedule.cycles=[]"]
    assert compare_la.run_name("mn", 4, 1, 14.0, "_fixed") == "la_mn_fixed_l4_s1_14min"


def test_budget_sets_round_an_exact_half_as_python_does(compare_la):
    """50 of 100 iterations scaled to 115 is exactly 57.5 -> round() gives 58; computed as
    50 * (115 / 100) it was 57.49999999999999 -> 57 (a domains_la test failed on such a count)."""
    tree = {"train": {"iterations": 100, "val_every": 50}}
    assert compare_la.budget_sets(tree, 115) == ["train.iterations=115", "train.val_every=58"]


def test_the_2d_model_alone_runs_from_the_mn_config(compare_la, mn_cpu_weights):
    from semi3d.methods.base import MethodContext
    from semi3d.registry import METHODS

    cfg = load_config(ROOT / compare_la.CONFIGS["supervised2d"],
                      compare_la.method_sets("supervised2d", 8, 0) + [mn_cpu_weights])
    assert cfg.data.splits.unlabelled == "none" and cfg.train.schedule.name == "poly"
    m = METHODS.get("supervised2d")(MethodContext(cfg, 1, 2, cfg.train.iterations), **cfg.method.options)
    assert list(m.groups) == ["net2d"] and type(m.groups["net2d"]).__name__ == "UNet2D"


def tiny_la_config(tmp_path):
    """A config file for a seconds-long supervised run on a tiny synthetic UA-MT LA (2 labelled, 1 validation)."""
    root = write_dataset(tmp_path / "LA", 3, 2, 0, seed=0, shape=(24, 24, 16), num_classes=2, format="uamt_h5")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({
        "name": "x", "seed": 0, "device": "cpu",
        "data": {"format": "uamt_h5", "root": str(root), "options": {"list_file": str(root / "train.list")},
                 "num_classes": 2, "patch_size": [16, 16, 16],
                 "splits": {"labelled": {"first": 2}, "validation": {"last": 1}, "unlabelled": "none"}},
        "model": {"net3d": {"name": "unet3d", "options": {"levels": 2, "base": 2}}},
        "train": {"iterations": 10, "batch_size": 1, "val_every": 5, "progress_bar": False}}))
    return cfg


def test_budget_is_measured_once_and_kept(compare_la, tmp_path, monkeypatch):
    cfg = tiny_la_config(tmp_path)
    book = tmp_path / "budget.json"
    # a TensorBoard writer left running in the calibration's temporary folder raced its removal (CI)
    monkeypatch.setattr("semi3d.engine.runlog.RunLog._writer", lambda self: pytest.fail("TensorBoard while calibrating"))
    n = compare_la.budget(book, "supervised", str(cfg), [], minutes=0.5)
    m = json.loads(book.read_text())["supervised_0.5min"]
    assert m["fixed"]["validation"][0] == 2 and m["step_s"] > 0  # 10 // 5 validations
    assert n == m["iterations"] == max(1, int((30 - m["fixed_s"]) / m["step_s"]))
    monkeypatch.setattr(compare_la, "step_seconds", lambda *a, **k: pytest.fail("measured twice"))
    assert compare_la.budget(book, "supervised", str(cfg), [], minutes=0.5) == n


def test_run_la_records_one_run_and_reuses_it(load_benchmark, tmp_path):
    run_la = load_benchmark("run_la")
    args = [str(tiny_la_config(tmp_path)), "--name", "t", "--runs", str(tmp_path / "runs"),
            "--results", str(tmp_path / "res"), "--set", "train.iterations=3"]
    res = run_la.main(args)
    assert json.loads((tmp_path / "res" / "t.json").read_text()) == json.loads(json.dumps(res))
    assert "| t | supervised | 2 |" in (tmp_path / "res" / "t.md").read_text()
    assert res["iterations"] == 3 and res["labelled"] == 2 and 0 <= res["dice"] <= 1 and not res["resumed"]
    assert res["train_wall_s_total"] > 0 and res["commit"] and res["machine"]["precision"] in ("fp32", "bf16")
    (last,) = (tmp_path / "runs").rglob("last.pt")
    log, stamp = last.parent.parent / "log.jsonl", last.stat().st_mtime_ns
    before = log.read_text()
    again = run_la.main(args)  # finished: evaluated again, not retrained (no step logged, no checkpoint written)
    assert again["dice"] == res["dice"] and again["train_wall_s_total"] == res["train_wall_s_total"]
    assert not again["resumed"] and log.read_text() == before and last.stat().st_mtime_ns == stamp


def test_run_la_holds_a_finished_run_to_its_config(load_benchmark, tmp_path):
    """A rerun of a finished run under another config used to report the old run under the new
    config: now a change to what was trained is refused, an inference change is used."""
    run_la = load_benchmark("run_la")
    args = [str(tiny_la_config(tmp_path)), "--name", "t", "--runs", str(tmp_path / "runs"),
            "--results", str(tmp_path / "res"), "--set", "train.iterations=3"]
    run_la.main(args)
    (run,) = (tmp_path / "runs").glob("t")
    saved = (run / "config.yaml").read_text()
    for change in ("seed=1", "data.splits.labelled.first=1"):
        with pytest.raises(InputError, match="cannot change " + change.split("=")[0]):
            run_la.main([*args, "--set", change])
        assert (run / "config.yaml").read_text() == saved
    post = run_la.main([*args, "--set", "inference.postprocess=largest_component"])
    assert json.loads((run / "eval_validation" / "metrics.json").read_text())["postprocess"] == "largest_component"
    assert not post["resumed"] and post["iterations"] == 3
    more = run_la.main([*args[:-1], "train.iterations=4"])
    assert more["resumed"] and more["iterations"] == 4


def test_a_table_lists_every_budgeted_variant(compare_la, tmp_path):
    book = {"mn_fixed_14min": {}, "supervised_14min": {}, "supervised2d_14min": {}, "mn_3views_14min": {},
            "mean_teacher_14min": {}, "supervised_6min": {}}
    assert compare_la.variants(book, 14, ["mn"]) == [
        ("supervised", ""), ("supervised2d", ""), ("mean_teacher", ""), ("mn", ""), ("mn", "_fixed"), ("mn", "_3views")]
    for name, dice in [("la_mn_l8_s0_14min", 0.8), ("la_mn_fixed_l8_s0_14min", 0.7), ("la_mn_fixed_l8_s1_14min", 0.6),
                       ("la_mn_3views_l4_s0_14min", 0.5)]:
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"name": name, "dice": dice, "jaccard": 0, "hd95": 1, "asd": 1, "iterations": 10, "train_wall_s_total": 60,
             "commit": "abcdef0123", "command": f"python run {name}"}))
    rows = compare_la.table_rows(tmp_path, book, ["mn"], "", [8], [0, 1], 14)
    assert [(r["method"], r["labelled"], r["seeds"], round(r["dice"], 2)) for r in rows] == [
        ("mn", 8, 1, 0.8), ("mn_fixed", 8, 2, 0.65), ("mn_3views", 4, 1, 0.5)]
    # a run_la.py result of a method's own config, listed after the budgeted rows; every row names its runs
    (tmp_path / "own.json").write_text(json.dumps(
        {"name": "own", "method": "mn", "labelled": 8, "dice": 0.9, "jaccard": 0, "hd95": 1, "asd": 1,
         "iterations": 1840, "train_wall_s_total": 2460, "commit": "1234567890", "command": "python run_la.py own"}))
    rows = compare_la.table_rows(tmp_path, {**book, "references": ["own"]}, ["mn"], "", [8], [0, 1], 14)
    assert (rows[-1]["method"], rows[-1]["dice"], rows[-1]["train_min"], rows[-1]["commit"]) == (
        "mn (own config)", 0.9, 41.0, "1234567")
    text = compare_la.table_text(rows, 14, "b.json")
    assert "| mn (own config) | 8 | 1 | 0.9000 |" in text and "- `own` (commit 1234567890): `python run_la.py own`" in text
    assert "- `la_mn_fixed_l8_s1_14min` (commit abcdef0123)" in text
