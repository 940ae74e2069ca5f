"""Image dimensions for `extract_image_size`, read from the header alone with Pillow.

The worker calls `image_size` on the complete temp file with the sniffed mime type (reference
3.7). Unlike the original, which measured only jpeg/png/gif, every format Pillow identifies is
measured; an unreadable jpeg/png/gif header is still a terminal failure, as it was.
"""

from __future__ import annotations

import os
import pathlib

from PIL import Image, UnidentifiedImageError

# Pillow refuses to open an image of more than ~179 Mpx, suspecting a decompression bomb. We
# never decode pixels (Image.open only parses the header), so a huge header costs nothing and
# its size must still be reported. No other module of the service uses Pillow, which makes
# this process-wide switch safe; a per-call override would race between worker threads.
Image.MAX_IMAGE_PIXELS = None

#: The types the original measured; an unreadable header of one of them fails the job.
STRICT_TYPES = frozenset({"image/jpeg", "image/png", "image/gif"})


class ImageSizeError(ValueError):
    """The header of a jpeg, png or gif file could not be read; the message says why."""


def image_size(path: str | os.PathLike[str], mime: str) -> str:
    """`"<width>x<height>"`, or `""` when `mime` is not an image type Pillow can measure.

    Errors opening the file itself (OSError) propagate: they are not about the image.
    """
    mime = mime.partition(";")[0].strip().lower()
    if not mime.startswith("image/"):
        return ""
    with pathlib.Path(path).open("rb") as fp:
        try:
            # lazy: this reads the header and stops, the pixel data is never touched
            with Image.open(fp) as im:
                width, height = im.size
        # Pillow's format plugins raise a zoo of types on corrupt input (OSError,
        # SyntaxError, ValueError, EOFError, struct.error …); all mean "cannot read it".
        except Exception as exc:
            if mime in STRICT_TYPES:
                raise ImageSizeError(_reason(mime, exc)) from exc
            return ""
    return f"{width}x{height}"


def _reason(mime: str, exc: Exception) -> str:
    # Pillow's "cannot identify image file" names the file object; keep server paths out of
    # the text that is sent to clients.
    if isinstance(exc, UnidentifiedImageError):
        return f"cannot read the {mime} header: unknown or corrupt format"
    return f"cannot read the {mime} header: {str(exc) or type(exc).__name__}"
