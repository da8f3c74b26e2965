"""Semi-supervised baselines: Mean Teacher, UA-MT, CPS, BCP, URPC (tiny CPU runs and mechanisms)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from typer.testing import CliRunner

from semi3d.cli import app
from semi3d.config import load_config
from semi3d.engine.trainer import Trainer
from semi3d.errors import InputError
from semi3d.losses import dice_ce_loss
from semi3d.methods.base import Batch, MethodContext
from semi3d.methods.common import cuboid_mask, ema_decay_at, paste, sigmoid_rampup
from semi3d.methods.cps import cross_pseudo_loss
from semi3d.methods.ua_mt import masked_consistency, predictive_entropy, uncertainty_threshold
from semi3d.methods.urpc import pyramid_logits, rectified_pyramid_consistency
from semi3d.registry import METHODS

BASELINES = ("mean_teacher", "ua_mt", "cps", "bcp", "urpc")
K = 3
NO_AUG = {k: 0.0 for k in ("p_flip", "p_rot90", "p_scale", "p_gamma", "p_contrast")}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from semi3d.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("baselines") / "data"
    return write_dataset(root, n_labelled=4, n_unlabelled=4, n_test=0, seed=0, shape=(24, 24, 24), num_classes=K)


def make_tree(root, out, method="mean_teacher", options=None, iterations=20, net=None, unlabelled="rest") -> dict:
    return {
        "name": method, "output_dir": str(out), "seed": 0, "device": "cpu", "threads": 1,
        "data": {"format": "nnunet", "root": str(root), "splits": {"labelled": {"first": 4}, "unlabelled": unlabelled},
                 "patch_size": [16, 16, 16], "augment": NO_AUG},
        "model": {"net3d": net or {"name": "unet3d", "options": {"levels": 3, "base": 4}}},
        "method": {"name": method, "options": options or {}},
        "train": {"iterations": iterations, "batch_size": 2, "optimizer": {"name": "adamw", "lr": 0.01},
                  "log_every": 1, "checkpoint_every": 1000, "progress_bar": False},
    }


def build(method, options=None, net=None, iterations=100, batch_size=2, tmp="unused"):
    tree = make_tree(tmp, tmp, method, options, iterations, net)
    tree["train"]["batch_size"] = batch_size
    cfg = load_config(tree=tree)
    return METHODS.get(method)(MethodContext(cfg, 1, K, iterations), **(options or {}))


def rand_batch(n_l=2, n_u=2, size=16):
    return Batch(torch.randn(n_l, 1, size, size, size), torch.randint(0, K, (n_l, size, size, size)),
                 torch.randn(n_u, 1, size, size, size))


# ------------------------------------------------------------------------- end-to-end, from the CLI
RUN_OPTIONS = {"ua_mt": {"mc_passes": 2}, "bcp": {"pretrain_iterations": 8}}
SUP_KEY = {"cps": "loss/supervised_a"}


@pytest.mark.parametrize("method", BASELINES)
def test_cli_run_lowers_supervised_loss(method, data_root, tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(make_tree(data_root, tmp_path / "runs", "supervised")))
    args = ["train", str(cfg_path), "--set", f"method.name={method}", "--set", f"name={method}"]
    for k, v in RUN_OPTIONS.get(method, {}).items():
        args += ["--set", f"method.options.{k}={v}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (tmp_path / "runs" / method / "log.jsonl").read_text().splitlines()]
    key = SUP_KEY.get(method, "loss/supervised")
    sup = [r[key] for r in recs if key in r]
    assert len(sup) == 20
    assert sum(sup[-5:]) / 5 < 0.9 * sum(sup[:5]) / 5, sup
    last = recs[-1]
    assert last["n_u"] == 2 and all(math.isfinite(v) for v in last.values())
    assert any(k.startswith("weight/") for k in last) and any("consistency" in k or "cps" in k for k in last)
    if method == "bcp":
        assert [r["bcp/stage"] for r in recs] == [1] * 8 + [2] * 12
        assert [r["n_u"] for r in recs[:8]] == [0] * 8
    assert (tmp_path / "runs" / method / "checkpoints" / "model_final.pt").is_file()


@pytest.mark.parametrize("method", BASELINES)
def test_empty_unlabelled_split_is_an_input_error(method, data_root, tmp_path):
    options = {"pretrain_iterations": 15} if method == "bcp" else {}  # refused before any (pre-)training
    cfg = load_config(tree=make_tree(data_root, tmp_path, method, options, unlabelled="none"))
    with pytest.raises(InputError, match="unlabelled"):
        Trainer(cfg).fit()
    assert not (tmp_path / method / "log.jsonl").exists()


def test_empty_unlabelled_split_cli_message(data_root, tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(make_tree(data_root, tmp_path / "runs", "cps", unlabelled="none")))
    res = CliRunner().invoke(app, ["train", str(cfg_path)])
    assert res.exit_code == 2
    assert "splits.unlabelled" in res.output and "needs unlabelled cases" in res.output


def test_bad_options_are_input_errors():
    with pytest.raises(InputError, match="ema_decai"):
        build("mean_teacher", {"ema_decai": 0.9})
    with pytest.raises(InputError, match="unlabelled_batch"):
        build("bcp", {"unlabelled_batch": 3})
    with pytest.raises(InputError, match="cuboid"):
        build("bcp", {"cuboid": "corner"})
    with pytest.raises(InputError, match="deep supervision"):
        build("urpc", net={"name": "vnet", "options": {"n_filters": 2}})


# ---------------------------------------------------------------------------- shared mechanisms
def test_sigmoid_rampup_endpoints():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(500, 100) == 1.0 and sigmoid_rampup(3, 0) == 1.0


# ------------------------------------------------------------------------------------ Mean Teacher
def test_mean_teacher_ema_update_formula():
    m = build("mean_teacher")
    student, teacher = m.groups["net"], m.teacher
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(not k.startswith("teacher") for k in dict(m.groups.named_parameters()))
    assert any(k.startswith("teacher.") for k in m.state_dict())
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    with torch.no_grad():  # make the teacher differ from the student
        for p in teacher.parameters():
            p.add_(torch.randn_like(p))
    t0 = [p.detach().clone() for p in teacher.parameters()]
    step = 500
    losses = m.training_step(rand_batch(), step)
    assert set(losses) == {"net"}
    losses["net"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    opt.step()
    m.after_step(step)
    d = 0.99
    assert m.log["ema/decay"] == d
    for t_old, t_new, s in zip(t0, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t_new, d * t_old + (1 - d) * s.detach())
    # warm-up: d = min(1 - 1/(step + 1), decay); the first update copies the student
    assert ema_decay_at(9, 0.99) == pytest.approx(0.9)
    m.after_step(0)
    for t, s in zip(teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, s.detach())


def test_mean_teacher_consistency_uses_noisy_teacher_softmax():
    m = build("mean_teacher", {"labelled_consistency": False, "consistency": 2.0, "consistency_rampup": 0})
    m.after_step(0)  # teacher == student
    m.eval()
    batch = rand_batch()
    torch.manual_seed(1)
    m.training_step(batch, 3)
    torch.manual_seed(1)
    x = torch.cat([batch.image_l, batch.image_u])
    with torch.no_grad():
        s = torch.softmax(m.groups["net"](x)[2:], 1)
        noise = torch.clamp(torch.randn_like(batch.image_u) * 0.1, -0.2, 0.2)
        t = torch.softmax(m.teacher(batch.image_u + noise), 1)
    assert m.log["loss/consistency"] == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-4)
    assert m.log["loss/consistency"] > 0 and m.log["weight/consistency"] == 2.0


# ----------------------------------------------------------------------------------------- UA-MT
def test_uamt_threshold_schedule_endpoints():
    t0 = uncertainty_threshold(0, 1000, 2)
    assert t0 == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))  # UA-MT: 0.75 ln 2 at the start
    assert abs(t0 - 0.75 * math.log(2)) < 2e-3
    assert uncertainty_threshold(1000, 1000, 2) == pytest.approx(math.log(2))
    assert uncertainty_threshold(1000, 1000, 3) == pytest.approx(math.log(3))
    assert uncertainty_threshold(0, 1000, 3) < uncertainty_threshold(500, 1000, 3) < math.log(3)


def test_uamt_entropy_and_masked_consistency():
    uniform = torch.full((1, K, 2, 2, 2), 1 / K)
    assert predictive_entropy(uniform).flatten()[0].item() == pytest.approx(math.log(K), abs=1e-4)
    confident = F.one_hot(torch.zeros(1, 2, 2, 2, dtype=torch.long), K).movedim(-1, 1).float()
    assert predictive_entropy(confident).abs().max() < 1e-4
    s, t = torch.rand(1, K, 4, 4, 4), torch.rand(1, K, 4, 4, 4)
    mask = torch.zeros(1, 1, 4, 4, 4)
    mask[..., :2, :, :] = 1
    expect = ((s - t) ** 2)[..., :2, :, :].mean()
    assert masked_consistency(s, t, mask).item() == pytest.approx(expect.item(), rel=1e-5)


class _HalfCertain(nn.Module):
    """Confident logits (class 1) for x < 8, uniform logits elsewhere, whatever the input noise."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], K, *x.shape[2:])
        out[:, 1, :8] = 20.0
        return out + 0 * x.mean()


