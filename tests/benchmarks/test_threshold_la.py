"""benchmarks/threshold_la.py on a tiny two-class run: the threshold 0.5 is the argmax, so its rows
must score what ``evaluate`` scores (with and without the largest component); the foreground volume
shrinks as the threshold rises; ``--model`` picks a model file of the run; a run of more than two
classes is refused."""
import copy
import json

import pytest

from semi3d.config import load_config
from semi3d.data.synthetic import write_dataset
from semi3d.engine.trainer import train
from semi3d.errors import InputError
from semi3d.evaluation.evaluate import evaluate_run


def test_half_is_the_argmax_and_the_volume_falls(load_benchmark, tiny_tree, tmp_path):
    root = write_dataset(tmp_path / "Dataset002_Two", n_labelled=4, n_unlabelled=0, shape=(24, 24, 16), num_classes=2)
    tree = copy.deepcopy(tiny_tree)
    tree["data"].update(root=str(root), splits={"labelled": {"first": 2}, "validation": {"last": 2}})
    tree["train"].update(iterations=4, val_every=4, checkpoint_every=4)
    cfg = load_config(tree=tree)
    train(cfg)
    mod = load_benchmark("threshold_la")
    res = mod.main([str(cfg.run_dir), "--thresholds", "0.9", "0.5", "0.1", "--name", "thr",
                    "--results", str(tmp_path / "results")])
    rows = {(r["threshold"], r["postprocess"]): r for r in res[0]["rows"]}
    assert res[0]["n_cases"] == 2 and sorted({t for t, _ in rows}) == [0.1, 0.5, 0.9]
    for pp in ("none", "largest_component"):
        summary = evaluate_run(cfg.run_dir, "validation", overrides=[f"inference.postprocess={pp}"],
                               out=tmp_path / f"eval_{pp}")
        per_case = json.loads((tmp_path / f"eval_{pp}" / "metrics.json").read_text())["per_case"]
        fg = next(k for k in summary if k != "mean")
        assert rows[(0.5, pp)]["dice"] == pytest.approx(summary[fg]["dice"])
        assert rows[(0.5, pp)]["dice_per_case"] == pytest.approx({c: v[fg]["dice"] for c, v in per_case.items()})
        volumes = [rows[(t, pp)]["volume_ratio"] for t in (0.1, 0.5, 0.9)]
        assert volumes == sorted(volumes, reverse=True) and volumes[0] > volumes[2]
    md = (tmp_path / "results" / "thr.md").read_text()
    assert "--thresholds 0.9 0.5 0.1" in md and f"| 0.5000 | largest_component | {rows[(0.5, 'largest_component')]['dice']:.4f} |" in md
    assert json.loads((tmp_path / "results" / "thr.json").read_text())["machine"]["threads"] >= 1
    # --model names a file in the run's checkpoints/ (inference_la.py's model_<variant>.pt)
    final = mod.main([str(cfg.run_dir), "--thresholds", "0.5", "--model", "model_final.pt", "--name", "thr_final",
                      "--results", str(tmp_path / "results")])[0]
    assert final["model"] == str(cfg.run_dir / "checkpoints" / "model_final.pt")
    assert [r["dice"] for r in final["rows"]] == pytest.approx([rows[(0.5, pp)]["dice"] for pp in ("none", "largest_component")])
    with pytest.raises(InputError, match="model_ensemble.pt"):
        mod.main([str(cfg.run_dir), "--model", "model_ensemble.pt", "--results", str(tmp_path / "results")])


def test_refusals(load_benchmark, tiny_tree, tmp_path):
    mod = load_benchmark("threshold_la")
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        mod.main(["run", "--thresholds", "0.5", "1.0"])
    tree = copy.deepcopy(tiny_tree)
    tree["train"].update(iterations=1, val_every=1, checkpoint_every=1)
    cfg = load_config(tree=tree)  # the synthetic dataset's 3 classes
    train(cfg)
    with pytest.raises(InputError, match="has 3 classes; a foreground threshold needs two"):
        mod.main([str(cfg.run_dir), "--results", str(tmp_path / "results")])
    assert not (tmp_path / "results").exists()
