"""Tiny M&N configs shared across test folders (on ``sys.path`` through pyproject's pytest
``pythonpath``): a SegFormer of a few thousand parameters and a 3-level, 4-filter 3D U-Net."""

TINY_SEGFORMER = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
                      decoder_hidden_size=16, sr_ratios=[4, 2, 1, 1])


def mn_tree(root, out, name="mn", iterations=12, warmup=4, options=None, batch_size=3, lr2d=3e-3, lr3d=1e-2, **train):
    """A config dict for a few-step M&N training on the nnU-Net-format dataset at ``root`` (two
    labelled cases, 16^3 patches), run folder under ``out``; ``train`` adds train options."""
    return dict(
        name=name, output_dir=str(out), seed=0, threads=1,
        data=dict(format="nnunet", root=str(root), splits=dict(labelled={"first": 2}),
                  patch_size=[16, 16, 16], fg_oversample=0.5),
        model=dict(net3d=dict(name="unet3d", options=dict(levels=3, base=4)),
                   net2d=dict(name="segformer", options=dict(adaptation="full", config=TINY_SEGFORMER))),
        method=dict(name="mn", options={"epoch_length": 2, **(options or {})}),
        train=dict(iterations=iterations, batch_size=batch_size,
                   schedule=dict(name="cosine", cycles=[warmup]), log_every=1, val_every=10_000,
                   checkpoint_every=iterations, progress_bar=False,
                   group_optimizers={"net2d": {"lr": lr2d}, "net3d": {"lr": lr3d}}, **train))
