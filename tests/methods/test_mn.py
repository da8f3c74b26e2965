"""M&N: loss, options, alternation, co-training, guided crops, resume, and the two LA configs.

Everything runs on tiny synthetic volumes with tiny random-init networks (a 3-level, 4-filter 3D
U-Net and a SegFormer of a few thousand parameters) on one thread.
"""
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from semi3d.config import load_config
from semi3d.data.synthetic import write_dataset
from semi3d.engine.trainer import Trainer
from semi3d.errors import InputError
from semi3d.losses import one_hot
from semi3d.methods.base import Batch, MethodContext
from semi3d.methods.mn import MN, soft_target_loss
from semi3d.registry import METHODS
from tiny_configs import TINY_SEGFORMER, mn_tree

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    # Z = 14 < patch 16: the sampler pads the volumes, the guide masks must follow that padding
    return write_dataset(tmp_path_factory.mktemp("syn") / "ds", 2, 3, 0, seed=3, shape=(24, 20, 14), num_classes=2)


@pytest.fixture(scope="module")
def h5_root(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("syn_h5") / "LA", 3, 2, 0, seed=5, shape=(32, 32, 24),
                         num_classes=2, format="uamt_h5")


def build_method(tree) -> MN:
    cfg = load_config(tree=tree)
    ctx = MethodContext(cfg, 1, 2, cfg.train.iterations)
    return METHODS.get("mn")(ctx, **cfg.method.options)


# ------------------------------------------------------------------------------------------ loss
def test_soft_target_loss_zero_at_one_hot_student():
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 4, 4, 4))
    target = one_hot(label, 3)
    perfect = 100.0 * (2 * target - 1)  # softmax is exactly the one-hot target in float32
    total, dice, kl = soft_target_loss(perfect, target)
    assert kl.item() == 0.0
    assert dice.item() == pytest.approx(0.0, abs=1e-6) and total.item() == pytest.approx(0.0, abs=1e-6)
    # any other student is worse on both terms
    worse = perfect + 150.0 * torch.randn_like(perfect)
    _, dice_w, kl_w = soft_target_loss(worse, target)
    assert dice_w > dice + 1e-3 and kl_w > 1e-3
    # weights
    t2, d2, k2 = soft_target_loss(worse, target, 2.0, 0.5)
    assert t2.item() == pytest.approx(2 * d2.item() + 0.5 * k2.item(), rel=1e-6)


def test_soft_target_loss_by_hand():
    logits = torch.tensor([[[0.0, 1.0], [2.0, -1.0]]]).view(1, 2, 2)  # (N=1, K=2, 2 voxels)
    target = torch.tensor([[[0.7, 0.2], [0.3, 0.8]]]).view(1, 2, 2)
    p = torch.softmax(logits, 1)
    kl_hand = 0.0
    for k in range(2):
        for v in range(2):
            t = float(target[0, k, v])
            kl_hand += t * (math.log(t) - math.log(float(p[0, k, v])))
    kl_hand /= 4  # averaged over N * K * voxels
    dice_hand = 1 - sum(2 * float((p[0, k] * target[0, k]).sum()) / float((p[0, k] ** 2).sum() + (target[0, k] ** 2).sum())
                        for k in range(2)) / 2
    total, dice, kl = soft_target_loss(logits, target)
    assert kl.item() == pytest.approx(kl_hand, rel=1e-5)
    assert dice.item() == pytest.approx(dice_hand, rel=1e-4)
    assert total.item() == pytest.approx(kl_hand + dice_hand, rel=1e-4)


