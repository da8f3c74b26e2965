"""The mining loop end to end on tiny synthetic data (3D volumes and a 2D image folder)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from semi3d.data.case import Case
from semi3d.data.volumes import read_volume
from semi3d.data.synthetic import write_dataset
from semi3d.errors import InputError
from semi3d.losses import IGNORE_INDEX
from semi3d.mining.export import write_pseudo_volumes
from semi3d.mining import loop, train2d
from semi3d.mining.config import load_mining_config
from semi3d.mining.loop import load_mining_data, run_mining

TINY_TRAIN = {"iterations": 25, "finetune_iterations": 5, "batch_size": 4, "patch": [24, 24]}


@pytest.fixture(scope="module")
def la_like(tmp_path_factory):
    """UA-MT h5 layout, every case labelled (the splits hide the unlabelled ones' labels)."""
    root = tmp_path_factory.mktemp("la") / "LA"
    return write_dataset(root, n_labelled=6, n_unlabelled=0, seed=1, shape=(24, 24, 8), num_classes=2,
                         format="uamt_h5", noise=0.2)


def _tree(root, out, **extra):
    tree = {"name": "m", "output_dir": str(out), "device": "cpu",
            "data": {"format": "uamt_h5", "root": str(root), "options": {"list_file": str(root / "train.list")},
                     "num_classes": 2, "splits": {"labelled": {"first": 2}, "validation": {"last": 2}}},
            "model": {"name": "unetpp2d", "options": {"widths": [4, 8]}},
            "train": TINY_TRAIN, "rounds": 2}
    tree.update(extra)
    return tree


def test_volumes_run_logs_and_writes_pseudo_volumes(la_like, tmp_path):
    tree = _tree(la_like, tmp_path, eval={"hd95": True})
    cfg = load_mining_config(tree=tree)
    data = load_mining_data(cfg)
    assert all(s.label is None for s in data.unlabelled)  # hidden from training ...
    assert len(data.truth) == len(data.unlabelled) == 2 * 8  # ... kept to score the pseudo-labels
    assert data.splits["unlabelled"] == ["syn_002", "syn_003"]

    summary = run_mining(tree)
    run = Path(summary["run_dir"])
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert summary["splits"] == {"labelled": 2, "unlabelled": 2, "validation": 2, "test": 0}
    for r in rounds:
        assert 0.0 <= r["dev_dice"] <= 1.0 and set(r["dev_cases"]) == {"syn_004", "syn_005"}
        assert r["dev_hd95"] >= 0
    for r in rounds[1:]:
        assert r["n_candidates"] == 16 and 0 <= r["n_kept"] <= 16
        assert sum(r["reasons"].values()) == 16
        for key in ("pseudo_dice_all", "model_dice_all", "pseudo_case_dice"):
            assert 0.0 <= r[key] <= 1.0
        assert r["pseudo_dice_kept"] is None or 0.0 <= r["pseudo_dice_kept"] <= 1.0
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["round"] for x in log] == [0, 1, 2]
    assert json.loads((run / "train_summary.json").read_text())["rounds"][2]["n_kept"] == rounds[2]["n_kept"]
    assert (run / "checkpoints" / "small_round2.pt").is_file() and (run / "config.yaml").is_file()
    index = json.loads((run / "pseudo" / "round1" / "index.json").read_text())
    assert index["axis"] == 2 and set(index["cases"]) == {"syn_002", "syn_003"}
    vol = read_volume(run / "pseudo" / "round1" / "labels" / "syn_002.nii.gz")
    assert vol.array.shape == (24, 24, 8) and set(np.unique(vol.array)) <= {0, 1}
    kept = np.load(run / "pseudo" / "round1" / "kept" / "syn_002.npy")
    assert kept.shape == (8,)
    assert sum(int(np.load(run / "pseudo" / "round1" / "kept" / f"{c}.npy").sum()) for c in index["cases"]) \
        == rounds[1]["n_kept"]