def test_uamt_masks_out_uncertain_voxels():
    m = build("ua_mt", {"mc_passes": 3, "labelled_consistency": False})
    assert isinstance(m.groups["net"].dropout, nn.Dropout3d) and m.groups["net"].dropout.p == 0.3
    assert m.predictor_spec().options["dropout"] == 0.3
    m.teacher = _HalfCertain()
    student_logits = torch.randn(2, K, 16, 16, 16)
    x = torch.randn(2, 1, 16, 16, 16)
    loss = m.consistency_loss(student_logits, x, step=50)
    assert m.log["uamt/certain_fraction"] == pytest.approx(0.5)
    s = torch.softmax(student_logits, 1)
    t = torch.softmax(_HalfCertain()(x), 1)
    expect = ((s - t) ** 2)[:, :, :8].mean()  # only the certain half counts
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    assert m.log["uamt/threshold"] == pytest.approx(uncertainty_threshold(50, 100, K))


def test_uamt_sets_mc_dropout_on_vnet():
    m = build("ua_mt", net={"name": "vnet", "options": {"n_filters": 2}})
    assert m.groups["net"].has_dropout and m.teacher.has_dropout


# ------------------------------------------------------------------------------------------- CPS
def test_cps_targets_are_the_other_nets_argmax():
    other = torch.randn(2, K, 4, 4, 4, requires_grad=True)
    logits = torch.randn(2, K, 4, 4, 4, requires_grad=True)
    loss = cross_pseudo_loss(logits, other)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, other.argmax(1)).item())
    loss.backward()
    assert other.grad is None and logits.grad is not None
    confident = 50 * F.one_hot(other.argmax(1), K).movedim(-1, 1).float()
    assert cross_pseudo_loss(confident, other).item() < 1e-6  # agreeing, confident: zero loss
    wrong = 50 * F.one_hot((other.argmax(1) + 1) % K, K).movedim(-1, 1).float()
    assert cross_pseudo_loss(wrong, other).item() > 10


