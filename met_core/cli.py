"""`met SUBCOMMAND` (or `python -m met_core`): train, trace, info, whatif, calibrate, predict, bench-exit, ..., app.

User errors (METError, missing paths, bad files) print one line `error: ...` and exit with code 2;
no tracebacks. `--json` prints a machine-readable result on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, get_args, get_origin, get_type_hints

from .config import (
    BATCH,
    DATA_ROOT_HELP,
    SEED,
    BenchExitConfig,
    METConfig,
    ProfileConfig,
    Range,
    RuntimeConfig,
    TraceConfig,
    TrainConfig,
    config_from_dict,
)
from .errors import METError, user_message
from .io.checkpoint import checkpoint_hash
from .io.outputs import output_file, output_folder
from .io.traces import MAC_NOTE

if TYPE_CHECKING:
    from .analysis.whatif import WhatIfResult
    from .engine.distributed import DistContext

# fields that the CLI derives instead of taking as flags (download: from the common --no-download)
DERIVED = {"num_classes", "class_names", "weights_sha256", "download"}
# ranges of the flags that are not config fields
THRESHOLD = Range(-1000, 1000)  # a policy's threshold: a probability, a normalised entropy or a count of exits


class Parser(argparse.ArgumentParser):
    """argparse with the project's error form: one line `error: ...`, exit code 2, no usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message.rstrip('.')}.", file=sys.stderr)
        raise SystemExit(2)


def number(kind: type, bounds: Range) -> Callable[[str], Any]:
    """An argparse type: an int or float within `bounds`, checked at parse time (NaN and inf never are)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text[:40]!r}"
            ) from None
        if not bounds.contains(value):
            raise argparse.ArgumentTypeError(f"must be {bounds.describe()}, got {text[:40]}")
        return value

    return parse


def _list_parser(item: type, bounds: Range | None = None, max_len: int = 64) -> Callable[[str], list]:
    one = number(item, bounds) if bounds is not None and item in (int, float) else item

    def parse(text: str) -> list:
        parts = [v.strip() for v in text.split(",")]
        if parts and not parts[-1]:  # one trailing comma is harmless
            parts.pop()
        if "" in parts:  # '0.5,,0.7' was read as two values
            raise argparse.ArgumentTypeError(f"an empty value between commas in {text[:60]!r}")
        if len(parts) > max_len:
            raise argparse.ArgumentTypeError(f"at most {max_len} values, got {len(parts)}")
        try:
            return [one(v) for v in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {item.__name__}, got {text[:60]!r}"
            ) from None

    return parse


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type, title: str, only: Sequence[str] | None = None
) -> None:
    """One flag per dataclass field (or the `only` ones), typed and range-checked from the field, with its help."""
    group = parser.add_argument_group(title)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in DERIVED or (only is not None and f.name not in only):
            continue
        flag, hint, bounds = "--" + f.name.replace("_", "-"), hints[f.name], f.metadata.get("bounds")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f.metadata.get("help", "") + ("" if default in (None, "") else f" (default: {default})")
        common = {"dest": f.name, "default": None, "help": help_, "required": required}
        if hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif get_origin(hint) is list:
            group.add_argument(
                flag,
                type=_list_parser(get_args(hint)[0], bounds, f.metadata.get("max_len") or 64),
                metavar="A,B,...",
                **common,
            )
        elif get_origin(hint) is not None and get_args(hint) and all(isinstance(a, str) for a in get_args(hint)):
            group.add_argument(flag, choices=get_args(hint), **common)
        else:
            kind = number(hint, bounds) if bounds is not None else hint
            group.add_argument(flag, type=kind, **common)


def given_args(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The flags of a dataclass's fields that were given (the rest keep the dataclass's defaults)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def dataclass_from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    return config_from_dict(cls, {**given_args(cls, args), **extra})


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


def runtime_setup(args: argparse.Namespace) -> tuple[RuntimeConfig, DistContext, Any]:
    """The run's RuntimeConfig, its place in a torchrun job, and its device (one sentence if there is none)."""
    from .engine.devices import resolve_device
    from .engine.distributed import init_distributed

    runtime: RuntimeConfig = dataclass_from_args(RuntimeConfig, args)
    runtime.validate()
    if getattr(args, "engine", "pytorch") == "onnx" and runtime.precision != "fp32":
        raise METError(
            f"--precision {runtime.precision} applies to the PyTorch engine; the ONNX export runs in fp32 (or int8 "
            "graphs from met export --quantize int8): drop --precision, or use --engine pytorch."
        )
    kind = resolve_device(runtime.device).type
    if kind == "cpu" and runtime.precision == "fp16":  # a training step took 85 s instead of bf16's 2 s
        raise METError(
            "--precision fp16 is emulated on the CPU (tens of times slower than bf16 there); use bf16 or fp32 on the "
            "CPU, and fp16 on a GPU."
        )
    ctx = init_distributed(kind)
    return runtime, ctx, resolve_device(runtime.device, ctx.local_rank)


def record_weights(mcfg: METConfig, out: Path) -> None:
    """A weights file is recorded relative to the checkpoint folder when it lies inside (a config never leads
    MET out of its folder); one outside is named in a note."""
    if mcfg.weights in ("default", "none"):
        return
    w, folder = Path(mcfg.weights).resolve(), out.resolve()
    mcfg.weights = str(w.relative_to(folder)) if w.is_relative_to(folder) else str(w)
    if not w.is_relative_to(folder):
        log(
            f"note: the backbone weights {w} lie outside {out}; loading this checkpoint needs --weights {w}, or "
            "copy the file into the folder."
        )


