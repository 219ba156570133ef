import numpy as np
import pytest
import torch

from met_core.data.datasets import make_transform
from met_core.errors import METError
from met_core.io.images import load_image
from met_core.nn.backbones import (
    IMGFOCUS_FINAL_NORM_OUTPUT,
    IMGFOCUS_ONNX_SIZE,
    cache_dir,
    create_backbone,
    imgfocus_onnx_path,
    read_state_dict,
)

from .conftest import HYMENOPTERA


def test_imgfocus_conversion_matches_onnxruntime_on_a_real_photo():
    """The converted timm model's final-norm output equals the ONNX graph's at 224 px."""
    import onnx
    import onnxruntime as ort

    model, digest = create_backbone("dinov2_s14_imgfocus", IMGFOCUS_ONNX_SIZE)
    assert len(digest) == 64 and (cache_dir() / "dinov2_s14_imgfocus.safetensors").is_file()
    img = load_image(HYMENOPTERA / "val" / "bees" / sorted(p.name for p in (HYMENOPTERA / "val" / "bees").iterdir())[0])
    x = make_transform(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(img)[None]

    graph = onnx.load(str(imgfocus_onnx_path()))
    graph.graph.output.append(
        onnx.helper.make_tensor_value_info(IMGFOCUS_FINAL_NORM_OUTPUT, onnx.TensorProto.FLOAT, None)
    )
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run([IMGFOCUS_FINAL_NORM_OUTPUT], {"input_image": x.numpy()})[0]
    with torch.no_grad():
        out = model.forward_features(x).numpy()
    assert out.shape == ref.shape == (1, 257, 384)
    assert np.abs(out - ref).max() < 1e-4


def test_backbone_is_frozen_and_resampled(real_backbone_56):
    model, _ = real_backbone_56
    assert not any(p.requires_grad for p in model.parameters())
    assert model.pos_embed.shape == (1, 1 + 16, 384)  # 56 px / 14 = 4x4 patches + CLS


def test_weight_file_errors(tmp_path):
    with pytest.raises(METError, match="never unpickles"):
        bad = tmp_path / "w.pth"
        bad.write_bytes(b"\x80\x04junk")
        read_state_dict(bad)
    trunc = tmp_path / "w.safetensors"
    trunc.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(METError, match="not a readable safetensors"):
        read_state_dict(trunc)
    with pytest.raises(METError, match="unknown backbone"):
        create_backbone("resnet_imaginary_99", 112)


def test_local_weights_for_another_architecture_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"head.weight": torch.zeros(1, 5, 8)}, str(tmp_path / "other.safetensors"))  # no key of a ViT
    with pytest.raises(METError, match="do not fit this backbone") as e:
        create_backbone("vit_small_patch14_dinov2", 56, str(tmp_path / "other.safetensors"))
    assert len(str(e.value)) < 400  # torch names every missing key: a 4.5 KB line before
