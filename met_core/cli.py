"""`python -m met_core SUBCOMMAND`: train, trace, info.

User errors (METError, missing paths, bad files) print one line `error: ...` and exit with code 2;
no tracebacks. `--json` prints a machine-readable result on stdout; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence, get_args, get_origin, get_type_hints

import numpy as np

from .config import METConfig, TrainConfig, config_from_dict
from .errors import METError
from .flops import MAC_NOTE

# fields that the CLI derives instead of taking as flags
DERIVED = {"num_classes", "class_names", "weights_sha256"}


def _list_parser(item: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [item(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {item.__name__}, got {text!r}") from None
    return parse


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One flag per dataclass field, typed, with the field's help string and default."""
    group = parser.add_argument_group(title)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in DERIVED:
            continue
        flag, hint = "--" + f.name.replace("_", "-"), hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f"{f.metadata.get('help', '')} (default: {default})"
        if hint is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif get_origin(hint) is list:
            group.add_argument(flag, dest=f.name, type=_list_parser(get_args(hint)[0]), default=None, help=help_,
                               metavar="A,B,...")
        elif get_origin(hint) is not None and get_args(hint) and all(isinstance(a, str) for a in get_args(hint)):
            group.add_argument(flag, dest=f.name, choices=get_args(hint), default=None, help=help_)
        else:
            group.add_argument(flag, dest=f.name, type=hint, default=None, help=help_)


def dataclass_from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if getattr(args, f.name, None) is not None}
    return config_from_dict(cls, {**values, **extra})


def existing_path(text: str) -> Path:
    p = Path(text)
    if not p.exists():
        raise METError(f"{text} does not exist.")
    return p


def _emit(args: argparse.Namespace, result: Any, lines: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(lines))


# --- train -----------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> None:
    import torch

    from .backbones import create_backbone
    from .data import make_transform, open_dataset, subsample_split
    from .flops import exit_gmacs
    from .io import save_checkpoint
    from .model import METModel
    from .train import fit, seed_everything

    tcfg: TrainConfig = dataclass_from_args(TrainConfig, args)
    seed_everything(tcfg.seed)
    ds = open_dataset(args.dataset, split=args.split, download=not args.no_download)
    train_idx, val_idx = subsample_split(ds.labels, tcfg.per_class, tcfg.val_fraction, tcfg.seed)
    base = dataclass_from_args(METConfig, args, num_classes=len(ds.class_names), class_names=ds.class_names)
    backbone, digest = create_backbone(base.backbone, base.img_size, base.weights)
    depth = len(backbone.blocks)
    if getattr(args, "exits", None) is None:
        base.exits = [round(depth * (k + 1) / 4) for k in range(4)]  # K = 4, evenly spaced
    mcfg = dataclasses.replace(base, weights_sha256=digest)
    mcfg.validate(depth)
    torch.manual_seed(tcfg.seed)
    model = METModel(backbone, mcfg)
    n = model.num_parameters()
    log(f"trainable parameters: {n['trainable']:,} ({100 * n['trainable'] / n['frozen']:.2f}% of the "
        f"{n['frozen']:,} frozen backbone parameters)")
    ds.transform = make_transform(mcfg.img_size, mcfg.mean, mcfg.std)
    train_ds, val_ds = ds.subset(train_idx), ds.subset(val_idx)
    log(f"data: {len(train_ds)} train / {len(val_ds)} val images, {mcfg.num_classes} classes from {ds.root}")
    metrics = fit(model, train_ds, val_ds, tcfg, progress=not args.quiet)
    gm = exit_gmacs(model)
    metrics.update({"exit_gmacs": gm, "mac_note": MAC_NOTE})
    record = {
        "train": dataclasses.asdict(tcfg),
        "data": {"dataset": args.dataset, "root": ds.root, "split": args.split,
                 "train_ids": [train_ds.ids[i] for i in range(len(train_ds))],
                 "val_ids": [val_ds.ids[i] for i in range(len(val_ds))]},
        "preprocessing": {"resize_short_side": mcfg.img_size, "interpolation": "bicubic",
                          "crop": f"center {mcfg.img_size}", "mean": mcfg.mean, "std": mcfg.std, "mode": "RGB"},
    }
    out = Path(args.out)
    save_checkpoint(out, model, record, metrics)
    val = metrics["val_accuracy"] or []
    _emit(args, {"out": str(out), **{k: v for k, v in metrics.items() if k != "history"}}, [
        f"saved {out}/config.json, model.safetensors, metrics.json",
        f"validation accuracy per exit: {' / '.join(f'{100 * a:.1f}%' for a in val)}",
        f"GMACs per exit ({MAC_NOTE}): {' / '.join(f'{g:.3f}' for g in gm)}",
        f"training time: {metrics['train_time_s']:.0f} s",
    ])


# --- trace -----------------------------------------------------------------------------------------

def dataset_for_checkpoint(cfg: dict[str, Any], dataset: str | None, split: str, download: bool):
    """The dataset a trace runs over: an explicit one, or the checkpoint's own (its 'val' split by id)."""
    from .data import open_dataset

    data = cfg.get("data", {})
    if split == "val":
        src = dataset or data.get("root") or data.get("dataset")
        if not src:
            raise METError("this checkpoint records no dataset; pass --dataset.")
        ds = open_dataset(src, split=data.get("split", "train"), download=download)
        where = {sid: i for i, sid in enumerate(ds.ids)}
        missing = [s for s in data.get("val_ids", []) if s not in where]
        if missing or not data.get("val_ids"):
            raise METError(f"the checkpoint's validation images are not all in {src} "
                           f"({len(missing)} missing); pass the dataset it was trained on.")
        return ds.subset([where[s] for s in data["val_ids"]])
    if not dataset:
        raise METError("pass --dataset (a folder or a dataset name), or --split val for the checkpoint's validation split.")
    return open_dataset(dataset, split=split, download=download)


