"""Early exit outside PyTorch: one static ONNX graph per stage, and a small onnxruntime runner.

ONNX (and TensorRT) graphs are static and cannot hold a data-dependent exit, so each stage is its own graph:
stage 1 takes the images and returns the tokens after its blocks (with their adapters) and its exit's logits;
stage k > 1 takes the tokens of the images still running and returns the same. `exits.json` says how to chain
them (order, policy, thresholds, class names, input size, preprocessing, GMACs, the checkpoint's hash), and
`OnnxEarlyExit` runs real batched early exit over the graphs, moving only the continuing images on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..analysis.policies import EarlyExitBook, as_thresholds, get_policy
from ..config import REQUIRED, METConfig, Range, TaggedFile, _f, config_from_dict
from ..errors import METError
from ..io.checkpoint import CONFIG_FILE, checkpoint_hash, export_dir, read_config
from ..io.limits import MAX_WEIGHTS_BYTES, read_tagged_file, regular_file

if TYPE_CHECKING:
    from ..nn.model import EarlyExitResult, METModel

FORMAT = "met-onnx-exits/1"
EXITS_FILE = "exits.json"
OPSET = 17
INT8_OPS = ["MatMul", "Gemm"]  # the operators int8 export quantizes (LayerNorm, Softmax and GELU stay fp32)
REEXPORT = "re-export with met export"


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
        """As many thresholds and GMACs as stages, GMACs positive and non-decreasing over the exits, at least two
        class names, a known policy and a usable preprocessing record; METError (one sentence) otherwise."""
        if not (0 < len(self.stages) and len(self.thresholds) == len(self.stages) == len(self.gmacs)):
            raise METError(f"{what} is inconsistent (stages, thresholds, GMACs).")
        gm = np.asarray(self.gmacs, dtype=np.float64)
        if not (np.isfinite(gm).all() and (gm > 0).all() and (np.diff(gm) >= 0).all()):
            raise METError(
                f"{what} has GMACs {_short(self.gmacs)}, but they must be positive and non-decreasing over the exits"
            )
        if len(self.class_names) < 2:
            raise METError(f"{what} names {len(self.class_names)} classes, but a model has at least 2")
        get_policy(self.policy)
        pre = self.preprocessing
        if not (
            all(
                isinstance(pre.get(k), list)
                and len(pre[k]) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in pre[k])
                for k in ("mean", "std")
            )
            and all(v > 0 for v in pre["std"])
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
    """exits.json of an export folder, checked (untrusted: bounded, its fields as declared above and by
    `ExitsManifest.check`, graphs inside the folder); METError (one sentence) otherwise."""
    m = read_tagged_file(
        ExitsManifest, folder / EXITS_FILE, "an export manifest", "export the checkpoint again", inside=folder
    )
    for name in m.stages:
        regular_file(folder / name, "a stage graph", MAX_WEIGHTS_BYTES, inside=folder)
    return m


def _short(value: Any, limit: int = 80) -> str:
    """A value for a sentence: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ...]"


def config_gmacs(mcfg: METConfig) -> list[float]:
    """GMACs per exit of the model a checkpoint's config describes (`nn.checkpoint.meta_model`: no memory, no
    weights): what `met export` records."""
    from ..nn.checkpoint import meta_model
    from ..nn.flops import exit_gmacs

    return exit_gmacs(meta_model(mcfg))


def check_export(runner: OnnxEarlyExit, checkpoint: str | Path) -> None:
    """Refuse, in one METError sentence, a runner whose export is not of `checkpoint`: made from another checkpoint
    (exits.json's checkpoint_sha256), or with an exits.json whose image size, preprocessing (mean, std,
    interpolation), class names or GMACs per exit differ from what the checkpoint's config.json implies (exits.json
    is not covered by the hash: an edit of it would silently change every answer)."""
    if runner.manifest.checkpoint_sha256 != checkpoint_hash(checkpoint):
        raise METError(
            f"the ONNX export in {runner.folder} was made from another checkpoint; export this one again (met export)."
        )
    path = Path(checkpoint)
    mcfg = config_from_dict(METConfig, read_config(path, own_weights=True)["model"], str(path / CONFIG_FILE))
    m, pre = runner.manifest, runner.manifest.preprocessing
    fields: list[tuple[str, Any, Any, bool]] = [  # (name, exits.json's, the checkpoint's, numbers?)
        ("img_size", m.img_size, mcfg.img_size, False),
        ("preprocessing mean", pre["mean"], mcfg.mean, True),
        ("preprocessing std", pre["std"], mcfg.std, True),
        ("preprocessing interpolation", pre.get("interpolation", "bicubic"), mcfg.interpolation, False),
        ("class_names", m.class_names, mcfg.class_names, False),
    ]
    for name, have, want, numbers in fields:
        if not _same(have, want, numbers):
            raise METError(
                f"{runner.folder / EXITS_FILE} says {name} is {_short(have)} but the checkpoint {path} says "
                f"{_short(want)}: {REEXPORT}."
            )
    gm = config_gmacs(mcfg)
    if not _same(m.gmacs, gm, True):
        raise METError(
            f"{runner.folder / EXITS_FILE} says gmacs is {_short([float(f'{g:.6g}') for g in m.gmacs])} but the "
            f"checkpoint {path} says {_short([float(f'{g:.6g}') for g in gm])}: {REEXPORT}."
        )


