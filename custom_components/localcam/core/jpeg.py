"""JPEG integrity checks, encoding and scaling (CPU work: call from a thread).

This module is the layer that guarantees no broken image is ever cached or
served: every still, whatever its source, passes ``validate_jpeg`` first.
"""

import threading
from typing import TYPE_CHECKING, Final

from .errors import InvalidImageError

if TYPE_CHECKING:
    import numpy as np
    from turbojpeg import TurboJPEG

SOI: Final = b"\xff\xd8"
EOI: Final = b"\xff\xd9"
MAX_JPEG_BYTES: Final = 8 * 1024 * 1024
MAX_DIMENSION: Final = 16384
JPEG_CONTENT_TYPES: Final = frozenset({"image/jpeg", "image/jpg", "image/pjpeg"})
# Some cameras pad their JPEGs after the end marker; tolerate a little.
_TRAILING_PADDING: Final = b"\x00\r\n \t"
_MAX_PADDING: Final = 64

_lock = threading.Lock()
_turbojpeg: TurboJPEG | None = None


def turbojpeg() -> TurboJPEG:
    """Return the process-wide TurboJPEG handle (loads libturbojpeg once)."""
    global _turbojpeg  # noqa: PLW0603 - one native handle per process
    with _lock:
        if _turbojpeg is None:
            from turbojpeg import TurboJPEG  # noqa: PLC0415 - loads a shared library

            _turbojpeg = TurboJPEG()
        return _turbojpeg


def loaded() -> bool:
    """Whether libturbojpeg is loaded (loading it is blocking file I/O)."""
    return _turbojpeg is not None


def validate_jpeg(
    data: bytes, content_type: str | None = None, max_bytes: int = MAX_JPEG_BYTES
) -> tuple[int, int]:
    """Check that ``data`` is one whole, decodable JPEG; return (width, height).

    The real failures this catches: zero-length replies, HTML error pages
    served with 200, bodies cut short by a dropped connection, and garbage.
    """
    if not data:
        raise InvalidImageError("empty reply")
    if len(data) > max_bytes:
        raise InvalidImageError(f"larger than {max_bytes} bytes")
    if content_type is not None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type not in JPEG_CONTENT_TYPES:
            raise InvalidImageError(f"content type {media_type or 'missing'}")
    if not data.startswith(SOI):
        raise InvalidImageError("no JPEG start marker")
    tail = data[-_MAX_PADDING - 2 :].rstrip(_TRAILING_PADDING)
    if not tail.endswith(EOI):
        raise InvalidImageError("truncated (no JPEG end marker)")
    try:
        width, height, _subsample, _colorspace = turbojpeg().decode_header(data)
    except OSError as err:
        raise InvalidImageError("header does not decode") from err
    if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
        raise InvalidImageError(f"implausible size {width}x{height}")
    return int(width), int(height)


def encode_bgr(array: np.ndarray, quality: int = 85) -> bytes:
    """Encode a BGR24 frame as JPEG."""
    return bytes(turbojpeg().encode(array, quality=quality))


def scale_jpeg(data: bytes, width: int | None, height: int | None) -> tuple[bytes, int, int]:
    """Scale a JPEG down for a card that asked for ``width``x``height``.

    Uses TurboJPEG's DCT scaling (a fraction of a full decode) with the
    smallest factor that still covers the request, so the picture is never
    upscaled and never smaller than asked. Returns the JPEG and its size.
    """
    src_width, src_height, _s, _c = turbojpeg().decode_header(data)
    if not width or not height or (width >= src_width and height >= src_height):
        return data, int(src_width), int(src_height)
    best: tuple[int, int] | None = None
    for num, den in turbojpeg().scaling_factors:
        if num >= den:
            continue
        scaled_w = (src_width * num + den - 1) // den
        scaled_h = (src_height * num + den - 1) // den
        if (
            scaled_w >= width
            and scaled_h >= height
            and (best is None or num / den < best[0] / best[1])
        ):
            best = (num, den)
    if best is None:
        return data, int(src_width), int(src_height)
    scaled = bytes(turbojpeg().scale_with_quality(data, scaling_factor=best, quality=80))
    new_width, new_height, _s, _c = turbojpeg().decode_header(scaled)
    return scaled, int(new_width), int(new_height)
