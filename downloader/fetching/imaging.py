"""Image dimensions for `extract_image_size`, read from the header alone with Pillow.

The worker calls `image_size` on the complete temp file with the sniffed mime type (reference
3.7). Unlike the original, which measured only jpeg/png/gif, every format Pillow identifies is
measured; an unreadable jpeg/png/gif header is still a terminal failure, as it was. No pixel
is ever decoded, so a header claiming billions of pixels is reported, not refused.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import IO

from PIL import IcoImagePlugin, Image, UnidentifiedImageError

from downloader.errors import ImageSizeError as ImageSizeError

# Pillow refuses to open an image of more than ~179 Mpx, suspecting a decompression bomb. We
# never decode pixels (Image.open only parses the header), so a huge header costs nothing and
# its size must still be reported, as the original's header-only DecodeConfig did. No other
# module of the service uses Pillow, which makes this process-wide switch safe; a per-call
# override would race between worker threads.
Image.MAX_IMAGE_PIXELS = None

#: Plugins whose open() decodes pixels: Pillow's ICO plugin loads the largest frame to learn
#: its size, and a tiny icon may hold a PNG frame claiming gigapixels. Never opened; an icon
#: is measured from its directory.
_DECODES_ON_OPEN = frozenset({"ICO"})
_ICO_MAGIC = b"\x00\x00\x01\x00"

#: The types the original measured; an unreadable header of one of them fails the job.
STRICT_TYPES = frozenset({"image/jpeg", "image/png", "image/gif"})


def image_size(path: str | os.PathLike[str], mime: str) -> str:
    """`"<width>x<height>"`, or `""` when `mime` is not an image type Pillow can measure.

    Errors opening the file itself (OSError) propagate: they are not about the image.
    """
    mime = mime.partition(";")[0].strip().lower()
    if not mime.startswith("image/"):
        return ""
    with pathlib.Path(path).open("rb") as fp:
        try:
            width, height = _header_size(fp)
        # Pillow's format plugins raise a zoo of types on corrupt input (OSError,
        # SyntaxError, ValueError, EOFError, struct.error …); all mean "cannot read it".
        except Exception as exc:
            if mime in STRICT_TYPES:
                raise ImageSizeError(_reason(mime, exc)) from exc
            return ""
    return f"{width}x{height}"


def _header_size(fp: IO[bytes]) -> tuple[int, int]:
    if fp.read(len(_ICO_MAGIC)) == _ICO_MAGIC:
        fp.seek(0)
        # the directory's largest entry, which is what Pillow would decode
        width, height = IcoImagePlugin.IcoFile(fp).entry[0].dim
        return width, height
    fp.seek(0)
    # lazy: this reads the header and stops, the pixel data is never touched
    with Image.open(fp, formats=_header_only_formats()) as im:
        return im.size


@functools.cache
def _header_only_formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin, so the list is complete
    return tuple(name for name in Image.ID if name not in _DECODES_ON_OPEN)


def _reason(mime: str, exc: Exception) -> str:
    # Pillow's "cannot identify image file" names the file object; keep server paths out of
    # the text that is sent to clients.
    if isinstance(exc, UnidentifiedImageError):
        return f"cannot read the {mime} header: unknown or corrupt format"
    return f"cannot read the {mime} header: {str(exc) or type(exc).__name__}"