def _same(have: Any, want: Any, numbers: bool) -> bool:
    """Equal; lists of numbers to a relative 1e-6 (what a JSON round trip or a hand's reformatting may change)."""
    if not numbers:
        return list(have) == list(want) if isinstance(want, list) else have == want
    a, b = np.asarray(have, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-6, atol=0))


def open_export(checkpoint: str | Path, folder: str | Path | None = None) -> OnnxEarlyExit:
    """The runner of a checkpoint's ONNX export (`folder`, default CHECKPOINT/onnx), checked to be of it
    (`check_export`). Raises METError (one sentence) for a damaged or foreign export (see `OnnxEarlyExit`)."""
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


@functools.cache
def ort_errors() -> tuple[type[BaseException], ...]:
    """The exceptions onnxruntime raises for a graph it cannot load or run (InvalidProtobuf, InvalidGraph, Fail,
    InvalidArgument, ...: its own classes, not RuntimeError's), with the OS's and Python's."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    own = tuple(c for c in vars(state).values() if isinstance(c, type) and issubclass(c, Exception))
    return (*own, RuntimeError, OSError, ValueError)


def _dims(shape: list[Any]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


class OnnxEarlyExit:
    """Real batched early exit over the per-stage graphs with onnxruntime.

    `threads`: intra-op threads of each stage's session (default: torch's thread count, so both engines use the
    same cores).

    The folder is untrusted: opening it raises METError (one sentence naming the file) for a damaged exits.json
    (`read_manifest`), a stage graph onnxruntime cannot load, and graphs whose declared inputs and outputs do not
    chain as exits.json says (`check_graphs`: out of order, another image size, another number of classes), before
    any image is run. That the export is of a given checkpoint is `check_export`'s (`open_export` does both).
    """

    def __init__(self, folder: str | Path, providers: list[str] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort
        import torch

        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.threads = threads or torch.get_num_threads()
        so = session_options(self.threads)
        errors = ort_errors()
        self.sessions = []
        for n in self.manifest.stages:
            try:
                session = ort.InferenceSession(
                    str(self.folder / n), so, providers=providers or ["CPUExecutionProvider"]
                )
            except errors as e:
                raise METError(
                    f"{self.folder / n} is damaged or not an ONNX graph ({type(e).__name__}): {REEXPORT}."
                ) from None
            self.sessions.append(session)
        self.check_graphs()

    def check_graphs(self) -> None:
        """Each stage graph's declared input and outputs against exits.json: one float input 'input' and two float
        outputs 'tokens' (batch, T, D) and 'logits' (batch, len(class_names)); stage 1 takes images (batch, 3,
        img_size, img_size), stage k > 1 the tokens stage k - 1 hands on. METError (one sentence) otherwise."""
        m, manifest = self.manifest, self.folder / EXITS_FILE
        prev: list[Any] | None = None
        for k, (name, session) in enumerate(zip(m.stages, self.sessions, strict=True)):
            g = self.folder / name
            ins, outs = session.get_inputs(), session.get_outputs()
            if not (
                [i.name for i in ins] == ["input"]
                and [o.name for o in outs] == ["tokens", "logits"]
                and all(a.type == "tensor(float)" for a in (*ins, *outs))
                and len(outs[0].shape) == 3
                and len(outs[1].shape) == 2
            ):
                sig = ", ".join(f"{a.name} {_dims(a.shape)}" for a in (*ins, *outs))
                raise METError(
                    f"{g} is not a MET stage graph (it declares {sig}; a stage takes 'input' and returns 'tokens' "
                    f"and 'logits' in float32): {REEXPORT}."
                )
            shape = list(ins[0].shape)
            if k == 0:
                if len(shape) != 4 or shape[1] != 3:
                    raise METError(
                        f"{g} takes {_dims(shape)}, not images (batch, 3, H, W), so it cannot be the first stage: the "
                        f"stage graphs are out of order or not of one export; {REEXPORT}."
                    )
                if shape[2:] != [m.img_size, m.img_size]:
                    raise METError(
                        f"{manifest} says img_size is {m.img_size} but {g} takes {shape[2]}x{shape[3]} images: "
                        f"{REEXPORT}."
                    )
            elif prev is None or shape[1:] != prev[1:] or len(shape) != 3:
                raise METError(
                    f"{g} takes {_dims(shape)} but the stage before it hands on tokens {_dims(prev or [])}: the stage "
                    f"graphs are out of order or not of one export; {REEXPORT}."
                )
            width = outs[1].shape[1]
            if width != len(m.class_names):
                raise METError(
                    f"{manifest} names {len(m.class_names)} classes but {g} returns {width} logits per image: "
                    f"{REEXPORT}."
                )
            prev = list(outs[0].shape)

    @property
    def num_exits(self) -> int:
        return len(self.sessions)

    def run_stage(self, k: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage k's graph: (images or tokens, float32 C-contiguous) -> (tokens after the stage, exit k's logits).
        METError (one sentence) when onnxruntime fails on it: a graph that loaded and declared the right shapes
        but does not run is damaged."""
        try:
            tokens, logits = self.sessions[k].run(None, {"input": x})
        except ort_errors() as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise METError(
                f"{self.folder / self.manifest.stages[k]} failed to run ({type(e).__name__}: {first.rstrip('.')}); "
                f"if the export is damaged, {REEXPORT}."
            ) from None
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
