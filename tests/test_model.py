import itertools

import pytest
import torch

from met_core.config import METConfig
from met_core.errors import METError
from met_core.nn.model import METModel

from .conftest import tiny_vit

VARIANTS = [
    dict(sharing=s, diagonal_mode=d, head_input=h)
    for s, d, h in itertools.product(["site", "global"], ["stage", "per-exit-path"], ["cls", "mean", "cls+mean"])
]


def _tiny(**kw) -> METModel:
    torch.manual_seed(0)
    return METModel(tiny_vit(depth=4), METConfig(exits=kw.pop("exits", [1, 2, 4]), num_classes=5, **kw))


@pytest.mark.parametrize("kw", VARIANTS + [dict(adapters=False), dict(exit_diagonals=False)], ids=str)
def test_shapes_and_finite(kw):
    model = _tiny(**kw)
    x = torch.randn(3, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (3, 3, 5) and torch.isfinite(logits).all()
    feats = model.forward_features(x, upto=1)
    assert len(feats) == 2 and feats[0].shape == (3, model.feature_dim) == (
        3,
        64 if kw.get("head_input") == "cls+mean" else 32,
    )


@pytest.mark.parametrize("sharing,pairs", [("site", 8), ("global", 1)])
def test_projections_are_one_tensor_shared_by_all_exits(sharing, pairs):
    model = _tiny(sharing=sharing)
    names = [n for n, _ in model.named_parameters() if n.startswith("adapters.")]
    assert sum(n.startswith("adapters.down.") and n.endswith(".weight") for n in names) == pairs
    assert model.adapters.diag.shape == (3, 8)  # one diagonal per exit, the only exit-specific adapter tensor
    # every exit's loss sends gradient into the same shared tensor
    x = torch.randn(2, 3, 32, 32)
    for exit_idx in range(3):
        model.zero_grad()
        with torch.no_grad():
            for up in model.adapters.up:
                up.weight.normal_()  # leave the zero init so that `down` receives gradient
        model(x)[exit_idx].sum().backward()
        assert model.adapters.down[0].weight.grad.abs().sum() > 0
    ptrs = {model.adapters.down[model.adapters.pair_index(s)].weight.data_ptr() for s in range(8)}
    assert len(ptrs) == pairs


def test_trainable_count_under_two_percent_of_a_real_backbone(real_backbone_56):
    backbone, _ = real_backbone_56
    model = METModel(backbone, METConfig(num_classes=10))
    n = model.num_parameters()
    assert 21_500_000 < n["frozen"] < 21_600_000  # ViT-S/14; the position embedding depends on the image size
    # 24 sites x (384*8+8 + 8*384+384) + 4 diagonals of 8 + 4 heads 384*10+10
    assert n["trainable"] == 24 * (384 * 8 + 8 + 8 * 384 + 384) + 4 * 8 + 4 * (384 * 10 + 10)
    assert n["trainable"] / n["frozen"] < 0.02
    assert set(model.trainable_state_dict()) == {k for k, p in model.named_parameters() if p.requires_grad}


def test_zero_up_projection_reproduces_frozen_backbone_features(real_backbone_56):
    """With `up` at zero the exits see exactly the frozen timm backbone's features (real image, real weights)."""
    from met_core.data.datasets import make_transform
    from met_core.io.images import load_image

    from .conftest import CIFAR_TEST

    backbone, _ = real_backbone_56
    cfg = METConfig(num_classes=10, img_size=56)
    model = METModel(backbone, cfg).eval()
    tf = make_transform(56, cfg.mean, cfg.std)
    x = torch.stack([tf(load_image(CIFAR_TEST / c / "0001.jpg")) for c in ("cat", "ship")])
    with torch.no_grad():
        feats = model.forward_features(x)
        tokens = backbone.norm_pre(backbone._pos_embed(backbone.patch_embed(x)))
        expected = []
        for i, blk in enumerate(backbone.blocks, start=1):
            tokens = blk(tokens)  # timm's own, unmodified block
            if i in cfg.exits:
                expected.append(backbone.norm(tokens)[:, 0])
        full = backbone.forward_features(x)[:, 0]
    for z, e in zip(feats, expected):
        torch.testing.assert_close(z, e, rtol=0, atol=1e-5)
    torch.testing.assert_close(feats[-1], full, rtol=0, atol=1e-5)


def test_backbone_never_changes_in_training(real_backbone_56):
    from met_core.config import TrainConfig
    from met_core.data.datasets import make_transform, open_dataset, subsample_split
    from met_core.engine.train import fit

    from .conftest import CIFAR_TRAIN

    backbone, _ = real_backbone_56
    model = METModel(backbone, METConfig(num_classes=10, img_size=56))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trained_before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    ds = open_dataset(str(CIFAR_TRAIN))
    ds.transform = make_transform(56, model.cfg.mean, model.cfg.std)
    tr, va = subsample_split(ds.labels, 3, 0.34, seed=0)
    metrics = fit(
        model, ds.subset(tr), ds.subset(va), TrainConfig(epochs=2, batch_size=20, warmup_epochs=0), progress=False
    )
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    after = model.trainable_state_dict()
    assert any(not torch.equal(trained_before[k], after[k]) for k in after if k.startswith("adapters.up"))
    assert len(metrics.val_accuracy) == 4 and metrics.trainable_share < 0.02


def test_bad_exit_lists_are_refused():
    with pytest.raises(METError, match="last exit"):
        METModel(tiny_vit(depth=4), METConfig(exits=[1, 2], num_classes=5))
    with pytest.raises(METError, match="strictly increasing"):
        METModel(tiny_vit(depth=4), METConfig(exits=[2, 1, 4], num_classes=5))