def test_cps_gradient_of_each_loss_reaches_only_its_student():
    m = build("cps")
    a, b = m.groups["net_a"], m.groups["net_b"]
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # initialised differently
    losses = m.training_step(rand_batch(), 99)
    assert set(losses) == {"net_a", "net_b"} and m.predictor() is a
    assert m.log["weight/cps"] == pytest.approx(0.1 * sigmoid_rampup(99, 100))
    losses["net_a"].backward()
    assert all(p.grad is None for p in b.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in a.parameters())


# ------------------------------------------------------------------------------------------- BCP
def test_bcp_cuboid_is_two_thirds_of_each_axis():
    inside = cuboid_mask((32, 30, 18), 2 / 3, "center")
    assert inside.sum() == 21 * 20 * 12
    assert inside[5:26, 5:25, 3:15].all()
    for _ in range(5):
        r = cuboid_mask((32, 30, 18), 2 / 3, "random")
        idx = r.nonzero()
        assert r.sum() == 21 * 20 * 12
        assert (idx.max(0).values - idx.min(0).values + 1).tolist() == [21, 20, 12]


def test_bcp_mixing_pastes_the_central_cuboid():
    inside = cuboid_mask((12, 12, 12), 2 / 3, "center")
    img_l, img_u = torch.randn(2, 1, 12, 12, 12), torch.randn(2, 1, 12, 12, 12)
    lab_l, lab_u = torch.randint(0, K, (2, 12, 12, 12)), torch.randint(0, K, (2, 12, 12, 12))
    mixed, target = paste(img_l, img_u, inside), paste(lab_l, lab_u, inside)
    c = slice(2, 10)  # int(12 * 2/3) = 8 voxels, starting at (12 - 8) // 2
    assert torch.equal(mixed[..., c, c, c], img_u[..., c, c, c])
    assert torch.equal(target[..., c, c, c], lab_u[..., c, c, c])
    out = ~inside
    assert torch.equal(mixed[:, :, out], img_l[:, :, out]) and torch.equal(target[:, out], lab_l[:, out])


def test_bcp_training_step_feeds_bidirectional_mixes():
    m = build("bcp", {"cuboid": "center", "pretrain_iterations": 10, "largest_component": False})
    assert m.batch_plan(9) == (2, 0) and m.batch_plan(10) == (2, 2)
    seen = []
    m.groups["net"].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    batch = rand_batch()
    m.training_step(Batch(batch.image_l, batch.label_l), 3)  # stage 1: labelled b pasted into labelled a
    inside = cuboid_mask((16, 16, 16), 2 / 3, "center")
    torch.testing.assert_close(seen[0], paste(batch.image_l[:1], batch.image_l[1:], inside))
    # end of stage 1: the teacher restarts from the student
    with torch.no_grad():
        for p in m.teacher.parameters():
            p.zero_()
    m.after_step(9)
    for t, s in zip(m.teacher.parameters(), m.groups["net"].parameters()):
        torch.testing.assert_close(t, s)
    seen.clear()
    losses = m.training_step(batch, 10)
    mix_l, mix_u = seen
    c = slice(3, 13)  # int(16 * 2/3) = 10 voxels, centred
    assert torch.equal(mix_l[..., c, c, c], batch.image_u[:1, ..., c, c, c])  # unlabelled into labelled
    assert torch.equal(mix_l[:, :, ~inside], batch.image_l[:1, :, ~inside])
    assert torch.equal(mix_u[..., c, c, c], batch.image_l[1:, ..., c, c, c])  # labelled into unlabelled
    assert torch.equal(mix_u[:, :, ~inside], batch.image_u[1:, :, ~inside])
    assert m.log["bcp/stage"] == 2 and m.log["weight/consistency"] == 0.5
    expect = 2 * (m.log["loss/supervised"] + 0.5 * m.log["loss/consistency"])
    assert losses["net"].item() == pytest.approx(expect, rel=1e-5)