# --------------------------------------------------------------------------------------- options
def test_options_are_checked(data_root, tmp_path):
    with pytest.raises(InputError, match="unknown option 'threshold'"):
        build_method(mn_tree(data_root, tmp_path, options={"threshold": 0.9}))
    with pytest.raises(InputError) as e:
        build_method(mn_tree(data_root, tmp_path, options={"warmup_iterations": 5}))
    assert "warmup_iterations=5" in str(e.value) and "cycles[0]=4" in str(e.value)
    tree = mn_tree(data_root, tmp_path)
    tree["train"]["schedule"]["cycles"] = []
    with pytest.raises(InputError, match="cycles"):
        build_method(tree)
    with pytest.raises(InputError, match="views"):
        build_method(mn_tree(data_root, tmp_path, options={"views": [2, 3]}))
    with pytest.raises(InputError, match="sampling"):
        build_method(mn_tree(data_root, tmp_path, options={"sampling": "random"}))
    with pytest.raises(InputError, match="loss_weights"):
        build_method(mn_tree(data_root, tmp_path, options={"loss_weights": [0, 0]}))
    with pytest.raises(InputError, match="predict"):
        build_method(mn_tree(data_root, tmp_path, options={"predict": "net2d"}))
    with pytest.raises(InputError, match="model.net2d"):
        tree = mn_tree(data_root, tmp_path)
        tree["model"].pop("net2d")
        build_method(tree)
    m = build_method(mn_tree(data_root, tmp_path, options={"views": [0, 1, 2]}))
    assert m.warmup == 4 and m.views == (0, 1, 2) and m.predictor() is m.groups["net3d"]


def test_schedule_of_groups_and_batches(data_root, tmp_path):
    m = build_method(mn_tree(data_root, tmp_path, iterations=20, warmup=4, options={"epoch_length": 3}))
    assert [m.active_groups(s) for s in range(4)] == [["net2d", "net3d"]] * 4
    stage2 = [m.active_groups(s)[0] for s in range(4, 16)]
    assert stage2 == ["net2d"] * 3 + ["net3d"] * 3 + ["net2d"] * 3 + ["net3d"] * 3
    assert all(len(m.active_groups(s)) == 1 for s in range(4, 20))


# ---------------------------------------------------------------------------------- alternation
def _snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_teacher_frozen_during_student_epoch(data_root, tmp_path):
    tree = mn_tree(data_root, tmp_path, iterations=10, warmup=2,
                   options={"sampling": "fixed", "fixed_unlabelled": 1})
    tr = Trainer(load_config(tree=tree))
    groups = tr.method.groups
    for step in range(10):
        before = {g: _snapshot(groups[g]) for g in groups}
        rec = tr.train_step(step)
        tr.step = step + 1
        changed = {g for g in groups if not _same(before[g], _snapshot(groups[g]))}
        if step < 2:
            assert changed == {"net2d", "net3d"} and rec["stage"] == 1 and rec["n_u"] == 0
        else:
            student = "net2d" if (step - 2) // 2 % 2 == 0 else "net3d"
            assert rec["student"] == student and rec["n_u"] == 1 and rec["n_l"] == 2
            # the teacher's parameters and buffers (BatchNorm statistics) are untouched
            assert changed == {student}, (step, changed)
            assert set(k for k in rec if k.startswith("loss/")) == {f"loss/{student}"}


