"""Frozen linear probe (logistic regression on the frozen head inputs at each exit) versus a MET checkpoint.

    python bench/linear_probe.py [--checkpoint checkpoints/cifar10-met] [--test ../shared/datasets/cifar10/test]
    python bench/linear_probe.py --select    # the head-input choice, made on the validation split only
    python bench/linear_probe.py --select --img-size 224    # the same probes at another input size

Trains scikit-learn's LogisticRegression on the frozen backbone's features after the final norm (no
adapters): MET's own head input, and the CLS token (the probe issue #2 quotes), on the checkpoint's own
training ids (800) and on all its sub-sampled images (train + validation, 1,000); tests on the full
test split and compares with the checkpoint's test trace. PASS when MET is above every probe at every exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from met_core.analysis.whatif import TraceArrays, exit_accuracy_all  # noqa: E402
from met_core.config import METConfig, config_from_dict  # noqa: E402
from met_core.data.datasets import (  # noqa: E402
    decode_all,  # noqa: E402
    make_transform,
    open_dataset,
)
from met_core.engine.inference import head_inputs  # noqa: E402
from met_core.io.paths import locate_dataset  # noqa: E402
from met_core.io.traces import load_trace  # noqa: E402
from met_core.nn.backbones import create_backbone  # noqa: E402
from met_core.nn.model import METModel  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "cifar10-met"))
    ap.add_argument("--test", default=str(ROOT.parent / "shared" / "datasets" / "cifar10" / "test"))
    ap.add_argument(
        "--select",
        action="store_true",
        help="choose the head input on the validation split instead: probes of each input trained on the "
        "800 training ids, scored on the 200 validation ids (the test split is not read)",
    )
    ap.add_argument(
        "--img-size",
        type=int,
        default=None,
        help="with --select: probe the backbone at this input size instead of the checkpoint's",
    )
    args = ap.parse_args()
    if args.img_size is not None and not args.select:
        ap.error(
            "--img-size goes with --select: the comparison with MET's test trace (and the linear_probe.json "
            "that RESULTS.md reads) must use the checkpoint's own input size."
        )
    from sklearn.linear_model import LogisticRegression

    ck = Path(args.checkpoint)
    cfg = json.loads((ck / "config.json").read_text())
    mcfg = config_from_dict(METConfig, cfg["model"])
    if args.img_size is not None:
        mcfg = dataclasses.replace(mcfg, img_size=args.img_size)
    # one frozen pass gives both inputs: 'cls+mean' features are [CLS | mean of patch tokens]
    pcfg = dataclasses.replace(mcfg, adapters=False, head_input="cls+mean")
    backbone, _ = create_backbone(mcfg.backbone, mcfg.img_size, mcfg.weights)
    probe = METModel(backbone, pcfg)
    dim = backbone.embed_dim
    columns = {"cls": slice(0, dim), "mean": slice(dim, 2 * dim), "cls+mean": slice(0, 2 * dim)}
    tf = make_transform(mcfg.img_size, mcfg.mean, mcfg.std)
    root = locate_dataset(cfg["data"]["root"])
    if root is None:
        print(f"FAIL: the training images ({cfg['data']['root']}) are not on this machine; set MET_DATASET_ROOT")
        return 1
    train_all = open_dataset(str(root))
    where = {s: i for i, s in enumerate(train_all.ids)}
    t0 = time.perf_counter()
    feats = {}
    splits = [
        ("train", train_all.subset([where[s] for s in cfg["data"]["train_ids"]])),
        ("val", train_all.subset([where[s] for s in cfg["data"]["val_ids"]])),
    ]
    for name, ds in splits if args.select else splits + [("test", open_dataset(args.test))]:
        ds.transform = tf
        x, y = decode_all(ds, f"decode {name}")
        feats[name] = ([f.numpy() for f in head_inputs(probe, x)], y.numpy())
        del x
    print(f"frozen features: {time.perf_counter() - t0:.0f} s")
    if args.select:
        for k in range(probe.num_exits):
            accs = {
                kind: LogisticRegression(max_iter=3000)
                .fit(feats["train"][0][k][:, col], feats["train"][1])
                .score(feats["val"][0][k][:, col], feats["val"][1])
                for kind, col in columns.items()
            }
            print(
                f"exit {k + 1} (block {mcfg.exits[k]}), validation accuracy of an 800-image probe: "
                + ", ".join(f"{kind} {100 * a:.1f}%" for kind, a in accs.items())
            )
        return 0
    met = exit_accuracy_all(TraceArrays.from_trace(load_trace(ck / "test_trace.npz")))
    rows, ok = [], True
    kinds = list(dict.fromkeys([mcfg.head_input, "cls"]))  # MET's own head input, and the CLS token
    for k in range(probe.num_exits):
        row = {"exit": k + 1, "block": mcfg.exits[k], "met": met[k]}
        for kind in kinds:
            col = columns[kind]
            for use in (("train",), ("train", "val")):
                xs = np.concatenate([feats[u][0][k][:, col] for u in use])
                ys = np.concatenate([feats[u][1] for u in use])
                clf = LogisticRegression(max_iter=3000).fit(xs, ys)
                acc = float(clf.score(feats["test"][0][k][:, col], feats["test"][1]))
                row[f"probe_{kind}_{len(ys)}"] = acc
                ok &= met[k] > acc
        rows.append(row)
        print(
            f"exit {k + 1} (block {mcfg.exits[k]}): MET {100 * met[k]:.2f}%; logistic-regression probes "
            + ", ".join(
                f"{name.removeprefix('probe_').replace('_', ', ')} images {100 * v:.2f}% ({100 * (met[k] - v):+.2f} pt)"
                for name, v in row.items()
                if name.startswith("probe_")
            )
        )
    (ck / "linear_probe.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
