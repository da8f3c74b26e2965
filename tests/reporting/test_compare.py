"""Methods comparison across evaluated runs."""
import json
import shutil

import pytest
from typer.testing import CliRunner

from semi3d.cli import app
from semi3d.errors import InputError
from semi3d.reporting.compare import compare_runs


def test_compare_two_runs(sup_run, mn_run, tmp_path):
    out = tmp_path / "cmp"
    res = compare_runs([sup_run, mn_run], out)
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"supervised", "mn"}
    for run, row in ((sup_run, rows["supervised"]), (mn_run, rows["mn"])):
        m = json.loads((run / "eval_validation" / "metrics.json").read_text())
        assert row["dice"] == pytest.approx(m["mean"]["mean"]["dice"])
        assert row["hd95"] == pytest.approx(m["mean"]["mean"]["hd95"])
        assert row["labelled"] == 3 and row["cases"] == len(m["per_case"])
        assert set(res["per_case_dice"][row["run"]]) == set(m["per_case"])
    assert res["same_cases"]
    md = (out / "compare.md").read_text()
    assert "| run | method | labelled |" in md and "tiny_mn" in md and "![per-case Dice](dice_boxplot.png)" in md
    assert "| nsd |" not in md  # no run was evaluated with an NSD tolerance
    assert json.loads((out / "compare.json").read_text())["rows"][0]["method"] == "supervised"
    assert (out / "dice_boxplot.png").stat().st_size > 5000


def test_compare_bad_input(sup_run, copy_run, tmp_path):
    run = copy_run(sup_run, "noeval")
    shutil.rmtree(run / "eval_validation")
    with pytest.raises(InputError, match="no evaluation metrics"):
        compare_runs([sup_run, run], tmp_path / "c")
    with pytest.raises(InputError, match="no such run folder"):
        compare_runs([tmp_path / "missing"], tmp_path / "c")
    r = CliRunner().invoke(app, ["compare", str(run), "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "semi3d evaluate" in r.output and "Traceback" not in r.output


def test_cli_compare_same_run_twice(sup_run, tmp_path):
    r = CliRunner().invoke(app, ["compare", str(sup_run), str(sup_run), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "c" / "compare.json").read_text())["rows"]
    assert [x["run"] for x in rows] == ["tiny", "tiny (2)"]


def test_compare_a_run_with_another_tools_scored_predictions(sup_run, synth_root, tmp_path):
    """Another tool's predictions scored by evaluate-folder sit in the table as method "external";
    here the run's own saved predictions stand in for them, so both rows agree."""
    from semi3d.evaluation.evaluate import evaluate_run
    from semi3d.evaluation.folder import evaluate_folder

    evaluate_run(sup_run, "validation", save_predictions=True, out=tmp_path / "ev", nsd_tolerance=1.0)
    evaluate_folder(tmp_path / "ev" / "predictions", synth_root / "labelsTr", out=tmp_path / "other_tool", subset=True,
                    nsd_tolerance=1.0)
    r = CliRunner().invoke(app, ["compare", str(sup_run), str(tmp_path / "other_tool"), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "c" / "compare.json").read_text())
    run, other = res["rows"]
    assert (other["run"], other["method"], other["labelled"]) == ("other_tool", "external", None)
    assert other["dice"] == pytest.approx(run["dice"]) and other["cases"] == run["cases"] and res["same_cases"]
    # scored with --nsd-tolerance 1 (the run's own evaluation was not): an nsd column, the run's cell empty
    nsd = json.loads((tmp_path / "ev" / "metrics.json").read_text())["mean"]["mean"]["nsd"]
    assert other["nsd"] == pytest.approx(nsd) and 0 < nsd <= 1 and run["nsd"] is None
    assert "| asd_mm | nsd |" in (tmp_path / "c" / "compare.md").read_text()


def test_compare_pools_the_folds_of_a_cross_validation(tiny_tree, copy_run, tmp_path):
    """Two folds of one config (``validation: {fold: k, folds: 2}``), each evaluated on its own
    validation cases: compare adds the pooled row (every labelled case once, the case-weighted mean
    of the two folds); a run of another config is not pooled with them."""
    import yaml

    from semi3d.config import load_config
    from semi3d.engine.trainer import train
    from semi3d.evaluation.evaluate import evaluate_run

    runs = []
    for k in (0, 1):
        tiny_tree.update(name=f"cv_f{k}")
        tiny_tree["data"]["splits"] = {"validation": {"fold": k, "folds": 2}, "test": {}}
        tiny_tree["train"].update(iterations=2, val_every=2, checkpoint_every=2)
        cfg = load_config(tree=tiny_tree)
        train(cfg)
        evaluate_run(cfg.run_dir, "validation")
        runs.append(cfg.run_dir)
    other = copy_run(runs[0], "other_lr")
    tree = yaml.safe_load((other / "config.yaml").read_text())
    tree["train"]["optimizer"]["lr"] = 0.5
    (other / "config.yaml").write_text(yaml.safe_dump(tree))
    r = CliRunner().invoke(app, ["compare", *map(str, runs), str(other), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "c" / "compare.json").read_text())["rows"]
    assert [x["run"] for x in rows] == ["cv_f0", "cv_f1", "cv_f0 (2)", "cv_f0 (cross-validation, folds 0,1)"]
    f0, f1, pooled = rows[0], rows[1], rows[3]
    assert (f0["cases"], f1["cases"], pooled["cases"]) == (3, 2, 5)
    assert pooled["dice"] == pytest.approx((3 * f0["dice"] + 2 * f1["dice"]) / 5)
    assert pooled["labelled"] == "2-3" and pooled["method"] == "supervised"
    md = (tmp_path / "c" / "compare.md").read_text()
    assert "cross-validation, folds 0,1" in md and "its pooled row covers them all" in md
