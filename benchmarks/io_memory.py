"""Peak memory of decoding small files that hold many pixels (``fracturekit.io``).

A few hundred kilobytes of compressed 16-bit data can hold tens of megapixels, so what a
server pays for an upload is the decoded size and the conversion's working copies, not the
file's size. This benchmark writes four such files, decodes each with
``fracturekit.io.read_image_bytes`` (what ``POST /predict`` calls; default limits,
``channels=3``) in a fresh process, and prints a table: the file, its size, the decoded pixels
and frames, and the increase of the process's peak resident memory (``VmHWM``) during the decode.

* ``rgb16-49mp.tif``: 7000 x 7000 16-bit RGB TIFF (Deflate, a smooth gradient);
* ``rgb16-25mp.tif``: 5000 x 5000 16-bit RGB TIFF (Deflate);
* ``gray16-25mp.png``: 5000 x 5000 16-bit grey PNG;
* ``rle-100f.dcm``: 100 frames of 1100 x 1100 16-bit DICOM, RLE Lossless (only the first frame
  is shown).

Run:
    .venv/bin/python benchmarks/io_memory.py [--src OTHER/src] [--max-pixels N]

``--src`` measures another checkout's ``src`` folder (e.g. an older commit's) with the same
files.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CASES = ("rgb16-49mp.tif", "rgb16-25mp.tif", "gray16-25mp.png", "rle-100f.dcm")


def _gradient(side: int, channels: int) -> np.ndarray:
    ramp = (np.arange(side) // 16 * 100 % 60000).astype(np.uint16)  # steps: compresses well
    arr = np.broadcast_to(ramp[None, :, None], (side, side, channels))
    return np.ascontiguousarray(arr[..., 0] if channels == 1 else arr)


def _rle_frame(rows: int, cols: int, value: int) -> bytes:
    """One constant 16-bit frame in DICOM RLE (PS3.5 G): two byte planes, each row packed."""
    segments = []
    for byte in (value >> 8, value & 0xFF):
        runs, left = [], cols
        while left:  # replicate runs of at most 128 bytes: header 257 - n
            n = min(left, 128)
            runs.append(bytes([257 - n, byte]) if n > 1 else bytes([0, byte]))
            left -= n
        segments.append(b"".join(runs) * rows)
    offsets = [64, 64 + len(segments[0])]
    header = struct.pack("<16I", 2, *offsets, *([0] * 13))
    return header + b"".join(segments)


def _write_dicom(path: Path, frames: int, side: int) -> None:
    """``frames`` constant frames of ``side`` x ``side`` 16-bit grey, RLE Lossless."""
    import io

    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fixture_images import dicom_bytes  # the tests' single-frame DICOM writer

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((side, side), np.uint16))))
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([_rle_frame(side, side, 100 * (i + 1)) for i in range(frames)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def write_cases(folder: Path) -> dict[str, Path]:
    """The four test files in ``folder``."""
    import tifffile
    from PIL import Image

    paths = {name: folder / name for name in CASES}
    for name, side in (("rgb16-49mp.tif", 7000), ("rgb16-25mp.tif", 5000)):
        tifffile.imwrite(
            paths[name], _gradient(side, 3), photometric="rgb", compression="zlib", predictor=2
        )
    Image.fromarray(_gradient(5000, 1)).save(paths["gray16-25mp.png"])
    _write_dicom(paths["rle-100f.dcm"], frames=100, side=1100)
    return paths


def peak_rss_kb() -> int:
    """This process's peak resident memory in kB.

    Linux's ``VmHWM`` (this program's own high-water mark); ``ru_maxrss`` elsewhere, which on
    Linux would also count the parent's resident size at the time it started this process.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(path: str, max_pixels: int | None) -> dict:
    """Runs in a fresh process: decode one file, report the peak memory increase."""
    import PIL.Image  # noqa: F401 - loaded before the baseline, as in a running server
    import pydicom  # noqa: F401
    import pydicom.pixels  # noqa: F401
    import tifffile  # noqa: F401

    from fracturekit.io import ImageReadError, read_image_bytes

    data = Path(path).read_bytes()
    before = peak_rss_kb()
    try:
        image = read_image_bytes(data, name=Path(path).name, max_pixels=max_pixels)
        result = f"{image.mode} {image.width}x{image.height}"
    except ImageReadError as exc:
        result = f"refused: {exc.reason[:60]}"
    after = peak_rss_kb()
    return {"peak_mb": (after - before) / 1024, "result": result}


def _pixels(path: Path) -> str:
    if path.suffix == ".dcm":
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return f"{ds.Rows * ds.Columns / 1e6:.1f} MP x {int(ds.NumberOfFrames)} frames"
    from PIL import Image

    with Image.open(path) as im:
        return f"{im.width * im.height / 1e6:.1f} MP"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, help="the src folder to measure (default: this one)")
    parser.add_argument("--max-pixels", type=int, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.max_pixels)))
        return
    src = (args.src or Path(__file__).resolve().parents[1] / "src").resolve()
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    print(f"src: {src}; max_pixels: {args.max_pixels or 'default'}")
    print(f"{'file':<18} {'size':>9} {'decoded':>22} {'peak RSS +MB':>13}  result")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in write_cases(Path(tmp)).items():
            cmd = [sys.executable, __file__, "--child", str(path)]
            if args.max_pixels is not None:
                cmd += ["--max-pixels", str(args.max_pixels)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            size = f"{path.stat().st_size / 1024:.0f} kB"
            print(
                f"{name:<18} {size:>9} {_pixels(path):>22} {row['peak_mb']:>13.0f}  {row['result']}"
            )


if __name__ == "__main__":
    main()
