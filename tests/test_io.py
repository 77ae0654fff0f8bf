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
    dicom_bytes,
    jpeg_bytes,
    noise_image,
    write_exif_jpeg,
    write_rgba_png,
    write_tiff16,
    write_truncated_jpeg,
)
from fracturekit.io import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS_ENV,
    CheckReport,
    ImageReadError,
    check_images,
    exif_orientation,
    is_image_file,
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
