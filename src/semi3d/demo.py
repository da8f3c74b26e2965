"""The embedded default job: a synthetic multi-class dataset, a short training, evaluation on
held-out synthetic test cases."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from .config import load_config
from .data.synthetic import write_dataset
from .engine.rundir import RunDir
from .engine.trainer import train
from .evaluation.evaluate import evaluate_run


def run_demo(out: Path = Path("runs/demo"), method: str = "supervised", overrides: list[str] = ()) -> dict:
    """Write the synthetic dataset (once), train (resuming an interrupted demo), evaluate on the
    test cases with their predictions saved, and write the run's report. Returns ``{"summary":
    per-class means, "run_dir", "predictions", "metrics", "report"}`` (paths)."""
    from .reporting.report import build_report

    out = Path(out)
    data_root = out / "data"
    if not (data_root / "dataset.json").is_file():
        write_dataset(data_root, n_labelled=8, n_unlabelled=8, n_test=4, seed=0, shape=(48, 48, 32), num_classes=3)
    tree = yaml.safe_load(resources.files("semi3d").joinpath("presets/demo.yaml").read_text())
    tree["data"]["root"] = str(data_root)
    tree["output_dir"] = str(out)
    tree["name"] = method
    tree["method"]["name"] = method
    cfg = load_config(tree=tree, overrides=list(overrides))
    run = RunDir(cfg.run_dir)
    train(cfg, resume=run.last.is_file())
    summary = evaluate_run(run.path, split="test", save_predictions=True)
    report = build_report(run.path, None, "eval_test", False, None)
    ev = run.eval_dir("test")
    return {"summary": summary, "run_dir": cfg.run_dir, "predictions": ev / "predictions",
            "metrics": ev / "metrics.json", "report": report["html"]}
