"""Benchmark: what-if on a 10,000-sample x 4-exit trace in under 5 ms (goal of issue 3), and one slider move
with 95 % intervals on every number (and the detail tables the app shows) in under 20 ms (issue 13).

Uses a shipped test trace when one exists (checkpoints/cifar10-met/test_trace.npz), otherwise a
generated one of the same shape. Prints the figures and PASS/FAIL.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from met_core.analysis.whatif import TraceArrays, whatif  # noqa: E402
from met_core.io.traces import Trace, load_trace  # noqa: E402

GOAL_MS = 5.0
GOAL_INTERVALS_MS = 20.0
SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "cifar10-met" / "test_trace.npz"


def trace_10k() -> tuple[Trace, str]:
    if SHIPPED.is_file():
        t = load_trace(SHIPPED)
        if len(t.labels) >= 10_000:
            return t, str(SHIPPED)
    rng = np.random.default_rng(0)
    n, k, c = 10_000, 4, 10
    logits = (rng.normal(size=(n, k, c)) * np.linspace(0.5, 3, k)[None, :, None]).astype(np.float16)
    return Trace(
        logits,
        rng.integers(0, c, n),
        np.array([str(i) for i in range(n)]),
        np.array([0.37, 0.73, 1.09, 1.44]),
        [str(i) for i in range(c)],
        np.zeros(0, int),
        np.zeros((k, 0, 8)),
    ), "generated 10,000 x 4 x 10"


def main() -> int:
    trace, source = trace_10k()
    t0 = time.perf_counter()
    arrays = TraceArrays.from_trace(trace)
    prep_ms = 1e3 * (time.perf_counter() - t0)
    times, with_ci = [], []
    for i in range(200):  # a slider sweep: a different threshold every call
        thr = 0.3 + 0.6 * (i % 50) / 50
        t0 = time.perf_counter()
        whatif(arrays, thr)
        times.append(1e3 * (time.perf_counter() - t0))
        t0 = time.perf_counter()
        whatif(arrays, thr, detail=True, intervals=True)  # what the app's slider computes
        with_ci.append(1e3 * (time.perf_counter() - t0))
    med, p95 = statistics.median(times), float(np.percentile(times, 95))
    med_ci, p95_ci = statistics.median(with_ci), float(np.percentile(with_ci, 95))
    print(f"trace: {source} ({len(trace.labels)} samples x {trace.num_exits} exits)")
    print(f"one-off preparation (softmax, scores): {prep_ms:.1f} ms")
    print(f"what-if per threshold: median {med:.3f} ms, p95 {p95:.3f} ms (goal < {GOAL_MS} ms)")
    print(
        f"with 95 % intervals and detail: median {med_ci:.3f} ms, p95 {p95_ci:.3f} ms (goal < {GOAL_INTERVALS_MS} ms)"
    )
    ok = p95 < GOAL_MS and p95_ci < GOAL_INTERVALS_MS
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
