"""SegFormer as a 2D slice network (``"segformer"`` in :data:`semi3d.registry.NETS2D`): a HF
``transformers`` Mix Transformer encoder + all-MLP decode head with LoRA / full / frozen adaptation;
input handling, padding and option errors as every network of :mod:`semi3d.models.seg2d`."""
from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..registry import NETS2D
from .backbones2d import mobilenet_v2
from .checks import check_io, choice, positive_int, with_defaults
from .hf import from_config, from_pretrained
from .seg2d import InputAdapter, InputNorm, check_input_2d, pad_to

__all__ = ["SegFormer2D", "SEGFORMER_MODES"]

SEGFORMER_MODES = ("lora", "lora_frozen_head", "full", "frozen")

# Names of transformers >= 5 (q_proj, ..., fc2) and of transformers 4.x (query, ..., dense2).
_LORA_TARGETS = re.compile(
    r".*\.attention\.(q_proj|k_proj|v_proj|o_proj|self\.query|self\.key|self\.value|output\.dense)"
    r"|.*\.mlp\.(fc1|fc2|dense1|dense2)"
)


class SegFormer2D(nn.Module):
    """SegFormer (Mix Transformer encoder + all-MLP decode head) with a full-resolution head.

    The decode head's classifier is removed; its fused features ``(N, D, H/4, W/4)`` (``D =
    decoder_hidden_size``) are concatenated with the raw input average-pooled by 4 ``(N, C, H/4,
    W/4)`` and a ``ConvTranspose2d(D + C, K, kernel 4, stride 4)`` gives logits ``(N, K, H, W)``.

    Forward: ``(N, C, H, W)`` float -> logits ``(N, K, H, W)`` for any ``H, W`` (zero-padded to a
    multiple of 32 internally, logits cropped back). The adapted 3-channel image goes to the encoder.

    Trainable parameters per ``adaptation``:

    - ``"full"``: everything.
    - ``"lora"``: in the encoder only the LoRA matrices (``lora_A``/``lora_B`` on the attention
      query, key, value and output projections and on both Mix-FFN linears of every block), every
      bias (linears, patch-embedding, sequence-reduction and depthwise convolutions) and every
      LayerNorm weight; all other encoder weights are frozen. The decode head (per-stage MLPs,
      fuse conv, BatchNorm), the new head and a ``conv1x1`` input adapter are trainable.
    - ``"lora_frozen_head"``: the reference code's (pakheiyeung/M-N, ``peft.get_peft_model`` on the
      whole SegFormer with ``bias="all"``): the encoder as ``"lora"``, and in the decode head only
      the biases train (per-stage MLPs, fuse conv, BatchNorm weights frozen); the new head and a
      ``conv1x1`` input adapter are trainable.
    - ``"frozen"``: no encoder parameter; the encoder stays in eval mode (no drop-path) even after
      ``model.train()``. The decode head, new head and adapter are trainable.
    """

    size_multiple = 32

    def __init__(self, encoder: nn.Module, decode_head: nn.Module, num_classes: int, adapter: InputAdapter,
                 norm: InputNorm, adaptation: str):
        super().__init__()
        self.in_channels = adapter.in_channels
        self.adaptation = adaptation
        self.adapter, self.norm, self.encoder, self.decode_head = adapter, norm, encoder, decode_head
        self.decode_head.classifier = nn.Identity()
        hidden = encoder.config.decoder_hidden_size
        self.head = nn.ConvTranspose2d(hidden + self.in_channels, num_classes, kernel_size=4, stride=4)

    def train(self, mode: bool = True) -> SegFormer2D:
        super().train(mode)
        if self.adaptation == "frozen":
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_2d(x, self.in_channels, type(self).__name__)
        x, crop = pad_to(x, self.size_multiple)
        hidden = self.encoder(self.norm(self.adapter(x)), output_hidden_states=True).hidden_states
        fused = self.decode_head(hidden)  # (N, D, H/4, W/4): classifier replaced by Identity
        logits = self.head(torch.cat([fused, F.avg_pool2d(x, 4)], dim=1))
        return logits[..., crop[0], crop[1]]


