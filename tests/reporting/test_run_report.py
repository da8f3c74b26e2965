"""Run report: the pages, their pictures, the worst-first table and the missing-evaluation paths."""
import json
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from semi3d.cli import app
from semi3d.errors import InputError
from semi3d.reporting.report import build_report, metrics_rows, pick_cases, plot_curves


def test_metrics_rows_worst_first_and_picks():
    per_case = {
        "a": {"organ": {"dice": 0.9, "hd95": 1.0}, "lesion": {"dice": 0.7, "hd95": 3.0}},   # mean 0.8
        "b": {"organ": {"dice": 0.2, "hd95": 9.0}, "lesion": {"dice": 0.4, "hd95": 5.0}},   # mean 0.3
        "c": {"organ": {"dice": 0.6, "hd95": 2.0}, "lesion": {"dice": 0.6, "hd95": 2.0}},   # mean 0.6
    }
    rows = metrics_rows(per_case, ["organ", "lesion"])
    assert [r["case"] for r in rows] == ["b", "c", "a"] and [r["rank"] for r in rows] == [1, 2, 3]
    assert "nsd" not in rows[0]
    per_case["b"]["organ"]["nsd"], per_case["b"]["lesion"]["nsd"] = 0.5, 0.7  # evaluated with --nsd-tolerance
    assert metrics_rows(per_case, ["organ", "lesion"])[0]["nsd"] == pytest.approx(0.6)
    assert rows[0]["dice"] == pytest.approx(0.3) and rows[0]["hd95"] == pytest.approx(7.0)
    assert rows[0]["dice_organ"] == 0.2 and rows[0]["dice_lesion"] == 0.4
    assert pick_cases(rows) == [("best", "a"), ("median", "c"), ("worst", "b")]
    assert pick_cases(rows[:1]) == [("best", "b")]
    assert pick_cases(rows[1:]) == [("best", "a"), ("worst", "c")]
    assert pick_cases([]) == []


def test_curves_show_the_unlabelled_share(tmp_path):
    recs = [{"step": s, "loss/net2d": 1 / s, "loss/net3d": 2 / s, "lr/net2d": 0.01, "lr/net3d": 0.01,
             "n_l": 4 - min(s // 3, 3), "n_u": min(s // 3, 3), "stage": 1 if s < 5 else 2} for s in range(1, 11)]
    recs.append({"step": 10, "val/dice": 0.5})
    p = plot_curves(recs, tmp_path / "c.png")
    assert p.stat().st_size > 5000
    from PIL import Image

    w, h = Image.open(p).size
    assert w > 3 * h  # four panels side by side
    assert plot_curves([], tmp_path / "none.png") is None


def _img_sources(page):
    return re.findall(r"<img[^>]*src='([^']*)'", page)


def test_report_of_an_evaluated_run(sup_run, tmp_path):
    out = tmp_path / "rep"
    paths = build_report(sup_run, out)
    page = paths["html"].read_text()
    srcs = _img_sources(page)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)  # self-contained
    assert "Per case, worst first" in page and "syn_004" in page and "method" in page
    md = paths["markdown"].read_text()
    assert "![training curves](curves.png)" in md and "(cases.png)" in md and "```yaml" in md
    assert "| rank | case |" in md and "**labelled** (3)" in md and "nsd" not in md
    assert (out / "curves.png").stat().st_size > 5000 and (out / "cases.png").stat().st_size > 5000
    assert (sup_run / "progress.png").is_file()  # the trainer's picture is kept


def test_report_shows_the_nsd_of_an_evaluation_with_a_tolerance(sup_run, copy_run, tmp_path):
    from semi3d.evaluation.evaluate import evaluate_run

    run = copy_run(sup_run, "nsd")
    evaluate_run(run, "validation", out=run / "eval_nsd", nsd_tolerance=2.0)
    md = build_report(run, tmp_path / "rep", eval_dir="eval_nsd")["markdown"].read_text()
    assert "| class | dice | dice_std | jaccard | hd95 | asd | hd95_mm | asd_mm | nsd |" in md
    assert "| hd95_mm | asd_mm | nsd |" in md.split("Per case, worst first")[1]


def test_report_without_evaluation(sup_run, copy_run, tmp_path):
    run = copy_run(sup_run, "noeval")
    shutil.rmtree(run / "eval_validation")
    paths = build_report(run)
    assert paths["html"].parent == run / "report"
    page = paths["html"].read_text()
    assert "No evaluation found" in page and "semi3d evaluate" in page and len(_img_sources(page)) == 1
    assert "No evaluation found" in paths["markdown"].read_text()
    # --evaluate runs the evaluation first
    paths = build_report(run, evaluate=True)
    assert (run / "eval_validation" / "metrics.json").is_file()
    assert "Per case, worst first" in paths["html"].read_text()


def test_report_bad_input(sup_run, tmp_path):
    with pytest.raises(InputError, match="no such run folder"):
        build_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a semi3d run folder"):
        build_report(tmp_path / "empty")
    with pytest.raises(InputError, match="no metrics.json"):
        build_report(sup_run, tmp_path / "r", eval_dir="eval_nothing")
    r = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no such run folder" in r.output and "Traceback" not in r.output


def test_cli_report_of_an_mn_run(mn_run, tmp_path):
    r = CliRunner().invoke(app, ["report", str(mn_run), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "report.html" in r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "**method**: mn" in md and "2D network" in md
    m = json.loads((mn_run / "eval_validation" / "metrics.json").read_text())
    assert all(c in md for c in m["per_case"])


def test_evaluate_with_largest_component_postprocessing(sup_run, tmp_path):
    from semi3d.data.volumes import read_volume
    from semi3d.evaluation.evaluate import evaluate_run
    from semi3d.data.postprocess import keep_largest_component

    raw, pp = tmp_path / "raw", tmp_path / "pp"
    evaluate_run(sup_run, "validation", save_predictions=True, out=raw)
    evaluate_run(sup_run, "validation", overrides=["inference.postprocess=largest_component"],
                 save_predictions=True, out=pp)
    files = sorted((raw / "predictions").iterdir())
    assert files
    for f in files:
        a, b = (np.asarray(read_volume(d / "predictions" / f.name).array) for d in (raw, pp))
        assert np.array_equal(b, keep_largest_component(a, 2))
    assert json.loads((pp / "metrics.json").read_text())["postprocess"] == "largest_component"


def test_postprocess_benchmark_script(sup_run, copy_run, tmp_path, load_benchmark):
    run = copy_run(sup_run)
    rows = load_benchmark("postprocess_la").main([str(run), "--results", str(tmp_path / "res")])
    ref = json.loads((sup_run / "eval_validation" / "metrics.json").read_text())["mean"]
    assert rows[0]["none"]["dice"] == pytest.approx(ref["organ"]["dice"])  # the plain evaluation, redone
    assert set(rows[0]["largest_component"]) == {"dice", "jaccard", "hd95", "asd"} and rows[0]["n_cases"] == 1
    saved = json.loads((tmp_path / "res" / "postprocess_la.json").read_text())
    assert saved["rows"] == rows and "postprocess_la.py" in saved["command"]
    assert (run / "eval_validation_largest_component" / "metrics.json").is_file()
