"""The CLI end to end on a tiny synthetic dataset: train -> predict -> evaluate, and clean errors."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from semi3d.cli import app
from semi3d.data.volumes import read_volume, write_volume
from stops import STOPS, stop_now

runner = CliRunner()


@pytest.fixture
def trained(tiny_tree, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_tree))
    r = runner.invoke(app, ["train", str(cfg), "--set", "train.iterations=4", "--set", "name=cli"])
    assert r.exit_code == 0, r.output
    return tmp_path / "runs" / "cli"


def test_train_predict_evaluate(trained, synth_root, tmp_path):
    images = sorted((synth_root / "imagesTs").iterdir())
    out = tmp_path / ("pred_" + "x" * 90)  # the written paths print one per line, unfolded at any length
    r = runner.invoke(app, ["predict", str(trained), str(images[0]), "-o", str(out), "--probabilities"])
    assert r.exit_code == 0, r.output
    case = images[0].name.replace("_0000.nii.gz", "")
    assert sorted(r.stdout.splitlines()) == [str(out / f"{case}.nii.gz"), str(out / f"{case}_prob.nii.gz")]
    src, seg = nib.load(images[0]), nib.load(out / f"{case}.nii.gz")  # nnU-Net naming: by case
    assert seg.shape == src.shape and np.allclose(seg.affine, src.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
    prob = nib.load(out / f"{case}_prob.nii.gz")
    assert prob.shape == (*src.shape, 3)

    from semi3d.data.postprocess import keep_largest_component

    r = runner.invoke(app, ["predict", str(trained), str(images[0]), "-o", str(tmp_path / "pp"), "--postprocess", "largest_component"])
    assert r.exit_code == 0, r.output
    pp = np.asarray(nib.load(tmp_path / "pp" / f"{case}.nii.gz").dataobj)
    assert np.array_equal(pp, keep_largest_component(np.asarray(seg.dataobj), 3))
    r = runner.invoke(app, ["predict", str(trained), str(images[0]), "-o", str(tmp_path / "x"), "--postprocess", "biggest"])
    assert r.exit_code == 2 and "--postprocess" in r.output and "largest_component" in r.output
    # any inference setting for one prediction, as evaluate --set: the same as --postprocess here
    r = runner.invoke(app, ["predict", str(trained), str(images[0]), "-o", str(tmp_path / "pp_set"),
                            "--set", "inference.postprocess=largest_component"])
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(nib.load(tmp_path / "pp_set" / f"{case}.nii.gz").dataobj), pp)
    for bad, says in (("inference.overlap=2", "inference.overlap: Input should be less than 1 (from --set inference.overlap=...)"),
                      ("train.iterations=3", "--set train.iterations: predict takes the model's inference settings only")):
        r = runner.invoke(app, ["predict", str(trained), str(images[0]), "-o", str(tmp_path / "bad"), "--set", bad])
        assert r.exit_code == 2 and says in r.output and not (tmp_path / "bad").exists(), r.output

    from semi3d.data.postprocess import keep_largest_foreground
    from semi3d.errors import InputError
    from semi3d.inference.predictor import Predictor, model_file

    base = Predictor(model_file(trained), "cpu")
    upd = Predictor(model_file(trained), "cpu", inference={"overlap": 0.1})  # a partial update keeps the rest
    assert upd.cfg.inference == base.cfg.inference.model_copy(update={"overlap": 0.1}) != base.cfg.inference
    with pytest.raises(InputError, match=r"inference.postprocess: .* \(from --set inference.postprocess=...\)"):
        Predictor(model_file(trained), "cpu", inference={"postprocess": "biggest"})
    raw = np.zeros((12, 12, 8), np.int64)  # two components of each class, the smaller one voxel
    raw[:4, :4, :4], raw[8, 8, 6], raw[6:, :4, :4], raw[0, 10, 6] = 1, 1, 2, 2
    probs = torch.nn.functional.one_hot(torch.from_numpy(raw), 3).permute(3, 0, 1, 2).float()
    one = Predictor(model_file(trained), "cpu", inference={"postprocess": "largest_component", "largest_component_classes": [2]})
    assert one.segment(None, probs)[8, 8, 6] == 1 and one.segment(None, probs)[0, 10, 6] == 0
    assert np.array_equal(one.segment(None, probs), keep_largest_component(raw, 3, classes=[2]))
    merged = Predictor(model_file(trained), "cpu", inference={"largest_foreground_component": True,
                                                             "postprocess": "largest_component", "largest_component_classes": [2]})
    assert np.array_equal(merged.segment(None, probs), keep_largest_component(keep_largest_foreground(raw), 3, classes=[2]))
    assert merged.segment(None, probs)[8, 8, 6] == 0  # class 1's stray voxel: outside the one foreground region
    with pytest.raises(InputError, match="inference.largest_component_classes: class 3 is not a foreground class"):
        Predictor(model_file(trained), "cpu", inference={"largest_component_classes": [3]})

    r = runner.invoke(app, ["evaluate", str(trained), "--split", "test", "--save-predictions"])
    assert r.exit_code == 0, r.output
    m = json.loads((trained / "eval_test" / "metrics.json").read_text())
    assert len(m["per_case"]) == 2 and "organ" in m["mean"]
    assert (trained / "eval_test" / "metrics.csv").read_text().count("\n") == 1 + 2 * 2
    # the saved predictions scored as any tool's: the same numbers (classes from the dataset.json beside labelsTs)
    r = runner.invoke(app, ["evaluate-folder", str(trained / "eval_test" / "predictions"), str(synth_root / "labelsTs"),
                            "-o", str(tmp_path / "folder")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "folder" / "metrics.json").read_text())["per_case"] == m["per_case"]


def test_evaluate_refuses_ids_the_run_used(trained, tmp_path):
    splits = json.loads((trained / "splits.json").read_text())
    lst = tmp_path / "test.list"
    lst.write_text(splits["labelled"][0] + "\n")
    r = runner.invoke(app, ["evaluate", str(trained), "--ids-list", str(lst)])
    assert r.exit_code == 2 and "was used by the run" in r.output


def test_bad_input_gives_one_clean_line(tmp_path, tiny_tree):
    cfg = tmp_path / "bad.yaml"
    tiny_tree["train"]["bogus"] = 1
    cfg.write_text(yaml.safe_dump(tiny_tree))
    r = runner.invoke(app, ["train", str(cfg)])
    assert r.exit_code == 2
    assert "train.bogus" in r.output and "Traceback" not in r.output


def test_an_error_line_prints_the_message_as_it_is(tmp_path):
    """A message is text, not rich markup: a bracketed part of a path stays (it vanished before)."""
    missing = tmp_path / "runs[bold]" / "cfg.yaml"
    r = runner.invoke(app, ["train", str(missing)])
    assert r.exit_code == 2
    assert r.output.startswith("error: ") and str(missing) in r.output and r.output.count("\n") == 1


def test_predict_holds_one_case_in_memory_and_prints_each_as_written(trained, synth_root, tmp_path, monkeypatch):
    """Every input is checked before anything is written, but the cases are then predicted one at a
    time: a folder of many large CT volumes is never held in memory at once (it was)."""
    import weakref

    from semi3d.data import readers
    from semi3d.inference.predictor import Predictor

    made, alive_at_predict = [], []
    assemble, call = readers.assemble_case, Predictor.__call__

    def counting_assemble(*a, **k):
        made.append(weakref.ref(case := assemble(*a, **k)))
        return case

    def counting_call(self, case):
        alive_at_predict.append(sum(r() is not None for r in made))
        return call(self, case)

    monkeypatch.setattr(readers, "assemble_case", counting_assemble)
    monkeypatch.setattr(Predictor, "__call__", counting_call)
    out = tmp_path / "out"
    r = runner.invoke(app, ["predict", str(trained), str(synth_root / "imagesTs"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert len(made) == 4 and alive_at_predict == [1, 1]  # read twice, one case alive at each prediction
    assert r.stdout.splitlines() == [str(out / f) for f in ("syn_008.nii.gz", "syn_009.nii.gz")]


def test_predict_a_dicom_series_folder(trained, synth_root, tmp_path):
    """A DICOM series folder is one case, written as <folder>.nii.gz with the series' geometry: the
    same segmentation as the same image and geometry given as NIfTI."""
    from dicom_series import write_series

    from semi3d.data.volumes import itk_affine

    src = read_volume(sorted((synth_root / "imagesTs").iterdir())[0])
    image = np.round(src.array * 100).astype(np.int16)  # DICOM stores integers; the model sees the same either way
    img = write_series(tmp_path / "in" / "patient7", image, spacing=src.spacing, origin=(10.0, -5.0, 3.0))
    write_volume(tmp_path / "nifti" / "patient7.nii.gz", image, affine=itk_affine(img))
    for inputs, out in (([tmp_path / "in" / "patient7"], tmp_path / "o_dcm"), ([tmp_path / "nifti"], tmp_path / "o_nii")):
        r = runner.invoke(app, ["predict", str(trained), *map(str, inputs), "-o", str(out)])
        assert r.exit_code == 0, r.output
    a, b = nib.load(tmp_path / "o_dcm" / "patient7.nii.gz"), nib.load(tmp_path / "o_nii" / "patient7.nii.gz")
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, itk_affine(img))
    assert len(np.unique(np.asarray(a.dataobj))) > 1  # a segmentation, not an empty map
    r = runner.invoke(app, ["predict", str(trained), str(tmp_path / "in"), "-o", str(tmp_path / "o2")])  # the parent
    assert r.exit_code == 2 and "no DICOM series in this folder; give the series folders themselves" in r.output


def test_predict_writes_a_dicom_seg_over_the_series(trained, synth_root, tmp_path):
    """--dicom-seg: <folder>.seg.dcm, a DICOM Segmentation whose frames over each source slice are
    the NIfTI mask's slice, one segment per foreground class, in the source's patient and study;
    a non-DICOM input is refused before anything is written."""
    hd = pytest.importorskip("highdicom")
    import pydicom
    from dicom_series import write_series

    src = read_volume(sorted((synth_root / "imagesTs").iterdir())[0])
    write_series(tmp_path / "in" / "patient7", np.round(src.array * 100).astype(np.int16), spacing=src.spacing)
    r = runner.invoke(app, ["predict", str(trained), str(tmp_path / "in" / "patient7"), "-o", str(tmp_path / "o"),
                            "--dicom-seg"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["patient7.nii.gz", "patient7.seg.dcm"]
    mask = read_volume(tmp_path / "o" / "patient7.nii.gz").array  # (X, Y, Z)
    assert len(np.unique(mask)) > 1
    seg = hd.seg.segread(tmp_path / "o" / "patient7.seg.dcm")
    sources = sorted((pydicom.dcmread(f) for f in (tmp_path / "in" / "patient7").iterdir()),
                     key=lambda d: float(d.ImagePositionPatient[2]))
    frames = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in sources], combine_segments=True)
    assert np.array_equal(frames, mask.transpose(2, 1, 0))  # (slices, rows = Y, columns = X)
    assert [seg.get_segment_description(k).segment_label for k in seg.get_segment_numbers()] == ["organ", "lesion"]
    assert (seg.PatientID, seg.StudyInstanceUID) == (sources[0].PatientID, sources[0].StudyInstanceUID)
    nifti = sorted((synth_root / "imagesTs").iterdir())[0]
    r = runner.invoke(app, ["predict", str(trained), str(nifti), "-o", str(tmp_path / "o2"), "--dicom-seg"])
    assert r.exit_code == 2 and "not a DICOM series folder" in r.output and not (tmp_path / "o2").exists()


def test_predict_into_unwritable_folder(trained, synth_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    img = sorted((synth_root / "imagesTs").iterdir())[0]
    before = img.read_bytes()
    r = runner.invoke(app, ["predict", str(trained), str(img), "-o", str(blocker / "out")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert img.read_bytes() == before


def test_predict_rejects_nan_image(trained, tmp_path):
    bad = tmp_path / "nan.nii.gz"
    arr = np.zeros((24, 24, 16), np.float32)
    arr[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), bad)
    out = tmp_path / "pred"
    r = runner.invoke(app, ["predict", str(trained), str(bad), "-o", str(out)])
    assert r.exit_code == 2 and "nan.nii.gz" in r.output and not out.exists()


@pytest.mark.parametrize("signum,name", STOPS)
def test_predict_stopped_while_writing_leaves_no_half_written_file(trained, synth_root, tmp_path, monkeypatch,
                                                                   signum, name):
    def half_written(img, path):  # the writer is half way through the file when the signal comes
        Path(path).write_bytes(b"half")
        stop_now(signum)

    monkeypatch.setattr("nibabel.save", half_written)
    out = tmp_path / "pred"
    img = sorted((synth_root / "imagesTs").iterdir())[0]
    r = runner.invoke(app, ["predict", str(trained), str(img), "-o", str(out)])
    assert r.exit_code == 128 + signum and f"stopped: {name}" in r.output and "Traceback" not in r.output, r.output
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("signum, name", STOPS)
def test_a_stopped_folder_prediction_goes_on_with_continue(trained, synth_root, tmp_path, monkeypatch, signum, name):
    import nibabel

    save, calls = nibabel.save, []

    def stop_at_the_second_case(img, path):
        calls.append(path)
        if len(calls) == 2:
            stop_now(signum)
        save(img, path)

    monkeypatch.setattr("nibabel.save", stop_at_the_second_case)
    out, folder = tmp_path / "pred", synth_root / "imagesTs"
    r = runner.invoke(app, ["predict", str(trained), str(folder), "-o", str(out)])
    assert r.exit_code == 128 + signum and f"stopped: {name}" in r.output and "--continue" in r.output, r.output
    assert sorted(p.name for p in out.iterdir()) == ["syn_008.nii.gz"]
    first = (out / "syn_008.nii.gz").stat().st_mtime_ns
    monkeypatch.setattr("nibabel.save", save)
    r = runner.invoke(app, ["predict", str(trained), str(folder), "-o", str(out), "--continue"])
    assert r.exit_code == 0 and r.stdout.splitlines() == [str(out / "syn_009.nii.gz")], r.output
    assert (out / "syn_008.nii.gz").stat().st_mtime_ns == first  # not predicted again


def test_list():
    r = runner.invoke(app, ["list"])
    assert r.exit_code == 0 and "supervised" in r.output and "unet3d" in r.output and "vnet" in r.output


def test_predict_names_uamt_style_inputs_by_folder(trained, synth_root, tmp_path):
    """Inputs that share a file name (UA-MT: <id>/mri_norm2.h5) are named by their folders; two
    inputs that would still write one output are refused before anything is written."""
    import shutil

    images = sorted((synth_root / "imagesTs").iterdir())
    for cid, img in zip(("caseA", "caseB"), images):
        (tmp_path / "in" / cid).mkdir(parents=True)
        shutil.copy(img, tmp_path / "in" / cid / "image.nii.gz")
    r = runner.invoke(app, ["predict", str(trained), str(tmp_path / "in/caseA/image.nii.gz"),
                            str(tmp_path / "in/caseB/image.nii.gz"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["caseA.nii.gz", "caseB.nii.gz"]
    (tmp_path / "in2" / "caseA").mkdir(parents=True)
    shutil.copy(images[0], tmp_path / "in2" / "caseA" / "image.nii.gz")
    r = runner.invoke(app, ["predict", str(trained), str(tmp_path / "in/caseA/image.nii.gz"),
                            str(tmp_path / "in2/caseA/image.nii.gz"), "-o", str(tmp_path / "out2")])
    assert r.exit_code == 2 and "same output name" in r.output and not (tmp_path / "out2").exists()


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_predict_writes_the_input_format(trained, synth_root, tmp_path, ending):
    """NRRD / MHA in -> NRRD / MHA out (nnU-Net naming <case><ending>), with the input's geometry
    and the labels a NIfTI copy of the same image gets; probabilities as a K-component image."""
    import SimpleITK as sitk

    src = sorted((synth_root / "imagesTs").iterdir())[0]
    vol = read_volume(src)
    write_volume(tmp_path / "in" / f"case_0000{ending}", vol.array, affine=vol.affine)
    r = runner.invoke(app, ["predict", str(trained), str(tmp_path / "in"), str(src), "-o", str(tmp_path / "out"),
                            "--probabilities"])
    assert r.exit_code == 0, r.output
    ref = src.name.replace("_0000.nii.gz", "")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"case{ending}", f"case_prob{ending}", f"{ref}.nii.gz", f"{ref}_prob.nii.gz"])
    seg, nii = read_volume(tmp_path / "out" / f"case{ending}"), read_volume(tmp_path / "out" / f"{ref}.nii.gz")
    assert np.array_equal(seg.array, nii.array) and np.allclose(seg.affine, vol.affine, atol=1e-5)
    prob = sitk.ReadImage(str(tmp_path / "out" / f"case_prob{ending}"))
    assert prob.GetNumberOfComponentsPerPixel() == 3 and prob.GetSize() == vol.array.shape


def test_predict_groups_the_channel_files_of_a_two_channel_model(synth_root, tiny_tree, tmp_path):
    """nnU-Net naming: <case>_0000 and <case>_0001 are one two-channel case, written as <case>.nii.gz
    (each used to be its own one-channel case: 'image has 1 channel(s), the model expects 2')."""
    import shutil

    root = tmp_path / "Dataset002_Two"
    shutil.copytree(synth_root, root)
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "MRI", "1": "MRI2"}
    (root / "dataset.json").write_text(json.dumps(meta))
    for folder in ("imagesTr", "imagesUnlabelled", "imagesTs"):
        for f in sorted((root / folder).glob("*_0000.nii.gz")):
            img = nib.load(f)
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 2.0 + 1.0, img.affine),
                     str(f).replace("_0000.nii.gz", "_0001.nii.gz"))
    tiny_tree["data"]["root"] = str(root)
    cfg = tmp_path / "two.yaml"
    cfg.write_text(yaml.safe_dump(tiny_tree))
    r = runner.invoke(app, ["train", str(cfg), "--set", "train.iterations=2", "--set", "name=two"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "two"
    r = runner.invoke(app, ["predict", str(run), str(root / "imagesTs"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["syn_008.nii.gz", "syn_009.nii.gz"]
    one = root / "imagesTs" / "syn_008_0000.nii.gz"
    r = runner.invoke(app, ["predict", str(run), str(one), "-o", str(tmp_path / "out1")])
    assert r.exit_code == 2 and "syn_008" in r.output and "0000, 0001" in r.output
    assert not (tmp_path / "out1").exists()
    # the same channels in one 4D NIfTI (channels last, the Medical Segmentation Decathlon's layout)
    # are one case: the same masks; a folder of them trains as the `folder` format
    msd = tmp_path / "Task09_Two"
    for folder in ("imagesTr", "imagesTs"):
        (msd / folder).mkdir(parents=True)
        for f in sorted((root / folder).glob("*_0000.nii.gz")):
            chans = [nib.load(str(f).replace("_0000", f"_000{c}")) for c in (0, 1)]
            nib.save(nib.Nifti1Image(np.stack([np.asarray(c.dataobj) for c in chans], -1), chans[0].affine),
                     msd / folder / f.name.replace("_0000", ""))
    r = runner.invoke(app, ["predict", str(run), str(msd / "imagesTs"), "-o", str(tmp_path / "out4d")])
    assert r.exit_code == 0, r.output
    for case in ("syn_008", "syn_009"):
        assert np.array_equal(read_volume(tmp_path / "out4d" / f"{case}.nii.gz").array,
                              read_volume(tmp_path / "out" / f"{case}.nii.gz").array)
    shutil.copytree(root / "labelsTr", msd / "labelsTr")
    r = runner.invoke(app, ["train", str(cfg), "--set", "train.iterations=2", "--set", "name=msd",
                            "--set", f"data={{format: folder, root: {msd / 'imagesTr'}, num_classes: 3, "
                                     f"options: {{labels: {msd / 'labelsTr'}}}, patch_size: [16, 16, 16]}}"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["predict", str(tmp_path / "runs" / "msd"), str(msd / "imagesTs"), "-o", str(tmp_path / "out_msd"),
                            "--precision", "fp32"])
    assert r.exit_code == 0 and sorted(p.name for p in (tmp_path / "out_msd").iterdir()) == ["syn_008.nii.gz", "syn_009.nii.gz"]
    # its exported MONAI bundle takes the same 4D files (LoadImaged + EnsureChannelFirstd): the same masks
    import subprocess
    import sys

    assert runner.invoke(app, ["export", str(tmp_path / "runs" / "msd"), "-o", str(tmp_path / "bundle")]).exit_code == 0
    res = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(tmp_path / "bundle/configs/inference.json"),
                          "--bundle_root", str(tmp_path / "bundle"), "--dataset_dir", str(msd / "imagesTs"),
                          "--output_dir", str(tmp_path / "monai")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for case in ("syn_008", "syn_009"):
        assert np.array_equal(read_volume(tmp_path / "monai" / f"{case}.nii.gz").array,
                              read_volume(tmp_path / "out_msd" / f"{case}.nii.gz").array)


def test_evaluate_refuses_an_empty_id_list_and_predict_names_valid_which(trained, tmp_path):
    empty = tmp_path / "empty.list"
    empty.write_text("\n")
    r = runner.invoke(app, ["evaluate", str(trained), "--ids-list", str(empty)])
    assert r.exit_code == 2 and "no case ids" in r.output
    assert not (trained / "eval_empty").exists()
    r = runner.invoke(app, ["predict", str(trained), str(empty), "-o", str(tmp_path / "o"), "--which", "bogus"])
    assert r.exit_code == 2 and "auto, best, final" in r.output


def test_a_relative_data_root_read_from_another_folder_says_how_to_point_at_it(tiny_tree, synth_root, tmp_path,
                                                                               monkeypatch):
    """A run trained with ``data.root`` relative to its folder, evaluated (reported, suggested) from
    another folder: one line naming the root, the current folder and ``--data-root``, nothing written;
    with ``--data-root`` it evaluates."""
    monkeypatch.chdir(synth_root.parent)
    tiny_tree["data"]["root"] = synth_root.name
    cfg = tmp_path / "rel.yaml"
    cfg.write_text(yaml.safe_dump(tiny_tree))
    assert runner.invoke(app, ["train", str(cfg), "--set", "train.iterations=2", "--set", "name=rel"]).exit_code == 0
    run = tmp_path / "runs" / "rel"
    monkeypatch.chdir(tmp_path)
    for verb in (["evaluate", str(run)], ["suggest", str(run)], ["report", str(run), "--evaluate"]):
        r = runner.invoke(app, verb)
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert r.output.startswith(f"error: {synth_root.name}: no such folder: the run's data.root is relative") and \
            str(tmp_path) in r.output and "--data-root DIR" in r.output, r.output
    assert not (run / "eval_validation").exists() and not (run / "report").exists()
    r = runner.invoke(app, ["evaluate", str(run), "--data-root", str(synth_root)])
    assert r.exit_code == 0, r.output


def test_version_help_and_a_short_demo_that_says_where_its_outputs_are(tmp_path):
    from importlib.metadata import version

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"semi3d {version('semi3d')}"
    r = runner.invoke(app, ["--help"])
    verbs = ["train", "predict", "evaluate", "evaluate-folder", "postprocess", "report", "suggest", "export", "plan", "compare", "demo", "mine",
             "config", "list"]
    commands = [line.split()[0] for line in r.output.split("Commands:")[1].splitlines() if line.strip()]
    assert r.exit_code == 0 and commands == verbs and "``" not in r.output
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--set", "train.iterations=2",
                            "--set", "train.val_every=1", "--set", "train.progress_bar=false"])
    assert r.exit_code == 0, r.output
    tail = dict(line.split(": ", 1) for line in r.output.splitlines()[-4:])
    run = tmp_path / "demo" / "supervised"
    assert tail == {"run dir": str(run), "predictions": str(run / "eval_test" / "predictions"),
                    "metrics": str(run / "eval_test" / "metrics.json"), "report": str(run / "report" / "report.html")}
    assert all(Path(p).exists() for p in tail.values())


def test_config_errors_suggest_the_key_and_name_the_set_argument(tiny_tree, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_tree))
    r = runner.invoke(app, ["train", str(cfg), "--set", "train.iteratons=5"])
    assert r.exit_code == 2 and "did you mean 'iterations'?" in r.output and "--set train.iteratons" in r.output
    r = runner.invoke(app, ["train", str(cfg), "--set", "data.patch_size=[16,16]"])
    assert r.exit_code == 2 and "data.patch_size: expected 3 values, got 2" in r.output


def test_config_verb_resolves_a_file_and_prints_the_schema(tiny_tree, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_tree))
    r = runner.invoke(app, ["config", str(cfg), "--set", "train.iterations=7"])
    resolved = yaml.safe_load(r.output)
    assert r.exit_code == 0 and resolved["train"]["iterations"] == 7 and resolved["train"]["grad_clip"] == 12.0
    r = runner.invoke(app, ["config", "--schema"])
    schema = json.loads(r.output)
    assert r.exit_code == 0 and {"data", "model", "method", "train", "inference"} <= set(schema["properties"])
