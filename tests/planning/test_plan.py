"""semi3d plan: the fingerprint's known answers, the planning rules, and a planned config that trains."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from semi3d.cli import app
from semi3d.config import RunConfig, load_config
from semi3d.data.formats import build_reader
from semi3d.data.synthetic import write_dataset
from semi3d.errors import InputError
from semi3d.planning.fingerprint import ChannelStats, Fingerprint, fingerprint
from semi3d.planning.plan import BUDGETS, make_plan, plan_dataset

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def aniso(tmp_path_factory):
    """Thick slices along X (4 mm) against 0.8 mm in-plane: the high-resolution plane is Y-Z."""
    return write_dataset(tmp_path_factory.mktemp("plan") / "aniso", n_labelled=5, n_unlabelled=2,
                         shape=(12, 48, 40), spacing=(4.0, 0.8, 0.8))


def test_fingerprint_known_answers(aniso):
    reader = build_reader("nnunet", aniso)
    fp = fingerprint(reader)
    assert fp.n_cases == 7 and fp.n_labelled == 5 and fp.class_names == reader.class_names
    assert np.allclose(fp.spacings, [(4.0, 0.8, 0.8)] * 7) and fp.shapes == [(12, 48, 40)] * 7  # NIfTI: float32
    cases = [reader.load(c) for c in reader.labelled_ids()]
    counts = sum(np.bincount(c.label.ravel(), minlength=3) for c in cases)
    assert np.allclose(fp.class_share, counts / counts.sum())
    fg = np.concatenate([c.image[0][c.label > 0] for c in cases])  # < 10,000 per case: no subsampling
    assert fp.channels[0].mean == pytest.approx(fg.mean(), rel=1e-5)
    assert fp.channels[0].p99_5 == pytest.approx(np.percentile(fg, 99.5), rel=1e-5)
    # the organ (class 1, around the lesion) and the lesion are one connected structure in every case
    assert fp.largest_component_share == [1.0, 1.0] and fp.foreground_component_share == 1.0
    assert fp.orientations == {"RAS": 7} and fp.axcodes == ["RAS"] * 7


def test_plan_warns_of_cases_in_other_orientations(aniso, tmp_path):
    """One case stored with its X and Y axes reversed (LPS, same anatomy): the plan says so."""
    import shutil

    import nibabel as nib

    root = tmp_path / "mixed"
    shutil.copytree(aniso, root)
    assert "orientations" not in plan_dataset(root, tmp_path / "a.yaml").notes["orientation"]
    for f in sorted((root / "imagesTr").glob("*_0000.nii.gz"))[:1] + sorted((root / "labelsTr").glob("*.nii.gz"))[:1]:
        img = nib.load(f)
        lps = nib.as_closest_canonical(img).as_reoriented([[0, -1], [1, -1], [2, 1]])
        nib.save(nib.Nifti1Image(np.asarray(lps.dataobj), lps.affine), f)
    plan = plan_dataset(root, tmp_path / "b.yaml")
    note = plan.notes["orientation"]
    assert note.startswith("the cases are stored in 2 orientations (RAS 6, LPS 1 cases): every case is reoriented to RAS"), note
    assert load_config(tmp_path / "b.yaml").data.preprocess.orientation == "RAS"
    # only X and Y were reversed: the same plan on the same RAS axes
    same = plan_dataset(aniso, tmp_path / "c.yaml")
    assert (plan.target_spacing, plan.patch_size, plan.slicing_axis) == (same.target_spacing, same.patch_size, same.slicing_axis)
    assert load_config(tmp_path / "c.yaml").data.preprocess.orientation is None


def test_a_plain_folder_of_images_with_labels(aniso, tmp_path):
    """``semi3d plan IMAGES --labels LABELS``: files named by case (a scanner export, 3D Slicer) are
    planned as the same cases in nnU-Net's layout, and the config reads them (the ``folder`` format);
    ``--modality CT`` plans CT normalisation."""
    import shutil

    (tmp_path / "images").mkdir()
    for f in sorted((aniso / "imagesTr").glob("*_0000.nii.gz")) + sorted((aniso / "imagesUnlabelled").glob("*")):
        shutil.copy(f, tmp_path / "images" / f.name.replace("_0000", ""))
    shutil.copytree(aniso / "labelsTr", tmp_path / "labels")
    r = runner.invoke(app, ["plan", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                            "-o", str(tmp_path / "f.yaml")])
    assert r.exit_code == 0, r.output
    plan_dataset(aniso, tmp_path / "n.yaml")
    cfg, ref_cfg = load_config(tmp_path / "f.yaml"), load_config(tmp_path / "n.yaml")
    assert (cfg.data.format, cfg.data.options) == ("folder", {"labels": str(tmp_path / "labels")})
    assert cfg.data.patch_size == ref_cfg.data.patch_size and cfg.model == ref_cfg.model
    assert cfg.data.preprocess == ref_cfg.data.preprocess and cfg.method == ref_cfg.method
    reader = build_reader(cfg.data.format, cfg.data.root, **cfg.data.options)
    assert reader.labelled_ids() == build_reader("nnunet", aniso).labelled_ids() and len(reader.case_ids()) == 7
    # the folder says no modality: --modality names it (nnU-Net's dataset.json channel_names)
    ct = plan_dataset(tmp_path / "images", tmp_path / "ct.yaml", labels=tmp_path / "labels", modality=["CT"])
    assert ct.config["data"]["preprocess"]["normalisation"] == "ct" and len(ct.config["data"]["preprocess"]["ct_window"]) == 2
    assert load_config(tmp_path / "ct.yaml").data.options["channel_names"] == ["CT"]
    with pytest.raises(InputError, match="1 image channel.*channel_names names 2: CT, PET"):
        plan_dataset(tmp_path / "images", tmp_path / "x.yaml", labels=tmp_path / "labels", modality=["CT", "PET"])
    r = runner.invoke(app, ["plan", str(aniso), "--modality", "CT", "-o", str(tmp_path / "x.yaml")])
    assert r.exit_code == 2 and "--modality: describes a plain folder of images (with --labels)" in r.output
    r = runner.invoke(app, ["plan", str(aniso), "--labels", str(tmp_path / "labels"), "-o", str(tmp_path / "x.yaml")])
    assert r.exit_code == 2 and "--labels: is for a plain folder of images" in r.output
    (tmp_path / "other").mkdir()  # labels named otherwise (e.g. nnU-Net's syn_000_0000 images): said so
    shutil.copy(next((aniso / "labelsTr").iterdir()), tmp_path / "other" / "case_a.nii.gz")
    with pytest.raises(InputError, match=r"no labelled case.*no file in .*other is named as an image's case \(syn_000, syn_001"):
        plan_dataset(tmp_path / "images", tmp_path / "x.yaml", labels=tmp_path / "other")
    r = runner.invoke(app, ["plan", str(tmp_path / "images"), "-o", str(tmp_path / "x.yaml")])
    assert r.exit_code == 2 and "give its labels folder with --labels" in r.output
    assert not (tmp_path / "x.yaml").exists()


def test_a_case_stored_with_its_axes_permuted_is_planned_on_ras_axes():
    """A case stored PIL (X posterior, Y inferior, Z left) has its spacing and shape read along
    RAS axes (Z of PIL is X of RAS, ...): the thick slices stay on Z (the files' axes would mix them
    into a median of (0.8, 1.9, 1.9) mm)."""
    fp = _fp([(0.8, 0.8, 3.0)] * 4, shape=(200, 200, 40))
    fp.axcodes = ["RAS", "RAS", "PIL", "PIL"]
    for i in (2, 3):  # RAS (X, Y, Z) -> PIL axes (Y, Z, X)
        fp.spacings[i], fp.shapes[i] = (0.8, 3.0, 0.8), (200, 40, 200)
    assert fp.reoriented().spacings == [(0.8, 0.8, 3.0)] * 4 and fp.reoriented().shapes == [(200, 200, 40)] * 4
    plan = make_plan(fp, "cpu", method="mn")
    assert plan.slicing_axis == 2 and plan.config["data"]["preprocess"]["orientation"] == "RAS"
    assert plan.config["method"]["options"]["views"] == [2]


def test_plan_follows_the_anisotropy(aniso, tmp_path):
    plan = plan_dataset(aniso, tmp_path / "p.yaml", budget="cpu", method="mn")
    assert plan.target_spacing == pytest.approx((4.0, 0.8, 0.8))
    assert plan.slicing_axis == 0 and plan.config["method"]["options"]["views"] == [0]  # slices of the Y-Z plane
    assert plan.strides[0] == (1, 2, 2)  # X (5x coarser) is not pooled until the others catch up
    divisor = np.prod(plan.strides, axis=0)
    assert all(p % d == 0 for p, d in zip(plan.patch_size, divisor))
    assert np.prod(plan.patch_size) <= BUDGETS["cpu"].patch_voxels
    text = (tmp_path / "p.yaml").read_text()
    assert text.startswith("# Written by `semi3d plan`") and "anisotropic" in text
    cfg = load_config(tmp_path / "p.yaml")  # a complete, valid config
    assert cfg.data.patch_size == plan.patch_size and cfg.model.net3d.options["strides"][0] == [1, 2, 2]
    assert (tmp_path / "p.fingerprint.json").is_file()
    # M&N gets its reference augmentation (zoom on every patch, no flips), measured better on LA
    assert (cfg.data.augment.p_flip, cfg.data.augment.p_rot90, cfg.data.augment.p_scale) == (0.0, 0.0, 1.0)


def _fp(spacings, name="MRI", shape=(200, 200, 100), one_structure=1.0):
    n = len(spacings)
    return Fingerprint(n, n, [tuple(s) for s in spacings], [shape] * n,
                       [ChannelStats(name, 40.0, 120.0, -980.0, 1500.0)], ["background", "organ"], [0.9, 0.1],
                       [one_structure])


@pytest.mark.parametrize("share,postprocess", [(1.0, "largest_component"), (0.9985, "largest_component"),
                                               (0.98, "none"), (None, "none")])
def test_largest_component_only_when_the_labels_are_one_structure(share, postprocess):
    """LA's least share is 0.9985 (5 of 80 ground truths have a few stray voxels): kept largest; a class
    whose second structure holds 2 % of it (two kidneys, metastases) keeps every component."""
    plan = make_plan(_fp([(1.0, 1.0, 1.0)] * 2, one_structure=share), "cpu", method="supervised")
    assert plan.config["inference"]["postprocess"] == postprocess
    assert ("organ" in plan.notes["postprocess"]) == (share is not None)


def test_largest_component_per_class():
    """A single-structure class (liver) loses its stray predicted components, a multi-structure one
    (kidney) keeps them, as nnU-Net decides per class; the config trains and names the classes."""
    fp = _fp([(1.0, 1.0, 1.0)] * 2)
    fp.class_names, fp.class_share, fp.largest_component_share = ["background", "liver", "kidney"], [0.8, 0.1, 0.1], [0.995, 0.6]
    plan = make_plan(fp, "cpu", method="supervised")
    assert plan.config["inference"]["postprocess"] == "largest_component"
    assert plan.config["inference"]["largest_component_classes"] == [1]
    assert plan.notes["postprocess"].startswith("liver: ") and "kept for kidney, which spreads over several components (its largest holds 60.0%" in plan.notes["postprocess"]
    assert RunConfig.model_validate(plan.config).inference.largest_component_classes == [1]
    fp.largest_component_share = [0.995, None]  # no labelled case has a kidney: nothing known, nothing removed
    assert make_plan(fp, "cpu", method="supervised").config["inference"]["largest_component_classes"] == [1]


@pytest.mark.parametrize("share,step1", [(0.995, True), (0.9, False)])
def test_all_foreground_as_one_structure_with_several_classes(share, step1):
    """A liver with its tumours (tumours spread over several components, the whole one structure):
    nnU-Net's step 1 (all foreground together) is on, the tumour keeps its components; when the
    foreground itself spreads over several structures step 1 is off, written as such."""
    fp = _fp([(1.0, 1.0, 1.0)] * 2)
    fp.class_names, fp.class_share = ["background", "liver", "tumour"], [0.8, 0.15, 0.05]
    fp.largest_component_share, fp.foreground_component_share = [0.999, 0.5], share
    plan = make_plan(fp, "cpu", method="supervised")
    inference = RunConfig.model_validate(plan.config).inference
    assert inference.largest_foreground_component is step1
    assert inference.postprocess == "largest_component" and inference.largest_component_classes == [1]
    note = plan.notes["postprocess"]
    assert note.startswith("all foreground classes together are one structure" if step1 else
                           "the foreground classes together spread over several components (their largest holds 90.0%")
    assert "liver: " in note and "kept for tumour" in note


def test_separate_organs_keep_every_foreground_component(tmp_path):
    """Synthetic cases with a blob away from the organ (class 3): the foreground is several
    structures, so the written plan leaves step 1 off; the share is the labels' own."""
    from semi3d.data.postprocess import largest_component_share

    root = write_dataset(tmp_path / "sep", n_labelled=3, n_unlabelled=0, shape=(32, 32, 24), num_classes=4)
    reader = build_reader("nnunet", root)
    fp = fingerprint(reader)
    assert fp.foreground_component_share == min(largest_component_share(reader.load(c).label > 0)
                                                for c in reader.labelled_ids()) < 0.99
    plan = plan_dataset(root, tmp_path / "p.yaml", method="supervised")
    assert load_config(tmp_path / "p.yaml").inference.largest_foreground_component is False
    assert plan.notes["postprocess"].startswith("the foreground classes together spread over several components")


