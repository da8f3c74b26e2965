"""nnU-Net's ignore label: read as IGNORE_INDEX, not a class, left out of every loss and metric."""
from __future__ import annotations

import copy
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from semi3d.config import load_config
from semi3d.data.case import Case
from semi3d.data.formats import build_reader
from semi3d.data.patches import PatchSampler
from semi3d.data.synthetic import write_dataset
from semi3d.engine.trainer import Trainer
from semi3d.errors import InputError
from semi3d.evaluation.metrics import case_metrics
from semi3d.losses import IGNORE_INDEX, dice_ce_loss, one_hot
from semi3d.methods.mn import soft_target_loss

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ignore_root(tmp_path_factory):
    """The synthetic nnU-Net dataset (3 classes) with a 4th label ``ignore`` = 3 over the first 6 X
    planes of every training label."""
    root = write_dataset(tmp_path_factory.mktemp("ign") / "ds", n_labelled=4, n_unlabelled=2, n_test=1,
                         shape=(24, 24, 16), num_classes=3)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["ignore"] = 3
    (root / "dataset.json").write_text(json.dumps(meta))
    for f in (root / "labelsTr").glob("*.nii.gz"):
        img = nib.load(f)
        lab = np.asarray(img.dataobj).copy()
        lab[:6] = 3
        nib.save(nib.Nifti1Image(lab, img.affine), f)
    return root


def test_reader_maps_the_ignore_label(ignore_root):
    r = build_reader("nnunet", ignore_root)
    assert r.num_classes == 3 and r.class_names == ["background", "organ", "lesion"] and r.ignore_value == 3
    case = r.load(r.labelled_ids()[0])
    assert (case.label[:6] == IGNORE_INDEX).all() and case.label[6:].max() <= 2


def test_the_fingerprint_leaves_ignored_voxels_out(ignore_root):
    """Before, the ignored voxels (IGNORE_INDEX, 255) made 256 class shares and counted as foreground."""
    from semi3d.planning.fingerprint import fingerprint

    r = build_reader("nnunet", ignore_root)
    fp = fingerprint(r)
    cases = [r.load(c) for c in r.labelled_ids()]
    counts = sum(np.bincount(c.label[6:].ravel(), minlength=3) for c in cases)  # X planes 6.. are not ignored
    assert len(fp.class_share) == 3 and np.allclose(fp.class_share, counts / counts.sum())
    fg = np.concatenate([c.image[0, 6:][c.label[6:] > 0] for c in cases])
    assert fp.channels[0].mean == pytest.approx(fg.mean(), rel=1e-5)
    assert len(fp.largest_component_share) == 2
    # per case the slices holding a label: X planes 6.. of the labelled cases, None for the unlabelled
    assert fp.annotated_slices == [[list(range(6, 24)), None, None]] * 4 + [None] * 2


