"""fracturekit.io: formats, conversions, EXIF rule, DICOM, errors, truncation, pixel limit."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from fixture_images import (
    blob_image,
    deflated_dicom,
    dicom_bytes,
    jpeg_bytes,
    noise_image,
    write_exif_jpeg,
    write_rgba_png,
    write_tiff16,
    write_truncated_jpeg,
)
from fracturekit.io import (
    DECODED_BYTES_PER_PIXEL,
    IMAGE_EXTENSIONS,
    MAX_PIXELS_ENV,
    READ_ERROR_KINDS,
    CheckReport,
    ImageReadError,
    check_images,
    exif_orientation,
    is_dicom,
    is_image_file,
    max_decoded_bytes,
    open_image,
    read_image,
    read_image_bytes,
    read_mask,
)

# --------------------------------------------------------------------------------------------
# formats and conversions


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("rgb.png", lambda p: noise_image(1).save(p)),
        ("gray.png", lambda p: noise_image(2, mode="L").save(p)),
        ("rgb.jpg", lambda p: noise_image(3).save(p, quality=90)),
        ("gray.jpg", lambda p: noise_image(4, mode="L").save(p)),
        ("rgb.bmp", lambda p: noise_image(5).save(p)),
        ("rgb.tif", lambda p: noise_image(6).save(p)),
        ("gray16.tif", write_tiff16),
        ("rgba.png", write_rgba_png),
        ("palette.png", lambda p: noise_image(7).convert("P").save(p)),
        ("bilevel.png", lambda p: noise_image(8, mode="L").convert("1").save(p)),
        ("webp.webp", lambda p: noise_image(9).save(p)),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_formats_read_as_8bit_rgb_or_l(tmp_path: Path, name, make, channels) -> None:
    path = tmp_path / name
    make(path)
    image = read_image(path, channels=channels)
    assert image.mode == ("RGB" if channels == 3 else "L")
    assert image.size == (40, 32)
    assert np.asarray(image).dtype == np.uint8
    assert image.info["orientation"] == 1
    assert is_image_file(path)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    noise_image(1, mode="L").save(path)
    arr = np.asarray(read_image(path))
    assert arr.shape == (32, 40, 3)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert (arr[..., 0] == np.asarray(Image.open(path))).all()


def test_colour_to_one_channel_is_luma(tmp_path: Path) -> None:
    path = tmp_path / "c.png"
    noise_image(1).save(path)
    expected = np.asarray(Image.open(path).convert("L"))
    assert (np.asarray(read_image(path, channels=1)) == expected).all()


def test_16bit_is_stretched_by_its_actual_range(tmp_path: Path) -> None:
    path = write_tiff16(tmp_path / "x.tif", lo=1000, hi=5000)  # 12-bit data: /257 would be ~dark
    image, info = open_image(path)
    arr = np.asarray(image)
    assert info.mode.startswith("I;16") and info.format == "TIFF"
    assert arr.min() == 0 and arr.max() == 255
    assert np.all(np.diff(arr.ravel().astype(int)) >= 0)  # a ramp stays monotone


def test_16bit_png_and_float_tiff(tmp_path: Path) -> None:
    ramp = np.linspace(300, 900, 40 * 32).reshape(32, 40)
    Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / "p16.png")
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "f.tif")
    for name in ("p16.png", "f.tif"):
        arr = np.asarray(read_image(tmp_path / name, channels=1))
        assert arr.min() == 0 and arr.max() == 255, name


def test_16bit_colour_tiff_keeps_full_depth(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    # All values below 256: PIL alone (high byte only) would give an all-black image.
    arr = np.zeros((32, 40, 3), dtype=np.uint16)
    arr[:, 20:, 1] = 200
    tifffile.imwrite(tmp_path / "rgb16.tif", arr, photometric="rgb")
    image, info = open_image(tmp_path / "rgb16.tif")
    out = np.asarray(image)
    assert image.mode == "RGB" and info.mode.endswith(";16")
    assert out[0, 30, 1] == 255 and out[0, 5, 1] == 0


def test_constant_16bit_image_is_black(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 777, np.uint16)).save(tmp_path / "c.png")
    assert np.asarray(read_image(tmp_path / "c.png", channels=1)).max() == 0


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    path = write_rgba_png(tmp_path / "a.png")  # red 200 opaque left half, transparent right half
    arr = np.asarray(read_image(path))
    assert tuple(arr[5, 5]) == (200, 0, 0)
    assert tuple(arr[5, 35]) == (0, 0, 0)
    half = np.zeros((4, 4, 4), np.uint8)
    half[..., 0], half[..., 3] = 200, 128
    Image.fromarray(half, "RGBA").save(tmp_path / "half.png")
    assert abs(int(np.asarray(read_image(tmp_path / "half.png"))[0, 0, 0]) - 100) <= 1


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    image.info["transparency"] = 1
    image.save(tmp_path / "t.png", transparency=1)
    assert np.asarray(read_image(tmp_path / "t.png")).max() == 0  # transparent white -> black


# --------------------------------------------------------------------------------------------
# DICOM


def _stored(shape=(20, 24)) -> np.ndarray:
    return (np.arange(shape[0] * shape[1]).reshape(shape) * 9 % 4096).astype(np.uint16)


def test_dicom_min_max_without_window(tmp_path: Path) -> None:
    values = _stored()
    (tmp_path / "a.dcm").write_bytes(dicom_bytes(values))
    image, info = open_image(tmp_path / "a.dcm")
    arr = np.asarray(image)
    assert info.format == "DICOM" and info.mode == "MONOCHROME2;16"
    assert image.mode == "L" and image.size == (24, 20)
    expected = np.rint((values - values.min()) * 255.0 / (values.max() - values.min()))
    assert np.abs(arr.astype(int) - expected).max() <= 1
    assert read_image(tmp_path / "a.dcm").mode == "RGB"


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    values = _stored()
    (tmp_path / "m2.dcm").write_bytes(dicom_bytes(values))
    (tmp_path / "m1.dcm").write_bytes(dicom_bytes(values, photometric="MONOCHROME1"))
    m2 = np.asarray(read_image(tmp_path / "m2.dcm", channels=1)).astype(int)
    m1 = np.asarray(read_image(tmp_path / "m1.dcm", channels=1)).astype(int)
    assert (m1 == 255 - m2).all()


def test_dicom_rescale_then_window(tmp_path: Path) -> None:
    # stored 0..400, slope 2, intercept -100 -> -100..700; window centre 300 width 201
    values = np.array([[0, 150, 200, 250, 400]], dtype=np.uint16)
    data = dicom_bytes(values, slope=2.0, intercept=-100.0, window=(300.0, 201.0))
    (tmp_path / "w.dcm").write_bytes(data)
    arr = np.asarray(read_image(tmp_path / "w.dcm", channels=1))[0].astype(int)
    # modality values -100, 200, 300, 400, 700; DICOM PS3.3 C.11.2.1.2.1 linear window:
    # 0 at or below c - 0.5 - (w-1)/2 = 199.5, 255 above c - 0.5 + (w-1)/2 = 399.5,
    # else ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.
    assert arr.tolist() == [0, 1, 128, 255, 255]


def test_dicom_detected_by_preamble_and_by_extension(tmp_path: Path) -> None:
    values = _stored()
    with_preamble = dicom_bytes(values)
    (tmp_path / "noext").write_bytes(with_preamble)  # no extension: the DICM preamble decides
    (tmp_path / "bare.dcm").write_bytes(dicom_bytes(values, preamble=False))  # .dcm decides
    assert is_image_file(tmp_path / "noext")
    a = np.asarray(read_image(tmp_path / "noext", channels=1))
    b = np.asarray(read_image(tmp_path / "bare.dcm", channels=1))
    c = np.asarray(read_image_bytes(with_preamble, channels=1))
    d = np.asarray(read_image_bytes(dicom_bytes(values, preamble=False), name="x.DCM"))
    assert (a == b).all() and (a == c).all() and (a == d[..., 0]).all()


def test_dicom_without_pixels_is_an_error(tmp_path: Path) -> None:
    data = dicom_bytes(_stored())
    from pydicom import dcmread

    ds = dcmread(__import__("io").BytesIO(data))
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="no PixelData"):
        read_image(tmp_path / "nopix.dcm")


# --------------------------------------------------------------------------------------------
# EXIF orientation: images and masks


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_to_image_and_mask_alike(tmp_path: Path, orientation) -> None:
    stored = blob_image()  # bright asymmetric box: any wrong transpose moves it
    path = write_exif_jpeg(tmp_path / "r.jpg", stored, orientation)
    mask_path = tmp_path / "r_mask.png"
    Image.fromarray(((np.asarray(stored) > 127) * 255).astype(np.uint8)).save(mask_path)

    image = read_image(path, channels=1)
    expected = ImageOps.exif_transpose(Image.open(path)).convert("L")
    assert image.size == expected.size
    assert np.abs(np.asarray(image).astype(int) - np.asarray(expected)).max() <= 1
    assert image.info["orientation"] == orientation == exif_orientation(path)

    mask = read_mask(mask_path, size=image.size, orientation=image.info["orientation"])
    assert mask.shape == (image.height, image.width)
    bright = np.asarray(image) > 127
    assert (mask == bright).mean() > 0.99


def test_read_mask_binarises_and_resizes(tmp_path: Path) -> None:
    arr = np.zeros((10, 12), np.uint8)
    arr[2:5, 3:9] = 1
    Image.fromarray(arr).save(tmp_path / "01.png")  # a 0/1 mask
    Image.fromarray(arr * 255).save(tmp_path / "0255.png")
    jpeg = Image.fromarray(arr * 255)
    jpeg.save(tmp_path / "m.jpg", quality=60)  # JPEG noise around the edges
    for name in ("01.png", "0255.png"):
        mask = read_mask(tmp_path / name)
        assert mask.dtype == bool and (mask == arr.astype(bool)).all()
    assert (read_mask(tmp_path / "m.jpg") == arr.astype(bool)).mean() > 0.95
    big = read_mask(tmp_path / "0255.png", size=(24, 20))
    assert big.shape == (20, 24) and big.sum() == arr.sum() * 4


def test_fracatlas_rotated_image_and_mask_agree(shared_data: Path) -> None:
    path = shared_data / "fracatlas" / "fractured" / "IMG0002588.jpg"  # EXIF orientation 3
    image = read_image(path)
    assert image.info["orientation"] == 3
    mask = read_mask(
        shared_data / "fracatlas" / "masks" / "IMG0002588.png",
        size=image.size,
        orientation=image.info["orientation"],
    )
    stored = read_mask(shared_data / "fracatlas" / "masks" / "IMG0002588.png")
    assert mask.shape == (image.height, image.width)
    assert (mask == stored[::-1, ::-1]).all()  # orientation 3 = rotate 180


# --------------------------------------------------------------------------------------------
# errors


def _expect_error(path: Path, fragment: str) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.path == str(path)
    assert str(err) == f"{path}: {err.reason}"
    assert fragment in err.reason, err.reason
    return err


def test_errors_name_the_file_and_reason(tmp_path: Path) -> None:
    _expect_error(tmp_path / "missing.png", "no such file")
    (tmp_path / "empty.png").write_bytes(b"")
    _expect_error(tmp_path / "empty.png", "empty file")
    (tmp_path / "text.png").write_text("hello, I am text")
    _expect_error(tmp_path / "text.png", "not a readable image")
    (tmp_path / "corrupt.jpg").write_bytes(jpeg_bytes(noise_image(1))[:300] + b"\x00" * 40)
    err = _expect_error(tmp_path / "corrupt.jpg", "")
    assert "truncated" in err.reason or "corrupt" in err.reason
    (tmp_path / "header.jpg").write_bytes(b"\xff\xd8\xff")
    _expect_error(tmp_path / "header.jpg", "corrupt header")
    (tmp_path / "folder.png").mkdir()
    _expect_error(tmp_path / "folder.png", "folder")
    (tmp_path / "bad.dcm").write_bytes(b"garbage that claims to be dicom")
    _expect_error(tmp_path / "bad.dcm", "DICOM")


def test_read_image_bytes_names_the_upload() -> None:
    with pytest.raises(ImageReadError, match=r"^scan\.png: not a readable image"):
        read_image_bytes(b"not an image", name="scan.png")
    with pytest.raises(ImageReadError, match="^upload: empty file"):
        read_image_bytes(b"")
    image = read_image_bytes(jpeg_bytes(noise_image(1)), channels=1)
    assert image.mode == "L" and image.size == (40, 32)


def test_error_pickles() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(ImageReadError("a.png", "broken")))
    assert (err.path, err.reason, str(err)) == ("a.png", "broken", "a.png: broken")
    assert err.kind == "unreadable"
    err = pickle.loads(pickle.dumps(ImageReadError("b.png", "big", kind="too_large")))
    assert (err.kind, err.truncated) == ("too_large", False)


def _kind_cases(tmp_path: Path) -> dict[str, tuple[Path, dict]]:
    """A file (and read_image options) for each kind of read error."""
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, I am text")
    Image.new("L", (2000, 1000)).save(tmp_path / "big.png")
    (tmp_path / "folder.png").mkdir()
    return {
        "missing": (tmp_path / "missing.png", {}),
        "empty": (tmp_path / "empty.png", {}),
        "unreadable": (tmp_path / "text.png", {}),
        "too_large": (tmp_path / "big.png", {"max_pixels": 1_000_000}),
        "truncated": (write_truncated_jpeg(tmp_path / "t.jpg"), {"strict": True}),
        "folder": (tmp_path / "folder.png", {}),
    }


def test_errors_say_their_kind(tmp_path: Path) -> None:
    """``kind`` tells a program what went wrong without reading the message."""
    cases = _kind_cases(tmp_path)
    assert set(READ_ERROR_KINDS) <= set(cases)
    expected = {name: name for name in READ_ERROR_KINDS} | {"folder": "missing"}
    for name, (path, options) in cases.items():
        with pytest.raises(ImageReadError) as info:
            read_image(path, **options)
        assert info.value.kind == expected[name], (name, info.value)
    with pytest.raises(ImageReadError) as info:  # the decoded-bytes budget too
        read_image_bytes(dicom_bytes(_stored()), name="a.dcm", max_pixels=100)
    assert info.value.kind == "too_large"
    with pytest.raises(ImageReadError) as info:
        read_image_bytes(b"")
    assert info.value.kind == "empty"
    with pytest.raises(ValueError, match="kind='huge'"):
        ImageReadError("a.png", "broken", kind="huge")


# --------------------------------------------------------------------------------------------
# truncated files


def test_truncated_loads_by_default_and_strict_refuses(tmp_path: Path) -> None:
    path = write_truncated_jpeg(tmp_path / "t.jpg")
    with pytest.raises(OSError, match="truncated"):
        Image.open(path).load()  # the precondition: PIL refuses it by default
    image, info = open_image(path)
    assert image.size == (64, 48)
    assert info.warning and "truncated" in info.warning
    assert read_image(path).size == (64, 48)
    with pytest.raises(ImageReadError, match="truncated.*strict") as exc:
        read_image(path, strict=True)
    assert exc.value.truncated
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never left on


def test_check_images_sorts_files(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    noise_image(1).save(good)
    trunc = write_truncated_jpeg(tmp_path / "t.jpg")
    empty = tmp_path / "e.png"
    empty.write_bytes(b"")
    report = check_images([good, trunc, empty, good])
    assert isinstance(report, CheckReport)
    assert report.ok == [good, trunc]
    assert [w.path for w in report.warnings] == [trunc]
    assert [(e.path, e.reason) for e in report.errors] == [(empty, "empty file (0 bytes)")]
    assert report.infos[good].size == (40, 32)
    assert not report.clean
    strict = check_images([good, trunc, empty], strict=True)
    assert strict.ok == [good] and {e.path for e in strict.errors} == {trunc, empty}
    assert check_images([]).clean


def test_check_images_concurrent_truncation_is_always_reported(tmp_path: Path) -> None:
    # The tolerant decode flips PIL's global only while no other decode runs: with many threads,
    # every truncated file must still be reported (none may slip through silently).
    paths = []
    for i in range(60):
        if i % 3 == 0:
            paths.append(write_truncated_jpeg(tmp_path / f"t{i}.jpg", seed=i, cut=3 + i % 7))
        else:
            p = tmp_path / f"g{i}.jpg"
            p.write_bytes(jpeg_bytes(noise_image(i, (64, 48))))
            paths.append(p)
    expected = {p for p in paths if p.name.startswith("t")}
    for _ in range(3):
        report = check_images(paths, workers=8)
        assert {w.path for w in report.warnings} == expected
        assert not report.errors and len(report.ok) == 60
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --------------------------------------------------------------------------------------------
# decompression bombs and PIL's own limit


def test_pixel_limit_refuses_with_a_clear_message(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (2000, 1000)).save(path)
    with pytest.raises(ImageReadError, match=r"2000x1000 = 2\.0 megapixels.*limit of 1 mega"):
        read_image(path, max_pixels=1_000_000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1500000")
    with pytest.raises(ImageReadError, match=MAX_PIXELS_ENV):
        read_image(path)
    assert read_image(path, max_pixels=3_000_000).size == (2000, 1000)  # the argument wins
    report = check_images([path])
    assert report.errors and "megapixels" in report.errors[0].reason
    monkeypatch.setenv(MAX_PIXELS_ENV, "0")  # 0 turns the check off
    assert read_image(path).size == (2000, 1000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_PIXELS_ENV):
        read_image(path)


def test_dicom_pixel_limit(tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(dicom_bytes(_stored()))
    with pytest.raises(ImageReadError, match="megapixels"):
        read_image(tmp_path / "a.dcm", max_pixels=100)


def test_pil_global_limit_never_interferes(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "p.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL would refuse 4096 px (> 2x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor may it warn
        assert read_image(path).size == (64, 64)
    assert Image.MAX_IMAGE_PIXELS == 1000  # and it is left as it was


# --------------------------------------------------------------------------------------------
# real data


def test_fracatlas_truncated_files_found_quickly(shared_data: Path) -> None:
    files = sorted((shared_data / "fracatlas").glob("*/*.jpg"))
    assert len(files) == 2077
    start = time.perf_counter()
    report = check_images(files)
    elapsed = time.perf_counter() - start
    truncated = sorted(w.path for w in report.warnings)
    assert len(truncated) == 34  # shared/data/README.md
    assert all(p.parent.name == "not_fractured" for p in truncated)
    assert all("IMG0004000" <= p.stem <= "IMG0004399" for p in truncated)  # IMG00040xx-43xx
    assert not report.errors and len(report.ok) == 2077
    assert elapsed < 60, f"check_images took {elapsed:.1f} s for 2077 files"
    modes = {info.mode for info in report.infos.values()}
    assert modes == {"L", "RGB"}


def test_extensions_table() -> None:
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"} <= IMAGE_EXTENSIONS
    assert not is_image_file(Path(".DS_Store"))


# --------------------------------------------------------------------------------------------
# bounded memory: the decoded-bytes budget, chunked conversions, one DICOM frame


def _multiframe_dicom(frames: np.ndarray, *, rle: bool = False, bits: int = 16) -> bytes:
    """A DICOM file of ``frames`` (frames, rows, cols[, 3]), native or RLE Lossless."""
    import io as stdio

    from pydicom import dcmread
    from pydicom.uid import RLELossless

    ds = dcmread(stdio.BytesIO(dicom_bytes(frames[0, ..., 0] if frames.ndim == 4 else frames[0])))
    ds.NumberOfFrames = len(frames)
    if frames.ndim == 4:  # colour, samples interleaved
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    dtype = f"<u{bits // 8}"
    if rle:
        ds.compress(RLELossless, frames.astype(dtype))
    else:
        ds.PixelData = frames.astype(dtype).tobytes()
    buf = stdio.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _traced_peak(fn):
    """``(fn(), peak bytes numpy and Python allocated while it ran)``."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_bytes_budget_refuses_16bit_colour_from_the_header(tmp_path: Path, monkeypatch) -> None:
    tifffile = pytest.importorskip("tifffile")
    # 0.81 megapixels, under a 1-megapixel limit, but 16-bit RGB: 4.86 MB decoded > 4 MB.
    tifffile.imwrite(tmp_path / "rgb16.tif", np.zeros((900, 900, 3), np.uint16), photometric="rgb")

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded although the header is over the budget")

    monkeypatch.setattr(tifffile, "imread", no_decode)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(ImageReadError, match=r"16-bit samples: 5 MB decoded, over the budget of 4"):
        read_image(tmp_path / "rgb16.tif", max_pixels=1_000_000)
    data = (tmp_path / "rgb16.tif").read_bytes()
    with pytest.raises(ImageReadError, match=f"^x.tif: .*budget.*{MAX_PIXELS_ENV}"):
        read_image_bytes(data, name="x.tif", max_pixels=1_000_000)  # what the server calls
    assert max_decoded_bytes(1_000_000) == DECODED_BYTES_PER_PIXEL * 1_000_000
    assert max_decoded_bytes(0) is None
    monkeypatch.undo()
    assert read_image(tmp_path / "rgb16.tif", max_pixels=1_300_000).size == (900, 900)