REPLACE_HINT = (
    "pass --overwrite to replace it (the traces, profiles and other files made for its weights are then removed if "
    "the new weights differ), or choose another folder."
)


def _hash_or_none(folder: Path) -> str | None:
    """The checkpoint hash of `folder`, or None when it holds no readable checkpoint."""
    try:
        return checkpoint_hash(folder)
    except METError:
        return None


def remove_derived(out: Path) -> None:
    """Remove what was made for other weights than those now in `out` (`met train --overwrite` when the retrained
    model differs): traces, latency profiles, temperatures, OOD rule, ONNX export; naming each in a note."""
    from .analysis.latency import LATENCY_FILE
    from .analysis.ood import OOD_FILE
    from .analysis.reliability import TEMPERATURES_FILE
    from .engine.export import EXITS_FILE
    from .io.checkpoint import CAL_TRACE_FILE, EXPORT_DIR, TEST_TRACE_FILE, VAL_TRACE_FILE

    gone = []
    for name in (TEST_TRACE_FILE, VAL_TRACE_FILE, CAL_TRACE_FILE, LATENCY_FILE, TEMPERATURES_FILE, OOD_FILE):
        if (out / name).is_file():
            (out / name).unlink()
            gone.append(name)
    if (out / EXPORT_DIR / EXITS_FILE).is_file():
        shutil.rmtree(out / EXPORT_DIR)
        gone.append(f"{EXPORT_DIR}/")
    if gone:
        log(f"note: removed {', '.join(gone)} from {out} (made for the weights this run replaces)")


def cmd_train(args: argparse.Namespace) -> None:
    from .data.datasets import open_dataset, preprocessing_record, subsample_split, transform_for
    from .engine.devices import device_name
    from .engine.distributed import shutdown
    from .engine.train import fit, seed_everything
    from .nn.checkpoint import save_checkpoint
    from .nn.flops import exit_gmacs
    from .nn.model import build_model

    tcfg: TrainConfig = dataclass_from_args(TrainConfig, args)
    tcfg.validate()  # before any data is read
    out = output_folder(
        args.out,
        "a checkpoint",
        None if args.overwrite else REPLACE_HINT,
    )
    runtime, ctx, device = runtime_setup(args)
    seed_everything(tcfg.seed)
    ds = open_dataset(args.dataset, split=args.split, download=not args.no_download, data_root=args.data_root)
    for note in ds.notes:
        log(note)
    if len(ds.class_names) == 1:
        inner = Path(ds.root) / ds.class_names[0]
        raise METError(
            f"{ds.root} holds one class folder ({ds.class_names[0]!r}); a classifier needs at least 2, one sub-folder "
            f"per class (if that folder holds the class folders, pass --dataset {inner})."
        )
    train_idx, val_idx = subsample_split(
        ds.labels, tcfg.per_class, tcfg.val_fraction, tcfg.seed, ds.class_names, warn=log
    )
    model = build_model(given_args(METConfig, args), ds.class_names, tcfg.seed)
    n = model.num_parameters()
    log(
        f"trainable parameters: {n['trainable']:,} ({100 * n['trainable'] / n['frozen']:.2f}% of the "
        f"{n['frozen']:,} frozen backbone parameters)"
    )
    mcfg = model.cfg
    train_ds, val_ds = ds.subset(train_idx), ds.subset(val_idx)
    train_ds.transform, val_ds.transform = transform_for(mcfg, tcfg.augment), transform_for(mcfg)
    log(f"data: {len(train_ds)} train / {len(val_ds)} val images, {mcfg.num_classes} classes from {ds.root}")
    log(f"device: {device_name(device)}, precision {runtime.precision}, {ctx.world_size} process(es)")
    metrics = fit(model, train_ds, val_ds, tcfg, runtime, ctx, progress=not args.quiet and ctx.is_main, log=log)
    shutdown(ctx)
    if not ctx.is_main:
        return
    before = _hash_or_none(out) if args.overwrite else None
    record_weights(mcfg, out)
    gm = exit_gmacs(model)
    result = {**metrics.to_dict(), "exit_gmacs": gm, "mac_note": MAC_NOTE}
    save_checkpoint(
        out,
        model,
        {
            "train": dataclasses.asdict(tcfg),
            "runtime": {
                **dataclasses.asdict(runtime),
                "device": str(device),
                "device_name": device_name(device),
                "world_size": ctx.world_size,
            },
            "data": {
                "dataset": args.dataset,
                "root": ds.root,
                "split": args.split,
                "train_ids": list(train_ds.ids),
                "val_ids": list(val_ds.ids),
            },
            "preprocessing": preprocessing_record(mcfg),
        },
        result,
    )
    if args.overwrite and checkpoint_hash(out) != before:
        remove_derived(out)
    _emit(
        args,
        {"out": str(out), **{k: v for k, v in result.items() if k != "history"}},
        [
            f"saved {out}/config.json, model.safetensors, metrics.json",
            "validation accuracy per exit: "
            + (" / ".join(f"{100 * a:.1f}%" for a in metrics.val_accuracy or []) or "none (no validation images)"),
            f"GMACs per exit ({MAC_NOTE}): {' / '.join(f'{g:.3f}' for g in gm)}",
            f"training time: {metrics.train_time_s:.0f} s ({metrics.data_path} data path); "
            f"peak memory (RSS, with loader workers): {metrics.peak_rss_gb:.2f} GB",
        ],
    )


