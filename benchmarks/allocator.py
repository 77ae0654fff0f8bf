"""What ``fracturekit._alloc.keep_freed_memory`` (called by the command line) buys.

Runs the same work in two fresh processes, one with glibc's default allocator settings and one
after ``keep_freed_memory()``, and prints a table: wall time per batch, CPU time split into user
and system, minor page faults and peak resident memory. The work is what the command line
spends its time on:

* ``predict``: ``Predictor.predict_proba`` on batches of 32 preprocessed 224-px images
  (EfficientNet-Lite0 with its embedded weights), as ``predict``, ``evaluate`` and ``scan`` run;
* ``cache``: the frozen prefix of the default training set-up (``forward_until`` the last three
  blocks) on batches of 64, as training's feature cache runs;
* ``train``: one optimiser step of those last three blocks and the head on cached activations.

Run:
    .venv/bin/python benchmarks/allocator.py [--batches 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path


def child(batches: int, tuned: bool) -> dict:
    import resource
    import time
    import warnings

    import torch

    from fracturekit._alloc import keep_freed_memory
    from fracturekit.models import apply_freeze, build_model, save_checkpoint
    from fracturekit.predict import Predictor

    applied = keep_freed_memory() if tuned else False
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("efficientnet_lite0", 2, pretrained=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "m.pt", model, {"classes": ["crack", "no_crack"]})
        predictor = Predictor.from_checkpoint(ckpt)
    start = len(model.blocks()) - 3
    apply_freeze(model, "train-last", 3)
    x32, x64 = torch.randn(32, 3, 224, 224), torch.randn(64, 3, 224, 224)
    with torch.no_grad():
        feats = model.forward_until(x32, start)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)
    y = torch.randint(0, 2, (32,))

    def cache_step() -> None:
        model.eval()
        with torch.no_grad():
            model.forward_until(x64, start)

    def train_step() -> None:
        model.train()
        loss = torch.nn.functional.cross_entropy(model.forward_from(feats, start), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    work = {
        "predict": lambda: predictor.predict_proba(x32),
        "cache": cache_step,
        "train": train_step,
    }
    out = {"applied": applied}
    for name, fn in work.items():
        fn()  # warm-up
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(batches):
            fn()
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        out[name] = {
            "s_per_batch": (t1 - t0) / batches,
            "user_s": r1.ru_utime - r0.ru_utime,
            "sys_s": r1.ru_stime - r0.ru_stime,
            "minor_faults": r1.ru_minflt - r0.ru_minflt,
        }
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6, help="timed batches per kind of work")
    parser.add_argument("--child", choices=["default", "tuned"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.batches, args.child == "tuned")))
        return

    from rich.console import Console
    from rich.table import Table

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    runs = {}
    load = os.getloadavg()
    for mode in ("default", "tuned"):
        proc = subprocess.run(
            [sys.executable, __file__, "--batches", str(args.batches), "--child", mode],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        runs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    table = Table(title=f"glibc defaults vs keep_freed_memory(), {args.batches} batches each")
    for col in ("work", "allocator", "s/batch", "user s", "system s", "minor faults", "speed-up"):
        table.add_column(col, justify="left" if col in ("work", "allocator") else "right")
    for work in ("predict", "cache", "train"):
        base = runs["default"][work]["s_per_batch"]
        for mode in ("default", "tuned"):
            r = runs[mode][work]
            table.add_row(
                work,
                mode if mode == "default" or runs[mode]["applied"] else "tuned (not applied)",
                f"{r['s_per_batch']:.3f}",
                f"{r['user_s']:.1f}",
                f"{r['sys_s']:.1f}",
                f"{r['minor_faults']:,}",
                f"{base / r['s_per_batch']:.2f}x",
            )
    con = Console(width=140)
    con.print(table)
    con.print(
        "peak RSS: "
        + ", ".join(f"{m} {runs[m]['peak_rss_mib']:.0f} MiB" for m in ("default", "tuned"))
    )
    con.print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