# --------------------------------------------------------------------------- end-to-end training
def _records(run_dir):
    return [json.loads(x) for x in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def test_cotraining_lowers_both_losses_and_guides_crops(data_root, tmp_path):
    tree = mn_tree(data_root, tmp_path, iterations=40, warmup=16, options={"epoch_length": 4, "guide_every": 8})
    tr = Trainer(load_config(tree=tree))
    tr.fit()
    recs = _records(tr.run.path)
    assert [r["stage"] for r in recs] == [1] * 16 + [2] * 24
    assert max(r["n_u"] for r in recs) == 2 and recs[-1]["n_u"] == 2  # lrg: floor(p * 3), never 3
    for g in ("net2d", "net3d"):
        losses = [r[f"loss/{g}"] for r in recs if f"loss/{g}" in r]
        first, last = np.mean(losses[:3]), np.mean(losses[-3:])
        assert last < 0.8 * first, (g, first, last)
    # guide passes after 16, 24, 32 iterations (not after the last one); masks on the padded grid
    state = tr.method.guide_state()
    assert state["iteration"] == 32
    _check_guides(tr)
    # the saved inference model is the 3D network
    m = torch.load(tr.run.model("final"), weights_only=False)
    assert m["net"]["name"] == "unet3d"


def _check_guides(tr):
    """The sampler's foreground coordinates are the guide masks' voxels, on the sampler's padded grid."""
    state = tr.method.guide_state()
    vols = {v.id: v for v in tr.sampler_u.vols}
    assert set(state["masks"]) == set(vols)
    for cid, entry in state["masks"].items():
        v = vols[cid]
        assert tuple(entry["shape"]) == tuple(v.image.shape[1:]) == (24, 20, 16)  # Z padded 14 -> 16
        mask = np.unpackbits(entry["bits"], count=int(np.prod(entry["shape"]))).reshape(entry["shape"])
        assert v.fg is not None and torch.equal(v.fg, torch.nonzero(torch.from_numpy(mask) > 0).to(torch.int32))
    saved = np.load(tr.run.path / "pseudo" / "guide_masks.npz")
    assert sorted(saved.files) == sorted(vols) and all(saved[c].dtype == np.uint8 for c in vols)
    assert json.loads((tr.run.path / "pseudo" / "guides.json").read_text())["iteration"] == state["iteration"]
    return state


def test_guide_pass_gives_unlabelled_crops_foreground(data_root, tmp_path):
    tree = mn_tree(data_root, tmp_path, iterations=12, warmup=4, options={"guide_every": 4})
    tr = Trainer(load_config(tree=tree))
    assert [d for d in range(1, 13) if tr.method.guide_due(d)] == [4, 8]  # not after the last iteration
    assert all(v.fg is None for v in tr.sampler_u.vols)
    head = tr.method.groups["net3d"].head
    with torch.no_grad():  # a 3D model that calls every voxel foreground
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 1.0]))
    tr.method.periodic(2, tr.services)  # after 3 iterations: no pass
    assert tr.method.guide_state() is None and all(v.fg is None for v in tr.sampler_u.vols)
    tr.method.periodic(3, tr.services)  # after 4 iterations = end of stage 1: pass
    state = _check_guides(tr)
    assert state["iteration"] == 4
    for v in tr.sampler_u.vols:
        assert len(v.fg) == 24 * 20 * 16  # every voxel of the padded volume
    assert tr.method.groups["net3d"].training  # the model's mode is restored
    # a mask that covers one corner: guided crops (fg_oversample 1) then always contain it
    tr.sampler_u.fg_oversample = 1.0
    corner = np.zeros((24, 20, 16), bool)
    corner[0, 0, 0] = True
    for v in tr.sampler_u.vols:
        tr.sampler_u.set_guide(v.id, corner)
    img, _, ids = tr.sampler_u.sample(4)
    vols = {v.id: v for v in tr.sampler_u.vols}
    for i, cid in enumerate(ids):
        assert torch.equal(img[i], vols[cid].image[:, :16, :16, :16])
    assert not any("pseudo" in p.name for p in Path(data_root).rglob("*"))  # nothing written beside the data


# ------------------------------------------------------------------------------------------ resume
class _Crash(Exception):
    pass


class _CrashingTrainer(Trainer):
    crash_at = None

    def train_step(self, step):
        if step == self.crash_at:
            raise _Crash
        return super().train_step(step)


def test_a_checkpoint_with_the_old_trainer_guides_key_resumes(data_root, tmp_path):
    """Checkpoints written before M&N kept its guides in its own state dict had them under the
    trainer's "guides" key: they still resume, guides included."""
    tree = mn_tree(data_root, tmp_path, "old", iterations=8, warmup=4,
                   options={"sampling": "fixed", "fixed_unlabelled": 1, "guide_every": 4})
    tree["train"]["checkpoint_every"] = 6
    first = _CrashingTrainer(load_config(tree=tree))
    first.crash_at = 6
    with pytest.raises(_Crash):
        first.fit()
    path = first.run.last
    ckpt = torch.load(path, weights_only=False)
    ckpt["guides"] = ckpt["method"].pop("_extra_state")["guides"]
    torch.save(ckpt, path)
    resumed = Trainer(load_config(tree=copy.deepcopy(tree)), resume=True)
    assert resumed.method.guide_state()["iteration"] == 4 and all(v.fg is not None for v in resumed.sampler_u.vols)