def test_one_foreground_class_leaves_step1_to_the_per_class_rule():
    """With one foreground class the two steps are the same: the plan writes the per-class one only."""
    fp = _fp([(1.0, 1.0, 1.0)] * 2)
    fp.foreground_component_share = 1.0
    plan = make_plan(fp, "cpu", method="supervised")
    assert "largest_foreground_component" not in plan.config["inference"]
    assert plan.config["inference"]["postprocess"] == "largest_component"


def test_target_spacing_takes_the_10th_percentile_of_a_thick_axis():
    spacings = [(0.7, 0.7, 5.0)] * 8 + [(0.7, 0.7, 1.0)] * 2  # two thin-slice cases
    plan = make_plan(_fp(spacings), budget="gpu")
    assert plan.target_spacing[2] == pytest.approx(np.percentile([5.0] * 8 + [1.0] * 2, 10))
    assert plan.target_spacing[:2] == (0.7, 0.7)


def test_cpu_budget_coarsens_a_large_case_and_gpu_keeps_it():
    fp = _fp([(0.625, 0.625, 0.625)] * 3, shape=(185, 142, 88))  # LA-like
    cpu, gpu = make_plan(fp, "cpu"), make_plan(fp, "gpu")
    assert gpu.target_spacing == (0.625, 0.625, 0.625) and cpu.target_spacing[0] > 1.0
    covered = np.prod(cpu.patch_size) / np.prod(fp.median_shape_at(cpu.target_spacing))
    assert 0.35 < covered <= 1.0


