"""A&D (method ``ad``): network, diffusion, difficulty weights, student pull, pseudo-labels,
strong augmentation, tiny CPU runs (SSL, class-imbalanced), resume, prediction from the saved
model, and the domain benchmark script on tiny synthetic data."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from semi3d.cli import app
from semi3d.config import load_config
from semi3d.data.synthetic import imbalanced_class_scale, make_case, write_dataset
from semi3d.engine.rundir import RunDir
from semi3d.engine.runlog import TIMING_KEYS
from semi3d.engine.trainer import Trainer
from semi3d.errors import InputError
from semi3d.inference.predictor import Predictor
from semi3d.data.strong_augment import StrongAugment, _spatial, strong_augment
from semi3d.methods.ad import (AD, DifficultyWeights, gaussian_smooth, hard_class_dice, pseudo_label,
                               pull_student)
from semi3d.models.diffusion import GaussianDiffusion, space_timesteps
from semi3d.methods.base import Batch, MethodContext
from semi3d.models.ad_net import ADNet, timestep_embedding
from semi3d.registry import METHODS, NETS3D

ROOT = Path(__file__).resolve().parents[2]
K = 3
TINY_AD = {"width": 4, "depth": 3, "temb_dim": 16, "dropout": 0.0, "conv_dropout": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(options=None, iterations=100, batch_size=2) -> AD:
    tree = {"data": {"root": "unused"}, "method": {"name": "ad", "options": {**TINY_AD, **(options or {})}},
            "train": {"iterations": iterations, "batch_size": batch_size}}
    cfg = load_config(tree=tree)
    return METHODS.get("ad")(MethodContext(cfg, 1, K, iterations), **cfg.method.options)


def ad_tree(tree: dict, iterations: int = 10, **options) -> dict:
    tree = copy.deepcopy(tree)
    tree["method"] = {"name": "ad", "options": {**TINY_AD, **options}}
    tree["train"].update(iterations=iterations)
    tree.update(device="cpu", threads=1)
    return tree


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]


def mean(xs):
    return sum(xs) / len(xs)


# ------------------------------------------------------------------------------------- network
def test_network_paths_and_student_checkpoint_layout():
    net = ADNet(1, K, width=4, depth=3, temb_dim=16).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    assert net(x).shape == (2, K, 16, 16, 16) and net.divisor == (4, 4, 4)
    x_t = torch.randn(2, K, 16, 16, 16)
    a = net.denoise(x_t, torch.tensor([0, 999]), x)
    b = net.denoise(x_t, torch.tensor([500, 999]), x)
    assert a.shape == (2, K, 16, 16, 16)
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])  # the time step conditions sample 0 only
    # the three decoders share names and shapes; the student is a stand-alone ad_student network
    names = lambda m: [(n, p.shape) for n, p in m.named_parameters()]
    assert names(net.decoder_diffusion) == names(net.decoder_difficulty) == names(net.decoder_student)
    student = NETS3D.build("ad_student", in_channels=1, num_classes=K, width=4, depth=3).eval()
    student.load_state_dict(net.student.state_dict())  # strict: same keys, nothing unused
    torch.testing.assert_close(student(x), net(x))
    assert not any("temb" in k or "time" in k for k in net.student.state_dict())
    emb = timestep_embedding(torch.tensor([0, 7]), 16)
    assert emb.shape == (2, 16) and torch.equal(emb[0, :8], torch.zeros(8)) and torch.equal(emb[0, 8:], torch.ones(8))
    with pytest.raises(ValueError, match="divisor"):
        net(torch.randn(1, 1, 18, 16, 16))


# ------------------------------------------------------------------------------------ diffusion
def test_schedule_and_q_sample():
    d = GaussianDiffusion()
    assert d.betas[0].item() == pytest.approx(1e-4) and d.betas[-1].item() == pytest.approx(0.02)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    torch.testing.assert_close(d.alphas_cumprod, abar.float())
    x0, noise = torch.randn(2, K, 4, 4, 4), torch.randn(2, K, 4, 4, 4)
    t = torch.tensor([0, 999])
    xt = d.q_sample(x0, t, noise)
    for i in range(2):
        a = abar[t[i]].float()
        torch.testing.assert_close(xt[i], a.sqrt() * x0[i] + (1 - a).sqrt() * noise[i])
    assert abar[999] < 1e-4  # x_T is (almost) pure noise
    assert space_timesteps(1000, 10) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert not d.state_dict()  # the schedule is not checkpointed


def test_ddim_sampling_runs_ten_steps_from_noise():
    m = build()
    net = m.net
    seen = []
    net.stem_diffusion.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    calls = []
    orig = net.denoise

    def spy(x_t, t, image):
        calls.append((t.tolist(), x_t.clone()))
        return orig(x_t, t, image)

    net.denoise = spy
    image = torch.randn(2, 1, 16, 12, 8)
    torch.manual_seed(3)
    x0 = m.sample_x0(image)
    assert x0.shape == (2, K, 16, 12, 8) and x0.dtype == torch.float32
    assert x0.abs().max() <= 1.0 and not x0.requires_grad
    assert [c[0] for c in calls] == [[t, t] for t in reversed(space_timesteps(1000, 10))]
    assert len(seen) == 10 and seen[0] == (2, 1 + K, 16, 12, 8)  # image and x_t into the diffusion stem
    torch.manual_seed(3)
    torch.testing.assert_close(calls[0][1], torch.randn(2, K, 16, 12, 8))  # starts from pure noise
    # deterministic (eta 0) given the starting noise
    net.denoise = orig
    torch.manual_seed(3)
    torch.testing.assert_close(m.sample_x0(image), x0)
    # the DDIM update by hand, with an x0-predictor that ignores its input
    d = GaussianDiffusion(sample_steps=2)
    target = torch.full((1, 2, 2, 2, 2), 0.5)
    torch.manual_seed(0)
    out = d.ddim_sample(lambda x, t: target * 3, (1, 2, 2, 2, 2), torch.device("cpu"))
    torch.testing.assert_close(out, torch.ones_like(target))  # the clipped prediction of the last step


# ----------------------------------------------------------------------------------- difficulty
def test_difficulty_weights_favour_falling_and_slow_classes():
    dw = DifficultyWeights(3, window=5)
    # class 0 rises fast to a high Dice, class 1 rises slowly, class 2 falls
    for i in range(12):
        dw.update_from_dice(torch.tensor([min(0.2 + 0.1 * i, 0.95), 0.3 + 0.01 * i, 0.8 - 0.04 * i]))
    w = dw.weights
    assert w[2] > w[1] > w[0], w
    assert torch.isfinite(w).all() and dw.unlearn[2] > dw.unlearn[1] == dw.unlearn[0] == 0
    # the exact update from a known state
    dw = DifficultyWeights(2, window=4, power=0.2)
    dw.update_from_dice(torch.tensor([0.5, 0.5]))
    last, learn, unlearn, hard = (b.double().clone() for b in (dw.last_dice, dw.learn, dw.unlearn, dw.hardness))
    d = torch.tensor([0.7, 0.4], dtype=torch.float64)
    w = dw.update_from_dice(d)
    m = 3 / 4
    ratio = torch.log(d / last)
    learn = m * learn + (1 - m) * torch.tensor([(0.7 - 0.5) * ratio[0], 0.0], dtype=torch.float64)
    unlearn = m * unlearn + (1 - m) * torch.tensor([0.0, (0.4 - 0.5) * ratio[1]], dtype=torch.float64)
    hard = m * hard + (1 - m) * (1 - d)
    expect = 2 * ((unlearn + 1e-8) / (learn + 1e-8)) ** 0.2 * hard
    torch.testing.assert_close(w, expect.float())
    assert w[1] > w[0]


def test_hard_class_dice():  # the weighted loss: tests/test_losses.py
    label = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    label[0, :2] = 1
    logits = F.one_hot(label, 2).movedim(-1, 1).float() * 10
    torch.testing.assert_close(hard_class_dice(logits, label), torch.ones(2, dtype=torch.float64))
    wrong = torch.zeros_like(logits)
    wrong[:, 0] = 10  # all background
    dice = hard_class_dice(wrong, label)
    assert dice[0] == pytest.approx(2 * 32 / (2 * 32 + 32), rel=1e-6) and dice[1] < 1e-8


# ----------------------------------------------------------------------------------- student pull
def test_student_pulled_toward_mean_of_the_other_decoders():
    m = build({"ema": 0.99})
    net = m.net
    with torch.no_grad():
        for dec in (net.decoder_diffusion, net.decoder_difficulty, net.decoder_student):
            for p in dec.parameters():
                p.copy_(torch.randn_like(p))
    theta = {n: p.clone() for n, p in net.decoder_student.named_parameters()}
    xi = {n: p.clone() for n, p in net.decoder_diffusion.named_parameters()}
    psi = {n: p.clone() for n, p in net.decoder_difficulty.named_parameters()}
    buffers = {n: b.clone() for n, b in net.decoder_student.named_buffers()}
    m.after_step(7)
    for n, p in net.decoder_student.named_parameters():
        torch.testing.assert_close(p, 0.99 * theta[n] + 0.01 * (xi[n] + psi[n]) / 2)
    for n, p in net.decoder_diffusion.named_parameters():  # the others stay
        assert torch.equal(p, xi[n])
    for n, b in net.decoder_student.named_buffers():  # batch-norm statistics are the student's own
        assert torch.equal(b, buffers[n])
    assert pull_student(net, 1.0) == len(theta)  # every student parameter has its partners


# ---------------------------------------------------------------------------------- pseudo-labels
def test_pseudo_label_combines_sample_and_difficulty_decoder():
    x0 = torch.rand(2, K, 6, 6, 6) * 2 - 1
    psi = torch.randn(2, K, 6, 6, 6)
    plain = pseudo_label(x0, psi, gumbel=False, smoothing=False)
    torch.testing.assert_close(plain, (torch.softmax(x0, 1) + torch.softmax(psi, 1)).argmax(1))
    smooth = gaussian_smooth(torch.ones(1, K, 5, 5, 5))
    assert smooth[0, :, 2, 2, 2].allclose(torch.ones(K)) and smooth[0, 0, 0, 0, 0] < 1  # normalised kernel, zero padding
    torch.manual_seed(0)
    a = pseudo_label(x0, psi)
    torch.manual_seed(0)
    assert torch.equal(a, pseudo_label(x0, psi)) and a.shape == (2, 6, 6, 6)  # gumbel noise from the seeded RNG
    confident = 50 * F.one_hot(torch.ones(2, 6, 6, 6, dtype=torch.long), K).movedim(-1, 1).float()
    assert (pseudo_label(x0, confident) == 1).all()  # a confident difficulty decoder decides (softmax <= 1 each)


# ---------------------------------------------------------------------------- strong augmentation
def test_strong_augmentation_is_seeded_and_moves_labels_with_images():
    cfg = StrongAugment(select=6, p=1.0)
    image = torch.randn(2, 1, 16, 16, 12)
    label = torch.randint(0, K, (2, 16, 16, 12))
    torch.manual_seed(5)
    a = strong_augment(image, label, cfg)
    torch.manual_seed(5)
    b = strong_augment(image, label, cfg)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == image.shape and a[1].dtype == label.dtype and set(a[1].unique().tolist()) <= set(range(K))
    assert not torch.allclose(a[0], image)
    # intensity-only: labels untouched
    off = StrongAugment(select=6, p=1.0, rotation=0.0, scale=(1.0, 1.0))
    assert torch.equal(strong_augment(image, label, off)[1], label)
    # spatial: an image that is its label stays aligned with the transformed label
    blob = torch.zeros(16, 16, 12, dtype=torch.long)
    blob[3:9, 5:13, 2:10] = 1
    img, lab = _spatial(blob[None].float(), blob, math.radians(12), 0.8)
    assert ((img[0] > 0.5).long() == lab).float().mean() > 0.97 and lab.sum() > blob.sum()  # zoomed in
    assert strong_augment(image, None, cfg)[1] is None
    assert StrongAugment.from_option(False) is None
    with pytest.raises(InputError, match="bluur"):
        StrongAugment.from_option({"bluur": 1})
    with pytest.raises(InputError, match="gamma"):
        StrongAugment.from_option({"gamma": [1.2, 0.8]})


# --------------------------------------------------------------------------------------- options
def test_options_are_checked():
    with pytest.raises(InputError, match="emaa"):
        build({"emaa": 0.9})
    with pytest.raises(InputError, match="ddim_steps"):
        build({"ddim_steps": 0})
    with pytest.raises(InputError, match="difficulty_source"):
        build({"difficulty_source": "student"})
    with pytest.raises(InputError, match="normalization"):
        build({"normalization": "layer"})
    m = build({"mu": 2.0, "mu_rampup": 50, "unlabelled_batch": 3})
    assert m.batch_plan(0) == (2, 3) and m.needs_unlabelled
    assert m.mu_at(0) == pytest.approx(2 * math.exp(-5)) and m.mu_at(50) == 2.0
    assert m.predictor() is m.net.student
    spec = m.predictor_spec()
    assert spec.name == "ad_student" and spec.options == {"width": 4, "depth": 3, "normalization": "batchnorm",
                                                          "dropout": 0.0, "conv_dropout": 0.0}
    assert set(build().groups) == {"net"}


def test_training_step_losses_and_gradients():
    m = build({"strong_augment": False})
    batch = Batch(torch.randn(2, 1, 16, 16, 16), torch.randint(0, K, (2, 16, 16, 16)), torch.randn(2, 1, 16, 16, 16))
    losses = m.training_step(batch, 99)
    mu = m.log["weight/mu"]
    assert set(losses) == {"net"} and mu == pytest.approx(10 * math.exp(-5 * 0.01 ** 2))
    total = m.log["loss/diffusion"] + m.log["loss/difficulty"] + mu * m.log["loss/student"]
    assert losses["net"].item() == pytest.approx(total, rel=1e-5)
    assert 0 <= m.log["ad/pseudo_fg"] <= 1 and 0 <= m.log["ad/agreement"] <= 1
    assert [m.log[f"ad/difficulty_w{c}"] for c in range(K)] == pytest.approx(m.difficulty.weights.tolist())
    losses["net"].backward()
    net = m.net
    for part in (net.stem_diffusion, net.stem, net.encoder, net.decoder_diffusion, net.decoder_difficulty,
                 net.decoder_student, net.time_mlp, net.temb_encoder, net.temb_decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    # the student learns from unlabelled data only: without it its decoder gets no gradient
    m.zero_grad()
    net.decoder_student.requires_grad_(True)
    m.mu = 0.0
    m.training_step(batch, 99)["net"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.decoder_student.parameters())


def test_monitors_are_the_difficulty_decoder_and_the_seeded_ddim_sample():
    m = build().eval()
    mons = m.monitors()
    assert set(mons) == {"psi", "ddim"}
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(mons["psi"](x), m.net.decoder_difficulty(m.net.features(x)))
        state = torch.get_rng_state()
        a = mons["ddim"](x)
        assert torch.equal(torch.get_rng_state(), state)  # validation leaves the training RNG alone
        torch.testing.assert_close(a, m.sample_x0(x, torch.Generator().manual_seed(0)))
        torch.testing.assert_close(mons["ddim"](x), a)
        assert not torch.equal(m.sample_x0(x, torch.Generator().manual_seed(1)), a)
    assert a.shape == (2, K, 8, 8, 8) and a.abs().max() <= 1
    assert not any(n.startswith("monitor") for n in m.state_dict())  # nothing new is saved


def test_difficulty_weights_can_be_disabled():
    batch = Batch(torch.randn(2, 1, 16, 16, 16), torch.randint(0, K, (2, 16, 16, 16)), torch.randn(2, 1, 16, 16, 16))
    m = build({"strong_augment": False, "difficulty": False})
    before = {n: b.clone() for n, b in m.difficulty.named_buffers()}
    for step in range(3):
        m.training_step(batch, step)
        # uniform weights: the difficulty loss is the plain Dice + CE of the difficulty-aware decoder
        assert [m.log[f"ad/difficulty_w{c}"] for c in range(K)] == [1.0] * K
        assert m.log["loss/difficulty"] == pytest.approx(m.log["loss/supervised"], rel=1e-5)
    for n, b in m.difficulty.named_buffers():  # never updated (the state dict keeps its keys)
        assert torch.equal(b, before[n]), n
    on = build({"strong_augment": False})
    assert on.options.difficulty is True
    on.training_step(batch, 0)
    assert not torch.equal(on.difficulty.weights, torch.ones(K))  # the default updates them
    with pytest.raises(InputError, match="difficulty"):
        build({"difficulty": "no"})


# ---------------------------------------------------------------------------------- tiny CPU runs
def test_tiny_run_lowers_losses_and_predicts_from_the_saved_model(tiny_tree, synth_root, tmp_path):
    tree = ad_tree(tiny_tree, iterations=10)
    tree["train"]["val_every"] = 10
    cfg = load_config(tree=tree)
    trainer = Trainer(cfg)
    trainer.fit()
    recs = [r for r in records(cfg.run_dir) if "loss/diffusion" in r]
    assert len(recs) == 10 and all(r["n_u"] == 2 for r in recs)
    assert all(math.isfinite(v) for r in recs for v in r.values() if isinstance(v, float))
    for key in ("loss/diffusion", "loss/supervised", "loss/student"):
        xs = [r[key] for r in recs]
        assert mean(xs[-3:]) < 0.95 * mean(xs[:3]), (key, xs)
    assert recs[-1]["weight/mu"] > recs[0]["weight/mu"]
    val = [r for r in records(cfg.run_dir) if "val/dice" in r]
    assert val and all(0 <= val[-1][k] <= 1 for k in ("val/dice", "val/dice@psi", "val/dice@ddim"))

    # the saved inference model is the student, rebuilt from its spec
    model = cfg.run_dir / "checkpoints" / "model_final.pt"
    pred = Predictor(model, device="cpu")
    assert type(pred.net).__name__ == "ADStudent"
    student = trainer.method.predictor().eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(pred.net(x.contiguous(memory_format=torch.channels_last_3d)), student(x))
    # predict through the CLI, unchanged
    out = tmp_path / "pred"
    image = sorted((synth_root / "imagesTs").iterdir())[0]
    res = CliRunner().invoke(app, ["predict", str(cfg.run_dir), str(image), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert len(list(out.glob("*.nii.gz"))) == 1  # (evaluate on a test split: the benchmark-script test)


def test_resume_equals_uninterrupted(tiny_tree):
    tree = ad_tree(tiny_tree, iterations=6, dropout=0.2, conv_dropout=0.1)  # dropout RNG resumes too
    tree["train"].update(checkpoint_every=3, val_every=100)
    full = load_config(tree={**tree, "name": "full"})
    Trainer(full).fit()
    part = load_config(tree={**tree, "name": "part"})
    assert Trainer(part).fit(stop_at=4)["stopped"]
    resumed = Trainer(part, resume=True)
    resumed.fit()
    a = torch.load(RunDir(full.run_dir).last, weights_only=False)["method"]
    b = torch.load(RunDir(part.run_dir).last, weights_only=False)["method"]
    assert a.keys() == b.keys() and any(k.startswith("difficulty.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda recs: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in recs]
    assert strip(records(full.run_dir)) == strip(records(part.run_dir))


def test_class_imbalanced_mode(tmp_path):
    scale = imbalanced_class_scale(5, smallest=0.3)
    counts = np.bincount(make_case(0, (32, 32, 24), num_classes=5, class_scale=scale).label.ravel(), minlength=5)
    base = np.bincount(make_case(0, (32, 32, 24), num_classes=5).label.ravel(), minlength=5)
    assert (counts > 0).all() and counts[4] < counts[2] < counts[1] and counts[4] < base[4]
    root = write_dataset(tmp_path / "imb", n_labelled=3, n_unlabelled=2, seed=0, shape=(24, 24, 16), num_classes=5,
                         class_scale=scale)
    tree = {"name": "imb", "output_dir": str(tmp_path / "runs"), "device": "cpu", "threads": 1,
            "data": {"root": str(root), "splits": {"labelled": {"first": 3}}, "patch_size": [16, 16, 16],
                     "fg_oversample": 0.5},
            "train": {"iterations": 3, "batch_size": 2, "log_every": 1, "progress_bar": False}}
    cfg = load_config(tree=ad_tree(tree, iterations=3))
    Trainer(cfg).fit()
    last = records(cfg.run_dir)[-1]
    assert all(math.isfinite(last[f"ad/difficulty_w{c}"]) for c in range(5)) and last["n_u"] == 2


def test_configs_load_and_build():
    for name in ("la_ad_cpu", "la_ad_uda_cpu", "la_ad_semidg_cpu"):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        assert cfg.method.name == "ad" and cfg.data.patch_size == (64, 64, 48) and cfg.train.batch_size == 4
        with torch.device("meta"):
            m = METHODS.get("ad")(MethodContext(cfg, 1, 2, cfg.train.iterations), **cfg.method.options)
        assert m.predictor_spec().options["width"] == 8
        assert all(s % d == 0 for s, d in zip(cfg.data.patch_size, m.net.divisor))
