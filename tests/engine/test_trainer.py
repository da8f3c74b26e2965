import json
import threading
from pathlib import Path

import pytest
import torch

from semi3d.config import load_config
from semi3d.engine.runlog import TIMING_KEYS
from semi3d.engine.trainer import Trainer, train
from semi3d.engine.precision import cpu_has_native_bf16 as _REAL_NATIVE_BF16  # before the suite's fp32 override
from semi3d.errors import InputError


def _params(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["method"]


def test_short_training_lowers_loss(tiny_tree):
    tiny_tree["train"].update(iterations=40, val_every=40, checkpoint_every=40)
    cfg = load_config(tree=tiny_tree)
    train(cfg)
    losses = [r["loss/net"] for r in map(json.loads, (cfg.run_dir / "log.jsonl").read_text().splitlines()) if "loss/net" in r]
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8


def test_run_folder_contents(tiny_tree):
    cfg = load_config(tree=tiny_tree)
    train(cfg)
    d = cfg.run_dir
    for f in ("config.yaml", "splits.json", "log.jsonl", "log.csv", "progress.png", "train_summary.json",
              "checkpoints/last.pt", "checkpoints/model_final.pt", "checkpoints/model_best.pt"):
        assert (d / f).is_file(), f
    splits = json.loads((d / "splits.json").read_text())
    assert len(splits["labelled"]) == 3 and len(splits["validation"]) == 1 and len(splits["test"]) == 2
    assert not set(splits["test"]) & set(splits["labelled"] + splits["unlabelled"] + splits["validation"])
    # the resolved config is complete and reloads to the same config
    again = load_config(d / "config.yaml")
    assert again == cfg
    recs = [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
    assert any("val/dice" in r for r in recs)
    timed = [r for r in recs if "sec_per_it" in r]  # the batch-making share of each iteration
    assert timed and all(0 < r["data_sec_per_it"] < r["sec_per_it"] for r in timed)


def test_resume_equals_uninterrupted(tiny_tree, tmp_path):
    tiny_tree["train"].update(iterations=6, checkpoint_every=3)
    full = load_config(tree={**tiny_tree, "name": "full"})
    train(full)

    resumed = load_config(tree={**tiny_tree, "name": "part"})
    assert Trainer(resumed).fit(stop_at=4)["stopped"]  # interrupted after step 4 (not a checkpoint_every multiple)
    Trainer(resumed, resume=True).fit()

    a, b = _params(full.run_dir), _params(resumed.run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = [json.loads(x) for x in (full.run_dir / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (resumed.run_dir / "log.jsonl").read_text().splitlines()]
    strip = lambda recs: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in recs]
    assert strip(la) == strip(lb)


def test_refuses_to_overwrite_and_to_resume_nothing(tiny_tree):
    tiny_tree["train"]["iterations"] = 1
    cfg = load_config(tree=tiny_tree)
    with pytest.raises(InputError, match="nothing to resume"):
        Trainer(cfg, resume=True)
    train(cfg)
    with pytest.raises(InputError, match="already holds a checkpoint"):
        Trainer(cfg)


def test_unwritable_run_folder(tiny_tree, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    tiny_tree["output_dir"] = str(blocker)
    with pytest.raises(InputError, match="cannot write the run folder"):
        Trainer(load_config(tree=tiny_tree))


def test_empty_labelled_split_is_refused(tiny_tree):
    tiny_tree["data"]["splits"]["labelled"] = {"ids": []}
    with pytest.raises(InputError, match="labelled split is empty"):
        Trainer(load_config(tree=tiny_tree))


def test_test_split_can_never_be_trained_on(tiny_tree, synth_root):
    test_ids = sorted(p.name.split("_0000")[0] for p in (synth_root / "imagesTs").iterdir())
    tiny_tree["data"]["splits"]["labelled"] = {"ids": test_ids[:1] + []}
    tiny_tree["data"]["splits"]["test"] = {"ids": test_ids}
    with pytest.raises(InputError, match="test split can never be used"):
        Trainer(load_config(tree=tiny_tree))


def test_init_weights_are_the_starting_point_and_an_unknown_group_is_named(tiny_tree):
    first = Trainer(load_config(tree=tiny_tree))
    start = {k: v + 1.0 for k, v in first.method.groups["net"].state_dict().items() if v.is_floating_point()}
    tiny_tree["name"] = "tiny_init"
    again = Trainer(load_config(tree=tiny_tree), init={"net": {**first.method.groups["net"].state_dict(), **start}})
    assert all(torch.equal(again.method.groups["net"].state_dict()[k], v) for k, v in start.items())
    tiny_tree["name"] = "tiny_init2"
    with pytest.raises(InputError, match="unknown group 'student'"):
        Trainer(load_config(tree=tiny_tree), init={"student": {}})


def test_unknown_group_optimizer_named(tiny_tree):
    tiny_tree["train"]["group_optimizers"] = {"net2d": {"lr": 1e-3}}
    with pytest.raises(InputError, match="net2d"):
        Trainer(load_config(tree=tiny_tree))


def test_a_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tiny_tree):
    tiny_tree["train"].update(iterations=6, checkpoint_every=2)
    cfg = load_config(tree=tiny_tree)
    t = Trainer(cfg)
    step_fn = t.method.training_step

    def diverging(batch, step):
        losses = step_fn(batch, step)
        return {g: v * float("nan") for g, v in losses.items()} if step == 3 else losses

    t.method.training_step = diverging
    with pytest.raises(InputError, match=r"diverged at step 4: net loss is nan .*last\.pt holds step 2"):
        t.fit()
    assert torch.load(cfg.run_dir / "checkpoints" / "last.pt", weights_only=False)["step"] == 2
    assert Trainer(cfg, resume=True).fit()["iterations"] == 6  # resumable from there


def test_a_patch_the_network_cannot_take_is_refused_before_training(tiny_tree):
    tiny_tree["data"]["patch_size"] = [14, 16, 16]  # the tiny 3-level U-Net's divisor is 4
    with pytest.raises(InputError, match=r"data.patch_size: \[14, 16, 16\] is not a multiple of the divisor \[4, 4, 4\]"):
        train(load_config(tree=tiny_tree))
    assert not list(Path(tiny_tree["output_dir"]).rglob("*.pt"))  # nothing trained, no checkpoint


@pytest.fixture
def real_precision_auto(monkeypatch):
    """Undo the suite's fp32 override: ``precision: auto`` chooses as it would for a user."""
    monkeypatch.setattr("semi3d.engine.precision.cpu_has_native_bf16", _REAL_NATIVE_BF16)


def test_vnet_with_a_one_voxel_bottom_trains_under_precision_auto(tiny_tree, real_precision_auto):
    """The case that went NaN in bf16 on a native-bf16 CPU: a V-Net whose deepest BatchNorm level is
    1x1x1 (16^3 patch, batch 2). Under ``precision: auto`` (bf16 where the CPU has it) it trains."""
    from semi3d.engine.precision import resolve_precision

    tiny_tree["model"]["net3d"] = {"name": "vnet", "options": {"n_filters": 4}}
    tiny_tree["precision"] = "auto"
    tiny_tree["train"].update(iterations=60, val_every=60, checkpoint_every=60, log_every=1)
    cfg = load_config(tree=tiny_tree)
    tr = Trainer(cfg)
    assert tr.precision == resolve_precision("auto", torch.device("cpu"))
    assert tr.precision == ("bf16" if _REAL_NATIVE_BF16() else "fp32")
    tr.fit()
    losses = [r["loss/net"] for r in map(json.loads, (cfg.run_dir / "log.jsonl").read_text().splitlines()) if "loss/net" in r]
    assert len(losses) == 60 and all(map(lambda v: v == v, losses))
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10


def test_resume_refuses_a_changed_network_split_or_method_and_records_safe_changes(tiny_tree):
    """--resume compares the new config with the run's: data, splits, networks and method changes are
    one clear error; a longer run or a new lr is allowed, written to config.yaml and recorded."""
    import yaml

    tiny_tree["train"].update(iterations=4, checkpoint_every=2)
    cfg = load_config(tree=tiny_tree)
    train(cfg)
    run = cfg.run_dir
    before = (run / "config.yaml").read_text()
    for key, value in [("model.net3d.options.base", 8), ("data.splits.labelled.first", 2),
                       ("method.name", "mean_teacher"), ("seed", 3)]:
        with pytest.raises(InputError, match=key.replace(".", r"\.")):
            Trainer(load_config(tree=tiny_tree, overrides=[f"{key}={value}"]), resume=True)
        assert (run / "config.yaml").read_text() == before
    longer = load_config(tree=tiny_tree, overrides=["train.iterations=6", "train.optimizer.lr=0.03"])
    Trainer(longer, resume=True).fit()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["iterations"] == 6 and saved["train"]["optimizer"]["lr"] == 0.03
    rec = [json.loads(x) for x in (run / "resume_changes.jsonl").read_text().splitlines()]
    assert rec == [{"step": 4, "changes": {"train.iterations": [4, 6], "train.optimizer.lr": [0.01, 0.03]}}]
    assert json.loads((run / "train_summary.json").read_text())["iterations"] == 6
    # fewer iterations than the checkpoint's step: refused, nothing rewritten
    before = (run / "config.yaml").read_text()
    with pytest.raises(InputError, match="cannot set train.iterations to 5: the run is at step 6"):
        Trainer(load_config(tree=tiny_tree, overrides=["train.iterations=5"]), resume=True)
    assert (run / "config.yaml").read_text() == before and len((run / "resume_changes.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("section, key, value, error", [
    ("data", "patch_size", [14, 16, 16], "patch_size"),  # not a multiple of the U-Net's 4
    ("method", "options", {"nonsense": 3}, "unknown option 'nonsense'"),
    ("inference", "largest_component_classes", [1, 3], "class 3 is not a foreground class of this model")])
def test_a_failed_train_leaves_no_run_folder(tiny_tree, tmp_path, monkeypatch, section, key, value, error):
    """Refused before training -> no partial run folder, nor the output folders created for it;
    a method option is checked before the data are read (preprocessing can take minutes)."""
    if section == "method":
        monkeypatch.setattr("semi3d.engine.trainer.prepare_data", lambda *a: pytest.fail("data read first"))
    tiny_tree["output_dir"] = str(tmp_path / "new" / "runs")
    tiny_tree[section][key] = value
    cfg = load_config(tree=tiny_tree)
    with pytest.raises(InputError, match=error):
        Trainer(cfg)
    assert not (tmp_path / "new").exists()


def test_progress_lines_without_a_terminal_and_log_csv_as_training_goes(tiny_tree, capsys):
    """Under nohup / SLURM (no TTY) the bar draws nothing: a plain line per logged step instead;
    log.csv is written at every checkpoint, not only at the end."""
    tiny_tree["train"].update(iterations=6, log_every=2, checkpoint_every=2, progress_bar=True)
    cfg = load_config(tree=tiny_tree)
    Trainer(cfg).fit(stop_at=4)
    err = capsys.readouterr().err
    n = {k: len(v) for k, v in json.loads((cfg.run_dir / "splits.json").read_text()).items() if k != "domains"}
    assert f"cases (labelled {n['labelled']}, unlabelled {n['unlabelled']}" in err  # what a run trains on, said up front
    lines = [x for x in err.splitlines() if x.startswith("step ") and "s/it" in x]
    assert [x.split()[1] for x in lines] == ["2/6", "4/6"] and all("loss net=" in x and "ETA" in x for x in lines)
    rows = (cfg.run_dir / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and [r.split(",")[0] for r in rows[1:]][-1] == "4"


def _tb_events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def writers():
    """TensorBoard's event-writer threads still running (one per open SummaryWriter)."""
    return [t for t in threading.enumerate() if type(t).__name__ == "_AsyncWriterThread"]


def test_tensorboard_mirrors_the_log_and_a_resume_drops_the_replayed_steps(tiny_tree):
    pytest.importorskip("tensorboard")
    tiny_tree["train"].update(iterations=6, checkpoint_every=3, val_every=3, tensorboard=True)
    cfg = load_config(tree=tiny_tree)
    assert Trainer(cfg).fit(stop_at=4)["stopped"]  # steps 1-4 logged, checkpoint at 3
    assert not writers()  # fit closes its writer, also when it stops early
    resumed = Trainer(cfg, resume=True)  # replays step 4
    resumed.fit(stop_at=5)
    resumed.fit()  # the same trainer goes on: its new writer must not purge steps 4-5 again
    assert not writers()
    acc = _tb_events(cfg.run_dir)
    recs = [json.loads(x) for x in (cfg.run_dir / "log.jsonl").read_text().splitlines()]
    loss = {r["step"]: r["loss/net"] for r in recs if "loss/net" in r}
    got = {e.step: e.value for e in acc.Scalars("loss/net")}
    assert got.keys() == loss.keys() == set(range(1, 7))  # step 4 once: the first run's was purged
    assert all(abs(got[s] - loss[s]) < 1e-6 for s in got)
    assert [e.step for e in acc.Scalars("val/dice")] == [3, 6]
    img = acc.Images("val/overlay")
    assert [e.step for e in img] == [3, 6] and img[0].width == 24 and img[0].height == 24


def test_tensorboard_off_or_missing(tiny_tree, monkeypatch):
    tiny_tree["train"].update(tensorboard=False)
    cfg = load_config(tree=tiny_tree)
    train(cfg)
    assert not (cfg.run_dir / "tensorboard").exists()
    monkeypatch.setattr("semi3d.engine.runlog.tensorboard_available", lambda: False)
    with pytest.raises(InputError, match="tensorboard"):
        Trainer(load_config(tree={**tiny_tree, "name": "tb", "train": {**tiny_tree["train"], "tensorboard": True}}))
