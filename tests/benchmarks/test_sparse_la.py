"""benchmarks/sparse_la.py on the tiny synthetic dataset: the thinned labels' known answers, the
written datasets as the nnU-Net reader reads them back, and the three variants trained and scored."""
import json

import numpy as np
import pytest
import yaml

from semi3d.data.formats import build_reader
from semi3d.errors import InputError
from semi3d.losses import IGNORE_INDEX


@pytest.fixture(scope="module")
def mod(load_benchmark):
    return load_benchmark("sparse_la")


def test_annotated_slices_and_thinned_labels(mod):
    assert np.flatnonzero(mod.annotated(12, 5)).tolist() == [2, 7]
    assert np.flatnonzero(mod.annotated(25, 10, 2)).tolist() == [4, 5, 14, 15, 24]  # slabs on even starts
    assert mod.annotated(4, 1).all()
    assert np.flatnonzero(mod.annotated(25, 10, 2, start=0)).tolist() == [0, 1, 10, 11, 20, 21]
    assert [mod.first_slab(c, 10, 2) for c in ("a", "b")] == [4, 4]  # fixed: one start for every case
    import zlib

    starts = {c: mod.first_slab(c, 10, 2, "per_case") for c in ("syn_000", "syn_001", "syn_002", "syn_003")}
    assert starts == {c: zlib.crc32(c.encode()) % 5 * 2 for c in starts} and len(set(starts.values())) > 1
    with pytest.raises(InputError, match="multiple of --thickness"):
        mod.main(["cfg.yaml", "--name", "x", "--every", "5", "--thickness", "2"])
    label = np.ones((3, 4, 12), np.uint8)
    keep = mod.annotated(12, 5)
    ign = mod.thinned(label, keep, 2, "ignore", 9)
    assert np.array_equal(np.flatnonzero((ign == 1).all(axis=(0, 1))), [2, 7]) and (ign[..., 0] == 9).all()
    assert np.array_equal(mod.thinned(label, keep, 2, "background", 9), np.where(ign == 9, 0, 1))
    assert mod.thinned(label, keep, 2, "full", 9) is label and (label == 1).all()  # the input is left alone
    assert (mod.thinned(label, mod.annotated(3, 2), 0, "ignore", 9)[[0, 2]] == 9).all()


def test_slice_agreement_known_answer(mod, tmp_path):
    """Two cases of 10 slices (every 5: slices 2 and 7 kept): the prediction is right on the kept
    slices and doubles the foreground on the others."""
    from semi3d.data.volumes import write_volume

    class Reader:
        def __init__(self, label):
            self.label = label

        def load(self, cid):
            return self  # a case: its .label

    truth = np.zeros((4, 4, 10), np.uint8)
    truth[1:3, 1:3] = 1  # 4 voxels per slice
    pred = truth.copy()
    pred[:, 1:3, [0, 1, 3, 4, 5, 6, 8, 9]] = 1  # 8 voxels on the other slices
    for cid in ("a", "b"):
        write_volume(tmp_path / f"{cid}.nii.gz", pred, np.eye(4))
    r = mod.slice_agreement(tmp_path, Reader(truth), ["a", "b"], 5, 1, 2)
    assert r == {"dice_kept_slices": 1.0, "dice_other_slices": pytest.approx(2 * 4 / 12), "volume_other_slices": 2.0,
                 "volume_by_offset": [1.0, 2.0, 2.0, 2.0, 2.0]}  # offset 0: the kept slices 2 and 7
    # per case, each from its own start ("a": 2 -> slices 2 and 7; "b": 1 -> slices 1 and 6, where
    # the prediction doubles the foreground, and its offset 1 is slices 2 and 7, where it does not)
    assert [mod.first_slab(c, 5, 1, "per_case") for c in ("a", "b")] == [2, 1]
    r = mod.slice_agreement(tmp_path, Reader(truth), ["a", "b"], 5, 1, 2, phase="per_case")
    assert r["volume_by_offset"] == [1.5, 1.5, 2.0, 2.0, 2.0]
    with pytest.raises(InputError, match=r"a.nii.gz: shape \(4, 4, 10\), the label's \(3, 4, 10\)"):
        mod.slice_agreement(tmp_path, Reader(truth[:3]), ["a"], 5, 1, 2)