# --- trace -----------------------------------------------------------------------------------------


def cmd_trace(args: argparse.Namespace) -> None:
    from .engine.distributed import shutdown
    from .engine.tracing import trace_checkpoint
    from .io.traces import save_trace

    output_file(args.out, ".npz", "a trace")
    runtime, ctx, device = runtime_setup(args)
    onnx = None
    if args.engine == "onnx":
        from .engine.export import OnnxEarlyExit
        from .io.checkpoint import export_dir

        onnx = OnnxEarlyExit(export_dir(args.checkpoint, args.onnx))
    trace = trace_checkpoint(
        args.checkpoint,
        dataclass_from_args(TraceConfig, args, download=not args.no_download),
        runtime,
        weights=args.weights,
        device=device,
        ctx=ctx,
        onnx=onnx,
        progress=not args.quiet and ctx.is_main,
        notes=log,
    )
    shutdown(ctx)
    if trace is None:  # not the main process: it has nothing to write
        return
    gm = trace.gmacs.tolist()
    save_trace(args.out, trace)
    acc = (trace.logits.argmax(-1) == trace.labels[:, None]).mean(0)
    _emit(
        args,
        {
            "out": str(args.out),
            "samples": len(trace.labels),
            "exit_accuracy": acc.tolist(),
            "gmacs": gm,
            "features": int(len(trace.feature_index)),
            "mac_note": MAC_NOTE,
        },
        [
            f"saved {args.out}: {len(trace.labels)} samples, features for {len(trace.feature_index)}",
            f"accuracy per exit: {' / '.join(f'{100 * a:.2f}%' for a in acc)}",
            f"GMACs per exit ({MAC_NOTE}): {' / '.join(f'{g:.3f}' for g in gm)}",
        ],
    )


# --- info ------------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> None:
    from .analysis.summary import ModelSummary, config_digest
    from .io.checkpoint import METRICS_FILE, read_json
    from .nn.checkpoint import load_checkpoint
    from .nn.flops import cost_breakdown, exit_gmacs

    model, cfg = load_checkpoint(args.checkpoint, args.weights)
    metrics_path = Path(args.checkpoint) / METRICS_FILE
    metrics = read_json(metrics_path, "the checkpoint's metrics") if metrics_path.is_file() else {}
    n = model.num_parameters()
    summary = ModelSummary.build(
        Path(args.checkpoint).name, cfg, metrics if isinstance(metrics, dict) else {}, exit_gmacs(model), n
    )
    result = {
        "config": config_digest(cfg),
        "exit_gmacs": summary.exit_gmacs,
        "mac_note": MAC_NOTE,
        "parameters": n,
        "trainable_share": summary.trainable_share,
        "cost_breakdown_macs": cost_breakdown(model),
        "summary": summary.to_dict(),
    }
    _emit(args, result, [f"{k}: {v}" for k, v in summary.card()])


# --- early exit: whatif, calibrate, predict, bench-exit ---------------------------------------------


def _rule(args: argparse.Namespace, sha256: str | None = None) -> tuple[str, float | list[float | None]]:
    """(policy, thresholds) from --rule FILE, --thresholds, --threshold, or the policy's default."""
    from .analysis.policies import get_policy

    if args.rule is not None:
        if args.threshold is not None or args.thresholds is not None:
            raise METError("give --rule FILE or --threshold/--thresholds, not both.")
        from .analysis.exit_rule import read_exit_rule

        rule = read_exit_rule(args.rule)
        if sha256:
            rule.check_checkpoint(sha256, str(args.rule))
        return rule.policy, rule.thresholds
    if args.thresholds is not None:
        return args.policy, args.thresholds
    if args.threshold is not None:
        return args.policy, args.threshold
    return args.policy, get_policy(args.policy).default_threshold


def _in_full(thresholds: Sequence[float | None]) -> list[str]:
    """Thresholds as text that reads back to the same floats ('last' for the last exit's None): a rule printed with
    4 digits and given back moved 66.92 % to 66.93 %."""
    return ["last" if t is None else repr(float(t)) for t in thresholds]


def _whatif_lines(r: WhatIfResult, class_names: Sequence[str] = ()) -> list[str]:
    """The text form of a what-if result: its numbers, then its intervals and per-class detail when computed."""

    def pct(i: Any) -> str:
        return "-" if i is None else f"{100 * i.lo:.1f}-{100 * i.hi:.1f}%"

    lines = [
        f"accuracy {100 * r.accuracy:.2f}% (last exit {100 * r.last_exit_accuracy:.2f}%), "
        f"{r.gmacs:.3f} GMACs, speed-up {r.speedup:.2f}x over the last exit ({r.note}; {MAC_NOTE})",
        "leaving at each exit: " + " / ".join(f"{100 * f:.1f}%" for f in r.exit_fractions),
        "accuracy of leavers: " + " / ".join("-" if a is None else f"{100 * a:.1f}%" for a in r.exit_accuracy),
        "thresholds: " + ", ".join(_in_full(r.thresholds)),
    ]
    if (iv := r.intervals) is not None:
        lines += [
            f"intervals: accuracy {pct(iv.accuracy)}, GMACs {iv.gmacs.lo:.3f}-{iv.gmacs.hi:.3f}, "
            f"speed-up {iv.speedup.lo:.2f}-{iv.speedup.hi:.2f}x",
            "  leaving at each exit: " + " / ".join(map(pct, iv.exit_fractions)),
            "  accuracy of leavers: " + " / ".join(map(pct, iv.exit_accuracy)),
            iv.meaning,
        ]
    if r.per_class_accuracy is not None:
        names = list(class_names) or [str(c) for c in range(len(r.per_class_accuracy))]
        lines.append(
            "accuracy per class: "
            + ", ".join(f"{n} {'-' if a is None else f'{100 * a:.1f}%'}" for n, a in zip(names, r.per_class_accuracy))
        )
    if r.confusion is not None:
        names = list(class_names) or [str(c) for c in range(len(r.confusion))]
        width = max(6, *(len(n) for n in names))
        lines.append("confusion (rows: true class, columns: predicted, in the same order):")
        lines += [f"  {n:>{width}} " + " ".join(f"{c:>6}" for c in row) for n, row in zip(names, r.confusion)]
    return lines


