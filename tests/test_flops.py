import pytest
import timm

from met_core.config import METConfig
from met_core.nn.flops import exit_gmacs, exit_macs, measured_macs
from met_core.nn.model import METModel

from .conftest import tiny_vit


@pytest.mark.parametrize("mode", ["stage", "per-exit-path"])
@pytest.mark.parametrize("adapters", [True, False])
def test_analytic_macs_equal_flop_counter_at_every_exit(mode, adapters):
    model = METModel(
        tiny_vit(depth=4), METConfig(exits=[1, 3, 4], num_classes=7, diagonal_mode=mode, adapters=adapters)
    )
    assert exit_macs(model) == [measured_macs(model, upto=k) for k in range(3)]


def test_real_dinov2_small_at_112_cross_check():
    bb = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=112)
    model = METModel(bb, METConfig(num_classes=10))
    assert exit_macs(model) == [measured_macs(model, upto=k) for k in range(4)]
    assert exit_gmacs(model)[-1] == pytest.approx(1.443, abs=1e-3)


def test_vit_b16_matches_the_method_page():
    """Method page, section 6: exits after blocks 3/6/9/12 cost about 4.48 / 8.84 / 13.20 / 17.56 GMACs."""
    bb = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    model = METModel(bb, METConfig(adapters=False, num_classes=1000))
    assert [round(g, 2) for g in exit_gmacs(model)] == [4.48, 8.84, 13.20, 17.57]


def test_per_exit_path_counts_recomputation():
    stage = METModel(tiny_vit(depth=4), METConfig(exits=[2, 4], num_classes=3))
    path = METModel(tiny_vit(depth=4), METConfig(exits=[2, 4], num_classes=3, diagonal_mode="per-exit-path"))
    assert exit_macs(path)[0] == exit_macs(stage)[0] and exit_macs(path)[1] > exit_macs(stage)[1]
