"""benchlib's record of the code a result came from: HEAD when the script started, not when it ends
(a long run outlives commits made meanwhile)."""
import subprocess

import pytest


def test_the_commit_is_read_once_when_the_script_starts(load_benchmark, monkeypatch):
    benchlib = load_benchmark("benchlib")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=benchlib.ROOT).stdout.strip()
    assert head and benchlib.STARTED_AT.split("+")[0] == head
    monkeypatch.setattr(benchlib.subprocess, "run", lambda *a, **k: pytest.fail("git asked again when the result is written"))
    assert benchlib.git_commit() == benchlib.STARTED_AT