def test_bytes_budget_counts_bytes_per_sample(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    Image.fromarray(np.zeros((100, 100), np.uint16)).save(tmp_path / "g16.png")  # 20 kB
    Image.new("RGBA", (100, 100)).save(tmp_path / "rgba.png")  # 40 kB
    Image.fromarray(np.zeros((100, 100), np.float32)).save(tmp_path / "f32.tif")  # 40 kB
    for name in ("g16.png", "rgba.png", "f32.tif"):  # at most 4 bytes a pixel: pixels decide
        assert read_image(tmp_path / name, max_pixels=10_000).size == (100, 100), name
    tifffile.imwrite(tmp_path / "rgb16.tif", np.zeros((100, 100, 3), np.uint16))  # 60 kB
    with pytest.raises(ImageReadError, match="3 x 16-bit samples"):
        read_image(tmp_path / "rgb16.tif", max_pixels=10_000)


def test_stretch_is_chunked_and_matches_the_float64_formula() -> None:
    from fracturekit.io._convert import CHUNK_VALUES, stretch

    rng = np.random.default_rng(0)
    small = rng.normal(size=(70, 30, 3)).astype(np.float32)
    small[3, 4, 1] = np.nan
    x = np.nan_to_num(small.astype(np.float64))
    lo, hi = x.min(), x.max()
    expected = np.clip(np.rint((x - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    assert (stretch(small) == expected).all()
    assert not stretch(np.full((5, 5), 7, np.uint16)).any()  # constant: zeros

    big = np.tile(np.arange(3000, dtype=np.uint16), (3000, 1))  # 18 MB of 16-bit data
    out, peak = _traced_peak(lambda: stretch(big))
    assert out[0, 0] == 0 and out[0, -1] == 255
    # The uint8 output plus one float64 chunk and its uint8 copy, not float64 of the image.
    assert peak < out.nbytes + 10 * CHUNK_VALUES + 1_000_000, peak


def test_16bit_colour_tiff_peak_memory(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    arr = np.tile(np.arange(2000, dtype=np.uint16)[:, None] * 30, (1, 1500))
    rgb = np.dstack([arr, arr // 2, arr // 3])  # 18 MB of 16-bit RGB
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb, photometric="rgb", compression="zlib")
    (image, info), peak = _traced_peak(lambda: open_image(tmp_path / "rgb16.tif"))
    assert info.mode.endswith(";16") and image.size == (1500, 2000)
    # numpy allocations: the 16-bit array, its 8-bit copy and one chunk's working copy; one
    # float64 copy of the image alone would be 4x its 16-bit size.
    assert peak < 3 * rgb.nbytes, (peak, rgb.nbytes)


def test_16bit_gray_png_decodes_within_three_times_its_size(tmp_path: Path) -> None:
    """A fresh process, so PIL's own buffers count too: peak resident memory (VmHWM)."""
    import subprocess
    import sys

    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("needs Linux /proc for the process's peak resident memory")
    side = 4000  # 16 megapixels, 32 MB of 16-bit data, a 40 kB file
    ramp = (np.arange(side, dtype=np.uint16) // 16 * 200)[None, :].repeat(side, 0)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "import numpy, PIL.Image, PIL.PngImagePlugin\n"
        "from fracturekit.io import read_image\n"
        "def hwm():\n"
        "    for line in Path('/proc/self/status').read_text().splitlines():\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1]) * 1024\n"
        "before = hwm()\n"
        "image = read_image(sys.argv[1], channels=1)\n"
        "print(hwm() - before, image.size[0])\n"
    )
    src = str(Path(__import__("fracturekit").__file__).parents[1])
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "g16.png")],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "PYTHONPATH": src},
        timeout=120,
    )
    extra, width = map(int, out.stdout.split())
    assert width == side
    assert extra < 3 * ramp.nbytes, f"peak +{extra / 1e6:.0f} MB for {ramp.nbytes / 1e6:.0f} MB"


@pytest.mark.parametrize("rle", [False, True])
def test_dicom_decodes_only_the_first_frame(tmp_path: Path, rle: bool) -> None:
    frames = np.stack([np.full((128, 128), 100 * (i + 1), np.uint16) for i in range(40)])
    frames[0, :64] = 4000  # the first frame: top half bright
    data = _multiframe_dicom(frames, rle=rle)
    (tmp_path / "cine.dcm").write_bytes(data)
    image, peak = _traced_peak(lambda: read_image(tmp_path / "cine.dcm", channels=1))
    arr = np.asarray(image)
    assert arr.shape == (128, 128) and arr[0, 0] == 255 and arr[-1, 0] == 0
    # The file's bytes, one decoded frame and its conversions; all 40 frames would be 1.3 MB.
    frame = frames[0].nbytes
    assert peak < len(data) + 10 * frame + 1_000_000 and peak < len(data) + frames.nbytes, peak


def test_dicom_bytes_budget(tmp_path: Path) -> None:
    frames = np.zeros((3, 60, 60, 3), np.uint16)
    (tmp_path / "rgb16.dcm").write_bytes(_multiframe_dicom(frames))
    # 3600 px under a 4000-px limit, but 16-bit RGB: 21.6 kB > 16 kB; the frames not decoded
    # do not count.
    with pytest.raises(ImageReadError, match=r"3 x 16-bit samples: 0 MB decoded, over the budget"):
        read_image(tmp_path / "rgb16.dcm", max_pixels=4000)
    assert read_image(tmp_path / "rgb16.dcm", max_pixels=5400).size == (60, 60)


# --------------------------------------------------------------------------------------------
# the kind of a file comes from its bytes, not its name


def test_misleading_extensions_are_read_by_their_magic_bytes(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    picture = blob_image(size=(40, 32))
    picture.save(tmp_path / "png.dcm", format="PNG")
    picture.save(tmp_path / "tif.jpg", format="TIFF")
    picture.save(tmp_path / "jpg.tif", format="JPEG", quality=95)
    values = _stored((32, 40))
    (tmp_path / "dicom.png").write_bytes(dicom_bytes(values))
    (tmp_path / "bare.png").write_bytes(dicom_bytes(values, preamble=False))
    want = np.asarray(picture)
    for name, fmt in (("png.dcm", "PNG"), ("tif.jpg", "TIFF"), ("jpg.tif", "JPEG")):
        image, info = open_image(tmp_path / name)
        assert info.format == fmt, name
        assert np.abs(np.asarray(image).astype(int) - want).max() <= 10, name  # JPEG: lossy
    a = np.asarray(open_image(tmp_path / "dicom.png")[0])
    b, info = open_image(tmp_path / "bare.png")
    assert info.format == "DICOM" and (np.asarray(b) == a).all()
    png = (tmp_path / "png.dcm").read_bytes()
    assert read_image_bytes(png, name="upload.dcm").size == (40, 32)
    tifffile.imwrite(tmp_path / "stream.png", np.zeros((20, 30), np.uint8))
    from fracturekit.io import open_rows

    assert open_rows(tmp_path / "stream.png").streamed in ("tiff", "memmap")


@pytest.mark.parametrize(
    ("head", "name", "dicom"),
    [
        (b"\x00" * 128 + b"DICM", "a.png", True),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 124, "a.dcm", False),
        (b"\x02\x00\x00\x00UL\x04\x00", "a.png", True),  # a data set without the preamble
        (b"garbage", "a.dcm", True),  # the name decides when nothing else does
        (b"garbage", "a.png", False),
    ],
)
def test_is_dicom_by_bytes_first(head: bytes, name: str, dicom: bool) -> None:
    assert is_dicom(head, name) is dicom


def test_deflated_dicom_is_refused_before_it_is_inflated_whole(monkeypatch):
    """pydicom inflates a deflated data set whole (every frame): its inflated size counts."""
    import pydicom

    from fracturekit.io import ImageReadError, read_image_bytes

    bomb = deflated_dicom(256, 40)  # 40 frames of 64 kP, 16 bit: 5.2 MB inflated, few kB here
    assert len(bomb) < 100_000

    def never(*args, **kwargs):
        raise AssertionError("dcmread was called on an over-budget deflated file")

    monkeypatch.setattr(pydicom, "dcmread", never)
    with pytest.raises(ImageReadError, match="inflates to over"):
        read_image_bytes(bomb, name="bomb.dcm", max_pixels=1_000_000)  # 4 MB budget
    monkeypatch.undo()
    small = read_image_bytes(deflated_dicom(64, 2), name="ok.dcm", max_pixels=1_000_000)
    assert small.size == (64, 64)
