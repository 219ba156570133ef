"""Measuring a latency profile: each piece of the real early-exit path timed at several batch sizes, in PyTorch
or over an ONNX export (warm-up, repeats, median; CUDA synchronised). The profile, its file and the prediction
made from it are met_core.analysis.latency (see its docstring for the method).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import numpy as np

from ..analysis.latency import LatencyProfile
from ..analysis.policies import exit_probs, get_policy
from .devices import timed


def _median_ms(fn: Callable[[], object], sync: Callable[[], None], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    return 1e3 * statistics.median(timed(fn, sync) for _ in range(repeats))


def _scale_to_whole_pass(
    stem_ms: list[float], stage_ms: list[list[float]], head_ms: list[list[float]], full_ms: float
) -> float:
    """Scale the last-measured stem, stage and head times so that they sum to one whole pass; returns the factor."""
    scale = full_ms / (stem_ms[-1] + sum(r[-1] for r in stage_ms) + sum(r[-1] for r in head_ms))
    stem_ms[-1] *= scale
    for r in stage_ms + head_ms:
        r[-1] *= scale
    return scale


def profile_onnx(
    runner,
    batch_sizes: Sequence[int],
    repeats: int = 10,
    warmup: int = 2,
    policy: str = "max-softmax",
    progress: Callable[[str], None] = lambda s: None,
) -> LatencyProfile:
    """The same profile for an ONNX export's runner (`met_core.engine.export.OnnxEarlyExit`): each stage graph (its
    blocks and its exit's logits; the stem is inside stage 1, so `stem_ms` is 0), each exit's softmax and exit
    test, the compaction of the continuing tokens, and one whole pass; inputs are seeded random images."""
    import platform

    import onnxruntime as ort

    pol = get_policy(policy)
    k_total, s = runner.num_exits, runner.manifest.img_size
    rng = np.random.default_rng(0)
    stem_ms, compact_ms, full_ms, scale = [], [], [], []
    stage_ms: list[list[float]] = [[] for _ in range(k_total)]
    head_ms: list[list[float]] = [[] for _ in range(k_total)]
    never = [pol.never] * (k_total - 1) + [None]
    for b in batch_sizes:
        progress(f"batch {b}")
        x = rng.standard_normal((b, 3, s, s), dtype=np.float32)
        stem_ms.append(0.0)
        tokens = x
        for k in range(k_total):
            stage_ms[k].append(_median_ms(lambda k=k, t=tokens: runner.run_stage(k, t), lambda: None, repeats, warmup))
            tokens, logits = runner.run_stage(k, tokens)
            head_ms[k].append(
                _median_ms(
                    lambda z=logits: pol.passes(pol.score(exit_probs(z)[:, None])[:, -1], 0.5),
                    lambda: None,
                    repeats,
                    warmup,
                )
            )
        keep = np.arange(b) % 2 == 0  # half continue
        compact_ms.append(
            _median_ms(lambda t=tokens, m=keep: np.ascontiguousarray(t[m]), lambda: None, repeats, warmup)
        )
        full_ms.append(_median_ms(lambda x=x: runner.run_batch(x, never, policy), lambda: None, repeats, warmup))
        scale.append(_scale_to_whole_pass(stem_ms, stage_ms, head_ms, full_ms[-1]))
    name = f"CPU ({platform.processor() or platform.machine()}, {runner.threads} threads)"
    return LatencyProfile(
        "cpu",
        name,
        runner.threads,
        f"onnxruntime {ort.__version__}",
        "fp32",
        list(batch_sizes),
        stem_ms,
        stage_ms,
        head_ms,
        compact_ms,
        full_pass_ms=full_ms,
        piece_scale=scale,
        engine="onnx",
    )


def profile_model(
    model,
    batch_sizes: Sequence[int],
    precision: str = "fp32",
    repeats: int = 10,
    warmup: int = 2,
    policy: str = "max-softmax",
    progress: Callable[[str], None] = lambda s: None,
) -> LatencyProfile:
    """Time each piece of the real early-exit path at each batch size (inputs: seeded random images)."""
    import torch

    from .devices import autocast, device_name, synchronizer

    pol = get_policy(policy)
    device = next(model.parameters()).device
    sync = synchronizer(device)

    s = model.cfg.img_size
    gen = torch.Generator().manual_seed(0)
    stem_ms, compact_ms, full_ms, scale = [], [], [], []
    never = np.array([pol.skip(model.num_exits)] * (model.num_exits - 1) + [np.inf])  # every image to the last exit
    stage_ms: list[list[float]] = [[] for _ in range(model.num_exits)]
    head_ms: list[list[float]] = [[] for _ in range(model.num_exits)]
    with torch.no_grad(), autocast(device, precision):
        for b in batch_sizes:
            progress(f"batch {b}")
            x = torch.randn(b, 3, s, s, generator=gen).to(device)
            stem_ms.append(_median_ms(lambda x=x: model.forward_stem(x), sync, repeats, warmup))
            tokens = stem = model.forward_stem(x)
            for k in range(model.num_exits):
                src = tokens if model.cfg.diagonal_mode == "stage" else stem
                stage_ms[k].append(_median_ms(lambda k=k, src=src: model.forward_stage(src, k), sync, repeats, warmup))
                tokens = model.forward_stage(src, k)

                def head(k: int = k, t: torch.Tensor = tokens) -> np.ndarray:
                    p = exit_probs(model.heads[k](model.pool(t)).float().cpu().numpy())
                    return pol.passes(pol.score(p[:, None])[:, -1], 0.5)

                head_ms[k].append(_median_ms(head, sync, repeats, warmup))
            keep = torch.arange(b, device=device) % 2 == 0  # half continue
            compact_ms.append(_median_ms(lambda t=tokens, m=keep: (t[m], m.nonzero()), sync, repeats, warmup))
            full_ms.append(_median_ms(lambda x=x: model.forward_early_exit(x, never, pol), sync, repeats, warmup))
            scale.append(_scale_to_whole_pass(stem_ms, stage_ms, head_ms, full_ms[-1]))
    return LatencyProfile(
        str(device),
        device_name(device),
        torch.get_num_threads(),
        torch.__version__,
        precision,
        list(batch_sizes),
        stem_ms,
        stage_ms,
        head_ms,
        compact_ms,
        full_pass_ms=full_ms,
        piece_scale=scale,
    )