def test_multiclass_nnunet_without_hidden_truth(synth_root, tmp_path):
    """3 classes, nnU-Net layout whose unlabelled cases have no label: no pseudo-label Dice is reported."""
    tree = {"name": "mc", "output_dir": str(tmp_path), "device": "cpu",
            "data": {"format": "nnunet", "root": str(synth_root),
                     "splits": {"labelled": {"first": 2}, "validation": {"last": 1},
                                "unlabelled": {"ids": ["syn_005", "syn_006", "syn_007"]}}},
            "axis": 0, "unlabelled_max": 2, "slice_step": 4, "save_pseudo": "npy",
            "model": {"name": "unetpp2d", "options": {"widths": [4, 8], "deep_supervision": True}},
            "train": {**TINY_TRAIN, "patch": None}, "rounds": 1, "eval": {"original_grid": False}}
    summary = run_mining(tree)
    r = summary["rounds"][1]
    assert summary["num_classes"] == 3 and r["n_candidates"] == 2 * 6  # 24 slices along X, every 4th
    assert "pseudo_dice_kept" not in r
    labels = sorted((Path(summary["run_dir"]) / "pseudo" / "round1" / "labels").iterdir())
    assert [p.name for p in labels] == ["syn_005.npy", "syn_006.npy"]
    assert np.load(labels[0]).shape == (24, 24, 16)


def test_other_registered_2d_model_and_reinit(la_like, tmp_path):
    tree = _tree(la_like, tmp_path, rounds=1, save_pseudo="none",
                 model={"name": "unet2d_mobilenet_v2", "options": {"decoder_channels": [16, 8, 8, 8, 8]}},
                 train={**TINY_TRAIN, "iterations": 3, "finetune_iterations": 2, "reinit": True, "patch": [32, 32]})
    summary = run_mining(tree)
    assert summary["model"] == "unet2d_mobilenet_v2" and len(summary["rounds"]) == 2
    assert summary["rounds"][1]["train_iterations"] == 3  # reinit: the full budget again
    assert not (Path(summary["run_dir"]) / "pseudo").exists()


def test_sam_refiner_in_the_loop(la_like, tmp_path, tiny_sam_config):
    pytest.importorskip("transformers")
    tree = _tree(la_like, tmp_path, rounds=1, unlabelled_max=1, save_pseudo="none",
                 refiner={"name": "sam", "options": {"config": tiny_sam_config, "multimask_output": False}},
                 iterate={"rounds": 2, "tol": 0.0})
    summary = run_mining(tree)
    assert summary["refiner"] == "sam" and summary["rounds"][1]["n_candidates"] == 8


def _write_kvasir(root, n=8):
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        rr, cc = np.indices((32, 32))
        disc = (rr - 12 - i) ** 2 + (cc - 16) ** 2 <= (6 + i % 3) ** 2
        img = np.clip(60 + 120 * disc[..., None] + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"img{i}.jpg", quality=95)
        Image.fromarray((disc * 255).astype(np.uint8)).save(root / "masks" / f"img{i}.jpg", quality=95)
    return root


def test_image_folder_run(tmp_path):
    root = _write_kvasir(tmp_path / "kvasir")
    tree = {"name": "k", "output_dir": str(tmp_path / "runs"), "device": "cpu",
            "images": {"root": str(root), "max_size": None,
                       "splits": {"labelled": {"first": 2}, "validation": {"last": 2}}},
            "model": {"name": "unetpp2d", "options": {"widths": [4, 8]}},
            "train": {**TINY_TRAIN, "patch": None}, "rounds": 1,
            "select": {"min_score": 0.0, "min_agreement": 0.0, "keep_empty": True, "empty_max_prob": 1.0}}
    summary = run_mining(tree)
    r = summary["rounds"][1]
    assert summary["splits"]["unlabelled"] == 4 and r["n_candidates"] == 4 and r["n_kept"] == 4
    assert 0.0 <= r["pseudo_dice_all"] <= 1.0 and set(summary["rounds"][0]["dev_cases"]) == {"img6", "img7"}
    pngs = sorted(p.name for p in (Path(summary["run_dir"]) / "pseudo" / "round1").iterdir())
    assert pngs == [f"img{i}.png" for i in range(2, 6)]


