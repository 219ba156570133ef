"""Early exit outside PyTorch: one static ONNX graph per stage, and a small onnxruntime runner.

ONNX (and TensorRT) graphs are static and cannot hold a data-dependent exit, so each stage is its own graph:
stage 1 takes the images and returns the tokens after its blocks (with their adapters) and its exit's logits;
stage k > 1 takes the tokens of the images still running and returns the same. `exits.json` says how to chain
them (order, policy, thresholds, class names, input size, preprocessing, GMACs, the checkpoint's hash), and
`OnnxEarlyExit` runs real batched early exit over the graphs, moving only the continuing images on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..analysis.policies import EarlyExitBook, as_thresholds, get_policy
from ..config import REQUIRED, Range, TaggedFile, _f
from ..errors import METError
from ..io.checkpoint import checkpoint_hash, export_dir
from ..io.limits import MAX_WEIGHTS_BYTES, read_tagged_file, regular_file

if TYPE_CHECKING:
    from ..nn.model import EarlyExitResult, METModel

FORMAT = "met-onnx-exits/1"
EXITS_FILE = "exits.json"
OPSET = 17
INT8_OPS = ["MatMul", "Gemm"]  # the operators int8 export quantizes (LayerNorm, Softmax and GELU stay fp32)


@dataclass
class ExitsManifest(TaggedFile):
    """What a runner needs besides the graphs."""

    FORMAT = FORMAT
    stages: list[str] = _f(REQUIRED, "The stage graphs' file names, in order.", max_len=64)
    policy: str = _f(REQUIRED, "The exit policy's name.", max_len=64)
    thresholds: list[float | None] = _f(REQUIRED, "One threshold per stage; null for the last.", max_len=64)
    class_names: list[str] = _f(REQUIRED, "Class names, in label order.", max_len=100_000)
    img_size: int = _f(REQUIRED, "Input resolution in pixels (square).", Range(16, 1024))
    preprocessing: dict[str, Any] = _f(REQUIRED, "mean, std and interpolation, as the checkpoint records them.")
    gmacs: list[float] = _f(REQUIRED, "GMACs per exit.", max_len=64)
    checkpoint_sha256: str = _f(REQUIRED, "Hash of the checkpoint exported.", max_len=64)
    quantization: Literal["fp32", "int8"] = _f(
        "fp32", "'fp32', or 'int8': weights of the matrix products int8, activations quantized per run."
    )

    def check(self, what: str) -> None:
        """As many thresholds and GMACs as stages, a known policy and a usable preprocessing record."""
        if not (0 < len(self.stages) and len(self.thresholds) == len(self.stages) == len(self.gmacs)):
            raise METError(f"{what} is inconsistent (stages, thresholds, GMACs).")
        get_policy(self.policy)
        pre = self.preprocessing
        if not (
            all(isinstance(pre.get(k), list) and len(pre[k]) == 3 for k in ("mean", "std"))
            and pre.get("interpolation", "bicubic") in ("bicubic", "bilinear")
        ):
            raise METError(f"{what} has no usable preprocessing record.")

    def transform(self) -> Any:
        """The preprocessing the exported model expects (as the checkpoint records it)."""
        from ..data.datasets import make_transform

        p = self.preprocessing
        return make_transform(self.img_size, p["mean"], p["std"], p.get("interpolation", "bicubic"))


def stage_module(model: METModel, k: int):
    """Stage k as a module: (images or tokens) -> (tokens after the stage, the exit's logits)."""
    import torch

    class Stage(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            tokens = self.model.forward_stage(self.model.forward_stem(x) if k == 0 else x, k)
            return tokens, self.model.heads[k](self.model.pool(tokens))

    return Stage().eval()


def export_onnx(
    model: METModel,
    out: Path,
    policy: str,
    thresholds: Any,
    checkpoint_sha256: str,
    gmacs: list[float],
    quantize: str = "fp32",
) -> ExitsManifest:
    """Write stage_1.onnx ... stage_K.onnx and exits.json; each graph is validated with the onnx checker.

    quantize="int8": onnxruntime's dynamic quantization of each graph (the matrix products' weights stored in
    int8, one scale per output channel; activations quantized on the fly, no calibration set), written in place
    of the fp32 graphs. Chosen over per-tensor dynamic and static (QDQ, calibrated on training images)
    quantization on held-out images: `bench/int8.py`."""
    import warnings

    import onnx
    import torch

    from ..data.datasets import preprocessing_record

    if model.cfg.diagonal_mode != "stage":
        raise METError(
            "this checkpoint uses per-exit-path diagonals: each exit recomputes every block from the "
            "stem, so it cannot be exported stage by stage; export a model trained with --diagonal-mode "
            "stage."
        )
    if quantize not in ("fp32", "int8"):
        raise METError(f"--quantize must be fp32 or int8, got {quantize!r}.")
    pol = get_policy(policy)
    t = as_thresholds(thresholds, model.num_exits, pol)
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    s, names = model.cfg.img_size, []
    x = torch.zeros(2, 3, s, s)
    with torch.no_grad():
        for k in range(model.num_exits):
            name = f"stage_{k + 1}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    stage_module(model, k),
                    (x,),
                    str(out / name),
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=["input"],
                    output_names=["tokens", "logits"],
                    dynamic_axes={"input": {0: "batch"}, "tokens": {0: "batch"}, "logits": {0: "batch"}},
                )
            onnx.checker.check_model(str(out / name))
            if quantize == "int8":
                quantize_int8(out / name)
            names.append(name)
            x, _ = stage_module(model, k)(x)
    manifest = ExitsManifest(
        names,
        pol.name,
        [float(v) if np.isfinite(v) else None for v in t],
        list(model.cfg.class_names),
        s,
        preprocessing_record(model.cfg),
        list(gmacs),
        checkpoint_sha256,
        quantize,
    )
    (out / EXITS_FILE).write_text(manifest.to_json() + "\n")
    return manifest


def quantize_int8(path: Path) -> None:
    """Replace an fp32 graph by its dynamically quantized int8 version (onnxruntime's `quantize_dynamic`: MatMul and
    Gemm weights signed int8 with one scale per output channel, activations quantized per run)."""
    import logging
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory() as tmp:
        q = Path(tmp) / path.name
        try:
            root.setLevel(logging.ERROR)  # the quantizer logs advice on the root logger at WARNING, for every graph
            quantize_dynamic(
                str(path), str(q), weight_type=QuantType.QInt8, op_types_to_quantize=INT8_OPS, per_channel=True
            )
        finally:
            root.setLevel(level)
        q.replace(path)


def read_manifest(folder: Path) -> ExitsManifest:
    """exits.json of an export folder, checked (untrusted: bounded, its fields as declared above, graphs inside the
    folder)."""
    m = read_tagged_file(
        ExitsManifest, folder / EXITS_FILE, "an export manifest", "export the checkpoint again", inside=folder
    )
    for name in m.stages:
        regular_file(folder / name, "a stage graph", MAX_WEIGHTS_BYTES, inside=folder)
    return m


def check_export(runner: OnnxEarlyExit, checkpoint: str | Path) -> None:
    """One sentence when an export's runner was made from another checkpoint than `checkpoint`."""
    if runner.manifest.checkpoint_sha256 != checkpoint_hash(checkpoint):
        raise METError(
            f"the ONNX export in {runner.folder} was made from another checkpoint; export this one again (met export)."
        )


def open_export(checkpoint: str | Path, folder: str | Path | None = None) -> OnnxEarlyExit:
    """The runner of a checkpoint's ONNX export (`folder`, default CHECKPOINT/onnx), checked to be of it."""
    runner = OnnxEarlyExit(export_dir(checkpoint, folder))
    check_export(runner, checkpoint)
    return runner


def session_options(threads: int):
    """onnxruntime options for the stage graphs: every graph optimisation, `threads` intra-op threads, one op at a
    time, and threads that sleep instead of spinning between runs. K sessions run one after another, each with its
    own pool; spinning pools take the cores from the next stage (and from anything else on the machine): on the
    2 shared cores here that made batch 8 about twice as slow as PyTorch."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


class OnnxEarlyExit:
    """Real batched early exit over the per-stage graphs with onnxruntime.

    `threads`: intra-op threads of each stage's session (default: torch's thread count, so both engines use the
    same cores).
    """

    def __init__(self, folder: str | Path, providers: list[str] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort
        import torch

        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.threads = threads or torch.get_num_threads()
        so = session_options(self.threads)
        self.sessions = [
            ort.InferenceSession(str(self.folder / n), so, providers=providers or ["CPUExecutionProvider"])
            for n in self.manifest.stages
        ]

    @property
    def num_exits(self) -> int:
        return len(self.sessions)

    def run_stage(self, k: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage k's graph: (images or tokens, float32 C-contiguous) -> (tokens after the stage, exit k's logits)."""
        tokens, logits = self.sessions[k].run(None, {"input": x})
        return tokens, logits

    def all_logits(self, x: np.ndarray) -> np.ndarray:
        """Every exit's logits (N, K, C) of preprocessed images (N, 3, S, S), no early exit: what a trace stores."""
        tokens, out = np.ascontiguousarray(x, dtype=np.float32), []
        for k in range(self.num_exits):
            tokens, logits = self.run_stage(k, tokens)
            out.append(logits)
        return np.stack(out, 1)

    def __call__(
        self,
        x: np.ndarray,
        thresholds: Any = None,
        policy: str | None = None,
        batch_size: int = 64,
        replay: np.ndarray | None = None,
    ) -> EarlyExitResult:
        """Early exit of preprocessed images (N, 3, S, S), in batches; `replay` (N,) gives each image's exit
        instead of the rule (as `METModel.forward_early_exit`)."""
        from ..nn.model import EarlyExitResult

        parts = [
            self.run_batch(
                x[i : i + batch_size], thresholds, policy, None if replay is None else replay[i : i + batch_size]
            )
            for i in range(0, len(x), batch_size)
        ]
        return EarlyExitResult(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("classes", "exits", "confidence", "probs"))
        )

    def run_batch(
        self, x: np.ndarray, thresholds: Any = None, policy: str | None = None, replay: np.ndarray | None = None
    ) -> EarlyExitResult:
        """One batch: stage by stage, the images that pass their exit's threshold leave it."""
        from ..nn.model import EarlyExitResult

        pol = get_policy(policy or self.manifest.policy)
        t = as_thresholds(self.manifest.thresholds if thresholds is None else thresholds, self.num_exits, pol)
        book = EarlyExitBook(len(x), self.num_exits, len(self.manifest.class_names), pol, t, replay)
        tokens = np.ascontiguousarray(x, dtype=np.float32)
        for k in range(self.num_exits):
            tokens, logits = self.run_stage(k, tokens)
            leave = book.leave(k, logits)
            if book.active.size == 0:
                break
            if leave.any():
                tokens = np.ascontiguousarray(tokens[~leave])
        return EarlyExitResult(*book.result())
