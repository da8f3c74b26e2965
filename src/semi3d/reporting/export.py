"""``semi3d export RUN --out DIR``: the run's inference model (the one its selection policy
designates) as TorchScript in a MONAI-bundle-style folder::

    DIR/configs/metadata.json    input/output description, preprocessing, the semi3d run config
    DIR/configs/inference.json   a complete MONAI inference config (semi3d.inference.monai_bundle):
                                 python -m monai.bundle run --config_file DIR/configs/inference.json
                                     --bundle_root DIR --dataset_dir IMAGES --output_dir OUT
    DIR/models/model.ts          torch.jit.trace of the 3D network (eval mode, fp32, CPU)
    DIR/models/model.pt          its state dict (MONAI convention)
    DIR/models/model_final.pt    the original semi3d checkpoint file (or model_best.pt)
    DIR/models/model.onnx        with --format onnx only (needs the ``onnx`` package)
    DIR/docs/README.md

``semi3d predict DIR IMAGE...`` accepts the folder and predicts the same as the run. The network
maps an image batch ``(N, C, X, Y, Z)`` (preprocessed: resampled and normalised as the metadata
says) to logits ``(N, K, X, Y, Z)``; every spatial size must be a multiple of the network's
divisor, which the sliding window over ``patch_size`` windows guarantees.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from ..errors import InputError
from ..inference.predictor import BUNDLE_METADATA, BUNDLE_STATE_DICT, BUNDLE_TORCHSCRIPT, is_bundle, model_file
from ..engine.rundir import RunDir
from ..inference.monai_bundle import inference_config

__all__ = ["export_run", "bundle_metadata", "FORMATS"]

FORMATS = ("torchscript", "onnx")
FILE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".ts", ".pt", ".pth", ".onnx")  # an --out that names a file
JIT_DEPRECATED = r".*torch\.jit.*deprecated"  # recent torch warns; TorchScript still works


def _channel_names(cfg, in_channels: int) -> list[str]:
    try:
        from ..data.formats import build_reader

        names = getattr(build_reader(cfg.data.format, cfg.data.root, **cfg.data.options), "channel_names", None)
    except (InputError, OSError):
        names = None
    names = list(names or [])
    return names if len(names) == in_channels else [f"channel{i}" for i in range(in_channels)]


def bundle_metadata(m: dict, cfg, channel_names: list[str], source: Path, divisor=(1, 1, 1)) -> dict:
    """``configs/metadata.json`` for a semi3d model file ``m`` (as saved by the trainer)."""
    import monai
    import numpy

    p = cfg.data.preprocess
    k, c = int(m["num_classes"]), int(m["in_channels"])
    patch = list(cfg.data.patch_size)
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by semi3d from {source}"},
        "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__, "required_packages_version": {},
        "name": f"semi3d {cfg.name}",
        "task": "3D segmentation",
        "description": f"{m['net']['name']} trained with semi3d method {cfg.method.name!r} "
                       f"(step {m['step']}); classes: {', '.join(m['class_names'])}",
        "authors": "", "copyright": "",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": "", "num_channels": c,
                "spatial_shape": patch, "dtype": "float32", "value_range": [],
                "is_patch_data": True, "channel_def": {str(i): n for i, n in enumerate(channel_names)}}},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": k,
                "spatial_shape": patch, "dtype": "float32", "value_range": [],
                "is_patch_data": True, "channel_def": {str(i): n for i, n in enumerate(m["class_names"])},
                "note": "logits; softmax over the channel axis gives class probabilities, argmax the label"}},
        },
        "semi3d": {
            "axis_order": "(N, C, X, Y, Z): channels first, then the spatial axes in the image file's "
                          "voxel order (NIfTI i, j, k)" + ("" if p.orientation is None else
                          f", reordered to point {p.orientation} (nibabel's closest orientation to the affine)"),
            "in_channels": c, "num_classes": k, "class_names": list(m["class_names"]),
            "patch_size": patch,
            "spatial_divisor": [int(d) for d in divisor],
            "preprocessing": {
                "target_spacing_mm": None if p.target_spacing is None else list(p.target_spacing),
                "scale": p.scale, "normalisation": p.normalisation, "orientation": p.orientation,
                "ct_window": list(p.ct_window), "ct_stats": None if p.ct_stats is None else list(p.ct_stats),
                "spacing_when_file_has_none_mm": cfg.data.options.get("spacing"),
                "resampling": "image trilinear to the target grid; probabilities back to the input grid trilinearly",
                "normalisation_detail": {"zscore": "per channel (x - mean) / std over the whole resampled volume",
                                         "ct": "clip to ct_window, then (x - ct_stats mean) / std or the window "
                                               "mapped linearly to [-1, 1]",
                                         "none": "unchanged"}[p.normalisation]},
            "inference": {"sliding_window": {"roi_size": patch, **cfg.inference.model_dump()}},
            "net": m["net"], "step": m["step"], "source": str(source),
            "config": m["config"],
        },
    }


def _build_net(m: dict):
    from ..registry import NETS3D

    net = NETS3D.build(m["net"]["name"], in_channels=m["in_channels"], num_classes=m["num_classes"], **m["net"]["options"])
    net.load_state_dict(m["state_dict"])
    return net.eval()


def _trace(net: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", JIT_DEPRECATED, DeprecationWarning)
        try:
            return torch.jit.trace(net, example, check_trace=False)
        except Exception as e:
            raise InputError(type(net).__name__, f"cannot trace the network for TorchScript ({type(e).__name__}: {e})") from None


def _check_same(net, traced, example: torch.Tensor) -> None:
    """The traced module must give the network's logits, also for another batch size."""
    g = torch.Generator().manual_seed(0)
    for x in (example, torch.randn((2, *example.shape[1:]), generator=g)):
        with torch.no_grad():
            a, b = net(x), traced(x)
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-4):
            raise InputError(type(net).__name__, "the TorchScript trace does not reproduce the network's output "
                                                 f"(batch {x.shape[0]}); this network cannot be exported by tracing")


