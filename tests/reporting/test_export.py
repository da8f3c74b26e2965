"""Model export: the bundle's files, that it predicts what the run's checkpoint predicts, and that
`semi3d predict` takes the bundle folder."""
import importlib.util
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from semi3d.cli import app
from semi3d.data.formats import build_reader
from semi3d.errors import InputError
from semi3d.inference.predictor import Predictor, is_bundle
from semi3d.reporting.export import export_run


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bundle_files_and_metadata(sup_run, tmp_path):
    out = tmp_path / "bundle"
    paths = export_run(sup_run, out)
    assert is_bundle(out)
    for key in ("metadata", "inference", "torchscript", "state_dict", "checkpoint"):
        assert paths[key].is_file(), key
    assert paths["checkpoint"].name == "model_final.pt"  # selection: final
    meta = json.loads(paths["metadata"].read_text())
    s = meta["semi3d"]
    assert s["in_channels"] == 1 and s["num_classes"] == 3 and s["class_names"] == ["background", "organ", "lesion"]
    assert s["patch_size"] == [16, 16, 16] and s["preprocessing"]["normalisation"] == "zscore"
    assert s["spatial_divisor"] == [4, 4, 4] and "(N, C, X, Y, Z)" in s["axis_order"]
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 1 and fmt["outputs"]["pred"]["num_channels"] == 3
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "organ", "2": "lesion"}
    inf = json.loads(paths["inference"].read_text())
    assert inf["inferer"]["roi_size"] == [16, 16, 16]
    # the TorchScript file is a plain torch.jit archive with the metadata inside
    extra = {"metadata.json": ""}
    ts = torch.jit.load(str(paths["torchscript"]), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["semi3d"]["num_classes"] == 3
    x = torch.randn(3, 1, 16, 16, 16)
    assert ts(x).shape == (3, 3, 16, 16, 16)
    # model.pt is the network's state dict
    ckpt = torch.load(paths["checkpoint"], weights_only=False)
    sd = torch.load(paths["state_dict"])
    assert sd.keys() == ckpt["state_dict"].keys()


def test_bundle_predicts_like_the_checkpoint(sup_run, synth_root, tmp_path):
    out = tmp_path / "bundle"
    export_run(sup_run, out)
    a = Predictor(sup_run / "checkpoints" / "model_final.pt", "cpu")
    b = Predictor(out, "cpu")
    assert b.num_classes == a.num_classes and b.class_names == a.class_names and b.step == a.step
    case = build_reader("nnunet", synth_root).load("syn_008")  # a test case, other shape than the patch
    pa, pb = a(case), b(case)
    assert pa.shape == pb.shape == (3, *case.shape)
    assert torch.equal(pa, pb)  # the run's network and weights, not a TorchScript graph's rounding
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as users run it: with 2 threads the traced graph's fp32 sums differed
    try:
        for precision in ("bf16", "fp32"):
            pa = Predictor(sup_run / "checkpoints" / "model_final.pt", "cpu", precision)(case)
            assert torch.equal(pa, Predictor(out, "cpu", precision)(case)), precision
    finally:
        torch.set_num_threads(threads)
    (out / "models" / "model.pt").unlink()  # an older bundle without the state dict: TorchScript
    pt = Predictor(out, "cpu")(case)
    assert torch.allclose(pa, pt, atol=1e-5)

    # the CLI: `predict BUNDLE` writes what `predict RUN` writes
    image = synth_root / "imagesTs" / "syn_008_0000.nii.gz"
    runner = CliRunner()
    for model, dst in ((sup_run, tmp_path / "p_run"), (out, tmp_path / "p_bundle")):
        r = runner.invoke(app, ["predict", str(model), str(image), "-o", str(dst)])
        assert r.exit_code == 0, r.output
    seg_run = np.asarray(nib.load(tmp_path / "p_run" / "syn_008.nii.gz").dataobj)
    seg_bundle = np.asarray(nib.load(tmp_path / "p_bundle" / "syn_008.nii.gz").dataobj)
    assert np.array_equal(seg_run, seg_bundle)


def test_export_bad_input(sup_run, copy_run, tmp_path):
    with pytest.raises(InputError, match="no such run folder"):
        export_run(tmp_path / "missing", tmp_path / "b")
    with pytest.raises(InputError, match="unknown format"):
        export_run(sup_run, tmp_path / "b", fmt="tflite")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an empty folder"):
        export_run(sup_run, busy)
    assert (busy / "notes.txt").read_text() == "keep me" and len(list(busy.iterdir())) == 1
    for name in ("model.zip", "model.ts"):  # a file name: export writes folders only
        with pytest.raises(InputError, match="writes a bundle folder, not a"):
            export_run(sup_run, tmp_path / name)
        assert not (tmp_path / name).exists()
    run = copy_run(sup_run, "untrained")
    (run / "checkpoints" / "model_final.pt").unlink()
    with pytest.raises(InputError, match="no trained model"):
        export_run(run, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    # an earlier bundle is replaced
    export_run(sup_run, tmp_path / "b2")
    export_run(sup_run, tmp_path / "b2")
    assert is_bundle(tmp_path / "b2") and not list(tmp_path.glob(".b2.*"))


def test_onnx_without_the_package_is_a_clean_error(sup_run, tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec  # pretend onnx is not installed, whether it is or not
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else find_spec(name, *a))
    r = CliRunner().invoke(app, ["export", str(sup_run), "--out", str(tmp_path / "b"), "--format", "onnx"])
    assert r.exit_code == 2 and "'onnx' package is not installed" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "b").exists()


def test_cli_export(sup_run, tmp_path):
    r = CliRunner().invoke(app, ["export", str(sup_run), "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert "model.ts" in r.output and is_bundle(tmp_path / "b")


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="needs the onnx package")
def test_onnx_export_matches_the_network(sup_run, tmp_path):
    import onnx
    from onnx.reference import ReferenceEvaluator

    paths = export_run(sup_run, tmp_path / "b", fmt="onnx")
    model = onnx.load(str(paths["onnx"]))
    onnx.checker.check_model(model)
    ts = torch.jit.load(str(paths["torchscript"]))
    x = torch.randn(2, 1, 16, 16, 16)
    (y,) = ReferenceEvaluator(model).run(None, {"image": x.numpy()})
    assert np.allclose(y, ts(x).detach().numpy(), atol=1e-4)