def test_ct_gets_clipping_and_foreground_statistics():
    pre = make_plan(_fp([(1.0, 1.0, 1.0)] * 2, name="CT"), "cpu", method="supervised").config["data"]["preprocess"]
    assert pre["normalisation"] == "ct" and pre["ct_window"] == [-980.0, 1500.0] and pre["ct_stats"] == [40.0, 120.0]
    pre = make_plan(_fp([(1.0, 1.0, 1.0)] * 2), "cpu", method="supervised").config["data"]["preprocess"]
    assert pre["normalisation"] == "zscore"


@pytest.mark.parametrize("name,minimum,fmt,hint", [
    ("image", -1024.0, "folder", "--modality CT"), ("MRI", -1024.0, "nnunet", 'channel_names {"0": "CT"}'),
    ("CT", -1024.0, "folder", None), ("image", -4.2, "folder", None), ("image", None, "folder", None),
    ("image", -1024.0, "uamt_h5", None)])  # UA-MT h5 has no way to name a modality
def test_a_channel_like_ct_not_named_ct_gets_a_hint(name, minimum, fmt, hint):
    """A plain folder's channel is called 'image': when it reaches air's -1000 HU the plan says it
    may be CT and how to name it (CT normalisation is nnU-Net's choice for CT); z-scored MRI does not."""
    fp = _fp([(1.0, 1.0, 1.0)] * 2, name=name)
    fp.channels[0].minimum = minimum
    plan = make_plan(fp, "cpu", method="supervised", data_format=fmt)
    assert ("like CT in HU" in plan.notes["normalisation"]) == (hint is not None)
    if hint:
        assert hint in plan.notes["normalisation"]
    if hint == "--modality CT":
        assert "channel 'image' goes down to -1024, like CT in HU" in plan.notes["normalisation"]
        assert plan.config["data"]["preprocess"]["normalisation"] == "zscore"  # a hint, nothing changed