def cmd_whatif(args: argparse.Namespace) -> None:
    from .analysis.whatif import TraceArrays, whatif
    from .io.traces import load_trace

    trace = load_trace(args.trace)
    policy, thresholds = _rule(args, trace.meta.get("checkpoint_sha256"))
    arrays = TraceArrays.from_trace(trace, _temperatures(args, trace))
    r = whatif(arrays, thresholds, policy, detail=args.detail, intervals=args.intervals)
    out, lines = r.to_dict(), _whatif_lines(r, trace.class_names)
    if args.profile:
        from .analysis.latency import predict_latency, read_profile

        prof = read_profile(args.profile, arrays.num_exits, trace.meta.get("checkpoint_sha256"))
        lp = predict_latency(prof, r.exit_fractions, args.batch)
        out["latency"] = lp.to_dict()
        lines.append(
            f"at batch {lp.batch}: {lp.ms_per_image:.2f} ms per image, {lp.images_per_s:.0f} images/s, "
            f"{lp.speedup:.2f}x faster than the last exit ({lp.note}: {lp.device_name})"
        )
    _emit(args, out, lines)


def _temperatures(args: argparse.Namespace, trace: Any) -> list[float] | None:
    """Per-exit temperatures from --temperatures FILE, checked against the trace's model."""
    if getattr(args, "temperatures", None) is None:
        return None
    from .analysis.reliability import read_temperatures

    return read_temperatures(args.temperatures, trace.num_exits, trace.meta.get("checkpoint_sha256")).temperatures


def cmd_calibrate(args: argparse.Namespace) -> None:
    from .analysis.calibration import apply, calibrate_accuracy_loss, calibrate_budget, sweep_applied
    from .analysis.certify import certify_max_loss, selection_spread
    from .analysis.whatif import TraceArrays, whatif
    from .io.traces import load_trace

    val_t = load_trace(args.trace)
    test_t = load_trace(args.apply) if args.apply else val_t
    test_t.check_pair(val_t, str(args.apply), str(args.trace), "calibrate and apply on traces of one model.")
    temps = _temperatures(args, val_t)
    val, test = TraceArrays.from_trace(val_t, temps), TraceArrays.from_trace(test_t, temps)
    if args.sweep:
        rows = sweep_applied(val, test, args.policy)
        _emit(
            args,
            [r.to_dict() for r in rows],
            ["cal_gmacs,cal_accuracy,test_gmacs,test_accuracy,pareto,source,thresholds"]
            + [
                f"{r.cal_gmacs:.4f},{r.cal_accuracy:.4f},{r.test_gmacs:.4f},{r.test_accuracy:.4f},{int(r.pareto)},"
                f"{r.source}," + ";".join(_in_full(r.thresholds))
                for r in rows
            ],  # thresholds in full, ';'-separated: a row given back as --thresholds (',' for ';') reproduces it
        )
        return
    if (args.budget is None) == (args.max_loss is None):
        raise METError("give exactly one of --budget F (fraction of the last exit's GMACs), --max-loss D, or --sweep.")
    if args.delta is not None:
        if args.max_loss is None:
            raise METError("--delta certifies a --max-loss rule; give --max-loss D with it.")
        c = certify_max_loss(val, args.max_loss, args.delta, args.policy)
        out = {"certified": c.to_dict()}
        lines = [c.message]
        if c.thresholds is not None and args.apply:
            r = whatif(test, c.thresholds, args.policy, intervals=True)
            out["measured"] = r.to_dict()
            lines += [f"measured on {args.apply} (loss {100 * (r.last_exit_accuracy - r.accuracy):+.2f} pt):"]
            lines += _whatif_lines(r)
        _emit(args, out, lines)
        return

    def choose(arrays: TraceArrays) -> Any:
        return (
            calibrate_budget(arrays, args.budget, args.policy)
            if args.budget is not None
            else calibrate_accuracy_loss(arrays, args.max_loss, args.policy)
        )

    r = apply(test, choose(val), args.policy)
    out = r.to_dict()
    lines = [f"measured on the {'test' if args.apply else 'calibration'} trace:"] + _whatif_lines(r.measured)
    if args.spread:
        sp = selection_spread(val, test, choose, args.policy, reps=args.spread, seed=args.seed)
        out["selection_spread"] = sp.to_dict()
        lines.append(
            f"chosen again on {sp.reps} resamples of the {sp.validation_images} calibration images, the test "
            f"accuracy spans {100 * sp.accuracy[0]:.2f} - {100 * sp.accuracy[2]:.2f}% and the mean GMACs "
            f"{sp.gmacs[0]:.3f} - {sp.gmacs[2]:.3f} (5th - 95th percentile)"
        )
    _emit(args, out, lines)