def test_resume_equals_uninterrupted_across_guide_passes(data_root, tmp_path):
    opts = {"sampling": "fixed", "fixed_unlabelled": 1, "guide_every": 4}
    full = Trainer(load_config(tree=mn_tree(data_root, tmp_path, "full", iterations=12, warmup=4, options=opts)))
    full.fit()
    # guide passes after 4 and 8 iterations; the crash after the checkpoint at 6 lies between them
    tree = mn_tree(data_root, tmp_path, "resumed", iterations=12, warmup=4, options=opts)
    tree["train"]["checkpoint_every"] = 6
    first = _CrashingTrainer(load_config(tree=tree))
    first.crash_at = 6
    with pytest.raises(_Crash):
        first.fit()
    ckpt = torch.load(first.run.last, weights_only=False)
    guides = ckpt["method"]["_extra_state"]["guides"]  # the method's own state, not a trainer key
    assert ckpt["step"] == 6 and guides["iteration"] == 4 and "guides" not in ckpt
    assert any(e["bits"].any() for e in guides["masks"].values())  # non-empty masks steer crops
    resumed = Trainer(load_config(tree=copy.deepcopy(tree)), resume=True)
    assert all(v.fg is not None for v in resumed.sampler_u.vols)
    resumed.fit()
    for g in ("net2d", "net3d"):
        a, b = full.method.groups[g].state_dict(), resumed.method.groups[g].state_dict()
        for k in a:
            assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0), (g, k)
    assert full.method.guide_state()["iteration"] == resumed.method.guide_state()["iteration"] == 8
    recs_full, recs_res = _records(full.run.path), _records(resumed.run.path)
    assert [r["step"] for r in recs_res] == list(range(1, 13))
    assert [r.get("loss/net3d") for r in recs_full] == [r.get("loss/net3d") for r in recs_res]


# ----------------------------------------------------------------------------------------- configs
def _config_overrides(h5_root, out, name):
    return [f"data.root={h5_root}", f"data.options.list_file={h5_root / 'train.list'}",
            "data.splits.labelled.first=2", "data.splits.validation.last=1", "data.patch_size=[16,16,16]",
            "model.net3d.options.levels=3", "model.net3d.options.base=4",
            "train.iterations=5", "train.batch_size=2", "train.schedule.cycles=[2]", "train.schedule.warmup=1",
            "method.options.warmup_iterations=2", "method.options.epoch_length=1", "method.options.guide_every=2",
            "method.options.guide_at=[]", "train.val_every=5", "train.checkpoint_every=5", "train.log_every=1",
            "train.progress_bar=false", "threads=1", f"output_dir={out}", f"name={name}"]


def test_paper_config_trains_at_tiny_scale(h5_root, tmp_path):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    hf_dir = tmp_path / "tiny_segformer"
    SegformerForSemanticSegmentation(SegformerConfig(**TINY_SEGFORMER)).save_pretrained(hf_dir)
    cfg = load_config(ROOT / "configs" / "la_mn_paper.yaml",
                      _config_overrides(h5_root, tmp_path, "paper") + [f"model.net2d.options.pretrained={hf_dir}"])
    paper = load_config(ROOT / "configs" / "la_mn_paper.yaml")
    assert paper.method.options["warmup_iterations"] == paper.train.schedule.cycles[0] == 4000
    assert paper.train.group_optimizers == {"net2d": {"lr": 0.001}, "net3d": {"lr": 0.0001}}
    assert paper.train.batch_size == 5 and tuple(paper.data.patch_size) == (160, 160, 64)
    assert cfg.model.net2d.name == "segformer" and cfg.model.net2d.options["adaptation"] == "lora_frozen_head"
    summary = Trainer(cfg).fit()
    assert summary["iterations"] == 5 and 0.0 <= summary["best_val_dice"] <= 1.0
    recs = _records(cfg.run_dir)
    assert {r.get("student") for r in recs if "student" in r} == {"both", "net2d", "net3d"}


def test_cpu_config_trains_at_tiny_scale(h5_root, tmp_path, mn_cpu_weights):
    cfg = load_config(ROOT / "configs" / "la_mn_cpu.yaml", _config_overrides(h5_root, tmp_path, "cpu") + [mn_cpu_weights])
    assert cfg.model.net2d.name == "unet2d_mobilenet_v2" and cfg.data.preprocess.scale == 0.5
    summary = Trainer(cfg).fit()
    assert summary["iterations"] == 5
    assert (cfg.run_dir / "pseudo" / "guide_masks.npz").is_file()


def test_slices_per_step_subsamples_the_2d_students_slices(data_root, tmp_path):
    m = build_method(mn_tree(data_root, tmp_path, options={"slices_per_step": 5}))
    seen = []
    m.groups["net2d"].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    x = torch.randn(2, 1, 16, 16, 16)
    y = torch.softmax(torch.randn(2, 2, 16, 16, 16), 1)
    loss, _, _ = m._loss2d(x, y)
    assert seen == [5] and torch.isfinite(loss)
    seen.clear()
    probs = m.teacher_probs("net3d", x)  # the 2D teacher still segments every slice
    assert sum(seen) == 2 * 16 and probs.shape == (2, 2, 16, 16, 16)
    with pytest.raises(InputError, match="slices_per_step"):
        build_method(mn_tree(data_root, tmp_path, options={"slices_per_step": -1}))


