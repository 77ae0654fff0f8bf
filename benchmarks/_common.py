"""What the benchmarks share: the data folder, the run clock and machine line, the target line;
and the data-set benchmarks (``crack500.py``, ``fracatlas.py``) as a whole.

Each data-set benchmark is a :class:`Benchmark`: where its data live, how its train/test manifest is
written, its set-up on top of ``--config``, its rows of the results table and its target.
:func:`main` does the rest: flags, the output folder, training, one evaluation of the test
split (``fracturekit.evaluate.evaluate_run``), the table and the machine line.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

Row = tuple[str, str, str]  # measure, value, 95% CI


def target_line(target: str, met: bool) -> str:
    """``target <target>: met`` (or ``NOT met``): the last line of a benchmark."""
    return f"target {target}: {'met' if met else 'NOT met'}"


@dataclass
class Clock:
    """The load average and the time when a benchmark started (:func:`start_clock`)."""

    load: float
    start: float

    def line(self) -> str:
        """The machine, its load average before and now, and the seconds since the start."""
        return (
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
            f"load average before {self.load:.2f}, after {os.getloadavg()[0]:.2f}; "
            f"total {time.perf_counter() - self.start:.0f} s"
        )


def start_clock() -> Clock:
    return Clock(os.getloadavg()[0], time.perf_counter())


def bench_parser(
    doc: str, out: Path | None, data: Path | None = SHARED_DATA, out_help: str | None = None
) -> argparse.ArgumentParser:
    """An ``argparse`` parser described by the module's first line, with ``--data`` (when
    ``data`` is given) and ``--out`` (default ``out``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if data is not None:
        parser.add_argument("--data", type=Path, default=data)
    parser.add_argument("--out", type=Path, default=out, help=out_help)
    return parser


@dataclass
class Benchmark:
    """One data-set benchmark.

    Attributes:
        description: the first line of ``--help``.
        title: the table's title (``{seed}`` is filled in).
        name: the data set's name in messages.
        default_data: the data folder when ``--data`` is not given.
        marker: a file or folder inside the data folder that shows the data set is there.
        write_manifest: ``(root, out, seed=, test_fraction=, limit=) -> (path, n_train,
            n_test)``: a CSV manifest with a train/test split.
        limit_flag, limit_help: the flag that keeps a part of the data (a reduced check).
        rows: the benchmark's own rows ``(metrics, result, n_train) -> [(measure, value, ci)]``.
        config_line: ``(args, cfg, overrides) -> str`` describing the set-up.
        target: the target in words (``F1 >= 0.97``).
        met: ``(metrics, train_seconds) -> bool``: whether the target is met.
        setup: config values on top of ``--config`` (``--set`` overrides them).
    """

    description: str
    title: str
    name: str
    default_data: Path
    marker: str
    write_manifest: Callable[..., tuple[Path, int, int]]
    limit_flag: str
    limit_help: str
    rows: Callable[[dict, Any, int], list[Row]]
    config_line: Callable[[argparse.Namespace, Any, dict], str]
    target: str
    met: Callable[[dict, float], bool]
    setup: dict[str, Any] = field(default_factory=dict)


def parse_args(bench: Benchmark, argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(
        bench.description, None, bench.default_data, out_help="run folder (default: a temp dir)"
    )
    parser.add_argument("--config", default="default", help="config file or packaged name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument(
        bench.limit_flag, dest="limit", type=int, default=None, help=bench.limit_help
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def ci_text(metrics: dict, key: str) -> str:
    """``lo-hi`` of a metric's 95% confidence interval."""
    return "{:.4f}-{:.4f}".format(*metrics["ci95"][key])


def metric_rows(metrics: dict, table: list[tuple[str, str]]) -> list[Row]:
    """One row a ``(measure, metrics key)``: the value to 4 decimals, and its 95% CI where the
    evaluation gives one (F1, ROC AUC)."""
    return [
        (measure, f"{metrics[key]:.4f}", ci_text(metrics, key) if key in metrics["ci95"] else "")
        for measure, key in table
    ]


def main(bench: Benchmark, argv: list[str] | None = None) -> None:
    """Run the benchmark: manifest, train, evaluate the test split once, print the table."""
    args = parse_args(bench, argv)
    if not (args.data / bench.marker).exists():
        raise SystemExit(f"{args.data}: {bench.name} not found (pass --data)")
    with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
        out = args.out if args.out is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        _run(bench, args, out)


def _run(bench: Benchmark, args: argparse.Namespace, out: Path) -> None:
    from fracturekit.config import resolve_config
    from fracturekit.evaluate import evaluate_run
    from fracturekit.train import train

    manifest, n_train, _ = bench.write_manifest(
        args.data, out, seed=args.seed, test_fraction=args.test_fraction, limit=args.limit
    )
    overrides = {**bench.setup, **dict(kv.split("=", 1) for kv in args.set)}
    cfg = resolve_config(
        {"data": str(manifest), "seed": args.seed, "val_fraction": 0.2, **overrides}, args.config
    )
    clock = start_clock()
    result = train(cfg, out / "run", progress=not args.no_progress, overwrite=True)
    train_s = time.perf_counter() - clock.start
    metrics = evaluate_run(
        result.run_dir, manifest, out / "eval", split="test", layout="csv", seed=args.seed
    )
    caches = result.metrics.get("cache_seconds") or {}
    rows = [
        *bench.rows(metrics, result, n_train),
        ("training time (train() call)", f"{train_s:.1f} s", ""),
        ("  of which caching", f"{sum(caches.values()):.1f} s", ""),
        ("epochs run (best)", f"{len(result.history)} ({result.metrics['best_epoch']})", ""),
        ("mode", result.mode, ""),
    ]
    _print(bench.title.format(seed=args.seed), rows)
    _print_lines(
        bench.config_line(args, cfg, overrides),
        clock.line(),
        target_line(bench.target, bench.met(metrics, train_s)),
    )


def _print(title: str, rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)


def _print_lines(*lines: str) -> None:
    from rich.console import Console

    con = Console(width=160)
    for line in lines:
        con.print(line)