def cmd_reliability(args: argparse.Namespace) -> None:
    from .analysis.reliability import Temperatures, exit_reliability
    from .io.traces import load_trace

    if args.out:
        output_file(args.out, ".json", "the temperatures")
    trace = load_trace(args.trace)
    temps = _temperatures(args, trace)
    if args.fit_on:
        cal = load_trace(args.fit_on)
        cal.check_pair(trace, args.fit_on, args.trace, "fit on a trace of the same model.")
        fitted = Temperatures.fit(cal, Path(args.fit_on).name)
        temps = fitted.temperatures
        if args.out:
            Path(args.out).write_text(fitted.to_json() + "\n")
    before = exit_reliability(trace, bins=args.bins)
    after = exit_reliability(trace, temps, args.bins) if temps else None
    out = {
        "ece": [c.ece for c in before],
        "curves": [c.to_dict() for c in before],
        "temperatures": temps,
        "ece_with_temperatures": [c.ece for c in after] if after else None,
    }
    lines = ["expected calibration error per exit: " + " / ".join(f"{c.ece:.4f}" for c in before)]
    if after:
        lines += [
            "temperatures: " + " / ".join(f"{t:.3f}" for t in temps),
            "with them: " + " / ".join(f"{c.ece:.4f}" for c in after),
        ]
    _emit(args, out, lines)


def cmd_ood(args: argparse.Namespace) -> None:
    from .analysis.ood import OOD_FILE, fit_ood_on_trace, save_ood
    from .io.traces import load_trace

    out = output_file(args.out or Path(args.checkpoint) / OOD_FILE, ".npz", "the OOD rule")
    cal = load_trace(args.trace)
    cal.check_model(checkpoint_hash(args.checkpoint), args.trace, args.checkpoint, "trace it with this one.")
    rule = fit_ood_on_trace(cal, args.trace, args.exit - 1, args.false_alarm, args.k, args.seed)
    save_ood(out, rule)
    _emit(
        args,
        {
            "file": str(out),
            "threshold": rule.threshold,
            "false_alarm": rule.false_alarm,
            "k": rule.k,
            "exit": args.exit,
            "reference_images": len(rule.reference),
            "threshold_images": rule.threshold_images,
        },
        [f"wrote {out}: {rule.describe()}"],
    )


def cmd_predict(args: argparse.Namespace) -> None:
    from .engine.inference import load_engine, predict_files

    if len(args.images) > args.max_files:
        raise METError(f"{len(args.images)} files given; at most {args.max_files} at once (raise --max-files).")
    runtime, _, device = runtime_setup(args)
    policy, thresholds = _rule(args, checkpoint_hash(args.checkpoint) if args.rule else None)
    model = load_engine(args.checkpoint, args.engine, args.onnx, args.weights, device)
    res = predict_files(model, args.images, thresholds, policy, precision=runtime.precision)
    lines = [
        f"{r.file}: {r.class_name} at exit {r.exit + 1}/{model.num_exits}, confidence {r.confidence:.3f}, "
        f"{r.gmacs:.3f} of {r.gmacs_full:.3f} GMACs"
        for r in res
        if not r.error
    ]
    _emit(args, [r.to_dict() for r in res], lines)
    failed = [r for r in res if r.error]
    if not args.json:
        for r in failed:
            log(f"error: {r.error}" if r.file in r.error else f"error: {r.file}: {r.error}")
    if failed:  # every file is answered; the exit code says whether all were (scripts check it)
        raise METError(
            f"{len(failed)} of {len(res)} files could not be read (each is named with its error); the rest answered."
        )


def cmd_bench_exit(args: argparse.Namespace) -> None:
    from .analysis.latency import profile_path, read_profile
    from .engine.inference import bench_exit, bench_images, load_engine, model_inputs

    runtime, _, device = runtime_setup(args)
    cfg: BenchExitConfig = dataclass_from_args(BenchExitConfig, args, download=not args.no_download)
    sha = checkpoint_hash(args.checkpoint)
    policy, thresholds = _rule(args, sha if args.rule else None)
    model = load_engine(args.checkpoint, args.engine, args.onnx, args.weights, device)
    prof_path = Path(args.profile) if args.profile else profile_path(args.checkpoint, args.engine, args.onnx)
    prof = read_profile(prof_path, model.num_exits, sha) if args.profile or prof_path.exists() else None
    x = model_inputs(model, bench_images(cfg), progress=not args.quiet)
    rows = bench_exit(model, x, cfg, thresholds, policy, runtime.precision, prof)
    lines = [
        f"real batched early exit ({args.engine}) on {len(x)} images ({policy}), median of {cfg.repeats}; "
        "speed-up over every image to the last exit:",
        "batch | measured | GMACs-predicted | profile-predicted | measured ms/image | profile ms/image",
    ]
    for row in rows:
        r, lp = row.measured, row.profile
        lines.append(
            f"{r.batch_size} | {r.measured_speedup:.2f}x | {r.predicted_speedup:.2f}x | "
            f"{f'{lp.speedup:.2f}x' if lp else '-'} | {row.ms_per_image:.2f} | "
            f"{f'{lp.ms_per_image:.2f}' if lp else '-'}"
        )
    if prof is not None:
        lines.append(f"profile: {prof.device_name}, {prof.threads} threads, {prof.precision} ({prof_path})")
    _emit(args, [row.to_dict() for row in rows], lines)