def test_copy_paste_swaps_one_cuboid_between_labelled_and_unlabelled_pairs(data_root, tmp_path):
    m, seen = build_method(mn_tree(data_root, tmp_path, options={"copy_paste": 0.5})), []
    m._loss3d = lambda x, y, orig=m._loss3d: (seen.append((x, y)), orig(x, y))[1]
    img_l, img_u = torch.zeros(2, 1, 16, 16, 16), torch.ones(1, 1, 16, 16, 16)
    lab_l = (torch.arange(16) >= 8).long().view(1, 16, 1, 1).expand(2, 16, 16, 16)
    m.training_step(Batch(img_l, lab_l, img_u), 6)  # stage 2, a 3D-student epoch; the 2D model teaches
    (x, y), = seen
    inside = x[0, 0] == 1  # the unlabelled patch's cuboid in labelled patch 0
    idx = inside.nonzero()
    assert inside.sum() == 8 ** 3 and (idx.max(0).values - idx.min(0).values + 1).tolist() == [8, 8, 8]
    assert torch.equal(x[2, 0], (~inside).float())  # and labelled patch 0's cuboid in the unlabelled one
    assert torch.equal(x[1], img_l[1])  # labelled patch 1 has no unlabelled partner
    teacher, label = m.teacher_probs("net3d", img_u)[0], one_hot(lab_l, 2)  # targets from the unmixed patch
    torch.testing.assert_close(y[0], torch.where(inside, teacher, label[0]))
    torch.testing.assert_close(y[2], torch.where(inside, label[0], teacher))
    torch.testing.assert_close(y[1], label[1])
    with pytest.raises(InputError, match="copy_paste"):
        build_method(mn_tree(data_root, tmp_path, options={"copy_paste": 1.0}))


def test_empty_unlabelled_split_is_refused_before_training(data_root, tmp_path):
    """Stage 2 wants unlabelled patches: an empty split is an error up front (it used to fail at the
    first stage-2 step, hours into a paper-scale run); sampling labelled_only needs none."""
    tree = mn_tree(data_root, tmp_path)
    tree["data"]["splits"]["unlabelled"] = "none"
    with pytest.raises(InputError, match="needs unlabelled"):
        Trainer(load_config(tree=tree)).fit()
    assert not (tmp_path / "mn" / "log.jsonl").exists()
    tree = mn_tree(data_root, tmp_path, name="mn_lab", iterations=6, options={"sampling": "labelled_only"})
    tree["data"]["splits"]["unlabelled"] = "none"
    Trainer(load_config(tree=tree)).fit()
    assert (tmp_path / "mn_lab" / "checkpoints" / "model_final.pt").is_file()


def test_ensemble_prediction_is_the_mean_of_the_3d_and_2d_probabilities(data_root, tmp_path):
    """predict: ensemble saves one model whose probabilities are the mean of net3d's and of the
    slice-wise net2d's; it reloads from the model file alone (Predictor, as evaluate / predict do)."""
    from semi3d.config import InferenceConfig
    from semi3d.inference.predictor import Predictor, predict_probs
    from semi3d.models.slicing import predict_2d_volume

    tree = mn_tree(data_root, tmp_path, iterations=6, options={"predict": "ensemble", "views": [1, 2]})
    tr = Trainer(load_config(tree=tree))
    tr.fit()
    m = tr.method.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expect = (torch.softmax(m.groups["net3d"](x), 1) + predict_2d_volume(m.groups["net2d"], x, (1, 2))) / 2
        got = torch.softmax(m.predictor()(x), 1)
    assert torch.allclose(got, expect, atol=1e-5)
    assert not torch.allclose(got, torch.softmax(m.groups["net3d"](x), 1), atol=1e-3)
    pred = Predictor(tmp_path / "mn" / "checkpoints" / "model_final.pt", precision="fp32")
    saved = predict_probs(pred.net, x[0], (16, 16, 16), InferenceConfig(), torch.device("cpu"))
    assert torch.allclose(saved, expect[0], atol=1e-5)
