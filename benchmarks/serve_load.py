"""Load, bad input and fuzzing against the real `fracturekit serve` process on 127.0.0.1.

1. Starts ``python -m fracturekit serve CKPT`` on a free localhost port (default checkpoint:
   ``efficientnet_lite0`` with its embedded ImageNet weights at 224 px, untrained head).
2. Load: ``--requests`` ``POST /predict`` calls (default 1,000) from ``--clients`` concurrent
   clients (default 8, httpx async), each a 224 px synthetic crack PNG; bounded in time by
   ``--max-seconds``; then ``--explain`` ``POST /explain?format=json`` calls (default 200) the
   same way. Prints errors, requests/s and p50/p95/p99 latency.
3. Bad input: ``--bad`` requests cycling through empty files, junk bytes, truncated PNGs,
   decompression bombs, wrong field names, non-multipart bodies and bodies over the upload
   limit; every answer must be a 4xx.
4. Fuzz: schemathesis against ``/openapi.json`` for ``--fuzz-seconds`` (checks:
   not_a_server_error, status_code_conformance, content_type_conformance,
   response_schema_conformance, negative_data_rejection).

The server's resident memory (VmRSS) is read after start-up, after warm-up, after the load,
after the bad input and after the fuzzing.

Run:
    .venv/bin/python benchmarks/serve_load.py [--checkpoint model.pt] [--requests 1000]
        [--clients 8] [--explain 200] [--bad 300] [--fuzz-seconds 120]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

HOST = "127.0.0.1"  # load only ever goes to this machine


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (psutil when installed, else /proc)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        text = Path(f"/proc/{pid}/status").read_text()
        kb = int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))
        return kb / 1024


def make_checkpoint(folder: Path) -> Path:
    from fracturekit.models import build_model, save_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("efficientnet_lite0", 2, pretrained=True)
    meta = {"classes": ["crack", "no_crack"], "positive": "crack", "img_size": 224}
    return save_checkpoint(folder / "model.pt", model, meta)


def pictures(n: int = 8, size: int = 224) -> list[bytes]:
    import numpy as np
    from PIL import Image

    from fracturekit.synthetic import render_sample

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(render_sample(rng, size, "concrete", i % 2 == 0).image).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def bomb_png(side: int = 100_000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


def start_server(ckpt: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fracturekit", "serve", str(ckpt)]
    cmd += ["--host", HOST, "--port", str(port), "--log-level", "warning"]
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"server did not become healthy in {timeout} s:\n{log.read_text()}")


async def load(
    url: str, images: list[bytes], n: int, clients: int, max_seconds: float, route: str
) -> dict:
    """``n`` POST ``route`` calls from ``clients`` concurrent clients; stops at ``max_seconds``."""
    import httpx

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    issued = 0
    deadline = time.monotonic() + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < n and time.monotonic() < deadline:
            i = issued
            issued += 1
            files = {"file": (f"crack{i % len(images)}.png", images[i % len(images)], "image/png")}
            t = time.perf_counter()
            try:
                r = await http.post(url + route, files=files)
                key = str(r.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            latencies.append(time.perf_counter() - t)
            statuses[key] = statuses.get(key, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]

    return {
        "requests": len(lat),
        "errors": len(lat) - statuses.get("200", 0),
        "statuses": statuses,
        "wall_s": wall,
        "rps": len(lat) / wall,
        "p50": pct(0.50),
        "p95": pct(0.95),
        "p99": pct(0.99),
    }


def bad_inputs(url: str, good: bytes, n: int, max_mb: float = 25) -> dict[str, int]:
    """``n`` bad requests, cycling through every kind; returns the count per status code."""
    import httpx

    oversize = b"\0" * int((max_mb + 5) * 2**20)
    kinds = [
        lambda: {"files": {"file": ("empty.png", b"", "image/png")}},
        lambda: {"files": {"file": ("junk.png", os.urandom(4096), "image/png")}},
        lambda: {"files": {"file": ("half.png", good[: len(good) // 2], "image/png")}},
        lambda: {"files": {"file": ("bomb.png", bomb_png(), "image/png")}},
        lambda: {"files": {"image": ("a.png", good, "image/png")}},
        lambda: {"content": good, "headers": {"content-type": "image/png"}},
        lambda: {"json": {"file": "not an upload"}},
        lambda: {"files": {"file": ("huge.png", oversize, "image/png")}},
    ]
    counts: dict[str, int] = {}
    with httpx.Client(timeout=60) as http:
        for i in range(n):
            route = "/predict" if i % 2 == 0 else "/explain"
            kind = kinds[i % len(kinds)]
            if kind is kinds[-1] and i >= 4 * len(kinds):
                kind = kinds[0]  # a few oversize bodies are enough (30 MB each to send)
            try:
                key = str(http.post(url + route, **kind()).status_code)
            except httpx.HTTPError as exc:  # a server may close the socket on a refused body
                key = type(exc).__name__
            counts[key] = counts.get(key, 0) + 1
    return counts


def fuzz(url: str, seconds: int, report: Path) -> tuple[int, str]:
    """schemathesis against /openapi.json; returns (exit code, summary lines)."""
    checks = (
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,negative_data_rejection"
    )
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", url + "/openapi.json"]
    cmd += ["--checks", checks, "--max-time", str(seconds), "--seed", "0", "--no-color"]
    cmd += ["--generation-database", "none", "--workers", "2"]
    cmd += ["--report", "junit", "--report-junit-path", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 300)
    lines = [
        ln.strip()
        for ln in proc.stdout.splitlines()
        if re.search(r"generated|passed|failed|No issues|failures? in|Failures", ln)
    ]
    return proc.returncode, "\n".join(lines[-6:]) or proc.stdout[-2000:] + proc.stderr[-2000:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="default: efficientnet_lite0 at 224 px")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=900, help="time bound of the load")
    parser.add_argument("--explain", type=int, default=200, help="/explain requests (0: none)")
    parser.add_argument("--bad", type=int, default=300, help="bad-input requests")
    parser.add_argument("--fuzz-seconds", type=int, default=120, help="0 skips the fuzzing")
    args = parser.parse_args()

    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = args.checkpoint or make_checkpoint(tmp)
        images = pictures()
        port = free_port()
        url = f"http://{HOST}:{port}"
        log = tmp / "serve.log"
        proc = start_server(ckpt, port, log)
        memory: dict[str, float] = {}
        try:
            wait_healthy(url, proc, log)
            memory["after start-up"] = rss_mb(proc.pid)
            # Warm-up of both routes: the first /explain imports grad-cam, matplotlib's colour
            # maps and scikit-image's filters (about 100 MiB, once).
            for i in range(20):
                route = "/predict" if i < 15 else "/explain?format=json"
                httpx.post(url + route, files={"file": ("w.png", images[i % 8])}, timeout=60)
            memory["after warm-up (15 predict, 5 explain)"] = rss_mb(proc.pid)
            result = asyncio.run(
                load(url, images, args.requests, args.clients, args.max_seconds, "/predict")
            )
            memory[f"after {result['requests']} /predict"] = rss_mb(proc.pid)
            explain = None
            if args.explain:
                explain = asyncio.run(
                    load(
                        url,
                        images,
                        args.explain,
                        args.clients,
                        args.max_seconds,
                        "/explain?format=json",
                    )
                )
                memory[f"after {explain['requests']} /explain"] = rss_mb(proc.pid)
            bad = bad_inputs(url, images[0], args.bad)
            memory[f"after {args.bad} bad requests"] = rss_mb(proc.pid)
            fuzz_rc, fuzz_text = None, "skipped"
            if args.fuzz_seconds > 0:
                fuzz_rc, fuzz_text = fuzz(url, args.fuzz_seconds, tmp / "fuzz.xml")
                memory["after fuzzing"] = rss_mb(proc.pid)
            alive = proc.poll() is None and httpx.get(url + "/health").status_code == 200
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        server_log = log.read_text()

    name = "efficientnet_lite0 224 px" if args.checkpoint is None else str(args.checkpoint)
    print(
        f"\nfracturekit serve ({name}) on {HOST}; {os.cpu_count()} cores, "
        f"{platform.machine()}, Python {platform.python_version()}; "
        f"load average {os.getloadavg()[0]:.2f}\n"
    )
    runs = [("POST /predict", result)] + ([("POST /explain", explain)] if explain else [])
    print(f"| {args.clients} concurrent clients | " + " | ".join(n for n, _ in runs) + " |")
    print("|---|" + "---:|" * len(runs))
    print("| requests | " + " | ".join(str(r["requests"]) for _, r in runs) + " |")
    print("| errors | " + " | ".join(f"{r['errors']} {r['statuses']}" for _, r in runs) + " |")
    print("| requests/s | " + " | ".join(f"{r['rps']:.1f}" for _, r in runs) + " |")
    for q in ("p50", "p95", "p99"):
        print(f"| latency {q} | " + " | ".join(f"{r[q]:.0f} ms" for _, r in runs) + " |")
    print()
    server_errors = sum(v for k, v in bad.items() if k.startswith("5"))
    print(f"bad input: {args.bad} requests -> {dict(sorted(bad.items()))}; 5xx: {server_errors}")
    print()
    print("| resident memory of the server | MiB |")
    print("|---|---:|")
    for when, mb in memory.items():
        print(f"| {when} | {mb:.0f} |")
    print()
    print(f"fuzz (schemathesis, {args.fuzz_seconds} s, exit code {fuzz_rc}):\n{fuzz_text}")
    unexpected = server_log.count("unexpected error")
    print(f"\nserver still healthy: {alive}; 500 answers logged by the server: {unexpected}")


if __name__ == "__main__":
    main()