def _kvasir_tree(tmp_path, refiner):
    root = _write_kvasir(tmp_path / "kvasir")
    return {"name": refiner["name"], "output_dir": str(tmp_path / "runs"), "device": "cpu",
            "images": {"root": str(root), "max_size": None,
                       "splits": {"labelled": {"first": 2}, "validation": {"last": 2}}},
            "model": {"name": "unetpp2d", "options": {"widths": [4, 8]}},
            "train": {**TINY_TRAIN, "patch": None}, "rounds": 1, "refiner": refiner, "save_pseudo": "none",
            "prompts": {"n_positive": 0, "n_negative": 0, "min_area": 1}, "iterate": {"rounds": 1},
            "select": {"min_score": 0.0, "min_agreement": 0.0, "keep_empty": True, "empty_max_prob": 1.0}}


def test_identity_refiner_keeps_the_small_models_own_masks(tmp_path):
    summary = run_mining(_kvasir_tree(tmp_path, {"name": "identity"}))
    r = summary["rounds"][1]
    assert r["n_candidates"] == 4
    if r["model_dice_all"] is not None:  # self-training: the pseudo-labels are the model's masks
        assert r["pseudo_dice_all"] == pytest.approx(r["model_dice_all"])


def test_litemedsam_refiner_in_the_loop_caches_embeddings_on_disk(tmp_path):
    pytest.importorskip("transformers")
    from test_litemedsam import TINY

    tree = _kvasir_tree(tmp_path, {"name": "litemedsam", "options": {"pretrained": None, "config": TINY,
                                                                     "cache_size": 1}})
    summary = run_mining(tree)
    assert summary["refiner"] == "litemedsam" and summary["rounds"][1]["n_candidates"] == 4
    emb = Path(summary["run_dir"]) / "embedding_cache"  # 4 images > the in-memory cache of 1
    assert emb.is_dir()


def test_write_pseudo_volumes_fills_missing_slices(tmp_path):
    case = Case("a/b", np.zeros((1, 4, 5, 3), np.float32), None, affine=np.diag([2.0, 2.0, 3.0, 1.0]))
    lab = np.ones((4, 3), np.uint8)
    index = write_pseudo_volumes(tmp_path, {"a/b": case}, {"a/b": {2: lab}}, {"a/b": {2: True, 0: False}}, axis=1)
    entry = index["a/b"]
    assert entry["slices"] == 5 and entry["kept_slices"] == 1
    vol = read_volume(tmp_path / entry["label"])
    assert vol.array.shape == (4, 5, 3) and vol.array[:, 2].all() and vol.array.sum() == 12
    np.testing.assert_allclose(vol.affine, case.affine)
    np.testing.assert_array_equal(np.load(tmp_path / entry["kept"]), [0, 0, 1, 0, 0])
    with pytest.raises(InputError, match="suffix"):
        write_pseudo_volumes(tmp_path, {}, {}, {}, suffix=".h5")


def test_config_errors(la_like, tmp_path):
    with pytest.raises(InputError, match="exactly one of data"):
        load_mining_config(tree={"name": "x"})
    with pytest.raises(InputError, match="select.min_scor"):
        load_mining_config(tree=_tree(la_like, tmp_path, select={"min_scor": 0.5}))
    with pytest.raises(InputError, match="rounds"):
        load_mining_config(tree=_tree(la_like, tmp_path), overrides=["rounds=-1"])
    cfg = load_mining_config(tree=_tree(la_like, tmp_path), overrides=["select.unit=case", "train.batch_size=2"])
    assert cfg.select.unit == "case" and cfg.train.batch_size == 2
    with pytest.raises(InputError, match="beta"):
        run_mining(_tree(la_like, tmp_path, refiner={"name": "random_walker", "options": {"beta": -1}}))
    path = tmp_path / "mine.yaml"
    path.write_text("name: y\nimages: {root: /nonexistent}\n")
    with pytest.raises(InputError, match="no such folder"):
        run_mining(str(path))