def cmd_export(args: argparse.Namespace) -> None:
    from .engine.export import export_onnx
    from .io.checkpoint import export_dir
    from .nn.checkpoint import load_checkpoint
    from .nn.flops import exit_gmacs

    sha = checkpoint_hash(args.checkpoint)
    out = output_folder(
        export_dir(args.checkpoint, args.out), "the export", "an export needs its own folder (default CHECKPOINT/onnx)."
    )
    policy, thresholds = _rule(args, sha if args.rule else None)
    model, _ = load_checkpoint(args.checkpoint, args.weights)
    m = export_onnx(model, out, policy, thresholds, sha, exit_gmacs(model), args.quantize)
    _emit(
        args,
        json.loads(m.to_json()),
        [
            f"wrote {len(m.stages)} {m.quantization} stage graphs and exits.json to "
            f"{out} (checked with the onnx checker); policy {m.policy}, thresholds "
            f"{m.thresholds}"
        ],
    )


def cmd_profile(args: argparse.Namespace) -> None:
    from .analysis.latency import profile_path
    from .engine.inference import load_engine
    from .engine.profiling import profile_model, profile_onnx

    runtime, _, device = runtime_setup(args)
    cfg: ProfileConfig = dataclass_from_args(ProfileConfig, args)
    progress = (lambda s: None) if args.quiet else (lambda s: log(f"profiling {s}"))
    out = output_file(args.out or profile_path(args.checkpoint, args.engine, args.onnx), ".json", "the latency profile")
    model = load_engine(args.checkpoint, args.engine, args.onnx, args.weights, device)
    if args.engine == "onnx":
        prof = profile_onnx(model, cfg.batch, cfg.repeats, progress=progress)
    else:
        prof = profile_model(model, cfg.batch, runtime.precision, cfg.repeats, progress=progress)
    prof.checkpoint_sha256 = checkpoint_hash(args.checkpoint)
    out.write_text(prof.to_json() + "\n")
    lines = [
        f"wrote {out} ({prof.engine}): {prof.device_name}, {prof.threads} threads, "
        f"{'torch ' if prof.engine == 'pytorch' else ''}{prof.torch_version}, "
        f"{prof.precision}",
        "batch | stem ms | "
        + " | ".join(f"stage {k + 1} ms | head {k + 1} ms" for k in range(model.num_exits))
        + " | compaction ms",
    ]
    for i, b in enumerate(prof.batch_sizes):
        lines.append(
            f"{b} | {prof.stem_ms[i]:.2f} | "
            + " | ".join(f"{prof.stage_ms[k][i]:.2f} | {prof.head_ms[k][i]:.3f}" for k in range(model.num_exits))
            + f" | {prof.compact_ms[i]:.3f}"
        )
    _emit(args, json.loads(prof.to_json()), lines)


# --- app -------------------------------------------------------------------------------------------

APP_MAIN = Path(__file__).resolve().parent / "app" / "main.py"  # shipped in the package (and in a checkout)
# the Streamlit settings a checkout's .streamlit/config.toml holds, as flags: an installed app has them too
APP_SETTINGS = {"--client.toolbarMode": "minimal", "--browser.gatherUsageStats": "false"}
APP_LIBRARIES = ("streamlit", "plotly", "pandas")


def app_command(streamlit_args: Sequence[str]) -> list[str]:
    """`streamlit run` on the package's app with Streamlit's own flags (APP_SETTINGS unless the flags set them)."""
    given = {a.split("=", 1)[0] for a in streamlit_args if a.startswith("--")}
    settings = [x for flag, value in APP_SETTINGS.items() if flag not in given for x in (flag, value)]
    return [sys.executable, "-m", "streamlit", "run", str(APP_MAIN), *settings, *streamlit_args]


def cmd_app(args: argparse.Namespace) -> None:
    """Start the Streamlit app; it finds checkpoints in --checkpoints DIR, else $MET_CHECKPOINTS, else a checkout's
    checkpoints/ (io.paths.checkpoints_dir). This process becomes Streamlit's (exec), so signals reach the server."""
    import importlib.util
    import subprocess

    from .io.paths import checkpoints_dir

    missing = [m for m in APP_LIBRARIES if importlib.util.find_spec(m) is None]
    if missing:
        raise METError(
            f"the app needs {', '.join(missing)}: install the package with its app extra "
            "(pip install 'met-explorer[app]', or pip install '.[app]' in a checkout)."
        )
    if args.checkpoints is not None:
        folder = Path(args.checkpoints).expanduser()
        if not folder.is_dir():
            raise METError(
                f"--checkpoints {args.checkpoints} is not a folder; name the folder that holds your checkpoint folders."
            )
        os.environ["MET_CHECKPOINTS"] = str(folder.resolve())
    log(f"met app: checkpoints from {checkpoints_dir()}")
    cmd = app_command(args.streamlit_args)
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execv(sys.executable, cmd)
    raise SystemExit(subprocess.call(cmd))


def _app_args(a: argparse.ArgumentParser) -> None:
    a.add_argument(
        "--checkpoints",
        metavar="DIR",
        help="the folder holding checkpoint folders (default: "
        "$MET_CHECKPOINTS, else the checkout's checkpoints/, else $MET_CACHE_DIR/checkpoints); every "
        "other flag goes to Streamlit, e.g. --server.port 8502 --server.headless true",
    )


# --- entry point -----------------------------------------------------------------------------------


def log(msg: str) -> None:
    """Progress and notes on stderr, from the main process only (torchrun starts several)."""
    if os.environ.get("RANK", "0") == "0":
        print(msg, file=sys.stderr)