# ------------------------------------------------------------------------------------------ URPC
def test_urpc_deep_supervision_outputs_every_level():
    m = build("urpc", net={"name": "unet3d", "options": {"levels": 4, "base": 4}})
    net = m.groups["net"]
    net.train()
    raw = net(torch.randn(2, 1, 16, 16, 16))
    assert [tuple(o.shape[2:]) for o in raw] == [(16, 16, 16), (8, 8, 8), (4, 4, 4)]
    levels = pyramid_logits(raw, (16, 16, 16))
    assert len(levels) == 3 and all(o.shape == (2, K, 16, 16, 16) for o in levels)
    net.eval()
    assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, K, 16, 16, 16)
    assert m.predictor_spec().options["deep_supervision"] is True


def test_urpc_rectification_weights_are_exp_minus_kl():
    same = torch.randn(2, K, 4, 4, 4)
    loss, kls, ws = rectified_pyramid_consistency([same, same.clone(), same.clone()])
    assert loss.abs().item() < 1e-6 and all(torch.allclose(w, torch.ones_like(w)) for w in ws)
    logits = [torch.randn(2, K, 4, 4, 4) * 3 for _ in range(3)]
    loss, kls, ws = rectified_pyramid_consistency(logits)
    probs = [torch.softmax(x, 1) for x in logits]
    mean = sum(probs) / 3
    total = 0.0
    for p, kl, w in zip(probs, kls, ws):
        ref_kl = (mean * (mean.log() - p.log())).sum(1, keepdim=True)  # KL(mean || level)
        torch.testing.assert_close(kl, ref_kl, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(w, torch.exp(-ref_kl), rtol=1e-4, atol=1e-5)
        total += ((mean - p) ** 2 * w).mean() / (w.mean() + 1e-8) + ref_kl.mean()
    assert loss.item() == pytest.approx(total.item() / 3, rel=1e-4)
    assert loss.item() > 0 and all((w <= 1).all() and (w > 0).all() for w in ws)


def test_urpc_supervises_every_level():
    m = build("urpc")
    batch = rand_batch()
    losses = m.training_step(batch, 5)
    x = torch.cat([batch.image_l, batch.image_u])
    levels = pyramid_logits(m.groups["net"](x), (16, 16, 16))
    expect = sum(dice_ce_loss(lv[:2], batch.label_l) for lv in levels) / len(levels)
    assert m.log["loss/supervised"] == pytest.approx(expect.item(), rel=1e-4)
    assert losses["net"].requires_grad and m.log["loss/consistency"] > 0


def test_bcp_odd_batch_pairs_equal_halves():
    m = build("bcp", {"pretrain_iterations": 1}, iterations=10, batch_size=3)
    seen = []
    m.groups["net"].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    batch = rand_batch(3, 3)
    m.training_step(Batch(batch.image_l, batch.label_l), 0)
    m.training_step(batch, 1)
    assert seen == [2, 2, 2] and m.batch_plan(1) == (3, 3)


def test_supervised_strong_augment_is_ad_s_augmentation_of_the_labelled_batch():
    from semi3d.data.strong_augment import StrongAugment, strong_augment

    x = torch.randn(2, 1, 16, 16, 16)
    y = (x[:, 0] > 0.5).long()
    plain, strong = build("supervised"), build("supervised", {"strong_augment": {"p": 1.0}})
    strong.groups.load_state_dict(plain.groups.state_dict())
    torch.manual_seed(3)
    got = strong.training_step(Batch(x, y), 0)["net"]
    torch.manual_seed(3)
    xa, ya = strong_augment(x, y, StrongAugment(p=1.0))
    torch.testing.assert_close(got, dice_ce_loss(plain.groups["net"](xa), ya))
    assert not torch.allclose(got, plain.training_step(Batch(x, y), 0)["net"])
    with pytest.raises(InputError, match="strong_augment"):
        build("supervised", {"strong_augment": {"select": 9}})
