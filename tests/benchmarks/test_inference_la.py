"""benchmarks/inference_la.py on a tiny M&N run: every variant is evaluated, and ``--across`` with
the same run given twice (the mean of two identical models) must score exactly the run alone."""
import json

from semi3d.config import load_config
from semi3d.engine.trainer import train

TINY_SEGFORMER = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
                      decoder_hidden_size=16, sr_ratios=[4, 2, 1, 1])


def test_variants_and_the_mean_of_identical_runs(tiny_tree, tmp_path, load_benchmark):
    tiny_tree.update(name="mn")
    tiny_tree["model"]["net2d"] = dict(name="segformer", options=dict(adaptation="full", config=TINY_SEGFORMER))
    tiny_tree["method"] = dict(name="mn", options=dict(epoch_length=1))
    tiny_tree["train"]["schedule"] = dict(name="cosine", cycles=[3])
    cfg = load_config(tree=tiny_tree)
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