def _onnx_export(net, example: torch.Tensor, path: Path) -> None:
    kw = dict(input_names=["image"], output_names=["logits"],
              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    try:
        with warnings.catch_warnings():  # InstanceNorm without running stats exports as train=True: correct
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", JIT_DEPRECATED, DeprecationWarning)
            _onnx_call(net, example, path, kw)
    except Exception as e:
        raise InputError("--format onnx", f"ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None


def _onnx_call(net, example: torch.Tensor, path: Path, kw: dict) -> None:
    try:
        torch.onnx.export(net, (example,), str(path), dynamo=False, **kw)  # the TorchScript-based exporter
    except TypeError:  # an older torch without the dynamo switch
        torch.onnx.export(net, (example,), str(path), **kw)


def export_run(run_dir: Path, out: Path, fmt: str = "torchscript", which: str = "auto") -> dict[str, Path]:
    """Export the run's inference model into the bundle folder ``out`` (see the module docstring).

    ``which``: "auto" (the run's selection policy), "best" or "final". ``out`` must be new, empty
    or an earlier bundle (replaced). Everything is written into a temporary folder first, so a
    failure leaves ``out`` as it was. Returns the paths written.
    """
    from ..config import RunConfig
    from ..engine import checkpoint as ckpt

    run_dir = RunDir(run_dir).require().path
    if fmt not in FORMATS:
        raise InputError("--format", f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        raise InputError("--format onnx", "the 'onnx' package is not installed (pip install onnx); "
                                          "use --format torchscript, which semi3d predict reads")
    out = Path(out)
    if out.suffix.lower() in FILE_SUFFIXES and not is_bundle(out):
        raise InputError(out, f"export writes a bundle folder, not a {out.suffix} file; give a folder name "
                              f"(to share the bundle as one file afterwards: zip -r NAME.zip FOLDER)")
    src = model_file(run_dir, which)
    if not src.is_file():
        raise InputError(src, "no trained model: train the run to the end first (semi3d train)")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_bundle(out))):
        raise InputError(out, "exists and is not an empty folder or an earlier bundle; choose another --out")
    m = ckpt.load(src)
    try:
        cfg = RunConfig.model_validate(m["config"])
        net = _build_net(m)
    except Exception as e:
        raise InputError(src, f"not a semi3d model file ({type(e).__name__})") from None
    example = torch.randn(1, m["in_channels"], *cfg.data.patch_size, generator=torch.Generator().manual_seed(0))
    traced = _trace(net, example)
    _check_same(net, traced, example)
    meta = bundle_metadata(m, cfg, _channel_names(cfg, m["in_channels"]), src, getattr(net, "divisor", (1, 1, 1)))

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the bundle is an ordinary folder
    except OSError as e:
        raise InputError(out, f"cannot write here: {e.strerror}") from None
    try:
        (tmp / "configs").mkdir()
        (tmp / "models").mkdir()
        (tmp / "docs").mkdir()
        meta_text = json.dumps(meta, indent=1)
        (tmp / BUNDLE_METADATA).write_text(meta_text)
        (tmp / "configs" / "inference.json").write_text(json.dumps(inference_config(cfg), indent=1))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", JIT_DEPRECATED, DeprecationWarning)
            torch.jit.save(traced, str(tmp / BUNDLE_TORCHSCRIPT), _extra_files={"metadata.json": meta_text})
        torch.save(m["state_dict"], tmp / BUNDLE_STATE_DICT)
        shutil.copyfile(src, tmp / "models" / src.name)
        if fmt == "onnx":
            _onnx_export(net, example, tmp / "models" / "model.onnx")
        (tmp / "docs" / "README.md").write_text(_readme(meta, src, fmt))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    paths = {"metadata": out / BUNDLE_METADATA, "inference": out / "configs" / "inference.json",
             "torchscript": out / BUNDLE_TORCHSCRIPT, "state_dict": out / BUNDLE_STATE_DICT,
             "checkpoint": out / "models" / src.name}
    if fmt == "onnx":
        paths["onnx"] = out / "models" / "model.onnx"
    return paths


def _readme(meta: dict, src: Path, fmt: str) -> str:
    s = meta["semi3d"]
    pre = s["preprocessing"]
    return (f"# {meta['name']}\n\n{meta['description']}\n\nExported from `{src}` on {platform.node() or 'this machine'}.\n\n"
            f"- input: {s['in_channels']} channel(s) {s['axis_order']}, preprocessed: target spacing "
            f"{pre['target_spacing_mm']}, scale {pre['scale']}, normalisation {pre['normalisation']} ({pre['normalisation_detail']})\n"
            f"- output: logits for {s['num_classes']} classes ({', '.join(s['class_names'])})\n"
            f"- sliding window: {s['inference']['sliding_window']}\n"
            f"- models/model.ts: TorchScript (`torch.jit.load`); models/model.pt: state dict of `{s['net']['name']}` "
            f"{s['net']['options']}" + ("; models/model.onnx: ONNX" if fmt == "onnx" else "") + "\n\n"
            "Predict with semi3d (same preprocessing and result as the run):\n\n"
            "```bash\nsemi3d predict THIS_FOLDER image.nii.gz -o out/\n```\n")
