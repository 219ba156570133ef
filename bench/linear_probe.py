"""Frozen linear probe (logistic regression on the frozen head inputs at each exit) versus a MET checkpoint.

    python bench/linear_probe.py [--checkpoint checkpoints/cifar10-met] [--test ../shared/datasets/cifar10/test]

Trains scikit-learn's LogisticRegression on the frozen backbone's head inputs (CLS after the final
norm, exactly what MET's heads see, no adapters) of the checkpoint's own training ids (800) and of all
its sub-sampled images (train + validation, 1,000), tests on the full test split, and compares with
the checkpoint's test trace. PASS when MET is above both probes at every exit.
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
from met_core.backbones import create_backbone  # noqa: E402
from met_core.config import METConfig, config_from_dict  # noqa: E402
from met_core.data import make_transform, open_dataset  # noqa: E402
from met_core.paths import locate_dataset  # noqa: E402
from met_core.model import METModel  # noqa: E402
from met_core.traces import load_trace  # noqa: E402
from met_core.train import head_inputs, materialize  # noqa: E402
from met_core.whatif import TraceArrays, exit_accuracy_all  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "cifar10-met"))
    ap.add_argument("--test", default=str(ROOT.parent / "shared" / "datasets" / "cifar10" / "test"))
    args = ap.parse_args()
    from sklearn.linear_model import LogisticRegression

    ck = Path(args.checkpoint)
    cfg = json.loads((ck / "config.json").read_text())
    mcfg = dataclasses.replace(config_from_dict(METConfig, cfg["model"]), adapters=False)
    backbone, _ = create_backbone(mcfg.backbone, mcfg.img_size, mcfg.weights)
    probe = METModel(backbone, mcfg)
    tf = make_transform(mcfg.img_size, mcfg.mean, mcfg.std)
    root = locate_dataset(cfg["data"]["root"])
    if root is None:
        print(f"FAIL: the training images ({cfg['data']['root']}) are not on this machine; set MET_DATASET_ROOT")
        return 1
    train_all = open_dataset(str(root))
    where = {s: i for i, s in enumerate(train_all.ids)}
    test = open_dataset(args.test)
    t0 = time.perf_counter()
    feats = {}
    for name, ds in (("train", train_all.subset([where[s] for s in cfg["data"]["train_ids"]])),
                     ("val", train_all.subset([where[s] for s in cfg["data"]["val_ids"]])), ("test", test)):
        ds.transform = tf
        x, y = materialize(ds, f"decode {name}")
        feats[name] = ([f.numpy() for f in head_inputs(probe, x)], y.numpy())
        del x
    print(f"frozen features: {time.perf_counter() - t0:.0f} s")
    met = exit_accuracy_all(TraceArrays.from_trace(load_trace(ck / "test_trace.npz")))
    rows, ok = [], True
    for k in range(probe.num_exits):
        accs = []
        for use in (("train",), ("train", "val")):
            xs = np.concatenate([feats[u][0][k] for u in use])
            ys = np.concatenate([feats[u][1] for u in use])
            clf = LogisticRegression(max_iter=3000).fit(xs, ys)
            accs.append(float(clf.score(feats["test"][0][k], feats["test"][1])))
        ok &= met[k] > max(accs)
        rows.append({"exit": k + 1, "block": mcfg.exits[k], "probe_800": accs[0], "probe_1000": accs[1], "met": met[k]})
        print(f"exit {k + 1} (block {mcfg.exits[k]}): logistic-regression probe {100 * accs[0]:.2f}% (800 images) / "
              f"{100 * accs[1]:.2f}% (1,000 images); MET {100 * met[k]:.2f}% "
              f"({100 * (met[k] - max(accs)):+.2f} pt)")
    (ck / "linear_probe.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
