"""benchmarks/inference_la.py on a tiny M&N run: every variant is evaluated, and ``--across`` with
the same run given twice (the mean of two identical models) must score exactly the run alone."""
import json

from semi3d.config import load_config
from semi3d.engine.trainer import train
from tiny_configs import mn_tree


def test_variants_and_the_mean_of_identical_runs(synth_root, tmp_path, load_benchmark):
    tree = mn_tree(synth_root, tmp_path / "runs", iterations=6, warmup=3)
    tree["data"]["splits"]["validation"] = {"last": 1}
    cfg = load_config(tree=tree)
    train(cfg)
    run, results = cfg.run_dir, tmp_path / "results"
    rows = load_benchmark("inference_la").main([str(run), str(run), "--name", "inf", "--variants", "net3d,ensemble",
                                                "--across", "--results", str(results)])
    assert [r["run"] for r in rows] == ["mn", "mn", "mn+mn"]
    for v in ("net3d", "ensemble"):
        alone, across = rows[0][v], rows[2][v]
        assert across["dice_per_case"] == alone["dice_per_case"] and across["hd95"] == alone["hd95"]
    assert rows[0]["net3d"]["dice_per_case"] != rows[0]["ensemble"]["dice_per_case"]
    metrics = json.loads((run / "eval_validation_net3d_across" / "metrics.json").read_text())
    assert metrics["ensemble"] == [str(run / "checkpoints" / "model_net3d.pt")] * 2
    assert "mn+mn" in (results / "inf.md").read_text()
