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
4. Hostile clients: ``--slow-clients`` connections (default 8) trickling a body one byte every
   5 s while a normal ``/predict`` is sent every 0.5 s (each must be answered within 2 s);
   16-bit TIFF and multi-frame DICOM bombs (small files that decode to hundreds of MB);
   requests from a foreign ``Origin`` (403) and without the API key (401); ``--burst``
   parallel ``/explain`` of a 12 MP photo (the work queue answers 503 with Retry-After past
   its depth instead of queueing).
5. Fuzz: schemathesis against ``/openapi.json`` for ``--fuzz-seconds`` (checks:
   not_a_server_error, status_code_conformance, content_type_conformance,
   response_schema_conformance, negative_data_rejection).

The server runs with an API key (sent by every client but the missing-key case). Its resident
memory (VmRSS) is sampled every 50 ms: before, after and the peak of every phase.

Run:
    .venv/bin/python benchmarks/serve_load.py [--checkpoint model.pt] [--requests 1000]
        [--clients 8] [--explain 200] [--bad 300] [--slow-clients 8] [--burst 30]
        [--fuzz-seconds 120]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from pathlib import Path

HOST = "127.0.0.1"  # load only ever goes to this machine
API_KEY = "serve-load-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


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


def start_server(ckpt: Path, port: int, log: Path, flags: tuple[str, ...] = ()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fracturekit", "serve", str(ckpt), *flags]
    cmd += ["--host", HOST, "--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "FRACTUREKIT_API_KEY": API_KEY}
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


class Memory:
    """The server's resident memory, sampled every 50 ms on a thread; ``phase(name)`` starts
    a row of the table (before, after, peak)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rows: list[dict] = []
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                mb = rss_mb(self.pid)
            except (OSError, AttributeError):
                return
            self.peak = max(self.peak, mb)
            if self.rows:
                self.rows[-1]["peak"] = max(self.rows[-1]["peak"], mb)

    def phase(self, name: str, run, *args, **kwargs):
        now = rss_mb(self.pid)
        row = {"phase": name, "before": now, "peak": now, "after": now, "result": None}
        self.rows.append(row)
        row["result"] = run(*args, **kwargs)
        row["after"] = rss_mb(self.pid)
        row["peak"] = max(row["peak"], row["after"])
        self.peak = max(self.peak, row["peak"])
        return row["result"]

    def stop(self) -> None:
        self._stop.set()


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
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=AUTH) as http:
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
    with httpx.Client(timeout=60, headers=AUTH) as http:
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
    cmd += ["--generation-database", "none", "--workers", "2", "--header", f"X-API-Key: {API_KEY}"]
    cmd += ["--report", "junit", "--report-junit-path", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 300)
    lines = [
        ln.strip()
        for ln in proc.stdout.splitlines()
        if re.search(r"generated|passed|failed|No issues|failures? in|Failures", ln)
    ]
    return proc.returncode, "\n".join(lines[-6:]) or proc.stdout[-2000:] + proc.stderr[-2000:]


def tiff16_bomb(side: int = 6000) -> bytes:
    """A 16-bit gray TIFF of side x side pixels (36 MP: under the 40 MP limit), deflated: a few
    hundred KB on the wire, 72 MB as 16-bit pixels and more once converted."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.uint16)).save(
        buf, "TIFF", compression="tiff_adobe_deflate"
    )
    return buf.getvalue()


def dicom_frame_bomb(side: int = 2048, frames: int = 48) -> bytes:
    """A multi-frame 16-bit DICOM with the Deflated transfer syntax: 4 MP a frame (under the
    pixel limit), ``frames`` frames: about 400 MB of pixels in a file of under 1 MB."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fixture_images import deflated_dicom  # the tests' DICOM writer

    return deflated_dicom(side, frames)


def photo_12mp() -> bytes:
    """A 4000 x 3000 JPEG (a phone photo's size)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((4000, 3000), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def statuses_of(url: str, requests: list[dict], parallel: int = 4) -> dict:
    """Send ``requests`` (httpx.post keyword arguments, ``route`` included), ``parallel`` at a
    time; the count per status and the slowest answer."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    def one(req: dict) -> tuple[str, float]:
        req = dict(req)
        route = req.pop("route")
        t = time.perf_counter()
        try:
            key = str(httpx.post(url + route, timeout=120, **req).status_code)
        except httpx.HTTPError as exc:
            key = type(exc).__name__
        return key, time.perf_counter() - t

    counts: dict[str, int] = {}
    slowest = 0.0
    with ThreadPoolExecutor(parallel) as pool:
        for key, seconds in pool.map(one, requests):
            counts[key] = counts.get(key, 0) + 1
            slowest = max(slowest, seconds)
    return {"statuses": counts, "slowest_s": slowest}


def slow_clients(url: str, port: int, n: int, good: bytes, seconds: float) -> dict:
    """``n`` raw connections trickling a multipart body one byte every 5 s for ``seconds``,
    while a normal /predict is sent every 0.5 s; the normal answers' statuses and latencies,
    and what the slow clients got back."""
    import httpx

    head = (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Length: 100000\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n\r\n"
        '--b\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\n\r\n'
    ).encode()
    socks = []
    for _ in range(n):
        sock = socket.create_connection((HOST, port))
        sock.sendall(head)
        socks.append(sock)
    answers: dict[str, int] = {}
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    start = time.monotonic()
    next_byte = start + 5
    with httpx.Client(timeout=30, headers=AUTH) as http:
        while time.monotonic() - start < seconds:
            t = time.perf_counter()
            r = http.post(url + "/predict", files={"file": ("n.png", good, "image/png")})
            latencies.append(time.perf_counter() - t)
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
            if time.monotonic() >= next_byte:
                next_byte += 5
                for sock in socks:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"x")
            time.sleep(0.5)
    for sock in socks:
        sock.settimeout(1)
        try:
            line = sock.recv(64).split(b"\r\n", 1)[0].decode("latin-1")
            key = line.split(" ")[1] if line.startswith("HTTP/") else "no answer"
        except OSError:
            key = "no answer"
        answers[key] = answers.get(key, 0) + 1
        sock.close()
    return {
        "statuses": statuses,
        "slowest_s": max(latencies),
        "slow_clients_got": answers,
    }


def hostile(url: str, port: int, args: argparse.Namespace, images: list[bytes], mem: Memory):
    """The hostile phases, each a row of ``mem``; returns {phase: result}."""
    png = {"file": ("a.png", images[0], "image/png")}
    out = {}
    out["slow clients"] = mem.phase(
        f"{args.slow_clients} slow clients (1 byte / 5 s), /predict every 0.5 s",
        slow_clients,
        url,
        port,
        args.slow_clients,
        images[0],
        args.slow_seconds,
    )
    bombs = [
        ("tiff", "16-bit TIFF bomb, 36 MP", "bomb.tif", tiff16_bomb()),
        ("dicom", "DICOM frame bomb, 48 x 4 MP", "bomb.dcm", dicom_frame_bomb()),
    ]
    for key, title, name, data in bombs:
        reqs = [
            {"route": r, "files": {"file": (name, data, "application/octet-stream")}}
            for r in ("/predict", "/explain?format=json") * 4
        ]
        for req in reqs:
            req["headers"] = AUTH
        title = f"{title} ({len(data) // 1024} KB) x8"
        out[key] = mem.phase(title, statuses_of, url, reqs)
    evil = {**AUTH, "Origin": "http://evil.example"}
    reqs = [{"route": "/predict", "files": png, "headers": evil}] * 20
    out["origin"] = mem.phase("foreign Origin x20", statuses_of, url, reqs)
    reqs = [{"route": "/predict", "files": png}] * 20
    out["key"] = mem.phase("missing API key x20", statuses_of, url, reqs)
    if args.burst:
        photo = photo_12mp()
        reqs = [
            {
                "route": "/explain?format=json",
                "files": {"file": ("p.jpg", photo, "image/jpeg")},
                "headers": AUTH,
            }
        ] * args.burst
        out["burst"] = mem.phase(
            f"{args.burst} parallel /explain, 12 MP JPEG", statuses_of, url, reqs, args.burst
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="default: efficientnet_lite0 at 224 px")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=900, help="time bound of the load")
    parser.add_argument("--explain", type=int, default=200, help="/explain requests (0: none)")
    parser.add_argument("--bad", type=int, default=300, help="bad-input requests")
    parser.add_argument("--slow-clients", type=int, default=8, help="trickling connections")
    parser.add_argument("--slow-seconds", type=float, default=20, help="how long they trickle")
    parser.add_argument("--burst", type=int, default=30, help="parallel 12 MP /explain (0: none)")
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
        mem = None
        try:
            wait_healthy(url, proc, log)
            mem = Memory(proc.pid)
            mem.phase("start-up", lambda: None)

            # Warm-up of both routes: the first /explain imports grad-cam, matplotlib's colour
            # maps and scikit-image's filters (about 100 MiB, once).
            def warm() -> None:
                for i in range(20):
                    route = "/predict" if i < 15 else "/explain?format=json"
                    files = {"file": ("w.png", images[i % 8])}
                    httpx.post(url + route, files=files, headers=AUTH, timeout=60)

            mem.phase("warm-up (15 predict, 5 explain)", warm)
            run = asyncio.run
            result = mem.phase(
                f"{args.requests} /predict, {args.clients} clients",
                lambda: run(
                    load(url, images, args.requests, args.clients, args.max_seconds, "/predict")
                ),
            )
            explain = None
            if args.explain:
                explain = mem.phase(
                    f"{args.explain} /explain, {args.clients} clients",
                    lambda: run(
                        load(
                            url,
                            images,
                            args.explain,
                            args.clients,
                            args.max_seconds,
                            "/explain?format=json",
                        )
                    ),
                )
            bad = mem.phase(f"{args.bad} bad requests", bad_inputs, url, images[0], args.bad)
            hostile_results = hostile(url, port, args, images, mem)
            fuzz_rc, fuzz_text = None, "skipped"
            if args.fuzz_seconds > 0:
                fuzz_rc, fuzz_text = mem.phase(
                    f"fuzzing {args.fuzz_seconds} s", fuzz, url, args.fuzz_seconds, tmp / "fuzz.xml"
                )
            alive = proc.poll() is None and httpx.get(url + "/health").status_code == 200
        finally:
            if mem is not None:
                mem.stop()
            stop_server(proc)
        server_log = log.read_text()
    report(args, result, explain, bad, hostile_results, mem, fuzz_rc, fuzz_text, alive, server_log)


def report(args, result, explain, bad, hostile_results, mem, fuzz_rc, fuzz_text, alive, log):
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
    print("| phase | answers | slowest | RSS before | RSS after | RSS peak |")
    print("|---|---|---:|---:|---:|---:|")
    for row in mem.rows:
        res = row["result"]
        answers, slowest = "", ""
        if isinstance(res, dict) and "slowest_s" in res:
            answers = str(res["statuses"])
            if "slow_clients_got" in res:
                answers += f"; slow clients got {res['slow_clients_got']}"
            slowest = f"{res['slowest_s']:.2f} s"
        elif isinstance(res, dict) and "statuses" in res:
            answers, slowest = str(res["statuses"]), f"p99 {res['p99']:.0f} ms"
        elif isinstance(res, dict):
            answers = str(dict(sorted(res.items())))
        print(
            f"| {row['phase']} | {answers} | {slowest} | {row['before']:.0f} MiB | "
            f"{row['after']:.0f} MiB | {row['peak']:.0f} MiB |"
        )
    print(f"\npeak resident memory of the server: {mem.peak:.0f} MiB")
    fives = sum(
        v
        for res in [result, explain, *hostile_results.values()]
        if res
        for k, v in res["statuses"].items()
        if k.startswith("5") and k != "503"
    )
    print(f"5xx other than 503 (busy) answers: {fives + server_errors}")
    print(f"\nfuzz (schemathesis, {args.fuzz_seconds} s, exit code {fuzz_rc}):\n{fuzz_text}")
    unexpected = log.count("unexpected error")
    print(f"\nserver still healthy: {alive}; 500 answers logged by the server: {unexpected}")


if __name__ == "__main__":
    main()
