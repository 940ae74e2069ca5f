"""Image sizes from headers: the fixtures, formats generated with Pillow, corrupt files, and a
header too large to ever decode."""

from __future__ import annotations

import os
import pathlib
import struct
import subprocess
import sys
import time
import tracemalloc
import warnings
import zlib

import pytest
from PIL import Image, features

from downloader.fetching import imaging

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int) -> bytes:
    """A well-formed PNG that claims the given size; its pixel data is a token, never read."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def write(tmp_path: pathlib.Path, name: str, data: bytes) -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "mime", "expected"),
    [
        ("tiny.png", "image/png", "10x10"),
        ("tiny.bmp", "image/bmp", "10x10"),
        ("sample-1.jpg", "image/jpeg", "420x315"),
        ("load-test.jpg", "image/jpeg", "1050x750"),
    ],
)
def test_fixtures_are_measured(name: str, mime: str, expected: str) -> None:
    assert imaging.image_size(DATA / name, mime) == expected
    assert imaging.image_size(str(DATA / name), mime) == expected


def test_a_pdf_has_no_size() -> None:
    assert imaging.image_size(DATA / "tiny.pdf", "application/pdf") == ""


def test_a_non_image_type_is_not_even_opened(tmp_path: pathlib.Path) -> None:
    assert imaging.image_size(tmp_path / "missing", "text/html") == ""
    # an image is read, so a missing file is an error about the file, not the image
    with pytest.raises(FileNotFoundError):
        imaging.image_size(tmp_path / "missing", "image/png")


def test_the_width_comes_first(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("RGB", (37, 23)).save(path, "PNG")
    assert imaging.image_size(path, "image/png") == "37x23"


@pytest.mark.parametrize(
    ("fmt", "mime", "size"),
    [
        ("JPEG", "image/jpeg", (37, 23)),
        ("GIF", "image/gif", (37, 23)),
        pytest.param(
            "WEBP",
            "image/webp",
            (37, 23),
            marks=pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP"),
        ),
        ("TIFF", "image/tiff", (37, 23)),
        ("BMP", "image/bmp", (37, 23)),
        ("ICO", "image/vnd.microsoft.icon", (32, 32)),
        ("TGA", "image/x-tga", (37, 23)),
        ("PPM", "image/x-portable-pixmap", (37, 23)),
    ],
)
def test_formats_pillow_can_read_are_measured(
    tmp_path: pathlib.Path, fmt: str, mime: str, size: tuple[int, int]
) -> None:
    path = tmp_path / f"image.{fmt.lower()}"
    Image.new("RGB", size, (200, 30, 30)).save(path, fmt)
    assert imaging.image_size(path, mime) == f"{size[0]}x{size[1]}"


def test_mime_parameters_and_case_are_ignored() -> None:
    assert imaging.image_size(DATA / "tiny.png", "Image/PNG; charset=binary") == "10x10"


@pytest.mark.parametrize(
    ("mime", "data"),
    [
        ("image/png", b"\x89PNG\r\n\x1a\n" + b"garbage!" * 8),
        ("image/png", (DATA / "tiny.png").read_bytes()[:20]),  # cut inside IHDR
        ("image/jpeg", b"\xff\xd8\xff\xe0" + b"\x13\x37" * 40),
        ("image/jpeg", b"\xff\xd8\xff"),
        ("image/gif", b"GIF89a\x01"),
        ("image/png", b""),
    ],
)
def test_an_unreadable_jpeg_png_or_gif_header_is_an_error(
    tmp_path: pathlib.Path, mime: str, data: bytes
) -> None:
    path = write(tmp_path, "broken.tmp", data)
    with pytest.raises(imaging.ImageSizeError) as info:
        imaging.image_size(path, mime)
    message = str(info.value)
    assert mime in message
    assert str(tmp_path) not in message  # the text goes to clients: no server paths


@pytest.mark.parametrize(
    ("mime", "data"),
    [
        ("image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
        ("image/svg+xml", b"\x00\x01 not an image at all"),
        ("image/webp", b"RIFF\x10\x00\x00\x00WEBPgarbage"),
        ("image/vnd.adobe.photoshop", b"8BPS\x00"),
        ("image/x-unknown", b""),
    ],
)
def test_other_image_types_that_cannot_be_read_have_no_size(
    tmp_path: pathlib.Path, mime: str, data: bytes
) -> None:
    assert imaging.image_size(write(tmp_path, "other.tmp", data), mime) == ""


def test_a_huge_header_is_measured_without_decoding(tmp_path: pathlib.Path) -> None:
    # 10^10 pixels: Pillow's decompression-bomb guard would refuse it, decoding would need 30 GB
    path = write(tmp_path, "huge.png", png_header(100_000, 100_000))
    started = time.monotonic()
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert imaging.image_size(path, "image/png") == "100000x100000"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, peak
    assert time.monotonic() - started < 1.0


def zero_png(width: int, height: int) -> bytes:
    """A complete, valid RGB PNG of zeros: a few hundred KB that decode to width*height*3 bytes."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + width * 3)  # filter byte, then the row
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")
    )


def icon_around(frame: bytes) -> bytes:
    """An .ico whose one directory entry (0x0, which means 256x256) holds `frame`."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(frame), 22) + frame


# Pillow's pixel buffers are allocated in C, where tracemalloc cannot see them: the process's
# peak resident size, in a fresh interpreter, is what shows a decode.
_PEAK_RSS = """
import resource, sys
from downloader.fetching import imaging
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(imaging.image_size(sys.argv[1], sys.argv[2]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.parametrize(
    ("name", "mime", "expected"),
    [
        ("bomb.png", "image/png", "6000x6000"),
        # Pillow's ICO plugin would decode the frame (108 MB) to learn its size; the
        # directory says 256x256 and that is what is reported
        ("bomb.ico", "image/vnd.microsoft.icon", "256x256"),
    ],
)
def test_a_small_file_that_decodes_to_100_mb_is_measured_without_decoding(
    tmp_path: pathlib.Path, name: str, mime: str, expected: str
) -> None:
    frame = zero_png(6000, 6000)
    path = write(tmp_path, name, icon_around(frame) if name.endswith(".ico") else frame)
    assert path.stat().st_size < 1 << 20
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(path), mime], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    size, grown_kib = run.stdout.split()
    assert size == expected
    assert int(grown_kib) < 16 * 1024, f"peak RSS grew by {grown_kib} KiB: pixels were decoded"


@pytest.mark.skipif(not pathlib.Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_no_file_handle_is_left_open(tmp_path: pathlib.Path) -> None:
    broken = write(tmp_path, "broken.png", b"\x89PNG\r\n\x1a\nnope")
    odd = write(tmp_path, "odd.svg", b"<svg/>")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        imaging.image_size(DATA / "sample-1.jpg", "image/jpeg")
        imaging.image_size(odd, "image/svg+xml")
        with pytest.raises(imaging.ImageSizeError):
            imaging.image_size(broken, "image/png")
    assert len(os.listdir("/proc/self/fd")) == before


def test_image_size_error_is_a_value_error() -> None:
    assert issubclass(imaging.ImageSizeError, ValueError)
