"""Local ``predict`` vs ``predict --ray`` on one machine, and a simulated two-node Ray cluster.

Classifies N images (the first N of ``$FRACTUREKIT_SHARED_DATA/crack500_patches``, 224 px JPEG
tiles; synthetic ones when that is missing) with one checkpoint, four ways, and checks that
every run writes the same rows as the local one:

1. local ``predict_batch`` (PyTorch with ``--cpus`` threads);
2. ``predict_ray`` on an embedded local Ray with ``--cpus`` CPUs (Ray's start-up timed apart);
3. a one-node cluster: ``ray start --head --num-cpus 1`` on localhost, joined by address;
4. the same cluster after a second node joined (``ray start --address ... --num-cpus 1``).

The nodes run as ``ray start --block`` child processes, stopped by their process id at the end
(never ``ray stop``, which would stop every Ray on the machine).

Run:
    .venv/bin/python benchmarks/ray_predict.py [--n 2000] [--cpus 2] [--backbone efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path


def _images(n: int, tmp: Path) -> list[str]:
    root = Path(os.environ.get("FRACTUREKIT_SHARED_DATA", "data")) / "crack500_patches"
    found = sorted(str(p) for c in ("crack", "no_crack") for p in (root / c).glob("*.jpg"))
    if len(found) >= n:
        step = len(found) / n  # both classes, evenly
        return [found[int(i * step)] for i in range(n)]
    import numpy as np
    from PIL import Image

    from fracturekit.synthetic import render_sample

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        path = tmp / f"img{i:05d}.png"
        Image.fromarray(render_sample(rng, 224, "concrete", i % 2 == 0).image).save(path)
        out.append(str(path))
    return out


def _checkpoint(tmp: Path, backbone: str, img_size: int) -> Path:
    from fracturekit.models import build_model, save_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(backbone, 2, pretrained=backbone == "efficientnet_lite0")
    meta = {"img_size": img_size, "classes": ["crack", "no_crack"], "positive": "crack"}
    return save_checkpoint(tmp / "model.pt", model, {**meta, "threshold": 0.5})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    return subprocess.Popen(
        [ray, "start", "--block", "--num-cpus", "1", "--disable-usage-stats", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_for_nodes(address: str, n: int, timeout: float = 120) -> None:
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        deadline = time.time() + timeout
        while sum(node["Alive"] for node in ray.nodes()) < n:
            if time.time() > deadline:
                raise RuntimeError(f"only {len(ray.nodes())} of {n} Ray node(s) came up")
            time.sleep(1)
    finally:
        ray.shutdown()


def _stop(nodes: list[subprocess.Popen]) -> None:
    for proc in reversed(nodes):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group this benchmark started
    for proc in nodes:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _forget_cluster(address: str) -> None:
    """Remove Ray's record of the head started here (``ray stop`` would, but it stops every
    Ray on the machine), so a later bare ``ray.init()`` does not try to join it."""
    try:
        from ray._common.utils import get_ray_address_file  # private: Ray 2.4x-2.6x

        record = Path(get_ray_address_file(None))
    except ImportError:
        record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if record.is_file() and record.read_text().strip().endswith(address.split(":")[-1]):
        record.unlink()


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import ray
    import torch

    from fracturekit.predict import predict_batch
    from fracturekit.ray_predict import predict_ray

    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        paths = _images(args.n, tmp)
        ckpt = _checkpoint(tmp, args.backbone, args.img_size)
        kw = {"batch_size": args.batch_size}

        torch.set_num_threads(args.cpus)
        seconds, _ = _timed(lambda: predict_batch(ckpt, paths, out=tmp / "local.csv", **kw))
        rows.append(("local predict", seconds, "reference"))
        reference = (tmp / "local.csv").read_text()

        def same(name: str) -> str:
            return "identical" if (tmp / name).read_text() == reference else "DIFFERENT"

        start, _ = _timed(lambda: ray.init("local", num_cpus=args.cpus, log_to_driver=False))
        seconds, _ = _timed(lambda: predict_ray(ckpt, paths, out=tmp / "embedded.csv", **kw))
        ray.shutdown()
        rows.append(
            (f"--ray, embedded local Ray ({args.cpus} CPUs)", seconds, same("embedded.csv"))
        )
        rows.append(("  (Ray start-up, not in the line above)", start, ""))

        port = _free_port()
        address = f"127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
        nodes = [_ray_node(["--head", "--port", str(port), "--include-dashboard=false"], env)]
        try:
            _wait_for_nodes(address, 1)
            run = lambda name: predict_ray(ckpt, paths, out=tmp / name, address=address, **kw)  # noqa: E731
            seconds, _ = _timed(lambda: run("one_node.csv"))
            rows.append(("--ray ADDRESS, 1 node x 1 CPU", seconds, same("one_node.csv")))
            nodes.append(_ray_node(["--address", address], env))
            _wait_for_nodes(address, 2)
            seconds, _ = _timed(lambda: run("two_nodes.csv"))
            rows.append(("--ray ADDRESS, 2 nodes x 1 CPU", seconds, same("two_nodes.csv")))
        finally:
            _stop(nodes)
            _forget_cluster(address)

    print(
        f"\n{args.n} images, {args.backbone} at {args.img_size} px, batch {args.batch_size}; "
        f"{os.cpu_count()} cores; ray {ray.__version__}; load average {os.getloadavg()[0]:.2f}\n"
    )
    print("| run | seconds | img/s | rows vs local |")
    print("|---|---:|---:|---|")
    for name, seconds, note in rows:
        rate = "" if not note else f"{args.n / seconds:.1f}"
        print(f"| {name} | {seconds:.1f} | {rate} | {note} |")
    local, embedded = rows[0][1], rows[1][1]
    one, two = rows[3][1], rows[4][1]
    print(
        f"\n--ray overhead on one machine: {100 * (embedded / local - 1):+.0f}% "
        f"({100 * ((embedded + rows[2][1]) / local - 1):+.0f}% with Ray's start-up); "
        f"two nodes vs one: {one / two:.2f}x"
    )


if __name__ == "__main__":
    main()