def test_benchmark_script_smoke(tmp_path, load_benchmark):
    mod = load_benchmark("mine_la")
    [result] = mod.main(["--smoke", "--results", str(tmp_path / "res"),
                         "--runs", str(tmp_path / "runs"), "--set", "rounds=1"])
    assert result["labelled"] == 2 and result["dev"] == 2 and result["unlabelled"] == 3
    assert [r["round"] for r in result["rounds"]] == [0, 1]
    assert (tmp_path / "res" / "mine_la_l2.json").is_file()
    md = (tmp_path / "res" / "mine_la_l2.md").read_text()
    assert "| round | dev_dice" in md and "Synthetic smoke data" in md
    assert result["variant"] == "random_walker" and result["config"]["refiner"]["name"] == "random_walker"


def test_benchmark_script_variants(tmp_path, load_benchmark):
    """mine_la.py: every variant of the real budget is a valid config; the labelled-only control gets
    the mining runs' total iterations and no unlabelled split; LiteMedSAM caches embeddings under the
    runs folder; the first benchmark's runs keep their names; a variant runs end to end (smoke)."""
    mod = load_benchmark("mine_la")
    b = mod.BUDGET
    cfgs = {v: load_mining_config(tree=mod.run_tree(v, 8, 1, tmp_path, "mbv2")) for v in mod.VARIANTS}
    assert cfgs["labelled"].rounds == 0 and cfgs["labelled"].data.splits.unlabelled == "none"
    total = b["train"]["iterations"] + b["rounds"] * b["train"]["finetune_iterations"]
    assert cfgs["labelled"].train.iterations == total
    lm = cfgs["litemedsam"]
    assert lm.refiner.name == "litemedsam" and lm.refiner.options["cache_dir"] == str(tmp_path / "la_embeddings")
    assert lm.prompts.n_positive == 0 and lm.iterate.rounds == 1 and lm.model.name == "unet2d_mobilenet_v2"
    assert cfgs["identity"].refiner.name == "identity" and cfgs["identity"].rounds == 3
    assert cfgs["identity"].prompts == lm.prompts  # the control prompts as LiteMedSAM does
    assert all(c.select.disagree == "refined" for c in cfgs.values())  # as the committed results (default: ignore)
    assert lm.data.splits.validation.last == 16 and lm.data.splits.labelled.first == 8 and lm.seed == 1
    assert lm.name == "mine_la_mbv2_litemedsam_l8_s1" and mod.run_name("random_walker", 4, 0) == "mine_la_l4"
    assert mod.run_name("identity", 4, 0) == "mine_la_identity_l4_s0"
    [res] = mod.main(["--smoke", "--results", str(tmp_path / "res"), "--runs", str(tmp_path / "runs"),
                      "--variants", "labelled", "--seeds", "1"])
    assert res["name"] == "mine_la_labelled_l2_s1" and res["seed"] == 1 and [r["round"] for r in res["rounds"]] == [0]
    assert res["rounds"][0]["train_iterations"] == 20 + 2 * 5  # the smoke budget's 20 + rounds x 5
    assert (tmp_path / "res" / "mine_la_labelled_l2_s1.json").is_file()
    [sched] = mod.main(["--smoke", "--results", str(tmp_path / "res"), "--runs", str(tmp_path / "runs"),
                        "--variants", "schedule", "--set", "rounds=1", "--tag", "_t"])
    assert sched["name"] == "mine_la_schedule_t_l2_s0" and (tmp_path / "res" / "mine_la_schedule_t_l2_s0.json").is_file()
    r1 = sched["rounds"][1]  # the rounds' schedule, labelled slices only: nothing mined, 5 iterations trained
    assert sched["unlabelled"] == 0 and r1["n_candidates"] == 0 and r1["n_kept"] == 0 and r1["train_iterations"] == 5


