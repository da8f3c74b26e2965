"""benchlib: the record of the code a result came from (HEAD when the script started, not when it
ends: a long run outlives commits made meanwhile), and the scripts' one entry point for bad input
and for Ctrl-C / SIGTERM."""
import subprocess
import sys
from pathlib import Path

import pytest

from stops import STOPS, stop_now

ROOT = Path(__file__).resolve().parents[2]


def test_the_commit_is_read_once_when_the_script_starts(load_benchmark, monkeypatch):
    benchlib = load_benchmark("benchlib")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=benchlib.ROOT).stdout.strip()
    assert head and benchlib.STARTED_AT.split("+")[0] == head
    monkeypatch.setattr(benchlib.subprocess, "run", lambda *a, **k: pytest.fail("git asked again when the result is written"))
    assert benchlib.git_commit() == benchlib.STARTED_AT


def test_bad_input_ends_a_benchmark_script_with_one_error_line(tmp_path):
    """Before ``benchlib.script`` a missing config ended ``run_la.py`` with a traceback (exit 1)."""
    missing = tmp_path / "missing.yaml"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_la.py"), str(missing), "--name", "x",
                        "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {missing}: cannot read config: No such file or directory"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "res").exists()


@pytest.mark.parametrize("signum,name", STOPS)
def test_a_stop_outside_training_ends_a_benchmark_script_with_one_line(load_benchmark, monkeypatch, capsys,
                                                                       tmp_path, signum, name):
    """Before, only training and mining were wrapped: a Ctrl-C during ``inference_la.py``'s
    evaluation ended with a traceback, and a SIGTERM killed it without a word."""
    benchlib, inference_la = load_benchmark("benchlib"), load_benchmark("inference_la")
    monkeypatch.setattr(inference_la, "run_variants", lambda *a, **k: stop_now(signum))
    with pytest.raises(SystemExit) as e:
        benchlib.script(lambda: inference_la.main([str(tmp_path / "run"), "--results", str(tmp_path / "res")]))
    assert e.value.code == 128 + signum
    assert capsys.readouterr().err == f"stopped: {name}\nrerun the same command to continue\n"
    assert not (tmp_path / "res").exists()


def test_every_benchmark_script_runs_through_script():
    scripts = [p for p in (ROOT / "benchmarks").glob("*.py")
               if 'if __name__ == "__main__":' in p.read_text()]
    # gpu_check.py runs on a lent GPU machine from its own copy of the tree, without semi3d's errors
    assert len(scripts) > 10 and all(p.read_text().rstrip().endswith("script(main)")
                                     for p in scripts if p.name != "gpu_check.py")
