"""Measuring a latency profile: each piece of the real early-exit path timed at several batch sizes, in PyTorch
or over an ONNX export (warm-up, repeats in turns over the pieces, median; CUDA synchronised). The profile, its file
and the prediction made from it are met_core.analysis.latency (see its docstring for the method).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import numpy as np

from ..analysis.latency import LatencyProfile
from ..analysis.policies import exit_probs, get_policy
from .devices import timed


def _median_ms_each(
    pieces: Sequence[Callable[[], object]], sync: Callable[[], None], repeats: int, warmup: int
) -> list[float]:
    """Median ms of each piece, timed in turns: each repetition times every piece once. On shared cores the machine
    has slow spells longer than one piece's repeats (at batch 1 and 8 a piece's ten runs take tens of ms); timed in
    turns, a spell falls on one repetition of every piece, which the median drops, instead of on all repetitions of
    one piece (a stage timed 25 ms instead of 13 in one int8 profile at batch 8)."""
    for _ in range(warmup):
        for fn in pieces:
            fn()
    times: list[list[float]] = [[] for _ in pieces]
    for _ in range(repeats):
        for t, fn in zip(times, pieces):
            t.append(timed(fn, sync))
    return [1e3 * statistics.median(t) for t in times]


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
        inputs, logits = [x], []
        for k in range(k_total):
            tokens, z = runner.run_stage(k, inputs[-1])
            inputs.append(tokens)
            logits.append(z)
        keep = np.arange(b) % 2 == 0  # half continue
        ms = _median_ms_each(
            [lambda k=k, t=inputs[k]: runner.run_stage(k, t) for k in range(k_total)]
            + [lambda z=z: pol.passes(pol.score(exit_probs(z)[:, None])[:, -1], 0.5) for z in logits]
            + [lambda t=inputs[-1], m=keep: np.ascontiguousarray(t[m]), lambda x=x: runner.run_batch(x, never, policy)],
            lambda: None,
            repeats,
            warmup,
        )
        stem_ms.append(0.0)
        for k in range(k_total):
            stage_ms[k].append(ms[k])
            head_ms[k].append(ms[k_total + k])
        compact_ms.append(ms[-2])
        full_ms.append(ms[-1])
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
    k_total = model.num_exits
    device = next(model.parameters()).device
    sync = synchronizer(device)

    s = model.cfg.img_size
    gen = torch.Generator().manual_seed(0)
    stem_ms, compact_ms, full_ms, scale = [], [], [], []
    never = np.array([pol.skip(k_total)] * (k_total - 1) + [np.inf])  # every image to the last exit
    stage_ms: list[list[float]] = [[] for _ in range(k_total)]
    head_ms: list[list[float]] = [[] for _ in range(k_total)]

    def head(k: int, t: torch.Tensor) -> np.ndarray:  # exit k's head and exit test
        p = exit_probs(model.heads[k](model.pool(t)).float().cpu().numpy())
        return pol.passes(pol.score(p[:, None])[:, -1], 0.5)

    with torch.no_grad(), autocast(device, precision):
        for b in batch_sizes:
            progress(f"batch {b}")
            x = torch.randn(b, 3, s, s, generator=gen).to(device)
            stem = model.forward_stem(x)
            srcs, outs = [], [stem]
            for k in range(k_total):
                srcs.append(outs[-1] if model.cfg.diagonal_mode == "stage" else stem)
                outs.append(model.forward_stage(srcs[-1], k))

            keep = torch.arange(b, device=device) % 2 == 0  # half continue
            ms = _median_ms_each(
                [lambda x=x: model.forward_stem(x)]
                + [lambda k=k, src=srcs[k]: model.forward_stage(src, k) for k in range(k_total)]
                + [lambda k=k, t=outs[k + 1]: head(k, t) for k in range(k_total)]
                + [
                    lambda t=outs[-1], m=keep: (t[m], m.nonzero()),
                    lambda x=x: model.forward_early_exit(x, never, pol),
                ],
                sync,
                repeats,
                warmup,
            )
            stem_ms.append(ms[0])
            for k in range(k_total):
                stage_ms[k].append(ms[1 + k])
                head_ms[k].append(ms[1 + k_total + k])
            compact_ms.append(ms[-2])
            full_ms.append(ms[-1])
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