def test_cli_mine(la_like, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from semi3d.cli import app

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(_tree(la_like, tmp_path / "runs", rounds=1)))
    sets = ["--set", "name=cli", "--set", "dataset_3d.enabled=true"]
    res = CliRunner().invoke(app, ["mine", str(path), *sets])
    assert res.exit_code == 0, res.output
    assert "round 1: dev Dice" in res.output and (tmp_path / "runs" / "cli" / "train_summary.json").is_file()
    r1 = json.loads((tmp_path / "runs" / "cli" / "train_summary.json").read_text())["rounds"][1]
    assert (f"kept pseudo-labels' Dice against the hidden labels {100 * r1['pseudo_dice_kept']:.2f} "
            f"(the small model's own masks {100 * r1['model_dice_kept']:.2f})") in res.output
    d3 = r1["dataset_3d"]
    assert f"3D dataset: {d3['path']} ({d3['n_real']} real, {d3['n_pseudo']} pseudo-labelled" in res.output
    bad = CliRunner().invoke(app, ["mine", str(path), "--set", "select.min_scor=1"])
    assert bad.exit_code == 2 and "min_scor" in bad.output
    again = CliRunner().invoke(app, ["mine", str(path), *sets])
    assert again.exit_code == 2 and "--resume" in again.output
    done = CliRunner().invoke(app, ["mine", str(path), *sets, "--resume"])  # finished: nothing retrained
    assert done.exit_code == 0 and "round 1: dev Dice" in done.output, done.output


def test_cli_mine_ctrl_c_while_mining_says_how_to_resume(la_like, tmp_path, monkeypatch):
    """Ctrl-C while a round mines (the refiner can take minutes): it stops at once, one line says
    how to go on, and ``--resume`` finishes the run."""
    import yaml
    from typer.testing import CliRunner

    from semi3d.cli import app
    from semi3d.mining import loop

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(_tree(la_like, tmp_path / "runs", rounds=1)))
    monkeypatch.setattr(loop, "mine_round", ctrl_c)
    res = CliRunner().invoke(app, ["mine", str(path)])
    assert res.exit_code == 130 and f"stopped: Ctrl-C\ncontinue with: semi3d mine {path} --resume" in res.output
    monkeypatch.undo()
    done = CliRunner().invoke(app, ["mine", str(path), "--resume"])
    assert done.exit_code == 0 and "round 1: dev Dice" in done.output, done.output


class _Interrupted(Exception):
    pass


