"""RunDir: the one place that knows a run folder's layout."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import semi3d
from semi3d.engine.rundir import RunDir
from semi3d.errors import InputError


def _run(tmp_path: Path, selection: str = "final") -> RunDir:
    run = RunDir(tmp_path / "r")
    run.checkpoints.mkdir(parents=True)
    run.config.write_text(yaml.safe_dump({"train": {"selection": selection}}))
    return run


def test_layout_paths(tmp_path):
    run = RunDir(tmp_path)
    assert run.config == tmp_path / "config.yaml" and run.splits == tmp_path / "splits.json"
    assert run.last == tmp_path / "checkpoints" / "last.pt"
    assert run.model("best") == tmp_path / "checkpoints" / "model_best.pt"
    assert run.eval_dir("test") == tmp_path / "eval_test" and run / "pseudo" == tmp_path / "pseudo"


@pytest.mark.parametrize("selection,expected", [("best_validation", "model_best.pt"), ("final", "model_final.pt")])
def test_selected_model_follows_the_selection_policy(tmp_path, selection, expected):
    run = _run(tmp_path, selection)
    assert run.selected_model().name == expected
    assert run.selected_model("final").name == "model_final.pt"
    with pytest.raises(InputError, match="--which takes"):
        run.selected_model("nope")


def test_saved_model_takes_the_first_existing(tmp_path):
    run = _run(tmp_path)
    assert run.saved_model() is None
    run.model("final").write_bytes(b"x")
    assert run.saved_model() == run.model("final")
    run.model("best").write_bytes(b"x")
    assert run.saved_model() == run.model("best") and run.saved_model(("final", "best")) == run.model("final")


def test_require_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="no such run folder"):
        RunDir(tmp_path / "absent").require()
    with pytest.raises(InputError, match="no config.yaml"):
        RunDir(tmp_path).require()
    with pytest.raises(InputError, match="no splits.json"):
        _run(tmp_path).load_splits()


def test_metrics_lookup(tmp_path):
    run = _run(tmp_path)
    assert run.metrics() is None
    (run.eval_dir("test")).mkdir()
    (run.eval_dir("test") / "metrics.json").write_text("{}")
    assert run.metrics() == run.eval_dir("test") / "metrics.json"  # the only evaluation
    (run.eval_dir("validation")).mkdir()
    (run.eval_dir("validation") / "metrics.json").write_text("{}")
    assert run.metrics() == run.eval_dir("validation") / "metrics.json"  # validation first
    assert run.metrics("eval_test") == run.eval_dir("test") / "metrics.json"
    with pytest.raises(InputError, match="no metrics.json"):
        run.metrics("eval_other")


def test_no_other_module_spells_the_layout():
    """The file names of a run folder appear as strings only in engine/rundir.py."""
    names = re.compile(r'"(checkpoints|last\.pt|model_(best|final)\.pt|config\.yaml|splits\.json|'
                       r'train_summary\.json|log\.jsonl)"')
    root = Path(semi3d.__file__).parent
    found = [f"{f.relative_to(root)}: {m.group(0)}" for f in root.rglob("*.py") if f.name != "rundir.py"
             for m in names.finditer(f.read_text())]
    assert not found, found
