"""benchmarks/shift_gap_la.py on a tiny trained run: strength 0 renders the cases unchanged, so it
must score exactly the in-domain reference; stronger shifts are evaluated on rendered copies."""
import json

import yaml
from typer.testing import CliRunner

from semi3d.cli import app


def test_shift_gap_rows_and_identity_strength(tiny_tree, tmp_path, monkeypatch, load_benchmark):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_tree))
    r = CliRunner().invoke(app, ["train", str(cfg), "--set", "train.iterations=4", "--set", "name=gap"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "gap"
    mod = load_benchmark("shift_gap_la")
    args = [str(run), "--domains", "B", "D", "--strengths", "0", "2", "--data-root", str(tmp_path / "shift"),
            "--results", str(tmp_path / "results")]
    rows = mod.main(args)

    assert [(x["domain"], x["strength"]) for x in rows] == [("A", 0.0), ("B", 0.0), ("D", 0.0), ("B", 2.0), ("D", 2.0)]
    ref = rows[0]
    for x in rows[1:3]:  # the identity shift: exact copies, the same metrics
        assert x["dice"] == ref["dice"] and x["dice_drop"] == 0.0
    for x in rows[3:]:
        assert 0 <= x["dice"] <= 1 and x["dice_drop"] == ref["dice"] - x["dice"]
        assert (run / f"eval_shift_{x['domain']}_s2" / "metrics.json").is_file()
    saved = json.loads((tmp_path / "results" / "shift_gap_la.json").read_text())
    assert saved["rows"] == rows and saved["shifts"]["B@2"]["gamma"] == 0.6 ** 2
    assert "| gap | D | 2.0000 |" in (tmp_path / "results" / "shift_gap_la.md").read_text()
    # a rerun reuses the rendered cases
    info = tmp_path / "shift" / "s2" / "domains.json"
    before = info.stat().st_mtime_ns
    assert mod.main(args) == rows and info.stat().st_mtime_ns == before