def test_an_interrupted_mining_run_resumes_to_the_same_result(la_like, tmp_path, monkeypatch):
    def tree(out):
        return _tree(la_like, out, rounds=2, save_pseudo="none", refiner={"name": "identity"},
                     train={**TINY_TRAIN, "iterations": 6, "finetune_iterations": 4, "checkpoint_every": 2,
                            "log_every": 2})
    whole = run_mining(tree(tmp_path / "a"))

    real = train2d.Trainer

    class StopsInRound1(real):  # the process dies in round 1's training, after its step 2
        def fit(self, stop_at=None):
            if self.run.path.name == "round1":
                super().fit(stop_at=2)
                raise _Interrupted
            return super().fit(stop_at)

    monkeypatch.setattr(train2d, "Trainer", StopsInRound1)
    with pytest.raises(_Interrupted):
        run_mining(tree(tmp_path / "b"))
    monkeypatch.setattr(train2d, "Trainer", real)
    run = tmp_path / "b" / "m"
    assert [json.loads(x)["round"] for x in (run / "log.jsonl").read_text().splitlines()] == [0]
    with pytest.raises(InputError, match="holds a mining run already"):
        run_mining(tree(tmp_path / "b"))
    with pytest.raises(InputError, match="differs from the config given"):
        run_mining({**tree(tmp_path / "b"), "rounds": 3}, resume=True)
    resumed = run_mining(tree(tmp_path / "b"), resume=True)

    for a, b in zip(whole["rounds"], resumed["rounds"]):
        assert a["dev_dice"] == b["dev_dice"] and a["train_loss"] == b["train_loss"]
        assert a.get("n_kept") == b.get("n_kept")
    wa = torch.load(tmp_path / "a" / "m" / "checkpoints" / "small_round2.pt")
    wb = torch.load(run / "checkpoints" / "small_round2.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_nothing_to_resume_and_a_bad_config_leaves_no_folder(la_like, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv("WORLD_SIZE", "2")
        with pytest.raises(InputError, match="without torchrun"):
            run_mining(_tree(la_like, tmp_path))
    with pytest.raises(InputError, match="nothing to resume"):
        run_mining(_tree(la_like, tmp_path), resume=True)
    with pytest.raises(InputError, match="beta"):
        run_mining(_tree(la_like, tmp_path, refiner={"name": "random_walker", "options": {"beta": -1}}))
    with pytest.raises(InputError, match="nonsense"):
        run_mining(_tree(la_like, tmp_path, model={"name": "unetpp2d", "options": {"widths": [4, 8], "nonsense": 1}}))
    assert not Path(tmp_path / "m").exists()


def test_benchmark_probe_scores_each_prompt_source(tmp_path, load_benchmark):
    """mine_probe.py on a finished self-training run: the identity refiner returns the model's
    masks ('refined' = 'model') and the hidden label from its own prompts ('oracle' = 1.0); 'hit'
    drops exactly the components that miss the label."""
    mod = load_benchmark("mine_probe")
    label = np.zeros((8, 8), np.uint8)
    label[0:2, 0:2] = 1
    label[5:7, 5:7] = 1
    truth = np.zeros((8, 8), np.uint8)
    truth[1:3, 1:3] = 1
    assert (mod._hit(label, truth) == np.where(np.arange(8)[:, None] < 4, label, 0)).all()
    summary = run_mining(_kvasir_tree(tmp_path, {"name": "identity"}))
    rows = {r["variant"]: r for r in mod.main([summary["run_dir"], "--results", str(tmp_path / "res")])}
    assert rows["refined"]["dice_pooled"] == pytest.approx(rows["model"]["dice_pooled"])
    assert rows["oracle"]["dice_pooled"] == 1.0 and rows["oracle"]["n_prompted"] == 4
    assert rows["hit"]["dice_pooled"] >= rows["model"]["dice_pooled"]
    assert "| oracle |" in (tmp_path / "res" / "mine_probe.md").read_text()
    saved = json.loads((tmp_path / "res" / "mine_probe.json").read_text())  # the probe's own arguments, not pytest's
    assert saved["command"] == f"python benchmarks/mine_probe.py {summary['run_dir']} --results {tmp_path / 'res'}"
    big = {r["variant"]: r for r in mod.main([summary["run_dir"], "--results", str(tmp_path / "res"),
                                              "--set", "prompts.min_area=100000", "--name", "p1"])}
    assert big["refined"]["n_prompted"] == big["oracle"]["n_prompted"] == 0  # --set reaches the prompts


def test_refinement_reports_progress(tmp_path, monkeypatch, capsys):
    from semi3d.mining import loop

    monkeypatch.setattr(loop, "PROGRESS_EVERY_S", 0.0)
    run_mining(_kvasir_tree(tmp_path, {"name": "identity"}))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("round 1: refined")]
    assert [ln.split()[3] for ln in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert "(100.0 %)" in lines[-1] and lines[-1].endswith("ETA 0m00s")


def test_a_quick_refinement_prints_no_progress(tmp_path, capsys):
    run_mining(_kvasir_tree(tmp_path, {"name": "identity"}))  # 4 samples: far under PROGRESS_EVERY_S
    assert "refined" not in capsys.readouterr().err


def test_disagree_ignore_teaches_only_the_agreed_pixels(tmp_path, monkeypatch):
    """``select.disagree: ignore`` end to end: the fine-tuning labels of the kept slices hold
    IGNORE_INDEX (where exactly: ``test_select.py``), and the round logs the ignored fraction."""
    seen = {}
    real = loop.slice_data

    def spy(labelled, pseudo, *a, **k):
        if pseudo:
            seen["pseudo"] = [s.label for s in pseudo]
        return real(labelled, pseudo, *a, **k)

    monkeypatch.setattr(loop, "slice_data", spy)
    tree = _kvasir_tree(tmp_path, {"name": "random_walker"})
    tree["select"]["disagree"] = "ignore"
    r = run_mining(tree)["rounds"][1]
    labels = seen["pseudo"]
    assert len(labels) == r["n_kept"] > 0
    assert any((lab == IGNORE_INDEX).any() for lab in labels)  # the random walker moves some pixels
    frac = np.mean([(lab == IGNORE_INDEX).mean() for lab in labels])
    assert r["ignored_fraction_kept"] == pytest.approx(frac)
    assert 0.0 <= r["pseudo_dice_taught"] <= 1.0 and r["train_iterations"] == TINY_TRAIN["finetune_iterations"]
