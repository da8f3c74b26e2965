"""Ctrl-C / SIGTERM during training: the step in progress finishes, a checkpoint of it is written,
`Interrupted` is raised, and resuming gives the uninterrupted run's weights; the CLI says how to go on."""
import os
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from semi3d.cli import app
from semi3d.config import load_config
from semi3d.engine.interrupt import Interrupted, StopRequest
from semi3d.engine.trainer import Trainer, train
from stops import STOPS, stop_now


class _SignalledTrainer(Trainer):
    """Sends this process ``signum`` in the middle of step ``at`` (0-based), as a user would."""

    signum, at = signal.SIGINT, 2

    def train_step(self, step):
        if step == self.at:
            os.kill(os.getpid(), self.signum)
        return super().train_step(step)


def _last_checkpoint(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_resume_equals_uninterrupted(tiny_tree, signum):
    tiny_tree["train"].update(iterations=6, checkpoint_every=4, val_every=3)
    full = load_config(tree={**tiny_tree, "name": "full"})
    train(full)
    part = load_config(tree={**tiny_tree, "name": "part"})
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    tr = _SignalledTrainer(part)
    tr.signum = signum
    with pytest.raises(Interrupted) as e:
        tr.fit()
    # the step the signal came in finished (3 steps), and its checkpoint is there, though 3 is no
    # checkpoint_every multiple; the handlers are the ones before fit()
    assert (e.value.step, e.value.path, e.value.exit_code) == (3, part.run_dir / "checkpoints" / "last.pt", 128 + signum)
    assert _last_checkpoint(part.run_dir)["step"] == 3 and not (part.run_dir / "checkpoints" / "model_final.pt").exists()
    assert {s: signal.getsignal(s) for s in before} == before
    Trainer(part, resume=True).fit()
    a, b = _last_checkpoint(full.run_dir)["method"], _last_checkpoint(part.run_dir)["method"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler, or SIG_IGN when started in the background
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt) as e:
            os.kill(os.getpid(), signal.SIGINT)
        assert not isinstance(e.value, Interrupted)
    assert signal.getsignal(signal.SIGINT) is before


def test_cli_train_says_how_to_resume(tiny_tree, tmp_path, monkeypatch):
    import yaml

    tiny_tree["train"].update(iterations=6, checkpoint_every=4)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_tree))
    monkeypatch.setattr("semi3d.engine.trainer.Trainer", _SignalledTrainer)
    res = CliRunner().invoke(app, ["train", str(path)])
    assert res.exit_code == 130, res.output
    assert "SIGINT after step 3" in res.output and f"semi3d train {path} --resume" in res.output
    monkeypatch.undo()
    res = CliRunner().invoke(app, ["train", str(path), "--resume"])
    assert res.exit_code == 0 and "done: 6 iterations" in res.output


def _stop_with(signum):
    """A stand-in for the trainer's PatchSampler (built after preprocessing) that stops the run with
    ``signum``."""
    return lambda *a, **k: stop_now(signum)


@pytest.mark.parametrize("signum,name", STOPS)
def test_ctrl_c_or_sigterm_while_preprocessing_leaves_no_run_folder_and_says_so(tiny_tree, tmp_path, monkeypatch,
                                                                                signum, name):
    """Ctrl-C / SIGTERM before the first step (the data being read): no signal handler of the
    trainer's yet, so it stops at once; the run folder written so far goes again, and the CLI says
    so in a line."""
    import yaml

    tiny_tree["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_tree))
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr("semi3d.engine.trainer.PatchSampler", _stop_with(signum))
    res = CliRunner().invoke(app, ["train", str(path)])
    assert res.exit_code == 128 + signum and f"stopped: {name}, with nothing to resume" in res.output, res.output
    assert not (tmp_path / "runs").exists() and signal.getsignal(signal.SIGTERM) == before


def test_benchmark_scripts_stop_with_one_line(load_benchmark, tiny_tree, monkeypatch, capsys):
    benchlib = load_benchmark("benchlib")
    tiny_tree["train"].update(iterations=6, checkpoint_every=4)
    monkeypatch.setattr("semi3d.engine.trainer.Trainer", _SignalledTrainer)
    with pytest.raises(SystemExit) as e:
        benchlib.script(lambda: benchlib.train_and_evaluate(load_config(tree=tiny_tree), "validation"))
    assert e.value.code == 130 and "SIGINT after step 3" in capsys.readouterr().err
    monkeypatch.undo()  # rerunning the same command resumes and finishes
    r = benchlib.train_and_evaluate(load_config(tree=tiny_tree), "validation")
    assert r["resumed"] and r["summary"]["iterations"] == 6


@pytest.mark.parametrize("signum,name", STOPS)
def test_benchmark_scripts_stop_with_one_line_while_preprocessing(load_benchmark, tiny_tree, monkeypatch, capsys,
                                                                  signum, name):
    benchlib = load_benchmark("benchlib")
    monkeypatch.setattr("semi3d.engine.trainer.PatchSampler", _stop_with(signum))
    with pytest.raises(SystemExit) as e:
        benchlib.script(lambda: benchlib.train_and_evaluate(load_config(tree=tiny_tree), "validation"))
    assert e.value.code == 128 + signum
    assert capsys.readouterr().err.endswith(f" ...\nstopped: {name}\nrerun the same command to continue\n")


@pytest.mark.parametrize("rank", [0, 1])
def test_under_torchrun_rank_0_alone_says_how_to_resume(monkeypatch, capsys, rank):
    import typer

    from semi3d import cli
    from semi3d.engine.distributed import DistInfo

    monkeypatch.setattr("semi3d.engine.distributed.current", lambda: DistInfo(rank, 2, rank))

    def stopped():
        raise Interrupted(signal.SIGTERM, 7, "runs/x/checkpoints/last.pt")

    with pytest.raises(typer.Exit) as e:
        cli._resumable("train", "cfg.yaml", ["seed=1"], stopped, Path("runs/x/checkpoints/last.pt"))
    err = capsys.readouterr().err
    assert e.value.exit_code == 143
    if rank:
        assert err == ""
    else:
        assert "SIGTERM after step 7" in err
        assert "continue with: torchrun <the same options> -m semi3d.cli train cfg.yaml --set seed=1 --resume" in err
