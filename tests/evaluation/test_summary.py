import csv
import json

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table

from semi3d.errors import InputError
from semi3d.evaluation.summary import format_table, summarise, table_markdown, write_metrics


def _row(dice, hd95):
    return {"dice": dice, "jaccard": dice / (2 - dice), "hd95": hd95, "asd": hd95 / 2, "hd95_mm": 2 * hd95, "asd_mm": hd95}


PER_CASE = {
    "case_a": {"liver": _row(0.9, 2.0), "tumour": _row(0.5, 8.0)},
    "case_b": {"liver": _row(0.8, 4.0), "tumour": _row(0.7, 6.0)},
    "case_c": {"liver": _row(0.7, 3.0), "tumour": _row(0.0, 10.0)},
}


def test_summarise_means_and_std():
    s = summarise(PER_CASE)
    assert list(s) == ["liver", "tumour", "mean"]
    assert s["liver"]["dice"] == pytest.approx(0.8)
    assert s["liver"]["dice_std"] == pytest.approx(np.std([0.9, 0.8, 0.7]))
    assert s["tumour"]["hd95"] == pytest.approx(8.0)
    # mean pseudo-class: per-case class average, then over cases
    per_case_avg = [0.7, 0.75, 0.35]
    assert s["mean"]["dice"] == pytest.approx(np.mean(per_case_avg))
    assert s["mean"]["dice_std"] == pytest.approx(np.std(per_case_avg))
    assert s["mean"]["dice"] == pytest.approx((s["liver"]["dice"] + s["tumour"]["dice"]) / 2)


def test_summarise_single_class_has_no_mean_row():
    s = summarise({"a": {"c1": _row(0.5, 1.0)}, "b": {"c1": _row(1.0, 3.0)}})
    assert list(s) == ["c1"]
    assert s["c1"]["hd95"] == pytest.approx(2.0) and s["c1"]["hd95_std"] == pytest.approx(1.0)
    assert summarise({}) == {}


def test_write_metrics_files(tmp_path):
    out = tmp_path / "new" / "eval"
    payload = write_metrics(out, PER_CASE, extra={"method": "mean_teacher", "n_cases": np.int64(3)})
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json"]  # no temp files left
    data = json.loads((out / "metrics.json").read_text())
    assert data["method"] == "mean_teacher" and data["n_cases"] == 3
    assert data["per_case"]["case_b"]["tumour"]["dice"] == pytest.approx(0.7)
    assert data["mean"]["liver"]["dice"] == pytest.approx(0.8)
    assert payload["mean"] == summarise(PER_CASE)
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    assert list(rows[0]) == ["case", "class", "dice", "jaccard", "hd95", "asd", "hd95_mm", "asd_mm"]
    assert (rows[3]["case"], rows[3]["class"]) == ("case_b", "tumour")
    assert float(rows[3]["hd95_mm"]) == pytest.approx(12.0)
    # overwriting an existing result works
    write_metrics(out, {"x": {"liver": _row(1.0, 0.0)}})
    assert list(json.loads((out / "metrics.json").read_text())["per_case"]) == ["x"]


def test_write_metrics_unwritable_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="a_file"):
        write_metrics(blocker / "eval", PER_CASE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    assert blocker.read_text() == "not a folder"


def test_write_metrics_reserved_extra(tmp_path):
    with pytest.raises(InputError):
        write_metrics(tmp_path / "out", PER_CASE, extra={"mean": 1})
    assert not (tmp_path / "out").exists()


def test_format_table():
    table = format_table(summarise(PER_CASE), title="val")
    assert isinstance(table, Table)
    assert table.row_count == 3
    console = Console(width=150, record=True)
    console.print(table)
    text = console.export_text()
    assert "80.00" in text  # liver dice as percent
    assert "HD95 (mm)" in text and "tumour" in text


def test_table_markdown():
    md = table_markdown([{"method": "mt", "dice": 0.81234}, {"method": "a|b"}], ["method", "dice"])
    lines = md.strip().splitlines()
    assert lines[0] == "| method | dice |"
    assert lines[1] == "|---|---|"
    assert lines[2] == "| mt | 0.8123 |"
    assert lines[3] == "| a\\|b |  |"