def add_checkpoint_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--checkpoint", required=True, type=existing_path, help="checkpoint folder")
    s.add_argument(
        "--weights",
        help="backbone weights to use instead of the recorded source: 'default' or a "
        ".safetensors file (needed when the checkpoint was trained on a file outside its folder)",
    )


def add_data_root(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data-root", help=DATA_ROOT_HELP)


def add_rule(s: argparse.ArgumentParser) -> None:
    from .analysis.policies import DEFAULT_POLICY, POLICIES

    s.add_argument(
        "--threshold", type=number(float, THRESHOLD), help="one global threshold (default: the policy's default)"
    )
    s.add_argument(
        "--thresholds",
        type=_list_parser(float, THRESHOLD),
        metavar="T1,T2,...",
        help="per-exit thresholds (K-1 or K values; the last exit always answers)",
    )
    s.add_argument(
        "--policy",
        default=DEFAULT_POLICY,
        choices=list(POLICIES),
        help="; ".join(f"{k}: {v.help}" for k, v in POLICIES.items()),
    )
    s.add_argument(
        "--rule",
        metavar="FILE",
        help="an exported exit rule (the app's 'Thresholds as JSON'): its "
        "policy and thresholds, checked against the checkpoint",
    )


def add_engine(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--engine",
        choices=["pytorch", "onnx"],
        default="pytorch",
        help="run the checkpoint in PyTorch, or its per-stage ONNX export with onnxruntime",
    )
    s.add_argument("--onnx", metavar="DIR", help="the export folder (met export; default: CHECKPOINT/onnx)")


def _train_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("--dataset", required=True, help="ImageFolder path or torchvision name (cifar10, ...)")
    t.add_argument(
        "--split", default="train", choices=["train", "test"], help="split to sub-sample for training (default: train)"
    )
    t.add_argument("--out", required=True, help="checkpoint folder to write")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a checkpoint already in --out; if the new weights differ, the files made for the old ones "
        "(traces, latency profiles, temperatures, OOD rule, ONNX export) are removed",
    )
    add_data_root(t)
    add_dataclass_args(t, METConfig, "model")
    add_dataclass_args(t, TrainConfig, "training")
    add_dataclass_args(t, RuntimeConfig, "runtime")


def _trace_args(r: argparse.ArgumentParser) -> None:
    add_checkpoint_args(r)
    r.add_argument("--out", required=True, help="trace file to write (.npz)")
    add_dataclass_args(r, TraceConfig, "trace")
    add_engine(r)
    add_dataclass_args(r, RuntimeConfig, "runtime", only=("device", "precision", "workers"))


def _whatif_args(w: argparse.ArgumentParser) -> None:
    w.add_argument("--trace", required=True)
    w.add_argument("--detail", action="store_true", help="add per-class accuracy and the confusion matrix")
    w.add_argument(
        "--intervals",
        action="store_true",
        help="add 95 %% intervals to every number (exact binomial "
        "for proportions, a seeded bootstrap for mean GMACs and speed-up)",
    )
    w.add_argument("--temperatures", metavar="FILE", help="per-exit temperatures (met reliability --out FILE)")
    w.add_argument(
        "--profile", metavar="FILE", help="a latency profile (met profile): also predict ms per image and images/s"
    )
    w.add_argument("--batch", type=number(int, BATCH), default=64, help="batch size of the latency prediction")
    add_rule(w)


def _calibrate_args(c: argparse.ArgumentParser) -> None:
    from .analysis.policies import CALIBRATABLE, DEFAULT_POLICY

    c.add_argument(
        "--trace", required=True, help="calibration trace the thresholds are chosen on (held-out or validation images)"
    )
    c.add_argument("--apply", help="test trace the chosen thresholds are measured on (default: the calibration trace)")
    c.add_argument(
        "--budget",
        type=number(float, Range(0, 100, lo_open=True)),
        help="mean cost target, a fraction of the last exit's GMACs (0.5 = half)",
    )
    c.add_argument(
        "--max-loss",
        type=number(float, Range(0, 1)),
        help="accuracy loss allowed versus the last exit, a fraction (0.005 = 0.5 point)",
    )
    c.add_argument(
        "--sweep",
        action="store_true",
        help="print every candidate point (CSV, or JSON with --json), Pareto front marked",
    )
    c.add_argument("--policy", default=DEFAULT_POLICY, choices=list(CALIBRATABLE))
    c.add_argument(
        "--delta",
        type=number(float, Range(0, 1, True, True)),
        help="with --max-loss D: certified thresholds, losing at most D with probability >= 1 - delta "
        "over the calibration images (Learn-then-Test)",
    )
    c.add_argument(
        "--spread",
        type=number(int, Range(0, 10_000)),
        default=0,
        metavar="REPS",
        help="choose again on REPS bootstrap resamples of the calibration trace and report how much the "
        "test figures move",
    )
    c.add_argument("--seed", type=number(int, SEED), default=0)
    c.add_argument("--temperatures", metavar="FILE", help="per-exit temperatures (met reliability --out FILE)")


def _reliability_args(rl: argparse.ArgumentParser) -> None:
    rl.add_argument("--trace", required=True, help="trace to measure (the test trace)")
    rl.add_argument("--fit-on", metavar="TRACE", help="fit per-exit temperatures on this (calibration) trace")
    rl.add_argument("--out", help="write the fitted temperatures here (temperatures.json beside the checkpoint)")
    rl.add_argument("--temperatures", metavar="FILE", help="measure with these temperatures")
    rl.add_argument("--bins", type=number(int, Range(2, 1000)), default=15)