def _load_segformer(net: str, pretrained: Any, config: Any) -> Any:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    if pretrained is not None and config is not None:
        raise InputError(net, "give either pretrained (a saved model) or config (random init), not both")
    if pretrained is None:
        return from_config(SegformerForSemanticSegmentation, SegformerConfig, config or {}, f"{net} config")
    return from_pretrained(SegformerForSemanticSegmentation, pretrained, "a SegFormer", net)


def _adapt_segformer(net: str, encoder: nn.Module, adaptation: str, rank: int, alpha: float,
                     dropout: float) -> None:
    if adaptation == "full":
        return
    if adaptation == "frozen":
        encoder.requires_grad_(False)
        encoder.eval()
        return
    from peft import LoraConfig, inject_adapter_in_model

    targets = [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear) and _LORA_TARGETS.fullmatch(n)]
    if not targets:
        raise InputError(net, "no attention/Mix-FFN linear found for LoRA in this transformers version")
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    inject_adapter_in_model(cfg, encoder)
    for name, p in encoder.named_parameters():
        p.requires_grad_("lora_" in name or name.endswith("bias"))
    for m in encoder.modules():
        if isinstance(m, nn.LayerNorm):
            m.requires_grad_(True)


_SEGFORMER_DEFAULTS = dict(pretrained=None, config=None, adaptation="lora", lora_rank=64, lora_alpha=64,
                           lora_dropout=0.1, input_adapter="repeat", input_norm="none")


@NETS2D.register("segformer")
def segformer(in_channels: int, num_classes: int, **options: Any) -> SegFormer2D:
    """SegFormer with a full-resolution head (see :class:`SegFormer2D`).

    Options: ``pretrained`` (a local folder written by ``save_pretrained``, or a hub id such as
    ``"nvidia/mit-b0"``, fetched only when given), ``config`` (dict of ``SegformerConfig`` fields for
    a random-init model; with neither, the default ``SegformerConfig`` (MiT-b0 sized)),
    ``adaptation`` (``"lora"`` | ``"lora_frozen_head"`` | ``"full"`` | ``"frozen"``), ``lora_rank`` (64), ``lora_alpha`` (64),
    ``lora_dropout`` (0.1), ``input_adapter``, ``input_norm`` (as for the U-Nets; ``"imagenet"`` uses
    ImageNet mean/std).
    """
    net = "segformer"
    o = with_defaults(net, options, _SEGFORMER_DEFAULTS)
    check_io(net, in_channels, num_classes)
    adaptation = choice(net, "adaptation", o["adaptation"], SEGFORMER_MODES)
    rank = positive_int(net, "lora_rank", o["lora_rank"])
    if not (0.0 <= float(o["lora_dropout"]) < 1.0) or float(o["lora_alpha"]) <= 0:
        raise InputError(net, f"lora_alpha={o['lora_alpha']!r} must be > 0 and lora_dropout="
                              f"{o['lora_dropout']!r} in [0, 1)")
    adapter = InputAdapter(o["input_adapter"], in_channels, net)
    norm = InputNorm(o["input_norm"], mobilenet_v2.normalise_input, net)
    hf = _load_segformer(net, o["pretrained"], o["config"])
    if hf.config.num_channels != 3:
        raise InputError(net, f"the SegFormer must take 3 input channels, its config has {hf.config.num_channels}")
    _adapt_segformer(net, hf.segformer, "lora" if adaptation == "lora_frozen_head" else adaptation, rank,
                     float(o["lora_alpha"]), float(o["lora_dropout"]))
    if adaptation == "lora_frozen_head":
        for name, p in hf.decode_head.named_parameters():
            p.requires_grad_(name.endswith("bias"))
    return SegFormer2D(hf.segformer, hf.decode_head, num_classes, adapter, norm, adaptation)
