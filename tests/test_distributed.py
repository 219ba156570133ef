"""Data parallelism on PyTorch's own engine (gloo on CPU) gives what one process gives, on real images.

- the gradient of one step over 2 processes (DDP average, graph regularizer on the gathered global batch)
  equals the single-process gradient of the same global batch;
- `torchrun --nproc_per_node 2 -m met_core train` writes the tensors a single-process run writes;
- a 2-process `trace` writes the arrays of a 1-process trace.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from .conftest import CIFAR_TEST, CIFAR_TRAIN, ROOT, run_cli, train_args

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _batch(n: int = 24):
    """A real global batch: CIFAR-10 training images of 6 classes (4 each), preprocessed at 56 px."""
    from met_core.data.datasets import make_transform, open_dataset

    ds = open_dataset(str(CIFAR_TRAIN))
    idx = np.concatenate([np.flatnonzero(ds.labels == c)[:4] for c in range(6)])
    ds = ds.subset(np.random.default_rng(0).permutation(idx)[:n])
    ds.transform = make_transform(56, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return torch.stack([ds[i][0] for i in range(len(ds))]), torch.as_tensor(ds.labels)


def _model(backbone):
    from met_core.config import METConfig
    from met_core.nn.model import METModel

    torch.manual_seed(0)
    model = METModel(backbone, METConfig(img_size=56, num_classes=10, head_input="cls+mean"))
    for up in model.adapters.up:  # leave the zero start, so every adapter tensor gets a gradient
        torch.nn.init.normal_(up.weight, std=0.02)
    return model


def _grads(rank: int, world: int, kind: str, out: str, port: int) -> None:
    """One step's gradient of the trainable tensors, as process `rank` of `world` sees it after DDP."""
    from met_core.data.sampling import shard
    from met_core.engine.distributed import DistContext, gather_rows, init_distributed, shutdown
    from met_core.engine.train import wrap_for_training
    from met_core.nn.backbones import create_backbone
    from met_core.nn.losses import met_loss

    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    ctx = init_distributed("cpu") if world > 1 else DistContext()
    x, y = _batch()
    model = _model(create_backbone("dinov2_s14_imgfocus", 56)[0])
    step = wrap_for_training(model, ctx, torch.device("cpu"))
    idx = torch.from_numpy(shard(np.arange(len(y)), rank, world))
    feats, logits = step(x[idx])
    loss, _ = met_loss(
        logits,
        feats,
        y[idx],
        graph_reg=0.5,
        kind=kind,
        knn_k=3,
        distill=0.3,
        global_batch=len(y),
        world_size=world,
        gather=(lambda t: gather_rows(t, ctx)) if ctx.enabled else None,
    )
    loss.backward()
    if rank == 0:
        torch.save({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, out)
    shutdown(ctx)


@pytest.mark.parametrize("kind", ["label", "knn"])
def test_two_process_gradient_equals_single_process_gradient(kind, tmp_path):
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    _grads(0, 1, kind, one, 0)
    port = 29500 + os.getpid() % 1000
    mp.spawn(_grads, args=(2, kind, two, port), nprocs=2, join=True)
    g1, g2 = torch.load(one), torch.load(two)
    assert g1.keys() == g2.keys() and len(g1) > 10
    for name in g1:
        scale = float(g1[name].abs().max())
        assert scale > 0, name  # every trainable tensor takes part
        assert torch.allclose(g1[name], g2[name], rtol=1e-4, atol=1e-6 * scale), (
            name,
            scale,
            float((g1[name] - g2[name]).abs().max()),
        )


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "met_core",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_torchrun_training_writes_the_single_process_tensors(tmp_path):
    from safetensors.torch import load_file

    common = train_args(
        CIFAR_TRAIN, 6, 56, "--batch-size", "20", "--warmup-epochs", "0", "--graph-reg", "0.5", "--workers", "0"
    )
    run_cli(*common, "--out", str(tmp_path / "one"))
    proc = _torchrun(*common, "--out", str(tmp_path / "two"))
    assert proc.stderr.count("data path: memory") == 1  # only rank 0 logs
    a, b = (
        load_file(str(tmp_path / "one" / "model.safetensors")),
        load_file(str(tmp_path / "two" / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    moved = max(float(v.abs().max()) for k, v in a.items() if ".up." in k)
    assert moved > 1e-4  # the adapters trained
    # Adam divides each gradient by its own running size, so float noise in a near-zero gradient shows up
    # as ~1e-5 after a few steps (the gradient itself matches to 1e-4 relative: the test above)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), (k, float((a[k] - b[k]).abs().max()))
    import json

    run = json.loads((tmp_path / "two" / "config.json").read_text())["runtime"]
    assert run["world_size"] == 2 and run["precision"] == "fp32" and run["device"] == "cpu"


def test_torchrun_trace_writes_the_single_process_trace(tiny_checkpoint, tmp_path):
    from met_core.io.traces import load_trace

    common = [
        "trace",
        "--checkpoint",
        str(tiny_checkpoint),
        "--dataset",
        str(CIFAR_TEST),
        "--limit",
        "150",
        "--features",
        "40",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--quiet",
    ]
    run_cli(*common, "--out", str(tmp_path / "one.npz"))
    _torchrun(*common, "--out", str(tmp_path / "two.npz"))
    a, b = load_trace(tmp_path / "one.npz"), load_trace(tmp_path / "two.npz")
    assert (a.ids == b.ids).all() and (a.labels == b.labels).all() and (a.feature_index == b.feature_index).all()
    assert (a.gmacs == b.gmacs).all() and a.meta == b.meta
    np.testing.assert_allclose(a.logits.astype(np.float32), b.logits.astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(a.features.astype(np.float32), b.features.astype(np.float32), atol=2e-3)
    assert (a.logits.argmax(-1) == b.logits.argmax(-1)).mean() > 0.99


def test_the_streaming_path_trains_what_the_memory_path_trains_and_augmentation_is_seeded(tmp_path):
    """Same planned batches, same decode: the two data paths give the same tensors; a seeded run with
    augmentation and a loader worker repeats itself exactly."""
    from safetensors.torch import load_file

    common = train_args(CIFAR_TRAIN, 4, 56, "--batch-size", "20")
    for name, extra in (
        ("memory", ["--data-path", "memory", "--workers", "0"]),
        ("stream", ["--data-path", "stream", "--workers", "1"]),
        ("aug1", ["--augment", "standard", "--workers", "1"]),
        ("aug2", ["--augment", "standard", "--workers", "1"]),
    ):
        proc = run_cli(*common, *extra, "--out", str(tmp_path / name))
        assert f"data path: {'memory' if name == 'memory' else 'stream'}" in proc.stderr
    t = {n: load_file(str(tmp_path / n / "model.safetensors")) for n in ("memory", "stream", "aug1", "aug2")}
    for k in t["memory"]:
        assert torch.allclose(t["memory"][k], t["stream"][k], atol=1e-6), k
        assert torch.equal(t["aug1"][k], t["aug2"][k]), k
    assert any(not torch.allclose(t["memory"][k], t["aug1"][k]) for k in t["memory"])  # augmentation changed it