def test_three_variants_written_trained_and_scored(mod, tiny_tree, synth_root, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_tree))
    res = mod.main([str(cfg), "--name", "sp", "--every", "4", "--thickness", "2", "--set", "train.iterations=2", "--set",
                    "train.val_every=2", "--runs", str(tmp_path / "runs"), "--data", str(tmp_path / "data"),
                    "--results", str(tmp_path / "results")])
    assert [r["variant"] for r in res["rows"]] == ["full", "ignore", "background"]
    assert json.loads((tmp_path / "results" / "sp.json").read_text()) == res
    assert (tmp_path / "results" / "sp.md").is_file()
    source = build_reader("nnunet", synth_root)
    lab, val = res["labelled"], json.loads((tmp_path / "runs" / "sp_full" / "splits.json").read_text())["validation"]
    assert lab == source.labelled_ids()[:3] and val == source.labelled_ids()[-1:]
    unl = json.loads((tmp_path / "runs" / "sp_ignore" / "splits.json").read_text())["unlabelled"]
    assert sorted(unl) == sorted(set(source.case_ids()) - set(lab) - set(val)) and len(unl) == 4  # the config's "rest"
    full, ign, bg = (build_reader("nnunet", tmp_path / "data" / f"sp_{v}") for v in ("full", "ignore", "background"))
    assert ign.num_classes == 3 and ign.ignore_value == 3 and full.ignore_value is None
    keep = mod.annotated(source.load(lab[0]).label.shape[2], 4, 2)
    assert keep.tolist()[:6] == [False, False, True, True, False, False]
    for cid in lab:
        truth = source.load(cid).label
        assert np.array_equal(full.load(cid).label, truth)
        assert (ign.load(cid).label[..., ~keep] == IGNORE_INDEX).all()
        assert np.array_equal(ign.load(cid).label[..., keep], truth[..., keep])
        assert (bg.load(cid).label[..., ~keep] == 0).all() and np.array_equal(bg.load(cid).label[..., keep], truth[..., keep])
    for reader in (full, ign, bg):  # the unlabelled cases: their images, never their labels
        assert sorted(reader.case_ids()) == sorted(lab + val + unl) and not any(reader.has_label(c) for c in unl)
        assert np.array_equal(reader.load(unl[0]).image, source.load(unl[0]).image)
    for reader in (full, ign, bg):  # the validation case keeps its full annotation
        assert np.array_equal(reader.load(val[0]).label, source.load(val[0]).label)
    rows = {r["variant"]: r for r in res["rows"]}
    assert rows["full"]["slices_annotated"] == 1.0 and rows["ignore"]["slices_annotated"] == keep.mean()
    assert 0 < rows["ignore"]["foreground_annotated"] < 1 and all(0 <= r["dice"] <= 1 for r in res["rows"])
    assert all(0 <= r["dice_kept_slices"] <= 1 and 0 <= r["dice_other_slices"] <= 1 for r in res["rows"])
    assert (tmp_path / "runs" / "sp_ignore" / "eval_validation" / "predictions" / f"{val[0]}.nii.gz").is_file()
    # a rerun reuses the datasets and the finished runs: the same result
    again = mod.main([str(cfg), "--name", "sp", "--every", "4", "--thickness", "2", "--set", "train.iterations=2", "--set",
                      "train.val_every=2", "--runs", str(tmp_path / "runs"), "--data", str(tmp_path / "data"),
                      "--results", str(tmp_path / "results")])
    assert again["rows"] == res["rows"]


def test_mn_trains_on_the_sparse_labels_and_the_unlabelled_images(mod, synth_root, tmp_path):
    """A semi-supervised config keeps its unlabelled split: M&N's stage 2 draws unlabelled patches
    (n_u > 0) beside the thinned labels, with finite losses."""
    from tiny_configs import mn_tree

    tree = mn_tree(synth_root, tmp_path / "runs", iterations=6, warmup=2,
                   options={"sampling": "fixed", "fixed_unlabelled": 1})
    tree["data"]["splits"].update(validation={"last": 1}, test={})
    cfg = tmp_path / "mn.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    res = mod.main([str(cfg), "--name", "spmn", "--every", "4", "--thickness", "2", "--variants", "ignore", "--phase",
                    "per_case", "--runs", str(tmp_path / "runs"), "--data", str(tmp_path / "data"), "--results",
                    str(tmp_path / "results")])
    run = tmp_path / "runs" / "spmn_ignore"
    assert len(json.loads((run / "splits.json").read_text())["unlabelled"]) == res["unlabelled"] == 5  # 8 - 2 - 1
    recs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"n_u"' in x]
    assert [r["n_u"] for r in recs] == [0, 0, 1, 1, 1, 1]
    assert all(np.isfinite(v) for r in recs for k, v in r.items() if k.startswith("loss/"))
    ign = build_reader("nnunet", tmp_path / "data" / "spmn_ignore")
    assert ign.ignore_value == 3 and 0 <= res["rows"][0]["dice"] <= 1 and res["phase"] == "per_case"
    starts = {cid: mod.first_slab(cid, 4, 2, "per_case") for cid in res["labelled"]}
    assert set(starts.values()) == {0} != {mod.first_slab("any", 4, 2)}  # not where fixed starts (2)
    for cid, start in starts.items():  # each case's labels kept on its own slabs
        lab = ign.load(cid).label
        assert np.array_equal((lab != IGNORE_INDEX).all(axis=(0, 1)), mod.annotated(lab.shape[2], 4, 2, start))
