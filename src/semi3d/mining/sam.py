"""SAM (Segment Anything) through HF ``transformers`` as a :class:`PromptableSegmenter`.

``transformers``' own ``SamProcessor`` needs torchvision; its preprocessing is re-implemented here
in torch, with the same conventions:

- the slice ``(C, H, W)`` becomes 3 channels (1 channel repeated, 3 kept, otherwise the channel
  mean repeated) in ``[0, 255]``: ``intensity="minmax"`` maps the ``percentiles`` (default 0.5 and
  99.5) of the slice to 0 and 255 (clipped; MedSAM's min-max mapping, robust to outliers), ``"none"``
  takes the values as they are (RGB photos already in 0..255);
- the longest side is resized to ``S = config.vision_config.image_size`` (1024 for the released
  models; a tiny test config uses a small ``S``) with ``new = int(old * S / max(H, W) + 0.5)``
  (bilinear, antialiased), normalised with SAM's pixel mean ``(123.675, 116.28, 103.53)`` and std
  ``(58.395, 57.12, 57.375)``, zero-padded bottom/right to ``S x S``;
- box and point coordinates are scaled by ``(new_w / W, new_h / H)`` (SAM adds the half-pixel shift
  itself);
- a mask prompt ``(H, W)`` in [0, 1] goes through the same resize and pad, is resized to the
  decoder's low-resolution mask input ``(4 E, 4 E)`` (``E`` = embedding size, 256 for S = 1024) and
  mapped to logits ``(2 m - 1) * mask_logit``;
- the low-resolution mask logits ``(M, 4E, 4E)`` are upsampled to ``S x S``, cropped to
  ``new_h x new_w`` and upsampled to ``H x W`` (bilinear, as ``post_process_masks``); mask = logit
  > 0, probability = sigmoid(logit), score = SAM's predicted IoU.

The image embedding of every slice is cached (LRU in memory, optionally also on disk) under the
caller's key (e.g. ``(case_id, slice_index)``) or, without one, a hash of the slice, so repeated
prompts and mining rounds run the image encoder once per slice.

Weights: a local folder written by ``save_pretrained`` (loaded with ``local_files_only``), or a hub
id such as ``"facebook/sam-vit-base"``, fetched only because the user named it; or ``config`` (a
dict of ``SamConfig`` fields) for a random model, or an already built ``SamModel``.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import InputError
from ..models.hf import from_config, from_pretrained
from .base import Prompt, PromptableSegmenter, Segmentation, Strict, as_image

__all__ = ["SamOptions", "SamSegmenter", "load_sam"]

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class SamOptions(Strict):
    """Options of :class:`SamSegmenter` (see the module docstring)."""

    pretrained: str | None = None
    config: dict[str, Any] | None = None
    device: str = "cpu"
    multimask_output: bool | None = None  # None: 3 candidates only for an ambiguous prompt (one point, no box)
    intensity: Literal["minmax", "none"] = "minmax"
    percentiles: tuple[float, float] = (0.5, 99.5)
    mask_logit: float = Field(8.0, gt=0)
    use_mask_prompt: bool = True
    use_points: bool = True
    cache_size: int = Field(256, ge=0)
    cache_dir: str | None = None


def load_sam(pretrained: str | Path | None = None, config: dict | None = None):
    """A ``transformers.SamModel`` in eval mode, float32: from a local folder, a hub id (download
    because the caller asked) or a dict of ``SamConfig`` fields (random weights)."""
    from transformers import SamConfig, SamModel

    if (pretrained is None) == (config is None):
        raise InputError("sam", "give exactly one of pretrained (a local folder or a hub id) or config")
    if config is not None:
        return from_config(SamModel, SamConfig, config, "sam.config").eval()
    return from_pretrained(SamModel, pretrained, "a SAM model", "sam.pretrained").eval()


class SamSegmenter(PromptableSegmenter):
    """SAM as a promptable segmenter with a per-slice image-embedding cache.

    Args:
        model: a built ``transformers.SamModel``; else one is loaded from ``options.pretrained`` /
            ``options.config``.
        options: :class:`SamOptions` or a dict of its fields (keyword arguments are merged in).

    ``segment`` returns ``M`` candidates per prompt (3 with ``multimask_output``, else 1):
    masks ``(M, H, W)`` bool, scores ``(M,)`` predicted IoU, probs ``(M, H, W)``.
    Counters: ``encoder_calls``, ``cache_hits``, ``cache_misses``.
    """

    options_model: type[SamOptions] = SamOptions
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN  # of the [0, 255] image
    pixel_std: tuple[float, float, float] = PIXEL_STD

    def __init__(self, model: Any = None, options: SamOptions | dict | None = None, **kwargs: Any):
        if isinstance(options, dict) or options is None:
            options = self.options_model(**{**(options or {}), **kwargs})
        self.options = o = options
        self.model = model if model is not None else self._load(o)
        self.device = torch.device(o.device)
        self.model.to(self.device).eval()
        cfg = self.model.config
        self.image_size = int(cfg.vision_config.image_size)
        self.embedding_size = int(cfg.prompt_encoder_config.image_embedding_size)
        self.tag = self._tag(o)
        self._cache: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.encoder_calls = self.cache_hits = self.cache_misses = 0

    def _load(self, o: SamOptions) -> Any:
        return load_sam(o.pretrained, o.config)

    def _tag(self, o: SamOptions) -> str:
        """Names the weights in the disk cache's keys."""
        return str(o.pretrained or hashlib.sha1(repr(sorted((o.config or {}).items())).encode()).hexdigest()[:12])

    def plan_cache(self, n_images: int, folder: Path) -> str | None:
        """Keep every embedding of ``n_images`` images across rounds: when they exceed the
        in-memory cache and no ``cache_dir`` is set, cache on disk in ``folder``; says so."""
        o = self.options
        if n_images <= o.cache_size or o.cache_dir is not None:
            return None
        o.cache_dir = str(folder)
        return (f"{n_images} images exceed the in-memory embedding cache ({o.cache_size}): "
                f"caching embeddings on disk in {folder}")

    # ------------------------------------------------------------------------------ preprocessing
    def resized_shape(self, h: int, w: int) -> tuple[int, int]:
        """``(new_h, new_w)``: the slice size after resizing its longest side to ``S``."""
        scale = self.image_size * 1.0 / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    def _to_rgb255(self, img: torch.Tensor) -> torch.Tensor:
        c = img.shape[0]
        x = img if c == 3 else (img if c == 1 else img.mean(0, keepdim=True)).expand(3, -1, -1)
        if self.options.intensity == "minmax":
            q = torch.tensor(self.options.percentiles, dtype=torch.float32) / 100
            lo, hi = torch.quantile(img.flatten().float(), q)
            x = ((x - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1) * 255.0
        return x

    def preprocess(self, image: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``pixel_values (1, 3, S, S)`` and the resized size ``(new_h, new_w)`` of a slice ``(C, H, W)``."""
        img = torch.from_numpy(as_image(image))
        _, h, w = img.shape
        nh, nw = self.resized_shape(h, w)
        x = self._to_rgb255(img)[None]
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.pixel_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.pixel_std).view(1, 3, 1, 1)
        x = (x - mean) / std
        x = F.pad(x, (0, self.image_size - nw, 0, self.image_size - nh))
        return x, (nh, nw)

    def map_coords(self, coords: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Scale ``(..., 2)`` ``(x, y)`` coordinates of an ``(H, W)`` slice to the resized frame."""
        h, w = shape
        nh, nw = self.resized_shape(h, w)
        out = np.asarray(coords, np.float32).copy()
        out[..., 0] *= nw / w
        out[..., 1] *= nh / h
        return out

    def mask_input(self, mask: np.ndarray) -> torch.Tensor:
        """A ``(H, W)`` mask in [0, 1] as SAM's low-resolution mask prompt ``(1, 1, 4E, 4E)`` (logits)."""
        h, w = mask.shape
        nh, nw = self.resized_shape(h, w)
        m = torch.as_tensor(np.asarray(mask, np.float32))[None, None]
        m = F.interpolate(m, size=(nh, nw), mode="bilinear", align_corners=False)
        m = F.pad(m, (0, self.image_size - nw, 0, self.image_size - nh))
        low = 4 * self.embedding_size
        m = F.interpolate(m, size=(low, low), mode="bilinear", align_corners=False)
        return (2 * m - 1) * self.options.mask_logit

    def postprocess(self, low_res: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Low-resolution logits ``(M, h, w)`` -> logits ``(M, H, W)`` on the slice."""
        nh, nw = self.resized_shape(*shape)
        x = F.interpolate(low_res[None].float(), size=(self.image_size, self.image_size), mode="bilinear",
                          align_corners=False)[..., :nh, :nw]
        return F.interpolate(x, size=shape, mode="bilinear", align_corners=False)[0]

    # ------------------------------------------------------------------------------- embeddings
    def _key(self, image: np.ndarray, key: Hashable | None) -> Hashable:
        """The caller's key (e.g. a case id and slice) with the pixels' shape and SHA-1: the same
        id with other pixels (another resize or preprocessing, an edited file) is a new entry, in
        memory and on disk, never a stale embedding (hashing costs ~1 ms, the encoder ~1 s)."""
        digest = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
        return ("hash", image.shape, digest) if key is None else ("key", key, image.shape, digest)

    def _disk_path(self, key: Hashable) -> Path | None:
        if self.options.cache_dir is None:
            return None
        o = self.options
        name = hashlib.sha1(repr((self.tag, o.intensity, o.percentiles, key)).encode()).hexdigest()
        return Path(self.options.cache_dir) / f"{name}.pt"

    def image_embeddings(self, image: np.ndarray | torch.Tensor, key: Hashable | None = None) -> torch.Tensor:
        """The cached image embedding ``(1, D, E, E)`` of a slice ``(C, H, W)``."""
        img = as_image(image)
        k = self._key(img, key)
        hit = self._cache.get(k)
        if hit is not None:
            self._cache.move_to_end(k)
            self.cache_hits += 1
            return hit
        path = self._disk_path(k)
        emb = None
        if path is not None and path.is_file():
            try:
                emb = torch.load(path, map_location=self.device, weights_only=True).float()
                self.cache_hits += 1
            except Exception:  # unreadable cache file: recompute
                emb = None
        if emb is None:
            self.cache_misses += 1
            self.encoder_calls += 1
            pixel_values, _ = self.preprocess(img)
            with torch.no_grad():
                emb = self.model.get_image_embeddings(pixel_values.to(self.device))
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(emb.half().cpu(), path)
        if self.options.cache_size:
            self._cache[k] = emb
            while len(self._cache) > self.options.cache_size:
                self._cache.popitem(last=False)
        return emb

    # -------------------------------------------------------------------------------- prompting
    def segment(self, image: np.ndarray | torch.Tensor, prompt: Prompt, key: Hashable | None = None) -> Segmentation:
        return self.segment_many(image, [prompt], key)[0]

    def segment_many(self, image: np.ndarray | torch.Tensor, prompts: Sequence[Prompt],
                     key: Hashable | None = None) -> list[Segmentation]:
        img = as_image(image)
        shape = img.shape[1:]
        for p in prompts:
            p.validate(shape)
        if not prompts:
            return []
        emb = self.image_embeddings(img, key)
        out = []
        dev = self.device
        for p in prompts:
            kw: dict[str, Any] = {}
            multi = self.options.multimask_output
            if multi is None:  # SAM's advice: several masks only for an ambiguous single point
                multi = p.box is None and len(p.points) == 1
            if len(p.points) and self.options.use_points:
                kw["input_points"] = torch.from_numpy(self.map_coords(p.points, shape)).view(1, 1, -1, 2).to(dev)
                kw["input_labels"] = torch.as_tensor(np.asarray(p.labels), dtype=torch.long).view(1, 1, -1).to(dev)
            if p.box is not None:
                box = self.map_coords(np.asarray(p.box, np.float32).reshape(2, 2), shape).reshape(1, 1, 4)
                kw["input_boxes"] = torch.from_numpy(box).to(dev)
            if p.mask is not None and self.options.use_mask_prompt:
                kw["input_masks"] = self.mask_input(np.asarray(p.mask, np.float32)).to(dev)
            if not kw:
                raise InputError("prompt", "nothing to prompt with: no box, and points (use_points) and "
                                 "mask prompts (use_mask_prompt) are disabled")
            with torch.no_grad():
                res = self.model(image_embeddings=emb, multimask_output=multi, **kw)
            logits = self.postprocess(res.pred_masks[0, 0].cpu(), shape)  # (M, H, W)
            out.append(Segmentation((logits > 0).numpy(), res.iou_scores[0, 0].float().cpu().numpy(),
                                    torch.sigmoid(logits).numpy().astype(np.float32)))
        return out