def cmd_trace(args: argparse.Namespace) -> None:
    from .data import make_transform
    from .flops import exit_gmacs
    from .io import checkpoint_hash, load_checkpoint
    from .traces import SIMULATED_NOTE, run_trace, save_trace

    model, cfg = load_checkpoint(args.checkpoint)
    ds = dataset_for_checkpoint(cfg, args.dataset, args.split, not args.no_download)
    if list(ds.class_names) != list(model.cfg.class_names):
        raise METError(f"the dataset's classes {ds.class_names[:5]}... differ from the checkpoint's "
                       f"{model.cfg.class_names[:5]}...; trace a dataset with the same classes.")
    if args.limit and args.limit < len(ds):
        rng = np.random.default_rng(args.seed)
        ds = ds.subset(np.sort(rng.choice(len(ds), size=args.limit, replace=False)))
    ds.transform = make_transform(model.cfg.img_size, model.cfg.mean, model.cfg.std)
    gm = exit_gmacs(model)
    meta = {"checkpoint": Path(args.checkpoint).name, "checkpoint_sha256": checkpoint_hash(args.checkpoint),
            "dataset": args.dataset or cfg.get("data", {}).get("dataset"), "dataset_root": ds.root,
            "split": args.split, "exits": model.cfg.exits, "mac_note": MAC_NOTE, "note": SIMULATED_NOTE}
    trace = run_trace(model, ds, gm, meta, batch_size=args.batch_size, features=args.features,
                      seed=args.seed, progress=not args.quiet)
    save_trace(args.out, trace)
    acc = (trace.logits.argmax(-1) == trace.labels[:, None]).mean(0)
    _emit(args, {"out": str(args.out), "samples": len(trace.labels), "exit_accuracy": acc.tolist(),
                 "gmacs": gm, "features": int(len(trace.feature_index)), "mac_note": MAC_NOTE}, [
        f"saved {args.out}: {len(trace.labels)} samples, features for {len(trace.feature_index)}",
        f"accuracy per exit: {' / '.join(f'{100 * a:.2f}%' for a in acc)}",
        f"GMACs per exit ({MAC_NOTE}): {' / '.join(f'{g:.3f}' for g in gm)}",
    ])


# --- info ------------------------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> None:
    from .flops import cost_breakdown, exit_gmacs
    from .io import load_checkpoint

    model, cfg = load_checkpoint(args.checkpoint)
    gm = exit_gmacs(model)
    n = model.num_parameters()
    cfg_small = {k: v for k, v in cfg.items() if k != "data"}
    cfg_small["data"] = {k: (f"{len(v)} ids" if k.endswith("_ids") else v) for k, v in cfg.get("data", {}).items()}
    result = {"config": cfg_small, "exit_gmacs": gm, "mac_note": MAC_NOTE, "parameters": n,
              "trainable_share": n["trainable"] / n["frozen"], "cost_breakdown_macs": cost_breakdown(model)}
    m = model.cfg
    _emit(args, result, [
        f"backbone: {m.backbone} at {m.img_size} px, weights {m.weights} (sha256 {m.weights_sha256[:12]}...)",
        f"exits after blocks {m.exits}; {m.num_classes} classes",
        f"adapters: {'r=' + str(m.adapter_dim) + ', sharing ' + m.sharing + ', diagonals ' + (m.diagonal_mode if m.exit_diagonals else 'off') if m.adapters else 'none (linear probes)'}",
        f"GMACs per exit ({MAC_NOTE}): {' / '.join(f'{g:.3f}' for g in gm)}",
        f"parameters: {n['trainable']:,} trainable, {n['frozen']:,} frozen ({100 * n['trainable'] / n['frozen']:.2f}%)",
    ])


# --- entry point -----------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(msg, file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m met_core", description="Multiple-Exit Tuning for timm ViTs.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a MET model and write a checkpoint folder")
    t.add_argument("--dataset", required=True, help="ImageFolder path or torchvision name (cifar10, ...)")
    t.add_argument("--split", default="train", help="split to sub-sample for training (default: train)")
    t.add_argument("--out", required=True, help="checkpoint folder to write")
    add_dataclass_args(t, METConfig, "model")
    add_dataclass_args(t, TrainConfig, "training")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("trace", help="run a checkpoint over a dataset split and store every exit's outputs")
    r.add_argument("--checkpoint", required=True, type=existing_path)
    r.add_argument("--dataset", help="folder or dataset name (default: the checkpoint's, with --split val)")
    r.add_argument("--split", default="test", help="'test', 'train', or 'val' (the checkpoint's own validation ids)")
    r.add_argument("--out", required=True, help="trace file to write (.npz)")
    r.add_argument("--limit", type=int, default=0, help="trace a seeded random subset of N samples")
    r.add_argument("--features", type=int, default=2000, help="store head inputs for a seeded subset of N samples")
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=cmd_trace)

    i = sub.add_parser("info", help="config, per-exit GMACs and parameter counts of a checkpoint")
    i.add_argument("--checkpoint", required=True, type=existing_path)
    i.set_defaults(func=cmd_info)

    for s in (t, r, i):
        s.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
        s.add_argument("--quiet", action="store_true", help="no progress bars")
        s.add_argument("--no-download", action="store_true", help="never download datasets")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.func(args)
    except METError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