def test_a_sparse_annotation_does_not_count_as_several_structures(tmp_path):
    """One cube per case; in case b a slab of unannotated slices (255, the ignore value) cuts it in
    two. Connectivity is measured on the fully annotated case a only, so the plan keeps the largest
    component (before: b's halves made the cube 'several components', 50 %, and no post-processing);
    with only sparse cases it is unknown, said so, and nothing is removed."""
    from semi3d.planning.fingerprint import fingerprint
    from semi3d.planning.plan import make_plan

    for d in ("images", "labels"):
        (tmp_path / d).mkdir()
    for cid in ("a", "b"):
        lab = np.zeros((12, 12, 12), np.uint8)
        lab[2:10, 2:10, 2:10] = 1
        if cid == "b":
            lab[:, :, 5:7] = 255
        affine = np.eye(4)
        nib.save(nib.Nifti1Image(lab.astype(np.float32) * 2 + 1, affine), tmp_path / "images" / f"{cid}.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), tmp_path / "labels" / f"{cid}.nii.gz")
    reader = build_reader("folder", tmp_path / "images", labels=tmp_path / "labels", ignore_value=255)
    fp = fingerprint(reader)
    assert (fp.largest_component_share, fp.foreground_component_share, fp.sparse_cases) == ([1.0], 1.0, 1)
    plan = make_plan(fp, "cpu", method="supervised")
    assert plan.config["inference"]["postprocess"] == "largest_component"
    assert "measured on the 1 fully annotated labelled cases; the 1 sparsely annotated" in plan.notes["postprocess"]
    only_b = fingerprint(reader, ["b"])
    assert (only_b.largest_component_share, only_b.sparse_cases) == ([None], 1)
    plan = make_plan(only_b, "cpu", method="supervised")
    assert plan.config["inference"]["postprocess"] == "none"
    assert plan.notes["postprocess"].startswith("every labelled case is sparsely annotated")


def test_ignore_must_be_the_highest_value(ignore_root, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ignore_root, bad)
    meta = json.loads((bad / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "ignore": 1, "organ": 2, "lesion": 3}
    (bad / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="ignore label must have the highest value"):
        build_reader("nnunet", bad)


def test_losses_do_not_see_ignored_voxels():
    torch.manual_seed(0)
    logits, label = torch.randn(2, 3, 6, 6, 6), torch.randint(0, 3, (2, 6, 6, 6))
    label[:, :2] = IGNORE_INDEX
    other = label.clone()
    logits2 = logits.clone()
    logits2[:, :, :2] = torch.randn(2, 3, 2, 6, 6) * 5  # any prediction there
    assert dice_ce_loss(logits, label).item() == pytest.approx(dice_ce_loss(logits2, other).item(), rel=1e-6)
    x = logits.clone().requires_grad_()
    dice_ce_loss(x, label).backward()
    assert x.grad[:, :, :2].abs().max() == 0 and x.grad[:, :, 2:].abs().max() > 0
    # known answer: the same as the loss on the kept voxels alone
    kept = dice_ce_loss(logits[:, :, 2:], label[:, 2:])
    assert dice_ce_loss(logits, label).item() == pytest.approx(kept.item(), rel=1e-5)
    t = one_hot(label, 3)
    assert (t[:, :, :2] == 0).all() and (t[:, :, 2:].sum(1) == 1).all()
    a, b = soft_target_loss(logits, t)[0], soft_target_loss(logits2, t)[0]  # M&N's loss, too
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    assert a.item() == pytest.approx(soft_target_loss(logits[:, :, 2:], t[:, :, 2:])[0].item(), rel=1e-5)


def test_metrics_and_foreground_sampling_skip_ignored_voxels():
    ref = np.zeros((10, 10, 10), np.int64)
    ref[2:6, 2:6, 2:6] = 1
    ref[8:] = IGNORE_INDEX
    pred = np.where(ref == IGNORE_INDEX, 1, ref)  # "wrong" only where ignored
    assert case_metrics(pred, ref, 2, (1, 1, 1))["class1"]["dice"] == 1.0
    lab = np.full((16, 16, 16), IGNORE_INDEX, np.uint8)
    lab[:2, :2, :2] = 1
    s = PatchSampler([Case("c", np.zeros((1, 16, 16, 16), np.float32), lab)], (8, 8, 8), 1.0, torch.Generator())
    assert len(s.vols[0].fg) == 8  # the 8 class-1 voxels, not the ignored ones


def _tree(tiny_tree, root, tmp_path, method="supervised", **options):
    t = copy.deepcopy(tiny_tree)
    t["data"]["root"], t["output_dir"], t["name"] = str(root), str(tmp_path), method
    t["method"] = {"name": method, "options": options}
    t["train"]["iterations"] = 4
    return t


def test_training_and_evaluation_with_an_ignore_label(ignore_root, tiny_tree, tmp_path):
    from semi3d.evaluation.evaluate import evaluate_run

    cfg = load_config(tree=_tree(tiny_tree, ignore_root, tmp_path))
    assert Trainer(cfg).fit()["iterations"] == 4
    metrics = evaluate_run(cfg.run_dir, split="validation")
    assert set(metrics) == {"organ", "lesion", "mean"}  # no 'ignore' class
    # the report's and TensorBoard's pictures compare what the metrics compare: ignored voxels are
    # neither a class of the truth nor a miss of the prediction (before: 255 drawn as a class)
    from semi3d.engine.runlog import overlay
    from semi3d.reporting.report import _load_for_overlay

    cid = next(iter(json.loads((cfg.run_dir / "eval_validation" / "metrics.json").read_text())["per_case"]))
    _, truth, pred = _load_for_overlay(cfg.run_dir, cfg, cfg.run_dir / "eval_validation" / "metrics.json", [cid])[cid]
    assert truth.max() <= 2 and not truth[:6].any() and not pred[:6].any() and truth[6:].any()
    lab = np.full((8, 8), IGNORE_INDEX, np.uint8)
    lab[4:] = 1
    rgb = overlay(np.zeros((8, 8), np.float32), lab, np.ones((8, 8), np.int64))
    assert (rgb[:4] == 0).all() and (rgb[4:] == [76, 76, 0]).all()  # ignored: neither colour; yellow: both
    with pytest.raises(InputError, match="does not support nnU-Net's ignore label"):
        Trainer(load_config(tree=_tree(tiny_tree, ignore_root, tmp_path, "ad", width=4, depth=3)))
    assert not (tmp_path / "ad").exists()  # refused during setup: no run folder left


def test_training_warns_when_the_sparse_cases_share_their_annotated_slices(ignore_root, tiny_tree, tmp_path, capsys):
    """Every case here ignores the same first 6 X planes; with a patch longer than the cases along X
    each crop shows a case whole, and training says what the network can learn from that."""
    tree = _tree(tiny_tree, ignore_root, tmp_path)
    Trainer(load_config(tree=tree))
    assert "warning:" not in capsys.readouterr().err  # the patch (16) is shorter than the cases (24)
    tree["data"]["patch_size"] = [32, 16, 16]
    Trainer(load_config(tree=tree))
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: 3 of the 3 sparsely annotated cases shorter than the patch along axis X" in err
    assert "(6, 7, 8, 9, 10, 11, ...)" in err


def test_domain_copies_keep_the_ignore_label(ignore_root, tmp_path):
    """Before, the copies' labels held 255 and their dataset.json had no 'ignore': unreadable."""
    from semi3d.data.domain_shift import write_domain_dataset

    src = build_reader("nnunet", ignore_root)
    sid = src.labelled_ids()[0]
    out = write_domain_dataset(ignore_root, tmp_path / "dom", {"B": [sid]}, src_format="nnunet", format="nnunet")
    copy_reader = build_reader("nnunet", out)
    assert copy_reader.ignore_value == 3 and copy_reader.num_classes == 3
    np.testing.assert_array_equal(copy_reader.load(f"B_{sid}").label, src.load(sid).label)
    with pytest.raises(InputError, match="ignore label"):
        write_domain_dataset(ignore_root, tmp_path / "h5", {"B": [sid]}, src_format="nnunet")
    assert not (tmp_path / "h5").exists()


def test_knowledge_mining_with_an_ignore_label(ignore_root, tmp_path):
    """Mining reads a dataset with an ignore label (before: refused): the pseudo-labels' Dice against
    the hidden labels leaves the ignored voxels out, and the 3D dataset keeps the real labels'
    ignore value and the dataset.json's ignore label."""
    from semi3d.losses import without_ignored
    from semi3d.mining.loop import run_mining

    summary = run_mining({
        "name": "mine_ign", "output_dir": str(tmp_path / "runs"), "device": "cpu", "axis": 2,
        "data": {"format": "nnunet", "root": str(ignore_root),
                 "splits": {"labelled": {"ids": ["syn_000", "syn_001"]}, "validation": {"ids": ["syn_003"]},
                            "unlabelled": {"ids": ["syn_002"]}}},
        "model": {"name": "unetpp2d", "options": {"widths": [4, 8]}},
        "train": {"iterations": 20, "finetune_iterations": 2, "batch_size": 4, "patch": [24, 24]},
        "rounds": 1, "select": {"min_score": 0.0, "min_agreement": 0.0},
        "dataset_3d": {"enabled": True, "min_kept_fraction": 0.0}})
    run = tmp_path / "runs" / "mine_ign"
    mined = np.asarray(nib.load(run / "pseudo" / "round1" / "labels" / "syn_002.nii.gz").dataobj)
    truth = build_reader("nnunet", ignore_root).load("syn_002").label
    assert (truth[:6] == IGNORE_INDEX).all() and mined[:6].any()  # the mined label has foreground where truth is ignored
    pred, ref = without_ignored(mined, truth)
    dice = [2 * ((pred == c) & (ref == c)).sum() / ((pred == c).sum() + (ref == c).sum())
            for c in (1, 2) if (pred == c).any() or (ref == c).any()]
    assert summary["rounds"][1]["pseudo_dice_all"] == pytest.approx(np.mean(dice))
    assert 0 <= summary["rounds"][1]["dev_dice"] <= 1
    ds = run / "pseudo" / "round1" / "dataset"
    assert json.loads((ds / "dataset.json").read_text())["labels"]["ignore"] == 3
    assert (ds / "labelsTr" / "syn_000.nii.gz").read_bytes() == (ignore_root / "labelsTr" / "syn_000.nii.gz").read_bytes()


def test_a_plain_folder_with_an_ignore_value(ignore_root, tiny_tree, tmp_path):
    """A plain folder of images and labels (no dataset.json) whose unannotated voxels are 255:
    ``data.options.ignore_value`` (``semi3d plan --ignore-value``) reads them as the nnU-Net
    dataset's ignore label (before: 255 was refused as a class value)."""
    from semi3d.data.dataset import prepare_data
    from semi3d.planning.fingerprint import fingerprint
    from semi3d.planning.plan import plan_dataset

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for f in (ignore_root / "imagesTr").glob("*_0000.nii.gz"):
        (tmp_path / "images" / f.name.replace("_0000", "")).write_bytes(f.read_bytes())
    for f in (ignore_root / "labelsTr").glob("*.nii.gz"):
        img = nib.load(f)
        lab = np.asarray(img.dataobj)
        nib.save(nib.Nifti1Image(np.where(lab == 3, 255, lab).astype(np.uint8), img.affine), tmp_path / "labels" / f.name)
    nn = build_reader("nnunet", ignore_root)
    folder = build_reader("folder", tmp_path / "images", labels=tmp_path / "labels", ignore_value=255)
    cid = nn.labelled_ids()[0]
    np.testing.assert_array_equal(folder.load(cid).label, nn.load(cid).label)
    with pytest.raises(InputError, match="label values 255 are not"):
        build_reader("folder", tmp_path / "images", labels=tmp_path / "labels", num_classes=3).load(cid)
    assert fingerprint(folder).class_share == pytest.approx(fingerprint(nn).class_share)
    plan_dataset(tmp_path / "images", tmp_path / "p.yaml", method="supervised", labels=tmp_path / "labels",
                 ignore_value=255)
    cfg = load_config(tmp_path / "p.yaml")
    assert cfg.data.options["ignore_value"] == 255 and cfg.data.num_classes == 3
    assert prepare_data(cfg.data).num_classes == 3
    wrong = cfg.data.model_copy(update={"options": {**cfg.data.options, "ignore_value": 2}})
    with pytest.raises(InputError, match="ignore_value: 2 is a class value"):
        prepare_data(wrong)
    with pytest.raises(InputError, match="ignore_value: must be a label value >= 1"):
        build_reader("folder", tmp_path / "images", labels=tmp_path / "labels", ignore_value=0)
    with pytest.raises(InputError, match="--ignore-value: describes a plain folder"):
        plan_dataset(ignore_root, tmp_path / "x.yaml", ignore_value=255)