def _ood_args(o: argparse.ArgumentParser) -> None:
    o.add_argument("--checkpoint", required=True, help="checkpoint folder (ood.npz is written into it)")
    o.add_argument(
        "--trace",
        required=True,
        help="a calibration trace with features (met trace --split holdout "
        "--features N): half its feature rows are the reference, half set the threshold",
    )
    o.add_argument(
        "--false-alarm",
        type=number(float, Range(0, 1, lo_open=True, hi_open=True)),
        default=0.05,
        help="the largest share of in-distribution images flagged (a conformal bound)",
    )
    o.add_argument("--k", type=number(int, Range(1, 100)), default=5, help="neighbours the distance averages")
    o.add_argument("--exit", type=number(int, Range(1, 64)), default=1, help="the exit whose features are scored")
    o.add_argument("--seed", type=number(int, Range(0, 2**32 - 1)), default=0, help="seed of the reference split")
    o.add_argument("--out", help="where to write (default: CHECKPOINT/ood.npz)")


def _predict_args(pr: argparse.ArgumentParser) -> None:
    add_checkpoint_args(pr)
    pr.add_argument("images", nargs="+", help="image files")
    pr.add_argument(
        "--max-files", type=number(int, Range(1, 10_000)), default=256, help="refuse more files than this at once"
    )
    add_rule(pr)
    add_engine(pr)
    add_dataclass_args(pr, RuntimeConfig, "runtime", only=("device", "precision"))


def _bench_exit_args(b: argparse.ArgumentParser) -> None:
    add_checkpoint_args(b)
    b.add_argument(
        "--profile",
        metavar="FILE",
        help="latency profile for the predicted column (default: "
        "CHECKPOINT/latency.json, or ONNX_DIR/latency.json with --engine onnx, when it exists)",
    )
    add_dataclass_args(b, BenchExitConfig, "measurement")
    add_rule(b)
    add_engine(b)
    add_dataclass_args(b, RuntimeConfig, "runtime", only=("device", "precision"))


def _export_args(ex: argparse.ArgumentParser) -> None:
    add_checkpoint_args(ex)
    ex.add_argument("--out", help="folder to write (default: CHECKPOINT/onnx)")
    ex.add_argument(
        "--quantize",
        choices=["fp32", "int8"],
        default="fp32",
        help="int8: onnxruntime's dynamic quantization of every stage graph (int8 weights of the matrix "
        "products, one scale per output channel; no calibration set; chosen on held-out images by bench/int8.py)",
    )
    add_rule(ex)


def _profile_args(pf: argparse.ArgumentParser) -> None:
    add_checkpoint_args(pf)
    add_dataclass_args(pf, ProfileConfig, "profile")
    pf.add_argument(
        "--out",
        help="where to write the profile (default: CHECKPOINT/latency.json; with --engine onnx ONNX_DIR/latency.json)",
    )
    add_engine(pf)
    add_dataclass_args(pf, RuntimeConfig, "runtime", only=("device", "precision"))


# (name, help, command, its arguments): the subcommands, in the order `met --help` lists them
SUBCOMMANDS: list[tuple[str, str, Callable[[argparse.Namespace], None], Callable[[argparse.ArgumentParser], None]]] = [
    ("train", "train a MET model and write a checkpoint folder", cmd_train, _train_args),
    ("trace", "run a checkpoint over a dataset split and store every exit's outputs", cmd_trace, _trace_args),
    ("info", "config, per-exit GMACs and parameter counts of a checkpoint", cmd_info, add_checkpoint_args),
    ("whatif", "metrics of thresholds on a trace (simulated from cached exit outputs)", cmd_whatif, _whatif_args),
    (
        "calibrate",
        "choose thresholds on a calibration trace, measure them on a test trace",
        cmd_calibrate,
        _calibrate_args,
    ),
    (
        "reliability",
        "expected calibration error and reliability of each exit; fit per-exit temperatures",
        cmd_reliability,
        _reliability_args,
    ),
    (
        "ood",
        "fit the out-of-distribution caution (kNN distance of exit features, conformal threshold)",
        cmd_ood,
        _ood_args,
    ),
    ("predict", "real early-exit prediction on image files", cmd_predict, _predict_args),
    (
        "bench-exit",
        "measure real batched early exit against running every image to the last exit",
        cmd_bench_exit,
        _bench_exit_args,
    ),
    (
        "profile",
        "time each piece of the real early-exit path at several batch sizes and write latency.json",
        cmd_profile,
        _profile_args,
    ),
    (
        "export",
        "write one static ONNX graph per stage and exits.json (early exit outside PyTorch)",
        cmd_export,
        _export_args,
    ),
    ("app", "start the Streamlit app (needs the app extra); Streamlit's own flags pass through", cmd_app, _app_args),
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = Parser(
        prog="met",
        description="Multiple-Exit Tuning for timm ViTs (also: python -m met_core). "
        "Multi-process: torchrun --nproc_per_node N -m met_core train|trace ...",
    )
    p.add_argument("--version", action="version", version=f"met_core {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_, func, configure in SUBCOMMANDS:
        s = sub.add_parser(name, help=help_, allow_abbrev=name != "app")  # app: no flag of Streamlit's is ours
        configure(s)
        s.set_defaults(func=func)
        if name == "app":
            continue
        s.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
        s.add_argument("--quiet", action="store_true", help="no progress bars")
        s.add_argument("--no-download", action="store_true", help="never download datasets")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "app":  # only `met app` passes unknown flags on (to Streamlit)
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.streamlit_args = extra
        args.func(args)
    except METError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
