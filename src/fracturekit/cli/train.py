"""`fracturekit train DATA --out RUN [options]`: train a classifier or a segmenter.

Every option is also a key of `--config FILE.yaml` (or of a packaged config given by name:
default, seed1_vgg19, seed2_bone_xray, seed3_fracture_types, seed4_mura_densenet,
seed5_concrete_lenet). Precedence: defaults < config file < flags. The resolved configuration is
saved as RUN/config.yaml.

RUN gets model.pt (best epoch by validation loss, with the decision threshold and temperature
fitted on validation), last.pt (resumable), history.csv, curves.png and report.html. When the
data have a test split (a test/ folder, --test, or --test-fraction), the best model is then
evaluated on it as `fracturekit evaluate` would (RUN/metrics.json, plots, report.html).

With a frozen backbone and --augment none, the frozen part runs once and the epochs train the
rest on its stored output (seconds per epoch on a CPU); with augmentation every epoch runs the
whole network, and the per-epoch lines say what that costs in images per second.

With --task segment (or --config default_segment) the model is a segmenter: DATA holds
masks/<image stem>.png beside the class folders (or a CSV mask column); images of a negative
class without a mask are empty masks, images of a positive class without one are left out of
the pixel loss (and named). model.pt then stores the decoder, the pixel threshold and min_area
chosen on validation, and the test evaluation adds the pooled pixel metrics.

Examples:
  fracturekit train data/concrete --out runs/concrete
  fracturekit train data/concrete --out runs/seg --config default_segment
  fracturekit train data/concrete --out runs/c2 --config seed5_concrete_lenet --epochs 5
  fracturekit train data/xrays --out runs/xr --freeze train-last --train-last 2 --img-size 384
  fracturekit train --resume runs/xr            # continue an interrupted run
  torchrun --nproc_per_node 2 -m fracturekit train data/concrete --out runs/ddp
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from fracturekit.cli._options import add_overwrite
from fracturekit.config import (
    AUGMENTS,
    DECODER_NAMES,
    FREEZE_POLICIES,
    HELP,
    LAYOUTS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    SEG_LOSS_NAMES,
    TASKS,
    THRESHOLD_METRICS,
    TrainConfig,
    field_types,
    load_yaml,
    resolve_config,
)

# Fields whose values come from a fixed list: argparse checks them and --help lists them.
CHOICES: dict[str, tuple[str, ...]] = {
    "layout": LAYOUTS,
    "augment": AUGMENTS,
    "freeze": FREEZE_POLICIES,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "precision": PRECISIONS,
    "threshold_metric": THRESHOLD_METRICS,
    "task": TASKS,
    "decoder": DECODER_NAMES,
    "seg_loss": SEG_LOSS_NAMES,
}
METAVARS = {"resume": "RUN", "val": "PATH", "test": "PATH", "weights": "FILE"}
# Fields that are not flags: DATA is the positional argument.
POSITIONAL = ("data",)


def _parse_none(kind: Any):
    """argparse type that also accepts ``none`` (an optional value switched off)."""

    def parse(text: str) -> Any:
        if text.strip().lower() in ("none", "null", ""):
            return _NONE
        return kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


_NONE = object()  # "--early-stop none": explicitly None, unlike a flag left out


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data",
        metavar="DATA",
        nargs="?",
        help=HELP["data"] + " (optional with --resume)",
    )
    parser.add_argument("--out", metavar="RUN", help="run folder (default with --resume: RUN)")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML file of options, or a packaged config's name (flags override it)",
    )
    add_overwrite(parser, "a model already in the RUN folder")
    parser.add_argument(
        "--no-test-eval",
        dest="test_eval",
        action="store_false",
        help="do not evaluate the test split after training",
    )
    defaults = TrainConfig()
    types = field_types()
    # "X | None" fields also accept "none" (e.g. --early-stop none switches early stopping off).
    optional = {f.name for f in dataclasses.fields(TrainConfig) if "None" in str(f.type)}
    group = parser.add_argument_group("training options (also keys of --config)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in POSITIONAL:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        tp = types[f.name]
        text = HELP.get(f.name, "")
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        text += f" (default: {shown if shown not in ('', []) else 'none'})"
        text = text.replace("%", "%%")
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": text}
        if tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if f.name in CHOICES:
            kw["choices"] = CHOICES[f.name]
        elif tp in (int, float):
            kw["type"] = _parse_none(tp) if f.name in optional else tp
        elif f.name == "hidden":
            kw["type"] = str
            kw["metavar"] = "W1,W2,..."
        elif f.name in optional:
            kw["type"] = _parse_none(str)
        kw.setdefault(
            "metavar", METAVARS.get(f.name, f.name.upper()) if "choices" not in kw else None
        )
        if kw["metavar"] is None:
            del kw["metavar"]
        group.add_argument(flag, **kw)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, Path]:
    """The resolved config and the run folder: defaults (or the resumed run's config.yaml) <
    --config < flags."""
    from fracturekit.cli import CLIError

    flags: dict[str, Any] = {}
    explicit_none: list[str] = []
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is _NONE:
            explicit_none.append(f.name)
        elif value is not None:
            flags[f.name] = value
    base = None
    out = args.out
    if args.resume is not None:
        run_cfg = Path(args.resume) / "config.yaml"
        if not run_cfg.is_file():
            raise CLIError(f"--resume {args.resume}: no config.yaml there (not a training run?)")
        base = TrainConfig().updated(load_yaml(run_cfg), source=str(run_cfg))
        out = out or args.resume
    if out is None:
        raise CLIError("--out RUN is required (the folder the run is written to)")
    cfg = resolve_config(flags, args.config, base=base)
    if explicit_none:
        cfg = dataclasses.replace(cfg, **{k: None for k in explicit_none}).validate()
    if not cfg.data:
        raise CLIError("DATA is required (a folder of class folders or a CSV manifest)")
    return cfg, Path(out)


def run(args: argparse.Namespace) -> int:
    from fracturekit.train import train
    from fracturekit.train._dist import Dist

    cfg, out = config_from_args(args)
    result = train(cfg, out, overwrite=args.overwrite)
    if not Dist.from_env().main:  # under torchrun the other ranks are done
        return 0
    if result.n_test and args.test_eval:
        from fracturekit.evaluate import evaluate_run

        metrics = evaluate_run(out, batch_size=cfg.batch_size, log=print)
        print(_test_line(metrics))
        if metrics.get("prior_support") is not None:  # train --prior: how it decides, in words
            from fracturekit.report import decision_text

            print(decision_text(metrics))
    from fracturekit.report import write_report

    report = write_report(out)
    print(f"report: {report}")
    return 0


def _test_line(metrics: dict[str, Any]) -> str:
    """``test (N images): accuracy ..., f1 ... [lo, hi], roc_auc ...``."""
    parts = []
    for key in ("accuracy", "f1", "roc_auc"):
        value = metrics.get(key)
        ci = (metrics.get("ci95") or {}).get(key)
        if value is not None:
            parts.append(f"{key} {value:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
    for key, value in (metrics.get("segmentation") or {}).items():
        if key in ("pixel_f1", "iou", "miou", "pixel_f1_tol2"):
            parts.append(f"{key} {value:.4f}")
    return f"test ({metrics.get('n')} images): " + ", ".join(parts)
