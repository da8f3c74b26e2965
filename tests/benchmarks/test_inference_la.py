"""benchmarks/inference_la.py on a tiny M&N run: every variant is evaluated, and ``--across`` with
the same run given twice (the mean of two identical models) must score exactly the run alone;
``--set`` overrides reach every variant's saved model and go to ``--tag``'s files only."""
import json

import pytest
import torch

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
    md = (results / "inf.md").read_text()
    assert "mn+mn" in md and "mirror axes of the `_tta` variants [0,1,2]" in md  # net3d / ensemble use none

    untagged = (run / "checkpoints" / "model_net3d.pt").read_bytes()
    with pytest.raises(SystemExit):   # --set without --tag would overwrite the files above
        load_benchmark("inference_la").main([str(run), "--variants", "net3d", "--set", "inference.overlap=0.75",
                                             "--results", str(results)])
    tagged = load_benchmark("inference_la").main([str(run), "--name", "inf75", "--variants", "net3d", "--set",
                                                  "inference.overlap=0.75", "--tag", "_ovl75", "--results", str(results)])
    saved = torch.load(run / "checkpoints" / "model_net3d_ovl75.pt", weights_only=False)
    assert saved["config"]["inference"]["overlap"] == 0.75
    assert (run / "eval_validation_net3d_ovl75" / "metrics.json").exists() and tagged[0]["net3d"]["dice_per_case"]
    assert (run / "checkpoints" / "model_net3d.pt").read_bytes() == untagged
    assert "inference.overlap=0.75" in (results / "inf75.md").read_text()