def test_the_fingerprint_measures_each_channels_minimum(aniso):
    reader = build_reader("nnunet", aniso)
    fp = fingerprint(reader)
    lowest = min(float(reader.load(c).image[0].min()) for c in reader.case_ids())
    assert fp.channels[0].minimum == pytest.approx(lowest)


def test_the_planned_config_trains(aniso, tmp_path):
    plan = plan_dataset(aniso, tmp_path / "sup.yaml", method="supervised")
    tree = yaml.safe_load((tmp_path / "sup.yaml").read_text())
    assert tree["method"] == {"name": "supervised", "options": {}} and "net2d" not in tree["model"]
    assert "augment" not in tree["data"]  # the package defaults
    from semi3d.engine.trainer import train

    tree["output_dir"] = str(tmp_path / "runs")
    cfg = load_config(tree=tree, overrides=["train.iterations=2", "train.val_every=2", "train.batch_size=1",
                                            "model.net3d.options.base=4", "train.progress_bar=false"])
    summary = train(cfg)
    assert summary["iterations"] == 2 and plan.patch_size == cfg.data.patch_size


def test_cli_plan_and_its_errors(aniso, tmp_path):
    r = runner.invoke(app, ["plan", str(aniso), "-o", str(tmp_path / "c.yaml"), "--method", "supervised"])
    assert r.exit_code == 0, r.output
    assert "target_spacing" in r.output and (tmp_path / "c.yaml").is_file()
    assert r.output.splitlines()[0].startswith("[1/") and " fingerprint " in r.output  # progress as it reads
    assert load_config(tmp_path / "c.yaml").inference.postprocess == "largest_component"
    r = runner.invoke(app, ["plan", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such dataset folder" in r.output
    r = runner.invoke(app, ["plan", str(aniso), "--budget", "tpu", "-o", str(tmp_path / "d.yaml")])
    assert r.exit_code == 2 and "unknown budget" in r.output and not (tmp_path / "d.yaml").exists()


@pytest.mark.parametrize("method,warned", [("mn", True), ("bcp", True), ("supervised", False)])
def test_a_method_that_needs_unlabelled_cases_is_warned_when_there_are_none(method, warned):
    """The note counts the unlabelled cases; with none, a semi-supervised method's plan says that
    training will refuse it and what to do (it used to say only 'unlabelled: the rest')."""
    fp = _fp([(1.0, 1.0, 1.0)] * 4)  # 4 cases read, all labelled
    plan = make_plan(fp, "cpu", method=method)
    assert "(0 cases without a label)" in plan.notes["splits"]
    assert ("warning" in plan.notes) == warned
    if warned:
        assert f"method {method} trains on unlabelled cases" in plan.notes["warning"]
        assert "imagesUnlabelled/" in plan.notes["warning"] and "data.splits.labelled.first" in plan.notes["warning"]
    fp.n_cases = 6
    plan = make_plan(fp, "cpu", method=method)
    assert "warning" not in plan.notes and "(2 cases without a label)" in plan.notes["splits"]


def test_the_warning_of_no_unlabelled_cases_is_what_training_then_says(tmp_path):
    root = write_dataset(tmp_path / "Dataset001_AllLabelled", n_labelled=3, n_unlabelled=0, shape=(24, 24, 16))
    r = runner.invoke(app, ["plan", str(root), "-o", str(tmp_path / "mn.yaml")])  # --method mn, the default
    assert r.exit_code == 0, r.output
    assert "warning: method mn trains on unlabelled cases" in r.output
    assert "#   warning: method mn" in (tmp_path / "mn.yaml").read_text()  # and in the config's header
    from semi3d.engine.trainer import Trainer

    cfg = load_config(tmp_path / "mn.yaml", overrides=[f"output_dir={tmp_path / 'runs'}"])
    with pytest.raises(InputError, match="needs unlabelled cases but the split is empty"):
        Trainer(cfg)
    cfg = load_config(tmp_path / "mn.yaml", overrides=[f"output_dir={tmp_path / 'runs'}", "data.splits.labelled.first=1"])
    assert len(Trainer(cfg).data.cases("unlabelled")) == 1  # the advice: a labelled case left over trains unlabelled


@pytest.mark.parametrize("budget,fp32_cpu,noted", [("cpu", True, True), ("cpu", False, False), ("gpu", True, False)])
def test_a_cpu_plan_made_where_training_runs_in_fp32_says_what_it_costs(budget, fp32_cpu, noted):
    """The CPU schedule was measured with bf16; a machine without it (nor a GPU) is told the fp32 cost
    and the 8-filter option, and the plan itself stays the same."""
    fp = _fp([(1.0, 1.0, 1.0)] * 4)
    plan = make_plan(fp, budget, method="mn", fp32_cpu=fp32_cpu)
    assert ("speed" in plan.notes) == noted
    if noted:
        assert "fp32" in plan.notes["speed"] and "--set model.net3d.options.base=8" in plan.notes["speed"]
    assert plan.config == make_plan(fp, budget, method="mn").config


def test_plan_dataset_asks_the_machine(aniso, tmp_path, monkeypatch):
    import torch

    for native, noted in ((False, True), (True, False)):
        monkeypatch.setattr("semi3d.engine.precision.cpu_has_native_bf16", lambda native=native: native)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        plan = plan_dataset(aniso, tmp_path / "p.yaml", method="supervised")
        assert ("speed" in plan.notes) == noted
        assert ("#   speed: this machine has no GPU" in (tmp_path / "p.yaml").read_text()) == noted


@pytest.mark.parametrize("codes,warned", [("RAS", False), ("RAI", True)])
def test_the_plan_warns_of_sparse_cases_annotated_on_the_same_slices(codes, warned):
    """Two sparse cases 40 slices long, shorter than the planned patch (48, from the three fully
    annotated cases), annotated every 5th Z slice: case a from slice 1, case b stored with Z
    reversed (``codes``) from slice 3 of its file. Stored RAS, each has its own slices (no warning);
    stored RAI, b's slices counted from its first slice after reorientation to RAS are a's
    (38 - 35 = 3 ... -> 1, 6, ...), and the plan says what training would (same_slices_warning)."""
    n = 5
    fp = Fingerprint(n, n, [(1.0, 1.0, 1.0)] * n, [(20, 20, 48)] * 3 + [(20, 20, 40)] * 2,
                     [ChannelStats("MRI", 40.0, 120.0, -980.0, 1500.0)], ["background", "organ"], [0.9, 0.1],
                     [1.0], ["RAS"] * 4 + [codes], 1.0, 2,
                     [None] * 3 + [[None, None, list(range(1, 40, 5))], [None, None, list(range(3, 40, 5))]])
    plan = make_plan(fp, "cpu", method="supervised")
    assert plan.patch_size[2] == 48
    note = plan.notes.get("warning (sparse annotation)")
    assert (note is not None) == warned
    if warned:
        assert note.startswith("2 of the 2 sparsely annotated cases shorter than the patch along axis Z")
        assert "(1, 6, 11, 16, 21, 26, ...)" in note
    assert "warning" not in plan.notes  # the other warning (no unlabelled cases) is not for supervised
